"""Reclaim of one page, as shrink_page_list does it for an anon or KSM page, or as shrink_active_list looks at it
(mm/vmscan.c, simplified: no LRU, no dirty/writeback states, pageout writes synchronously; the caller picks the
page and decides whether to swap it)."""

from __future__ import annotations

from ..arena import ref_slot
from ..callchain import kfunc
from . import memory, rmap, swap_state, swapfile
from .state import PG_KSM, PG_MLOCKED, SWAP_MLOCK, K


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
def shrink_page(k: K, page: int, swap: bool) -> bool:
    """shrink_page_list for one isolated anon or KSM page (the caller holds the isolation reference): trylock_page,
    page_referenced, and if the caller decided to swap it: add_to_swap (unless already in the swap cache),
    try_to_unmap, pageout (swap_writepage) and __remove_mapping. Returns True when the page was freed (its
    isolation reference went with it: no putback), False when it is kept (locked pages, SWAP_AGAIN, SWAP_FAIL,
    cull_mlocked, a reference still held: it stays in the swap cache)."""
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
        return False
    freed = False
    if k.pg.flags[s] & PG_MLOCKED:  # !page_evictable(page, NULL): cull_mlocked, to the unevictable list
        _cull_mlocked(k, s)
    else:
        rmap.page_referenced(k, page)
        if swap:  # the model's choice stands for page_referenced's verdict (deviation 11)
            freed = _swap_out(k, page, s)
        elif swapfile.PageSwapCache(k, s) and swapfile.vm_swap_full(k):
            swapfile.try_to_free_swap(k, s)  # activate_locked
    if not freed:
        k.locks.unlock(k.page_lock(s), "shrink_page_list:unlock_page")
    return freed


def _cull_mlocked(k: K, s: int) -> None:
    """cull_mlocked: an unevictable page gives up its swap slot (try_to_free_swap) before going back to the
    unevictable list, so a stale swap-cache page that stayed mlocked (the last pte gone by a path that does not
    munlock) is freed when its isolation reference is put back."""
    if swapfile.PageSwapCache(k, s):
        swapfile.try_to_free_swap(k, s)


def page_mapping_inuse(k: K, s: int) -> bool:
    """An anon page is in use while mapped or in the swap cache (2.6.33 mm/vmscan.c; no file pages here)."""
    return rmap.page_mapped(k, s) or swapfile.PageSwapCache(k, s)


@kfunc
def shrink_active_page(k: K, page: int) -> tuple[int, int]:
    """shrink_active_list's step for one isolated anon or KSM page (the caller holds the isolation reference and
    puts it back): an unevictable page goes back (putback_lru_page), an in-use one is asked page_referenced(page,
    0 /* is_locked */, ...) WITHOUT the page lock, then deactivated whatever the answer (the VM_EXEC rotation is
    for file pages only). Returns (referenced, vm_flags) for the caller to look at; the model keeps no
    active/inactive lists (deviation 12)."""
    s = ref_slot(page)
    k.spoint("shrink_active_list:page_evictable")  # page-flag tests without the page lock
    if k.pg.flags[s] & PG_MLOCKED:  # !page_evictable(page, NULL), read unlocked as the kernel does
        return 0, 0
    if not page_mapping_inuse(k, s):
        return 0, 0
    vm_flags = [0]
    referenced = rmap.page_referenced(k, page, False, vm_flags)
    return referenced, vm_flags[0]


def _swap_out(k: K, page: int, s: int) -> bool:
    """The swap half of shrink_page_list, the page locked; True when the page was freed (and unlocked)."""
    if not swapfile.PageSwapCache(k, s) and not swap_state.add_to_swap(k, page):
        return False  # activate_locked: swap is full
    if rmap.page_mapped(k, s):
        ret = rmap.try_to_unmap(k, page)
        if ret == rmap.SWAP_FAIL and swapfile.vm_swap_full(k):
            swapfile.try_to_free_swap(k, s)  # activate_locked
        if ret == SWAP_MLOCK:
            _cull_mlocked(k, s)
        if ret != rmap.SWAP_SUCCESS:  # SWAP_AGAIN: keep_locked
            return False
    if not swap_state.swap_writepage(k, page):  # pageout; the page left the swap cache instead (PageDirty: keep)
        return False
    return __remove_mapping(k, page, s)


def __remove_mapping(k: K, page: int, s: int) -> bool:  # noqa: N807 - the kernel's name
    """__remove_mapping for a swap-cache page: under tree_lock, page_freeze_refs(page, 2) (only the swap cache and
    the isolation hold it), then out of the swap cache, swapcache_free, and the page is freed. Any other reference
    (a get_user_pages pin, a fault's lookup, ksmd's get_ksm_page) keeps it in the swap cache: False."""
    k.spoint("__remove_mapping:page_freeze_refs")
    with k.guard:
        frozen = k.pg.count[s] == 2
        if frozen:
            k.pg.count[s] = 0
            k.pg.note(s, 0, 0, "__remove_mapping:page_freeze_refs")
    if not frozen:
        return False
    sref = swap_state.__delete_from_swap_cache(k, s, "__remove_mapping")
    swapfile.swapcache_free(k, sref, "__remove_mapping:swapcache_free")
    k.locks.unlock(k.page_lock(s), "shrink_page_list:__clear_page_locked")
    memory.free_page(k, page, "shrink_page_list:free_it")
    return True


@kfunc
def drain_swap_cache(k: K) -> None:
    """Every mm is gone: the pages left in the swap cache (a trylock that failed in free_swap_and_cache, a pin
    that kept a page in it) go through shrink_page_list's __remove_mapping, as the LRU would reach them later
    (simplified: no LRU, deviation 12). A page some task still references is retried after a yield."""
    sw = k.st.swap
    while True:
        live = [int(x) for x in sw.live_slots() if sw.page[int(x)]]
        if not live:
            return
        for ss in live:
            page = swap_state.find_get_page(k, sw.ref_of(ss))
            if not page:
                continue
            if not shrink_page(k, page, True):
                memory.put_page(k, page, "putback_lru_page")
        k.point("reclaim:drain", yielding=True)
