"""Detectors. The model reports to them through `ksmstress.mm.hooks`; `Detectors` is the bundle a run installs."""

from __future__ import annotations

from typing import Any

from ..arena import NO_GUARD
from .badpage import check_page_free
from .completeness import check_merge_completeness
from .counters import check_counters
from .disturbance import Disturbance
from .invariants import check_ksm_quiescent, check_pte_store
from .lockdep import Lockdep
from .lockrules import check as check_lock_rule
from .mlock import check_mlocking, check_no_migration_ptes, check_nr_mlock
from .traversal import TraversalCheck
from .unmerge import unmerge_begin, unmerge_end
from .unstabletree import check_unstable_tree
from .vmalist import check_vma_list


def _not_recorded(k: Any, data: Any, index: int, write: int, site: str) -> None:
    """shared_access outside coverage runs: nothing (checks.accesslog wraps it when coverage is on)."""


class Detectors(TraversalCheck):
    """Every in-run detector behind the model's hook interface: traversal, lockdep, the kernel's lock rules
    (unlocked-access), bad-page, counters, the invariants (ksm_refcount, mapcount, stale and writable-KSM ptes, the
    stable tree, registration), unmerge completeness and merge completeness (with its bookkeeping of when the world
    last moved, `disturbance`)."""

    # the hot path: k.hooks.lock_rule(...) calls the check itself, no frame in between
    lock_rule = staticmethod(check_lock_rule)
    shared_access = staticmethod(_not_recorded)

    def __init__(self, lockdep: Lockdep | None = None, disturbance: Disturbance | None = None) -> None:
        self.lockdep = lockdep
        self.disturbance = disturbance

    def lock_acquiring(self, tid: int, lid: int, site: str, trylock: bool, subclass: int) -> None:
        if self.lockdep is not None:
            self.lockdep.acquiring(lid, site, trylock, subclass)
        if self.disturbance is not None:
            self.disturbance.lock_acquiring(tid, lid, site)

    def lock_acquired(self, tid: int, lid: int, mode: int, site: str, subclass: int) -> None:
        if self.lockdep is not None:
            self.lockdep.acquired(lid, site, subclass)

    def lock_released(self, tid: int, lid: int, site: str) -> None:
        if self.lockdep is not None:
            self.lockdep.released(lid)

    def page_freeing(self, k: Any, pref: int, site: str) -> None:
        super().page_freeing(k, pref, site)  # traversal: no pte, no migration entry maps it; mlock
        check_page_free(k, pref, site)

    def locks_freeing(self, k: Any, lids: tuple[int, ...], what: str, site: str) -> None:
        if self.lockdep is not None:
            self.lockdep.freeing(lids, what, site)

    def mlocking(self, k: Any, pref: int, vref: int, site: str) -> None:
        check_mlocking(k, pref, vref, site)

    def validate_mm(self, k: Any, m: int, site: str) -> None:
        check_vma_list(k, m, site)

    def might_sleep(self, k: Any, site: str, schedules: bool = False) -> None:
        if self.lockdep is not None:
            self.lockdep.might_sleep(site, schedules)

    def task_exit(self, k: Any) -> None:
        if self.lockdep is not None:
            self.lockdep.task_exit()

    def ksm_quiescent(self, k: Any, where: str) -> None:
        check_counters(k, where)
        check_ksm_quiescent(k, where)
        check_no_migration_ptes(k.st, where)  # hot-remove migrates under ksm_thread_mutex: none may be left
        if k.guard is NO_GUARD:  # controlled: a scan of page flags would race with free mode's other tasks
            check_nr_mlock(k.st, where)
        if self.disturbance is not None:
            check_merge_completeness(k, where, self.disturbance)

    def scan_done(self, k: Any) -> None:
        check_unstable_tree(k, "the end of a full scan")  # this scan's whole tree, before seqnr++ retires it

    def pte_stored(self, k: Any, m: int, addr: int, kind: int, ref: int, write: int, site: str) -> None:
        check_lock_rule(k, "pte", k.ptl(m), 1, m, site, addr)  # set_pte_at under the pte lock
        check_pte_store(k, m, addr, kind, ref, write, site)

    def unmerge_begin(self, k: Any, mm_ref: int, start: int, end: int) -> Any:
        return unmerge_begin(k, mm_ref, start, end)

    def unmerge_end(self, k: Any, token: Any, site: str) -> None:
        unmerge_end(k, token, site)
