"""Each detector fires on a defect built in the test, and stays quiet on the correct model."""

from __future__ import annotations

import numpy as np
import pytest

from ksmstress.arena import ref_slot
from ksmstress.checks.content import check_read, pattern_bytes
from ksmstress.checks.invariants import check_quiescence
from ksmstress.checks.traversal import TraversalCheck, Walk, mapping_ptes
from ksmstress.failures import Failure
from ksmstress.mm import memory, rmap, swap_state
from ksmstress.mm import mm as mmm
from ksmstress.mm.state import PTE_PRESENT, PTE_SWAP, mk_pte

from .defects import edited
from .harness import make_kernel, new_program, page_locked, pte_page, scan, vma_at, write


def test_use_after_free_names_who_freed_and_who_touched():
    k = make_kernel()
    ref = k.av.alloc("test_alloc")
    k.av.free(ref, "test_free_site")
    with pytest.raises(Failure) as e:
        k.av.deref(ref, "test_touch_site")
    f = e.value
    assert f.cls == "use-after-free"
    assert "test_free_site" in f.message and "test_touch_site" in f.message
    assert f.details["freed"]["site"] == "test_free_site"


def test_use_after_free_survives_slot_reuse_through_the_generation():
    k = make_kernel(quarantine=0)
    ref = k.av.alloc("a")
    k.av.free(ref, "f")
    again = k.av.alloc("b")
    assert ref_slot(again) == ref_slot(ref) and again != ref
    with pytest.raises(Failure) as e:
        k.av.deref(ref, "stale")
    assert e.value.cls == "use-after-free" and e.value.details["reused"]


def test_quarantine_delays_reuse():
    k = make_kernel(quarantine=4)
    ref = k.av.alloc("a")
    k.av.free(ref, "f")
    fresh = [k.av.alloc("b") for _ in range(3)]
    assert all(ref_slot(x) != ref_slot(ref) for x in fresh)


def test_double_free():
    k = make_kernel()
    ref = k.vm.alloc("a")
    k.vm.free(ref, "first")
    with pytest.raises(Failure) as e:
        k.vm.free(ref, "second")
    assert e.value.cls == "double-free" and "first" in e.value.message


def test_refcount_underflow_on_put_page_and_mapcount():
    k = make_kernel()
    page = memory.alloc_page(k, "t")
    memory.get_page(k, page, "t")
    k.pg.count[ref_slot(page)] = 0  # a lost get_page
    with pytest.raises(Failure) as e:
        memory.put_page(k, page, "t")
    assert e.value.cls == "refcount-underflow"
    page = memory.alloc_page(k, "t")
    with pytest.raises(Failure) as e:
        rmap.page_remove_rmap(k, page, "t")
    assert e.value.cls == "refcount-underflow" and "mapcount" in e.value.message


def test_ksm_refcount_underflow():
    k = make_kernel()
    _a, a = new_program(k, 1)
    _b, b = new_program(k, 1, start=2)
    write(k, a, 1, 1)
    write(k, b, 2, 1)
    scan(k, 3)
    for i in k.ri.live_slots():  # a drop the code never matched with a hold
        k.av.refcount[ref_slot(int(k.ri.anon_vma[i]))] = 0
    with pytest.raises(Failure) as e:
        mmm.sys_madvise(k, _a, 1, 2, 13)
        scan(k, 2)
    assert e.value.cls == "refcount-underflow" and "ksm_refcount" in e.value.message


def test_leak_at_quiescence():
    k = make_kernel()
    mmm.mm_alloc(k)
    f = check_quiescence(k.st)
    assert f is not None and f.cls == "leak" and "mm_struct" in f.message


def test_data_loss_on_read_back():
    data = pattern_bytes(2, 32)
    check_read(data, 2, "mm#3", 0, 1, 10)
    with pytest.raises(Failure) as e:
        check_read(data, 1, "mm#3", 0, 1, 10)
    assert e.value.cls == "data-loss" and "pattern 1" in e.value.message


def test_traversal_when_a_page_is_freed_while_mapped():
    """A pte copied without mapcount/reference (the fork-no-mapcount defect, built by hand)."""
    k = make_kernel()
    aref, a = new_program(k, 1)
    bref, b = new_program(k, 1)
    write(k, a, 1, 1)
    page = pte_page(k, a, 1)
    k.locks.lock(k.ptl(b), "test")
    memory.pte_set(k, b, 1, PTE_PRESENT, page, 0)
    k.locks.unlock(k.ptl(b), "test")
    with pytest.raises(Failure) as e:
        mmm.sys_munmap(k, aref, 1, 2)
    assert e.value.cls == "traversal" and "still maps" in e.value.message and e.value.details["mm"] == b


def test_traversal_when_a_walk_skips_a_reachable_pte():
    """An rmap walk that stops early: a mapcount lower than the ptes (built by hand)."""
    k = make_kernel()
    aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 1)
    cref = mmm.dup_mmap(k, aref)
    page = pte_page(k, a, 1)
    k.pg.mapcount[ref_slot(page)] = 1
    with pytest.raises(Failure) as e, page_locked(k, page):
        assert swap_state.add_to_swap(k, page)
        rmap.try_to_unmap(k, page)
    assert e.value.cls == "traversal" and e.value.details["mm"] == ref_slot(cref)


class StoreBetweenReads:
    """`k` as a detector sees it while another CPU runs: `store` lands after the detector's first read of the page
    table and before any later one (the window a check reading kinds and targets apart leaves open)."""

    def __init__(self, k, store) -> None:
        self.k, self.store, self.reads = k, store, 0
        self.st = self
        self.ctl, self.mmc = k.ctl, k.mmc

    def __getattr__(self, name):
        if name.startswith("pte"):
            self.reads += 1
            if self.reads == 2:
                self.store()
        return getattr(self.k.st, name)


def test_traversal_reads_each_pte_as_one_word():
    """A pte that reclaim turns from present (another page) to a swap entry whose reference equals the page being
    freed is no mapping of it at any moment, so neither the page-free check, nor a walk's duty read from the page
    tables, nor a walk's end may call it one: free mode reported such ptes as "freed while still mapped" (0.1% of
    mixed runs) when kind and target were two reads.
    """
    k = make_kernel()
    aref, a = new_program(k, 1)
    bref, b = new_program(k, 1)
    write(k, a, 1, 1)
    page = pte_page(k, a, 1)
    mmm.sys_munmap(k, aref, 1, 2)  # page's last reference is gone: no pte maps it
    write(k, b, 1, 2)  # mm b maps another page
    sref = page  # swap[s] at generation g has the reference of page[s] at g
    # raw stores of hand-made ptes: memory.pte_set would (rightly) report the stale pte at once
    def raw(kind: int, ref: int, w: int) -> None:
        k.st.pte[b, 1] = mk_pte(kind, ref, w)

    swap_out = lambda: raw(PTE_SWAP, sref, 0)  # noqa: E731 - try_to_unmap_one's store
    TraversalCheck().page_freeing(StoreBetweenReads(k, swap_out), page, "test")
    assert mapping_ptes(StoreBetweenReads(k, swap_out), page) == []  # a walk's duty from the page tables, too
    raw(PTE_PRESENT, pte_page(k, b, 1), 1)
    walk = Walk("try_to_unmap_anon", page, {(b, 1): (bref, "test")})
    TraversalCheck().walk_end(StoreBetweenReads(k, swap_out), walk)
    raw(PTE_PRESENT, page, 0)  # and a pte that does map it is still found, by both
    with pytest.raises(Failure) as e:
        TraversalCheck().page_freeing(k, page, "test")
    assert e.value.cls == "traversal" and e.value.details["mappings"] == [[b, 1]]
    with pytest.raises(Failure) as e:
        TraversalCheck().walk_end(k, walk)
    assert e.value.cls == "traversal" and e.value.details["mm"] == b


def test_detectors_quiet_on_the_correct_model():
    k = make_kernel()
    aref, a = new_program(k, 4)
    for x in range(1, 5):
        write(k, a, x, x % 2)
    scan(k, 3)
    cref = mmm.dup_mmap(k, aref)
    for s in np.flatnonzero(k.st.page.state == 1).tolist():
        page = k.page_ref(s)
        if rmap.page_mapped(k, s):
            with page_locked(k, page):
                rmap.page_referenced(k, page)
    mmm.mmput(k, aref)
    mmm.mmput(k, cref)
    scan(k, 2)
    from ksmstress.mm.ksm import prune_stale_stable_nodes

    prune_stale_stable_nodes(k)
    assert check_quiescence(k.st) is None


# -- lockdep -------------------------------------------------------------------------------------------------------
def test_lockdep_reports_an_inversion_before_any_deadlock():
    k = make_kernel()
    aref, a = new_program(k, 1)
    write(k, a, 1, 1)
    page = pte_page(k, a, 1)
    av = int(k.vm.anon_vma[ref_slot(vma_at(k, a, 1))])
    k.locks.lock(k.av_lock(ref_slot(av)), "test:anon_vma_first")
    with pytest.raises(Failure) as e:
        k.locks.lock(k.page_lock(ref_slot(page)), "test:then_page")
    f = e.value
    assert f.cls == "lockdep" and "inversion" in f.message
    assert "test:anon_vma_first" in f.details["chain"] and "test:then_page" in f.details["chain"]


def test_lockdep_names_the_chain_that_established_the_order():
    k = make_kernel()
    aref, a = new_program(k, 1)
    write(k, a, 1, 1)
    ptl = k.ptl(a)
    k.locks.down_read(k.mmap_sem(a), "good:mmap_sem")
    k.locks.lock(ptl, "good:ptl")
    k.locks.unlock(ptl, "good:ptl")
    k.locks.up_read(k.mmap_sem(a), "good:mmap_sem")
    k.locks.lock(ptl, "bad:ptl")
    with pytest.raises(Failure) as e:
        k.locks.down_read(k.mmap_sem(a), "bad:mmap_sem")
    est = e.value.details["established"]  # the first chain seen: the write's page fault, before "good:"
    assert "mmap_sem@do_page_fault" in est and "page_table_lock@handle_mm_fault" in est


def test_lockdep_sleeping_lock_under_spinlock_and_trylock_exemption():
    k = make_kernel()
    aref, a = new_program(k, 1)
    write(k, a, 1, 1)
    page = pte_page(k, a, 1)
    k.locks.lock(k.ptl(a), "spin")
    assert k.locks.trylock(k.page_lock(ref_slot(page)), "trylock is fine under a spinlock")
    k.locks.unlock(k.page_lock(ref_slot(page)), "t")
    with pytest.raises(Failure) as e:
        k.locks.lock(k.page_lock(ref_slot(page)), "sleeps")
    assert e.value.cls == "lockdep"


def test_lockdep_might_sleep_allows_sleeping_locks_but_no_spinlock():
    """__might_sleep at cond_resched and a GFP_KERNEL allocation: under mmap_sem (a sleeping lock) fine, under
    the page table lock "sleeping function called from invalid context", naming the spinlock and where it was
    taken."""
    k = make_kernel()
    _aref, a = new_program(k, 1)
    k.locks.down_read(k.mmap_sem(a), "sem")
    k.cond_resched("test:cond_resched")
    memory.put_page(k, memory.alloc_page(k, "test:alloc_page"), "test:put")
    k.locks.lock(k.ptl(a), "test:spin")
    for sleeps in (lambda: k.cond_resched("test:cond_resched"), lambda: memory.alloc_page(k, "test:alloc_page")):
        with pytest.raises(Failure) as e:
            sleeps()
        f = e.value
        assert f.cls == "lockdep" and "sleeping function called from invalid context" in f.message, f
        assert "page_table_lock" in f.message and "test:spin" in f.message, f
    with pytest.raises(Failure) as e:  # a yield: it does schedule, schedule_debug's report
        k.point("test:yield", yielding=True)
    assert e.value.cls == "lockdep" and "BUG: scheduling while atomic at test:yield" in e.value.message, e.value


def test_lockdep_cond_resched_moved_under_the_pte_lock(monkeypatch):
    """`ksmstress mutate`'s _gup_one:swap-sched:0: __get_user_pages' cond_resched moved after follow_page's
    spin_lock. No lock order is broken and no sleeping lock is taken, yet the task may schedule holding a
    spinlock: might_sleep's report."""
    from ksmstress.mm import mlock

    edited(monkeypatch, mlock._gup_one,
           '        k.cond_resched("__get_user_pages:cond_resched")\n        k.locks.lock(ptl, "follow_page")',
           '        k.locks.lock(ptl, "follow_page")\n        k.cond_resched("__get_user_pages:cond_resched")')
    k = make_kernel()
    _aref, a = new_program(k, 1)
    write(k, a, 1, 1)
    k.locks.down_read(k.mmap_sem(a), "test:mmap_sem")
    with pytest.raises(Failure) as e:
        mlock._gup_one(k, a, vma_at(k, a, 1), 1, True)
    assert e.value.cls == "lockdep" and "__get_user_pages:cond_resched" in e.value.message, e.value


def test_lockdep_same_class_needs_a_nesting_annotation():
    k = make_kernel()
    aref, a = new_program(k, 1)
    bref, b = new_program(k, 1)
    k.locks.down_write(k.mmap_sem(a), "first")
    k.locks.down_write_nested(k.mmap_sem(b), "nested")  # annotated, as dup_mmap's
    k.locks.up_write(k.mmap_sem(b), "x")
    with pytest.raises(Failure) as e:
        k.locks.down_write(k.mmap_sem(b), "unannotated")
    assert e.value.cls == "lockdep" and "nesting" in e.value.message


def test_lockdep_a_nesting_annotation_covers_one_level_only():
    k = make_kernel()
    _aref, a = new_program(k, 1)
    _bref, b = new_program(k, 1)
    _cref, c = new_program(k, 1)
    k.locks.down_write(k.mmap_sem(a), "first")
    k.locks.down_write_nested(k.mmap_sem(b), "second")
    with pytest.raises(Failure) as e:  # a third of the class at the same subclass as the second
        k.locks.down_write_nested(k.mmap_sem(c), "third")
    assert e.value.cls == "lockdep" and "third" in e.value.message and "second" in e.value.message


def test_lockdep_lock_held_at_task_exit():
    k = make_kernel()
    k.locks.lock(k.ksm_thread_mutex, "forgotten")
    with pytest.raises(Failure) as e:
        k.hooks.task_exit(k)
    assert e.value.cls == "lockdep" and "forgotten" in e.value.message


# -- counters ------------------------------------------------------------------------------------------------------
def test_counters_agree_with_the_trees_and_catch_a_drift():
    from ksmstress.checks.counters import check_counters
    from ksmstress.mm.state import G_PAGES_SHARING

    k = make_kernel()
    _a, a = new_program(k, 3)
    for x in (1, 2, 3):
        write(k, a, x, 4)
    scan(k, 3)
    check_counters(k, "test")  # quiet on the correct model
    k.g[G_PAGES_SHARING] += 1
    with pytest.raises(Failure) as e:
        check_counters(k, "test")
    assert e.value.cls == "counters" and "pages_sharing" in e.value.message


def test_refcount_overflow_at_the_configured_width():
    from ksmstress.mm.state import G_REFCOUNT_BITS

    k = make_kernel()
    k.g[G_REFCOUNT_BITS] = 3  # signed 3-bit: the 4th reference wraps
    _a, a = new_program(k, 5)
    for x in range(1, 6):
        write(k, a, x, 1)
    with pytest.raises(Failure) as e:
        scan(k, 3)
    assert e.value.cls == "refcount-overflow" and "3 bits" in e.value.message
