"""`ksmstress bench`: detection power of every bug variant, and the scheduler's throughput beside the raw rate.

Detection: for each variant (in its own scenario) and each strategy (random, PCT depth 1 to 3, bounded
exploration at 1 and 2 preemptions, coverage-guided search), the rate, the failure classes seen (they must be the
variant's), and the median / 90th percentile of steps and seconds to the first detection (bench/detection.py
says how each kind of row counts them).

Throughput: seconds (wall clock and CPU) per run, scheduling points and hand-offs per second on mixed.toml at each
granularity (locks, shared), and of the bare scheduler (tasks that do nothing but reach scheduling points) beside
a raw semaphore ping-pong between two processes on the same CPU, the two taking turns through the same stretch of
time (scheduler_beside_raw), so the ratios mean something on a shared, noisy machine.

The detection cells run in ksmstress.pool's workers (one CPU each), as soak's runs do. Ctrl-C or SIGTERM stops
the bench at the next safe point: the cells finished so far are printed, every process is reaped, and the exit
status is 130 or 143.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import argtypes, cpus, procs
from ..bugs import VARIANTS, validate
from ..scenario import load, resolve
from .detection import detection_power
from .scheduler import measure_scheduler
from .throughput import measure_throughput

ONLY = ("detection", "throughput", "scheduler")  # --only: scheduler = the raw and bare rows alone


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _print_detection(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'variant':<24}{'strategy':<11}{'rate':>10}{'class':>34}{'med steps':>11}{'p90 steps':>11}"
        f"{'med s':>8}{'p90 s':>8}  PCT bound 1/(n*k^(d-1))"
    )
    for r in rows:
        bound = f"  {r['bound']:.2g} (n={r['n']}, k={r['k']})" if r.get("bound") else ""
        if "schedules" in r:  # a bounded exploration: how far it went, and the failure's preemption count
            bound = f"  {r['schedules']} schedules" + (
                f", {r['preemptions']} preemptions" if r["detections"] else (", complete" if r["complete"] else ""))
        cls = ",".join(r["classes"]) or "-"
        mark = " !" if r["classes"] and not r["class_ok"] else ""
        print(
            f"{r['variant']:<24}{r['strategy']:<11}{r['detections']:>4}/{r['runs']:<3} {r['rate']:>4.0%}"
            f"{cls + mark:>34}{_fmt(r['median_steps_to_first'], ',.0f'):>11}"
            f"{_fmt(r['p90_steps_to_first'], ',.0f'):>11}{_fmt(r['median_seconds_to_first'], '.2f'):>8}"
            f"{_fmt(r['p90_seconds_to_first'], '.2f'):>8}{bound}"
        )
    print()


def _print_scheduler(out: dict[str, Any]) -> None:
    raw = out["raw_semaphore_round_trips_per_second"]
    n = out["samples"]
    print(
        f"raw same-CPU semaphore ping-pong: {raw:,.0f} round trips/s = {2 * raw:,.0f} hand-offs/s, "
        f"{out['raw_cpu_seconds_per_handoff'] * 1e6:.2f} CPU us each (median of {n})"
    )
    for name, what in (("random", "random picks"), ("alternate", "a hand-off at every point")):
        b = out[f"bare_scheduler_{name}"]
        cpu = b["cpu_ratio_samples"]
        print(
            f"bare controlled scheduler (2 tasks, {what}): {b['points_per_second']:,.0f} points/s, "
            f"{b['handoffs_per_second']:,.0f} hand-offs/s = {b['handoff_ratio_to_raw']:.2f} of raw's wall-clock "
            f"rate; {b['cpu_seconds_per_handoff'] * 1e6:.2f} CPU us a hand-off = {b['cpu_ratio_to_raw']:.2f} of "
            f"raw's hand-offs per CPU second ({min(cpu):.2f}-{max(cpu):.2f} over {n})"
        )
    bar = out["bar"]
    print(
        f"bar (issue 11): bare scheduler, random, hand-offs per CPU second >= {bar['at_least']:.2f} of raw's: "
        f"{bar['value']:.2f}, {'met' if bar['met'] else 'NOT met'} (CPU time, not wall clock: other jobs on the "
        f"CPU stretch the wall-clock rates, not the CPU each hand-off costs)"
    )


def _print_throughput(out: dict[str, Any]) -> None:
    print(
        f"{'scenario':<14}{'strategy':<9}{'granularity':<12}{'runs':>5}{'s/run':>8}{'CPU s/run':>10}{'steps':>10}"
        f"{'steps/s':>11}{'hand-offs/s':>13}{'vs raw':>8}"
    )
    for r in out["throughput"]:
        print(
            f"{r['scenario']:<14}{r['strategy']:<9}{r['granularity']:<12}{r['runs']:>5}{r['seconds_per_run']:>8.3f}"
            f"{r['cpu_seconds_per_run']:>10.3f}{r['steps']:>10}{r['steps_per_second']:>11,.0f}"
            f"{r['handoffs_per_second']:>13,.0f}{r['handoff_ratio_to_raw']:>8.2f}"
        )
    for st, ratio in out["shared_cost"].items():
        print(
            f"{st}: shared granularity costs {ratio:.2f}x the seconds per run of locks, "
            f"{out['shared_cost_cpu'][st]:.2f}x the CPU seconds"
        )


def cmd_bench(a: argparse.Namespace) -> int:
    variants = sorted(validate(a.variant)) if a.variant else sorted(VARIANTS)  # UnknownBug: exit 2, before any run
    sc = load(resolve([a.scenario])[0])  # ScenarioError: exit 2 now, not after the detection cells
    tty = sys.stderr.isatty()

    def progress(done: int, total: int, row: dict[str, Any]) -> None:
        msg = (
            f"[{done}/{total}] {row['variant']} {row['strategy']}: {row['detections']}/{row['runs']} "
            f"({', '.join(row['classes']) or 'none'})"
        )
        print(("\r\033[K" if tty else "") + msg, end="" if tty else "\n", file=sys.stderr, flush=True)

    only = "throughput" if a.skip_detection else a.only
    out: dict[str, Any] = {}
    stopped: int | None = None
    errors: list[str] = []
    with procs.catch_interrupts():
        if only in (None, "detection"):
            rows, pool = detection_power(variants, a.runs, a.seconds, a.jobs, progress)
            if tty:
                print(file=sys.stderr)
            out["detection"], stopped, errors = rows, pool.interrupted, pool.errors
        if stopped is None and only != "detection":
            try:
                if only == "scheduler":
                    out.update(measure_scheduler(a.samples))
                else:
                    out.update(measure_throughput(sc, a.throughput_runs, a.samples))
            except procs.Interrupted as e:
                stopped = e.signum
        if stopped is None:
            stopped = procs.take_interrupt()  # one that came after the last safe point: the figures are whole
    if stopped is not None:
        out["interrupted"] = True
    if errors:
        out["errors"] = errors
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        if "detection" in out:
            _print_detection(out["detection"])
        if "bar" in out:
            _print_scheduler(out)
        if "throughput" in out:
            _print_throughput(out)
    if stopped is not None:
        sys.stdout.flush()
        print("ksmstress: interrupted", file=sys.stderr)
        return procs.exit_status(stopped)
    bad = [r for r in out.get("detection", []) if r["detections"] and not r["class_ok"]]
    return 1 if bad or errors else 0


def add_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="detection power of every variant, and scheduler throughput beside raw")
    b.add_argument("--runs", type=argtypes.positive_int, default=40, help="seeds per (variant, strategy) cell")
    b.add_argument("--seconds", type=argtypes.positive_seconds, default=60.0, help="wall-time budget per cell")
    b.add_argument(
        "--jobs",
        type=argtypes.positive_int,
        default=len(cpus.allowed()),
        help="parallel workers (one CPU each)",
    )
    b.add_argument("--variant", action="append", default=[], help="only these variants (repeatable)")
    which = b.add_mutually_exclusive_group()
    which.add_argument("--skip-detection", action="store_true", help="throughput only (= --only throughput)")
    which.add_argument(
        "--only",
        choices=ONLY,
        help="one part: the detection cells; the throughput rows (raw, bare scheduler, --scenario); or the "
        "scheduler rows alone (raw and bare, with issue 11's bar)",
    )
    b.add_argument("--scenario", default="mixed", help="scenario for the throughput rows")
    b.add_argument("--throughput-runs", type=argtypes.positive_int, default=10, help="runs of --scenario per strategy")
    b.add_argument(
        "--samples",
        type=argtypes.positive_int,
        default=5,
        help="raw / bare scheduler measurements, in alternation (each figure is their median)",
    )
    b.add_argument("--json", action="store_true", help="print one machine-readable object")
    b.set_defaults(fn=cmd_bench)
