"""anon_vma and reverse mapping: the parts of 2.6.33 mm/rmap.c the model needs.

Lock order (top of mm/rmap.c): mmap_sem -> page lock -> anon_vma->lock -> page_table_lock.
In 2.6.33 a forked child's vmas join the parent's anon_vma (one anon_vma per family, no anon_vma_chain), and an
anon_vma is freed only when its vma list is empty and, since db114b83ab, its ksm_refcount is 0.
"""

from __future__ import annotations

from ..arena import ref_slot
from ..callchain import kfunc
from ..failures import Failure
from .state import K

SWAP_SUCCESS, SWAP_AGAIN, SWAP_FAIL = 0, 1, 2


# -- the anon_vma list ---------------------------------------------------------------------------------------
# The list is anon_vma->lock's (lock rule "anon_vma"): every helper that reads or changes it says so.
def list_add_tail(k: K, vref: int, avref: int) -> None:
    a = k.av.deref(avref, "list_add_tail")
    v = k.vm.deref(vref, "list_add_tail")
    k.hooks.lock_rule(k, "anon_vma", k.av_lock(a), 1, a, "list_add_tail")
    k.spoint_unless(k.av_lock(a), "list_add_tail")  # the list is anon_vma->lock's: without it, a race
    tail = k.av.tail[a]
    k.vm.av_prev[v] = tail
    k.vm.av_next[v] = 0
    k.spoint_unless(k.av_lock(a), "list_add_tail:link")  # between reading the tail and linking after it
    if tail:
        k.vm.av_next[k.vm.deref(tail, "list_add_tail")] = vref
    else:
        k.av.head[a] = vref
    k.av.tail[a] = vref


def _list_del(k: K, vref: int, avref: int) -> None:
    a = k.av.deref(avref, "list_del")
    v = k.vm.deref(vref, "list_del")
    k.hooks.lock_rule(k, "anon_vma", k.av_lock(a), 1, a, "list_del")
    k.spoint_unless(k.av_lock(a), "list_del")
    prv, nxt = k.vm.av_prev[v], k.vm.av_next[v]
    k.spoint_unless(k.av_lock(a), "list_del:unlink")  # between reading the neighbours and unlinking from them
    if prv:
        k.vm.av_next[k.vm.deref(prv, "list_del")] = nxt
    else:
        k.av.head[a] = nxt
    if nxt:
        k.vm.av_prev[k.vm.deref(nxt, "list_del")] = prv
    else:
        k.av.tail[a] = prv
    k.vm.av_next[v] = 0
    k.vm.av_prev[v] = 0


def anon_vma_vmas(k: K, avref: int, site: str) -> list[int]:
    """The vmas on an anon_vma's list, walked as list_for_each_entry does (each one dereferenced)."""
    a = k.av.deref(avref, site)
    k.hooks.lock_rule(k, "anon_vma", k.av_lock(a), 0, a, site)
    out, vref = [], k.av.head[a]
    while vref:
        out.append(vref)
        vref = k.vm.av_next[k.vm.deref(vref, site)]
    return out


def anon_vma_list_empty(k: K, a: int, site: str) -> bool:
    """list_empty(&anon_vma->head), of anon_vma slot a: read under its lock, like every access to the head."""
    k.hooks.lock_rule(k, "anon_vma", k.av_lock(a), 0, a, site)
    return bool(k.av.head[a] == 0)


def anon_vma_alloc(k: K) -> int:
    return k.kmem_cache_alloc(k.av, "anon_vma_alloc")


@kfunc
def anon_vma_free(k: K, avref: int, site: str) -> None:
    """kmem_cache_free to a SLAB_DESTROY_BY_RCU cache: the lock word stays valid, so a page_lock_anon_vma that
    raced with this free may still hold it."""
    a = ref_slot(avref)
    k.hooks.locks_freeing(k, (k.av_lock(a),), f"anon_vma[{a}]", site)
    k.av.free(avref, site)


@kfunc
def anon_vma_prepare(k: K, vref: int) -> None:
    """Give a vma its anon_vma on first fault (simplified: never reuses a neighbour's via find_mergeable)."""
    v = k.vm.deref(vref, "anon_vma_prepare")
    if k.vm.anon_vma[v]:
        return
    m = ref_slot(k.vm.mm[v])
    avref = anon_vma_alloc(k)
    a = ref_slot(avref)
    k.locks.lock(k.av_lock(a), "anon_vma_prepare")
    k.locks.lock(k.ptl(m), "anon_vma_prepare")
    v = k.vm.deref(vref, "anon_vma_prepare")
    used = False
    if not k.vm.anon_vma[v]:
        # vma->anon_vma "Serialized by page_table_lock" (mm_types.h), set with mmap_sem held for read (the fault's)
        k.hooks.lock_rule(k, "vma_anon_vma", k.ptl(m), 1, v, "anon_vma_prepare")
        k.hooks.lock_rule(k, "mmap_sem", k.mmap_sem(m), 0, m, "anon_vma_prepare")
        k.vm.anon_vma[v] = avref
        list_add_tail(k, vref, avref)
        used = True
    k.locks.unlock(k.ptl(m), "anon_vma_prepare")
    k.locks.unlock(k.av_lock(a), "anon_vma_prepare")
    if not used:
        anon_vma_free(k, avref, "anon_vma_prepare:raced")


@kfunc
def anon_vma_link(k: K, vref: int) -> None:
    """Add a new vma (a fork's copy, or a split's second half) to its anon_vma's list."""
    v = k.vm.deref(vref, "anon_vma_link")
    avref = k.vm.anon_vma[v]
    if not avref:
        return
    a = k.av.deref(avref, "anon_vma_link")
    k.locks.lock(k.av_lock(a), "anon_vma_link")
    list_add_tail(k, vref, avref)
    k.locks.unlock(k.av_lock(a), "anon_vma_link")


@kfunc
def anon_vma_unlink(k: K, vref: int) -> None:
    """munmap / exit: take the vma off its anon_vma; free the anon_vma if the list is empty and unreferenced."""
    v = k.vm.deref(vref, "anon_vma_unlink")
    avref = k.vm.anon_vma[v]
    if not avref:
        return
    a = k.av.deref(avref, "anon_vma_unlink")
    k.locks.lock(k.av_lock(a), "anon_vma_unlink")
    _list_del(k, vref, avref)
    empty = anon_vma_list_empty(k, a, "anon_vma_unlink")
    if not k.bug("free-on-empty-list"):
        empty = empty and k.av.refcount[a] == 0
    k.locks.unlock(k.av_lock(a), "anon_vma_unlink")
    if empty:
        anon_vma_free(k, avref, "anon_vma_unlink")


# -- page->index and vm_pgoff ------------------------------------------------------------------------------
def linear_page_index(k: K, v: int, addr: int) -> int:
    """page->index of the page at addr in vma slot v: vm_pgoff + (addr - vm_start). For an anon vma vm_pgoff is
    vm_start's page number at mmap, so the index equals the address until mremap moves the vma."""
    return int(k.vm.pgoff[v]) + addr - int(k.vm.start[v])


# -- mapcount ------------------------------------------------------------------------------------------------
def page_add_new_anon_rmap(k: K, pref: int, vref: int, addr: int) -> None:
    """A freshly allocated page mapped for the first time: PageAnon, mapping = vma's anon_vma."""
    from .state import PG_ANON

    s = k.pg.deref(pref, "page_add_new_anon_rmap")
    v = k.vm.deref(vref, "page_add_new_anon_rmap")
    k.pg.flags[s] = PG_ANON
    k.pg.mapping[s] = k.vm.anon_vma[v]
    k.pg.index[s] = linear_page_index(k, v, addr)
    k.pg.mapcount[s] = 1
    k.pg.note(s, 1, 1, "page_add_new_anon_rmap")


def page_add_anon_rmap(k: K, pref: int, vref: int = 0, addr: int = 0) -> None:
    """One more pte maps an anon or KSM page (replace_page's kpage, do_swap_page's swap-cache page). A KSM page
    keeps its stable node; an anon page that was mapped nowhere (first) takes the vma's anon_vma and index
    (__page_set_anon_rmap: a page read in from swap has no mapping yet)."""
    from .state import PG_ANON, PG_KSM

    s = k.pg.deref(pref, "page_add_anon_rmap")
    first = k.atomic_add(k.pg.mapcount, s, 1, "page_add_anon_rmap") == 1
    if k.pg.flags[s] & PG_KSM or not vref:
        return
    k.hooks.lock_rule(k, "page_locked", k.page_lock(s), 2, s, "page_add_anon_rmap")  # VM_BUG_ON(!PageLocked)
    if first:
        v = k.vm.deref(vref, "page_add_anon_rmap")
        k.pg.flags[s] |= PG_ANON
        k.pg.mapping[s] = k.vm.anon_vma[v]
        k.pg.index[s] = linear_page_index(k, v, addr)


def page_dup_rmap(k: K, pref: int) -> None:
    """fork's copy_one_pte: one more mapping of the same page."""
    s = k.pg.deref(pref, "page_dup_rmap")
    k.atomic_add(k.pg.mapcount, s, 1, "page_dup_rmap")


def page_remove_rmap(k: K, pref: int, site: str) -> None:
    s = k.pg.deref(pref, site)
    c = k.atomic_add(k.pg.mapcount, s, -1, site)
    if c < 0:
        raise Failure(
            "refcount-underflow",
            f"page[{s}] mapcount below zero at {site}; its last changes: {k.pg.changes(s)}",
            k.fail_details(object=f"page[{s}]", site=site),
        )


def page_mapped(k: K, s: int) -> bool:
    return k.pg.mapcount[s] > 0


# -- rmap walks ----------------------------------------------------------------------------------------------
@kfunc
def try_to_unmap_one(k: K, pref: int, vref: int, addr: int, token: object, flags: int = 0) -> int:
    """Replace the pte mapping `page` at addr in vma's mm by its swap-cache entry (TTU_UNMAP: swap_duplicate of
    page->private) or a migration entry (TTU_MIGRATION), or only look for VM_LOCKED (TTU_MUNLOCK):
    page_check_address, then as 2.6.33 (simplified: a migration makes a migration entry even for a swap-cache
    page, which move_to_new_page then refuses, deviation 25).

    A VM_LOCKED vma keeps its pte (unless TTU_IGNORE_MLOCK): out_mlock rechecks VM_LOCKED under a
    down_read_trylock of that mm's mmap_sem and then mlocks the page (SWAP_MLOCK); when the trylock fails the pte
    is kept all the same, only the lazy mlock is missed.
    """
    from . import memory
    from .state import (
        PTE_MIGRATION,
        PTE_PRESENT,
        PTE_SWAP,
        SWAP_MLOCK,
        TTU_IGNORE_MLOCK,
        TTU_MIGRATION,
        TTU_MUNLOCK,
        VM_LOCKED,
    )

    action = flags & 0xFF
    v = k.vm.deref(vref, "try_to_unmap_one")
    m = k.mmc.deref(k.vm.mm[v], "try_to_unmap_one")
    k.locks.lock(k.ptl(m), "try_to_unmap_one")
    k.hooks.walk_visit(token, m, addr)
    kind, ref, w = memory.pte_get(k, m, addr)
    if kind != PTE_PRESENT or ref != pref:
        k.locks.unlock(k.ptl(m), "try_to_unmap_one")
        return SWAP_AGAIN
    if not flags & TTU_IGNORE_MLOCK:
        if k.vm.flags[v] & VM_LOCKED:  # read without mmap_sem, as the kernel does: out_mlock rechecks under it
            k.locks.unlock(k.ptl(m), "try_to_unmap_one:out_mlock")
            ret = SWAP_AGAIN
            sem = k.mmap_sem(m)
            if k.locks.down_read_trylock(sem, "try_to_unmap_one:down_read_trylock"):
                if k.vm.flags[k.vm.deref(vref, "try_to_unmap_one:out_mlock")] & VM_LOCKED:
                    from .mlock import mlock_vma_page

                    mlock_vma_page(k, pref, vref)
                    ret = SWAP_MLOCK
                k.locks.up_read(sem, "try_to_unmap_one:up_read")
            return ret
        if action == TTU_MUNLOCK:
            k.locks.unlock(k.ptl(m), "try_to_unmap_one:out_unmap")
            return SWAP_AGAIN
    ps = k.pg.deref(pref, "try_to_unmap_one")
    if action == TTU_MIGRATION:
        # make_migration_entry(page, pte_write(pteval)): the pte names the locked page, the fault will wait on it
        memory.pte_set(k, m, addr, PTE_MIGRATION, pref, w, "try_to_unmap_one:migration")
    else:
        from .swapfile import swap_duplicate

        # shrink_page_list put the page in the swap cache first (add_to_swap): its ptes become its entry
        swap = k.pg.private[ps]
        if not swap_duplicate(k, swap, "try_to_unmap_one:swap_duplicate"):
            k.locks.unlock(k.ptl(m), "try_to_unmap_one")
            return SWAP_FAIL
        memory.pte_set(k, m, addr, PTE_SWAP, swap, 0, "try_to_unmap_one")
    page_remove_rmap(k, pref, "try_to_unmap_one")
    memory.put_page(k, pref, "try_to_unmap_one")
    k.locks.unlock(k.ptl(m), "try_to_unmap_one")
    return SWAP_AGAIN


@kfunc
def page_referenced_one(
    k: K, pref: int, vref: int, addr: int, mapcount: list[int], token: object, vm_flags: list[int] | None = None
) -> int:
    """Look at the pte mapping `page` at addr: each mapping found counts one down from *mapcount, and a referenced
    one ors its vma's vm_flags into *vm_flags.

    A VM_LOCKED vma (2.6.33): *mapcount is set to 1 before the common decrement, so the walk breaks early, *vm_flags
    gets VM_LOCKED and the mapping is NOT counted referenced, so that shrink_page_list goes on to try_to_unmap,
    which culls the page to the unevictable list. Simplified: young bits and the swap token are not modelled, so
    every other mapping found counts as referenced (deviation 11).
    """
    from . import memory
    from .state import PTE_PRESENT, VM_LOCKED

    v = k.vm.deref(vref, "page_referenced_one")
    m = k.mmc.deref(k.vm.mm[v], "page_referenced_one")
    k.locks.lock(k.ptl(m), "page_referenced_one")
    k.hooks.walk_visit(token, m, addr)
    kind, ref, _w = memory.pte_get(k, m, addr)
    found = kind == PTE_PRESENT and ref == pref
    vflags = int(k.vm.flags[v])  # read without mmap_sem, as the kernel does
    if found and vflags & VM_LOCKED:
        mapcount[0] = 0  # *mapcount = 1, then out_unmap's (*mapcount)--: break early from the loop
        found = False
        if vm_flags is not None:
            vm_flags[0] |= VM_LOCKED
    elif found:
        mapcount[0] -= 1
        if vm_flags is not None:
            vm_flags[0] |= vflags
    k.locks.unlock(k.ptl(m), "page_referenced_one")
    return int(found)


def _vma_address(k: K, s: int, vref: int, site: str) -> int:
    """vma_address: vm_start + (page->index - vm_pgoff), or -1 (-EFAULT) when that falls outside the vma."""
    # vm_start / vm_end / vm_pgoff read without mmap_sem: under anon_vma->lock, which vma_adjust holds to change a
    # listed range
    v = k.vm.deref(vref, site)
    a = int(k.vm.start[v]) + int(k.pg.index[s]) - int(k.vm.pgoff[v])
    return a if k.vm.start[v] <= a < k.vm.end[v] else -1


@kfunc
def page_lock_anon_vma(k: K, pref: int, site: str) -> int:
    """The page's anon_vma, locked; 0 if page->mapping is not an anon_vma or the page is no longer mapped.

    Under rcu_read_lock with a SLAB_DESTROY_BY_RCU cache the anon_vma is only type-stable: a racing munmap may
    free (even reuse) it before the lock is taken, and the walk then finds no vma mapping the page. So this access
    is not KASAN-checked, unlike rmap_item->anon_vma, which only ksm_refcount keeps alive. This is what an
    unlocked walk (shrink_active_list's page_referenced(page, 0)) relies on instead of the page lock: page_mapped()
    first, then anon_vma->lock. 2.6.33 reads ACCESS_ONCE(page->mapping) and refuses unless its flag bits are
    exactly PAGE_MAPPING_ANON, so a KSM page (ANON|KSM, mapping a stable_node) is never taken for an anon_vma;
    page_referenced and try_to_unmap dispatch PageKsm first, so this refusal only matters to a page upgraded to
    PageKsm in between: shrink_active_list may isolate a page after ksmd's write_protect_page counted its
    references and before try_to_merge_one_page makes it KSM, and its unlocked page_referenced then lands here.
    """
    from .state import PG_ANON, PG_KSM

    s = k.pg.deref(pref, site)
    k.spoint_unless(k.page_lock(s), "page_lock_anon_vma:ACCESS_ONCE")  # unlocked: page->mapping may change
    avref = k.pg.mapping[s]  # before the flags: set_page_stable_node sets PG_KSM before the stable node
    if k.pg.flags[s] & (PG_ANON | PG_KSM) != PG_ANON:
        return 0
    if not page_mapped(k, s):
        return 0
    k.locks.lock(k.av_lock(ref_slot(avref)), site)
    return avref


def anon_vma_vmas_rcu(k: K, avref: int, site: str) -> list[int]:
    """The vma list of a type-stable anon_vma (see page_lock_anon_vma): read through its slot, whatever the
    generation; a freed anon_vma's list is empty, a reused one's vmas are live."""
    a = ref_slot(avref)
    k.hooks.lock_rule(k, "anon_vma", k.av_lock(a), 0, a, site)
    out, vref = [], k.av.head[a]
    while vref:
        out.append(vref)
        vref = k.vm.av_next[k.vm.deref(vref, site)]
    return out


def unmap_walk_uncounted(flags: int, ret: int) -> int | None:
    """What an unmap walk tells walk_end: None (bound to unmap every mapping) for reclaim and migration; 0 (it
    stopped early, by design) once a VM_LOCKED vma answered SWAP_MLOCK; 1 (bound to visit every mapping, not to
    unmap it) for a TTU_MUNLOCK walk that went through."""
    from .state import SWAP_MLOCK, TTU_MUNLOCK

    if ret == SWAP_MLOCK:
        return 0
    return 1 if flags & 0xFF == TTU_MUNLOCK else None


@kfunc
def try_to_unmap_anon(k: K, pref: int, flags: int = 0) -> int:
    token = k.hooks.walk_begin(k, pref, "try_to_unmap_anon")
    ret = SWAP_AGAIN
    avref = page_lock_anon_vma(k, pref, "try_to_unmap_anon")
    if avref:
        s = ref_slot(pref)
        for vref in anon_vma_vmas_rcu(k, avref, "try_to_unmap_anon"):
            addr = _vma_address(k, s, vref, "try_to_unmap_anon")
            if addr < 0:
                continue
            ret = try_to_unmap_one(k, pref, vref, addr, token, flags)
            if ret != SWAP_AGAIN or not page_mapped(k, s):
                break
        k.locks.unlock(k.av_lock(ref_slot(avref)), "try_to_unmap_anon")
    k.hooks.walk_end(k, token, unmap_walk_uncounted(flags, ret))
    return ret


@kfunc
def page_referenced_anon(k: K, pref: int, vm_flags: list[int] | None = None, is_locked: bool = True) -> int:
    """Count the ptes mapping an anon page, under its anon_vma's lock (page_lock_anon_vma).

    The traversal duty (the ptes the walk must visit) is taken where the walk is first protected: with the page
    lock (is_locked) from the start, as every mapper of an anon page waits for it; without it (shrink_active_list)
    once page_lock_anon_vma holds anon_vma->lock, which holds off the vma list's changes and migration's rmap
    walks. An unlocked refusal (the page not mapped then) is 2.6.33's advisory answer, not a duty skipped: do_swap_page
    sets its pte before page_add_anon_rmap, so page_mapped may be false while a pte maps the page.
    """
    token = k.hooks.walk_begin(k, pref, "page_referenced_anon") if is_locked else None
    referenced = 0
    mapcount = [-1]
    avref = page_lock_anon_vma(k, pref, "page_referenced_anon")
    if avref:
        if token is None:
            token = k.hooks.walk_begin(k, pref, "page_referenced_anon")
        s = ref_slot(pref)
        mapcount[0] = k.pg.mapcount[s]
        for vref in anon_vma_vmas_rcu(k, avref, "page_referenced_anon"):
            addr = _vma_address(k, s, vref, "page_referenced_anon")
            if addr < 0:
                continue
            referenced += page_referenced_one(k, pref, vref, addr, mapcount, token, vm_flags)
            if not mapcount[0]:
                break
        k.locks.unlock(k.av_lock(ref_slot(avref)), "page_referenced_anon")
    # a locked walk without an anon_vma counted nothing (mapcount -1): page_lock_anon_vma's refusal is only right if
    # no pte maps the page, which the detector checks instead of taking the refusal on trust (an unlocked refusal
    # has no token: see the docstring)
    k.hooks.walk_end(k, token, mapcount[0])
    return referenced


@kfunc
def try_to_unmap(k: K, pref: int, flags: int = 0) -> int:
    """Unmap every pte of a locked page (BUG_ON(!PageLocked(page))), turning them into its swap-cache entry (or
    migration entries, TTU_MIGRATION); SWAP_SUCCESS once no pte maps it (unless a VM_LOCKED vma answered)."""
    from . import ksm
    from .memory import PageKsm
    from .state import SWAP_MLOCK

    s = k.pg.deref(pref, "try_to_unmap")
    k.hooks.lock_rule(k, "page_locked", k.page_lock(s), 2, s, "try_to_unmap")
    if PageKsm(k, s):
        ret = ksm.try_to_unmap_ksm(k, pref, flags)
    else:
        ret = try_to_unmap_anon(k, pref, flags)
    if ret != SWAP_MLOCK and not page_mapped(k, s):
        ret = SWAP_SUCCESS
    return ret


@kfunc
def page_referenced(k: K, pref: int, is_locked: bool = True, vm_flags: list[int] | None = None) -> int:
    """How many ptes referenced the page; *vm_flags gets the vm_flags of the vmas that did (VM_LOCKED from a
    VM_LOCKED one). As 2.6.33: only a mapped page with an rmapping is walked; a caller without the page lock
    (shrink_active_list: is_locked 0) trylocks a KSM page (page_referenced_ksm needs it: the stable node's hlist
    and page->mapping are the page lock's) and counts the page referenced, unwalked, if that fails, while a plain
    anon page is walked unlocked (page_lock_anon_vma: page_mapped, then anon_vma->lock). Simplified: no
    PG_referenced, no file pages, no page_test_and_clear_young (s390)."""
    from . import ksm
    from .memory import PageKsm

    s = k.pg.deref(pref, "page_referenced")
    referenced = 0
    if vm_flags is not None:
        vm_flags[0] = 0
    k.spoint_unless(k.page_lock(s), "page_referenced:page_mapped")  # unlocked (is_locked 0): the page may change
    if not page_mapped(k, s) or not k.pg.mapping[s]:  # page_mapped(page) && page_rmapping(page)
        if is_locked and not PageKsm(k, s):
            # the page lock holds off every mapper: this refusal is only right if no pte maps the page
            k.hooks.walk_end(k, k.hooks.walk_begin(k, pref, "page_referenced"), -1)
        return referenced
    we_locked = False
    # One load of page->mapping serves both PageKsm tests: on the unlocked path no store, call or barrier lies
    # between them, so the compiled code keeps the word it loaded. Read twice, ksmd's set_page_stable_node(page,
    # NULL) (try_to_merge_one_page, after write_protect_page's count test and before an isolation that came later)
    # could land in between, and page_referenced_ksm would run unlocked against its VM_BUG_ON(!PageLocked(page));
    # with one load the page goes to page_referenced_anon, whose page_lock_anon_vma refuses a KSM mapping.
    ksm_page = PageKsm(k, s)
    if not is_locked and ksm_page:  # (!PageAnon(page) || PageKsm(page)): no file pages in the model
        we_locked = k.locks.trylock(k.page_lock(s), "page_referenced:trylock_page")
        if not we_locked:
            return referenced + 1
    if ksm_page:
        referenced += ksm.page_referenced_ksm(k, pref, vm_flags)
    else:
        referenced += page_referenced_anon(k, pref, vm_flags, is_locked)
    if we_locked:
        k.locks.unlock(k.page_lock(s), "page_referenced:unlock_page")
    return referenced
