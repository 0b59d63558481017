"""The design's invariants and the reports built from the history rings: each oracle fires on a defect built in the
test (a solo kernel, one task driving the model step by step) and stays quiet on the correct model."""

from __future__ import annotations

import pytest

from ksmstress.arena import HIST, ref_slot
from ksmstress.checks.content import check_read, pattern_bytes
from ksmstress.checks.invariants import check_counts, check_quiescence
from ksmstress.checks.unmerge import unmerge_begin, unmerge_end
from ksmstress.failures import CLASSES, Failure
from ksmstress.mm import ksm, memory, vmscan
from ksmstress.mm import mm as mmm
from ksmstress.mm.state import KSM_RUN_MERGE, KSM_RUN_UNMERGE, PG_KSM, PTE_PRESENT, PTE_SWAP, STABLE_FLAG

from .harness import holding, make_kernel, merged_pair, new_program, pte, pte_page, read, scan, vma_at, write


def stable_anon_vma(k):
    items = [int(i) for i in k.ri.live_slots() if k.ri.flags[int(i)] & STABLE_FLAG]
    return ref_slot(int(k.ri.anon_vma[items[0]])), items


def test_new_classes_are_documented():
    for c in ("refcount-mismatch", "stale-pte", "writable-ksm", "unmerge-incomplete"):
        assert c in CLASSES


# -- ksm_refcount = stable rmap_items ---------------------------------------------------------------------------
def test_a_hold_without_its_reference_is_named_at_the_first_quiescent_point(monkeypatch):
    """The rmap_item records its anon_vma but takes no reference (the pre-db114b83ab lifetime, built here)."""
    k = make_kernel()

    def hold_without_reference(k, iref, avref):
        k.ri.anon_vma[k.ri.deref(iref, "hold_anon_vma")] = avref

    monkeypatch.setattr(ksm, "hold_anon_vma", hold_without_reference)
    _a, a = new_program(k, 1)
    _b, b = new_program(k, 1)
    write(k, a, 1, 5)
    write(k, b, 1, 5)
    with pytest.raises(Failure) as e:
        scan(k, 3)
    f = e.value
    assert f.cls == "refcount-mismatch"
    assert "ksm_refcount is 0 but" in f.message and "rmap_item[" in f.message and "at test" in f.message
    assert f.details["stable_items"]


def test_a_reference_never_dropped_is_named_with_its_holder(monkeypatch):
    """drop_anon_vma forgotten: once the rmap_items leave the stable tree the count is one too many, and the report
    names the hold that was never matched (site, task, step, rmap_item)."""
    k = make_kernel()
    (aref, a), (bref, b), _page = merged_pair(k)
    a_av, _items = stable_anon_vma(k)
    monkeypatch.setattr(ksm, "drop_anon_vma", lambda k, iref: None)
    mmm.sys_madvise(k, aref, 1, 2, ksm.MADV_UNMERGEABLE)
    with pytest.raises(Failure) as e:
        scan(k, 2)
    f = e.value
    assert f.cls == "refcount-mismatch" and "but 0 stable rmap_items" in f.message
    assert "hold_anon_vma" in f.message and "solo#0" in f.message
    assert [c["site"] for c in f.details["history"]][-1] == "hold_anon_vma"
    assert f.details["history"][-1]["rmap_item"].startswith("rmap_item[")
    assert isinstance(a_av, int)


def test_a_freed_anon_vma_behind_a_stable_rmap_item_is_named(monkeypatch):
    """anon_vma_unlink ignoring ksm_refcount, built here: the stable rmap_item's anon_vma is freed under it."""
    k = make_kernel()
    (aref, _a), _b, _page = merged_pair(k)
    a_av, _items = stable_anon_vma(k)
    real = k.av.refcount

    def unlink_ignoring_refcount(k, vref):
        a = ref_slot(int(k.vm.anon_vma[k.vm.deref(vref, "t")]))
        saved = real[a]
        real[a] = 0
        try:
            orig_unlink(k, vref)
        finally:
            real[a] = saved

    orig_unlink = mmm.rmap.anon_vma_unlink
    monkeypatch.setattr(mmm.rmap, "anon_vma_unlink", unlink_ignoring_refcount)
    mmm.sys_munmap(k, aref, 1, 2)
    with pytest.raises(Failure) as e:
        k.locks.lock(k.ksm_thread_mutex, "test")
        k.hooks.ksm_quiescent(k, "test")
    assert e.value.cls == "refcount-mismatch" and "which was freed by" in e.value.message
    assert "anon_vma_unlink" in e.value.message


# -- ptes -------------------------------------------------------------------------------------------------------
def test_a_pte_stored_to_a_freed_page_is_stale_at_the_store():
    k = make_kernel()
    _a, a = new_program(k, 2)
    page = memory.alloc_page(k, "test_alloc")
    memory.put_page(k, page, "test_free")
    with pytest.raises(Failure) as e, holding(k, k.ptl(a)):
        memory.pte_set(k, a, 2, PTE_PRESENT, page, 0, "test:store")
    f = e.value
    assert f.cls == "stale-pte" and "test:store" in f.message and "test_free" in f.message


def test_a_swap_pte_to_a_freed_slot_is_stale():
    k = make_kernel()
    _a, a = new_program(k, 2)
    sref = k.st.swap.alloc("t")
    k.st.swap.free(sref, "test_swap_free")
    with pytest.raises(Failure) as e, holding(k, k.ptl(a)):
        memory.pte_set(k, a, 2, PTE_SWAP, sref, 0, "test:store")
    assert e.value.cls == "stale-pte" and "swap[" in e.value.message


def test_a_writable_pte_to_a_ksm_page_fires_at_the_store():
    k = make_kernel()
    (_aref, a), _b, page = merged_pair(k)
    with pytest.raises(Failure) as e, holding(k, k.ptl(a)):
        memory.pte_mkwrite(k, a, 1, "test:mkwrite")
    f = e.value
    assert f.cls == "writable-ksm" and f.details["page"] == ref_slot(page) and "test:mkwrite" in f.message
    assert "replace_page" in f.message or "do_anonymous_page" in f.message  # the pte's last stores


def test_a_writable_ksm_mapping_made_without_a_store_is_found_at_the_quiescent_scan(monkeypatch):
    """A merge that skips write_protect_page (built here): the page becomes KSM under a writable pte, which no pte
    store shows; ksmd's next quiescent point finds it."""
    k = make_kernel()
    monkeypatch.setattr(ksm, "write_protect_page", lambda k, vref, pref: (0, (pref, 0)))
    _a, a = new_program(k, 1)
    _b, b = new_program(k, 1)
    write(k, a, 1, 5)
    write(k, b, 1, 5)
    with pytest.raises(Failure) as e:
        scan(k, 3)
    assert e.value.cls == "writable-ksm" and "found at test" in e.value.message


# -- mapcount = ptes, page_count >= mapcount, swap count = swap ptes ---------------------------------------------
def test_a_pte_copied_without_mapcount_is_named_when_no_pte_lock_is_held():
    k = make_kernel()
    (_aref, a), (_bref, b), page = merged_pair(k)
    cref, c = new_program(k, 1, mergeable=False)
    memory.get_page(k, page, "test:copy")
    with holding(k, k.ptl(c)):
        memory.pte_set(k, c, 1, PTE_PRESENT, page, 0, "test:copy")  # no page_dup_rmap: the defect
    k.hooks.lockdep = None  # the lock order below is inverted on purpose: lockdep is not under test
    k.locks.lock(k.ptl(c), "test:holds_ptl")
    k.locks.lock(k.ksm_thread_mutex, "test")
    k.hooks.ksm_quiescent(k, "test")  # a pte lock is held: a count may be mid-update, nothing is checked
    k.locks.unlock(k.ksm_thread_mutex, "test")
    k.locks.unlock(k.ptl(c), "test:holds_ptl")
    with pytest.raises(Failure) as e:
        scan(k, 1)
    f = e.value
    assert f.cls == "refcount-mismatch" and "mapcount is 2 but 3 ptes map it" in f.message
    assert [c, 1] in f.details["ptes"] and "test:copy: count=" in f.message


def test_page_count_below_mapcount():
    k = make_kernel()
    _a, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 3)
    s = ref_slot(pte_page(k, a, 1))
    k.atomic_add(k.pg.count, s, -1, "test:lost_reference")
    with pytest.raises(Failure) as e:
        check_counts(k.st, "test")
    assert e.value.cls == "refcount-mismatch" and "below its mapcount" in e.value.message
    assert "test:lost_reference" in e.value.message


def test_swap_count_is_its_swap_ptes():
    k = make_kernel()
    _a, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 3)
    page = pte_page(k, a, 1)
    isolated = memory.get_page_unless_zero(k, ref_slot(page))
    if not vmscan.shrink_page(k, isolated, True):
        memory.put_page(k, isolated, "putback_lru_page")
    assert pte(k, a, 1)[0] == PTE_SWAP
    check_counts(k.st, "test")  # one swap pte, count 1
    sref = pte(k, a, 1)[1]
    k.atomic_add(k.st.swap.count, ref_slot(sref), 1, "test:swap_duplicate_without_pte")
    with pytest.raises(Failure) as e:  # +1 with no pte: SWAP_HAS_CACHE is a bit of its own
        check_counts(k.st, "test")
    assert e.value.cls == "refcount-mismatch" and "swap[" in e.value.message
    assert "test:swap_duplicate_without_pte" in e.value.message
    assert read(k, a, 1) == pattern_bytes(3, k.st.sz.page_size).tobytes()


# -- unmerge completeness -------------------------------------------------------------------------------------------
def lazy_unmerge(monkeypatch):
    """unmerge_ksm_pages that leaves the last page of the range merged (the mutant the issue names)."""
    real = ksm.unmerge_ksm_pages
    monkeypatch.setattr(ksm, "unmerge_ksm_pages", lambda k, vref, start, end: real(k, vref, start, end - 1))


def three_merged(k):
    aref, a = new_program(k, 3)
    for x in (1, 2, 3):
        write(k, a, x, 6)
    scan(k, 3)
    assert len({pte_page(k, a, x) for x in (1, 2, 3)}) == 1
    return aref, a


def test_madv_unmergeable_that_leaves_the_last_page_merged(monkeypatch):
    k = make_kernel()
    aref, a = three_merged(k)
    lazy_unmerge(monkeypatch)
    with pytest.raises(Failure) as e:
        mmm.sys_madvise(k, aref, 1, 4, ksm.MADV_UNMERGEABLE)
    f = e.value
    assert f.cls == "unmerge-incomplete" and f.details["address"] == 3 and f.details["merged"] == [3]
    assert "ksm_madvise" in f.message and f.details["mm"] == a


def test_run2_that_leaves_the_last_page_merged(monkeypatch):
    k = make_kernel()
    _aref, a = three_merged(k)
    lazy_unmerge(monkeypatch)
    with pytest.raises(Failure) as e:
        ksm.run_store(k, KSM_RUN_UNMERGE)
    f = e.value
    assert f.cls == "unmerge-incomplete" and f.details["address"] == 3
    assert "unmerge_and_remove_all_rmap_items" in f.message


def test_unmerge_is_quiet_on_the_correct_model():
    k = make_kernel()
    aref, a = three_merged(k)
    mmm.sys_madvise(k, aref, 1, 4, ksm.MADV_UNMERGEABLE)
    mmm.sys_madvise(k, aref, 1, 4, ksm.MADV_MERGEABLE)
    scan(k, 3)
    ksm.run_store(k, KSM_RUN_UNMERGE)
    ksm.run_store(k, KSM_RUN_MERGE)
    assert not any(k.pg.flags[ref_slot(pte_page(k, a, x))] & PG_KSM for x in (1, 2, 3))


def test_a_child_forked_during_run2_and_an_exiting_mm_may_stay_merged():
    k = make_kernel()
    aref, a = three_merged(k)
    token = unmerge_begin(k, 0, 0, 0)
    cref = mmm.dup_mmap(k, aref)  # forked meanwhile: not on ksmd's list when run=2 began
    k.locks.down_read(k.mmap_sem(a), "test")
    ksm.unmerge_ksm_pages(k, mmm.find_vma(k, a, 1), 1, 4)
    k.locks.up_read(k.mmap_sem(a), "test")
    assert k.pg.flags[ref_slot(pte_page(k, ref_slot(cref), 1))] & PG_KSM
    unmerge_end(k, token, "test")  # the child keeps its KSM ptes, as the kernel leaves them
    token = unmerge_begin(k, 0, 0, 0)  # now the child is on the list, not unmerged: only exiting excuses it
    with pytest.raises(Failure) as e:
        unmerge_end(k, token, "test")
    assert e.value.cls == "unmerge-incomplete" and e.value.details["mm"] == ref_slot(cref)
    k.mmc.users[ref_slot(cref)] = 0  # exiting: exit_mmap will unmap the rest
    unmerge_end(k, token, "test")


def test_madvise_allows_a_cow_shared_page_merged_meanwhile_through_another_mm():
    """2.6.33 checks only the other vma's VM_MERGEABLE: ksmd may make a page this mm shares copy-on-write with a
    fork a KSM page through the fork's mapping while MADV_UNMERGEABLE runs. A page KSM already when the call began
    must have been broken, though."""
    k = make_kernel()
    aref, a = new_program(k, 1)
    write(k, a, 1, 5)
    cref = mmm.dup_mmap(k, aref)
    c = ref_slot(cref)
    page = pte_page(k, a, 1)
    token = unmerge_begin(k, aref, 1, 2)
    memory.get_page(k, page, "test:follow_page")  # ksmd's own reference, which write_protect_page counts
    err = ksm.try_to_merge_one_page(k, vma_at(k, c, 1), page, 0)  # ksmd, through the child's mapping
    memory.put_page(k, page, "test:put_page")
    assert err == 0 and k.pg.flags[ref_slot(page)] & PG_KSM and pte_page(k, a, 1) == page
    unmerge_end(k, token, "test")
    token = unmerge_begin(k, aref, 1, 2)
    with pytest.raises(Failure) as e:
        unmerge_end(k, token, "test")
    assert e.value.cls == "unmerge-incomplete"


# -- reports a developer can act on --------------------------------------------------------------------------------
def test_history_ring_keeps_the_last_changes_in_order():
    k = make_kernel()
    _a, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 3)
    page = pte_page(k, a, 1)
    s = ref_slot(page)
    for j in range(HIST + 3):
        memory.get_page(k, page, f"test:get{j}")
    h = k.pg.history(s)
    assert len(h) == HIST
    assert [c["site"] for c in h] == [f"test:get{j}" for j in range(3, HIST + 3)]
    assert [c["value"] for c in h] == list(range(5, HIST + 5)) and all(c["field"] == "count" for c in h)
    assert h[0]["step"] <= h[-1]["step"] and h[-1]["task"] == "solo#0"


def test_leak_names_the_allocation_and_the_reference_never_dropped():
    k = make_kernel()
    aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 3)
    page = pte_page(k, a, 1)
    memory.get_page(k, page, "test:forgotten_get")
    mmm.mmput(k, aref)
    f = check_quiescence(k.st)
    assert f is not None and f.cls == "leak"
    desc = f.details["objects"][f"page[{ref_slot(page)}]"]
    assert "count 1, mapcount 0" in desc and "do_anonymous_page" in desc
    # the count never fell below 1 since the fault's allocation; the forgotten get is in its last changes
    assert "count never dropped below 1 since do_anonymous_page by solo#0 at step" in desc
    assert "test:forgotten_get: count=2" in desc and "zap_pte_range: count=1" in desc


def test_leak_names_the_reference_taken_and_never_dropped():
    """A count that starts at 0 (ksm_refcount): the hold that raised it is the one never dropped."""
    k = make_kernel()
    ref = k.av.alloc("anon_vma_alloc")
    k.atomic_add(k.av.refcount, ref_slot(ref), 1, "test:hold", 3 + 1)
    k.atomic_add(k.av.refcount, ref_slot(ref), 1, "test:hold", 4 + 1)
    k.atomic_add(k.av.refcount, ref_slot(ref), -1, "test:drop", 4 + 1)
    from ksmstress.checks.invariants import _describe

    desc = _describe(k.av, ref_slot(ref))
    assert "refcount never dropped below 1 since test:hold by solo#0 at step" in desc and "rmap_item[3]" in desc


def test_a_leaked_ksm_refcount_is_named_at_quiescence_with_its_holder():
    k = make_kernel()
    aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 3)
    av = ref_slot(int(k.vm.anon_vma[ref_slot(vma_at(k, a, 1))]))
    k.atomic_add(k.av.refcount, av, 1, "test:hold", 7 + 1)
    mmm.mmput(k, aref)
    f = check_quiescence(k.st)
    assert f is not None and f.cls == "refcount-mismatch"
    assert f"anon_vma[{av}] ksm_refcount is 1 but 0 stable" in f.message
    assert "test:hold: refcount=1 (rmap_item[7])" in f.message


def test_use_after_free_names_the_allocation_too():
    k = make_kernel(quarantine=0)
    ref = k.av.alloc("test_alloc")
    k.av.free(ref, "test_free")
    with pytest.raises(Failure) as e:
        k.av.deref(ref, "test_touch")
    assert "allocated by solo#0" in e.value.message and "test_alloc" in e.value.message
    assert e.value.details["allocated"]["site"] == "test_alloc"
    k.av.alloc("test_realloc")  # the slot is reused: the stale reference's object is still the one named
    with pytest.raises(Failure) as e:
        k.av.deref(ref, "test_touch")
    assert e.value.details["reused"] and e.value.details["allocated"]["site"] == "test_alloc"


def test_data_loss_names_the_page_frame_and_the_last_merge():
    k = make_kernel()
    (_aref, a), (_bref, b), page = merged_pair(k)
    replaced = next(m for m in (a, b) if any(e[2] == "replace_page" for e in k.st.pte_hist.entries(
        m * k.st.sz.vpages + 1)))
    data = memory.user_read(k, replaced, 1)
    with pytest.raises(Failure) as e:
        check_read(data, 9, "solo#0", replaced, 1, 0, k)  # a record that says pattern 9 was written
    f = e.value
    s = ref_slot(page)
    assert f.cls == "data-loss" and f"KSM page[{s}] (frame {s}" in f.message
    assert "last merge/COW/replace: replace_page by solo#0" in f.message
    assert f.details["last_change"]["site"] == "replace_page" and f.details["frame"] == s


# -- quiet on the correct model ----------------------------------------------------------------------------------
def test_invariants_quiet_through_merge_fork_cow_swap_unmerge_and_exit():
    """Every oracle of this module on a workload that does all the model does; the mapcount check really runs
    (no pte lock is held at these points)."""
    k = make_kernel()
    aref, a = new_program(k, 4)
    bref, b = new_program(k, 4)
    for x in range(1, 5):
        write(k, a, x, x % 2)
        write(k, b, x, x % 2)
    scan(k, 3)
    cref = mmm.dup_mmap(k, aref)
    write(k, ref_slot(cref), 1, 7)  # COW of a KSM page in the child
    check_counts(k.st, "test")
    page = pte_page(k, b, 2)
    isolated = memory.get_page_unless_zero(k, ref_slot(page))
    if not vmscan.shrink_page(k, isolated, True):  # swaps out every mapping of a KSM page
        memory.put_page(k, isolated, "putback_lru_page")
    check_counts(k.st, "test")
    assert read(k, b, 2) == pattern_bytes(0, k.st.sz.page_size).tobytes()
    mmm.sys_madvise(k, bref, 1, 5, ksm.MADV_UNMERGEABLE)
    scan(k, 2)
    ksm.run_store(k, KSM_RUN_UNMERGE)
    ksm.run_store(k, KSM_RUN_MERGE)
    scan(k, 3)
    check_counts(k.st, "test")
    for mref in (aref, bref, cref):
        mmm.mmput(k, mref)
    scan(k, 2)
    ksm.prune_stale_stable_nodes(k)
    assert check_quiescence(k.st) is None


def test_history_entries_carry_the_step_they_were_made_at():
    """The running task keeps the step in a working copy between hand-offs (fastpoint); a history entry must still
    be stamped with the step of its change, not the last one published (the solo kernel's single task never hands
    off, so every step here is such a kept step)."""
    k = make_kernel()
    _a, a = new_program(k, 1)
    write(k, a, 1, 5)
    page = pte_page(k, a, 1)
    s = ref_slot(page)
    for _ in range(5):
        k.point("test")
    before, _who = k.ctl.clock()
    memory.get_page(k, page, "test:get")
    memory.put_page(k, page, "test:put")
    after, _who = k.ctl.clock()
    mine = [e for e in k.pg.history(s) if e["site"].startswith("test:")]
    assert [e["site"] for e in mine] == ["test:get", "test:put"]
    assert before < mine[0]["step"] <= mine[1]["step"] <= after
