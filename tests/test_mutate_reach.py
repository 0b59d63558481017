"""`ksmstress mutate`'s reach: which scenarios run which model function (real faithful runs, every task
profiled across fork), and how a probe then shares a mutant's runs."""

from __future__ import annotations

import itertools

from ksmstress.mutate.generate import generate
from ksmstress.mutate.probe import OTHERS_EVERY, per_seed_steps
from ksmstress.mutate.reach import model_functions, reach_map
from ksmstress.mutate.scratch import package_dir
from ksmstress.scenario import load, resolve


def test_every_mutant_names_a_function_the_reach_map_can_see():
    names = set(model_functions().values())
    assert {f"{m.file}:{m.function}" for m in generate(package_dir())} <= names


def test_reach_sees_the_functions_each_scenario_runs_in_its_tasks():
    """dio_complete runs only in a program task (a forked process): seen for focus-dio-reclaim, never for
    focus-migrate-munmap, which has no O_DIRECT; ksmd's scan runs in focus-dio-merge, and nothing of KSM runs where
    ksmd is off."""
    dio, munmap, merge = (str(p) for p in resolve(["focus-dio-reclaim", "focus-migrate-munmap", "focus-dio-merge"]))
    seen = reach_map([dio, munmap, merge], seeds=1)
    assert [p for p, _rate in seen["mm/gup.py:dio_complete"]] == [dio, merge]
    assert all(rate > 0 for _p, rate in seen["mm/gup.py:dio_complete"])
    assert [p for p, _rate in seen["mm/ksm.py:ksm_do_scan"]] == [merge]  # ksmd is off in the other two
    assert munmap in [p for p, _rate in seen["mm/migrate.py:unmap_and_move"]]


def _order(focus: dict[str, float] | None, n: int) -> list[tuple[str, str, int]]:
    scs = [load(str(p)) for p in resolve(["focus-walk-fork", "focus-exit-scan", "focus-fault-merge"])]
    steps = per_seed_steps(scs, ["random", "pct"], 5, lambda: 1.0, focus)
    return [(row["scenario"], row["strategy"], row["seed"]) for row, _thunk in itertools.islice(steps, n)]


def test_without_reach_every_scenario_and_strategy_runs_before_a_second_seed():
    names = ["focus-walk-fork", "focus-exit-scan", "focus-fault-merge"]
    assert _order(None, 12) == [(n, s, seed) for seed in (5, 6) for s in ("random", "pct") for n in names]


def test_with_reach_the_scenarios_that_run_the_function_take_most_runs_and_the_rest_keep_turns():
    exit_scan = str(resolve(["focus-exit-scan"])[0])
    got = _order({exit_scan: 3.0}, 4 * (OTHERS_EVERY + 1))
    met = [r for i, r in enumerate(got) if i % (OTHERS_EVERY + 1) < OTHERS_EVERY]
    rest = [r for i, r in enumerate(got) if i % (OTHERS_EVERY + 1) == OTHERS_EVERY]
    assert {n for n, _s, _seed in met} == {"focus-exit-scan"}
    assert [(s, seed) for _n, s, seed in met[:4]] == [("random", 5), ("pct", 5), ("random", 6), ("pct", 6)]
    assert [n for n, _s, _seed in rest] == ["focus-walk-fork", "focus-exit-scan", "focus-fault-merge",
                                            "focus-walk-fork"]
    assert len(set(got)) == len(got)  # no (scenario, strategy, seed) runs twice
