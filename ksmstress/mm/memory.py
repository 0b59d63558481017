"""Frames, struct page, ptes, faults and COW: the parts of mm/memory.c and mm/page_alloc.c the model needs.

`m` is an mm's slot index (its page table row and its mmap_sem / page_table_lock); page, vma and anon_vma
arguments are generation-tagged references, dereferenced (KASAN-checked) where the kernel would touch them.
Simplifications, each also noted at its place: one page_table_lock per mm (no split ptlocks); a read fault on an
untouched page allocates a zeroed page (no ZERO_PAGE). The swap cache is swap_state.py's, swap counts swapfile.py's.
"""

from __future__ import annotations

import numpy as np

from ..arena import ref_slot
from ..callchain import kfunc
from ..failures import Failure
from . import rmap, swap_state, swapfile
from .state import (
    GB_NR_MLOCK,
    PG_ANON,
    PG_KSM,
    PG_MLOCKED,
    PTE_MIGRATION,
    PTE_NONE,
    PTE_PRESENT,
    PTE_SWAP,
    VM_LOCKED,
    K,
    mk_pte,
    pte_decode,
)

VM_FAULT_WRITE = 1  # the fault made the pte writable (break_ksm loops until it sees this)


# -- struct page and the page allocator ------------------------------------------------------------------
def alloc_page(k: K, site: str) -> int:
    """alloc_page(GFP_HIGHUSER_MOVABLE) + clear_user_highpage: a zeroed frame with one reference."""
    k.might_sleep(site)
    ref = k.pg.alloc(site)
    s = ref_slot(ref)
    k.pg.count[s] = 1
    k.pg.note(s, 0, 1, site)
    k.st.frames[s, :] = 0
    return ref


def get_page(k: K, pref: int, site: str) -> None:
    s = k.pg.deref(pref, site)
    k.atomic_add(k.pg.count, s, 1, site)


def get_pte_page(k: K, m: int, pref: int, site: str) -> None:
    """get_page on the page a pte of mm m maps, before that pte lock is let go (lock rule "pte_page_ref"): until
    then the pte's own reference is what keeps the page alive."""
    k.hooks.lock_rule(k, "pte_page_ref", k.ptl(m), 1, ref_slot(pref), site)
    get_page(k, pref, site)


def get_page_unless_zero(k: K, s: int) -> int:
    """A reference on the page in frame s if it is still allocated (an LRU isolate of a page that may be freed
    concurrently); 0 if it is gone."""
    k.spoint("get_page_unless_zero")
    k.hooks.shared_access(k, k.pg.count, s, 1, "get_page_unless_zero")
    with k.guard:
        if not k.pg.slot_live(s) or k.pg.count[s] <= 0:
            return 0
        k.pg.count[s] += 1
        k.pg.note(s, 0, k.pg.count[s], "get_page_unless_zero")
        return k.page_ref(s)


def put_page(k: K, pref: int, site: str) -> None:
    """Drop a reference; the last one frees the frame (the traversal detector checks no pte still maps it)."""
    s = k.pg.deref(pref, site)
    c = k.atomic_add(k.pg.count, s, -1, site)
    if c < 0:
        raise Failure(
            "refcount-underflow",
            f"page[{s}] _count below zero at {site}; its last changes: {k.pg.changes(s)}",
            k.fail_details(object=f"page[{s}]", site=site),
        )
    if c == 0:
        free_page(k, pref, site)


def free_page(k: K, pref: int, site: str) -> None:
    """The page's count reached 0 (put_page_testzero, or __remove_mapping's page_freeze_refs): free the frame (the
    traversal detector checks no pte still maps it)."""
    s = ref_slot(pref)
    k.hooks.page_freeing(k, pref, site)
    # put_page_testzero, then __put_single_page -> free_hot_cold_page: between the zero count and the free the
    # page still carries its flags and mapping, so a lockless lookup (get_page_unless_zero, get_ksm_page) can
    # find it here and must be refused by its count test
    k.spoint("__put_single_page")
    k.hooks.shared_access(k, k.pg.flags, s, 1, "__put_single_page")
    with k.guard:  # free_page_mlock: a page freed mlocked leaves NR_MLOCK (the kernel's mlockfreed count)
        if k.pg.flags[s] & PG_MLOCKED:
            k.gb[GB_NR_MLOCK] -= 1
        k.pg.flags[s] = 0
    k.pg.mapping[s] = 0  # free_hot_cold_page clears an anon page's mapping: get_ksm_page relies on it
    k.pg.mapcount[s] = 0
    k.pg.free(pref, site)


def PageAnon(k: K, s: int) -> bool:  # noqa: N802 - the kernel's name
    if s < 0:  # ref_slot(NULL): a Python index of -1 would read the last frame's flags where C would oops
        k.pg.oops("PageAnon", "dereference")
    return bool(k.pg.flags[s] & PG_ANON)


def PageKsm(k: K, s: int) -> bool:  # noqa: N802
    if s < 0:  # ref_slot(NULL), as in PageAnon
        k.pg.oops("PageKsm", "dereference")
    k.spoint_unless(k.page_lock(s), "PageKsm")  # PG_KSM is set under the page lock: a test without it races
    return bool(k.pg.flags[s] & PG_KSM)


def page_mapping_nonnull(k: K, s: int) -> bool:
    """C's `page->mapping` test (truncation's check in mlock, munlock and migration): an anon or KSM page's word
    carries PAGE_MAPPING_ANON and PAGE_MAPPING_KSM beside the pointer, so it is set even while a KSM page has no
    stable node yet (try_to_merge_one_page's set_page_stable_node(page, NULL)); the model keeps those bits in
    flags, and mapping holds the pointer alone."""
    return bool(k.pg.mapping[s] or k.pg.flags[s] & (PG_ANON | PG_KSM))


def page_mapcount(k: K, s: int) -> int:
    return k.pg.mapcount[s]


def page_count(k: K, s: int) -> int:
    return k.pg.count[s]


def page_address_in_vma(k: K, pref: int, vref: int, site: str) -> int:
    """The address `page` has in `vma`, or -1 (-EFAULT) when the vma's anon_vma is not page_anon_vma(page), which
    is NULL for a KSM page: a vma with an anon_vma refuses every KSM page (write_protect_page never merges a KSM
    page that no stable node owns again, and swapoff's unuse_vma does not ask for one)."""
    s = k.pg.deref(pref, site)
    v = k.vm.deref(vref, site)
    if PageAnon(k, s):
        page_anon_vma = 0 if PageKsm(k, s) else int(k.pg.mapping[s])
        if k.vm.anon_vma[v] != page_anon_vma:
            return -1
    return rmap._vma_address(k, s, vref, site)


# -- ptes --------------------------------------------------------------------------------------------------
def pte_get(k: K, m: int, addr: int) -> tuple[int, int, int]:
    """(kind, target reference, write bit) of the pte, from one load of its word (`entry = *pte`). Every caller
    acts on what it reads, so it holds the pte lock (lock rule "pte"; the fault's lockless first read and its
    pte_same recheck are one locked read here)."""
    k.hooks.lock_rule(k, "pte", k.ptl(m), 0, m, "pte_get", addr)
    k.pte_spoint(m, "pte_get")
    return pte_decode(int(k.st.pte[m, addr]))


def pte_set(k: K, m: int, addr: int, kind: int, ref: int, write: int, site: str = "pte_set") -> None:
    """set_pte_at: one store of the whole word, so no reader sees the new kind with the old target (under the pte
    lock: the pte_stored hook checks lock rule "pte")."""
    k.pte_spoint(m, "set_pte_at")
    k.st.pte[m, addr] = mk_pte(kind, ref, write)
    pte_stored(k, m, addr, kind, ref, write, site)


def pte_wrprotect(k: K, m: int, addr: int, site: str) -> None:
    """ptep_set_wrprotect: the pte stays, read-only (the caller holds the pte lock: no store races this)."""
    kind, ref, _w = pte_get(k, m, addr)
    pte_set(k, m, addr, kind, ref, 0, site)


def ptep_clear_flush(k: K, m: int, addr: int, site: str) -> None:
    """ptep_clear_flush: the pte cleared and the TLB flushed (under the pte lock). The flush's IPI waits for every
    CPU inside get_user_pages_fast's interrupts-off walk; here that walk is one step (gup.gup_pte_range), so once
    this store is made no gup_fast can still take a reference through the old pte."""
    pte_set(k, m, addr, PTE_NONE, 0, 0, site)


def pte_mkwrite(k: K, m: int, addr: int, site: str) -> None:
    """pte_mkwrite (do_wp_page's reuse): the pte stays, writable (under the pte lock)."""
    kind, ref, _w = pte_get(k, m, addr)
    pte_set(k, m, addr, kind, ref, 1, site)


def pte_stored(k: K, m: int, addr: int, kind: int, ref: int, write: int, site: str) -> None:
    """Every pte store ends here: the pte's history ring (data-loss reports name the last stores) and the
    detectors' cheap pte checks (the pte lock held, the invariants). No scheduling point."""
    k.st.pte_hist.note(m * k.st.sz.vpages + addr, kind, ref, site, write)
    k.hooks.pte_stored(k, m, addr, kind, ref, write, site)


def follow_page(k: K, m: int, addr: int, site: str, migration: bool = False) -> int:
    """follow_page(FOLL_GET): the page mapped at addr with a reference taken, or 0. With FOLL_MIGRATION (3.9,
    `migration`), a migration entry is waited out (migration_entry_wait) and the pte read again; without it, a
    pte under migration maps no page, as in 2.6.33."""
    while True:
        k.locks.lock(k.ptl(m), site)
        kind, ref, _w = pte_get(k, m, addr)
        if kind == PTE_MIGRATION and migration:
            migration_entry_wait(k, m, ref)  # lets the pte lock go
            continue
        page = 0
        if kind == PTE_PRESENT:
            get_pte_page(k, m, ref, site)
            page = ref
        k.locks.unlock(k.ptl(m), site)
        return page


def migration_entry_wait(k: K, m: int, pref: int) -> None:
    """A fault met a migration entry naming `pref` (read under the pte lock, still held): take a reference if the
    page is still allocated, let the pte lock go, wait for the page lock the migrating task holds
    (wait_on_page_locked: modelled as lock_page + unlock_page, the same wait), drop the reference. The fault is
    then retried; a migration entry nobody removes makes it retry for ever."""
    s = ref_slot(pref)
    page = get_page_unless_zero(k, s)
    k.locks.unlock(k.ptl(m), "migration_entry_wait")
    if not page:
        return
    k.locks.lock(k.page_lock(s), "migration_entry_wait:wait_on_page_locked")
    k.locks.unlock(k.page_lock(s), "migration_entry_wait:wait_on_page_locked")
    put_page(k, page, "migration_entry_wait")


# -- faults --------------------------------------------------------------------------------------------------
@kfunc
def handle_mm_fault(k: K, m: int, vref: int, addr: int, write: bool) -> int:
    """Resolve a fault at addr of mm m inside vma vref; the caller holds mmap_sem for read."""
    ptl = k.ptl(m)
    k.locks.lock(ptl, "handle_mm_fault")
    kind, ref, w = pte_get(k, m, addr)
    if kind == PTE_NONE:
        k.locks.unlock(ptl, "handle_mm_fault")
        return do_anonymous_page(k, m, vref, addr)
    if kind == PTE_SWAP:
        k.locks.unlock(ptl, "handle_mm_fault")
        return do_swap_page(k, m, vref, addr, write, ref)  # orig_pte: the entry as read here, not read again
    if kind == PTE_MIGRATION:  # do_swap_page's is_migration_entry: wait, and let the fault be retried
        migration_entry_wait(k, m, ref)
        return 0
    if write and not w:
        return do_wp_page(k, m, vref, addr)  # entered with the pte lock held, as in the kernel
    k.locks.unlock(ptl, "handle_mm_fault")
    return VM_FAULT_WRITE if w else 0


@kfunc
def do_anonymous_page(k: K, m: int, vref: int, addr: int) -> int:
    """First touch: a zeroed page mapped writable (simplified: read faults also allocate, no ZERO_PAGE)."""
    rmap.anon_vma_prepare(k, vref)
    page = alloc_page(k, "do_anonymous_page")
    ptl = k.ptl(m)
    k.locks.lock(ptl, "do_anonymous_page")
    if pte_get(k, m, addr)[0] != PTE_NONE:
        k.locks.unlock(ptl, "do_anonymous_page")
        put_page(k, page, "do_anonymous_page:raced")
        return 0
    rmap.page_add_new_anon_rmap(k, page, vref, addr)
    pte_set(k, m, addr, PTE_PRESENT, page, 1, "do_anonymous_page")
    k.locks.unlock(ptl, "do_anonymous_page")
    return VM_FAULT_WRITE


@kfunc
def do_wp_page(k: K, m: int, vref: int, addr: int) -> int:
    """Write to a write-protected present pte; called with the pte lock held, returns with it released.

    An anon page mapped only here is reused in place; a KSM page never is (always copied). Simplified: when
    trylock_page fails the model copies instead of sleeping on the page lock (a copy is always correct).
    """
    ptl = k.ptl(m)
    _kind, old, _w = pte_get(k, m, addr)
    s = k.pg.deref(old, "do_wp_page")
    if PageAnon(k, s) and not PageKsm(k, s):
        if k.locks.trylock(k.page_lock(s), "do_wp_page:trylock_page"):
            reuse = swapfile.reuse_swap_page(k, s)
            k.locks.unlock(k.page_lock(s), "do_wp_page:unlock_page")
            if reuse:
                pte_mkwrite(k, m, addr, "do_wp_page:reuse")
                k.locks.unlock(ptl, "do_wp_page:reuse")
                return VM_FAULT_WRITE
    get_pte_page(k, m, old, "do_wp_page")  # page_cache_get(old_page), before pte_unmap_unlock
    k.locks.unlock(ptl, "do_wp_page")
    rmap.anon_vma_prepare(k, vref)
    new = alloc_page(k, "do_wp_page:cow")
    ns = ref_slot(new)
    os_ = k.pg.deref(old, "cow_user_page")
    k.hooks.shared_access(k, k.st.frames, os_, 0, "cow_user_page")
    k.st.frames[ns, :] = k.st.frames[os_, :]
    k.locks.lock(ptl, "do_wp_page:relock")
    ret = 0
    kind, cur, _w = pte_get(k, m, addr)
    if kind == PTE_PRESENT and cur == old:
        rmap.page_add_new_anon_rmap(k, new, vref, addr)
        pte_set(k, m, addr, PTE_PRESENT, new, 1, "do_wp_page:cow")
        rmap.page_remove_rmap(k, old, "do_wp_page")
        put_page(k, old, "do_wp_page:pte")  # the reference the old pte held
        new = 0
        ret = VM_FAULT_WRITE
    k.locks.unlock(ptl, "do_wp_page:done")
    if new:
        put_page(k, new, "do_wp_page:raced")
    if ret & VM_FAULT_WRITE and k.vm.flags[k.vm.deref(vref, "do_wp_page")] & VM_LOCKED:
        # don't let another task, with possibly unlocked vma, keep the mlocked page (2.6.33)
        from .mlock import munlock_vma_page

        k.locks.lock(k.page_lock(os_), "do_wp_page:lock_page")
        munlock_vma_page(k, old)
        k.locks.unlock(k.page_lock(os_), "do_wp_page:unlock_page")
    put_page(k, old, "do_wp_page:ref")
    return ret


@kfunc
def do_swap_page(k: K, m: int, vref: int, addr: int, write: bool, sref: int) -> int:
    """Fault swap entry `sref` back in: handle_mm_fault read it from the pte (orig_pte) and let the pte lock go.

    As 2.6.33: the swap-cache page (lookup_swap_cache, else read_swap_cache_async), lock_page,
    ksm_might_need_to_copy, pte_same under the pte lock, reuse_swap_page for a write, set_pte_at,
    page_add_anon_rmap, swap_free, try_to_free_swap when swap is full or the page mlocked, unlock_page, and a
    write that could not reuse goes on to do_wp_page with the pte lock held. With the later fix (deviation 26):
    after lock_page the page must still be the entry's swap-cache page, and when KSM copies, the swap-cache page
    stays locked and referenced until the swap entry is freed.

    The pte is not read again without the lock: another fault of this mm may swap the entry in and free it
    meanwhile, and the word read then is a page's reference, which can equal a swap reference. The kernel never
    rereads: swapcache_prepare fails on a freed entry, and pte_same under the pte lock decides.
    """
    from . import ksm

    ptl = k.ptl(m)
    page = swap_state.lookup_swap_cache(k, sref)
    if not page:
        page = swap_state.read_swap_cache_async(k, sref)  # swapin_readahead of one page
        if not page:  # the entry was freed: somebody else faulted this pte in meanwhile
            return 0
    s = ref_slot(page)
    k.locks.lock(k.page_lock(s), "do_swap_page:lock_page")
    # Make sure try_to_free_swap or reuse_swap_page did not release the swapcache from under us, nor give the
    # page another entry (4969c1192d15, 31c4a3d3a0f8): the page pin and pte_same are not enough
    if not swapfile.PageSwapCache(k, s) or not swapfile.same_entry(k.pg.private[s], sref):
        k.locks.unlock(k.page_lock(s), "do_swap_page:out_page")
        put_page(k, page, "do_swap_page:out_release")
        return 0
    swapcache = 0
    if ksm.ksm_might_need_to_copy(k, page, vref, addr):
        swapcache = page
        page = ksm.ksm_does_need_to_copy(k, page, vref, addr)
        s = ref_slot(page)
    k.locks.lock(ptl, "do_swap_page")
    kind, cur, _w = pte_get(k, m, addr)
    if kind != PTE_SWAP or not swapfile.same_entry(cur, sref):  # !pte_same(*page_table, orig_pte): out_nomap
        k.locks.unlock(ptl, "do_swap_page:out_nomap")
        k.locks.unlock(k.page_lock(s), "do_swap_page:out_page")
        put_page(k, page, "do_swap_page:out_release")
        if swapcache:
            k.locks.unlock(k.page_lock(ref_slot(swapcache)), "do_swap_page:unlock_swapcache")
            put_page(k, swapcache, "do_swap_page:release_swapcache")
        return 0
    # a page from the swap cache may be shared (a KSM page mapped as it is, an anon page relatives swap in too):
    # no rmap_item of this pte reaches it until ksmd rescans here
    k.hooks.window_open(k, "swapin-before-scan", m, addr, page)
    writable = 0
    if write and swapfile.reuse_swap_page(k, s):
        writable, write = 1, False
    pte_set(k, m, addr, PTE_PRESENT, page, writable, "do_swap_page")
    rmap.page_add_anon_rmap(k, page, vref, addr)
    swapfile.swap_free(k, cur, "do_swap_page:swap_free")  # swap_free(entry): the offset the pte holds
    v = k.vm.deref(vref, "do_swap_page")
    if swapfile.vm_swap_full(k) or k.vm.flags[v] & VM_LOCKED or k.pg.flags[s] & PG_MLOCKED:
        swapfile.try_to_free_swap(k, s)
    k.locks.unlock(k.page_lock(s), "do_swap_page:unlock_page")
    if swapcache:
        # held until the entry's swap count was dropped, so pte_same could not be fooled by its reuse
        k.locks.unlock(k.page_lock(ref_slot(swapcache)), "do_swap_page:unlock_swapcache")
        put_page(k, swapcache, "do_swap_page:release_swapcache")
    if write:
        return do_wp_page(k, m, vref, addr)  # entered with the pte lock held
    k.locks.unlock(ptl, "do_swap_page")
    return VM_FAULT_WRITE if writable else 0


# -- fork and unmap ------------------------------------------------------------------------------------------
@kfunc
def copy_page_range(k: K, dst: int, src: int, vref: int) -> None:
    """copy_one_pte for every pte of vma: anon and KSM ptes are shared read-only (COW), mapcount++ and a page
    reference each; swap entries get one more swap count (swap_duplicate). No rmap_item is made: ksmd has not
    seen the child."""
    st = k.st
    v = st.vma.deref(vref, "copy_page_range")
    start, end = k.vm.start[v], k.vm.end[v]
    ptl, dst_ptl = k.ptl(src), k.ptl(dst)
    skip_ksm = k.bug("fork-no-mapcount")  # the defect: a KSM pte copied without raising the page's mapcount
    k.locks.lock(dst_ptl, "copy_pte_range")  # the child's ptes are reachable by rmap walks already
    k.locks.lock_nested(ptl, "copy_pte_range:src_ptl")  # spin_lock_nested(src_ptl, SINGLE_DEPTH_NESTING)
    for addr in range(start, end):
        kind, ref, _w = pte_get(k, src, addr)
        if kind == PTE_PRESENT:
            get_pte_page(k, src, ref, "copy_one_pte")
            if not (skip_ksm and k.pg.flags[k.pg.deref(ref, "copy_one_pte")] & PG_KSM):
                rmap.page_dup_rmap(k, ref)
            # both ptes share the page: should it become KSM through one's rmap_item, the other has none of its
            # own until ksmd scans it there
            k.hooks.window_open(k, "fork-before-scan", src, addr, ref)
            k.hooks.window_open(k, "fork-before-scan", dst, addr, ref)
            pte_wrprotect(k, src, addr, "copy_one_pte:wrprotect")  # COW in the parent
            pte_set(k, dst, addr, PTE_PRESENT, ref, 0, "copy_one_pte")
        elif kind == PTE_SWAP:
            st.swap.deref(ref, "copy_one_pte:swap_duplicate")  # the entry a swap pte names is in use
            swapfile.swap_duplicate(k, ref, "copy_one_pte:swap_duplicate")
            pte_set(k, dst, addr, PTE_SWAP, ref, 0, "copy_one_pte")
        elif kind == PTE_MIGRATION:
            # a write migration entry becomes a read one in both (COW), and the child gets its copy: the
            # migration's remove_migration_ptes must find it through the shared anon_vma (or pass 1 for KSM)
            pte_set(k, src, addr, PTE_MIGRATION, ref, 0, "copy_one_pte:migration")
            pte_set(k, dst, addr, PTE_MIGRATION, ref, 0, "copy_one_pte:migration")
    k.locks.unlock(ptl, "copy_pte_range:src_ptl")
    k.locks.unlock(dst_ptl, "copy_pte_range")


@kfunc
def zap_pte_range(k: K, m: int, start: int, end: int) -> None:
    """Unmap [start, end) of mm m: every present pte drops its mapcount and page reference, every swap pte its
    swap count (free_swap_and_cache)."""
    ptl = k.ptl(m)
    k.locks.lock(ptl, "zap_pte_range")
    for addr in range(start, end):
        kind, ref, _w = pte_get(k, m, addr)
        if kind == PTE_NONE:
            continue
        pte_set(k, m, addr, PTE_NONE, 0, 0, "zap_pte_range")
        if kind == PTE_PRESENT:
            rmap.page_remove_rmap(k, ref, "zap_pte_range")
            put_page(k, ref, "zap_pte_range")
        elif kind == PTE_SWAP:
            swapfile.free_swap_and_cache(k, ref, "zap_pte_range")
        # a migration entry holds no reference (free_swap_and_cache: non_swap_entry): the pte just goes
    k.locks.unlock(ptl, "zap_pte_range")


# -- the CPU: user-space loads and stores --------------------------------------------------------------------
def cpu_store(k: K, m: int, addr: int, ref: int, data: np.ndarray) -> None:
    """The CPU's store of a page through the pte of mm m at addr, which maps `ref`: under that pte lock (lock rule
    "user-access", deviation 16), so no pte change (and its TLB flush) comes between the translation and the store."""
    k.hooks.lock_rule(k, "user-access", k.ptl(m), 1, m, "user_write", addr)
    s = k.pg.deref(ref, "user_write")
    k.hooks.shared_access(k, k.st.frames, s, 1, "user_write")  # the page's bytes: ksmd reads them unlocked
    k.st.frames[s, :] = data


def cpu_load(k: K, m: int, addr: int, ref: int) -> np.ndarray:
    """The CPU's load of a page through the pte of mm m at addr, which maps `ref`: under that pte lock, as
    cpu_store."""
    k.hooks.lock_rule(k, "user-access", k.ptl(m), 0, m, "user_read", addr)
    s = k.pg.deref(ref, "user_read")
    k.hooks.shared_access(k, k.st.frames, s, 0, "user_read")
    return k.st.frames[s, :].copy()


@kfunc
def user_write(k: K, m: int, addr: int, data: np.ndarray) -> bool:
    """A store of a whole page from user space; False is SIGSEGV (no vma).

    The store and the pte check are one step under the pte lock: the hardware plus ptep_clear_flush's TLB flush
    make a store atomic against a pte change, and the pte lock gives the model the same guarantee.
    """
    from . import mm as mmmod  # mm.py builds on this module

    ptl = k.ptl(m)
    while True:
        k.locks.lock(ptl, "user_write")
        kind, ref, w = pte_get(k, m, addr)
        if kind == PTE_PRESENT and w:
            cpu_store(k, m, addr, ref, data)
            k.locks.unlock(ptl, "user_write")
            return True
        k.locks.unlock(ptl, "user_write")
        if not mmmod.fault_in(k, m, addr, write=True):
            return False


@kfunc
def user_read(k: K, m: int, addr: int) -> np.ndarray | None:
    """A load of a whole page from user space; None is SIGSEGV (no vma)."""
    from . import mm as mmmod

    ptl = k.ptl(m)
    while True:
        k.locks.lock(ptl, "user_read")
        kind, ref, _w = pte_get(k, m, addr)
        if kind == PTE_PRESENT:
            data = cpu_load(k, m, addr, ref)
            k.locks.unlock(ptl, "user_read")
            return data
        k.locks.unlock(ptl, "user_read")
        if not mmmod.fault_in(k, m, addr, write=False):
            return None
