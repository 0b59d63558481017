"""`ksmstress bench`: throughput of the controlled scheduler beside the machine's raw hand-off rate.

The raw rate is a semaphore ping-pong between two processes pinned to the same CPU, measured in the same
invocation, so the ratio is meaningful on a shared, noisy machine. Scheduling points/s and hand-offs/s are summed
over the runs' own wall time (process start-up excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import multiprocess

from .runner import run_one
from .scenario import load, resolve


def semaphore_pingpong(seconds: float = 1.0, cpu: int | None = None) -> float:
    """Round trips per second of a Semaphore pair between two processes on one CPU (2 hand-offs each)."""
    ctx = multiprocess.get_context("fork")
    ping, pong = ctx.Semaphore(0), ctx.Semaphore(0)
    the_cpu = cpu if cpu is not None else sorted(os.sched_getaffinity(0))[-1]
    n = 20_000

    def echo() -> None:
        os.sched_setaffinity(0, {the_cpu})
        for _ in range(n + 1000):
            ping.acquire()
            pong.release()

    p = ctx.Process(target=echo, daemon=True)
    p.start()
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {the_cpu})
    try:
        for _ in range(1000):  # warm up
            ping.release()
            pong.acquire()
        t0 = time.perf_counter()
        for _ in range(n):
            ping.release()
            pong.acquire()
        dt = time.perf_counter() - t0
    finally:
        os.sched_setaffinity(0, old)
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()
    del seconds
    return n / dt


def throughput(scenario: str, strategy: str, runs: int, seed: int = 0) -> dict[str, Any]:
    sc = load(resolve([scenario])[0])
    steps = handoffs = 0
    elapsed = 0.0
    clean = 0
    for s in range(seed, seed + runs):
        r = run_one(sc, s, strategy)
        steps += r.steps
        handoffs += r.handoffs
        elapsed += r.elapsed
        clean += r.verdict == "clean"
    return {
        "scenario": sc.name,
        "strategy": strategy,
        "runs": runs,
        "clean": clean,
        "steps": steps,
        "steps_per_second": steps / elapsed,
        "handoffs_per_second": handoffs / elapsed,
    }


def cmd_bench(a: argparse.Namespace) -> int:
    raw = semaphore_pingpong()
    rows = [throughput(a.scenario, st, a.runs) for st in ("random", "pct")]
    raw_handoffs = 2 * raw
    for r in rows:
        r["handoff_ratio_to_raw"] = r["handoffs_per_second"] / raw_handoffs
    out = {"raw_semaphore_round_trips_per_second": raw, "raw_handoffs_per_second": raw_handoffs, "throughput": rows}
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"raw same-CPU semaphore ping-pong: {raw:,.0f} round trips/s = {raw_handoffs:,.0f} hand-offs/s")
    print(f"{'scenario':<14}{'strategy':<9}{'runs':>5}{'steps':>10}{'steps/s':>11}{'hand-offs/s':>13}{'vs raw':>8}")
    for r in rows:
        print(
            f"{r['scenario']:<14}{r['strategy']:<9}{r['runs']:>5}{r['steps']:>10}{r['steps_per_second']:>11,.0f}"
            f"{r['handoffs_per_second']:>13,.0f}{r['handoff_ratio_to_raw']:>8.2f}"
        )
    return 0


def add_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="scheduler throughput beside the raw same-CPU hand-off rate")
    b.add_argument("--scenario", default="mixed")
    b.add_argument("--runs", type=int, default=10)
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=cmd_bench)
