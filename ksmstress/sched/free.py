"""Free mode: every task process runs at once on every CPU, and the OS interleaves them.

Not a strategy: there is no pick. The same model and the same lock words as controlled mode; what changes is the
waiter underneath:
- the guard is a real cross-process mutex (a multiprocess RLock), so a lock's check-and-take, an allocation and
  the kernel's atomic counters are atomic across processes;
- a task that must wait for a lock registers under the guard and sleeps on its own semaphore, which the releaser
  posts: blocking, never spinning, so a waiter does not burn a CPU another task needs;
- at each scheduling point the seeded chaos policy (sched/chaos.py) may yield or sleep to widen race windows.
No schedule is recorded (there is none to replay); progress is the step counter a watchdog in the runner reads.
"""

from __future__ import annotations

import os
import random
import time

import multiprocess

from ..arena import SharedBlock
from .base import Strategy
from .chaos import ChaosPolicy
from .control import (
    BLOCKED,
    CLEAN,
    EXITED,
    HANDOFFS,
    OUTCOME,
    RESERVED,
    RUNNABLE,
    RUNNING,
    STEP,
    STOP,
    Control,
)


class FreeControl(Control):
    """The free-running waiter: same task table and semaphores as Control, real concurrency."""

    def __init__(
        self,
        block: SharedBlock,
        ntasks: int,
        max_steps: int,
        strategy: Strategy,
        kind_names: dict[int, str],
        seed: int,
        chaos: ChaosPolicy,
    ) -> None:
        super().__init__(block, ntasks, max_steps, strategy, kind_names)
        self.guard = multiprocess.get_context("fork").RLock()
        self.seed = seed
        self.chaos = chaos
        self._rng: random.Random | None = None

    def _install_point(self) -> None:
        """Free mode keeps its own `point` (chaos, no pick): nothing to install."""

    def coarsen(self, level: str) -> bool:
        """Free mode's points decide nothing (every task runs at once; a point only injects chaos): a task's
        granularity shapes the controlled schedule alone, and every task keeps its chaos points."""
        return False

    def start(self, seed: int) -> None:
        """Every initial task starts at once."""
        for t in self.runnable():
            self.sems[t].release()

    def schedule(self) -> bytes:
        return b""

    def handoffs(self, since: int = 0) -> int:
        """The times a task slept on its semaphore (there is no record to count them from)."""
        return int(self._meta[HANDOFFS])

    def current(self) -> int:
        """Every task runs at once: none in particular (-1)."""
        return -1

    def point(self, site: str, yielding: bool = False) -> None:
        meta = self._meta
        step = meta[STEP] + 1  # racy increments lose a few counts: it is a progress signal, not a clock
        meta[STEP] = step
        if meta[STOP]:
            os._exit(0)
        if step >= self._limit:
            self.budget_check(step, site)
        rng = self._rng
        if rng is None:
            rng = self._rng = random.Random(f"{self.seed}:chaos:{self.me}")
        r = rng.random()
        c = self.chaos
        if yielding:
            time.sleep(0.0001)  # ksmd's sleep_millisecs, reclaim's pause, a waiting program: give the CPU away
        elif r < c.p_sleep:
            time.sleep(rng.random() * c.sleep_us * 1e-6)
        elif r < c.p_sleep + c.p_yield:
            os.sched_yield()

    def block(self, lid: int, site: str) -> None:
        self._meta[HANDOFFS] += 1
        self.sems[self.me].acquire()
        if self._meta[STOP]:
            os._exit(0)

    def _woken(self, tid: int) -> None:
        """The woken task is asleep on its semaphore: post it (Control.wake calls this under the guard)."""
        self.sems[tid].release()

    def spawn(self, tid: int, kind: int, args: tuple[int, ...]) -> None:
        with self.guard:
            self.kind[tid] = kind
            self.arg[tid, :] = 0
            self.arg[tid, : len(args)] = args
            self.state[tid] = RUNNABLE
        self.sems[tid].release()

    def exit_current(self) -> None:
        with self.guard:
            self._state[self.me] = EXITED
            live = [t for t in self._tids if self._state[t] in (RUNNABLE, BLOCKED, RESERVED)]
            if live and all(self._state[t] == BLOCKED for t in live):
                self._deadlock("task exit")
            if not live and self._meta[OUTCOME] == RUNNING:
                self._meta[OUTCOME] = CLEAN
                self._meta[STOP] = 1
                self.done.release()

    def report(self, failure: dict) -> None:
        with self.guard:
            if self._meta[OUTCOME] != RUNNING:
                return  # the first failure wins; the others are its echoes
            super().report(failure)
