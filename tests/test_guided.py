"""The guided strategy: a prefix is followed, the tails decide as specified, the runnable masks are the sets the
scheduler saw, and a prefix that cannot be followed is reported."""

from __future__ import annotations

import os

import pytest

from ksmstress.arena import SharedBlock
from ksmstress.catalog import shipped_dir
from ksmstress.failures import Failure
from ksmstress.runner import run_one
from ksmstress.scenario import load
from ksmstress.sched import make_strategy
from ksmstress.sched.control import CLEAN, FAILED, Control
from ksmstress.sched.guided import YIELDING, decode_masks, mask_tasks

from .harness import task_processes

Y = YIELDING


def _scenario(name: str):
    return load(os.path.join(str(shipped_dir()), f"{name}.toml"))


def _block_wake(prefix: bytes) -> tuple[bytes, list[int], dict | None]:
    """Two real processes under a bare Control: task 0 passes a point, blocks on lock 5 and, once woken, yields;
    task 1 passes a point, wakes lock 5 and passes another. Returns (schedule, masks, failure)."""
    block = SharedBlock()
    ctl = Control(block, 2, 1000, make_strategy("guided", schedule=prefix), {1: "t"})
    ctl.bind(block.allocate())
    ctl.add_task(1)
    ctl.add_task(1)

    def task0() -> None:
        ctl.point("a")
        ctl.prepare_block(5)
        ctl.block(5, "b")
        ctl.point("e", yielding=True)

    def task1() -> None:
        ctl.point("c")
        ctl.wake(5)
        ctl.point("d")

    with task_processes(ctl, [task0, task1]):
        try:
            ctl.start(1)
        except Failure as f:
            return b"", [], f.to_dict()
        assert ctl.done.acquire(timeout=30)
        assert ctl.outcome in (CLEAN, FAILED)
        return ctl.schedule(), [int(m) for m in decode_masks(ctl.runnable_masks())], ctl.failure()


def test_masks_are_the_runnable_sets_step_by_step():
    """Derived by hand from the two bodies: a blocked task leaves the mask until woken, an exit yields."""
    sched, masks, failure = _block_wake(b"")
    assert failure is None
    # step: 0 start, 1 a, 2 b (0 blocked), 3 c, 4 d (0 woken), 5 exit of 1, 6 e (yield)
    assert list(sched) == [0, 0, 1, 1, 1, 0, 0]
    assert masks == [0b11, 0b11, 0b10, 0b10, 0b11, 0b01 | Y, 0b01 | Y]


def test_prefix_is_followed_then_stay():
    """Preempt task 0 at its first point: task 1 runs on to its exit, then 0 blocks with nobody to wake it."""
    sched, masks, failure = _block_wake(bytes([0, 1]))
    assert list(sched[:2]) == [0, 1]
    assert failure is not None and failure["class"] == "deadlock"
    assert masks[:5] == [0b11, 0b11, 0b11, 0b11, 0b01 | Y]


def test_a_prefix_decision_not_runnable_is_replay_diverged():
    _sched, _masks, failure = _block_wake(bytes([0, 0, 0]))  # step 2: task 0 is blocked
    assert failure is not None and failure["class"] == "replay-diverged"
    assert failure["details"]["step"] == 2 and failure["details"]["runnable"] == [1]
    _sched, _masks, failure = _block_wake(bytes([7]))  # step 0, in ctl.start
    assert failure is not None and failure["class"] == "replay-diverged"


def _stay(runnable: list[int], current: int, yielding: bool) -> int:
    """The stay tail, restated: keep a runnable non-yielding task, else round-robin after it."""
    if current in runnable and not yielding:
        return current
    later = [t for t in runnable if t > current]
    return later[0] if later else runnable[0]


def test_stay_tail_and_prefix_on_a_scenario():
    sc = _scenario("scan-exit-race")
    base = run_one(sc, 4, "guided")
    assert base.verdict == "clean" and base.strategy == "guided"
    masks = [int(m) for m in decode_masks(base.runnable)]
    assert len(masks) == len(base.schedule) == base.steps + 1
    for s, d in enumerate(base.schedule):
        run = mask_tasks(masks[s] & ~Y)
        assert d in run
        assert d == _stay(run, base.schedule[s - 1] if s else -1, bool(masks[s] & Y)), s
    # a preemption where another task could run, then the stay tail again from there
    s = next(i for i in range(1, len(masks)) if len(mask_tasks(masks[i] & ~Y)) > 1 and not masks[i] & Y)
    other = next(t for t in mask_tasks(masks[s]) if t != base.schedule[s])
    prefix = base.schedule[:s] + bytes([other])
    res = run_one(sc, 4, "guided", schedule=prefix)
    assert res.schedule[: s + 1] == prefix and res.schedule != base.schedule
    got = [int(m) for m in decode_masks(res.runnable)]
    assert got[:s] == masks[:s]
    for i in range(s + 1, len(res.schedule)):
        assert res.schedule[i] == _stay(mask_tasks(got[i] & ~Y), res.schedule[i - 1], bool(got[i] & Y)), i


def test_random_tail_draws_as_the_random_strategy():
    sc = _scenario("scan-exit-race")
    for seed in (1, 2):
        r = run_one(sc, seed, "random")
        g = run_one(sc, seed, "guided", tail="random")
        assert g.schedule == r.schedule and g.verdict == r.verdict
        assert r.runnable == b"" and len(g.runnable) == 8 * len(g.schedule)


def test_a_diverging_prefix_in_a_run_is_reported():
    sc = _scenario("scan-exit-race")
    base = run_one(sc, 4, "guided")
    masks = [int(m) for m in decode_masks(base.runnable)]
    s = len(masks) // 2
    absent = next(t for t in range(8) if not masks[s] >> t & 1)  # a task blocked, exited or never used
    res = run_one(sc, 4, "guided", schedule=base.schedule[:s] + bytes([absent]))
    assert res.failure is not None and res.failure["class"] == "replay-diverged"
    assert res.failure["details"]["step"] == s


def test_unknown_tail_is_refused():
    with pytest.raises(ValueError, match="tail"):
        make_strategy("guided", tail="sideways")
