"""The `guided` strategy: follow a given decision prefix, then a fixed tail, and record what could have been chosen.

Why: a search over schedules (bounded exploration, a coverage-guided corpus) runs a schedule as "these first
decisions, then something cheap and deterministic", and needs to know, at every step, which tasks it could have
picked instead. The programs are deterministic for a seed, so a prefix taken from an earlier run of the same seed
is always runnable; a prefix decision that is not runnable is a bug of the search (or of determinism), reported
as `replay-diverged` as replay.py does.

After the prefix the tail decides:
- "stay": non-preemptive. Keep the running task if it is runnable and not yielding; otherwise the next runnable
  task after it in round-robin task-id order (the first runnable one at step 0). A schedule is then fully named by
  the steps where it departs from this tail.
- "random": a uniform draw from the shared PRNG, as RandomStrategy (no draw when one task is runnable).

Every step's runnable set goes into `ctl.runmask` (Control allocates it because `records_runnable` is set): bit t
for a runnable task t, and YIELDING (bit 63) when the running task yields or exits there. The task running at step
s is the decision of step s-1 (every decision is recorded; none at step 0), so the record and this array together
say, for each step, who ran, who could have run, and whether switching away was a preemption.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..failures import Failure

if TYPE_CHECKING:
    from .control import Control

TAILS = ("stay", "random")
YIELDING = 1 << 63  # runmask bit: the running task yields (a sleep, cond_resched or its exit) at this step
MAX_TASKS = 63  # the runnable set is a bitmask below YIELDING


def stay_pick(runnable: list[int], current: int, yielding: bool) -> int:
    """The non-preemptive choice: the running task goes on unless it yields or cannot; else the next runnable task
    after it in round-robin task-id order (`runnable` is sorted; `current` is -1 before the first decision)."""
    if not yielding and current in runnable:
        return current
    for t in runnable:
        if t > current:
            return t
    return runnable[0]


def decode_masks(runnable: bytes) -> np.ndarray:
    """A RunResult's `runnable` bytes as one uint64 per step (bit t: task t runnable; YIELDING: a yielding step)."""
    return np.frombuffer(runnable, dtype=np.uint64)


def mask_tasks(mask: int) -> list[int]:
    """The runnable task ids a step's mask names, sorted."""
    return [t for t in range(MAX_TASKS) if mask >> t & 1]


class GuidedStrategy:
    name = "guided"
    records_runnable = True  # Control allocates ctl.runmask for it

    def __init__(self, prefix: bytes = b"", tail: str = "stay") -> None:
        if tail not in TAILS:
            raise ValueError(f"unknown tail {tail!r}; expected one of {', '.join(TAILS)}")
        self.prefix = bytes(prefix)  # set before the task processes fork: every one of them has it
        self.tail = tail

    def setup(self, ctl: Control) -> None:
        pass

    def on_new_task(self, ctl: Control, tid: int) -> None:
        pass

    def pick(self, ctl: Control, runnable: list[int], current: int, step: int, yielding: bool) -> int:
        mask = 0
        for t in runnable:
            mask |= 1 << t
        ctl._runmask[step] = mask | YIELDING if yielding else mask
        if step < len(self.prefix):
            want = self.prefix[step]
            if want not in runnable:
                raise Failure(
                    "replay-diverged",
                    f"guided prefix diverged at step {step}: task {want} is not runnable {runnable}",
                    {"step": step, "recorded": want, "runnable": runnable},
                )
            return want
        if self.tail == "stay":
            return stay_pick(runnable, current, yielding)
        if len(runnable) == 1:
            return runnable[0]
        return runnable[ctl.prng.below(len(runnable))]
