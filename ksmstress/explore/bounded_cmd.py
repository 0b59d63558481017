"""`ksmstress run --strategy bounded`: its options, their checks, its progress line and how its outcome is told.

The command itself (artifacts, the failure report) is cli.py's `run`, which hands a bounded run here for what is
particular to it, so `run`'s usage, exit statuses and failure output stay one.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any

from .. import argtypes
from ..runner import RunResult
from .bounded import BoundedResult, Level

DEFAULT_PREEMPTIONS = 2


def add_bounded_options(p: argparse.ArgumentParser) -> None:
    """--preemptions, --shard and --seconds (meaningful with --strategy bounded only; --runs caps schedules)."""
    p.add_argument(
        "--preemptions",
        type=argtypes.non_negative_int,
        default=None,
        metavar="C",
        help=f"--strategy bounded: explore every schedule with at most C preemptions, fewest first "
        f"(default: {DEFAULT_PREEMPTIONS})",
    )
    p.add_argument(
        "--shard",
        type=argtypes.shard,
        default=None,
        metavar="I/N",
        help="--strategy bounded: explore only part I of N disjoint parts of the schedule tree (a CI "
        "matrix; the N parts together are the whole tree)",
    )
    p.add_argument(
        "--seconds",
        type=argtypes.positive_seconds,
        default=None,
        help="--strategy bounded: stop each scenario's exploration after this many seconds",
    )


def misuse(a: argparse.Namespace) -> str | None:
    """A bounded-only option without --strategy bounded, or an option bounded exploration cannot honour."""
    bounded = a.strategy == "bounded"
    if not bounded:
        for opt in ("preemptions", "shard", "seconds"):
            if getattr(a, opt) is not None:
                return f"--{opt}: only with --strategy bounded"
        return None
    if a.mode != "controlled":
        return "--mode: --strategy bounded explores controlled schedules only (expected --mode controlled)"
    if a.pct_depth is not None:
        return "--pct-depth: only with --strategy pct"
    return None


@dataclass
class Counts:
    """What the progress line shows for an exploration (progress.Counts): schedules as runs."""

    started: float = field(default_factory=time.monotonic)
    runs: int = 0
    steps: int = 0
    failures: list[Any] = field(default_factory=list)

    def wall(self) -> float:
        return time.monotonic() - self.started

    def add(self, res: RunResult) -> None:
        self.runs += 1
        self.steps += res.steps


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def level_line(lv: Level) -> str:
    return f"  {plural(lv.preemptions, 'preemption')}: {plural(lv.schedules, 'schedule')} ({lv.seconds:.1f} s)"


def head_line(sc_name: str, seed: int, bound: int, shard: tuple[int, int], bugs: list[str]) -> str:
    part = f", shard {shard[0] + 1}/{shard[1]}" if shard[1] > 1 else ""
    return f"{sc_name}: bounded exploration of seed {seed}, <= {plural(bound, 'preemption')}{part}" + (
        f", bugs {','.join(bugs)}" if bugs else ""
    )


def outcome_line(r: BoundedResult) -> str:
    """complete / incomplete / found, as the issue words them."""
    if r.failure is not None:
        return (
            f"  found with {plural(r.preemptions or 0, 'preemption')} after {plural(r.schedules, 'schedule')} "
            f"({r.seconds:.1f} s)"
        )
    if r.complete:
        return (
            f"complete: {plural(r.schedules, 'schedule')}, no failure with <= "
            f"{plural(r.bound, 'preemption')} ({r.seconds:.1f} s)"
        )
    why = {"schedules": "the --runs cap", "seconds": "--seconds"}.get(r.stopped, r.stopped)
    return f"incomplete: {plural(r.schedules, 'schedule')} explored, stopped by {why} ({r.seconds:.1f} s)"


def result_dict(r: BoundedResult, path: str) -> dict[str, Any]:
    """One scenario's exploration for --json."""
    return {
        "scenario": r.scenario,
        "path": path,
        "verdict": "failure" if r.failure is not None else "clean",
        "schedules": r.schedules,
        "runs": r.runs,
        "complete": r.complete,
        "stopped": r.stopped or None,
        "seconds": round(r.seconds, 3),
        "levels": [
            {"preemptions": lv.preemptions, "schedules": lv.schedules, "seconds": round(lv.seconds, 3)}
            for lv in r.levels
        ],
    }
