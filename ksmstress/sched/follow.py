"""The `follow` strategy: a schedule as its deviations from a non-preemptive default. Used by `ksmstress shrink`.

The default at a scheduling point: the current task goes on if it can (runnable, not yielding); otherwise the next
runnable task after it in id order. A schedule is then the few points where it did something else, each keyed by
the task that was running and how many points that task had passed (its own program position, which removing
another deviation rarely moves), with the task to switch to. A shrink candidate drops deviations; a deviation whose
target cannot run is ignored, so every candidate runs to an outcome, and the decisions it actually took (the run's
record) are a schedule the strict `replay` strategy follows exactly.

With `schedule` set it follows a recorded step-by-step schedule strictly instead (a learning run), and either way
it writes every deviation it takes to `log_fd` ("task point target" lines): the runner reads them back.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .control import Control

_PREEMPTIONS = 0  # ctl.strat cell: switches away from a task that could have gone on
Deviation = tuple[int, int, int]  # (running task, its position (see pick), task switched to)
_SHIFT = 24  # a position: non-yielding points << _SHIFT | yields since the last of them


def default_pick(runnable: list[int], current: int, yielding: bool) -> int:
    """What a non-preemptive round-robin scheduler does: keep the task, or pass on to the next in id order."""
    if current in runnable and not yielding:
        return current
    later = [t for t in runnable if t > current]
    return later[0] if later else runnable[0]


class FollowStrategy:
    name = "follow"

    def __init__(self, deviations: list[Deviation], log_fd: int = -1, schedule: bytes | None = None) -> None:
        self.wanted = {(t, n): to for t, n, to in deviations}
        self.log_fd = log_fd
        self.schedule = schedule
        self.points: dict[int, int] = {}  # task -> points it passed: each process counts only its own

    def setup(self, ctl: Control) -> None:
        ctl.strat[_PREEMPTIONS] = 0

    def on_new_task(self, ctl: Control, tid: int) -> None:
        pass

    def pick(self, ctl: Control, runnable: list[int], current: int, step: int, yielding: bool) -> int:
        # a task's position: its non-yielding points, then its yields since the last of them. A wait loop (sleep,
        # cond_resched) yields as long as it waits, so a deviation keyed past it keeps its meaning when an earlier
        # deviation makes the wait shorter or longer
        pos = self.points.get(current, 0)
        n = pos + 1 if yielding else ((pos >> _SHIFT) + 1) << _SHIFT
        self.points[current] = n
        default = default_pick(runnable, current, yielding)
        if self.schedule is not None:
            want = self.schedule[step] if step < len(self.schedule) else default
        else:
            want = self.wanted.get((current, n), default)
        nxt = want if want in runnable else default
        if nxt != default and self.log_fd >= 0:
            os.write(self.log_fd, f"{current} {n} {nxt}\n".encode())
        if nxt != current and current in runnable and not yielding:
            ctl.strat[_PREEMPTIONS] += 1
        return nxt

    @staticmethod
    def preemptions(ctl: Control) -> int:
        """Switches that took the CPU from a task that could have gone on (neither blocked, exited nor yielding):
        CHESS's measure of a schedule's complexity."""
        return int(ctl.strat[_PREEMPTIONS])
