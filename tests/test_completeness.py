"""`missed-merge`: once nothing has disturbed the mms for SETTLE_SCANS full scans, no two page frames of mergeable
areas hold the same bytes. Each defect is built in the test (a solo kernel, one task driving the model step by
step, or a monkeypatch inherited by a run's task processes); the faithful model stays quiet, in the solo kernel
and over the shipped scenarios, and `merge-settle` gives the oracle quiet windows in every run."""

from __future__ import annotations

import os

import pytest

from ksmstress.arena import ref_slot
from ksmstress.catalog import shipped_dir
from ksmstress.checks import disturbance
from ksmstress.checks.completeness import KERNEL_SCANS, SETTLE_SCANS
from ksmstress.failures import CLASSES, Failure
from ksmstress.mm import ksm, memory
from ksmstress.mm import mm as mmm
from ksmstress.mm.state import KSM_RUN_MERGE, KSM_RUN_UNMERGE, PG_ANON, PG_KSM
from ksmstress.runner import run_one
from ksmstress.scenario import load

from .defects import edited
from .harness import counters, make_kernel, new_program, pte_page, scan, write


def programs(k, patterns_a, patterns_b):
    """Two programs, page i of each filled with its list's pattern i."""
    aref, a = new_program(k, len(patterns_a))
    bref, b = new_program(k, len(patterns_b))
    for i, p in enumerate(patterns_a):
        write(k, a, 1 + i, p)
    for i, p in enumerate(patterns_b):
        write(k, b, 1 + i, p)
    return (aref, a), (bref, b)


def checks(k) -> int:
    return k.hooks.disturbance.checks


def test_the_classes_are_documented():
    for c in ("missed-merge", "stable-tree", "registration"):
        assert c in CLASSES


def test_the_margin_is_over_what_the_kernel_needs():
    assert SETTLE_SCANS > KERNEL_SCANS == 3


# -- the faithful model ---------------------------------------------------------------------------------------
def test_merged_pages_and_forked_ones_leave_it_quiet():
    """Equal pages across and within mms, and a fork whose copies only the third scan merges: no report, and the
    oracle did look."""
    k = make_kernel()
    (aref, a), (_bref, b) = programs(k, [1, 2, 3, 1], [2, 3, 4])
    cref = mmm.dup_mmap(k, aref)
    write(k, ref_slot(cref), 3, 4)
    scan(k, SETTLE_SCANS + 4)
    assert checks(k) > 0
    assert counters(k)["shared"] == 4  # contents 1, 2, 3, 4: one KSM page each


def test_the_oracle_waits_for_settle_scans_after_the_last_disturbance():
    k = make_kernel()
    programs(k, [1, 2], [1, 2])
    scan(k, SETTLE_SCANS)
    assert checks(k) == 0  # the writes happened in the scan before the first: not yet settled
    scan(k, 1)
    assert checks(k) == 1
    _cref, c = new_program(k, 1)
    write(k, c, 1, 9)
    scan(k, SETTLE_SCANS)
    assert checks(k) == 1
    scan(k, 1)
    assert checks(k) == 2


def test_a_reference_held_by_another_task_is_no_missed_merge():
    """write_protect_page refuses a page someone else holds (`page_mapcount + 1 != page_count`): as long as the
    reference is held nothing is checked, and once it is dropped the pages merge before the oracle looks."""
    k = make_kernel()
    (_aref, a), (_bref, b) = programs(k, [5], [5])
    held = pte_page(k, a, 1)
    memory.get_page(k, held, "test:isolate")  # reclaim's isolation, say
    scan(k, SETTLE_SCANS + 3)
    assert checks(k) == 0 and counters(k)["shared"] == 0
    memory.put_page(k, held, "test:putback")
    scan(k, SETTLE_SCANS + 1)
    assert checks(k) == 1 and counters(k)["shared"] == 1


def test_run_2_restarts_the_count():
    k = make_kernel()
    programs(k, [5], [5])
    scan(k, SETTLE_SCANS + 1)
    assert checks(k) == 1 and counters(k)["shared"] == 1
    ksm.run_store(k, KSM_RUN_UNMERGE)
    ksm.run_store(k, KSM_RUN_MERGE)
    scan(k, SETTLE_SCANS)
    assert checks(k) == 1
    scan(k, 1)
    assert checks(k) == 2 and counters(k)["shared"] == 1


def test_an_orphan_ksm_page_is_exempt_as_2_6_33_cannot_merge_it(monkeypatch):
    """try_to_merge_one_page made a forked page KSM, its partner's merge failed and break_cow broke only the
    parent's pte: the child maps a KSM page no stable node owns. 2.6.33's page_address_in_vma (built here:
    page_anon_vma() is NULL for a KSM page) returns -EFAULT for it, so it never merges: no report."""
    orig = memory.page_address_in_vma

    def page_address_in_vma_2_6_33(k, pref, vref, site):
        if k.pg.flags[k.pg.deref(pref, site)] & PG_KSM:
            return -1
        return orig(k, pref, vref, site)

    monkeypatch.setattr(memory, "page_address_in_vma", page_address_in_vma_2_6_33)
    k = make_kernel()
    aref, a = new_program(k, 1)
    write(k, a, 1, 5)
    c = ref_slot(mmm.dup_mmap(k, aref))
    page = pte_page(k, c, 1)
    k.pg.flags[ref_slot(page)] = PG_ANON | PG_KSM  # set_page_stable_node(page, NULL)
    k.pg.mapping[ref_slot(page)] = 0
    write(k, a, 1, 5)  # break_cow: the parent's pte gets its own copy
    _bref, b = new_program(k, 1)
    write(k, b, 1, 5)
    scan(k, SETTLE_SCANS + 3)
    assert checks(k) > 0
    assert pte_page(k, c, 1) == page  # still the orphan, unmerged


# -- defects --------------------------------------------------------------------------------------------------
def test_a_stable_tree_insert_that_refuses_is_a_missed_merge(monkeypatch):
    monkeypatch.setattr(ksm, "stable_tree_insert", lambda k, kpref: 0)
    k = make_kernel()
    (_aref, a), (_bref, b) = programs(k, [5], [5])
    with pytest.raises(Failure) as e:
        scan(k, SETTLE_SCANS + 3)
    f = e.value
    assert f.cls == "missed-merge"
    assert f"mm[{a}] address 1: rmap_item[" in f.message and f"mm[{b}] address 1: rmap_item[" in f.message
    assert "checksum settled" in f.message and "user_write" in f.message  # the items, the last disturbance
    assert f.details["settled_scans"] == SETTLE_SCANS and f.details["last_disturbance"]["site"] == "user_write"
    assert {p["page"] for p in f.details["pages"]} == {ref_slot(pte_page(k, a, 1)), ref_slot(pte_page(k, b, 1))}


def test_a_stable_tree_search_going_the_wrong_way_is_a_missed_merge(monkeypatch):
    """stable_tree_search descends right on a smaller page (the inserts still go the right way): a page equal to a
    stable page off the search's path is never found, and stable_tree_insert refuses its merge with a twin."""
    edited(monkeypatch, ksm.stable_tree_search, "node = tree.child(node, ret < 0)", "node = tree.child(node, ret >= 0)")
    k = make_kernel()
    programs(k, [1, 2], [1, 2])
    scan(k, 3)
    assert counters(k)["shared"] == 2  # two stable nodes: 1 at the root, 2 to its right
    _cref, c = new_program(k, 2)
    write(k, c, 1, 2)
    with pytest.raises(Failure) as e:
        scan(k, SETTLE_SCANS + 3)
    assert e.value.cls == "missed-merge" and "KSM page[" in e.value.message and f"mm[{c}] address 1" in e.value.message


def test_an_unstable_tree_that_never_sees_equal_pages_is_a_missed_merge(monkeypatch):
    """unstable_tree_search_insert with its equality test inverted: twins pass each other by."""
    edited(monkeypatch, ksm.unstable_tree_search_insert, "if ret == 0:\n", "if ret != 0:\n")
    k = make_kernel()
    programs(k, [5], [5])
    with pytest.raises(Failure) as e:
        scan(k, SETTLE_SCANS + 3)
    assert e.value.cls == "missed-merge"


def test_write_protect_page_with_its_count_test_inverted_is_a_missed_merge(monkeypatch):
    edited(
        monkeypatch,
        ksm._gup_count_ok,
        "memory.page_mapcount(k, s) + 1 + swapped == memory.page_count(k, s)",
        "memory.page_mapcount(k, s) + 1 + swapped != memory.page_count(k, s)",
    )
    k = make_kernel()
    programs(k, [5, 6], [6, 5])
    with pytest.raises(Failure) as e:
        scan(k, SETTLE_SCANS + 3)
    assert e.value.cls == "missed-merge"


# -- the shipped scenarios ------------------------------------------------------------------------------------
def _count_checks(monkeypatch, path):
    """Every completeness check of the run's ksmd appends a line to `path` (the task processes inherit this)."""
    orig = disturbance.Disturbance.count_check

    def count_check(self):
        orig(self)
        with open(path, "a") as f:
            f.write("check\n")

    monkeypatch.setattr(disturbance.Disturbance, "count_check", count_check)


@pytest.mark.parametrize("granularity", ["shared", "locks"])
@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_merge_settle_gives_the_oracle_quiet_windows_in_every_run(monkeypatch, tmp_path, granularity, strategy):
    sc = load(shipped_dir() / "merge-settle.toml")
    for seed in range(3):
        path = tmp_path / f"checks-{seed}"
        _count_checks(monkeypatch, path)
        r = run_one(sc, seed, strategy, granularity=granularity)
        assert r.verdict == "clean", r.failure
        assert os.path.exists(path) and open(path).read().count("check") >= 1, f"seed {seed}: no quiet window"


@pytest.mark.parametrize("granularity", ["shared", "locks"])
def test_merge_settle_catches_a_stable_tree_insert_that_refuses(monkeypatch, granularity):
    monkeypatch.setattr(ksm, "stable_tree_insert", lambda k, kpref: 0)
    sc = load(shipped_dir() / "merge-settle.toml")
    for seed in range(3):
        r = run_one(sc, seed, "random", granularity=granularity)
        assert r.failure and r.failure["class"] == "missed-merge", r.failure


@pytest.mark.parametrize("name", ["merge-settle", "mixed", "seed-fork-race", "refcount-width"])
def test_shipped_scenarios_are_clean_at_locks_granularity(name):
    sc = load(shipped_dir() / f"{name}.toml")
    for seed in range(4):
        r = run_one(sc, seed, "random", granularity="locks")
        assert r.verdict == "clean", r.failure
