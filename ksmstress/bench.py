"""`ksmstress bench`: detection power of every bug variant, and the scheduler's throughput beside the raw rate.

Detection: for each variant (in its own scenario) and each strategy (random, PCT depth 2 and 3), seeds 0..R-1 are
run (within a time budget); the table gives the per-run detection rate, the failure classes seen (they must be the
variant's), and the median / 90th percentile of steps and seconds to the first detection. Those come from every
starting seed i: the steps (seconds) of runs i, i+1, ... up to and including the first run that detects.

Throughput: seconds (wall clock and CPU) per run, scheduling points and hand-offs per second on mixed.toml at each
granularity (locks, shared), and of the bare scheduler (tasks that do nothing but reach scheduling points) beside
a raw semaphore ping-pong between two processes on the same CPU, the two taking turns through the same stretch of
time (scheduler_beside_raw), so the ratios mean something on a shared, noisy machine.

Which ratio is the bar (issue 11: the bare scheduler under `random` at >= 0.75 of the raw hand-off rate): the
CPU-time one, hand-offs per CPU second of the bare tasks beside the raw pair's. On a machine shared with other
jobs the wall-clock rate mostly measures those jobs (another process on the CPU lengthens whichever turn it lands
in, by any amount, and wakes the two sides differently); the CPU time each side spends per hand-off is what its
code costs, and is what `cpu_ratio_to_raw` compares. The figure is the median over `--samples`, printed with
their range.

The detection cells run in ksmstress.pool's workers (one CPU each), as soak's runs do. Ctrl-C or SIGTERM stops
the bench at the next safe point: the cells finished so far are printed, every process is reaped, and the exit
status is 130 or 143.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
from typing import Any

import multiprocess
import numpy as np

from . import argtypes, cpus, procs
from .arena import SharedBlock
from .bugs import VARIANTS, validate
from .pool import Pool
from .runner import run_one
from .scenario import Scenario, load, resolve
from .sched import GRANULARITIES, make_strategy
from .sched.control import CLEAN, Control

STRATEGIES = (("random", None), ("pct", 2), ("pct", 3))
BAR = 0.75  # issue 11: the bare scheduler (random) at >= BAR of raw's hand-offs per CPU second
ONLY = ("detection", "throughput", "scheduler")  # --only: scheduler = the raw and bare rows alone


class _Alternate:
    """A benchmark-only strategy: switch at every point (the pure cost of a hand-off, no staying decisions)."""

    name = "alternate"

    def setup(self, ctl: Control) -> None:
        pass

    def on_new_task(self, ctl: Control, tid: int) -> None:
        pass

    def pick(self, ctl: Control, runnable: list[int], current: int, step: int, yielding: bool) -> int:
        return runnable[0] if runnable[0] != current else runnable[-1]


def scheduler_beside_raw(
    strategy: str = "random", points: int = 50_000, chunk: int = 2_500, cpu: int | None = None
) -> dict[str, float]:
    """The bare controlled scheduler and a raw semaphore ping-pong on one CPU, taking turns a few milliseconds at
    a time. Returns each side's hand-offs per second of its own wall time and CPU seconds per hand-off.

    Bare side: two task processes under Control that only reach scheduling points (`points` each), under `random`
    (half the points stay with the running task) or `alternate` (every point hands off), with gc off and the
    point bound once, as the runner's tasks run. Raw side: two processes that ping-pong a Semaphore pair (two
    hand-offs a round trip). The running bare task gives the CPU to the raw pair after every `chunk` of its
    points and waits for it back; the raw pair makes `chunk` round trips a turn until the bare tasks are done.
    Why turns rather than one measurement after the other: on a machine shared with other jobs the load changes
    from second to second, and a raw figure taken seconds before the bare one was measuring other conditions
    (its ratio to the bare one moved by +-15% from sample to sample); taking turns, both sides see the same
    stretch of time. The first tenth of each side is warm-up (forked, pinned, caches and pages touched); the turn
    hand-over itself (one semaphore pair per chunk) is within the figures, alike on both sides.
    """
    procs.name_semaphores()
    ctx = multiprocess.get_context("fork")
    ping, pong, raw_go, bare_go = (ctx.Semaphore(0) for _ in range(4))
    ntasks = 2
    block = SharedBlock()
    strat = _Alternate() if strategy == "alternate" else make_strategy(strategy)
    ctl = Control(block, ntasks, ntasks * points + 10, strat, {1: "bare"})
    # raw: [0] stop, [1] echo stop, [2] measured round trips, [3] their wall seconds, [4:6] each side's CPU seconds
    block.want("bench.raw", np.float64, 6)
    # bare: [0] measuring, [1] step the measurement starts at, [2] turn start, [3] wall seconds of measured turns
    block.want("bench.bare", np.float64, 4)
    block.want("bench.cpu", np.float64, ntasks)  # each bare task's CPU seconds from its warm-up's end to its exit
    arrays = block.allocate()
    ctl.bind(arrays)
    raw, bare, task_cpu = arrays["bench.raw"], arrays["bench.bare"], arrays["bench.cpu"]
    for _ in range(ntasks):
        ctl.add_task(1)
    the_cpu = cpus.pick(cpu)
    chunks = max(2, points // chunk)
    warm = max(1, chunks // 10)
    warm_trips = warm * chunk
    parent = os.getpid()

    def settle() -> None:
        procs.in_child(parent)
        gc.disable()
        os.sched_setaffinity(0, {the_cpu})

    def raw_lead() -> None:
        settle()
        trips, c0 = 0, 0.0
        while True:
            raw_go.acquire()
            if raw[0]:
                break
            t0 = time.perf_counter()
            for _ in range(chunk):
                ping.release()
                pong.acquire()
            trips += chunk
            if trips > warm_trips:
                raw[3] += time.perf_counter() - t0
                raw[2] += chunk
            elif trips == warm_trips:
                c0 = time.process_time()
            bare_go.release()
        raw[4] = time.process_time() - c0
        raw[1] = 1
        ping.release()
        os._exit(0)

    def raw_echo() -> None:
        settle()
        trips, c0 = 0, 0.0
        while True:
            ping.acquire()
            if raw[1]:
                break
            pong.release()
            trips += 1
            if trips == warm_trips:
                c0 = time.process_time()
        raw[5] = time.process_time() - c0
        os._exit(0)

    def give_turn() -> None:
        """The running bare task lends the CPU to the raw pair for one turn."""
        now = time.perf_counter()
        if bare[0]:
            bare[3] += now - bare[2]
        raw_go.release()
        bare_go.acquire()
        bare[2] = time.perf_counter()

    def body(tid: int) -> None:
        settle()
        ctl.me = tid
        ctl.wait_turn()
        point = ctl.point
        c0 = 0.0
        for k in range(chunks):
            if k == warm:
                c0 = time.process_time()
                if tid == 0:  # CLOCK_MONOTONIC: the same clock in every process
                    bare[1] = ctl.steps
                    bare[2] = time.perf_counter()
                    bare[0] = 1
            for _ in range(chunk):
                point("bare")
            give_turn()
        task_cpu[tid] = time.process_time() - c0
        bare[3] += time.perf_counter() - bare[2]  # the turn goes on in the other task, if any is left
        bare[2] = time.perf_counter()
        ctl.exit_current()
        os._exit(0)

    everyone = [ctx.Process(target=raw_lead, daemon=True), ctx.Process(target=raw_echo, daemon=True)]
    everyone += [ctx.Process(target=body, args=(t,), daemon=True) for t in range(ntasks)]
    try:
        with procs.fork_guard():
            for p in everyone:
                p.start()
        bare[2] = time.perf_counter()
        ctl.start(1)
        deadline = time.monotonic() + 300
        while not ctl.done.acquire(timeout=0.2):
            procs.check_interrupt()
            if time.monotonic() > deadline:
                raise RuntimeError("bare scheduler benchmark did not finish")
        raw[0] = 1  # the bare side has the turn: the raw lead waits for it
        raw_go.release()
        for p in everyone[:2]:
            p.join(timeout=60)
    finally:
        procs.kill_and_join(everyone)
    if ctl.outcome != CLEAN or raw[2] == 0 or bare[3] == 0:
        raise RuntimeError(f"bare scheduler benchmark: no measurement (outcome {ctl.outcome})")
    handoffs = ctl.handoffs(int(bare[1]))
    raw_trips, raw_wall, bare_wall = float(raw[2]), float(raw[3]), float(bare[3])
    return {
        "raw_round_trips_per_second": raw_trips / raw_wall,
        "raw_cpu_seconds_per_handoff": float(raw[4] + raw[5]) / (2 * raw_trips),
        "points_per_second": (ctl.steps - int(bare[1])) / bare_wall,
        "handoffs_per_second": handoffs / bare_wall,
        "cpu_seconds_per_handoff": float(task_cpu.sum()) / handoffs,
    }


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
    for seed in range(runs):
        r = run_one(sc, seed, strategy, [variant], pct_depth=depth)
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
    return {
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


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _print_detection(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'variant':<24}{'strategy':<9}{'rate':>10}{'class':>30}{'med steps':>11}{'p90 steps':>11}"
        f"{'med s':>8}{'p90 s':>8}"
    )
    for r in rows:
        cls = ",".join(r["classes"]) or "-"
        mark = " !" if r["classes"] and not r["class_ok"] else ""
        print(
            f"{r['variant']:<24}{r['strategy']:<9}{r['detections']:>4}/{r['runs']:<3} {r['rate']:>4.0%}"
            f"{cls + mark:>30}{_fmt(r['median_steps_to_first'], ',.0f'):>11}"
            f"{_fmt(r['p90_steps_to_first'], ',.0f'):>11}{_fmt(r['median_seconds_to_first'], '.2f'):>8}"
            f"{_fmt(r['p90_seconds_to_first'], '.2f'):>8}"
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


def measure_scheduler(samples: int) -> dict[str, Any]:
    """The bare scheduler (random, alternate) beside the raw ping-pong, `samples` times each; each figure is the
    median over the samples, each ratio the median of the samples' own (a sample's bare and raw sides took
    turns through the same stretch of time)."""
    got: dict[str, list[dict[str, float]]] = {"random": [], "alternate": []}
    for _ in range(samples):
        for name, rows in got.items():
            rows.append(scheduler_beside_raw(strategy=name))
    every = [r for rows in got.values() for r in rows]
    raw = statistics.median(r["raw_round_trips_per_second"] for r in every)
    out: dict[str, Any] = {
        "samples": samples,
        "raw_semaphore_round_trips_per_second": raw,
        "raw_handoffs_per_second": 2 * raw,
        "raw_cpu_seconds_per_handoff": statistics.median(r["raw_cpu_seconds_per_handoff"] for r in every),
    }
    for name, rows in got.items():
        wall = [r["handoffs_per_second"] / (2 * r["raw_round_trips_per_second"]) for r in rows]
        cpu = [r["raw_cpu_seconds_per_handoff"] / r["cpu_seconds_per_handoff"] for r in rows]
        out[f"bare_scheduler_{name}"] = {
            **{
                key: statistics.median(r[key] for r in rows)
                for key in ("points_per_second", "handoffs_per_second", "cpu_seconds_per_handoff")
            },
            "handoff_ratio_to_raw": statistics.median(wall),  # wall-clock hand-off rates
            "cpu_ratio_to_raw": statistics.median(cpu),  # hand-offs per CPU second: the bar's ratio
            "cpu_ratio_samples": cpu,
        }
    got_bar = out["bare_scheduler_random"]["cpu_ratio_to_raw"]
    out["bar"] = {
        "what": "bare_scheduler_random.cpu_ratio_to_raw",
        "at_least": BAR,
        "value": got_bar,
        "met": bool(got_bar >= BAR),
    }
    return out


def _measure_throughput(sc: Scenario, runs: int, samples: int) -> dict[str, Any]:
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
                    out.update(_measure_throughput(sc, a.throughput_runs, a.samples))
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
