"""Detection power: for each variant (in its own scenario) and each strategy, how often and how fast it is found.

Per-seed strategies (random, PCT depth 1-3): seeds 0..R-1 are run (within a time budget); the row gives the
per-run detection rate, the failure classes seen (they must be the variant's), and the median / 90th percentile of
steps and seconds to the first detection. Those come from every starting seed i: the steps (seconds) of runs i,
i+1, ... up to and including the first run that detects. PCT rows also carry n (tasks that ran), k (the contested
points the change points were drawn from) and the paper's bound 1/(n * k^(d-1)) on the per-run probability.

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

STRATEGIES = (("random", None), ("pct", 1), ("pct", 2), ("pct", 3))


def _quantiles(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    xs = sorted(xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(0.9 * len(xs)))]


def detection_cell(variant: str, strategy: str, depth: int | None, runs: int, seconds: float) -> dict[str, Any]:
    """Run one (variant, strategy) campaign: seeds 0.. until `runs` runs or `seconds` of wall time."""
    v = VARIANTS[variant]
    sc = load(resolve([v.scenario])[0])
    results: list[tuple[bool, int, float, str | None]] = []
    t_end = time.monotonic() + seconds
    n_tasks = k = 0
    for seed in range(runs):
        r = run_one(sc, seed, strategy, [variant], pct_depth=depth)
        n_tasks, k = max(n_tasks, len(set(r.schedule))), max(k, r.pct_k)
        cls = (r.failure or {}).get("class")
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
    classes = sorted({c for _h, _s, _e, c in results if c})
    med_st, p90_st = _quantiles(to_first_steps)
    med_s, p90_s = _quantiles(to_first_secs)
    n = len(results)
    hits = sum(h for h, *_ in results)
    row: dict[str, Any] = {
        "variant": variant,
        "scenario": sc.name,
        "strategy": strategy if depth is None else f"pct-d{depth}",
        "runs": n,
        "detections": hits,
        "rate": hits / n if n else 0.0,
        "classes": classes,
        "expected": list(v.classes),
        "class_ok": bool(classes) and set(classes) <= set(v.classes),
        "median_steps_to_first": med_st,
        "p90_steps_to_first": p90_st,
        "median_seconds_to_first": med_s,
        "p90_seconds_to_first": p90_s,
    }
    if depth is not None:  # the paper's bound on one run's chance to find a bug of depth d: 1/(n * k^(d-1))
        row.update(n=n_tasks, k=k, bound=1.0 / (n_tasks * k ** (depth - 1)) if n_tasks else None)
    return row


def detection_power(
    variants: list[str], runs: int, seconds: float, jobs: int, progress: Any = None
) -> tuple[list[dict[str, Any]], Pool]:
    """Every (variant, strategy) cell, one pool item each, over `jobs` workers (one CPU each). Returns the rows
    finished, in table order, and the pool (its `interrupted` and `errors` say whether that is all of them)."""
    cells = [(v, s, d) for v in variants for s, d in STRATEGIES]
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
    order = {(v, s if d is None else f"pct-d{d}"): i for i, (v, s, d) in enumerate(cells)}
    return sorted(out, key=lambda r: order[(r["variant"], r["strategy"])]), pool
