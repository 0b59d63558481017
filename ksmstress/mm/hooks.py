"""The small interface through which the model tells detectors what it does.

The model never imports a detector: it calls these hooks at the moments a detector needs (a page freed, an rmap
walk begun, a pte visited, a walk ended, a lock taken, a pte stored, an unmerge begun and returned, data that a
kernel lock rule covers touched, shared data touched that no lock serialises). `NoHooks` is the silent default, so
the model runs alone in unit tests.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..sync import LockHooks, NoLockHooks


class Hooks(LockHooks, Protocol):
    """What detectors hear: the lock traffic of sync.LockHooks, and these."""

    def page_freeing(self, k: Any, page_ref: int, site: str) -> None:
        """A page frame is about to return to the allocator."""

    def locks_freeing(self, k: Any, lids: tuple[int, ...], what: str, site: str) -> None:
        """An object embedding the locks `lids` is about to be freed (kfree's debug_check_no_locks_freed)."""

    def mlocking(self, k: Any, page_ref: int, vma_ref: int, site: str) -> None:
        """mlock_vma_page is about to mark the page mlocked for vma `vma_ref` (the caller's, under its mmap_sem)."""

    def validate_mm(self, k: Any, m: int, site: str) -> None:
        """Mm slot `m`'s vma list was changed under its mmap_sem for write (2.6.33's validate_mm at vma_link and
        vma_adjust, CONFIG_DEBUG_MM_RB)."""

    def might_sleep(self, k: Any, site: str, schedules: bool = False) -> None:
        """The running task reaches a point where 2.6.33 may sleep (cond_resched, a GFP_KERNEL allocation:
        __might_sleep's context check) or, `schedules`, does (a yield: schedule_debug's)."""

    def walk_begin(self, k: Any, page_ref: int, kind: str) -> Any:
        """An rmap walk over `page_ref` begins; returns a token for the visits and the end."""

    def walk_visit(self, token: Any, mm_slot: int, address: int) -> None:
        """The walk examined the pte of mm `mm_slot` at `address`."""

    def walk_end(self, k: Any, token: Any, uncounted: int | None = None) -> None:
        """The walk returned; a page_referenced walk passes the mappings it had left to count."""

    def window_open(self, k: Any, kind: str, mm_slot: int, address: int, page_ref: int) -> None:
        """The pte of mm `mm_slot` at `address` (its pte lock held) enters kernel window `kind` (checks.windows):
        it maps, or is about to map, `page_ref`, which its rmap walk cannot reach through it yet, by design."""

    def window_close(self, k: Any, kind: str, mm_slot: int, address: int) -> None:
        """Kernel window `kind` of that pte ends: from here a walk must reach it (ksm.UNTIL_SCANNED_ANY: whichever
        window of ksm.UNTIL_SCANNED it is in)."""

    def task_exit(self, k: Any) -> None:
        """The running task is about to exit."""

    def ksm_quiescent(self, k: Any, where: str) -> None:
        """ksmd (or run=2) holds ksm_thread_mutex between batches: trees and counters are consistent."""

    def scan_done(self, k: Any) -> None:
        """A full scan ends (right before seqnr++): ksmd holds ksm_thread_mutex and no other lock, and this scan's
        unstable tree is whole (the next scan starts from RB_ROOT)."""

    def pte_stored(self, k: Any, m: int, addr: int, kind: int, ref: int, write: int, site: str) -> None:
        """A pte of mm `m` at `addr` was just stored (under its pte lock): runs at every store, so keep it cheap."""

    def unmerge_begin(self, k: Any, mm_ref: int, start: int, end: int) -> Any:
        """MADV_UNMERGEABLE of [start, end) in mm `mm_ref` (mmap_sem held for write), or run=2 (mm_ref 0, under
        ksm_thread_mutex) begins; returns a token for unmerge_end."""

    def unmerge_end(self, k: Any, token: Any, site: str) -> None:
        """The unmerge returns: no pte it was bound to break may still map a KSM page."""

    def lock_rule(self, k: Any, rule: str, lid: int, write: int, obj: int, site: str, sub: int = -1) -> None:
        """The running task reads (write 0) or changes (write 1) data that the kernel's lock rule `rule`
        (checks.lockrules) puts under lock `lid` (an rwsem and a change: held for write); `obj` and `sub` name
        the object in a report. Instrumentation, like every hook: `ksmstress mutate` leaves these calls alone."""

    def shared_access(self, k: Any, data: Any, index: int, write: int, site: str) -> None:
        """The running task reads (write 0) or changes (write 1) `data[index]` (a table column, or the frames:
        a page's bytes) where no lock rule names the access: an atomic, a lockless lookup, a flag bit, the page
        contents that the pte lock of one mapping does not serialise against ksmd. Interleaving coverage
        (checks.accesslog) records it; every other run ignores it, so keep it a no-op call."""


class NoHooks(NoLockHooks):
    """Hooks that hear nothing: the model on its own."""

    def page_freeing(self, k: Any, page_ref: int, site: str) -> None:
        pass

    def locks_freeing(self, k: Any, lids: tuple[int, ...], what: str, site: str) -> None:
        pass

    def mlocking(self, k: Any, page_ref: int, vma_ref: int, site: str) -> None:
        pass

    def validate_mm(self, k: Any, m: int, site: str) -> None:
        pass

    def might_sleep(self, k: Any, site: str, schedules: bool = False) -> None:
        pass

    def walk_begin(self, k: Any, page_ref: int, kind: str) -> Any:
        return None

    def walk_visit(self, token: Any, mm_slot: int, address: int) -> None:
        pass

    def walk_end(self, k: Any, token: Any, uncounted: int | None = None) -> None:
        pass

    def window_open(self, k: Any, kind: str, mm_slot: int, address: int, page_ref: int) -> None:
        pass

    def window_close(self, k: Any, kind: str, mm_slot: int, address: int) -> None:
        pass

    def task_exit(self, k: Any) -> None:
        pass

    def ksm_quiescent(self, k: Any, where: str) -> None:
        pass

    def scan_done(self, k: Any) -> None:
        pass

    def pte_stored(self, k: Any, m: int, addr: int, kind: int, ref: int, write: int, site: str) -> None:
        pass

    def unmerge_begin(self, k: Any, mm_ref: int, start: int, end: int) -> Any:
        return None

    def unmerge_end(self, k: Any, token: Any, site: str) -> None:
        pass

    def lock_rule(self, k: Any, rule: str, lid: int, write: int, obj: int, site: str, sub: int = -1) -> None:
        pass

    def shared_access(self, k: Any, data: Any, index: int, write: int, site: str) -> None:
        pass
