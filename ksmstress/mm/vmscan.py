"""Reclaim of one page, as shrink_page_list does it for an anon or KSM page (mm/vmscan.c, simplified: no LRU,
no dirty/writeback states; the caller picks the page and decides whether to swap it)."""

from __future__ import annotations

from ..arena import ref_slot
from ..callchain import kfunc
from . import memory, rmap
from .state import PG_KSM, PG_MLOCKED, K


def page_anon_vma_of(k: K, s: int) -> int:
    """The anon_vma an rmap walk of page slot s would lock first (KSM: its first rmap_item's)."""
    if k.pg.flags[s] & PG_KSM:
        nref = k.pg.mapping[s]
        if not nref:
            return 0
        first = k.sn.hfirst[k.sn.deref(nref, "page_anon_vma")]
        return k.ri.anon_vma[k.ri.deref(first, "page_anon_vma")] if first else 0
    return k.pg.mapping[s]


@kfunc
def shrink_page(k: K, page: int, swap: bool) -> None:
    """The caller holds a reference (isolated). trylock_page, page_referenced, and if asked add_to_swap +
    try_to_unmap; then unlock."""
    s = ref_slot(page)
    if k.bug("inverted-lock-order"):
        # the defect: the walk's anon_vma lock first, then the page lock (2.6.33: page lock -> anon_vma->lock)
        avref = page_anon_vma_of(k, s)
        lid = k.av_lock(ref_slot(avref)) if avref else -1
        if avref:
            k.locks.lock(lid, "shrink_page_list:anon_vma_lock")
        k.locks.lock(k.page_lock(s), "shrink_page_list:lock_page")
        if avref:
            k.locks.unlock(lid, "shrink_page_list:anon_vma_unlock")
    elif not k.locks.trylock(k.page_lock(s), "shrink_page_list:trylock_page"):
        return
    if k.pg.flags[s] & PG_MLOCKED:  # !page_evictable(page, NULL): cull_mlocked, to the unevictable list
        k.locks.unlock(k.page_lock(s), "shrink_page_list:cull_mlocked")
        return
    rmap.page_referenced(k, page)
    if swap and rmap.page_mapped(k, s):
        sref = k.st.swap.alloc("add_to_swap")
        k.st.swap.count[ref_slot(sref)] = 1  # the swap cache's own reference (SWAP_HAS_CACHE)
        k.st.swap.note(ref_slot(sref), 0, 1, "add_to_swap")
        rmap.try_to_unmap(k, page, sref)
        memory.swap_free(k, sref, "delete_from_swap_cache")
    k.locks.unlock(k.page_lock(s), "shrink_page_list:unlock_page")
