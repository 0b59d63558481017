"""Scheduling: the controlled hand-off machinery and one strategy per file."""

from __future__ import annotations

from .base import Strategy
from .guided import GuidedStrategy
from .pct import PctStrategy
from .random import RandomStrategy
from .replay import ReplayStrategy

STRATEGIES = ("random", "pct")
# Strategies that are searches over many runs (ksmstress.explore), each run's schedule steered by the runs before it:
# `run --strategy` offers them and an artifact may name one (each run of a search is replayed like any other); not
# soak, bench's per-seed rows or mutate, which run one run per seed.
SEARCH_STRATEGIES = ("bounded", "coverage")
# Where control may change hands: `locks` at lock operations and explicit points only; `shared` also before every
# shared access the kernel makes without the lock that would serialise it (atomics, list links, page flag bits,
# lockless reads), as loom and Lincheck switch at every atomic. The schedule, and so a seed's meaning, depends on it.
GRANULARITIES = ("locks", "shared")
DEFAULT_GRANULARITY = "shared"
# A task's own granularity (the `granularity` key of [ksmd], [reclaim], [admin], [migrate] and each [[task]]) can
# only coarsen the run's for that task, finest first: `yields` also drops its lock operations and cond_resched as
# points, so it runs on until it sleeps or blocks (a non-preemptible stretch). Every schedule of the coarser
# scenario is one of the finer's (the dropped points decide "stay"), so a failure found there is a failure here;
# the shrinker coarsens the tasks a race does not need to interleave, which leaves fewer steps to read.
TASK_GRANULARITIES = ("shared", "locks", "yields")


def coarsest(*levels: str) -> str:
    """The coarsest of granularities (TASK_GRANULARITIES' order; "" is none)."""
    return max((g for g in levels if g), key=TASK_GRANULARITIES.index, default=DEFAULT_GRANULARITY)


def make_strategy(
    name: str, *, depth: int = 3, k: int = 1000, schedule: bytes = b"", tail: str = "stay"
) -> Strategy:
    """Build a strategy by name (`random`, `pct`, `replay`, or `guided`: `schedule` is then its prefix, followed by
    `tail`; a search's tool, not a user's choice, so not in STRATEGIES)."""
    if name == "random":
        return RandomStrategy()
    if name == "pct":
        return PctStrategy(depth=depth, k=k)
    if name == "replay":
        return ReplayStrategy(schedule)
    if name == "guided":
        return GuidedStrategy(schedule, tail)
    raise ValueError(f"unknown strategy {name!r}; expected random, pct, replay or guided")
