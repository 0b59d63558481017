"""KSM as in Linux 2.6.33 mm/ksm.c after db114b83ab "ksm: hold anon_vma in rmap_item".

ksmd walks the mm_slots' vmas (scan_get_next_rmap_item), keeps one rmap_item per scanned page, and for each page
(cmp_and_merge_page) first searches the stable tree of KSM pages, then, if its checksum has settled, the unstable
tree of this pass's candidates; two equal pages are merged by write-protecting them and pointing the ptes at one
of them (try_to_merge_two_pages), which becomes a KSM page with a stable_node. An rmap_item in the stable tree
records its page's anon_vma and holds a reference on it (hold_anon_vma / drop_anon_vma), so the rmap walks
(page_referenced_ksm, try_to_unmap_ksm) can lock that anon_vma even after the vma it came from is gone; they
walk it twice: pass 0 for the rmap_item's own mm, pass 1 for other mms (ptes forked before ksmd came round).

All stable and unstable tree changes run under ksm_thread_mutex (ksmd, or run=2 from sysfs); a stable node's
rmap_item list changes only under the KSM page's lock, which the rmap walkers hold.
"""

from __future__ import annotations

import zlib

from ..arena import ref_slot
from ..callchain import kfunc
from ..failures import Failure
from . import memory, mlock, rmap, swapfile
from . import mm as _mm  # mm.py calls back into this module: bind names at call time
from .state import (
    G_MAX_REFCOUNT,
    G_PAGES_SHARED,
    G_PAGES_SHARING,
    G_PAGES_UNSHARED,
    G_REFCOUNT_BITS,
    G_RMAP_ITEMS,
    G_RUN,
    G_SCAN_ADDRESS,
    G_SCAN_RL_KIND,
    G_SCAN_RL_REF,
    G_SCAN_SLOT,
    G_SEQNR,
    G_STABLE_ROOT,
    G_UNSTABLE_ROOT,
    KSM_RUN_MERGE,
    KSM_RUN_UNMERGE,
    MM_SLOT_HEAD,
    MMF_VM_MERGEABLE,
    PG_ANON,
    PG_KSM,
    PTE_PRESENT,
    RL_ITEM,
    RL_SLOT,
    SEQNR_MASK,
    STABLE_FLAG,
    UNSTABLE_FLAG,
    VM_LOCKED,
    VM_MERGEABLE,
    K,
)
from .tree import Tree

MADV_MERGEABLE, MADV_UNMERGEABLE = 12, 13
EFAULT = -14


# The trees, the ksm_scan cursor's rmap_lists and the counters are ksm_thread_mutex's (lock rule); the mm_slot list
# is ksm_mmlist_lock's; a stable node's hlist is its KSM page lock's. Each helper below names the lock it needs.
def stable_tree(k: K) -> Tree:
    k.hooks.lock_rule(k, "stable_tree", k.ksm_thread_mutex, 2, 0, "stable_tree")
    return Tree(k, k.st.stable_node, G_STABLE_ROOT)


def unstable_tree(k: K) -> Tree:
    k.hooks.lock_rule(k, "unstable_tree", k.ksm_thread_mutex, 2, 0, "unstable_tree")
    return Tree(k, k.st.rmap_item, G_UNSTABLE_ROOT)


def _inc(k: K, cell: int) -> None:
    k.hooks.lock_rule(k, "ksm_counters", k.ksm_thread_mutex, 1, cell, "counter++")
    k.g[cell] += 1


def _dec(k: K, cell: int, what: str) -> None:
    """counter--, checked: the model reports a counter going below zero, where the kernel's would just wrap."""
    k.hooks.lock_rule(k, "ksm_counters", k.ksm_thread_mutex, 1, cell, "counter--")
    if k.g[cell] <= 0:
        raise Failure("counters", f"ksm_{what} would go below zero", k.fail_details(counter=what))
    k.g[cell] -= 1


def _anon_vma_refcounted(k: K) -> bool:
    """Whether rmap_items reference their anon_vma (db114b83ab); variant no-anon-vma-ref is the lifetime before."""
    return not k.bug("no-anon-vma-ref")


def _rmap_walk_passes(k: K) -> int:
    """Pass 0 (the rmap_item's own mm), then pass 1 (other mms: ptes forked since); single-pass-walk stops at 0."""
    return 1 if k.bug("single-pass-walk") else 2


# -- anon_vma references (the commit under test) -------------------------------------------------------------
@kfunc
def hold_anon_vma(k: K, iref: int, avref: int) -> None:
    """Record the page's anon_vma in the rmap_item and take a reference (ksm_refcount++)."""
    i = k.ri.deref(iref, "hold_anon_vma")
    k.ri.anon_vma[i] = avref
    if not _anon_vma_refcounted(k):
        return  # the pre-db114b83ab lifetime: recorded, not referenced
    a = k.av.deref(avref, "hold_anon_vma")
    c = k.atomic_add(k.av.refcount, a, 1, "hold_anon_vma", i + 1)  # atomic_inc
    bits = 8 if k.bug("narrow-refcount") else int(k.g[G_REFCOUNT_BITS])
    if c >= 1 << (bits - 1):  # atomic_t is signed: this value is negative
        raise Failure(
            "refcount-overflow",
            f"anon_vma[{a}] ksm_refcount wrapped at {bits} bits",
            k.fail_details(object=f"anon_vma[{a}]", count=c),
        )
    if c > k.g[G_MAX_REFCOUNT]:
        k.g[G_MAX_REFCOUNT] = c


@kfunc
def drop_anon_vma(k: K, iref: int) -> None:
    """atomic_dec_and_lock(&ksm_refcount, &anon_vma->lock): the last reference frees an anon_vma whose vma list
    is already empty."""
    if not _anon_vma_refcounted(k):
        return
    i = k.ri.deref(iref, "drop_anon_vma")
    avref = k.ri.anon_vma[i]
    a = k.av.deref(avref, "drop_anon_vma")
    k.spoint("drop_anon_vma:atomic_add_unless")
    k.hooks.shared_access(k, k.av.refcount, a, 1, "drop_anon_vma:atomic_add_unless")
    with k.guard:  # atomic_add_unless(-1, 1): not the last reference, no lock
        c = k.av.refcount[a]
        if c > 1:
            k.av.refcount[a] = c - 1
            k.av.note(a, 0, c - 1, "drop_anon_vma", i + 1)
    if c <= 0:
        raise Failure(
            "refcount-underflow",
            f"anon_vma[{a}] ksm_refcount dropped below zero at drop_anon_vma (rmap_item[{i}]); its last changes: "
            f"{k.av.changes(a)}",
            k.fail_details(object=f"anon_vma[{a}]", site="drop_anon_vma"),
        )
    if c != 1:
        return
    if k.bug("unlocked-refcount-drop"):
        # the defect: the last decrement and the list test without anon_vma->lock, so anon_vma_unlink can see
        # refcount 0 and an empty list in between and free it under us
        k.atomic_add(k.av.refcount, a, -1, "drop_anon_vma:unlocked", i + 1)
        k.spoint_unless(k.av_lock(a), "drop_anon_vma:list_empty")  # a read of the list without its lock
        if k.av.head[k.av.deref(avref, "drop_anon_vma:list_empty")] == 0:
            rmap.anon_vma_free(k, avref, "drop_anon_vma")
        return
    lid = k.av_lock(a)
    k.locks.lock(lid, "drop_anon_vma")
    a = k.av.deref(avref, "drop_anon_vma")
    if k.atomic_add(k.av.refcount, a, -1, "drop_anon_vma", i + 1) == 0:
        empty = rmap.anon_vma_list_empty(k, a, "drop_anon_vma")
        k.locks.unlock(lid, "drop_anon_vma")
        if empty:
            rmap.anon_vma_free(k, avref, "drop_anon_vma")
    else:
        k.locks.unlock(lid, "drop_anon_vma")


# -- stable tree ---------------------------------------------------------------------------------------------
def _hlist(k: K, nref: int, site: str) -> list[int]:
    """hlist_for_each_entry over the stable node's rmap_items (the caller holds the KSM page's lock, or the page is
    gone: see remove_node_from_stable_tree)."""
    n = k.sn.deref(nref, site)
    out, iref = [], k.sn.hfirst[n]
    while iref:
        out.append(iref)
        iref = k.ri.hnext[k.ri.deref(iref, site)]
    return out


def _hlist_del(k: K, iref: int) -> None:
    i = k.ri.deref(iref, "hlist_del")
    lid = k.page_lock(k.sn.kpfn[ref_slot(k.ri.head[i])])  # the stable node's list is its KSM page lock's
    k.hooks.lock_rule(k, "stable_node", lid, 1, ref_slot(k.ri.head[i]), "hlist_del")
    k.spoint_unless(lid, "hlist_del")
    prv, nxt = k.ri.hprev[i], k.ri.hnext[i]
    k.spoint_unless(lid, "hlist_del:unlink")  # between reading the neighbours and unlinking from them
    if prv:
        k.ri.hnext[k.ri.deref(prv, "hlist_del")] = nxt
    else:
        k.sn.hfirst[k.sn.deref(k.ri.head[i], "hlist_del")] = nxt
    if nxt:
        k.ri.hprev[k.ri.deref(nxt, "hlist_del")] = prv
    k.ri.hnext[i] = k.ri.hprev[i] = 0


@kfunc
def remove_node_from_stable_tree(k: K, nref: int) -> None:
    """A stale stable_node: un-count and un-reference its rmap_items (they stay linked), erase and free it."""
    # the hlist walked without the page lock: the KSM page is gone (get_ksm_page found it stale), so no rmap walk
    # can reach this node any more, and ksm_thread_mutex serialises ksmd's own changes
    for iref in _hlist(k, nref, "remove_node_from_stable_tree"):
        i = k.ri.deref(iref, "remove_node_from_stable_tree")
        if k.ri.hnext[i]:
            _dec(k, G_PAGES_SHARING, "pages_sharing")
        else:
            _dec(k, G_PAGES_SHARED, "pages_shared")
        drop_anon_vma(k, iref)
        k.ri.flags[k.ri.deref(iref, "remove_node_from_stable_tree")] &= ~STABLE_FLAG
        k.cond_resched("remove_node_from_stable_tree:cond_resched")
    stable_tree(k).erase(nref)
    k.sn.free(nref, "free_stable_node")


@kfunc
def get_ksm_page(k: K, nref: int) -> int:
    """The stable node's KSM page with a reference taken, or 0 after pruning a stale node.

    struct pages are never freed in the kernel, so the frame at kpfn is read raw (not KASAN-checked): a page
    that was freed or reused simply no longer carries this node in its mapping.
    """
    s = k.sn.kpfn[k.sn.deref(nref, "get_ksm_page")]
    pg = k.pg
    k.spoint("get_ksm_page")  # lockless: the page's mapping, flags and count, then get_page_unless_zero
    k.hooks.shared_access(k, pg.mapping, s, 0, "get_ksm_page")
    k.hooks.shared_access(k, pg.count, s, 1, "get_ksm_page")
    with k.guard:  # get_page_unless_zero, then the mapping recheck: one atomic step here (simplified)
        if pg.slot_live(s) and pg.mapping[s] == nref and pg.flags[s] & PG_KSM and pg.count[s] > 0:
            pg.count[s] += 1
            pg.note(s, 0, pg.count[s], "get_ksm_page")
            return k.page_ref(s)
    remove_node_from_stable_tree(k, nref)
    return 0


def stable_tree_append(k: K, iref: int, nref: int) -> None:
    i = k.ri.deref(iref, "stable_tree_append")
    n = k.sn.deref(nref, "stable_tree_append")
    k.ri.head[i] = nref
    k.ri.flags[i] |= STABLE_FLAG
    lid = k.page_lock(k.sn.kpfn[n])  # the stable node's list is its KSM page lock's
    k.hooks.lock_rule(k, "stable_node", lid, 1, n, "stable_tree_append")
    k.spoint_unless(lid, "stable_tree_append")
    first = k.sn.hfirst[n]
    k.ri.hnext[i] = first
    k.ri.hprev[i] = 0
    k.spoint_unless(lid, "stable_tree_append:link")  # between reading the first item and linking before it
    if first:
        k.ri.hprev[k.ri.deref(first, "stable_tree_append")] = iref
    k.sn.hfirst[n] = iref
    _inc(k, G_PAGES_SHARING if first else G_PAGES_SHARED)


def memcmp_pages(k: K, a: int, b: int) -> int:
    sa, sb = k.pg.deref(a, "memcmp_pages"), k.pg.deref(b, "memcmp_pages")
    k.hooks.shared_access(k, k.st.frames, sa, 0, "memcmp_pages")
    k.hooks.shared_access(k, k.st.frames, sb, 0, "memcmp_pages")
    fa = k.st.frames[sa].tobytes()
    fb = k.st.frames[sb].tobytes()
    return (fa > fb) - (fa < fb)


def calc_checksum(k: K, pref: int) -> int:
    """jhash2 of the page in the kernel; crc32 here (only equality over time matters)."""
    s = k.pg.deref(pref, "calc_checksum")
    k.hooks.shared_access(k, k.st.frames, s, 0, "calc_checksum")  # without the page lock: the page may be written
    return zlib.crc32(k.st.frames[s].tobytes())


@kfunc
def stable_tree_search(k: K, pref: int) -> int:
    s = k.pg.deref(pref, "stable_tree_search")
    k.spoint_unless(k.page_lock(s), "stable_tree_search:PageKsm")
    if k.pg.flags[s] & PG_KSM and k.pg.mapping[s]:  # ksm page forked
        memory.get_page(k, pref, "stable_tree_search")
        return pref
    tree = stable_tree(k)
    node = tree.root
    while node:
        tpage = get_ksm_page(k, node)
        if not tpage:
            return 0
        ret = memcmp_pages(k, pref, tpage)
        if ret == 0:
            if k.later("page_sharing_candidate"):  # 4.13: a node no rmap_item hangs on takes no sharer
                if not k.sn.hfirst[k.sn.deref(node, "stable_tree_search")]:
                    memory.put_page(k, tpage, "stable_tree_search")
                    return 0  # simplified: 4.13's stable_tree_insert would chain a twin; ours still refuses one
            return tpage
        memory.put_page(k, tpage, "stable_tree_search")
        node = tree.child(node, ret < 0)
    return 0


@kfunc
def stable_tree_insert(k: K, kpref: int) -> int:
    tree = stable_tree(k)
    parent, go_left, node = 0, False, tree.root
    while node:
        tpage = get_ksm_page(k, node)
        if not tpage:
            return 0
        ret = memcmp_pages(k, kpref, tpage)
        memory.put_page(k, tpage, "stable_tree_insert")
        if ret == 0:
            return 0  # not found by the search because kpage was not yet write-protected then
        parent, go_left = node, ret < 0
        node = tree.child(node, go_left)
    nref = k.kmem_cache_alloc(k.sn, "alloc_stable_node")
    tree.link(parent, go_left, nref)
    ks = k.pg.deref(kpref, "stable_tree_insert")
    k.sn.kpfn[ref_slot(nref)] = ks
    set_page_stable_node(k, ks, nref)
    return nref


def set_page_stable_node(k: K, s: int, nref: int) -> None:
    """page->mapping = the stable node (0: none yet), PageAnon and PageKsm: under the page's lock."""
    k.hooks.lock_rule(k, "page_stable_node", k.page_lock(s), 1, s, "set_page_stable_node")
    k.spoint_unless(k.page_lock(s), "set_page_stable_node")
    k.pg.flags[s] |= PG_ANON | PG_KSM  # PageMlocked stays as it was
    k.pg.mapping[s] = nref


# -- removing rmap_items -------------------------------------------------------------------------------------
@kfunc
def remove_rmap_item_from_tree(k: K, iref: int) -> None:
    i = k.ri.deref(iref, "remove_rmap_item_from_tree")
    flags = k.ri.flags[i]
    if flags & STABLE_FLAG:
        nref = k.ri.head[i]
        page = get_ksm_page(k, nref)
        if page:
            ps = ref_slot(page)
            k.locks.lock(k.page_lock(ps), "remove_rmap_item_from_tree")
            _hlist_del(k, iref)
            k.locks.unlock(k.page_lock(ps), "remove_rmap_item_from_tree")
            memory.put_page(k, page, "remove_rmap_item_from_tree")
            if k.sn.hfirst[k.sn.deref(nref, "remove_rmap_item_from_tree")]:
                _dec(k, G_PAGES_SHARING, "pages_sharing")
            else:
                _dec(k, G_PAGES_SHARED, "pages_shared")
            drop_anon_vma(k, iref)
            k.ri.flags[k.ri.deref(iref, "remove_rmap_item_from_tree")] &= ~STABLE_FLAG
    elif flags & UNSTABLE_FLAG:
        age = (int(k.g[G_SEQNR]) - k.ri.seqnr[i]) & SEQNR_MASK
        if age > 1:
            raise Failure("bug-on", f"rmap_item[{i}] unstable age {age} > 1", k.fail_details(object=f"rmap_item[{i}]"))
        if age == 0:
            unstable_tree(k).erase(iref)
        _dec(k, G_PAGES_UNSHARED, "pages_unshared")
        k.ri.flags[i] &= ~UNSTABLE_FLAG
    k.cond_resched("remove_rmap_item_from_tree:cond_resched")


def free_rmap_item(k: K, iref: int) -> None:
    _dec(k, G_RMAP_ITEMS, "rmap_items")
    k.ri.mm[k.ri.deref(iref, "free_rmap_item")] = 0
    k.ri.free(iref, "free_rmap_item")


def _get_rl(k: K, kind: int, ref: int) -> int:
    if kind == RL_SLOT:
        return k.ms.rmap_list[k.ms.deref(ref, "rmap_list")]
    return k.ri.rmap_next[k.ri.deref(ref, "rmap_list")]


def _set_rl(k: K, kind: int, ref: int, val: int) -> None:
    k.hooks.lock_rule(k, "rmap_list", k.ksm_thread_mutex, 1, 0, "rmap_list")
    k.spoint_unless(k.ksm_thread_mutex, "rmap_list")  # rmap_list is ksmd's, under ksm_thread_mutex
    if kind == RL_SLOT:
        k.ms.rmap_list[k.ms.deref(ref, "rmap_list")] = val
    else:
        k.ri.rmap_next[k.ri.deref(ref, "rmap_list")] = val


@kfunc
def remove_trailing_rmap_items(k: K, kind: int, ref: int) -> None:
    while True:
        iref = _get_rl(k, kind, ref)
        if not iref:
            return
        _set_rl(k, kind, ref, k.ri.rmap_next[k.ri.deref(iref, "remove_trailing")])
        remove_rmap_item_from_tree(k, iref)
        free_rmap_item(k, iref)


# -- breaking COW --------------------------------------------------------------------------------------------
@kfunc
def break_ksm(k: K, vref: int, addr: int) -> int:
    """Fault a write on a KSM page until the pte no longer maps one (the caller holds mmap_sem).

    Simplified: no VM_FAULT_OOM / VM_FAULT_SIGBUS (the model's faults cannot fail), so it always returns 0.
    """
    v = k.vm.deref(vref, "break_ksm")
    m = k.mmc.deref(k.vm.mm[v], "break_ksm")
    while True:
        k.cond_resched("break_ksm:cond_resched")
        # FOLL_MIGRATION (3.9, 5117b3b835f2; deviation 23): a KSM page under migration is waited for, not taken
        # for "no page here"; the 2.6.33 code (variant break-ksm-no-foll-migration) returns, leaving it merged
        page = memory.follow_page(k, m, addr, "break_ksm", migration=not k.bug("break-ksm-no-foll-migration"))
        if not page:
            return 0
        if memory.PageKsm(k, ref_slot(page)):
            ret = memory.handle_mm_fault(k, m, vref, addr, write=True)
        else:
            ret = memory.VM_FAULT_WRITE
        memory.put_page(k, page, "break_ksm")
        if ret & memory.VM_FAULT_WRITE:
            return 0


def _vma_for_item(k: K, m: int, addr: int, site: str) -> int:
    """find_vma + the vm_start check, and the VM_MERGEABLE / anon_vma checks of break_cow and friends."""
    vref = _mm.find_vma(k, m, addr)
    if not vref:
        return 0
    v = k.vm.deref(vref, site)
    if k.vm.start[v] > addr or not (k.vm.flags[v] & VM_MERGEABLE) or not k.vm.anon_vma[v]:
        return 0
    return vref


@kfunc
def break_cow(k: K, iref: int) -> None:
    """Undo a merge: drop the rmap_item's anon_vma reference first, then break COW at its address."""
    i = k.ri.deref(iref, "break_cow")
    mref, addr = k.ri.mm[i], k.ri.address[i]
    drop_anon_vma(k, iref)
    m = k.mmc.deref(mref, "break_cow")
    k.locks.down_read(k.mmap_sem(m), "break_cow")
    if not _mm.ksm_test_exit(k, m):
        vref = _vma_for_item(k, m, addr, "break_cow")
        if vref:
            break_ksm(k, vref, addr)
    k.locks.up_read(k.mmap_sem(m), "break_cow")


def get_mergeable_page(k: K, iref: int) -> int:
    i = k.ri.deref(iref, "get_mergeable_page")
    mref, addr = k.ri.mm[i], k.ri.address[i]
    m = k.mmc.deref(mref, "get_mergeable_page")
    k.locks.down_read(k.mmap_sem(m), "get_mergeable_page")
    page = 0
    if not _mm.ksm_test_exit(k, m) and _vma_for_item(k, m, addr, "get_mergeable_page"):
        page = memory.follow_page(k, m, addr, "get_mergeable_page")
        if page and not memory.PageAnon(k, ref_slot(page)):
            memory.put_page(k, page, "get_mergeable_page")
            page = 0
    k.locks.up_read(k.mmap_sem(m), "get_mergeable_page")
    return page


# -- merging -------------------------------------------------------------------------------------------------
@kfunc
def write_protect_page(k: K, vref: int, pref: int) -> tuple[int, tuple[int, int]]:
    """Make the page's pte read-only, refusing if someone holds an extra reference (O_DIRECT, GUP, reclaim).

    As 2.6.33: the pte is cleared and flushed first (ptep_clear_flush), then `page_mapcount + 1 + swapped !=
    page_count` is checked and the pte restored on a mismatch. get_user_pages_fast takes its reference without
    any lock, so only a check made once no pte maps the page can see every reference taken through it.
    Deviation 31: a read-only pte is checked too (2.6.33 checks only a writable one; variant
    `wrprotect-readonly-unchecked`).
    Returns (err, orig_pte) where orig_pte is (page ref, write bit) as replace_page must find it again.
    """
    v = k.vm.deref(vref, "write_protect_page")
    m = k.mmc.deref(k.vm.mm[v], "write_protect_page")
    addr = memory.page_address_in_vma(k, pref, vref, "write_protect_page")
    if addr < 0:
        return EFAULT, (0, 0)
    k.locks.lock(k.ptl(m), "write_protect_page")
    kind, ref, w = memory.pte_get(k, m, addr)
    err = EFAULT
    if kind == PTE_PRESENT and ref == pref:  # page_check_address
        s = ref_slot(pref)
        if not w and k.bug("wrprotect-readonly-unchecked"):
            err = 0  # 2.6.33: a read-only pte is taken as it is, whatever references the page has
        elif k.bug("wrprotect-check-before-clear"):
            # the defect: the counts are read while the pte still maps the page writable, so a gup_fast that
            # reads the pte after the check takes a reference this check never sees
            ok = _gup_count_ok(k, s)
            # another CPU runs between the count read and the pte store (with 2.6.33's order this point would
            # change nothing: the pte is clear and a gup_fast falls back to the slow path, which waits for the
            # pte lock, so the faithful path keeps its schedules without it)
            k.spoint("write_protect_page:set_pte")
            if ok:
                memory.pte_wrprotect(k, m, addr, "write_protect_page")
                err = 0
        else:
            memory.ptep_clear_flush(k, m, addr, "write_protect_page:ptep_clear_flush")
            if _gup_count_ok(k, s):
                memory.pte_set(k, m, addr, PTE_PRESENT, ref, 0, "write_protect_page")  # pte_wrprotect(entry)
                err = 0
            else:
                memory.pte_set(k, m, addr, PTE_PRESENT, ref, w, "write_protect_page:restore")
    k.locks.unlock(k.ptl(m), "write_protect_page")
    return err, (ref, 0)


def _gup_count_ok(k: K, s: int) -> bool:
    """page_mapcount(page) + 1 + PageSwapCache(page) == page_count(page): nobody but the ptes, the swap cache and
    ksmd's own follow_page holds the page (no O_DIRECT or other get_user_pages reference in flight). Read with
    atomic_read, unlocked against get_user_pages_fast."""
    if k.bug("wrprotect-no-gup-check"):
        return True  # the defect: the page is write-protected and merged whatever references are held
    swapped = int(swapfile.PageSwapCache(k, s))
    return memory.page_mapcount(k, s) + 1 + swapped == memory.page_count(k, s)


@kfunc
def replace_page(k: K, vref: int, pref: int, kpref: int, orig: tuple[int, int], check: bool = True) -> int:
    """Point the pte that maps `page` (and still equals orig_pte) at the KSM page `kpage`."""
    v = k.vm.deref(vref, "replace_page")
    m = k.mmc.deref(k.vm.mm[v], "replace_page")
    addr = memory.page_address_in_vma(k, pref, vref, "replace_page")
    if addr < 0:
        return EFAULT
    k.locks.lock(k.ptl(m), "replace_page")
    kind, ref, w = memory.pte_get(k, m, addr)
    # pte_same(*ptep, orig_pte), as 2.6.33: no pfn test of its own (write_protect_page's page_check_address made
    # orig_pte, so a wrong one there shows here); the variant without write protection has only the pfn to go by
    same = (ref, w) == orig if check else ref == pref
    if kind != PTE_PRESENT or not same:
        k.locks.unlock(k.ptl(m), "replace_page:pte_changed")
        return EFAULT
    memory.get_page(k, kpref, "replace_page")
    rmap.page_add_anon_rmap(k, kpref)
    k.hooks.window_open(k, "replace-before-append", m, addr, kpref)  # no rmap_item reaches it until the append
    memory.pte_set(k, m, addr, PTE_PRESENT, kpref, 0, "replace_page")
    rmap.page_remove_rmap(k, pref, "replace_page")
    ps = ref_slot(pref)
    if not rmap.page_mapped(k, ps):
        swapfile.try_to_free_swap(k, ps)  # the page lock is try_to_merge_one_page's
    memory.put_page(k, pref, "replace_page")
    k.locks.unlock(k.ptl(m), "replace_page")
    return 0


@kfunc
def try_to_merge_one_page(k: K, vref: int, pref: int, kpref: int) -> int:
    """Merge `page` into `kpage`; with kpage 0, make `page` itself a KSM page (no allocation, as 2.6.33)."""
    if pref == kpref:  # ksm page forked
        return 0
    v = k.vm.deref(vref, "try_to_merge_one_page")
    if not k.vm.flags[v] & VM_MERGEABLE:
        return EFAULT
    s = k.pg.deref(pref, "try_to_merge_one_page")
    if not memory.PageAnon(k, s):
        return EFAULT
    if not k.locks.trylock(k.page_lock(s), "try_to_merge_one_page:trylock_page"):
        return EFAULT
    err = EFAULT
    careful = not k.bug("merge-without-wrprotect")
    if careful:
        wp, orig = write_protect_page(k, vref, pref)
    else:  # the defect: no write protection, no page_count check, and replace_page will not recheck the pte
        wp, orig = 0, (pref, 0)
    if wp == 0:
        if not kpref:
            set_page_stable_node(k, s, 0)  # while we hold page lock, upgrade PageAnon+anon_vma to PageKsm+NULL
            err = 0
        elif memcmp_pages(k, pref, kpref) == 0:  # pages_identical
            err = replace_page(k, vref, pref, kpref, orig, careful)
    locked = s
    if k.vm.flags[k.vm.deref(vref, "try_to_merge_one_page")] & VM_LOCKED and kpref and not err \
            and not k.bug("merge-mlockfreed"):
        # "ksm: fix mlockfreed to munlocked": the page about to be freed is munlocked, and the lock handed over to
        # kpage (the defect leaves page mlocked, and free_page_mlock meets it)
        mlock.munlock_vma_page(k, pref)
        ks = k.pg.deref(kpref, "try_to_merge_one_page")
        if not mlock.PageMlocked(k, ks):
            k.locks.unlock(k.page_lock(s), "try_to_merge_one_page:unlock_page")
            k.locks.lock(k.page_lock(ks), "try_to_merge_one_page:lock_page(kpage)")
            mlock.mlock_vma_page(k, kpref, vref)
            locked = ks  # for final unlock
    k.locks.unlock(k.page_lock(locked), "try_to_merge_one_page:unlock_page")
    return err


@kfunc
def try_to_merge_with_ksm_page(k: K, iref: int, pref: int, kpref: int) -> int:
    i = k.ri.deref(iref, "try_to_merge_with_ksm_page")
    mref, addr = k.ri.mm[i], k.ri.address[i]
    m = k.mmc.deref(mref, "try_to_merge_with_ksm_page")
    k.locks.down_read(k.mmap_sem(m), "try_to_merge_with_ksm_page")
    err = EFAULT
    if not _mm.ksm_test_exit(k, m):
        # Deviation from 2.6.33, which only checks find_vma and vm_start here: the mm may have unmapped the scanned
        # vma and mapped a fresh one (no anon_vma yet) since the scan, and try_to_merge_one_page's "ksm page forked"
        # shortcut (page == kpage) then hands hold_anon_vma a NULL anon_vma (found by this model; 3.4's
        # find_mergeable_vma checks VM_MERGEABLE and anon_vma). Not a catalogue variant yet: see mm/__init__ 19.
        vref = _vma_for_item(k, m, addr, "try_to_merge_with_ksm_page")
        if vref:
            err = try_to_merge_one_page(k, vref, pref, kpref)
            if not err:
                # must take the anon_vma reference while still holding mmap_sem
                hold_anon_vma(k, iref, k.vm.anon_vma[k.vm.deref(vref, "hold_anon_vma")])
    k.locks.up_read(k.mmap_sem(m), "try_to_merge_with_ksm_page")
    return err


@kfunc
def try_to_merge_two_pages(k: K, iref: int, pref: int, tiref: int, tpref: int) -> int:
    err = try_to_merge_with_ksm_page(k, iref, pref, 0)
    if not err:
        err = try_to_merge_with_ksm_page(k, tiref, tpref, pref)
        if err:  # a ksm page with only one pte pointing to it: break it
            break_cow(k, iref)
    return 0 if err else pref


@kfunc
def unstable_tree_search_insert(k: K, iref: int, pref: int) -> tuple[int, int]:
    tree = unstable_tree(k)
    parent, go_left, node = 0, False, tree.root
    while node:
        tpage = get_mergeable_page(k, node)
        if not tpage:
            return 0, 0
        if tpage == pref:  # don't substitute a ksm page for a forked page
            memory.put_page(k, tpage, "unstable_tree_search_insert")
            return 0, 0
        ret = memcmp_pages(k, pref, tpage)
        if ret == 0:
            return node, tpage
        memory.put_page(k, tpage, "unstable_tree_search_insert")
        parent, go_left = node, ret < 0
        node = tree.child(node, go_left)
    i = k.ri.deref(iref, "unstable_tree_search_insert")
    k.ri.flags[i] |= UNSTABLE_FLAG
    k.ri.seqnr[i] = int(k.g[G_SEQNR]) & SEQNR_MASK
    tree.link(parent, go_left, iref)
    _inc(k, G_PAGES_UNSHARED)
    return 0, 0


# the windows a pte leaves once ksmd has processed it while it maps a KSM page with a stable node (checks.windows);
# `window_close(UNTIL_SCANNED_ANY)` ends whichever of them the pte is in
UNTIL_SCANNED = ("fork-before-scan", "swapin-before-scan", "move-before-scan", "migrate-before-scan")
UNTIL_SCANNED_ANY = "until-scanned"


def _window_close(k: K, kind: str, iref: int) -> None:
    """Kernel window `kind` of the pte this rmap_item names ends here (checks.windows lists the windows)."""
    i = ref_slot(iref)
    k.hooks.window_close(k, kind, ref_slot(k.ri.mm[i]), k.ri.address[i])


@kfunc
def cmp_and_merge_page(k: K, pref: int, iref: int) -> None:
    remove_rmap_item_from_tree(k, iref)
    kpage = stable_tree_search(k, pref)
    if kpage:
        if not try_to_merge_with_ksm_page(k, iref, pref, kpage):
            ks = ref_slot(kpage)
            k.locks.lock(k.page_lock(ks), "cmp_and_merge_page:lock_page")
            stable_tree_append(k, iref, k.pg.mapping[k.pg.deref(kpage, "page_stable_node")])
            k.locks.unlock(k.page_lock(ks), "cmp_and_merge_page:unlock_page")
        _window_close(k, "replace-before-append", iref)
        memory.put_page(k, kpage, "cmp_and_merge_page")
        return
    # a page whose checksum changed since the last pass is volatile: keep it out of the unstable tree
    checksum = calc_checksum(k, pref)
    i = k.ri.deref(iref, "cmp_and_merge_page")
    if k.ri.oldchecksum[i] != checksum:
        k.ri.oldchecksum[i] = checksum
        return
    tiref, tpage = unstable_tree_search_insert(k, iref, pref)
    if not tiref:
        return
    kpage = try_to_merge_two_pages(k, iref, pref, tiref, tpage)
    memory.put_page(k, tpage, "cmp_and_merge_page:tree_page")
    if not kpage:
        return
    remove_rmap_item_from_tree(k, tiref)
    ks = ref_slot(kpage)
    k.locks.lock(k.page_lock(ks), "cmp_and_merge_page:lock_page")
    nref = stable_tree_insert(k, kpage)
    if nref:
        stable_tree_append(k, tiref, nref)
        stable_tree_append(k, iref, nref)
    k.locks.unlock(k.page_lock(ks), "cmp_and_merge_page:unlock_page")
    _window_close(k, "replace-before-append", tiref)
    if not nref:  # two ptes point at a ksm page left outside the stable tree: break both
        break_cow(k, tiref)
        break_cow(k, iref)


# -- the scan ------------------------------------------------------------------------------------------------
def _list_del(k: K, sref: int) -> None:
    s = k.ms.deref(sref, "list_del")
    k.hooks.lock_rule(k, "mm_list", k.ksm_mmlist_lock, 1, s, "mm_slot:list_del")
    k.spoint_unless(k.ksm_mmlist_lock, "mm_slot:list_del")  # the mm_slot list is ksm_mmlist_lock's
    prv, nxt = k.ms.prev[s], k.ms.next[s]
    k.spoint_unless(k.ksm_mmlist_lock, "mm_slot:list_del:unlink")
    k.ms.next[k.ms.deref(prv, "list_del")] = nxt
    k.ms.prev[k.ms.deref(nxt, "list_del")] = prv


def _list_insert(k: K, sref: int, prv: int, nxt: int) -> None:
    s = k.ms.deref(sref, "list_add")
    k.hooks.lock_rule(k, "mm_list", k.ksm_mmlist_lock, 1, s, "mm_slot:list_add")
    k.spoint_unless(k.ksm_mmlist_lock, "mm_slot:list_add")
    k.ms.prev[s], k.ms.next[s] = prv, nxt
    k.ms.next[k.ms.deref(prv, "list_add")] = sref
    k.ms.prev[k.ms.deref(nxt, "list_add")] = sref


def mm_slot_next(k: K, sref: int, site: str) -> int:
    """slot->mm_list.next, followed under ksm_mmlist_lock."""
    s = k.ms.deref(sref, site)
    k.hooks.lock_rule(k, "mm_list", k.ksm_mmlist_lock, 0, s, site)
    return int(k.ms.next[s])


def set_scan_slot(k: K, sref: int, site: str) -> None:
    """ksm_scan.mm_slot = sref, under ksm_mmlist_lock: __ksm_enter and __ksm_exit read the cursor under it alone."""
    k.hooks.lock_rule(k, "ksm_scan.mm_slot", k.ksm_mmlist_lock, 1, 0, site)
    k.g[G_SCAN_SLOT] = sref


def get_mm_slot(k: K, m: int) -> int:
    """The mm's mm_slot (mm_slots_hash; a column here, deviation 6), looked up under ksm_mmlist_lock."""
    k.hooks.lock_rule(k, "mm_slots_hash", k.ksm_mmlist_lock, 0, m, "get_mm_slot")
    return int(k.mmc.slot[m])


def set_mm_slot(k: K, m: int, sref: int, site: str) -> None:
    """insert_to_mm_slots_hash (sref) or hlist_del(&mm_slot->link) (0), under ksm_mmlist_lock."""
    k.hooks.lock_rule(k, "mm_slots_hash", k.ksm_mmlist_lock, 1, m, site)
    k.mmc.slot[m] = sref


def _free_mm_slot(k: K, sref: int, mref: int) -> None:
    """Remove the slot from the list and the mm (caller holds ksm_mmlist_lock), free it, clear the flag."""
    _list_del(k, sref)
    set_mm_slot(k, k.mmc.deref(mref, "hlist_del"), 0, "hlist_del")


def get_next_rmap_item(k: K, sref: int, kind: int, ref: int, addr: int) -> int:
    while True:
        iref = _get_rl(k, kind, ref)
        if not iref:
            break
        i = k.ri.deref(iref, "get_next_rmap_item")
        a = k.ri.address[i]
        if a == addr:
            return iref
        if a > addr:
            break
        _set_rl(k, kind, ref, k.ri.rmap_next[i])
        remove_rmap_item_from_tree(k, iref)
        free_rmap_item(k, iref)
    iref = k.kmem_cache_alloc(k.ri, "alloc_rmap_item")
    _inc(k, G_RMAP_ITEMS)
    i = ref_slot(iref)
    k.ri.mm[i] = k.ms.mm[k.ms.deref(sref, "get_next_rmap_item")]
    k.ri.address[i] = addr
    k.ri.rmap_next[i] = _get_rl(k, kind, ref)
    _set_rl(k, kind, ref, iref)
    return iref


@kfunc
def scan_get_next_rmap_item(k: K) -> tuple[int, int]:
    """The next (rmap_item, page) of the scan, or (0, 0) at the end of a full pass (seqnr++)."""
    g = k.g
    head = k.st.ksm_mm_head
    if ksm_mm_list_empty(k):
        return 0, 0
    sref = int(g[G_SCAN_SLOT])
    if sref == head:
        unstable_tree(k).reset()  # root_unstable_tree = RB_ROOT
        k.locks.lock(k.ksm_mmlist_lock, "scan_get_next_rmap_item")
        sref = mm_slot_next(k, head, "scan_get_next_rmap_item")
        set_scan_slot(k, sref, "scan_get_next_rmap_item")
        k.locks.unlock(k.ksm_mmlist_lock, "scan_get_next_rmap_item")
        # Deviation from 2.6.33, which lacks this recheck: a racing __ksm_exit of the last mm may have emptied the
        # list since list_empty() above, leaving ksmd on ksm_mm_head's NULL mm (CVE-2011-2183, fixed in 3.0).
        # Variant scan-exit-race restores the 2.6.33 code.
        if sref == head and not k.bug("scan-exit-race"):
            return 0, 0
        g[G_SCAN_ADDRESS], g[G_SCAN_RL_KIND], g[G_SCAN_RL_REF] = 0, RL_SLOT, sref
    while True:  # next_mm:
        s = k.ms.deref(sref, "scan_get_next_rmap_item")
        mref = k.ms.mm[s]
        m = k.mmc.deref(mref, "scan_get_next_rmap_item")
        sem = not k.bug("ksmd-no-mmap-sem")  # the defect: walk the vmas while their owner may unmap them
        if sem:
            k.locks.down_read(k.mmap_sem(m), "scan_get_next_rmap_item")
        vref = 0 if _mm.ksm_test_exit(k, m) else _mm.find_vma(k, m, int(g[G_SCAN_ADDRESS]))
        while vref:
            v = k.vm.deref(vref, "scan_get_next_rmap_item")
            if k.vm.flags[v] & VM_MERGEABLE:
                if g[G_SCAN_ADDRESS] < k.vm.start[v]:
                    g[G_SCAN_ADDRESS] = k.vm.start[v]
                if not k.vm.anon_vma[v]:
                    g[G_SCAN_ADDRESS] = k.vm.end[v]
                while g[G_SCAN_ADDRESS] < k.vm.end[v]:
                    if _mm.ksm_test_exit(k, m):
                        break
                    addr = int(g[G_SCAN_ADDRESS])
                    page = memory.follow_page(k, m, addr, "scan_get_next_rmap_item")
                    if page and memory.PageAnon(k, ref_slot(page)):
                        iref = get_next_rmap_item(k, sref, int(g[G_SCAN_RL_KIND]), int(g[G_SCAN_RL_REF]), addr)
                        g[G_SCAN_RL_KIND], g[G_SCAN_RL_REF] = RL_ITEM, iref
                        g[G_SCAN_ADDRESS] = addr + 1
                        if sem:
                            k.locks.up_read(k.mmap_sem(m), "scan_get_next_rmap_item")
                        return iref, page
                    if page:
                        memory.put_page(k, page, "scan_get_next_rmap_item")
                    g[G_SCAN_ADDRESS] = addr + 1
                    k.cond_resched("scan_get_next_rmap_item:cond_resched")
                if _mm.ksm_test_exit(k, m):
                    break
            vref = _mm.vma_next(k, m, vref, "scan_get_next_rmap_item")
        if _mm.ksm_test_exit(k, m):
            g[G_SCAN_ADDRESS], g[G_SCAN_RL_KIND], g[G_SCAN_RL_REF] = 0, RL_SLOT, sref
        # nuke all the rmap_items that are above this current rmap
        remove_trailing_rmap_items(k, int(g[G_SCAN_RL_KIND]), int(g[G_SCAN_RL_REF]))
        k.locks.lock(k.ksm_mmlist_lock, "scan_get_next_rmap_item")
        set_scan_slot(k, mm_slot_next(k, sref, "scan_get_next_rmap_item"), "scan_get_next_rmap_item")
        if g[G_SCAN_ADDRESS] == 0:
            # a full scan of this mm found no VM_MERGEABLE area (or it is exiting): forget it, as __ksm_exit does
            _free_mm_slot(k, sref, mref)
            k.locks.unlock(k.ksm_mmlist_lock, "scan_get_next_rmap_item")
            k.ms.free(sref, "free_mm_slot")
            k.spoint("clear_bit(MMF_VM_MERGEABLE)")
            mslot = k.mmc.deref(mref, "clear_bit")
            k.hooks.shared_access(k, k.mmc.flags, mslot, 1, "scan_get_next_rmap_item:clear_bit")
            k.mmc.flags[mslot] &= ~MMF_VM_MERGEABLE
            if sem:
                k.locks.up_read(k.mmap_sem(m), "scan_get_next_rmap_item")
            _mm.mmdrop(k, mref, "scan_get_next_rmap_item")
        else:
            k.locks.unlock(k.ksm_mmlist_lock, "scan_get_next_rmap_item")
            if sem:
                k.locks.up_read(k.mmap_sem(m), "scan_get_next_rmap_item")
        sref = int(g[G_SCAN_SLOT])
        if sref == head:
            break
        g[G_SCAN_ADDRESS], g[G_SCAN_RL_KIND], g[G_SCAN_RL_REF] = 0, RL_SLOT, sref
    k.hooks.scan_done(k)
    g[G_SEQNR] += 1  # a full scan completed (full_scans)
    return 0, 0


def in_stable_tree(k: K, iref: int) -> bool:
    return bool(k.ri.flags[k.ri.deref(iref, "in_stable_tree")] & STABLE_FLAG)


@kfunc
def ksm_do_scan(k: K, scan_npages: int) -> None:
    k.hooks.lock_rule(k, "ksm_do_scan", k.ksm_thread_mutex, 2, 0, "ksm_do_scan")
    for _ in range(scan_npages):
        k.cond_resched("ksm_do_scan:cond_resched")
        iref, page = scan_get_next_rmap_item(k)
        if not iref:
            return
        s = k.pg.deref(page, "ksm_do_scan")
        if not memory.PageKsm(k, s) or not in_stable_tree(k, iref):
            cmp_and_merge_page(k, page, iref)
        if memory.PageKsm(k, s) and k.pg.mapping[s]:
            # ksmd came round to a pte of a KSM page with a stable node: its own rmap_item must reach it now. A KSM
            # page with none yet (promoted by try_to_merge_one_page(page, NULL), its merging pte then copied away by
            # break_cow, while fork or the swap cache kept it mapped elsewhere) has nothing to link the item to:
            # the window stays open until a scan finds the page with its node
            _window_close(k, UNTIL_SCANNED_ANY, iref)
        memory.put_page(k, page, "ksm_do_scan")


def ksm_mm_list_empty(k: K) -> bool:
    """list_empty(&ksm_mm_head.mm_list): no mm is registered with ksmd."""
    k.spoint_unless(k.ksm_mmlist_lock, "list_empty(ksm_mm_head)")
    return k.ms.next[MM_SLOT_HEAD] == k.st.ksm_mm_head


def ksmd_should_run(k: K) -> bool:
    return bool(k.g[G_RUN] & KSM_RUN_MERGE) and not ksm_mm_list_empty(k)


# -- madvise, fork, exit -------------------------------------------------------------------------------------
@kfunc
def unmerge_ksm_pages(k: K, vref: int, start: int, end: int) -> int:
    """break_ksm over [start, end). Simplified: no signal_pending() / -ERESTARTSYS (model tasks get no signals)."""
    v = k.vm.deref(vref, "unmerge_ksm_pages")
    m = k.mmc.deref(k.vm.mm[v], "unmerge_ksm_pages")
    for addr in range(start, end):
        if _mm.ksm_test_exit(k, m):
            break
        err = break_ksm(k, vref, addr)
        if err:
            return err
    return 0


@kfunc
def ksm_madvise(
    k: K, vref: int, advice: int, start: int = -1, end: int = -1, vm_flags: list[int] | None = None
) -> int:
    """MADV_MERGEABLE registers the mm with ksmd; MADV_UNMERGEABLE breaks every KSM page of [start, end) (the
    whole vma by default). As in the kernel the new flags go into *vm_flags when the caller passes its own copy
    (move_vma's, so the vma stays mergeable); without one they are stored in the vma (madvise_behavior's store).

    Simplified: every model vma is private anonymous memory, so 2.6.33's refusal of VM_SHARED, VM_PFNMAP,
    VM_HUGETLB... vmas has nothing to refuse.
    """
    v = k.vm.deref(vref, "ksm_madvise")
    if start < 0:
        start, end = int(k.vm.start[v]), int(k.vm.end[v])
    flags = int(k.vm.flags[v]) if vm_flags is None else vm_flags[0]
    if advice == MADV_MERGEABLE:
        if flags & VM_MERGEABLE:
            return 0
        mref = k.vm.mm[v]
        mslot = k.mmc.deref(mref, "ksm_madvise")
        k.hooks.shared_access(k, k.mmc.flags, mslot, 0, "ksm_madvise:test_bit")
        if not k.mmc.flags[mslot] & MMF_VM_MERGEABLE:
            __ksm_enter(k, mref)
        flags |= VM_MERGEABLE
    else:
        if not flags & VM_MERGEABLE:
            return 0
        if k.vm.anon_vma[v]:
            token = k.hooks.unmerge_begin(k, k.vm.mm[v], start, end)
            err = unmerge_ksm_pages(k, vref, start, end)
            if err:
                return err
            k.hooks.unmerge_end(k, token, "ksm_madvise")
        flags &= ~VM_MERGEABLE
    if vm_flags is None:
        _mm.set_vm_flags(k, ref_slot(k.vm.mm[v]), vref, flags, "ksm_madvise")
    else:
        vm_flags[0] = flags
    return 0


@kfunc
def __ksm_enter(k: K, mref: int) -> None:  # noqa: N807 - the kernel's name
    """Register the mm with ksmd; its mmap_sem is held for write (madvise, or dup_mmap for the child)."""
    k.hooks.lock_rule(k, "ksm_enter", k.mmap_sem(ref_slot(mref)), 1, ref_slot(mref), "__ksm_enter")
    sref = k.kmem_cache_alloc(k.ms, "alloc_mm_slot")
    k.ms.mm[ref_slot(sref)] = mref
    k.locks.lock(k.ksm_mmlist_lock, "__ksm_enter")
    m = k.mmc.deref(mref, "__ksm_enter")
    set_mm_slot(k, m, sref, "insert_to_mm_slots_hash")
    # insert just behind the scanning cursor, to let the area settle down a little; but while run=2 unmerges, at
    # the list's end, ahead of its cursor, or the KSM ptes a fork copies meanwhile are never broken (the later
    # fix, deviation 30; 2.6.33 always inserts behind the cursor). ksm_run is read unlocked, as the kernel reads it.
    cursor = int(k.g[G_SCAN_SLOT])
    if int(k.g[G_RUN]) & KSM_RUN_UNMERGE:
        cursor = k.st.ksm_mm_head
    _list_insert(k, sref, k.ms.prev[k.ms.deref(cursor, "__ksm_enter")], cursor)
    k.locks.unlock(k.ksm_mmlist_lock, "__ksm_enter")
    m = k.mmc.deref(mref, "__ksm_enter")
    k.spoint("__ksm_enter:set_bit")
    k.hooks.shared_access(k, k.mmc.flags, m, 1, "__ksm_enter:set_bit")
    k.mmc.flags[m] |= MMF_VM_MERGEABLE
    k.atomic_add(k.mmc.mmcount, m, 1, "__ksm_enter")


@kfunc
def __ksm_exit(k: K, mref: int) -> None:  # noqa: N807
    """Free the mm_slot now if ksmd holds nothing for it; else leave that to ksmd, after an mmap_sem handshake
    that waits out any ksmd pass already inside this mm."""
    k.locks.lock(k.ksm_mmlist_lock, "__ksm_exit")
    m = k.mmc.deref(mref, "__ksm_exit")
    sref = get_mm_slot(k, m)
    easy_to_free = False
    if sref and sref != int(k.g[G_SCAN_SLOT]):
        k.spoint_unless(k.ksm_thread_mutex, "__ksm_exit:rmap_list")  # ksmd changes it without ksm_mmlist_lock
        if not k.ms.rmap_list[k.ms.deref(sref, "__ksm_exit")]:
            _free_mm_slot(k, sref, mref)
            easy_to_free = True
        else:
            _list_del(k, sref)  # list_move: just after the cursor
            cursor = int(k.g[G_SCAN_SLOT])
            _list_insert(k, sref, cursor, mm_slot_next(k, cursor, "__ksm_exit"))
    k.locks.unlock(k.ksm_mmlist_lock, "__ksm_exit")
    if easy_to_free:
        k.ms.free(sref, "free_mm_slot")
        k.spoint("clear_bit(MMF_VM_MERGEABLE)")
        mslot = k.mmc.deref(mref, "__ksm_exit")
        k.hooks.shared_access(k, k.mmc.flags, mslot, 1, "__ksm_exit:clear_bit")
        k.mmc.flags[mslot] &= ~MMF_VM_MERGEABLE
        _mm.mmdrop(k, mref, "__ksm_exit")
    elif sref:
        k.locks.down_write(k.mmap_sem(m), "__ksm_exit")
        k.locks.up_write(k.mmap_sem(m), "__ksm_exit")


@kfunc
def ksm_exit(k: K, mref: int) -> None:
    m = k.mmc.deref(mref, "ksm_exit")
    k.hooks.shared_access(k, k.mmc.flags, m, 0, "ksm_exit:test_bit")
    if k.mmc.flags[m] & MMF_VM_MERGEABLE:
        __ksm_exit(k, mref)


@kfunc
def ksm_fork(k: K, mref: int, oldref: int) -> None:
    old = k.mmc.deref(oldref, "ksm_fork")
    k.hooks.shared_access(k, k.mmc.flags, old, 0, "ksm_fork:test_bit")
    if k.mmc.flags[old] & MMF_VM_MERGEABLE:
        __ksm_enter(k, mref)


# -- run=2 ---------------------------------------------------------------------------------------------------
@kfunc
def unmerge_and_remove_all_rmap_items(k: K) -> int:
    k.hooks.lock_rule(k, "unmerge_all", k.ksm_thread_mutex, 2, 0, "unmerge_and_remove_all_rmap_items")
    g = k.g
    head = k.st.ksm_mm_head
    token = k.hooks.unmerge_begin(k, 0, 0, 0)
    k.locks.lock(k.ksm_mmlist_lock, "unmerge_and_remove_all_rmap_items")
    nxt = mm_slot_next(k, head, "unmerge_and_remove_all_rmap_items")
    set_scan_slot(k, nxt, "unmerge_and_remove_all_rmap_items")
    k.locks.unlock(k.ksm_mmlist_lock, "unmerge_and_remove_all_rmap_items")
    while int(g[G_SCAN_SLOT]) != head:
        sref = int(g[G_SCAN_SLOT])
        mref = k.ms.mm[k.ms.deref(sref, "unmerge_and_remove_all_rmap_items")]
        m = k.mmc.deref(mref, "unmerge_and_remove_all_rmap_items")
        k.locks.down_read(k.mmap_sem(m), "unmerge_and_remove_all_rmap_items")
        vref = _mm.first_vma(k, m, "unmerge_and_remove_all_rmap_items")
        while vref:
            if _mm.ksm_test_exit(k, m):  # before touching the vma: exit_mmap may be freeing them
                break
            v = k.vm.deref(vref, "unmerge_and_remove_all_rmap_items")
            if k.vm.flags[v] & VM_MERGEABLE and k.vm.anon_vma[v]:
                unmerge_ksm_pages(k, vref, k.vm.start[v], k.vm.end[v])
            vref = _mm.vma_next(k, m, vref, "unmerge_and_remove_all_rmap_items")
        remove_trailing_rmap_items(k, RL_SLOT, sref)
        k.locks.lock(k.ksm_mmlist_lock, "unmerge_and_remove_all_rmap_items")
        nxt = mm_slot_next(k, sref, "unmerge_and_remove_all_rmap_items")
        set_scan_slot(k, nxt, "unmerge_and_remove_all_rmap_items")
        if _mm.ksm_test_exit(k, m):
            _free_mm_slot(k, sref, mref)
            k.locks.unlock(k.ksm_mmlist_lock, "unmerge_and_remove_all_rmap_items")
            k.ms.free(sref, "free_mm_slot")
            k.spoint("clear_bit(MMF_VM_MERGEABLE)")
            k.hooks.shared_access(k, k.mmc.flags, m, 1, "unmerge_and_remove_all_rmap_items:clear_bit")
            k.mmc.flags[m] &= ~MMF_VM_MERGEABLE
            k.locks.up_read(k.mmap_sem(m), "unmerge_and_remove_all_rmap_items")
            _mm.mmdrop(k, mref, "unmerge_and_remove_all_rmap_items")
        else:
            k.locks.unlock(k.ksm_mmlist_lock, "unmerge_and_remove_all_rmap_items")
            k.locks.up_read(k.mmap_sem(m), "unmerge_and_remove_all_rmap_items")
    g[G_SEQNR] = 0
    k.hooks.unmerge_end(k, token, "unmerge_and_remove_all_rmap_items")
    return 0


@kfunc
def run_store(k: K, value: int) -> None:
    """echo VALUE > /sys/kernel/mm/ksm/run, in the writer's context, under ksm_thread_mutex."""
    k.locks.lock(k.ksm_thread_mutex, "run_store")
    if int(k.g[G_RUN]) != value:
        k.hooks.lock_rule(k, "ksm_run", k.ksm_thread_mutex, 1, 0, "run_store")
        k.g[G_RUN] = value
        if value & KSM_RUN_UNMERGE:
            unmerge_and_remove_all_rmap_items(k)
            k.hooks.ksm_quiescent(k, "run_store")
    k.locks.unlock(k.ksm_thread_mutex, "run_store")


@kfunc
def prune_stale_stable_nodes(k: K) -> None:
    """Visit every stable node with get_ksm_page, pruning the stale ones.

    2.6.33 leaves a stale node (its KSM page freed after its rmap_items went) until a later stable_tree_search
    passes over it; the model's final quiescence does that pass explicitly so the leak check sees what survives.
    """
    k.locks.lock(k.ksm_thread_mutex, "prune_stale_stable_nodes")
    for nref in stable_tree(k).nodes():
        if not k.sn.is_live(nref):
            continue
        page = get_ksm_page(k, nref)
        if page:
            memory.put_page(k, page, "prune_stale_stable_nodes")
    k.locks.unlock(k.ksm_thread_mutex, "prune_stale_stable_nodes")


# -- rmap walks of a KSM page --------------------------------------------------------------------------------
def _walk_items(k: K, pref: int, site: str) -> tuple[int, list[int]]:
    """The stable node and rmap_items of a KSM page an rmap walk visits: VM_BUG_ON(!PageLocked(page))."""
    s = k.pg.deref(pref, site)
    k.hooks.lock_rule(k, "page_locked", k.page_lock(s), 2, s, site)
    nref = k.pg.mapping[s]
    return nref, (_hlist(k, nref, site) if nref else [])


@kfunc
def try_to_unmap_ksm(k: K, pref: int, flags: int = 0) -> int:
    """Unmap every pte of a locked KSM page: pass 0 visits the vma of each rmap_item's own mm, pass 1 the
    covering vmas of other mms (forked since ksmd gave the rmap_item)."""
    nref, items = _walk_items(k, pref, "try_to_unmap_ksm")
    if not nref:
        return rmap.SWAP_FAIL
    token = k.hooks.walk_begin(k, pref, "try_to_unmap_ksm")
    s = ref_slot(pref)
    ret = rmap.SWAP_AGAIN
    search_new_forks = 0
    done = False
    while not done:
        for iref in items:
            i = k.ri.deref(iref, "try_to_unmap_ksm")
            avref, addr, imm = k.ri.anon_vma[i], k.ri.address[i], k.ri.mm[i]
            lid = k.av_lock(k.av.deref(avref, "try_to_unmap_ksm:spin_lock"))
            k.locks.lock(lid, "try_to_unmap_ksm")
            for vref in rmap.anon_vma_vmas(k, avref, "try_to_unmap_ksm"):
                v = k.vm.deref(vref, "try_to_unmap_ksm")
                if addr < k.vm.start[v] or addr >= k.vm.end[v]:
                    continue
                if (imm == k.vm.mm[v]) == bool(search_new_forks):
                    continue
                ret = rmap.try_to_unmap_one(k, pref, vref, addr, token, flags)
                if ret != rmap.SWAP_AGAIN or not rmap.page_mapped(k, s):
                    done = True
                    break
            k.locks.unlock(lid, "try_to_unmap_ksm")
            if done:
                break
        if done or search_new_forks + 1 >= _rmap_walk_passes(k):
            break
        search_new_forks = 1
    k.hooks.walk_end(k, token, rmap.unmap_walk_uncounted(flags, ret))
    return ret


@kfunc
def page_referenced_ksm(k: K, pref: int, vm_flags: list[int] | None = None) -> int:
    nref, items = _walk_items(k, pref, "page_referenced_ksm")
    if not nref:
        return 0
    token = k.hooks.walk_begin(k, pref, "page_referenced_ksm")
    s = ref_slot(pref)
    mapcount = [memory.page_mapcount(k, s)]
    referenced = 0
    search_new_forks = 0
    while True:
        for iref in items:
            i = k.ri.deref(iref, "page_referenced_ksm")
            avref, addr, imm = k.ri.anon_vma[i], k.ri.address[i], k.ri.mm[i]
            lid = k.av_lock(k.av.deref(avref, "page_referenced_ksm:spin_lock"))
            k.locks.lock(lid, "page_referenced_ksm")
            for vref in rmap.anon_vma_vmas(k, avref, "page_referenced_ksm"):
                v = k.vm.deref(vref, "page_referenced_ksm")
                if addr < k.vm.start[v] or addr >= k.vm.end[v]:
                    continue
                if (imm == k.vm.mm[v]) == bool(search_new_forks):
                    continue
                referenced += rmap.page_referenced_one(k, pref, vref, addr, mapcount, token, vm_flags)
                if not search_new_forks or not mapcount[0]:
                    break
            k.locks.unlock(lid, "page_referenced_ksm")
            if not mapcount[0]:
                break
        if not mapcount[0] or search_new_forks + 1 >= _rmap_walk_passes(k):
            break
        search_new_forks = 1
    k.hooks.walk_end(k, token, mapcount[0])
    return referenced


# -- swap-in of a KSM page (include/linux/ksm.h, mm/ksm.c) ----------------------------------------------------
def ksm_might_need_to_copy(k: K, pref: int, vref: int, addr: int) -> bool:
    """Whether do_swap_page must copy the locked swap-cache page: it is an anon page whose anon_vma is not the
    faulting vma's, or whose index is not this address's (page_anon_vma is NULL for a page just read in, which
    has no mapping yet); a KSM page is mapped as it is, except while run=2 unmerges (the later fix below)."""
    s = k.pg.deref(pref, "ksm_might_need_to_copy")
    if k.pg.flags[s] & PG_KSM:
        # The later fix (deviation 29; cbf86cfe04a6, 3.9): a KSM page swapped in while run=2 unmerges is copied.
        # 2.6.33 maps it as it is, and break_ksm's follow_page passed over the swap pte, so run=2 returns with
        # the pte mapping a KSM page again (variant `swapin-ksm-during-unmerge`). ksm_run is read unlocked, as
        # the kernel reads it.
        return bool(int(k.g[G_RUN]) & KSM_RUN_UNMERGE) and not k.bug("swapin-ksm-during-unmerge")
    if not k.pg.flags[s] & PG_ANON or not k.pg.mapping[s]:
        return False
    v = k.vm.deref(vref, "ksm_might_need_to_copy")
    return bool(k.pg.mapping[s] != k.vm.anon_vma[v] or k.pg.index[s] != rmap.linear_page_index(k, v, addr))


@kfunc
def ksm_does_need_to_copy(k: K, pref: int, vref: int, addr: int) -> int:
    """A private copy of the locked swap-cache page for this vma, returned locked (__set_page_locked on a new
    page). The swap-cache page stays locked and referenced: the caller lets both go after swap_free (the later
    fix, deviation 26)."""
    s = k.pg.deref(pref, "ksm_does_need_to_copy")
    new = memory.alloc_page(k, "ksm_does_need_to_copy:alloc_page_vma")
    ns = ref_slot(new)
    k.hooks.shared_access(k, k.st.frames, s, 0, "ksm_does_need_to_copy:copy_user_highpage")
    k.st.frames[ns, :] = k.st.frames[s, :]
    if not k.locks.trylock(k.page_lock(ns), "ksm_does_need_to_copy:__set_page_locked"):
        raise AssertionError("a fresh page's lock is held")  # nobody else knows the new page yet
    return new
