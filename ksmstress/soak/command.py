"""`ksmstress soak`'s options, its feeding policy over the worker pool, and the command.

- The parent loads and validates everything first (bad input, an unwritable --artifacts included, is exit 2
  before any process starts), then runs `--jobs` workers of ksmstress.pool. In controlled mode each worker gets
  its own CPU, so a run's hand-offs stay on one core and jobs do not compete; free mode leaves placement to the OS.
- Work item k is scenario k % S at the (k // S)-th seed of this shard's seed sequence (seeds.py), so a
  duration-bounded soak covers the scenarios evenly, and `--runs K` means K seeds per scenario as in `run`.
  Ranges of a few items go out when the total is known (fewer round trips), single items near the end and in
  duration mode (a range would outlive the deadline).
- It stops at the deadline, at the first failure (unless --keep-going), when all work is done, or on Ctrl-C or
  SIGTERM; an interrupted soak still prints its summary so far and exits 130 (SIGINT) or 143 (SIGTERM).

`--shard I/N` keeps the seeds s (counting up from `--seed`) with s % N == I - 1, so N machines given the same
`--seed` and shards 1/N..N/N cover disjoint seeds.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from .. import argtypes, cpus, procs
from ..bugs import validate
from ..explain import autoshrink
from ..options import EXIT_CLEAN, EXIT_FAILURE, add_run_options
from ..pool import Pool
from ..progress import Progress, fmt_duration
from ..report import check_artifact_dir
from ..scenario import ScenarioError, every, load, resolve
from .item import Plan, run_item
from .seeds import SeedSpace
from .summary import Tally, by_class, print_summary, summary_dict

DEFAULT_DURATION = 600.0  # neither --duration nor --runs: the example, 10m
LOG_EVERY = 10.0  # seconds between `soak.progress` events under -v

log = structlog.get_logger("ksmstress")


class Soak:
    """The parent's side: which items go out next, when to stop, and the tally of what came back."""

    def __init__(
        self, plan: Plan, jobs: int, total: int | None, duration: float | None, keep_going: bool, progress: Progress
    ) -> None:
        self.plan, self.total, self.duration, self.keep_going = plan, total, duration, keep_going
        self.progress = progress
        # controlled: one CPU per job (two jobs on one core would share its hand-offs); free: the OS places them
        self.cpus: list[int | None] = list(cpus.spread(jobs)) if plan.mode == "controlled" else [None] * jobs
        if total is not None:
            self.cpus = self.cpus[:total]
        self.jobs = len(self.cpus)
        self.next_k = 0
        self.tally = Tally(time.monotonic())
        self.logged = time.monotonic()
        self.pool = Pool(functools.partial(run_item, plan), self.cpus, name="ksmstress-soak")

    @property
    def interrupted(self) -> int | None:
        """SIGINT or SIGTERM, if one stopped the soak."""
        return self.pool.interrupted

    @property
    def errors(self) -> list[str]:
        return self.pool.errors

    def _expired(self) -> bool:
        return self.duration is not None and self.tally.wall() >= self.duration

    def _next(self) -> tuple[int, int] | None:
        """The next range of items for a worker that asks, or None: the deadline passed or all work is out."""
        if self._expired() or (self.total is not None and self.next_k >= self.total):
            return None
        n = 1 if self.total is None else max(1, min(8, (self.total - self.next_k) // (4 * self.jobs)))
        start, self.next_k = self.next_k, self.next_k + n
        return start, self.next_k

    def _row(self, row: dict[str, Any]) -> None:
        self.tally.add(row)
        log.debug("soak.run", scenario=row["scenario"], seed=row["seed"], verdict=row["verdict"], job=row["job"])
        if row["verdict"] == "failure":
            log.info("failure", scenario=row["scenario"], seed=row["seed"], cls=row["cls"], artifact=row["artifact"],
                     replay=row["replay"])
            rep = f" ({row['reproduced']})" if row.get("reproduced") else ""
            self.progress.note(
                f"FAILURE {row['cls']} in {row['scenario']} seed {row['seed']}{rep}: "
                f"{row['message']}\n  replay: {row['replay']}"
            )
            if not self.keep_going:
                self.pool.stop()
        elif row["verdict"] == "budget":  # the scenario's size, not the model: said once per scenario, as an error
            msg = (f"{row['scenario']} seed {row['seed']}: max_steps used up while its programs were still "
                   f"completing operations; raise max_steps in {row['path']} (not a model failure)")
            if not any(e.startswith(f"{row['scenario']} seed ") for e in self.errors):
                self.errors.append(msg)
                self._error(msg)
        self._tick()

    def _tick(self) -> None:
        if self._expired():
            self.pool.stop()
        self.progress.update(self.tally)
        if time.monotonic() - self.logged >= LOG_EVERY:
            self.logged = time.monotonic()
            t = self.tally
            log.info("soak.progress", runs=t.runs, steps=t.steps, failures=len(t.failures), wall=round(t.wall(), 1))

    def _error(self, msg: str) -> None:
        self.progress.note(f"ksmstress soak: {msg}")

    def run(self) -> Tally:
        self.pool.run(self._next, self._row, self._tick, self._error)
        self.progress.finish(self.tally)
        return self.tally


def shrink_failures(tally: Tally, seconds: float, timeout: float) -> None:
    """--shrink: each failure class's shortest failing run (the one its summary row names) shrunk in turn, after
    the workers are done; its row gets `shrunk` (the outcome, or `error`)."""
    for cls, d in by_class(tally.failures).items():
        row = d["best"]
        print(f"ksmstress soak: shrinking the {cls} of {row['scenario']} seed {row['seed']} "
              f"(at most {seconds:.0f} s)", file=sys.stderr, flush=True)
        sh = autoshrink.try_shrink(Path(row["artifact"]), seconds, timeout,
                                   lambda msg: log.info("shrink", progress=msg))
        row["shrunk"] = sh.to_dict() if isinstance(sh, autoshrink.Shrunk) else {"error": sh}
        if isinstance(sh, autoshrink.Shrunk):
            row["shrunk"]["line"] = sh.line()


def cmd_soak(a: argparse.Namespace) -> int:
    bugs = validate(a.bug)
    if a.shrink and a.mode == "free":
        raise ScenarioError("--shrink: expected --mode controlled (a free-mode run has no schedule to shrink)")
    paths = resolve(a.scenario, a.scenario_dir) if a.scenario else every(a.scenario_dir)
    if not paths:
        raise ScenarioError("ksmstress: no scenarios found (none shipped with this install); name scenario files")
    scenarios = tuple(load(p) for p in paths)  # every file validated before any process starts
    artifacts = check_artifact_dir(a.artifacts)  # and the place its failures go
    runs = a.soak_runs
    duration = None if runs else (a.duration or DEFAULT_DURATION)
    space = SeedSpace(a.seed, len(scenarios), *a.shard)
    plan = Plan(scenarios, space, a.strategy, tuple(sorted(bugs)), a.pct_depth, a.timeout, a.mode, artifacts, a.reruns,
                a.granularity)
    total = runs * len(scenarios) if runs else None
    progress = Progress(total, duration)
    soak = Soak(plan, a.jobs, total, duration, a.keep_going, progress)
    bound = f"{runs} seed(s) per scenario" if runs else f"{fmt_duration(duration or 0)}"
    where = ", ".join(str(c) for c in soak.cpus) if a.mode == "controlled" else "any"
    print(
        f"ksmstress soak: {len(scenarios)} scenario(s), seeds from {space.first} step {space.shards} "
        f"(--seed {a.seed} --shard {a.shard[0]}/{a.shard[1]}), {bound}, {soak.jobs} job(s) on CPU(s) {where}, "
        f"{a.mode} {a.strategy}"
        + (f", bugs {','.join(sorted(bugs))}" if bugs else "")
        + (", keep going" if a.keep_going else ", stop at the first failure"),
        file=sys.stderr,
        flush=True,
    )
    log.info("soak.start", scenarios=[sc.name for sc in scenarios], jobs=soak.jobs, mode=a.mode,
             strategy=a.strategy, bugs=sorted(bugs), seed=a.seed, shard=f"{a.shard[0]}/{a.shard[1]}")
    soak.run()
    if a.shrink and soak.interrupted is None and soak.tally.failures:
        soak.tally.stopped = time.monotonic()
        shrink_failures(soak.tally, a.shrink_seconds, a.timeout)
    log.info("soak.end", runs=soak.tally.runs, steps=soak.tally.steps, failures=len(soak.tally.failures),
             interrupted=soak.interrupted is not None, wall=round(soak.tally.wall(), 1))
    setup = {
        "jobs": soak.jobs,
        "cpus": soak.cpus,
        "mode": a.mode,
        "strategy": a.strategy,
        "bugs": sorted(a.bug),
        "seed": a.seed,
        "shard": f"{a.shard[0]}/{a.shard[1]}",
        "scenarios": [sc.name for sc in scenarios],
    }
    d = summary_dict(soak.tally, setup, soak.interrupted is not None, soak.errors)
    if a.json:
        print(json.dumps(d, sort_keys=True))
    else:
        print_summary(d)
    sys.stdout.flush()
    if soak.interrupted is not None:
        print("ksmstress: interrupted", file=sys.stderr)
        return procs.exit_status(soak.interrupted)
    return EXIT_FAILURE if d["verdict"] == "failure" else EXIT_CLEAN


def add_parser(sub: Any) -> None:
    s = sub.add_parser("soak", help="many seeds across scenarios in parallel jobs, with a summary by failure class")
    s.add_argument("scenario", nargs="*", help="scenario files or shipped names (default: every shipped scenario)")
    bound = s.add_mutually_exclusive_group()
    bound.add_argument(
        "--duration",
        type=argtypes.duration,
        default=None,
        metavar="TIME",
        help="wall-clock budget: 90s, 10m, 1h (default 10m)",
    )
    bound.add_argument(
        "--runs",
        dest="soak_runs",
        type=argtypes.positive_int,
        default=None,
        metavar="K",
        help="seeds per scenario instead of a duration",
    )
    s.add_argument(
        "--jobs",
        type=argtypes.positive_int,
        default=len(cpus.allowed()),
        help="parallel worker processes (controlled: at most one per CPU)",
    )
    add_run_options(s, reruns=5)
    s.add_argument("--keep-going", action="store_true", help="collect every failure instead of stopping at the first")
    s.add_argument(
        "--shard",
        type=argtypes.shard,
        default=(1, 1),
        metavar="I/N",
        help="run only the seeds s with s %% N == I-1 (a CI matrix of N machines covers disjoint seeds)",
    )
    s.add_argument("--seed", type=argtypes.seed, default=0, help="base seed (default 0)")
    s.add_argument("--json", action="store_true", help="print one machine-readable summary instead of the table")
    autoshrink.add_options(s)
    s.set_defaults(fn=cmd_soak)
