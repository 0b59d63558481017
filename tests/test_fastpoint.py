"""The controlled scheduler's hot path (sched/fastpoint.py) with bare tasks, no model: the same decisions as
RandomStrategy.pick draw for draw, a hand-off count read from the record that matches the parks, and a task woken
after the run stopped leaves without running on (the stop reaches it through VERSION, the one cell it reads)."""

from __future__ import annotations

import os
import signal

import multiprocess
import numpy as np
import pytest

from ksmstress.arena import SharedBlock
from ksmstress.sched.control import Control
from ksmstress.sched.prng import BLOCK
from ksmstress.sched.random import RandomStrategy


class _PlainRandom(RandomStrategy):
    """RandomStrategy under another type: Control.point and RandomStrategy.pick run it, not fastpoint."""


def _reap(tasks: list) -> None:
    for p in tasks:
        if p.exitcode is None:
            os.kill(p.pid, signal.SIGKILL)
        p.join()


def _bare(strategy: RandomStrategy, ntasks: int, points: list[int], seed: int) -> tuple[bytes, int, int]:
    """`ntasks` processes that only reach scheduling points (task t makes points[t], every third one yielding),
    then exit. Returns (schedule, Control.handoffs(), parks): parks are counted by the tasks themselves, around
    the semaphore wait each hand-off from a point ends in."""
    block = SharedBlock()
    ctl = Control(block, ntasks, sum(points) + 10, strategy, {1: "bare"})
    block.want("t.parks", np.int64, ntasks)
    arrays = block.allocate()
    ctl.bind(arrays)
    parks = arrays["t.parks"]
    for _ in range(ntasks):
        ctl.add_task(1)

    def body(tid: int) -> None:
        ctl.me = tid
        wait = ctl._park[tid]

        def counted() -> None:
            parks[tid] += 1
            wait()

        ctl._park[tid] = counted  # both paths look park[me] up after this (fastpoint at its first point)
        ctl.wait_turn()
        for i in range(points[tid]):
            ctl.point("bare", i % 3 == 0)
        ctl.exit_current()
        os._exit(0)

    ctx = multiprocess.get_context("fork")
    tasks = [ctx.Process(target=body, args=(t,), daemon=True) for t in range(ntasks)]
    try:
        for p in tasks:
            p.start()
        ctl.start(seed)
        assert ctl.done.acquire(timeout=60)
        for p in tasks:
            p.join(timeout=30)
        assert [p.exitcode for p in tasks] == [0] * ntasks
        return ctl.schedule(), ctl.handoffs(), int(parks.sum())
    finally:
        _reap(tasks)


@pytest.mark.parametrize(("ntasks", "seed"), [(2, 1), (3, 7)])
def test_fast_point_decides_as_the_strategy_through_block_refills(ntasks: int, seed: int) -> None:
    """Several PRNG blocks' worth of draws, refilled by whichever task is running, read by tasks that were parked
    meanwhile; tasks exiting one by one change the runnable count under them (the draws modulo 3, 2, then none)."""
    points = [1400 * (t + 3) for t in range(ntasks)]
    assert sum(points) > 2 * BLOCK
    fast = _bare(RandomStrategy(), ntasks, points, seed)
    plain = _bare(_PlainRandom(), ntasks, points, seed)
    assert fast[0] == plain[0]
    assert len(fast[0]) == sum(points) + ntasks  # step 0's grant, every point, each exit's decision but the last's


@pytest.mark.parametrize("strategy", [RandomStrategy, _PlainRandom])
def test_handoffs_read_from_the_record_are_the_parks(strategy: type[RandomStrategy]) -> None:
    """Nothing counts hand-offs on the hot path: Control.handoffs reads them from the record. Each hand-off from a
    point parks the task that made it; each exit but the last hands on without parking."""
    ntasks = 3
    _schedule, handoffs, parks = _bare(strategy(), ntasks, [900, 1100, 1300], 5)
    assert handoffs == parks + ntasks - 1
    assert parks > 500  # the count is not vacuous


def test_handoffs_count_the_decisions_that_change_hands() -> None:
    block = SharedBlock()
    ctl = Control(block, 3, 20, RandomStrategy(), {})
    ctl.bind(block.allocate())
    ctl.record[:7] = [0, 0, 1, 1, 0, 2, 2]
    ctl.meta[0] = 6  # STEP
    assert ctl.handoffs() == 3
    assert ctl.handoffs(since=3) == 2
    assert ctl.current() == 2


@pytest.mark.parametrize("strategy", [RandomStrategy, _PlainRandom])
def test_a_task_woken_after_the_run_stopped_leaves_without_running_on(strategy: type[RandomStrategy]) -> None:
    """Task 1 is parked inside a point when task 0 reports a failure. Nothing should post it afterwards, but if
    something does (a runner's cleanup, a stray release), it must exit at once, not return into its program: the
    fast path looks at STOP only when VERSION moved, so report() must move it."""
    block = SharedBlock()
    ctl = Control(block, 2, 100_000, strategy(), {1: "bare"})
    block.want("t.ran", np.int64, 2)  # points each task returned from
    arrays = block.allocate()
    ctl.bind(arrays)
    ran = arrays["t.ran"]
    ctl.add_task(1)
    ctl.add_task(1)

    def body(tid: int) -> None:
        ctl.me = tid
        ctl.wait_turn()
        while tid == 1 or not ran[1]:  # task 0 reports once task 1 has returned from a point
            ctl.point("bare")
            ran[tid] += 1
        ctl.report({"class": "test", "message": "stop"})
        os._exit(0)

    ctx = multiprocess.get_context("fork")
    tasks = [ctx.Process(target=body, args=(t,), daemon=True) for t in range(2)]
    try:
        for p in tasks:
            p.start()
        ctl.start(3)
        assert ctl.done.acquire(timeout=60)
        tasks[0].join(timeout=30)
        assert tasks[0].exitcode == 0 and tasks[1].exitcode is None  # task 1: parked in a point
        before = int(ran[1])
        ctl.sems[1].release()
        tasks[1].join(timeout=30)
        assert tasks[1].exitcode == 0
        assert int(ran[1]) == before
    finally:
        _reap(tasks)
