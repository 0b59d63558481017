"""mmap_sem as 2.6.33's rwsem: FIFO queue, writer preference, grants handed over at wake-up, and the deadlock a
queued writer makes of a recursive down_read, found by the controlled scheduler's deadlock detector.

Real processes under the controlled scheduler (random strategy, several seeds): the tasks wait for each other
through a shared word with yielding points, so every seed reaches the same lock situation by a different
interleaving of the waiting.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ksmstress.arena import SharedBlock
from ksmstress.failures import Failure
from ksmstress.sched import make_strategy
from ksmstress.sched.control import CLEAN, FAILED, Control
from ksmstress.sync import MMAP_SEM, Locks, LockSpace

from .harness import task_processes

CAP = 5_000  # yields a waiting body may spend before the test calls it stuck


def _run(seed: int, bodies: list[Callable[[Control, Locks, np.ndarray, LockSpace], None]]) -> tuple[Control, list]:
    """Run one body per task on one rwsem (mm[0].mmap_sem); returns the control and the shared log."""
    n = len(bodies)
    block = SharedBlock()
    ctl = Control(block, n, 200_000, make_strategy("random"), {1: "t"})
    space = LockSpace(block, {MMAP_SEM: 1}, n)
    block.want("test.log", np.int64, 64)
    a = block.allocate()
    ctl.bind(a)
    space.bind(a)
    log = a["test.log"]
    assert space.lid(MMAP_SEM, 0) == SEM
    for _ in range(n):
        ctl.add_task(1)
    ctl.explain_deadlock = space.explain

    def wrap(body: Callable[..., None]) -> Callable[[], None]:
        return lambda: body(ctl, Locks(space, ctl), log, space)

    with task_processes(ctl, [wrap(b) for b in bodies]):
        ctl.start(seed)
        assert ctl.done.acquire(timeout=60)
        assert ctl.outcome in (CLEAN, FAILED)
        return ctl, log[: int(log[0]) + 1].tolist()


def _wait(ctl: Control, cond: Callable[[], bool]) -> None:
    for _ in range(CAP):
        if cond():
            return
        ctl.point("wait", yielding=True)
    raise Failure("hang", "a test body waited too long")


def _note(log: np.ndarray, what: int) -> None:
    log[0] += 1
    log[int(log[0])] = what


SEM = 1  # the rwsem's lock id: mm[0].mmap_sem, after ksm_thread_mutex (checked in _run)


def _holder(ctl: Control, locks: Locks, log: np.ndarray, space: LockSpace) -> None:
    """Holds the sem for read until a writer and then two readers are queued behind it."""
    locks.down_read(SEM, "holder")
    _note(log, 1)
    _wait(ctl, lambda: int(space.q_len[SEM]) == 3)
    locks.up_read(SEM, "holder")


def _writer(ctl: Control, locks: Locks, log: np.ndarray, space: LockSpace) -> None:
    _wait(ctl, lambda: int(log[0]) >= 1)
    locks.down_write(SEM, "writer")
    _note(log, 2)
    # the readers queued behind the writer stay queued while it holds the sem
    _note(log, 10 + int(space.q_len[SEM]))
    locks.up_write(SEM, "writer")


def _reader(ctl: Control, locks: Locks, log: np.ndarray, space: LockSpace) -> None:
    _wait(ctl, lambda: int(space.q_len[SEM]) >= 1)  # the writer is queued
    locks.down_read(SEM, "reader")
    _note(log, 3)
    _note(log, 20 + int(space.readers[SEM]))  # both readers were granted by the writer's one up_write
    _wait(ctl, lambda: int(log[0]) >= 7)  # hold until the other reader has noted too
    locks.up_read(SEM, "reader")


@pytest.mark.parametrize("seed", range(4))
def test_a_reader_queues_behind_a_waiting_writer_and_readers_wake_together(seed: int) -> None:
    """Without writer preference the readers would take the sem beside the holder (log 3 before 2)."""
    ctl, log = _run(seed, [_holder, _writer, _reader, _reader])
    assert ctl.outcome == CLEAN, ctl.failure()
    events = log[1:]
    assert events[:3] == [1, 2, 12], events  # holder, then the writer (two readers still queued behind it)
    assert sorted(events[3:]) == [3, 3, 22, 22], events  # the two readers, both granted at the writer's release


def _recursive_reader(ctl: Control, locks: Locks, log: np.ndarray, space: LockSpace) -> None:
    """The shape of a fault taken while mmap_sem is held for read (a copy to user memory under down_read):
    down_read again once another thread's down_write has queued."""
    locks.down_read(SEM, "outer")
    _note(log, 1)
    _wait(ctl, lambda: int(space.q_len[SEM]) == 1)
    locks.down_read(SEM, "do_page_fault")  # queues behind the writer, which waits for our first read hold
    locks.up_read(SEM, "do_page_fault")
    locks.up_read(SEM, "outer")


def _munmapper(ctl: Control, locks: Locks, log: np.ndarray, space: LockSpace) -> None:
    _wait(ctl, lambda: int(log[0]) >= 1)
    locks.down_write(SEM, "sys_munmap")
    locks.up_write(SEM, "sys_munmap")


@pytest.mark.parametrize("seed", range(3))
def test_recursive_down_read_with_a_queued_writer_is_a_reported_deadlock(seed: int) -> None:
    ctl, _log = _run(seed, [_recursive_reader, _munmapper])
    f = ctl.failure()
    assert ctl.outcome == FAILED and f is not None, "the recursive down_read was granted past a queued writer"
    assert f["class"] == "deadlock", f
    assert f["details"]["cycle"] in (["t#0", "t#1", "t#0"], ["t#1", "t#0", "t#1"]), f
    blocked = f["details"]["blocked"]
    assert blocked["t#0"]["queued_behind"] == ["t#1"] and blocked["t#0"]["holds"] == ["mmap_sem"]
    assert blocked["t#1"]["queued_behind"] == []
    assert "down_read queued behind t#1 (writer)" in f["message"], f["message"]
    assert "rwsem holders: t#0" in f["message"], f["message"]
