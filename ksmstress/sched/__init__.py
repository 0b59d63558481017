"""Scheduling: the controlled hand-off machinery and one strategy per file."""

from __future__ import annotations

from .base import Strategy
from .pct import PctStrategy
from .random import RandomStrategy
from .replay import ReplayStrategy

STRATEGIES = ("random", "pct")


def make_strategy(name: str, *, depth: int = 3, steps: int = 5000, schedule: bytes = b"") -> Strategy:
    """Build a strategy by name (`random`, `pct`, `replay`)."""
    if name == "random":
        return RandomStrategy()
    if name == "pct":
        return PctStrategy(depth=depth, steps=steps)
    if name == "replay":
        return ReplayStrategy(schedule)
    raise ValueError(f"unknown strategy {name!r}; expected random, pct or replay")
