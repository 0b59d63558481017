"""The model's stand-in for madvise(MADV_PAGEOUT), which the kernel oracle's `pageout` action calls on the kernel.

2.6.33 has no MADV_PAGEOUT (5.4): there a page reaches swap only through reclaim. The action exists so that the
oracle can put a page, a KSM page above all, in the swap cache and see what both kernels do with it afterwards
(ksmd skips its swap pte, a later merge finds the KSM page in the swap cache, a write fault copies it). What the
kernel's call does, this does with 2.6.33's pieces of shrink_page_list:

- per vma of the range (mmap_sem held for read): a VM_LOCKED vma ends the call with -EINVAL (can_madv_lru_vma),
  the vmas before it done; a hole gives -ENOMEM at the end, the mapped parts done;
- per present pte: a page mapped by more than this pte is left alone (6.18 skips a folio it may share with
  another mapping: `folio_mapcount(folio) != 1`); otherwise it is locked, added to the swap cache if not in it
  already (add_to_swap), unmapped (try_to_unmap), written to its slot, and kept in the swap cache.

Kept, because the kernel side holds a reference on each page while it pages it out (real.py), so that
__remove_mapping cannot free it whether or not the write has already ended: without that, whether a page stays in
the swap cache would depend on the disk's speed.
"""

from __future__ import annotations

from ..arena import ref_slot
from ..mm import memory, rmap, swap_state, swapfile
from ..mm import mm as mmm
from ..mm.state import K


def madvise_pageout(k: K, mref: int, start: int, end: int) -> int:
    """MADV_PAGEOUT over [start, end) of mm `mref`: 0, -EINVAL at a VM_LOCKED vma, -ENOMEM over a hole."""
    m = k.mmc.deref(mref, "madvise_pageout")

    def advise(lo: int, hi: int) -> None:
        for addr in range(lo, hi):
            pageout_one(k, m, addr)

    return mmm.madvise_unlocked_vmas(k, m, start, end, "madvise_pageout", "madvise_pageout", advise)


def pageout_one(k: K, m: int, addr: int) -> None:
    """Reclaim the page at `addr` if this pte alone maps it (the follow_page reference stands for the isolation
    reference reclaim holds)."""
    page = memory.follow_page(k, m, addr, "madvise_pageout")
    if not page:
        return
    s = ref_slot(page)
    if memory.page_mapcount(k, s) != 1 or not k.locks.trylock(k.page_lock(s), "shrink_page_list:trylock_page"):
        memory.put_page(k, page, "madvise_pageout:putback")
        return
    if swapfile.PageSwapCache(k, s) or swap_state.add_to_swap(k, page):  # else swap is full: activate_locked
        if rmap.try_to_unmap(k, page) == rmap.SWAP_SUCCESS:
            swap_state.swap_writepage(k, page)  # the kernel side's reference keeps it from __remove_mapping
    _keep(k, page, s)


def _keep(k: K, page: int, s: int) -> None:
    k.locks.unlock(k.page_lock(s), "shrink_page_list:unlock_page")
    memory.put_page(k, page, "putback_lru_page")
