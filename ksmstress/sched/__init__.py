"""Scheduling: the controlled hand-off machinery and one strategy per file."""

from __future__ import annotations

from .base import Strategy
from .pct import PctStrategy
from .random import RandomStrategy
from .replay import ReplayStrategy

STRATEGIES = ("random", "pct")
# Where control may change hands: `locks` at lock operations and explicit points only; `shared` also before every
# shared access the kernel makes without the lock that would serialise it (atomics, list links, page flag bits,
# lockless reads), as loom and Lincheck switch at every atomic. The schedule, and so a seed's meaning, depends on it.
GRANULARITIES = ("locks", "shared")
DEFAULT_GRANULARITY = "shared"


def make_strategy(name: str, *, depth: int = 3, k: int = 1000, schedule: bytes = b"") -> Strategy:
    """Build a strategy by name (`random`, `pct`, `replay`)."""
    if name == "random":
        return RandomStrategy()
    if name == "pct":
        return PctStrategy(depth=depth, k=k)
    if name == "replay":
        return ReplayStrategy(schedule)
    raise ValueError(f"unknown strategy {name!r}; expected random, pct or replay")
