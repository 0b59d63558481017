"""The two later-kernel differences no sysfs setting switches off, on the model (as 2.6.33 and with the later
behaviour on) and on the running kernel (marked `kernel`), and how the oracle tells them from a fault: a workload
agrees as the later kernel only when the model with that kernel's behaviour predicts every figure.

The kernel's figures asserted here were read on Linux 6.18; the model-only tests assert the same numbers, so a
later behaviour that stops predicting the kernel fails without a kernel at hand.
"""

from __future__ import annotations

from typing import Any

import pytest

from ksmstress.kernel import later
from ksmstress.kernel.compare import Report, as_later, kernel_rows, render
from ksmstress.kernel.model import Settled, run_model
from ksmstress.kernel.reader import parse
from ksmstress.kernel.workload import Figures

from .test_kernel import on_kernel

REMLOCK = """
name = "remlock"
[[process]]
name = "a"
regions = [1]
[[phase]]
do = ["write a 3", "mlock a", "fork a c"]
[[phase]]
do = ["mlock a"]
"""
REMLOCK_2633 = [(0, 0, 1), (0, 0, 1)]
REMLOCK_LATER = [(0, 0, 1), (1, 1, 0)]  # 6.18's figures

RESCUE = """
name = "rescue"
[[process]]
name = "a"
regions = [3]
[[phase]]
do = ["write a 1,1,2"]
[[phase]]
do = ["dontneed a.0[1:2]", "pageout a.0[0:1]"]
[[phase]]
do = ["write a.0[2:3] 1"]
[[phase]]
do = ["read a"]
"""
RESCUE_2633 = [(1, 1, 1), (0, 0, 1), (1, 0, 0), (1, 1, 0)]
RESCUE_LATER = [(1, 1, 1), (0, 0, 1), (0, 0, 1), (1, 1, 0)]  # 6.18's figures


def counts(rows: list[Any]) -> list[tuple[int, int, int]]:
    return [(f.shared, f.sharing, f.unshared) for f in rows]


def test_mlock_of_a_locked_range_faults_nothing_on_the_model() -> None:
    """2.6.33's sys_mlock is do_mlock alone: mlock_fixup leaves a vma whose flags do not change, so a second mlock
    faults nothing and the page a fork shares stays one anon page, which ksmd never merges with itself."""
    out, _ = run_model(parse(REMLOCK, "remlock.toml"))
    assert counts([r.figures for r in out]) == REMLOCK_2633


def test_the_model_with_mlock_populate_predicts_the_later_kernel() -> None:
    """With 2.6.38's __mm_populate the second mlock write-faults the page shared with the child: COW broken,
    the two copies merge, as on 6.18."""
    out, _ = run_model(parse(REMLOCK, "remlock.toml"), later=frozenset({"mlock_populate"}))
    assert counts([r.figures for r in out]) == REMLOCK_LATER


@pytest.mark.kernel
def test_mlock_of_a_locked_range_breaks_cow_on_the_running_kernel() -> None:
    """The later kernel (2.6.38's do_mlock_pages, now __mm_populate) populates every mlocked range with write
    faults, also one already locked: COW of the page shared with the child is broken and the two copies merge.
    The oracle agrees as the later kernel and keeps 2.6.33's figures beside it."""
    (rep,) = on_kernel([parse(REMLOCK, "remlock.toml")])
    assert counts([r.other for r in rep.rows]) == REMLOCK_LATER, render(rep)
    assert (rep.verdict, rep.later) == ("agree", ("mlock_populate",)), render(rep)
    assert rep.as_2633 and "shared 0 != 1" in rep.as_2633[0]


def test_a_merge_finds_a_ksm_page_in_the_swap_cache_on_the_model() -> None:
    """2.6.33's stable_tree_search merges into any stable node whose page get_ksm_page still finds, also a KSM
    page in the swap cache that nothing maps any more; the fault that reads it back then maps the same page."""
    out, _ = run_model(parse(RESCUE, "rescue.toml"))
    assert counts([r.figures for r in out]) == RESCUE_2633


def test_the_model_with_page_sharing_candidate_predicts_the_later_kernel() -> None:
    """With 4.13's is_page_sharing_candidate the page written to match the swapped KSM page nothing maps goes to
    the unstable tree; reading the swapped page back maps it, and the two merge into it, as on 6.18."""
    out, _ = run_model(parse(RESCUE, "rescue.toml"), later=frozenset({"page_sharing_candidate"}))
    assert counts([r.figures for r in out]) == RESCUE_LATER


@pytest.mark.kernel
def test_a_merge_ignores_a_ksm_page_nothing_maps_on_the_running_kernel() -> None:
    """Since 4.13 (stable_node chains) is_page_sharing_candidate wants a stable node with at least one rmap_item:
    the page written to match the swapped KSM page goes to the unstable tree instead. The shipped `swap`
    workload stays off it; the oracle agrees as the later kernel."""
    (rep,) = on_kernel([parse(RESCUE, "rescue.toml")])
    assert counts([r.other for r in rep.rows]) == RESCUE_LATER, render(rep)
    assert (rep.verdict, rep.later) == ("agree", ("page_sharing_candidate",)), render(rep)


def kernel_said(figures: list[tuple[int, int, int]]) -> list[Settled]:
    """Kernel-side results with these counts (no per-process figures: none are compared then)."""
    return [Settled(Figures(*f, {}), 4, 0.0) for f in figures]


def as_2633(text: str, name: str, kernel: list[tuple[int, int, int]]) -> Report:
    """A report as compare_kernel builds it before it tries the later behaviours: the 2.6.33 model's rows."""
    w = parse(text, f"{name}.toml")
    out, _ = run_model(w)
    return Report(w, "kernel", rows=kernel_rows(w, out, kernel_said(kernel)))


@pytest.mark.parametrize(("text", "name", "behaviour"), [(REMLOCK, "remlock", "mlock_populate"),
                                                         (RESCUE, "rescue", "page_sharing_candidate")])
def test_a_difference_is_put_on_a_later_behaviour_only_when_the_kernel_has_it(text: str, name: str,
                                                                              behaviour: str) -> None:
    """The later figures agree as 6.18 (naming only the behaviour needed); a kernel older than the behaviour, or
    figures no behaviour predicts, leave the mismatch standing."""
    want = {"remlock": REMLOCK_LATER, "rescue": RESCUE_LATER}[name]
    rep = as_2633(text, name, want)
    assert rep.verdict == "mismatch"
    as_later(rep, kernel_said(want), 4, "6.18.44-fc-v1045")
    assert (rep.verdict, rep.later) == ("agree", (behaviour,)), render(rep)
    assert "as the later kernel" in render(rep)

    old = {"mlock_populate": "2.6.37", "page_sharing_candidate": "4.12.14"}[behaviour]
    rep = as_2633(text, name, want)
    as_later(rep, kernel_said(want), 4, old)
    assert (rep.verdict, rep.later) == ("mismatch", ())

    wrong = [(9, 9, 9)] * len(want)
    rep = as_2633(text, name, wrong)
    as_later(rep, kernel_said(wrong), 4, "6.18")
    assert (rep.verdict, rep.later) == ("mismatch", ())


def test_the_behaviours_a_release_has() -> None:
    assert later.version("6.18.44-fc-v1045") == (6, 18, 44)
    assert later.version("weird") == (0,)
    assert later.applicable("2.6.33") == []
    assert later.applicable("4.12.14") == ["mlock_populate"]
    assert later.applicable("4.13") == ["mlock_populate", "page_sharing_candidate"]
    assert later.candidates("6.1") == [frozenset({"mlock_populate"}), frozenset({"page_sharing_candidate"}),
                                       frozenset({"mlock_populate", "page_sharing_candidate"})]
