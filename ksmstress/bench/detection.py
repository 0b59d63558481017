"""Detection power: for each variant (in its own scenario) and each strategy, how often and how fast it is found.

Per-seed strategies (random, PCT depth 1-3): seeds 0..R-1 are run (within a time budget); the row gives the
per-run detection rate, the failure classes seen (they must be the variant's), and the median / 90th percentile of
steps and seconds to the first detection. Those come from every starting seed i: the steps (seconds) of runs i,
i+1, ... up to and including the first run that detects. PCT rows also carry n (tasks that ran), k (the contested
points the change points were drawn from) and the paper's bound 1/(n * k^(d-1)) on the per-run probability.
Bounded rows (C = 1, 2) are one exploration of seed 0 (found or not, schedules explored, the failure's preemption
count); the coverage row is SEARCHES independent coverage-guided searches (rate = searches that found it).

The cells run in ksmstress.pool's workers (one CPU each), as soak's runs do.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from .. import cpus
from ..bugs import VARIANTS
from ..pool import Pool
from ..runner import run_one
from ..scenario import load, resolve

# the table's rows per variant: per-seed strategies, then bounded exploration at C = 1 and 2, then coverage search
STRATEGIES = ("random", "pct-d1", "pct-d2", "pct-d3", "bounded-c1", "bounded-c2", "coverage")
SEARCHES = 5  # coverage rows: independent searches (seeds 0, 1000, ...) per cell, each up to --runs runs


def _quantiles(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    xs = sorted(xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(0.9 * len(xs)))]


def _row(variant: str, scenario: str, strategy: str, tries: int, hits: int, classes: set[str],
         to_steps: list[float], to_secs: list[float]) -> dict[str, Any]:
    v = VARIANTS[variant]
    med_st, p90_st = _quantiles(to_steps)
    med_s, p90_s = _quantiles(to_secs)
    return {
        "variant": variant,
        "scenario": scenario,
        "strategy": strategy,
        "runs": tries,
        "detections": hits,
        "rate": hits / tries if tries else 0.0,
        "classes": sorted(classes),
        "expected": list(v.classes),
        "class_ok": bool(classes) and classes <= set(v.classes),
        "median_steps_to_first": med_st,
        "p90_steps_to_first": p90_st,
        "median_seconds_to_first": med_s,
        "p90_seconds_to_first": p90_s,
    }


def _per_seed_cell(variant: str, strategy: str, runs: int, seconds: float) -> dict[str, Any]:
    """random or pct-dN: seeds 0.. until `runs` runs or `seconds` of wall time. Steps (seconds) to the first
    detection come from every starting seed i: those of runs i, i+1, ... up to and including the first that
    detects."""
    sc = load(resolve([VARIANTS[variant].scenario])[0])
    name, depth = ("pct", int(strategy[len("pct-d"):])) if strategy.startswith("pct-d") else (strategy, None)
    results: list[tuple[bool, int, float, str | None]] = []
    t_end = time.monotonic() + seconds
    n_tasks = k = 0
    for seed in range(runs):
        r = run_one(sc, seed, name, [variant], pct_depth=depth)
        n_tasks, k = max(n_tasks, len(set(r.schedule))), max(k, r.pct_k)
        cls = (r.failure or {}).get("class") if r.verdict == "failure" else None
        results.append((cls is not None, r.steps, r.elapsed + r.spawn_seconds, cls))
        if time.monotonic() > t_end:
            break
    to_first_steps, to_first_secs = [], []
    for i in range(len(results)):
        steps = secs = 0.0
        for hit, st, el, _cls in results[i:]:
            steps += st
            secs += el
            if hit:
                to_first_steps.append(steps)
                to_first_secs.append(secs)
                break
    classes = {c for _h, _s, _e, c in results if c}
    hits = sum(h for h, *_ in results)
    row = _row(variant, sc.name, strategy, len(results), hits, classes, to_first_steps, to_first_secs)
    if depth is not None:  # the paper's bound on one run's chance to find a bug of depth d: 1/(n * k^(d-1))
        row.update(n=n_tasks, k=k, bound=1.0 / (n_tasks * k ** (depth - 1)) if n_tasks else None)
    return row


def _bounded_cell(variant: str, preemptions: int, seconds: float) -> dict[str, Any]:
    """bounded-cC: one exploration of seed 0's programs in the variant's scenario, fewest preemptions first, until
    the first failure, completion, or `seconds`. One try: the steps and seconds to the first are the exploration's
    own up to the failing schedule."""
    from ..explore.bounded import explore_bounded  # the explorer builds on the runner like this module

    sc = load(resolve([VARIANTS[variant].scenario])[0])
    steps = [0]

    def count(_out: Any, res: Any) -> None:
        steps[0] += res.steps

    out = explore_bounded(sc, 0, [variant], preemptions, seconds=seconds, on_run=count)
    found = out.failure is not None and out.failure.verdict == "failure"
    cls = {(out.failure.failure or {}).get("class")} if found and out.failure else set()
    row = _row(variant, sc.name, f"bounded-c{preemptions}", 1, int(found), cls,
               [steps[0]] if found else [], [out.seconds] if found else [])
    row.update(schedules=out.schedules, complete=out.complete, preemptions=out.preemptions if found else None)
    return row


def _coverage_cell(variant: str, runs: int, seconds: float) -> dict[str, Any]:
    """coverage: SEARCHES coverage-guided searches (seeds 0, 1000, ...), each until its first failure, `runs`
    runs or its share of `seconds`; the steps and seconds to the first are each search's own."""
    from ..explore.search import coverage_search

    sc = load(resolve([VARIANTS[variant].scenario])[0])
    hits, classes, to_steps, to_secs = 0, set(), [], []
    for i in range(SEARCHES):
        out = coverage_search(sc, [variant], runs=runs, seconds=seconds / SEARCHES, seed=1000 * i)
        if out.failure is not None and out.failure.verdict == "failure":
            hits += 1
            classes.add((out.failure.failure or {}).get("class"))
            to_steps.append(out.steps_to_failure or 0)
            to_secs.append(out.seconds_to_failure or 0.0)
    return _row(variant, sc.name, "coverage", SEARCHES, hits, classes, to_steps, to_secs)


def detection_cell(variant: str, strategy: str, runs: int, seconds: float) -> dict[str, Any]:
    """One (variant, strategy) cell of the table (strategy: one of STRATEGIES)."""
    if strategy.startswith("bounded-c"):
        return _bounded_cell(variant, int(strategy[len("bounded-c"):]), seconds)
    if strategy == "coverage":
        return _coverage_cell(variant, runs, seconds)
    return _per_seed_cell(variant, strategy, runs, seconds)


def detection_power(
    variants: list[str], runs: int, seconds: float, jobs: int, progress: Any = None
) -> tuple[list[dict[str, Any]], Pool]:
    """Every (variant, strategy) cell, one pool item each, over `jobs` workers (one CPU each). Returns the rows
    finished, in table order, and the pool (its `interrupted` and `errors` say whether that is all of them)."""
    cells = [(v, s) for v in variants for s in STRATEGIES]
    out: list[dict[str, Any]] = []
    pool = Pool(
        lambda k, _job: detection_cell(*cells[k], runs, seconds),
        cpus.spread(max(1, min(jobs, len(cells)))),
        name="ksmstress-bench",
    )
    handed = iter(range(len(cells)))

    def feed() -> tuple[int, int] | None:
        k = next(handed, None)
        return None if k is None else (k, k + 1)

    def on_row(row: dict[str, Any]) -> None:
        out.append(row)
        if progress:
            progress(len(out), len(cells), row)

    def on_error(msg: str) -> None:
        print(f"ksmstress bench: {msg}", file=sys.stderr, flush=True)

    pool.run(feed, on_row, on_error=on_error)
    order = {cell: i for i, cell in enumerate(cells)}
    return sorted(out, key=lambda r: order[(r["variant"], r["strategy"])]), pool
