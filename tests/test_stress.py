"""`tox -e stress`: 1,000 runs of every shipped scenario per session, spent across random, PCT and coverage-guided
search as the measured detection figures say (ksmstress/bench/split.py: STRESS_SPLIT, the figures it came from and
the command that measures them), plus the checks that keep that table honest."""

from __future__ import annotations

import os
from typing import Any

import pytest

from ksmstress.bench import split as splitmod
from ksmstress.catalog import shipped_dir

SHIPPED = sorted(f[:-5] for f in os.listdir(shipped_dir()) if f.endswith(".toml"))
ITEMS = [(name, s, k, n) for name in SHIPPED for s, k, n in splitmod.items(splitmod.split_for(name))]


@pytest.mark.stress
@pytest.mark.parametrize(("name", "strategy", "chunk", "runs"), ITEMS,
                         ids=[f"{n}-{s}-{k}" for n, s, k, _r in ITEMS])
def test_soak_shipped_scenarios_clean(ksm_run, name: str, strategy: str, chunk: int, runs: int):
    """1,000 runs per shipped scenario and session with no variant: no failure of any class. random and pct items
    are `runs` seeds each; a coverage item is one search of `runs` runs. Seeds come from the session's --ksm-seed
    (new ones every session, as a soak should; the header says how to rerun them); items of at most 250 runs keep
    xdist's workers evenly loaded."""
    ksm_run(name, runs=runs, strategy=strategy).assert_clean()


def test_every_shipped_scenario_gets_1000_runs_with_every_per_seed_strategy():
    for name in SHIPPED:
        sp = splitmod.split_for(name)
        assert sum(sp.values()) == splitmod.TOTAL, (name, sp)
        assert all(sp.get(s, 0) >= splitmod.FLOOR * splitmod.TOTAL for s in splitmod.PER_SEED), (name, sp)
        assert set(sp) <= set(splitmod.STRATEGIES), (name, sp)
    assert sum(n for name in SHIPPED for _s, _k, n in splitmod.items(splitmod.split_for(name))) == \
        splitmod.TOTAL * len(SHIPPED)


def _row(variant: str, scenario: str, strategy: str, detections: int, runs: int) -> dict[str, Any]:
    return {"variant": variant, "scenario": scenario, "strategy": strategy, "detections": detections, "runs": runs}


def test_split_follows_detection_rates_and_adds_coverage_only_where_it_pays():
    rows = [
        # a: random finds it three times as often as pct, coverage never
        _row("a", "s1", "random", 30, 100), _row("a", "s1", "pct", 10, 100), _row("a", "s1", "coverage", 0, 100),
        # b: only coverage and pct find it, coverage most often
        _row("b", "s2", "random", 0, 100), _row("b", "s2", "pct", 10, 100), _row("b", "s2", "coverage", 30, 100),
        # c: no strategy finds it
        _row("c", "s3", "random", 0, 100), _row("c", "s3", "pct", 0, 100), _row("c", "s3", "coverage", 0, 100),
    ]
    assert splitmod.split_of(rows, "s1") == {"random": 750, "pct": 250}
    s2 = splitmod.split_of(rows, "s2")
    assert s2["random"] == 100 and s2["coverage"] > s2["pct"] >= 100 and sum(s2.values()) == 1000
    assert splitmod.split_of(rows, "s3") == {"random": 500, "pct": 500}  # nothing to go by: even, no coverage
    pooled = splitmod.split_of(rows, "no-such-scenario")  # the mean over every variant
    assert sum(pooled.values()) == 1000 and "coverage" in pooled


def test_items_are_at_most_250_runs():
    assert splitmod.items({"random": 600, "coverage": 100}) == [
        ("random", 0, 250), ("random", 1, 250), ("random", 2, 100), ("coverage", 0, 100)]


def test_ksm_run_runs_a_coverage_search(ksm_run, ksm_seed: int):
    """The stress soak's coverage items: `ksm_run(strategy="coverage")` is one search of `runs` runs, clean on the
    faithful model, and its rerun line is the `ksmstress run` command of the same search."""
    v = ksm_run("focus-exit-scan", runs=3, strategy="coverage")
    v.assert_clean()
    assert v.runs == 3 and v.strategy == "coverage"
    assert "--strategy coverage" in v.replay and f"--seed {ksm_seed}" in v.replay and "--runs 3" in v.replay


def test_ksm_run_coverage_search_catches_a_variant(ksm_run):
    """A variant a coverage search finds on its first runs (bench: inverted-lock-order in seed-fork-race, every
    search at its first run), with the artifact's replay command."""
    v = ksm_run("seed-fork-race", bugs=["inverted-lock-order"], runs=30, strategy="coverage")
    v.assert_failure("lockdep")
    assert v.replay.startswith("ksmstress replay ") and v.artifact is not None


def test_the_stress_split_is_the_one_the_measured_figures_give():
    """STRESS_SPLIT is computed from MEASURED by the documented rule, never edited by hand."""
    from pathlib import Path

    from ksmstress.bugs import VARIANTS

    rows = [_row(v, Path(VARIANTS[v].scenario).stem, s, d, n)
            for v, cells in splitmod.MEASURED.items() for s, (d, n) in cells.items()]
    for name, split in splitmod.STRESS_SPLIT.items():
        assert splitmod.split_of(rows, "" if name == "*" else name) == split, name
