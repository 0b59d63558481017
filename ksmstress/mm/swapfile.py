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
from .state import (
    EEXIST,
    ENOENT,
    G_SWAPIN_HELD,
    PG_ANON,
    PG_KSM,
    PG_SWAPCACHE,
    PTE_PRESENT,
    PTE_SWAP,
    K,
    pte_decode,
)


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


# -- swapoff ---------------------------------------------------------------------------------------------------
@kfunc
def try_to_unuse(k: K) -> int:
    """swapoff's try_to_unuse: for every entry some swap pte names (find_next_to_unuse, a raw read of swap_map),
    read its page into the swap cache (read_swap_cache_async), lock it, map it back into every mm whose pte names
    the entry (unuse_mm: at most one pte per mm), and once no pte names the entry, take the page out of the swap
    cache. Returns the ptes mapped back. Simplified (deviation 27): one pass, so an entry still named at another
    index or anon_vma keeps its page for the faults (2.6.33 deletes it and reads a fresh one on a later pass); the
    swap area stays usable; the mms are put after the page lock goes (2.6.33 puts the previous mm under it)."""
    from .mm import mmput

    sw = k.st.swap
    done = 0
    for ss in [int(x) for x in sw.live_slots()]:
        k.spoint("find_next_to_unuse")
        if not sw.count[ss]:
            continue
        sref = sw.ref_of(ss)
        page = swap_state.read_swap_cache_async(k, sref)
        if not page:  # the entry was freed meanwhile: nothing maps it any more
            continue
        s = ref_slot(page)
        k.locks.lock(k.page_lock(s), "try_to_unuse:lock_page")
        held = []
        for m in [int(x) for x in k.mmc.live_slots()]:  # init_mm.mmlist, read raw
            if not sw.is_live(sref) or not sw.count[ss]:
                break
            mref = _mm_get_not_zero(k, m)
            if mref:
                held.append(mref)
                done += unuse_mm(k, m, sref, page)
        if PageSwapCache(k, s) and same_entry(k.pg.private[s], sref) and not k.st.swap.count[ss]:
            swap_state.delete_from_swap_cache(k, page)
        k.locks.unlock(k.page_lock(s), "try_to_unuse:unlock_page")
        memory.put_page(k, page, "try_to_unuse:page_cache_release")
        for mref in held:
            mmput(k, mref)
    return done


def _mm_get_not_zero(k: K, m: int) -> int:
    """atomic_inc_not_zero(&mm->mm_users): a reference on mm slot m unless it is exiting; its reference or 0."""
    k.spoint("try_to_unuse:atomic_inc_not_zero")
    with k.guard:
        if not k.mmc.slot_live(m) or k.mmc.users[m] <= 0:
            return 0
        k.mmc.users[m] += 1
        k.mmc.note(m, 0, k.mmc.users[m], "try_to_unuse:atomic_inc_not_zero")
        return k.mmc.ref_of(m)


@kfunc
def unuse_mm(k: K, m: int, sref: int, page: int) -> int:
    """unuse_mm: under mmap_sem for read (a trylock first; if it fails, the page lock is let go while waiting, as
    the lock order wants mmap_sem first), every vma with an anon_vma goes through unuse_vma."""
    from .mm import vma_list

    s = ref_slot(page)
    sem = k.mmap_sem(m)
    if not k.locks.down_read_trylock(sem, "unuse_mm:down_read_trylock"):
        k.locks.unlock(k.page_lock(s), "unuse_mm:unlock_page")
        k.locks.down_read(sem, "unuse_mm:down_read")
        k.locks.lock(k.page_lock(s), "unuse_mm:lock_page")
    done = 0
    for vref in vma_list(k, m):
        if k.vm.anon_vma[k.vm.deref(vref, "unuse_mm")]:
            done = unuse_vma(k, m, vref, sref, page)
            if done:  # one pte per mm and pass: the page now has this vma's anon_vma and index
                break
    k.locks.up_read(sem, "unuse_mm:up_read")
    return done


def unuse_vma(k: K, m: int, vref: int, sref: int, page: int) -> int:
    """unuse_vma: a page with an anon_vma can only be at its page_address_in_vma (-EFAULT: not this vma, whose
    anon_vma is another); a KSM page or a page just read in may be anywhere in the vma. Each pte is read without
    its lock (pte_offset_map) and rechecked under it by unuse_pte; the first pte mapped ends the walk (2.6.33's
    unuse_pte_range and unuse_mm return at once: the page has its anon_vma and index now)."""
    s = ref_slot(page)
    v = k.vm.deref(vref, "unuse_vma")
    if k.pg.flags[s] & PG_ANON and not k.pg.flags[s] & PG_KSM and k.pg.mapping[s]:  # page_anon_vma(page)
        addr = memory.page_address_in_vma(k, page, vref, "unuse_vma")
        if addr < 0:
            return 0
        addrs = range(addr, addr + 1)
    else:
        addrs = range(k.vm.start[v], k.vm.end[v])
    for addr in addrs:
        kind, ref, _w = pte_decode(int(k.st.pte[m, addr]))  # unuse_pte_range's unlocked look
        if kind == PTE_SWAP and same_entry(ref, sref) and unuse_pte(k, m, vref, addr, sref, page):
            return 1  # unuse_pte_range stops at the first pte it maps
    return 0


@kfunc
def unuse_pte(k: K, m: int, vref: int, addr: int, sref: int, page: int) -> int:
    """unuse_pte: map the locked swap-cache page at addr if the pte still names the entry (pte_same under the pte
    lock), get_page + page_add_anon_rmap + swap_free, as a swap-in would. 2.6.33 has no ksm_might_need_to_copy
    here (a later kernel added it, "mm,ksm: swapoff might need to copy"; its id is not verified here): unuse_vma
    reaches an anon page only at its own anon_vma and index, where 2.6.33's test never asks for a copy; the later
    test also copies a KSM page during KSM_RUN_UNMERGE, which is not modelled."""
    from . import rmap

    ptl = k.ptl(m)
    k.locks.lock(ptl, "unuse_pte")
    kind, cur, _w = memory.pte_get(k, m, addr)
    ret = 0
    if kind == PTE_SWAP and same_entry(cur, sref):
        memory.get_page(k, page, "unuse_pte")
        k.hooks.window_open(k, "swapin-before-scan", m, addr, page)  # as do_swap_page
        memory.pte_set(k, m, addr, PTE_PRESENT, page, 0, "unuse_pte")  # pte_mkold(mk_pte(page, vm_page_prot))
        rmap.page_add_anon_rmap(k, page, vref, addr)
        swap_free(k, cur, "unuse_pte:swap_free")
        ret = 1
    k.locks.unlock(ptl, "unuse_pte")
    return ret
