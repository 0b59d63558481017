"""The model's semantics in small deterministic cases: one task drives the kernel step by step."""

from __future__ import annotations

import pytest

from ksmstress.arena import ref_slot
from ksmstress.checks.invariants import check_counts, check_quiescence
from ksmstress.failures import Failure
from ksmstress.mm import ksm, memory, rmap
from ksmstress.mm import mm as mmm
from ksmstress.mm.state import G_SEQNR, KSM_RUN_MERGE, KSM_RUN_UNMERGE, PG_KSM, STABLE_FLAG

from .harness import (
    InterleaveAt,
    Recorder,
    content,
    counters,
    make_kernel,
    mapped_pages,
    new_program,
    page_locked,
    pte,
    pte_page,
    read,
    scan,
    vma_at,
    write,
)


def merged(k, programs):
    """Fill each program's pages with the given patterns and let ksmd settle (checksum pass + merge pass)."""
    out = []
    for pats in programs:
        mref, m = new_program(k, len(pats))
        for i, p in enumerate(pats):
            write(k, m, 1 + i, p)
        out.append((mref, m))
    scan(k, 3)
    return out


def exit_all(k, progs):
    for mref, _m in progs:
        mmm.mmput(k, mref)
    scan(k, 2)
    ksm.prune_stale_stable_nodes(k)


def test_identical_pages_merge_into_one_ksm_page():
    k = make_kernel()
    ((_mref, m),) = merged(k, [[7] * 5])
    assert counters(k) == {"shared": 1, "sharing": 4, "unshared": 0, "rmap_items": 5}
    pages = {pte_page(k, m, a) for a in range(1, 6)}
    assert len(pages) == 1
    s = ref_slot(pages.pop())
    assert k.pg.flags[s] & PG_KSM and k.pg.mapcount[s] == 5
    assert all(read(k, m, a) == content(k, 7) for a in range(1, 6))


def test_ltp_ksm01_phases_counts():
    """LTP ksm01: three programs c/a/a -> 2 shared; one page differing in its last byte stays unshared."""
    k = make_kernel()
    n = 4
    progs = merged(k, [[2] * n, [0] * n, [0] * n])
    assert counters(k)["shared"] == 2 and counters(k)["sharing"] == 3 * n - 2
    # d/d/d then one page of the second program differs only in its last byte (pattern 255+3 vs 3)
    for _mref, m in progs:
        for a in range(1, n + 1):
            write(k, m, a, 3)
    write(k, progs[1][1], n, 3 + 255)
    scan(k, 4)
    c = counters(k)
    assert (c["shared"], c["sharing"], c["unshared"]) == (1, 3 * n - 2, 1)
    assert content(k, 3)[:-1] == content(k, 258)[:-1] and content(k, 3) != content(k, 258)


def test_fork_of_ksm_page_and_pass1_finds_the_child():
    k = make_kernel()
    ((aref, a),) = merged(k, [[5, 5]])
    page = pte_page(k, a, 1)
    cref = mmm.dup_mmap(k, aref)
    c = ref_slot(cref)
    assert pte_page(k, c, 1) == page and pte_page(k, c, 2) == page
    assert k.pg.mapcount[ref_slot(page)] == 4
    assert not any(k.ri.mm[i] == cref for i in k.ri.live_slots())  # ksmd has not seen the child
    k.hooks.visits.clear()
    with page_locked(k, page):
        assert rmap.page_referenced(k, page) == 4
    assert {(c, 1), (c, 2)} <= set(k.hooks.visits)  # only pass 1 can reach them


def test_single_pass_walk_misses_the_forked_pte():
    k = make_kernel(bugs=("single-pass-walk",))
    ((aref, a),) = merged(k, [[5, 5]])
    page = pte_page(k, a, 1)
    mmm.dup_mmap(k, aref)
    with pytest.raises(Failure) as e, page_locked(k, page):
        rmap.page_referenced(k, page)
    assert e.value.cls == "traversal" and "without visiting" in e.value.message


def test_try_to_unmap_ksm_swaps_every_pte_and_data_survives():
    """A KSM page goes to the swap cache (add_to_swap), all four ptes become its entry (try_to_unmap_ksm, pass 1
    for the forked ones), pageout writes it and __remove_mapping frees it; each mm faults its bytes back in."""
    from ksmstress.mm import vmscan

    k = make_kernel()
    ((aref, a),) = merged(k, [[5, 5]])
    page = pte_page(k, a, 1)
    cref = mmm.dup_mmap(k, aref)
    c = ref_slot(cref)
    s = ref_slot(page)
    memory.get_page(k, page, "isolate_lru_page")
    assert vmscan.shrink_page(k, page, True)  # freed: the isolation reference went with it
    assert k.st.page.state[s] != 1
    kind, sref, _w = pte(k, a, 1)
    assert kind == 2 and k.st.swap.c["count"][ref_slot(sref)] == 4  # four swap ptes, no swap cache any more
    assert k.st.swap.c["cache"][ref_slot(sref)] == 0
    assert read(k, a, 1) == content(k, 5) and read(k, c, 1) == content(k, 5)  # swapped back in
    assert pte_page(k, a, 1) == pte_page(k, c, 1)  # one page in the swap cache, found by both (one anon_vma)
    assert read(k, a, 2) == content(k, 5)  # another index: ksm_might_need_to_copy says copy
    assert pte_page(k, a, 2) != pte_page(k, a, 1)
    assert k.st.swap.c["count"][ref_slot(sref)] == 1 and k.st.swap.c["cache"][ref_slot(sref)] == 1
    for ref in (aref, cref):
        mmm.mmput(k, ref)
    assert not k.st.swap.live_slots().size  # zap's free_swap_and_cache took the page out of the swap cache
    check_counts(k.st, "test")


def test_anon_vma_outlives_munmap_while_referenced_and_is_freed_on_the_last_drop():
    k = make_kernel()
    (aref, a), (bref, b) = merged(k, [[4], [4]])
    av = int(k.vm.anon_vma[ref_slot(vma_at(k, a, 1))])
    assert k.av.refcount[ref_slot(av)] == 1
    mmm.sys_munmap(k, aref, 1, 2)
    assert k.av.is_live(av)  # list empty, but the stable rmap_item holds it
    assert k.av.head[ref_slot(av)] == 0 and k.av.refcount[ref_slot(av)] == 1
    scan(k, 1)  # ksmd finds the address gone and removes the rmap_item: the last drop frees it
    assert not k.av.is_live(av)
    assert read(k, b, 1) == content(k, 4)


def test_free_on_empty_list_is_a_use_after_free():
    k = make_kernel(bugs=("free-on-empty-list",))
    (aref, a), _b = merged(k, [[4], [4]])
    mmm.sys_munmap(k, aref, 1, 2)
    with pytest.raises(Failure) as e:
        scan(k, 1)
    assert e.value.cls == "use-after-free" and "anon_vma" in e.value.message and "anon_vma_unlink" in e.value.message


class WithoutQuiescentChecks(Recorder):
    """The detectors but for those ksmd runs between batches (they name the missing reference at once: see
    test_invariants), so this test can follow the defect to the rmap walk's use-after-free."""

    def ksm_quiescent(self, k, where):
        pass


def test_no_anon_vma_ref_walk_touches_freed_anon_vma():
    k = make_kernel(bugs=("no-anon-vma-ref",), hooks=WithoutQuiescentChecks())
    (aref, a), (bref, b) = merged(k, [[4], [4]])
    page = pte_page(k, b, 1)
    mmm.sys_munmap(k, aref, 1, 2)
    mmm.dup_mmap(k, bref)  # a forked pte only pass 1 finds: pass 0 must try every rmap_item, A's too
    with pytest.raises(Failure) as e, page_locked(k, page):
        rmap.page_referenced(k, page)
    assert e.value.cls == "use-after-free"


def test_cow_breaks_a_ksm_page():
    k = make_kernel()
    ((_aref, a),) = merged(k, [[6, 6, 6]])
    kpage = pte_page(k, a, 1)
    write(k, a, 2, 9)
    new = pte_page(k, a, 2)
    assert new != kpage and not k.pg.flags[ref_slot(new)] & PG_KSM
    assert pte(k, a, 2)[2] == 1  # writable private copy
    assert k.pg.mapcount[ref_slot(kpage)] == 2
    assert read(k, a, 2) == content(k, 9) and read(k, a, 1) == content(k, 6)


def test_do_wp_page_reuses_an_exclusive_anon_page_and_copies_a_shared_one():
    k = make_kernel()
    aref, a = new_program(k, 2, mergeable=False)
    write(k, a, 1, 1)
    page = pte_page(k, a, 1)
    cref = mmm.dup_mmap(k, aref)
    c = ref_slot(cref)
    write(k, c, 1, 2)  # shared: the child copies
    assert pte_page(k, c, 1) != page and read(k, a, 1) == content(k, 1)
    write(k, a, 1, 3)  # now exclusive again: reused in place
    assert pte_page(k, a, 1) == page and read(k, c, 1) == content(k, 2)


def test_write_fault_racing_a_merge_never_reuses_the_new_ksm_page():
    """do_wp_page tests PageKsm before it takes the page lock; ksmd can make the page a KSM page in between
    (write_protect_page before the fault, set_page_stable_node + unlock_page after the test): reuse_swap_page's
    PageKsm recheck must force a copy, or the write lands in the shared KSM page (found by seed 1295 of
    merge-write-race)."""
    k = make_kernel(hooks=InterleaveAt("do_wp_page:trylock_page"))
    _aref, a = new_program(k, 2)
    write(k, a, 1, 1)
    page = pte_page(k, a, 1)
    s = ref_slot(page)
    # ksmd: follow_page's reference, lock_page, write_protect_page (try_to_merge_one_page with kpage NULL)
    assert memory.follow_page(k, a, 1, "test:follow_page") == page
    assert k.locks.trylock(k.page_lock(s), "test:trylock_page")
    assert ksm.write_protect_page(k, vma_at(k, a, 1), page)[0] == 0

    def rest_of_merge() -> None:  # ksmd, after the fault's PageKsm test: set_page_stable_node(page, NULL)
        k.pg.flags[s] |= PG_KSM
        k.pg.mapping[s] = 0
        k.locks.unlock(k.page_lock(s), "test:unlock_page")

    k.hooks.action = rest_of_merge
    write(k, a, 1, 2)
    assert k.hooks.action is None, "the fault never reached its trylock_page"
    assert pte_page(k, a, 1) != page  # copied, not reused
    assert k.st.frames[s].tobytes() == content(k, 1)  # the KSM page keeps its content
    assert read(k, a, 1) == content(k, 2)


def test_run2_unmerges_everything_and_counters_return_to_zero():
    k = make_kernel()
    progs = merged(k, [[1, 1, 2], [1, 2, 2]])
    assert counters(k)["shared"] == 2
    ksm.run_store(k, KSM_RUN_UNMERGE)
    assert counters(k) == {"shared": 0, "sharing": 0, "unshared": 0, "rmap_items": 0}
    assert int(k.g[G_SEQNR]) == 0
    assert not any(k.pg.flags[s] & PG_KSM for s in mapped_pages(k))
    assert [read(k, progs[0][1], x) for x in (1, 2, 3)] == [content(k, p) for p in (1, 1, 2)]
    ksm.run_store(k, KSM_RUN_MERGE)
    scan(k, 3)
    assert counters(k)["shared"] == 2


def test_exit_and_ksmd_leave_nothing_behind():
    k = make_kernel()
    progs = merged(k, [[1, 1, 2], [1, 2, 2]])
    cref = mmm.dup_mmap(k, progs[0][0])
    exit_all(k, progs + [(cref, ref_slot(cref))])
    assert check_quiescence(k.st) is None


def test_unmergeable_breaks_ksm_pages_of_the_vma():
    k = make_kernel()
    (aref, a), (_b, b) = merged(k, [[3, 3], [3]])
    mmm.sys_madvise(k, aref, 1, 3, ksm.MADV_UNMERGEABLE)
    assert not any(k.pg.flags[ref_slot(pte_page(k, a, x))] & PG_KSM for x in (1, 2))
    scan(k, 2)
    # B's page stays a KSM page with its one rmap_item (2.6.33 does not unshare a lone KSM page); A has none left
    assert (counters(k)["shared"], counters(k)["sharing"]) == (1, 0)
    assert not any(k.ri.mm[i] == aref for i in k.ri.live_slots())
    assert sum(bool(k.ri.flags[i] & STABLE_FLAG) for i in k.ri.live_slots()) == 1
    assert read(k, b, 1) == content(k, 3)


def test_munmap_splits_a_vma_and_both_halves_stay_on_the_anon_vma():
    k = make_kernel()
    aref, a = new_program(k, 6)
    for x in range(1, 7):
        write(k, a, x, x)
    assert mmm.sys_munmap(k, aref, 3, 5)
    vmas = mmm.vma_walk(k, a)
    assert [(int(k.vm.start[ref_slot(v)]), int(k.vm.end[ref_slot(v)])) for v in vmas] == [(1, 3), (5, 7)]
    av = int(k.vm.anon_vma[ref_slot(vmas[0])])
    k.locks.lock(k.av_lock(ref_slot(av)), "test")
    on_list = rmap.anon_vma_vmas(k, av, "test")
    k.locks.unlock(k.av_lock(ref_slot(av)), "test")
    assert on_list == vmas or sorted(on_list) == sorted(vmas)
    assert memory.user_read(k, a, 3) is None  # SIGSEGV in the hole
    assert read(k, a, 6) == content(k, 6)


def at_point(k, site, action, nth=1):
    """Run `action` once, as another task would, at the `nth` scheduling point named `site` (a lock's point comes
    before it is taken, an unlock's after it is released): the single task of a test then builds an interleaving
    between two steps, where no lock hook can reach."""
    own = k.ctl.point
    seen = [0]

    def point(s, yielding=False):
        own(s, yielding)
        if s == site:
            seen[0] += 1
            if seen[0] == nth:
                action()

    k.ctl.point = point


def swapped_out(k, m, addr):
    """Reclaim swaps the page at addr out (isolated by a reference, as shrink_page_list's caller does); returns the
    swap entry now in the pte."""
    from ksmstress.mm import vmscan

    page = pte_page(k, m, addr)
    memory.get_page(k, page, "isolate_lru_page")
    if not vmscan.shrink_page(k, page, swap=True):
        memory.put_page(k, page, "putback_lru_page")
    kind, sref, _w = pte(k, m, addr)
    assert kind == 2 and k.st.swap.is_live(sref)
    return sref


def test_swap_fault_racing_another_swap_in_of_the_same_entry_backs_out():
    """Two faults of one mm on a swap pte (run=2's break_ksm and the program itself): the second swaps the entry in
    while the first is between handle_mm_fault's unlock and do_swap_page. The first may not reread the pte (the word
    is now a page's reference, which can equal a swap reference); it finds the same page in the swap cache and
    backs out at pte_same. The entry lives on by SWAP_HAS_CACHE alone until a write reuses the page
    (reuse_swap_page: delete_from_swap_cache)."""
    k = make_kernel()
    mref, m = new_program(k, 1, mergeable=False)
    write(k, m, 1, 6)
    sref = swapped_out(k, m, 1)
    vref = vma_at(k, m, 1)
    at_point(k, "handle_mm_fault", lambda: read(k, m, 1), nth=2)  # after its unlock, the program faults it in
    assert memory.handle_mm_fault(k, m, vref, 1, write=True) == 0  # raced: nothing done
    ss = ref_slot(sref)
    assert k.st.swap.is_live(sref) and k.st.swap.c["count"][ss] == 0 and k.st.swap.c["cache"][ss] == 1
    page = pte_page(k, m, 1)
    assert k.st.swap.c["page"][ss] == page
    assert k.pg.count[ref_slot(page)] == 2 and k.pg.mapcount[ref_slot(page)] == 1  # the pte's and the cache's
    assert memory.handle_mm_fault(k, m, vref, 1, write=True) == memory.VM_FAULT_WRITE  # retried: reuse in place
    assert not k.st.swap.is_live(sref) and pte_page(k, m, 1) == page
    assert read(k, m, 1) == content(k, 6)
    mmm.mmput(k, mref)
    assert check_quiescence(k.st) is None


def test_swap_fault_finds_the_page_another_fault_mapped_meanwhile():
    """The other order: the program faults the entry in after the first fault's lookup_swap_cache, before its
    lock_page: the first holds the same swap-cache page, which is still the entry's (the later fix's recheck
    passes), and backs out at pte_same; its reference goes, the pte's and the swap cache's stay."""
    from ksmstress.mm import vmscan

    k = make_kernel()
    mref, m = new_program(k, 1, mergeable=False)
    write(k, m, 1, 9)
    sref = swapped_out(k, m, 1)
    vref = vma_at(k, m, 1)
    assert read(k, m, 1) == content(k, 9)  # in the swap cache now, and mapped
    page = pte_page(k, m, 1)
    memory.get_page(k, page, "get_user_pages")  # a pin keeps it in the swap cache (__remove_mapping refuses)
    memory.get_page(k, page, "isolate_lru_page")
    assert not vmscan.shrink_page(k, page, True)  # unmapped and written, but not freed
    memory.put_page(k, page, "putback_lru_page")
    assert pte(k, m, 1) == (2, sref, 0) and k.st.swap.c["page"][ref_slot(sref)] == page
    at_point(k, "do_swap_page:lock_page", lambda: read(k, m, 1))  # found by lookup_swap_cache, not locked yet
    assert memory.handle_mm_fault(k, m, vref, 1, write=False) == 0  # the pte changed: backed out
    assert pte_page(k, m, 1) == page and k.pg.count[ref_slot(page)] == 3  # the pte, the cache, the pin
    memory.put_page(k, page, "put_page")
    assert read(k, m, 1) == content(k, 9)
    mmm.mmput(k, mref)
    assert k.st.swap.c["page"][ref_slot(sref)] == page  # unmapped by the zap, its entry's count 0: still cached
    vmscan.drain_swap_cache(k)  # what reclaim does once every mm is gone
    assert check_quiescence(k.st) is None
