"""mremap and vm_pgoff: anon pages keep page->index when their vma moves, the rmap walks find them through
vm_pgoff, move_vma unmerges KSM pages first (and the traversal detector catches a KSM page moved without that),
the `mremap` program op and script step, and the kernel oracle's `mremap` action."""

from __future__ import annotations

from pathlib import Path

import pytest

from ksmstress import runner, scenario
from ksmstress.arena import ref_slot
from ksmstress.catalog import shipped_dir
from ksmstress.failures import Failure
from ksmstress.kernel.compare import compare_recorded, render
from ksmstress.kernel.generate import generate, generate_text
from ksmstress.kernel.reader import parse as parse_workload
from ksmstress.kernel.workload import WorkloadError
from ksmstress.mm import memory, mremap, rmap, vmscan
from ksmstress.mm import mm as mmm
from ksmstress.mm.state import PG_KSM, PTE_NONE, PTE_PRESENT

from .clitools import cli
from .harness import (
    content,
    counters,
    holding,
    make_kernel,
    new_program,
    page_locked,
    pte,
    pte_page,
    read,
    scan,
    vma_at,
    write,
)
from .test_cli import assert_usage_error

MOVE = mremap.MREMAP_MAYMOVE | mremap.MREMAP_FIXED


def vma_range(k, m: int, addr: int) -> tuple[int, int, int]:
    v = ref_slot(vma_at(k, m, addr))
    return int(k.vm.start[v]), int(k.vm.end[v]), int(k.vm.pgoff[v])


def referenced(k, page: int) -> int:
    """page_referenced under the page lock, as reclaim calls it: the mappings its rmap walk found."""
    with page_locked(k, page):
        return rmap.page_referenced(k, page)


# -- vm_pgoff ---------------------------------------------------------------------------------------------------
def test_vm_pgoff_follows_mmap_split_and_fork_and_index_is_the_address_until_a_move():
    k = make_kernel()
    aref, a = new_program(k, 6, start=2)
    assert vma_range(k, a, 2) == (2, 8, 2)  # vm_pgoff = vm_start >> PAGE_SHIFT
    for addr in range(2, 8):
        write(k, a, addr, addr)
        assert k.pg.index[ref_slot(pte_page(k, a, addr))] == addr
    assert mmm.sys_munmap(k, aref, 4, 5)  # split_vma: the upper half's vm_pgoff moves with its vm_start
    assert vma_range(k, a, 2) == (2, 4, 2) and vma_range(k, a, 5) == (5, 8, 5)
    cref = mmm.dup_mmap(k, aref)
    assert vma_range(k, ref_slot(cref), 5) == (5, 8, 5)
    mmm.mmput(k, cref)
    mmm.mmput(k, aref)


def test_a_moved_page_keeps_its_index_and_the_anon_walks_find_it_through_vm_pgoff():
    k = make_kernel()
    aref, a = new_program(k, 4, mergeable=False)
    for addr in range(1, 5):
        write(k, a, addr, 10 + addr)
    page = pte_page(k, a, 2)
    assert mremap.sys_mremap(k, aref, 2, 2, 2, MOVE, 9) == 9
    assert pte(k, a, 2)[0] == PTE_NONE and pte(k, a, 3)[0] == PTE_NONE and pte_page(k, a, 9) == page
    assert vma_range(k, a, 9) == (9, 11, 2)  # new_pgoff = vm_pgoff + (old_addr - vm_start)
    assert k.pg.index[ref_slot(page)] == 2
    v = vma_at(k, a, 9)
    with holding(k, k.av_lock(ref_slot(k.vm.anon_vma[ref_slot(v)]))):
        assert rmap._vma_address(k, ref_slot(page), v, "test") == 9
        assert memory.page_address_in_vma(k, page, v, "test") == 9
    assert referenced(k, page) == 1  # the walk met the pte at 9 (the traversal detector holds it to that)
    for addr, p in ((1, 11), (9, 12), (10, 13), (4, 14)):  # the data moved with the ptes
        assert read(k, a, addr) == content(k, p)
    # a fork after the move: the child's vma copies vm_pgoff, the walk finds both ptes
    cref = mmm.dup_mmap(k, aref)
    assert referenced(k, page) == 2
    mmm.mmput(k, cref)
    mmm.mmput(k, aref)


def test_shrink_grow_in_place_and_move_where_the_kernel_likes():
    k = make_kernel()
    aref, a = new_program(k, 4, mergeable=False)
    for addr in range(1, 5):
        write(k, a, addr, addr)
    assert mremap.sys_mremap(k, aref, 1, 4, 2, 0) == 1  # shrink: the tail is unmapped
    assert vma_range(k, a, 1) == (1, 3, 1) and pte(k, a, 3)[0] == PTE_NONE
    assert mremap.sys_mremap(k, aref, 1, 2, 5, 0) == 1  # grow in place: vma_adjust, vm_pgoff unchanged
    assert vma_range(k, a, 1) == (1, 6, 1)
    assert mmm.sys_mmap(k, aref, 7, 2, 0)
    assert mremap.sys_mremap(k, aref, 1, 5, 7, 0) == mremap.ENOMEM  # no room and no MREMAP_MAYMOVE
    new = mremap.sys_mremap(k, aref, 1, 5, 7, mremap.MREMAP_MAYMOVE)  # the lowest free range: after [7, 9)
    assert new == 9 and vma_range(k, a, 9) == (9, 16, 1) and pte(k, a, 10)[0] == PTE_PRESENT
    assert mremap.sys_mremap(k, aref, 7, 3, 4, 0) == mremap.EFAULT  # [7, 10) spans two vmas
    assert mremap.sys_mremap(k, aref, 9, 2, 2, MOVE, 10) == mremap.EINVAL  # overlapping ranges
    assert mremap.sys_mremap(k, aref, 9, 2, 2, mremap.MREMAP_FIXED, 1) == mremap.EINVAL  # FIXED needs MAYMOVE
    mmm.mmput(k, aref)


# -- KSM --------------------------------------------------------------------------------------------------------
def test_move_vma_unmerges_then_ksmd_merges_again_at_the_new_address():
    k = make_kernel()
    aref, a = new_program(k, 2)
    bref, b = new_program(k, 2)
    for m in (a, b):
        write(k, m, 1, 7)
        write(k, m, 2, 8)
    scan(k, 3)
    assert counters(k)["sharing"] == 2
    kpage = pte_page(k, a, 1)
    assert k.pg.flags[ref_slot(kpage)] & PG_KSM
    assert mremap.sys_mremap(k, aref, 1, 2, 2, MOVE, 6) == 6
    moved = pte_page(k, a, 6)
    assert moved != kpage and not k.pg.flags[ref_slot(moved)] & PG_KSM  # broken before the move
    assert k.vm.flags[ref_slot(vma_at(k, a, 6))] & 1  # the moved vma stays VM_MERGEABLE
    scan(k, 4)
    assert counters(k)["sharing"] == 2 and k.pg.flags[ref_slot(pte_page(k, a, 6))] & PG_KSM
    assert read(k, a, 6) == content(k, 7) and read(k, a, 7) == content(k, 8)
    mmm.mmput(k, aref)
    mmm.mmput(k, bref)


def test_a_ksm_page_moved_without_the_unmerge_is_a_traversal_miss():
    """The step move_vma must not skip: a KSM page moved as it is sits at an address no rmap_item records, so
    try_to_unmap_ksm cannot reach it; the traversal detector (duty from the page tables) names the pte."""
    k = make_kernel()
    aref, a = new_program(k, 1)
    bref, b = new_program(k, 1)
    write(k, a, 1, 5)
    write(k, b, 1, 5)
    scan(k, 3)
    kpage = pte_page(k, a, 1)
    k.locks.down_write(k.mmap_sem(a), "test:mremap")  # move_vma without its ksm_madvise
    vref = vma_at(k, a, 1)
    nref = mremap.copy_vma(k, a, vref, 8, 1, 1)
    mremap.move_page_tables(k, a, vref, 1, nref, 8, 1)
    assert mmm.do_munmap(k, aref, 1, 2)
    k.locks.up_write(k.mmap_sem(a), "test:mremap")
    assert pte_page(k, a, 8) == kpage
    memory.get_page(k, kpage, "isolate_lru_page")  # reclaim of the KSM page: page_referenced, then try_to_unmap
    with pytest.raises(Failure) as e:
        vmscan.shrink_page(k, kpage, swap=True)
    assert e.value.cls == "traversal", e.value.message
    assert any((miss["mm"], miss["address"]) == (a, 8) for miss in e.value.details["missed"])


def test_a_page_moved_by_the_parent_while_a_child_shares_it_is_in_the_move_before_scan_window():
    """Fork, then the parent moves the shared (not yet KSM) page; ksmd merges it through the child's rmap_item:
    pass 1 of the KSM walks looks only at the child's address, so the parent's moved pte is unreachable until
    ksmd scans it there (a window, quiet); after that scan the walk must reach it."""
    k = make_kernel()
    aref, a = new_program(k, 1)
    write(k, a, 1, 5)
    cref = mmm.dup_mmap(k, aref)
    c = ref_slot(cref)
    bref, b = new_program(k, 1)
    write(k, b, 1, 5)
    assert mremap.sys_mremap(k, aref, 1, 1, 1, MOVE, 9) == 9
    shared = pte_page(k, a, 9)
    assert pte_page(k, c, 1) == shared
    scan(k, 3)
    page = pte_page(k, a, 9)
    assert k.pg.flags[ref_slot(page)] & PG_KSM
    for _ in range(2):
        with page_locked(k, page):
            rmap.page_referenced(k, page)  # quiet inside the window, and quiet once a's own item reaches it
        scan(k, 1)
    for ref in (aref, cref, bref):
        mmm.mmput(k, ref)


# -- the program op and script step ---------------------------------------------------------------------------
def test_the_mremap_merge_scenario_is_clean_over_a_few_seeds():
    sc = scenario.load(shipped_dir() / "mremap-merge.toml")
    for seed, strategy in ((0, "random"), (1, "random"), (0, "pct")):
        r = runner.run_one(sc, seed, strategy=strategy)
        assert r.verdict == "clean", (seed, strategy, r.failure)


@pytest.mark.parametrize(
    ("step", "needle"),
    [
        ("mremap:1:2", "bad step"),
        ("mremap:1:2:3:4:5", "bad step"),
        ("mremap:0:1:1", "an address and lengths in [1, arena.vpages - 1"),
        ("mremap:1:1:1:24", "a target in [1, arena.vpages - NEW"),
    ],
)
def test_a_malformed_mremap_step_is_one_line_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], step: str, needle: str
) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(f'name = "bad"\n[arena]\nvpages = 24\n[[task]]\nscript = ["fill", "{step}"]\n')
    code, out, err = cli(capsys, "run", str(p))
    assert_usage_error(code, out, err, "bad.toml", "task[0].script", needle)


def test_threads_may_not_mremap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "t.toml"
    p.write_text('name = "t"\n[[task]]\nthreads = 2\n[task.weights]\nwrite = 1\nmremap = 1\n')
    code, out, err = cli(capsys, "run", str(p))
    assert_usage_error(code, out, err, "t.toml", "task[0].weights.mremap", "expected 0 when threads > 1")


# -- the kernel oracle's action -----------------------------------------------------------------------------------
HEAD = 'name = "w"\n[[process]]\nname = "a"\nregions = [8]\n'


def test_the_mremap_workload_matches_its_recorded_kernel_figures() -> None:
    w = parse_workload(HEAD + '[[phase]]\ndo = ["write a 5", "mremap a.0[0:2] 5"]\n'
                       "expect = { shared = 1, sharing = 5, unshared = 0, merging = { a = 6 } }\n", "w.toml")
    (_w, act) = w.phases[0].actions
    assert (act.kind, act.spans[0].start, act.spans[0].end, act.dest) == ("mremap", 0, 2, 5)
    rep = compare_recorded(w)
    assert rep.verdict == "agree", render(rep)


@pytest.mark.parametrize(
    ("do", "needle"),
    [
        ('"mremap a.0[0:2]"', "expected an action"),
        ('"mremap a.0[0:2] 7"', "expected a destination page D in [0, 6] of a.0"),
        ('"mremap a.0[0:2] 1"', "expected a destination not overlapping [0:2]"),
        ('"munmap a.0[1:2]", "mremap a.0[0:3] 5"', "expected mapped pages"),
        ('"unmergeable a.0[0:2]", "mremap a.0[1:3] 5"', "expected pages inside one vma, got a vma edge at page 2"),
        ('"thread a t", "mremap t.0[0:2] 5"', "with P a process"),
    ],
)
def test_a_bad_mremap_action_is_refused(do: str, needle: str) -> None:
    with pytest.raises(WorkloadError) as e:
        parse_workload(HEAD + f"[[phase]]\ndo = [{do}]\n", "w.toml")
    assert needle in str(e.value) and "w.toml: key 'phase[0].do[" in str(e.value)


def test_generated_workloads_include_mremap_and_stay_valid() -> None:
    texts = [generate_text(s) for s in range(60)]
    assert sum(t.count('"mremap ') for t in texts) >= 10
    for s in range(60):
        generate(s)  # parses: every drawn mremap is inside one vma, to a non-overlapping place


def test_a_vma_grown_over_its_neighbour_is_a_validate_mm_bug() -> None:
    """validate_mm after vma_adjust: a vma grown in place over the next one (mremap's vma_expandable with its
    compare inverted, a campaign's survivor) leaves two vmas mapping one address; the vma list oracle says so at
    once, whichever path changed the list. Growing into free room is quiet."""
    k = make_kernel()
    aref, a = new_program(k, 2)  # [1, 3)
    assert mmm.sys_mmap(k, aref, 5, 2, 0)  # [5, 7)
    k.locks.down_write(k.mmap_sem(a), "test")
    first = mmm.find_vma(k, a, 1)
    mremap.vma_adjust_end(k, a, first, 5)  # into the free room [3, 5): fine
    with pytest.raises(Failure) as e:
        mremap.vma_adjust_end(k, a, first, 6)  # over [5, 7)
    k.locks.up_write(k.mmap_sem(a), "test")
    assert e.value.cls == "bug-on" and "validate_mm of mm" in e.value.message and "overlapping" in e.value.message


def test_a_shrinking_mremap_to_the_same_length_makes_no_empty_vma() -> None:
    """do_mremap's shrink path unmaps [addr + new_len, addr + old_len), empty when the lengths are equal: 2.6.33's
    do_munmap refuses a zero length (-EINVAL) before it splits anything, and mremap ignores that error. The model
    split there and left a vma [a, a) (found by validate_mm in mixed, seed 0)."""
    k = make_kernel()
    aref, a = new_program(k, 4)  # [1, 5)
    before = [(int(k.vm.start[ref_slot(v)]), int(k.vm.end[ref_slot(v)])) for v in mmm.vma_walk(k, a)]
    assert mremap.sys_mremap(k, aref, 2, 2, 2, 0, 0) == 2
    after = [(int(k.vm.start[ref_slot(v)]), int(k.vm.end[ref_slot(v)])) for v in mmm.vma_walk(k, a)]
    assert after == before == [(1, 5)]
