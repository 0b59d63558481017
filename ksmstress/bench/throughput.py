"""Throughput rows: seconds (wall clock and CPU) per run, scheduling points and hand-offs per second of one
scenario at each granularity (locks, shared), under random and PCT, beside the raw hand-off rate."""

from __future__ import annotations

import resource
from typing import Any

from ..runner import run_one
from ..scenario import Scenario
from ..sched import GRANULARITIES
from .scheduler import measure_scheduler


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its reaped children (a run's task processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def throughput(sc: Scenario, strategy: str, runs: int, seed: int = 0) -> list[dict[str, Any]]:
    """One row per granularity: the same seeds at each, run by run in alternation (the order flipping every seed),
    so a shared machine's drift hits both alike; seconds per run is what a soak pays for one granularity. CPU
    seconds per run (the runner's and its task processes', from fork to reaping) beside it: other jobs on the
    machine stretch the wall-clock figure by any amount, not the CPU a run costs."""
    acc = {g: {"steps": 0, "handoffs": 0, "elapsed": 0.0, "cpu": 0.0, "clean": 0} for g in GRANULARITIES}
    for s in range(seed, seed + runs):
        for g in GRANULARITIES if s % 2 == 0 else GRANULARITIES[::-1]:
            c0 = _cpu_seconds()
            r = run_one(sc, s, strategy, granularity=g)
            a = acc[g]
            a["cpu"] += _cpu_seconds() - c0
            a["steps"] += r.steps
            a["handoffs"] += r.handoffs
            a["elapsed"] += r.elapsed
            a["clean"] += r.verdict == "clean"
    return [
        {
            "scenario": sc.name,
            "strategy": strategy,
            "granularity": g,
            "runs": runs,
            "clean": a["clean"],
            "steps": a["steps"],
            "seconds_per_run": a["elapsed"] / runs,
            "cpu_seconds_per_run": a["cpu"] / runs,
            "steps_per_second": a["steps"] / a["elapsed"],
            "handoffs_per_second": a["handoffs"] / a["elapsed"],
        }
        for g, a in acc.items()
    ]


def measure_throughput(sc: Scenario, runs: int, samples: int) -> dict[str, Any]:
    """The raw rate, the bare scheduler and the scenario's throughput rows."""
    out = measure_scheduler(samples)
    raw = out["raw_semaphore_round_trips_per_second"]
    rows_t = [row for st in ("random", "pct") for row in throughput(sc, st, runs)]
    for r in rows_t:
        r["handoff_ratio_to_raw"] = r["handoffs_per_second"] / (2 * raw)
    out["throughput"] = rows_t
    per_run = {(r["strategy"], r["granularity"]): r["seconds_per_run"] for r in rows_t}
    out["shared_cost"] = {st: per_run[st, "shared"] / per_run[st, "locks"] for st in ("random", "pct")}
    cpu = {(r["strategy"], r["granularity"]): r["cpu_seconds_per_run"] for r in rows_t}
    out["shared_cost_cpu"] = {st: cpu[st, "shared"] / cpu[st, "locks"] for st in ("random", "pct")}
    return out
