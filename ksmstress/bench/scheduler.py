"""The bare controlled scheduler beside a raw semaphore ping-pong on one CPU: what a hand-off costs.

Which ratio is the bar (issue 11: the bare scheduler under `random` at >= 0.75 of the raw hand-off rate): the
CPU-time one, hand-offs per CPU second of the bare tasks beside the raw pair's. On a machine shared with other
jobs the wall-clock rate mostly measures those jobs (another process on the CPU lengthens whichever turn it lands
in, by any amount, and wakes the two sides differently); the CPU time each side spends per hand-off is what its
code costs, and is what `cpu_ratio_to_raw` compares. The figure is the median over `--samples`, printed with
their range.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from typing import Any

import multiprocess
import numpy as np

from .. import cpus, procs
from ..arena import SharedBlock
from ..sched import make_strategy
from ..sched.control import CLEAN, Control

BAR = 0.75  # issue 11: the bare scheduler (random) at >= BAR of raw's hand-offs per CPU second


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
