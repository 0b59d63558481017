"""The `random` strategy: at every scheduling point, a uniform choice among the runnable tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .control import Control


class RandomStrategy:
    name = "random"

    def setup(self, ctl: Control) -> None:
        pass

    def on_new_task(self, ctl: Control, tid: int) -> None:
        pass

    def pick(self, ctl: Control, runnable: list[int], current: int, step: int, yielding: bool) -> int:
        if len(runnable) == 1:
            return runnable[0]
        return runnable[ctl.prng.below(len(runnable))]
