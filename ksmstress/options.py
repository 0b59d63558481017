"""The options and exit statuses `run` and `soak` share, declared once so the two front doors cannot drift apart
in name, type, default or meaning."""

from __future__ import annotations

import argparse

from . import argtypes
from .catalog import ENV_DIRS
from .runner import MODES
from .sched import DEFAULT_GRANULARITY, GRANULARITIES, STRATEGIES

# every front door's exit statuses: clean, a failure found, a user's mistake, Ctrl-C
EXIT_CLEAN, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_run_options(p: argparse.ArgumentParser, reruns: int, searches: tuple[str, ...] = ()) -> None:
    """--strategy, --pct-depth, --granularity, --bug, --artifacts, --timeout, --mode and --reruns (default
    `reruns`); `searches`: the search strategies (sched.SEARCH_STRATEGIES) this command also offers."""
    p.add_argument(
        "--scenario-dir",
        action="append",
        default=[],
        metavar="DIR",
        help=f"look for scenario names here before the shipped ones (repeatable; also ${ENV_DIRS})",
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGIES + searches,
        default="random",
        help="scheduling strategy"
        + (" (bounded: every schedule of --seed with at most --preemptions preemptions, fewest first; coverage: a "
           "search over schedules guided by interleaving coverage)" if searches else "")
        + " (default: random)",
    )
    p.add_argument(
        "--pct-depth",
        type=argtypes.pct_depth,
        default=None,
        help="PCT depth d (default: each scenario's)",
    )
    p.add_argument(
        "--granularity",
        choices=GRANULARITIES,
        default=None,
        help="where control may change hands: locks (lock operations and explicit points) or shared (also before "
        "every shared access the kernel makes without a lock: atomics, list links, page flags); a seed's schedule "
        f"depends on it (default: each scenario's [sched] granularity, else {DEFAULT_GRANULARITY})",
    )
    p.add_argument("--bug", action="append", default=[], metavar="NAME", help="switch a bug variant on (repeatable)")
    p.add_argument("--artifacts", default="ksmstress-artifacts", help="directory for every failure's artifact")
    p.add_argument(
        "--timeout",
        type=argtypes.positive_seconds,
        default=120.0,
        help="wall-clock seconds per run before 'hang'",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="controlled",
        help="controlled: one task at a time, seeded and replayable; free: all at once on every CPU",
    )
    p.add_argument(
        "--reruns",
        type=argtypes.non_negative_int,
        default=reruns,
        help="free mode: reruns of each failing seed, for its reproduction rate",
    )
