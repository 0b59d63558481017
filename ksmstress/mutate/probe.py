"""The process that soaks one mutant: `python -m ksmstress.mutate.probe CONFIG.json`, run by scratch.Probe with
PYTHONPATH set to a scratch copy of the package that holds the mutant.

Why in-process `run_one` rather than a `ksmstress soak` subprocess: a mutant is killed by its first failure, so
the probe stops there and reports the time to the kill. One JSON line per run goes to the results file as it ends,
so a probe ended at the hard deadline still leaves what it saw.

How each strategy spends a mutant's budget (`shares`: random and pct together, bounded, coverage, an equal share
each, in that order; time a share leaves unused goes to the next):
- random / pct: (scenario, strategy, seed) round-robin, every scenario and strategy before a second seed of any,
  so a budget of a few dozen runs already covers them all; given the scenarios whose runs enter the mutated
  function (reach.py, the config's "focus"), those take OTHERS_EVERY runs of every OTHERS_EVERY + 1.
- bounded: one exploration per scenario of every schedule of seed --seed with at most C preemptions (--preemptions,
  default 1), fewest first (explore/bounded.py), advanced one schedule at a time, scenario after scenario: first the
  non-preemptive schedule of every scenario, then the one-preemption schedules of all of them side by side. A
  scenario whose tree is done starts over at the next seed. Why not one scenario's whole tree after another: at
  C = 1 the focus-* trees hold 24-180 schedules, but mixed's and the other shipped scenarios' hold thousands, so a
  budget of seconds would never leave the first large one.
- coverage: one coverage-guided search per scenario (explore/search.py, its own corpus, fresh seeds from --seed),
  advanced one run at a time, scenario after scenario.

Outcomes: `killed` (a detector named a failure, or the model raised: class `crash`), `timeout` (a run that did
not end within the mutant's budget, or ran out of its scenario's step budget while still making progress), and
`survived` (every run clean until the budget was spent).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ..runner import RunResult
    from ..scenario import Scenario


class _Stopped(BaseException):
    """SIGTERM from the campaign: unwind through run_one's `finally`, which kills and reaps the run's tasks."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Stopped()


def _emit(out: TextIO, row: dict[str, Any]) -> None:
    out.write(json.dumps(row, sort_keys=True) + "\n")
    out.flush()


PER_SEED = ("random", "pct")  # strategies whose runs are independent seeds: rotated together in one share
DEFAULT_PREEMPTIONS = 1  # bounded: C, so that a small budget still reaches past the non-preemptive schedules

Thunk = Callable[[], "RunResult | None"]


def shares(strategies: list[str]) -> list[list[str]]:
    """The budget's shares, in the order they run: random and pct rotate together in one share (as they always
    did), bounded and coverage each get a share of their own; the budget is split evenly between the shares."""
    per_seed = [s for s in strategies if s in PER_SEED]
    return ([per_seed] if per_seed else []) + [[s] for s in strategies if s not in PER_SEED]


OTHERS_EVERY = 3  # with reach known: after this many runs where the mutant is met, one run of any scenario


def per_seed_steps(scenarios: list[Scenario], strategies: list[str], seed: int, timeout: Callable[[], float],
                   focus: dict[str, float] | None = None) -> Iterator[tuple[dict[str, Any], Thunk]]:
    """random / pct: rounds of (scenario, strategy), every scenario and strategy before a second seed, each
    scenario's seeds counting up from `seed`. With `focus` (the scenarios whose runs enter the mutated function,
    reach.py), the rounds go over those, and after every OTHERS_EVERY of their runs one run of the plain rotation
    over all scenarios follows: the runs go where the mutant is met, and a scenario the reach seeds missed still
    gets its turns. (Shared evenly: how often a scenario enters the function says little about whether its runs
    can tell the mutant from the model; weighting by it killed fewer in a trial.)"""
    from ..runner import run_one

    nth = {(sc.path, strat): 0 for sc in scenarios for strat in strategies}

    def step(sc: Scenario, strat: str) -> tuple[dict[str, Any], Thunk]:
        s = seed + nth[sc.path, strat]
        nth[sc.path, strat] += 1
        return ({"scenario": sc.name, "strategy": strat, "seed": s},
                lambda: run_one(sc, s, strat, timeout=timeout()))

    def rotation(group: list[Scenario]) -> Iterator[tuple[Scenario, str]]:
        while True:
            for strat in strategies:
                for sc in group:
                    yield sc, strat

    plain = rotation(scenarios)
    met = [sc for sc in scenarios if sc.path in (focus or {})]
    if not met:
        for sc, strat in plain:
            yield step(sc, strat)
    in_focus = rotation(met)
    while True:
        for _ in range(OTHERS_EVERY):
            yield step(*next(in_focus))
        yield step(*next(plain))


def bounded_steps(scenarios: list[Scenario], seed: int, preemptions: int,
                  timeout: Callable[[], float]) -> Iterator[tuple[dict[str, Any], Thunk]]:
    """bounded: one exploration per scenario (every schedule of seed `seed` with at most `preemptions`
    preemptions, fewest first), advanced one schedule at a time, each scenario in turn, so that every scenario's
    non-preemptive schedule runs first, then every scenario's one-preemption schedules side by side. A scenario
    whose exploration completes (or ends on a run that used up max_steps) starts over at the next seed."""
    from ..explore.bounded import BoundedResult, bounded_runs

    seeds = [seed] * len(scenarios)
    tree: list[Iterator[RunResult] | None] = [None] * len(scenarios)
    outs: list[BoundedResult | None] = [None] * len(scenarios)
    level = [0] * len(scenarios)  # the preemptions of each scenario's last schedule

    def step(i: int) -> RunResult | None:
        sc = scenarios[i]
        for _ in range(2):  # at most one restart: a new seed's root always runs
            if tree[i] is None:
                outs[i] = BoundedResult(sc.name, seeds[i], preemptions, (0, 1))
                tree[i] = bounded_runs(outs[i], sc, (), timeout=timeout())
            res = next(tree[i], None)  # type: ignore[arg-type]
            if res is not None:
                res.strategy = "bounded"  # the artifact replays the recorded schedule step by step
                level[i] = outs[i].levels[-1].preemptions  # type: ignore[union-attr]
                return res
            tree[i], seeds[i] = None, seeds[i] + 1
        return None

    while True:
        for i, sc in enumerate(scenarios):
            row: dict[str, Any] = {"scenario": sc.name, "strategy": "bounded", "seed": seeds[i]}

            def thunk(i: int = i, row: dict[str, Any] = row) -> RunResult | None:
                res = step(i)
                row["preemptions"] = level[i]
                return res

            yield row, thunk


def coverage_steps(scenarios: list[Scenario], seed: int, seconds: float,
                   timeout: Callable[[], float]) -> Iterator[tuple[dict[str, Any], Thunk]]:
    """coverage: one coverage-guided search per scenario (its own corpus, seeds from `seed`), advanced one run at a
    time, each scenario in turn, all within the share's seconds."""
    from ..explore.search import SearchResult, search_runs

    outs = [SearchResult(sc.name, "coverage", seed) for sc in scenarios]
    gens = [search_runs(o, sc, (), None, seconds, timeout=timeout()) for o, sc in zip(outs, scenarios, strict=True)]
    while True:
        for sc, g in zip(scenarios, gens, strict=True):
            yield {"scenario": sc.name, "strategy": "coverage", "seed": seed}, lambda g=g: next(g, None)


def soak(cfg: dict[str, Any], out: TextIO) -> dict[str, Any]:
    """Run the strategies' steps until a failure or the budget; the final row. The budget is split evenly between
    the shares (see `shares`); a share that runs out of steps early leaves its time to the next."""
    from ..failures import Failure
    from ..report import write_artifact
    from ..scenario import load

    scenarios = [load(p) for p in cfg["scenarios"]]
    focus = {path: float(rate) for path, rate in cfg.get("focus") or ()}
    # bounded and coverage: the scenarios that run the mutated function first, the most frequent first
    ordered = sorted(scenarios, key=lambda sc: -focus.get(sc.path, 0.0))
    budget: float = cfg["budget"]
    floor: float = cfg["run_timeout_floor"]
    t0 = time.monotonic()
    runs = steps = budget_runs = 0
    groups = shares(cfg["strategies"])
    for gi, group in enumerate(groups):
        end = t0 + budget * (gi + 1) / len(groups)

        def timeout(t_end: float = t0 + budget) -> float:
            # a slow but healthy run is never cut short near the end of the budget
            return max(t_end - time.monotonic(), floor)

        if group[0] == "bounded":
            source = bounded_steps(ordered, cfg["seed"], int(cfg.get("preemptions", DEFAULT_PREEMPTIONS)),
                                   timeout)
        elif group[0] == "coverage":
            source = coverage_steps(ordered, cfg["seed"], max(0.0, end - time.monotonic()), timeout)
        else:
            source = per_seed_steps(scenarios, group, cfg["seed"], timeout, focus)
        idle = 0
        for base, thunk in source:
            if time.monotonic() >= end or idle >= len(scenarios):
                break
            row: dict[str, Any] = base  # a source may add to it as its run ends (bounded: the preemptions)
            t_run = timeout()
            try:
                res = thunk()
            except Exception as e:  # the mutant raised in the runner's own process (mm_alloc, quiescence checks)
                cls = e.cls if isinstance(e, Failure) else "crash"
                msg = e.message if isinstance(e, Failure) else f"run_one raised {type(e).__name__}: {e}"
                row.update(verdict="failure", cls=cls, message=msg, steps=0, elapsed=time.monotonic() - t0)
                _emit(out, row)
                runs += 1
                return {"type": "end", "outcome": "killed", "cls": cls, "message": msg, "time_to_kill":
                        round(time.monotonic() - t0, 3), "runs": runs, "steps": steps, "kill": row,
                        "traceback": traceback.format_exc(limit=-4)}
            if res is None:  # this scenario's search ran out of its seconds
                idle += 1
                continue
            idle = 0
            runs += 1
            steps += res.steps
            f = res.failure or {}
            row.update(seed=res.seed, verdict=res.verdict, cls=f.get("class"), message=f.get("message"),
                       steps=res.steps, elapsed=round(res.elapsed, 3))
            _emit(out, row)
            if res.verdict == "budget":
                budget_runs += 1
                continue
            if res.verdict != "failure":
                continue
            t = round(time.monotonic() - t0, 3)
            if f.get("class") == "hang" and res.elapsed >= t_run:
                return {"type": "end", "outcome": "timeout", "cls": "hang", "message": f.get("message"),
                        "time_to_kill": None, "runs": runs, "steps": steps, "kill": row}
            if cfg.get("artifacts"):
                try:
                    row["artifact"] = str(write_artifact(Path(cfg["artifacts"]), _scenario(scenarios, row), res,
                                                         None))
                except OSError:
                    pass
            return {"type": "end", "outcome": "killed", "cls": f.get("class"), "message": f.get("message"),
                    "time_to_kill": t, "runs": runs, "steps": steps, "kill": row}
    if budget_runs:
        return {"type": "end", "outcome": "timeout", "cls": "budget-exhausted", "runs": runs, "steps": steps,
                "message": f"{budget_runs} run(s) used up their scenario's max_steps while still making progress",
                "time_to_kill": None, "kill": None}
    return {"type": "end", "outcome": "survived", "cls": None, "message": None, "time_to_kill": None, "runs": runs,
            "steps": steps, "kill": None}


def _scenario(scenarios: list[Scenario], row: dict[str, Any]) -> Scenario:
    return next(sc for sc in scenarios if sc.name == row["scenario"])


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the campaign stops us by process group, never the terminal
    signal.signal(signal.SIGTERM, _on_sigterm)
    cfg = json.loads(Path(argv[0]).read_text())
    import ksmstress

    where = Path(ksmstress.__file__).resolve()
    root = Path(cfg["root"]).resolve()
    with open(cfg["results"], "a") as out:
        if root not in where.parents:  # the checkout was imported instead of the copy: the mutant is not in play
            _emit(out, {"type": "error", "message": f"imported ksmstress from {where}, not from the scratch copy"})
            return 3
        _emit(out, {"type": "start", "pid": os.getpid()})
        try:
            _emit(out, soak(cfg, out))
        except _Stopped:
            return 143
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
