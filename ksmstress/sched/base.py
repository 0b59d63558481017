"""The strategy interface: who runs next at a scheduling point.

A strategy keeps all of its state in the shared control block (through `ctl`), because the decision is taken
by whichever process is running at that point. It must be a pure function of that state and of the shared
PRNG, so the same seed gives the same schedule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .control import Control


class Strategy(Protocol):
    name: str

    def setup(self, ctl: Control) -> None:
        """Initialise strategy state in the control block (runner, before any task runs)."""

    def on_new_task(self, ctl: Control, tid: int) -> None:
        """A task became runnable for the first time (a fork's child)."""

    def pick(self, ctl: Control, runnable: list[int], current: int, step: int, yielding: bool) -> int:
        """Choose the next task among `runnable` (sorted task ids); `current` may or may not be in it."""
        ...
