"""`unmerge-incomplete`: when MADV_UNMERGEABLE or run=2 returns, no pte it was bound to break maps a KSM page.

Computed from the page tables, not from what unmerge_ksm_pages walked:
- MADV_UNMERGEABLE of a vma (ksm_madvise, mmap_sem held for write all along): at return, no present pte of the
  range maps a PageKsm page (a migration entry naming one counts: it becomes that mapping again), except a pte
  unchanged since the call began whose page was not KSM then: ksmd may
  merge a page this mm shares copy-on-write with a forked mm through that other mm's mapping (2.6.33 checks only
  the other vma's VM_MERGEABLE), and the kernel leaves that mapping merged too. No other store can put a KSM page
  behind this mm's pte meanwhile: every merge into it needs its mmap_sem.
- run=2 (unmerge_and_remove_all_rmap_items, under ksm_thread_mutex, so ksmd merges nothing meanwhile): at return,
  no present pte of an mm that was on ksmd's list when it began maps a KSM page, within the vmas it walks: those
  VM_MERGEABLE both when it began and when it returned. Mms added since (children forked meanwhile, inserted
  behind the cursor) are not its duty, as the kernel leaves them merged; nor is a KSM page in a vma that is not
  VM_MERGEABLE, which the kernel skips: do_swap_page maps a swapped KSM page back as it is into a vma made
  unmergeable while it was out ("the vma might even be no longer VM_MERGEABLE", 5ad6468801d2), and the
  copy-on-write sharing above puts one behind such a vma's pte.
Either way an mm that is exiting (mm_users 0) is exempt: its unmerge stops early and exit_mmap tears it down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..arena import ref_slot
from ..failures import Failure
from ..mm.state import PG_KSM, PTE_MIGRATION, PTE_PRESENT, VM_MERGEABLE, pte_fields
from .invariants import pte_text

if TYPE_CHECKING:
    from ..mm.state import K


@dataclass
class Unmerge:
    mms: list[tuple[int, int, int]]  # (mm ref, start, end)
    before: dict[int, np.ndarray]  # madvise: mm ref -> ref of each pte of the range at the start (0: not present)
    ksm_before: dict[int, np.ndarray]  # and whether that page was KSM then
    step: int
    mergeable: dict[int, np.ndarray] = field(default_factory=dict)  # run=2: mm ref -> VM_MERGEABLE per page at start


def _row(k: K, m: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(refs, is_ksm) of the range's ptes: ref 0 for a pte that maps no live page."""
    st = k.st
    kind, ref, _write = pte_fields(st.pte[m, start:end])
    # a migration entry maps its page again once the migration ends: it counts as the mapping it stands for
    refs = np.where((kind == PTE_PRESENT) | (kind == PTE_MIGRATION), ref, 0)
    live = st.page.live_mask(refs)
    refs = np.where(live, refs, 0)
    ksm = live & ((st.page.c["flags"][np.where(live, (refs & 0xFFFFFFFF) - 1, 0)] & PG_KSM) != 0)
    return refs, ksm


def unmerge_begin(k: K, mm_ref: int, start: int, end: int) -> Unmerge:
    step = k.ctl.clock()[0]
    if mm_ref:
        refs, ksm = _row(k, ref_slot(mm_ref), start, end)
        return Unmerge([(mm_ref, start, end)], {mm_ref: refs}, {mm_ref: ksm}, step)
    ms = k.ms
    mms = [x for x in ((int(ms.c["mm"][s]), 0, k.st.sz.vpages) for s in ms.live_slots()) if x[0]]
    return Unmerge(mms, {}, {}, step, {mref: _mergeable(k, mref) for mref, _s, _e in mms})


def _mergeable(k: K, mref: int) -> np.ndarray:
    """Per page of mm `mref`, whether a VM_MERGEABLE vma covers it, read from the vma table as it stands (no
    dereference: in free mode the mm's own task may be splitting or freeing a vma meanwhile)."""
    vm = k.st.vma
    out = np.zeros(k.st.sz.vpages, dtype=bool)
    if not k.mmc.is_live(mref):
        return out
    for v in vm.live_slots():
        if int(vm.c["mm"][v]) == mref and int(vm.c["flags"][v]) & VM_MERGEABLE:
            out[int(vm.c["start"][v]) : int(vm.c["end"][v])] = True
    return out


def unmerge_end(k: K, token: Unmerge | None, site: str) -> None:
    if token is None:
        return
    for mref, start, end in token.mms:
        if not k.mmc.is_live(mref):
            continue
        m = ref_slot(mref)
        if k.mmc.users[m] == 0:
            continue  # exiting: unmerge stops at ksm_test_exit, exit_mmap unmaps the rest
        refs, ksm = _row(k, m, start, end)
        if mref in token.before:  # madvise: a pte unchanged since the start whose page became KSM meanwhile is fine
            ksm &= (refs != token.before[mref]) | token.ksm_before[mref]
        if mref in token.mergeable and ksm.any():  # run=2: only the vmas it walks
            ksm &= (token.mergeable[mref] & _mergeable(k, mref))[start:end]
        if ksm.any():  # read again: in free mode reclaim may be storing a swap entry into a pte read half-way
            again, ksm2 = _row(k, m, start, end)
            ksm &= ksm2 & (again == refs)
        if ksm.any():
            j = int(np.flatnonzero(ksm)[0])
            addr, s = start + j, ref_slot(int(refs[j]))
            step, who = k.ctl.clock()
            raise Failure(
                "unmerge-incomplete",
                f"{site} returned by {who} at step {step} (begun at step {token.step}) with mm[{m}] address {addr} "
                f"still mapping KSM page[{s}] (range [{start}, {end})); the pte's last stores: "
                f"{pte_text(k.st, m, addr)}",
                {
                    "site": site,
                    "step": step,
                    "task": who,
                    "mm": m,
                    "address": addr,
                    "page": s,
                    "range": [start, end],
                    "merged": [start + int(x) for x in np.flatnonzero(ksm)],
                },
            )
