"""The oracles of mlock and migration (issue 14 part B), computed from the tables, never from the code paths:

- `mlock`: a page is freed while PageMlocked (the kernel's free_page_mlock "Page flag mlocked set" whinge: every
  path that drops an mlocked page's last mapping munlocks it first, KSM's merge included since "ksm: fix mlockfreed
  to munlocked"), unless it was mlocked while no VM_LOCKED vma mapped it (PG_MLOCK_STRAY: a racing mlock_vma_page,
  which the kernel tolerates and counts as unevictable_pgs_mlockfreed); a reclaim walk turned into a swap entry a
  pte of a vma that was VM_LOCKED from the walk's start to its end (an mlocked page must never be unmapped by
  reclaim); NR_MLOCK differs from the pages carrying PG_MLOCKED.
- `traversal` (migration): a migration entry outlives its migration. Hot-remove migrates under ksm_thread_mutex,
  so wherever ksmd or run=2 holds that mutex between batches, and at quiescence, no migration entry may exist; and
  a migration entry still naming a page whose last reference goes is one no remove_migration_ptes will find (a
  later fault on it would wait for ever).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arena import ref_slot
from ..failures import Failure
from ..mm.state import (
    GB_MIGRATING,
    GB_NR_MLOCK,
    PG_MLOCK_STRAY,
    PG_MLOCKED,
    PTE_KIND_MASK,
    PTE_MIGRATION,
    PTE_SHIFT,
    PTE_SWAP,
    PTE_WRITE,
    VM_LOCKED,
    mk_pte,
)
from .windows import covering_vma

if TYPE_CHECKING:
    from ..mm.state import K, State


def _locked(k: K, m: int, addr: int) -> int:
    """The covering vma if it is VM_LOCKED, else 0 (read raw)."""
    vref = covering_vma(k, m, addr)
    return vref if vref and k.vm.flags[ref_slot(vref)] & VM_LOCKED else 0


def locked_at_begin(k: K, mapped: list[tuple[int, int, int, int]]) -> dict[tuple[int, int], int]:
    """(mm, address) -> vma, for the ptes of an unmap walk's start that a VM_LOCKED vma covers."""
    out = {}
    for m, addr, _word, _mref in mapped:
        vref = _locked(k, m, addr)
        if vref:
            out[(m, addr)] = vref
    return out


def is_locked(k: K, m: int, addr: int) -> bool:
    return bool(_locked(k, m, addr))


def check_unmap_locked(k: K, kind: str, pref: int, locked: dict[tuple[int, int], int]) -> None:
    """An unmap walk returns: no pte of a vma VM_LOCKED all along may have become a swap entry."""
    for (m, addr), vref in locked.items():
        if _locked(k, m, addr) != vref or int(k.st.pte[m, addr]) & PTE_KIND_MASK != PTE_SWAP:
            continue
        step, who = k.ctl.clock()
        raise Failure(
            "mlock",
            f"{kind} of page[{ref_slot(pref)}] by {who} returned at step {step} having swapped out mm[{m}] address "
            f"{addr}, whose vma[{ref_slot(vref)}] was VM_LOCKED from the walk's start to its end",
            {"page": ref_slot(pref), "mm": m, "address": addr, "vma": ref_slot(vref), "step": step, "task": who},
        )


def check_freeing(k: K, pref: int, site: str, words: np.ndarray) -> None:
    """A page whose last reference goes: never PageMlocked, never named by a migration entry (`words`: the page
    table as the caller read it, each pte one load)."""
    s = ref_slot(pref)
    pg = k.st.page
    if pg.flags[s] & PG_MLOCKED and not pg.flags[s] & PG_MLOCK_STRAY:
        step, who = k.ctl.clock()
        raise Failure(
            "mlock",
            f"page[{s}] freed by {who} at step {step} ({site}) while PageMlocked (free_page_mlock: nobody munlocked "
            f"it); its last changes: {pg.changes(s)}",
            {"page": s, "site": site, "step": step, "task": who},
        )
    hits = np.argwhere((words & ~PTE_WRITE) == mk_pte(PTE_MIGRATION, pref, 0))
    if hits.size:
        m, addr = (int(x) for x in hits[0])
        step, who = k.ctl.clock()
        raise Failure(
            "traversal",
            f"page[{s}] freed by {who} at step {step} ({site}) while mm[{m}] address {addr} still holds a migration "
            f"entry naming it: remove_migration_ptes missed it, and a fault there waits for ever",
            {"page": s, "mm": m, "address": addr, "site": site, "step": step, "task": who, "duty": "migration"},
        )


def check_mlocking(k: K, pref: int, vref: int, site: str) -> None:
    """mlock_vma_page's callers hold a VM_LOCKED vma under its mm's mmap_sem (the mlock fault-in, try_to_unmap_one's
    out_mlock recheck, KSM's hand-over to kpage in try_to_merge_one_page): a page mlocked for a vma that is not
    VM_LOCKED stays unevictable with no munlock to come. VM_LOCKED changes only under mmap_sem for write, so the
    flag read here is the one the caller saw (free mode too). A page mlocked while its VM_LOCKED vma no longer
    maps it (the hand-over racing a COW) is the tolerated stray, not this."""
    v = ref_slot(vref)
    if k.vm.flags[v] & VM_LOCKED:
        return
    step, who = k.ctl.clock()
    s = ref_slot(pref)
    raise Failure(
        "mlock",
        f"page[{s}] mlocked by {who} at step {step} ({site}) for vma[{v}] [{int(k.vm.start[v])}, "
        f"{int(k.vm.end[v])}), which is not VM_LOCKED: mlock_vma_page's caller must hold a VM_LOCKED vma",
        {"page": s, "vma": v, "site": site, "step": step, "task": who},
    )


def check_nr_mlock(st: State, where: str) -> None:
    """NR_MLOCK = the pages with PG_MLOCKED (both change together, under the page lock)."""
    live = st.page.live_slots()
    n = int(np.count_nonzero(st.page.c["flags"][live] & PG_MLOCKED))
    if n != int(st.gb[GB_NR_MLOCK]):
        raise Failure(
            "mlock",
            f"NR_MLOCK is {int(st.gb[GB_NR_MLOCK])} but {n} pages are PageMlocked ({where})",
            {"nr_mlock": int(st.gb[GB_NR_MLOCK]), "mlocked": n, "where": where},
        )


def check_no_migration_ptes(st: State, where: str) -> None:
    """No migration entry while no migration is in flight (ksm_thread_mutex held between batches, quiescence)."""
    if int(st.gb[GB_MIGRATING]):
        return
    hits = np.argwhere((st.pte & PTE_KIND_MASK) == PTE_MIGRATION)
    if hits.size:
        m, addr = (int(x) for x in hits[0])
        ref = int(st.pte[m, addr]) >> PTE_SHIFT
        raise Failure(
            "traversal",
            f"mm[{m}] address {addr} holds a migration entry naming page[{ref_slot(ref)}] with no migration in "
            f"flight ({where}): remove_migration_ptes missed it, and a fault there waits for ever",
            {"mm": m, "address": addr, "page": ref_slot(ref), "where": where, "duty": "migration"},
        )
