"""The swap cache: the parts of 2.6.33 mm/swap_state.c (and swap_writepage / swap_readpage of mm/page_io.c).

A page in the swap cache is PageSwapCache with its entry in page->private, holds one page reference of the swap
cache's own, and is named by swapper_space's radix tree slot for its entry (the swap table's `page` column; the
tree_lock is the model's atomic step, so each insert, delete and lookup is one step). The entry's SWAP_HAS_CACHE
is set by whoever adds the page (get_swap_page or swapcache_prepare) before the insert and cleared by
swapcache_free after the delete. Simplified: I/O is synchronous under the page lock (no PageWriteback, no
PageUptodate window, deviation 12), so a page read in is whole before anyone can lock it.
"""

from __future__ import annotations

from ..arena import ref_slot
from ..callchain import kfunc
from . import memory, swapfile
from .state import EEXIST, G_SWAPIN_HELD, PG_SWAPCACHE, K


def find_get_page(k: K, sref: int) -> int:
    """find_get_page(&swapper_space, entry.val): the page the radix tree holds for the entry, with a reference,
    or 0. Lockless in the kernel (page_cache_get_speculative, then the slot is read again); one atomic step here.
    The tree is keyed by the entry's offset: a freed slot's generation is not looked at."""
    sw = k.st.swap
    ss = ref_slot(sref)
    k.spoint("find_get_page")
    with k.guard:
        pref = int(sw.page[ss])
        if not pref:
            return 0
        s = ref_slot(pref)
        if not k.pg.slot_live(s) or k.pg.count[s] <= 0:  # page_cache_get_speculative refused: being freed
            return 0
        k.pg.count[s] += 1
        k.pg.note(s, 0, k.pg.count[s], "find_get_page")
        return pref


def lookup_swap_cache(k: K, sref: int) -> int:
    """lookup_swap_cache: the swap-cache page for the entry, referenced, or 0."""
    return find_get_page(k, sref)


def add_to_swap_cache(k: K, pref: int, sref: int, site: str) -> int:
    """__add_to_swap_cache: the locked page (whose adder holds the entry's SWAP_HAS_CACHE) gets the swap cache's
    reference, PageSwapCache and page->private, then the radix tree insert under tree_lock; -EEXIST if the tree
    already holds a page for the entry (everything undone)."""
    s = k.pg.deref(pref, site)
    k.hooks.lock_rule(k, "page_locked", k.page_lock(s), 2, s, site)
    memory.get_page(k, pref, site)
    k.pg.flags[s] |= PG_SWAPCACHE
    k.pg.private[s] = sref
    sw = k.st.swap
    ss = ref_slot(sref)
    k.spoint(site)
    with k.guard:  # spin_lock_irq(&swapper_space.tree_lock); radix_tree_insert
        busy = bool(sw.page[ss])
        if not busy:
            sw.page[ss] = pref
            k.g[G_SWAPIN_HELD] -= 1
    if busy:
        k.pg.private[s] = 0
        k.pg.flags[s] &= ~PG_SWAPCACHE
        memory.put_page(k, pref, site)
        return -EEXIST
    return 0


def __delete_from_swap_cache(k: K, s: int, site: str) -> int:  # noqa: N807 - the kernel's name
    """__delete_from_swap_cache (tree_lock held): out of the radix tree, page->private and PageSwapCache
    cleared; the entry's SWAP_HAS_CACHE stays for the caller's swapcache_free. Returns the entry."""
    sref = int(k.pg.private[s])
    k.spoint(site)
    with k.guard:
        k.st.swap.page[ref_slot(sref)] = 0
        k.g[G_SWAPIN_HELD] += 1
    k.pg.private[s] = 0
    k.pg.flags[s] &= ~PG_SWAPCACHE
    return sref


@kfunc
def delete_from_swap_cache(k: K, pref: int) -> None:
    """delete_from_swap_cache: the locked page leaves the swap cache, the entry's SWAP_HAS_CACHE is cleared and
    the swap cache's page reference dropped."""
    s = k.pg.deref(pref, "delete_from_swap_cache")
    k.hooks.lock_rule(k, "page_locked", k.page_lock(s), 2, s, "delete_from_swap_cache")
    sref = __delete_from_swap_cache(k, s, "delete_from_swap_cache")
    swapfile.swapcache_free(k, sref, "delete_from_swap_cache:swapcache_free")
    memory.put_page(k, pref, "delete_from_swap_cache:page_cache_release")


@kfunc
def add_to_swap(k: K, pref: int) -> bool:
    """add_to_swap: allocate an entry for the locked anon page and put the page in the swap cache under it
    (VM_BUG_ON(!PageLocked(page))); False when swap is full."""
    s = k.pg.deref(pref, "add_to_swap")
    k.hooks.lock_rule(k, "page_locked", k.page_lock(s), 2, s, "add_to_swap")
    sref = swapfile.get_swap_page(k, "add_to_swap:get_swap_page")
    if not sref:
        return False
    if add_to_swap_cache(k, pref, sref, "add_to_swap:add_to_swap_cache"):
        swapfile.swapcache_free(k, sref, "add_to_swap:swapcache_free")
        return False
    return True  # SetPageDirty: the model writes at every pageout (deviation 12)


def swap_writepage(k: K, pref: int) -> bool:
    """swap_writepage (pageout of a locked, unmapped swap-cache page): if no swap pte names the entry any more
    the page just leaves the swap cache (try_to_free_swap; False: nothing written), else its bytes are written
    to the entry. Simplified: synchronous, under the page lock."""
    s = k.pg.deref(pref, "swap_writepage")
    if swapfile.try_to_free_swap(k, s):
        return False
    ss = k.st.swap.deref(k.pg.private[s], "swap_writepage")
    k.hooks.shared_access(k, k.st.frames, s, 0, "swap_writepage")
    k.st.swapdata[ss, :] = k.st.frames[s, :]
    return True


def swap_readpage(k: K, pref: int, sref: int) -> None:
    """swap_readpage: the entry's bytes into the new locked page, then unlock_page (end_swap_bio_read).
    Simplified: synchronous."""
    s = ref_slot(pref)
    ss = k.st.swap.deref(sref, "swap_readpage")
    k.st.frames[s, :] = k.st.swapdata[ss, :]
    k.locks.unlock(k.page_lock(s), "end_swap_bio_read:unlock_page")


@kfunc
def read_swap_cache_async(k: K, sref: int) -> int:
    """read_swap_cache_async: the swap-cache page for the entry, referenced: found in the cache, or a new page
    added and read in (swapcache_prepare, __set_page_locked, __add_to_swap_cache, swap_readpage). 0 when the
    entry is no longer in use (-ENOENT: the pte changed meanwhile). -EEXIST (another task is adding the page)
    retries after a yield."""
    new = 0
    found = 0
    while True:
        found = find_get_page(k, sref)
        if found:
            break
        if not new:
            new = memory.alloc_page(k, "read_swap_cache_async:alloc_page_vma")
        err = swapfile.swapcache_prepare(k, sref)
        if err == -EEXIST:
            k.point("read_swap_cache_async:-EEXIST", yielding=True)
            continue
        if err:
            break
        ns = ref_slot(new)
        if not k.locks.trylock(k.page_lock(ns), "read_swap_cache_async:__set_page_locked"):
            raise AssertionError("a fresh page's lock is held")  # nobody else knows the new page yet
        if not add_to_swap_cache(k, new, sref, "read_swap_cache_async:__add_to_swap_cache"):
            swap_readpage(k, new, sref)
            return new  # the allocation's reference is the caller's; the swap cache took its own
        k.locks.unlock(k.page_lock(ns), "read_swap_cache_async:unlock_page")
        swapfile.swapcache_free(k, sref, "read_swap_cache_async:swapcache_free")
    if new:
        memory.put_page(k, new, "read_swap_cache_async:page_cache_release")
    return found
