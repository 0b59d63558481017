"""The `replay` strategy: follow a recorded schedule, and say so the moment the run departs from it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..failures import Failure

if TYPE_CHECKING:
    from .control import Control


_LEN = 0  # ctl.strat cell: the recorded schedule's length (the decisions themselves are in ctl.replay)


class ReplayStrategy:
    name = "replay"

    def __init__(self, schedule: bytes) -> None:
        self.schedule = schedule

    def setup(self, ctl: Control) -> None:
        n = min(len(self.schedule), len(ctl.replay))
        ctl.replay[:n] = list(self.schedule[:n])
        ctl.strat[_LEN] = n

    def on_new_task(self, ctl: Control, tid: int) -> None:
        pass

    def pick(self, ctl: Control, runnable: list[int], current: int, step: int, yielding: bool) -> int:
        if step >= int(ctl.strat[_LEN]):
            raise Failure(
                "replay-diverged",
                f"replay diverged at step {step}: the recorded schedule ended",
                {"step": step, "runnable": runnable},
            )
        want = int(ctl.replay[step])
        if want not in runnable:
            raise Failure(
                "replay-diverged",
                f"replay diverged at step {step}: recorded task {want} is not runnable {runnable}",
                {"step": step, "recorded": want, "runnable": runnable},
            )
        return want
