"""Issue 14 part A in the model, step by step: threads sharing an mm (mm_users, the last exit runs exit_mmap),
MADV_DONTNEED under mmap_sem held for read, get_user_pages(_fast) pins and the O_DIRECT write through the pin,
and write_protect_page's 2.6.33 order (clear and flush the pte, check the counts, restore on a mismatch).

Interleavings are built by running another task's step at a named scheduling point of the model (the single
task of a solo kernel stands in for both), as harness.InterleaveAt does at a lock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ksmstress.arena import ref_slot
from ksmstress.checks.content import pattern_bytes
from ksmstress.failures import Failure
from ksmstress.mm import gup, ksm, memory, vmscan
from ksmstress.mm import mm as mmm
from ksmstress.mm.state import PG_KSM, PTE_NONE, K
from ksmstress.scenario import ScenarioError, parse

from .harness import content, counters, make_kernel, new_program, pte, pte_page, read, scan, write


def at_point(k: K, site: str, action: Callable[[], None]) -> list[str]:
    """Run `action` once, as another task would, when the model reaches scheduling point `site` (a k.spoint);
    returns a list that records the sites seen, so a test can assert the point was reached."""
    seen: list[str] = []
    orig = k.spoint

    def spoint(s: str) -> None:
        seen.append(s)
        if s == site and action is not None and seen.count(site) == 1:
            action()
        orig(s)

    k.spoint = spoint  # type: ignore[method-assign]
    return seen


def two_equal_pages(k: K) -> tuple[int, int]:
    mref, m = new_program(k, 2)
    write(k, m, 1, 0)
    write(k, m, 2, 0)
    return mref, m


# -- threads ---------------------------------------------------------------------------------------------------
def test_each_thread_holds_mm_users_and_the_last_exit_runs_exit_mmap() -> None:
    k = make_kernel()
    mref, m = two_equal_pages(k)
    mmm.copy_mm_clone_vm(k, mref)
    mmm.copy_mm_clone_vm(k, mref)
    assert int(k.mmc.users[m]) == 3
    mmm.mmput(k, mref)
    mmm.mmput(k, mref)
    assert k.mmc.mmap[m] and pte(k, m, 1)[0] != PTE_NONE  # two threads gone, the mm is whole
    mmm.mmput(k, mref)
    # the last one: ksm_exit, exit_mmap (the mm_struct itself lives on while ksmd's mm_slot holds mm_count)
    # exit_mmap freed every vma; mm->mmap still names the first, as 2.6.33 leaves it (ksm_test_exit guards it)
    assert not k.vm.is_live(int(k.mmc.mmap[m])) and pte(k, m, 1)[0] == PTE_NONE and int(k.mmc.users[m]) == 0


def test_a_vma_walk_of_an_exited_mm_without_ksm_test_exit_is_a_use_after_free() -> None:
    """2.6.33's exit_mmap frees the vmas and leaves mm->mmap naming them; ksmd, whose mm_slot keeps the mm_struct,
    must test ksm_test_exit under mmap_sem before it walks them (try_to_merge_with_ksm_page without that test
    survived a campaign while the model reset mm->mmap)."""
    k = make_kernel()
    aref, a = new_program(k, 2)
    write(k, a, 1, 1)
    assert int(k.mmc.mmcount[a]) == 2  # the mm_slot's reference (__ksm_enter)
    mmm.mmput(k, aref)
    k.locks.down_read(k.mmap_sem(a), "test")
    assert mmm.ksm_test_exit(k, a)
    with pytest.raises(Failure) as e:
        mmm.find_vma(k, a, 1)
    assert e.value.cls == "use-after-free"


# -- MADV_DONTNEED -----------------------------------------------------------------------------------------------
def test_dontneed_zaps_under_mmap_sem_read_and_the_page_reads_zero() -> None:
    k = make_kernel()
    mref, m = two_equal_pages(k)
    assert mmm.sys_madvise(k, mref, 1, 2, mmm.MADV_DONTNEED) == 0
    assert pte(k, m, 1)[0] == PTE_NONE
    assert read(k, m, 1) == content(k, -1) and read(k, m, 2) == content(k, 0)
    assert mmm.sys_madvise(k, mref, 3, 5, mmm.MADV_DONTNEED) == -12  # unmapped: -ENOMEM


def test_break_ksm_faults_a_fresh_page_when_a_zap_took_the_pte_after_follow_page() -> None:
    """2.6.33: break_ksm's follow_page sees the KSM page; a thread's MADV_DONTNEED (mmap_sem for read, beside
    ksmd's read hold) zaps the pte; handle_mm_fault then finds no pte and do_anonymous_page maps a zeroed page."""
    k = make_kernel()
    mref, m = two_equal_pages(k)
    scan(k, 3)
    kpage = pte_page(k, m, 1)
    assert k.pg.flags[ref_slot(kpage)] & PG_KSM
    zapped: list[int] = []
    orig_fault = memory.handle_mm_fault

    def fault(k2: K, mm_: int, vref: int, addr: int, write: bool) -> int:
        if not zapped:  # between break_ksm's follow_page and its fault: the other thread's MADV_DONTNEED
            zapped.append(1)
            mmm.zap_page_range(k2, mm_, addr, addr + 1)
        return orig_fault(k2, mm_, vref, addr, write)

    memory.handle_mm_fault = fault  # type: ignore[assignment]
    try:
        k.locks.down_read(k.mmap_sem(m), "test")
        ksm.break_ksm(k, mmm.find_vma(k, m, 1), 1)
        k.locks.up_read(k.mmap_sem(m), "test")
    finally:
        memory.handle_mm_fault = orig_fault  # type: ignore[assignment]
    assert zapped
    assert [e[2] for e in k.st.pte_hist.entries(m * k.st.sz.vpages + 1)][-1] == "do_anonymous_page"
    new = pte_page(k, m, 1)
    assert new != kpage and not k.pg.flags[ref_slot(new)] & PG_KSM
    assert read(k, m, 1) == content(k, -1)  # do_anonymous_page: zeros, as the zap promised
    assert read(k, m, 2) == content(k, 0)


# -- get_user_pages and write_protect_page --------------------------------------------------------------------------
def test_gup_for_write_breaks_cow_of_a_ksm_page_first() -> None:
    k = make_kernel()
    mref, m = two_equal_pages(k)
    scan(k, 3)
    kpage = pte_page(k, m, 1)
    page = gup.get_user_pages_fast(k, m, 1, True)
    assert page and page != kpage and pte_page(k, m, 1) == page and pte(k, m, 1)[2] == 1
    gup.dio_complete(k, page, pattern_bytes(7, k.st.sz.page_size))
    assert read(k, m, 1) == content(k, 7) and read(k, m, 2) == content(k, 0)


def test_write_protect_page_clears_checks_and_restores_the_pte_of_a_pinned_page() -> None:
    k = make_kernel()
    mref, m = two_equal_pages(k)
    page = gup.get_user_pages_fast(k, m, 1, True)
    scan(k, 4)
    assert pte_page(k, m, 1) == page and pte(k, m, 1)[2] == 1  # restored, writable: not merged
    sites = [e[2] for e in k.st.pte_hist.entries(m * k.st.sz.vpages + 1)]
    assert "write_protect_page:ptep_clear_flush" in sites and "write_protect_page:restore" in sites
    gup.dio_complete(k, page, pattern_bytes(1, k.st.sz.page_size))
    assert read(k, m, 1) == content(k, 1) and read(k, m, 2) == content(k, 0)


@pytest.mark.parametrize("bug", [(), ("wrprotect-check-before-clear",)])
def test_a_gup_fast_right_after_the_count_check_pins_unseen_only_when_the_check_came_first(
    bug: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """gup_fast runs right after write_protect_page read the counts: with 2.6.33's order the pte is already clear
    and gup_fast finds nothing to pin; with the counts read before the clear, it pins the page being merged."""
    k = make_kernel(bugs=bug)
    mref, m = two_equal_pages(k)
    pins: list[int] = []

    def other_thread() -> None:
        if not pins:  # the first write_protect_page of this scan order is page 2's
            pins.append(gup.gup_pte_range(k, m, 2, True))

    if bug:
        at_point(k, "write_protect_page:set_pte", other_thread)
    else:
        orig = ksm._gup_count_ok

        def count_ok(k2: K, s: int) -> bool:
            ok = orig(k2, s)
            other_thread()
            return ok

        monkeypatch.setattr(ksm, "_gup_count_ok", count_ok)
    scan(k, 4)
    assert pins
    if not bug:
        assert pins == [0]  # the pte is already clear: gup_fast finds nothing and would take the slow path
        assert counters(k)["shared"] == 1
        return
    assert pins[0]  # pinned through the still-writable pte, unseen by the count check
    assert counters(k)["shared"] == 1
    gup.dio_complete(k, pins[0], pattern_bytes(1, k.st.sz.page_size))  # the O_DIRECT read of pattern 1 into page 2
    # the program's record: page 1 holds 0, page 2 holds 1; the merge made one of them wrong
    assert (read(k, m, 1), read(k, m, 2)) != (content(k, 0), content(k, 1))


@pytest.mark.parametrize("bug", [(), ("wrprotect-readonly-unchecked",)])
def test_a_pinned_page_swapped_out_and_faulted_back_read_only_is_not_merged(bug: tuple[str, ...]) -> None:
    """Deviation 31: an O_DIRECT pin in flight while reclaim unmaps the page (page_freeze_refs sees the pin, so it
    stays in the swap cache) and a read fault maps it back read-only. write_protect_page must still compare the
    counts: 2.6.33 (the variant) does so only for a writable pte, merges the page, and the DMA is lost."""
    from .test_swap import shrink

    k = make_kernel(bugs=bug)
    _mref, m = two_equal_pages(k)
    page = gup.get_user_pages_fast(k, m, 1, True)
    assert not shrink(k, page)  # unmapped into a swap entry, kept in the swap cache by the pin
    assert read(k, m, 1) == content(k, 0) and pte_page(k, m, 1) == page and pte(k, m, 1)[2] == 0  # read-only
    scan(k, 4)
    gup.dio_complete(k, page, pattern_bytes(1, k.st.sz.page_size))  # the O_DIRECT read of pattern 1 lands
    if bug:
        assert counters(k)["shared"] == 1 and read(k, m, 1) != content(k, 1)  # merged: the DMA went elsewhere
    else:
        assert pte_page(k, m, 1) == page and read(k, m, 1) == content(k, 1) and read(k, m, 2) == content(k, 0)


def test_scenario_keys_for_threads_and_their_limits() -> None:
    sc = parse("[[task]]\nthreads = 3\n[task.weights]\nwrite = 1\ndontneed = 1\ndio = 1\n")
    assert sc.tasks[0].threads == 3 and sc.extra_threads == 2
    with pytest.raises(ScenarioError, match=r"key 'task\[0\]\.weights\.fork': expected 0 when threads > 1"):
        parse("[[task]]\nthreads = 2\n[task.weights]\nfork = 1\n")
    with pytest.raises(ScenarioError, match=r"key 'task\[0\]\.threads': expected"):
        parse("[[task]]\nthreads = 9\n")
    assert parse("[[task]]\nthreads = 2\n[task.weights]\npeek = 2\n").tasks[0].threads == 2
    with pytest.raises(ScenarioError, match=r"key 'task\[0\]\.weights\.peek': expected 0 when threads is 1"):
        parse("[[task]]\n[task.weights]\npeek = 1\n")  # a peek loads a sibling thread's page: none here
    assert parse('[[task]]\nscript = ["dio:1:3", "dontneed:2"]\n').tasks[0].script == ("dio:1:3", "dontneed:2")
    for step, form in (("dio:0:1", "dio:A:P"), ("dontneed:0", "dontneed:A")):  # the error names the step's own form
        with pytest.raises(ScenarioError, match=rf"in {form}, got '{step}'"):
            parse(f'[[task]]\nscript = ["{step}"]\n')


def test_dio_complete_through_a_dropped_pin_is_a_refcount_failure() -> None:
    k = make_kernel()
    mref, m = two_equal_pages(k)
    page = gup.get_user_pages_fast(k, m, 1, True)
    memory.put_page(k, page, "test")
    mmm.sys_madvise(k, mref, 1, 2, mmm.MADV_DONTNEED)  # the last reference goes with the pte
    with pytest.raises(Failure) as e:
        gup.dio_complete(k, page, pattern_bytes(1, k.st.sz.page_size))
    assert e.value.cls == "use-after-free"


def _pinned_page_under_reclaim(k: K) -> tuple[int, int, int]:
    """A page of one program, pinned for an O_DIRECT read (get_user_pages_fast for write), and reclaim's
    isolation reference on it: (mm slot, the pinned page, the isolated page)."""
    _mref, m = new_program(k, 1)
    write(k, m, 1, 3)
    page = gup.get_user_pages_fast(k, m, 1, True)
    return m, page, memory.get_page_unless_zero(k, ref_slot(page))


def test_a_dio_completion_waits_for_reclaim_between_pageout_and_remove_mapping() -> None:
    """dio_bio_complete's set_page_dirty_lock takes the page lock, which shrink_page_list holds from trylock_page
    through pageout to __remove_mapping: a completion cannot land in between (here, where the single task of the
    test already holds that lock, the attempt is the self-deadlock the detectors name)."""
    k = make_kernel()
    m, page, iso = _pinned_page_under_reclaim(k)
    seen = at_point(k, "__remove_mapping:page_freeze_refs",
                    lambda: gup.dio_complete(k, page, pattern_bytes(5, k.st.sz.page_size)))
    with pytest.raises(Failure) as e:
        vmscan.shrink_page(k, iso, True)
    assert "__remove_mapping:page_freeze_refs" in seen
    assert "set_page_dirty_lock:lock_page" in e.value.message, e.value.message


def test_a_completion_that_landed_in_that_window_would_lose_the_dma_bytes() -> None:
    """Why the lock matters (0a9cc16; seen in free mode only, about 1 run in 400 of `threads`): a DMA and a put of
    the pin after pageout copied the frame, before page_freeze_refs, let __remove_mapping free the page; the swap
    slot holds the bytes from before the DMA, and the program reads them back."""
    k = make_kernel()
    m, page, iso = _pinned_page_under_reclaim(k)

    def unlocked_completion() -> None:
        k.st.frames[ref_slot(page), :] = pattern_bytes(5, k.st.sz.page_size)
        memory.put_page(k, page, "dio_bio_complete:put_page")

    at_point(k, "__remove_mapping:page_freeze_refs", unlocked_completion)
    assert vmscan.shrink_page(k, iso, True)  # freed
    assert read(k, m, 1) == content(k, 3)  # not the DMA's 5


def test_a_completion_after_reclaim_kept_the_page_is_read_back() -> None:
    """The order the lock gives: reclaim's page_freeze_refs sees the pin and keeps the page in the swap cache;
    the completion then lands in it, and the fault finds it there with the DMA's bytes."""
    k = make_kernel()
    m, page, iso = _pinned_page_under_reclaim(k)
    assert not vmscan.shrink_page(k, iso, True)
    memory.put_page(k, iso, "putback_lru_page")
    gup.dio_complete(k, page, pattern_bytes(5, k.st.sz.page_size))
    assert read(k, m, 1) == content(k, 5)
