"""Swap entries and their counts: the parts of 2.6.33 mm/swapfile.c that KSM meets.

swap_map[offset] is two columns of the swap table: `count` (the swap ptes naming the entry) and `cache`
(SWAP_HAS_CACHE: the swap cache holds, or is adding or deleting, a page for it); the slot is freed when both are
0 (swap_entry_free). swap_lock is the model's atomic step: every read-modify-write of swap_map is one step, with a
scheduling point before it. An entry is an offset in the kernel: a swap pte whose slot was freed is caught as a
stale pte (the model's reference carries a generation), but an entry is compared as the kernel compares it, by its
offset (`same_entry`: pte_same, page_private == entry.val), so a reused slot matches as in the kernel.
"""

from __future__ import annotations

from ..arena import LIVE, ref_slot
from ..callchain import kfunc
from ..failures import Failure
from . import memory, swap_state
from .state import EEXIST, ENOENT, G_SWAPIN_HELD, PG_SWAPCACHE, K


def PageSwapCache(k: K, s: int) -> bool:  # noqa: N802 - the kernel's name
    return bool(k.pg.flags[s] & PG_SWAPCACHE)


def same_entry(a: int, b: int) -> bool:
    """Two swap references name the same entry (offset), whatever the slot's generation."""
    return ref_slot(a) == ref_slot(b)


def vm_swap_full(k: K) -> bool:
    """vm_swap_full(): more than half of the swap area is in use (nr_swap_pages * 2 < total_swap_pages); the
    model's swap area is the swap table, in use = its live slots."""
    sw = k.st.swap
    return int((sw.state == LIVE).sum()) * 2 > sw.capacity


def get_swap_page(k: K, site: str) -> int:
    """get_swap_page: a free entry with swap_map = SWAP_HAS_CACHE (scan_swap_map(si, SWAP_HAS_CACHE)), or 0 when
    the swap area is full. Its page is not in the swap cache yet (the tally G_SWAPIN_HELD counts it)."""
    sw = k.st.swap
    k.spoint("get_swap_page")
    with k.guard:
        if not (sw.state != LIVE).any():
            return 0
        sref = sw.alloc(site)
        ss = ref_slot(sref)
        sw.cache[ss] = 1
        sw.note(ss, 1, 1, site)
        k.g[G_SWAPIN_HELD] += 1
    return sref


def _swap_entry_free(k: K, sref: int, usage_cache: bool, site: str) -> tuple[int, int]:
    """swap_entry_free(p, entry, usage): drop one swap count (or SWAP_HAS_CACHE) and free the slot when nothing
    is left; returns what is left (count, cache). The entry is dereferenced (swap_info_get's "Unused swap
    offset" check: a freed entry is a use-after-free)."""
    sw = k.st.swap
    ss = sw.deref(sref, site)
    k.spoint(site)
    with k.guard:
        if usage_cache:
            if not sw.cache[ss]:
                raise Failure(
                    "refcount-underflow",
                    f"swap[{ss}] SWAP_HAS_CACHE cleared twice at {site}; its last changes: {sw.changes(ss)}",
                    k.fail_details(object=f"swap[{ss}]", site=site),
                )
            sw.cache[ss] = 0
            sw.note(ss, 1, 0, site)
            k.g[G_SWAPIN_HELD] -= 1  # the page was already out of swapper_space (or never got in)
        else:
            c = sw.count[ss] - 1
            sw.count[ss] = c
            sw.note(ss, 0, c, site)
            if c < 0:
                raise Failure(
                    "refcount-underflow",
                    f"swap[{ss}] count below zero at {site}; its last changes: {sw.changes(ss)}",
                    k.fail_details(object=f"swap[{ss}]", site=site),
                )
        left = int(sw.count[ss]), int(sw.cache[ss])
        if left == (0, 0):
            sw._free(sref, site)
    return left


def swap_free(k: K, sref: int, site: str) -> None:
    """swap_free: a swap pte's reference on the entry is gone."""
    _swap_entry_free(k, sref, False, site)


def swapcache_free(k: K, sref: int, site: str) -> None:
    """swapcache_free: SWAP_HAS_CACHE cleared (the page left the swap cache, or never entered it)."""
    _swap_entry_free(k, sref, True, site)


def swap_duplicate(k: K, sref: int, site: str) -> bool:
    """swap_duplicate (__swap_duplicate(entry, 1)): one more swap pte will name the entry; False (-ENOENT) if
    it is not in use. swap_map lives as long as the swap area, so a freed entry is read raw, not KASAN-checked."""
    sw = k.st.swap
    ss = ref_slot(sref)
    k.spoint(site)
    with k.guard:
        if not sw.is_live(sref) or (sw.count[ss] == 0 and not sw.cache[ss]):
            return False
        sw.count[ss] += 1
        sw.note(ss, 0, int(sw.count[ss]), site)
        return True


def swapcache_prepare(k: K, sref: int) -> int:
    """swapcache_prepare (__swap_duplicate(entry, SWAP_HAS_CACHE)): 0 when this task now owns the entry's
    SWAP_HAS_CACHE and must add a page for it; -EEXIST when another holds it (a page is or is being added);
    -ENOENT when no swap pte names the entry any more (it was freed since the pte was read)."""
    sw = k.st.swap
    ss = ref_slot(sref)
    k.spoint("swapcache_prepare")
    k.hooks.shared_access(k, sw.count, ss, 1, "swapcache_prepare")
    with k.guard:
        if not sw.is_live(sref) or sw.count[ss] == 0:
            return -ENOENT
        if sw.cache[ss]:
            return -EEXIST
        sw.cache[ss] = 1
        sw.note(ss, 1, 1, "swapcache_prepare")
        k.g[G_SWAPIN_HELD] += 1
        return 0


def page_swapcount(k: K, s: int) -> int:
    """page_swapcount: the swap ptes naming the locked swap-cache page's entry (SWAP_HAS_CACHE not counted)."""
    sref = k.pg.private[s]
    ss = k.st.swap.deref(sref, "page_swapcount")
    k.spoint("page_swapcount")
    return int(k.st.swap.count[ss])


def reuse_swap_page(k: K, s: int) -> bool:
    """Whether the faulting mm may write to the locked anon page in place: page_mapcount, plus the swap ptes
    still naming its entry when it is in the swap cache, is at most 1; if it is exactly 1 the page leaves the
    swap cache (delete_from_swap_cache, SetPageDirty), as its copy on swap is about to go stale.

    The PageKsm recheck matters: do_wp_page tested PageKsm before taking the page lock, and ksmd may have made
    the page a KSM page (set_page_stable_node, then unlock_page) in between. VM_BUG_ON(!PageLocked(page)).
    """
    k.hooks.lock_rule(k, "page_locked", k.page_lock(s), 2, s, "reuse_swap_page")
    if memory.PageKsm(k, s):
        return False
    count = memory.page_mapcount(k, s)
    if count <= 1 and PageSwapCache(k, s):
        count += page_swapcount(k, s)
        if count == 1:  # && !PageWriteback: the model's writes are synchronous (deviation 12)
            swap_state.delete_from_swap_cache(k, k.page_ref(s))
    return count <= 1


def try_to_free_swap(k: K, s: int) -> bool:
    """try_to_free_swap: the locked page leaves the swap cache if no swap pte names its entry any more."""
    k.hooks.lock_rule(k, "page_locked", k.page_lock(s), 2, s, "try_to_free_swap")
    if not PageSwapCache(k, s):
        return False
    if page_swapcount(k, s):
        return False
    swap_state.delete_from_swap_cache(k, k.page_ref(s))
    return True


@kfunc
def free_swap_and_cache(k: K, sref: int, site: str) -> None:
    """free_swap_and_cache (zap_pte_range, under the pte lock): drop the pte's swap count; when only the swap
    cache is left, find its page and, if trylock_page succeeds, delete it from the swap cache unless it is still
    mapped (and swap is not full). A failed trylock leaves the page in the swap cache for reclaim."""
    count, cache = _swap_entry_free(k, sref, False, site)
    if count or not cache:
        return
    page = swap_state.find_get_page(k, sref)
    if not page:
        return
    s = ref_slot(page)
    if k.locks.trylock(k.page_lock(s), "free_swap_and_cache:trylock_page"):
        if PageSwapCache(k, s) and (not memory.page_mapcount(k, s) or vm_swap_full(k)):
            swap_state.delete_from_swap_cache(k, page)
        k.locks.unlock(k.page_lock(s), "free_swap_and_cache:unlock_page")
    memory.put_page(k, page, "free_swap_and_cache:page_cache_release")
