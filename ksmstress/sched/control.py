"""The controlled scheduler: exactly one task process runs at a time, handing control on at scheduling points.

Every task is a real OS process parked on its own semaphore. At a scheduling point the running task asks the
strategy (through state in this shared control block) who runs next, records the decision, and if it is some
other task, releases that task's semaphore and parks on its own: one blocking hand-off, no spinning (spinning
on one CPU collapses to ~125 hand-offs/s). A task blocked on an emulated lock is not runnable until the lock's
release wakes it; if nothing is runnable the run ends in a `deadlock` report with the wait-for cycle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import multiprocess
import numpy as np

from ..arena import NO_GUARD, SharedBlock
from ..failures import Failure
from .base import Strategy
from .fastpoint import random_point
from .guided import MAX_TASKS
from .prng import BLOCK, SharedPrng

UNUSED, RUNNABLE, BLOCKED, EXITED, RESERVED = 0, 1, 2, 3, 4  # a task slot's state (ctl.state)
NO_LOCK = -1  # ctl.wait of a task that waits for no lock

# meta cells. A hand-off reads and writes only the first five, through one memoryview, on one cache line:
# the step, the shared PRNG's two cells (meta[1:3] are its _STATE and _USED, viewed as uint64), STOP, and VERSION,
# which changes whenever a parked task must look again (task states, a PRNG block refill by fastpoint, a stop).
# HANDOFFS is free mode's: controlled mode reads who runs and how many hand-offs there were from the record
# (Control.current, Control.handoffs), so a hand-off writes neither.
STEP, PRNG_CELLS, STOP, VERSION = 0, 1, 3, 4
OUTCOME, HANDOFFS, NBLOCKED, FAIL_LEN = 5, 6, 7, 8
PROGRESS, PROGRESS_MARK, MARKED = 9, 10, 11  # operations the programs completed; their count at 3/4 of max_steps
MARK_AT = 0.75  # where the budget check takes its snapshot of PROGRESS
assert (STEP, PRNG_CELLS, STOP, VERSION) == (0, 1, 3, 4)  # fastpoint's cells
RUNNING, CLEAN, FAILED = 0, 1, 2

NARGS = 8
FAIL_BUF = 1 << 16
# A task at `yields` granularity (Control.coarsen) skips its non-yielding points, but never more than this many in
# a row: a loop that polls another task at such points (none in 2.6.33's paths modelled, but a mutant may make
# one) still hands control on, and the step budget still sees it.
ATOMIC_MOST = 1000


def _nothing() -> None:
    pass


class Control:
    """Shared scheduler state for one controlled run, plus the semaphores the processes park on."""

    def __init__(
        self, block: SharedBlock, ntasks: int, max_steps: int, strategy: Strategy, kind_names: dict[int, str]
    ) -> None:
        self.ntasks = ntasks
        self.max_steps = max_steps
        self.strategy = strategy
        self.kind_names = kind_names
        block.want("ctl.meta", np.int64, 16)
        block.want("ctl.state", np.int8, ntasks)
        block.want("ctl.wait", np.int64, ntasks)
        block.want("ctl.kind", np.int64, ntasks)
        block.want("ctl.arg", np.int64, (ntasks, NARGS))
        block.want("ctl.prio", np.int64, ntasks)
        block.want("ctl.strat", np.int64, 64)
        block.want("ctl.record", np.uint8, max_steps + 1)
        block.want("ctl.replay", np.uint8, max_steps + 1)
        block.want("ctl.prngbuf", np.uint64, BLOCK)
        block.want("ctl.fail", np.uint8, FAIL_BUF)
        # a strategy that records each step's runnable set (guided.py) gets an array for it; no other pays for it
        self.records_runnable = bool(getattr(strategy, "records_runnable", False))
        if self.records_runnable:
            if ntasks > MAX_TASKS:
                raise ValueError(f"the {strategy.name} strategy records runnable sets of at most {MAX_TASKS} tasks, "
                                 f"not {ntasks}")
            block.want("ctl.runnable", np.uint64, max_steps + 1)
        ctx = multiprocess.get_context("fork")
        # fork-context semaphores are unlinked from /dev/shm as soon as they are created
        self.sems = [ctx.Semaphore(0) for _ in range(ntasks)]
        self.done = ctx.Semaphore(0)
        self.me = -1
        self.guard = NO_GUARD  # one task runs at a time: nothing to make atomic
        # (blocked, wait, label) -> (message, details): the lock space's explain. Given this Control's arrays as
        # arguments rather than closing over it, so no reference cycle keeps a finished run's arena alive.
        self.explain_deadlock: Callable[..., tuple[str, dict[str, Any]]] | None = None
        self._switch: Callable[[str], None] | None = None  # the real point of a task at `yields` (coarsen)

    def bind(self, a: dict[str, np.ndarray]) -> None:
        self.meta = a["ctl.meta"]
        self.state = a["ctl.state"]
        self.wait = a["ctl.wait"]
        self.kind = a["ctl.kind"]
        self.arg = a["ctl.arg"]
        self.prio = a["ctl.prio"]
        self.strat = a["ctl.strat"]
        self.record = a["ctl.record"]
        self.replay = a["ctl.replay"]
        self.prng = SharedPrng(self.meta[PRNG_CELLS : PRNG_CELLS + 2].view(np.uint64), a["ctl.prngbuf"])
        self.fail_buf = a["ctl.fail"]
        self.runmask = a["ctl.runnable"] if self.records_runnable else np.zeros(0, np.uint64)
        self._runmask = memoryview(self.runmask)
        self.wait[:] = NO_LOCK
        # the hot path reads and writes through memoryviews: plain Python ints, ~5x cheaper than numpy scalars
        self._meta = memoryview(self.meta)
        self._state = memoryview(self.state)
        self._wait = memoryview(self.wait)
        self._record = memoryview(self.record)
        self._prio = memoryview(self.prio)
        self._strat = memoryview(self.strat)
        self._tids = range(self.ntasks)
        self._pick = self.strategy.pick
        self._post = [s.release for s in self.sems]  # bound once: the hand-off is the hot path
        self._park = [s.acquire for s in self.sems]
        self._seen_version = -1  # this process's cached runnable list is valid while VERSION stays the same
        self._limit = int(self.max_steps * MARK_AT)  # the next step at which budget_check looks
        self._runnable: list[int] = []
        # the running task's working copies of shared state (fastpoint): write back, write back and let go, and
        # "task states changed"; nothing to do for Control.point, which keeps everything shared
        self._publish: Callable[[], None] = _nothing
        self._leave: Callable[[], None] = _nothing
        self._stale: Callable[[], None] = _nothing
        self._install_point()

    def _install_point(self) -> None:
        """Under the `random` strategy, make `self.point` fastpoint's closure (the same decisions; a point that
        keeps the running task touches no shared memory but the record). Other strategies use Control.point."""
        from .random import RandomStrategy  # random.py imports this module (for type checking only)

        if type(self.strategy) is RandomStrategy:
            self.point, self._publish, self._leave, self._stale = random_point(self, RUNNABLE)  # type: ignore[method-assign]

    def coarsen(self, level: str) -> bool:
        """This task process runs at `level` (sched.TASK_GRANULARITIES): at `yields`, only its yielding points (a
        sleep, a wait) and its blocking on a lock hand control on; its other points (lock operations,
        cond_resched, shared accesses) decide "stay" without being points at all, so they add no step. Called by
        the task's own process before its body runs; the run's other tasks keep their points. True: a task's
        granularity means something under this scheduler (K.coarsen then drops its shared-access points)."""
        if level != "yields":
            return True
        real = self.point
        self._switch = real  # block() must still switch: a task waiting for a lock cannot stay
        skipped = 0

        def point(site: str, yielding: bool = False) -> None:
            nonlocal skipped
            if yielding or skipped >= ATOMIC_MOST:
                skipped = 0
                real(site, yielding)
            else:
                skipped += 1

        self.point = point  # type: ignore[method-assign]
        return True

    def release(self) -> None:
        """The run is over: drop fastpoint's closures, which hold this Control (a reference cycle). Left to the
        cycle collector, each run's shared mappings wait for a full collection, which a long-lived soak process
        (a pytest worker, `ksmstress run --runs N`) seldom makes once gc.freeze/unfreeze has aged everything: it
        grew by about 0.25 MB a run, and every fork copied the growth."""
        self.__dict__.pop("point", None)
        self._publish = self._leave = self._stale = _nothing

    def _refresh_runnable(self, site: str) -> None:
        """Rebuild this process's runnable list after a task state change; none runnable is a deadlock."""
        st = self._state
        self._seen_version = self._meta[VERSION]
        self._runnable = [t for t in self._tids if st[t] == RUNNABLE]
        if not self._runnable:
            self._deadlock(site)

    # -- names ------------------------------------------------------------------------------------------
    def label(self, tid: int) -> str:
        if tid < 0:
            return "runner"
        return f"{self.kind_names.get(int(self.kind[tid]), 'task')}#{tid}"

    def clock(self) -> tuple[int, str]:
        """(step, running task) for reports: deterministic, no pids or times."""
        self._publish()
        return int(self.meta[STEP]), self.label(self.me)

    # -- runner side -------------------------------------------------------------------------------------
    def add_task(self, kind: int, args: tuple[int, ...] = ()) -> int:
        """Register an initial task before the run starts (or a fork's child during it); -1 if none free."""
        free = np.flatnonzero(self.state == UNUSED)
        if not free.size:
            return -1
        tid = int(free[0])
        self.kind[tid] = kind
        self.arg[tid, :] = 0
        self.arg[tid, : len(args)] = args
        self.state[tid] = RUNNABLE
        self.meta[VERSION] += 1
        self._stale()
        return tid

    def start(self, seed: int) -> None:
        """Seed the PRNG, let the strategy set up, and grant the first task (step 0's decision)."""
        self.prng.seed(seed)
        self.strategy.setup(self)
        runnable = np.flatnonzero(self.state == RUNNABLE).tolist()
        first = self.strategy.pick(self, runnable, -1, 0, False)
        self.record[0] = first
        self.sems[first].release()

    @property
    def steps(self) -> int:
        self._publish()
        return int(self.meta[STEP])

    @property
    def outcome(self) -> int:
        return int(self.meta[OUTCOME])

    def failure(self) -> dict[str, Any] | None:
        n = int(self.meta[FAIL_LEN])
        if not n:
            return None
        return json.loads(bytes(self.fail_buf[:n]).decode())

    def schedule(self) -> bytes:
        return bytes(self.record[: self.steps + 1])

    def runnable_masks(self) -> bytes:
        """Each step's runnable set as recorded by the strategy (uint64 per step), empty if it records none."""
        if not self.records_runnable:
            return b""
        return self.runmask[: self.steps + 1].tobytes()

    def handoffs(self, since: int = 0) -> int:
        """Hand-offs from step `since` on: the steps whose decision differs from the one before (every decision is
        recorded, a hand-off is exactly a decision for another task), so the hot path counts nothing."""
        rec = self.record[since : self.steps + 1]
        return int(np.count_nonzero(rec[1:] != rec[:-1]))

    def current(self) -> int:
        """The task running now (for a report): the last hand-off's decision, at the last published step."""
        return int(self.record[int(self.meta[STEP])])

    # -- task side ---------------------------------------------------------------------------------------
    def wait_turn(self) -> None:
        """Park until granted; a stopped run ends the process here."""
        self.sems[self.me].acquire()
        if self._meta[STOP]:
            os._exit(0)

    def runnable(self) -> list[int]:
        st = self._state
        return [t for t in self._tids if st[t] == RUNNABLE]

    def point(self, site: str, yielding: bool = False) -> None:
        """A scheduling point: maybe hand control to another task. `yielding` marks a sleep / cond_resched.
        Replaced at bind by the closure `_install_point` makes (this is its specification, and what runs before
        bind)."""
        meta = self._meta
        step = meta[STEP] + 1
        meta[STEP] = step
        if step >= self._limit:
            self.budget_check(step, site)
        if meta[VERSION] != self._seen_version:
            self._refresh_runnable(site)
        me = self.me
        nxt = self._pick(self, self._runnable, me, step, yielding)
        self._record[step] = nxt
        if nxt != me:
            self._post[nxt]()
            self._park[me]()
            if meta[STOP]:
                os._exit(0)

    def progress(self) -> None:
        """A program completed an operation (or exited): the budget check tells a long run from a livelock by it.
        Not a scheduling point, and free mode may lose a count to a race: it is a signal, not a clock."""
        self._meta[PROGRESS] += 1

    def budget_check(self, step: int, site: str) -> None:
        """Reached at MARK_AT of max_steps (snapshot the progress count) and at max_steps: if the programs still
        completed operations in the last stretch the scenario only needs a larger budget (`budget-exhausted`, not
        a model failure: the key to raise is max_steps); if none did, the tasks are spinning: a `hang`."""
        meta = self._meta
        if step < self.max_steps:
            if not meta[MARKED]:
                meta[MARKED] = 1
                meta[PROGRESS_MARK] = meta[PROGRESS]
            self._limit = self.max_steps
            return
        done = int(meta[PROGRESS] - meta[PROGRESS_MARK])
        last = self.max_steps - int(self.max_steps * MARK_AT)
        details = {"step": step, "site": site, "task": self.label(self.me), "operations": done}
        if done > 0:
            raise Failure(
                "budget-exhausted",
                f"max_steps = {self.max_steps} scheduling points used up while the programs were still making "
                f"progress ({done} operations in the last {last}): raise max_steps",
                details,
            )
        raise Failure(
            "hang",
            f"no quiescence after {self.max_steps} scheduling points and no program completed an operation in the "
            f"last {last} (livelock) at {site}",
            details,
        )

    def prepare_block(self, lid: int) -> None:
        """The running task will wait for lock `lid`: not runnable until a release wakes it."""
        self._state[self.me] = BLOCKED
        self._wait[self.me] = lid
        self._meta[NBLOCKED] += 1
        self._meta[VERSION] += 1
        self._stale()

    def block(self, lid: int, site: str) -> None:
        """Switch away (the strategy cannot pick a blocked task) until woken and picked again."""
        (self._switch or self.point)(site)

    def wake(self, lid: int) -> None:
        """Make every task blocked on `lid` runnable again (they retry the acquire)."""
        if not self._meta[NBLOCKED]:
            return
        st, wait = self._state, self._wait
        for t in self._tids:
            if st[t] == BLOCKED and wait[t] == lid:
                st[t] = RUNNABLE
                wait[t] = NO_LOCK
                self._meta[NBLOCKED] -= 1
                self._meta[VERSION] += 1
                self._stale()
                self._woken(t)

    def wake_task(self, tid: int) -> None:
        """Make task `tid`, blocked on a lock, runnable again (an rwsem's hand-off: the lock is already its)."""
        st, wait = self._state, self._wait
        if st[tid] != BLOCKED:
            return
        st[tid] = RUNNABLE
        wait[tid] = NO_LOCK
        self._meta[NBLOCKED] -= 1
        self._meta[VERSION] += 1
        self._stale()
        self._woken(tid)

    def _woken(self, tid: int) -> None:
        """A woken task waits to be picked again: nothing to post when one task runs at a time."""

    def reserve(self) -> int:
        """Claim a task slot for a fork's child before the fork's scheduling points; -1 if none is left."""
        with self.guard:
            free = np.flatnonzero(self.state == UNUSED)
            if not free.size:
                return -1
            tid = int(free[0])
            self.state[tid] = RESERVED
            return tid

    def spawn(self, tid: int, kind: int, args: tuple[int, ...]) -> None:
        """Make a reserved slot a runnable task (its parked process starts the body when first picked)."""
        self.kind[tid] = kind
        self.arg[tid, :] = 0
        self.arg[tid, : len(args)] = args
        self.state[tid] = RUNNABLE
        self.meta[VERSION] += 1
        self._stale()
        self._leave()  # the strategy may draw from the shared PRNG
        self.strategy.on_new_task(self, tid)

    def exit_current(self) -> None:
        """The running task is done: hand control on for the last time, or end the run cleanly."""
        self._leave()
        self.state[self.me] = EXITED
        self.meta[VERSION] += 1
        runnable = np.flatnonzero(self.state == RUNNABLE).tolist()
        if not runnable:
            if (self.state == BLOCKED).any():
                self._deadlock("task exit")
            self.meta[OUTCOME] = CLEAN
            self.meta[STOP] = 1
            self.meta[VERSION] += 1
            self.done.release()
            return
        step = int(self.meta[STEP]) + 1
        self.meta[STEP] = step
        nxt = self.strategy.pick(self, runnable, self.me, step, True)
        self.record[step] = nxt
        self.sems[nxt].release()

    def report(self, failure: dict[str, Any]) -> None:
        """Publish a failure found by the running task and stop the run."""
        self._publish()
        data = json.dumps(failure, sort_keys=True).encode()[:FAIL_BUF]
        self.fail_buf[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        self.meta[FAIL_LEN] = len(data)
        self.meta[OUTCOME] = FAILED
        self.meta[STOP] = 1
        self.meta[VERSION] += 1
        self.done.release()

    def _deadlock(self, site: str) -> None:
        blocked = np.flatnonzero(self.state == BLOCKED).tolist()
        if self.explain_deadlock is not None:
            msg, details = self.explain_deadlock(blocked, self.wait, self.label)
        else:
            msg, details = f"tasks {blocked} blocked", {}
        raise Failure("deadlock", f"no runnable task at {site}: {msg}", details)
