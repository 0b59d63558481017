"""Minimise a failing artifact while its failure keeps its class and its site (CHESS's fewest preemptions first).

A schedule is taken as its deviations from a non-preemptive default (sched/follow.py): a learning run follows the
artifact's schedule strictly and logs every point where it deviates. Every candidate is a controlled run of a
subset of those deviations, so none is ever unrunnable, and the decisions a run actually took are a schedule the
strict replay follows exactly. Passes, each until the time budget runs out:

1. preemptions: delta debugging over the deviations that switch to another task;
2. switches: the same over every deviation left, which also cuts steps (a run stops at its failure: no step after
   it is ever kept);
3. programs: each [[task]]'s `count`, `ops`, `child_ops`, `max_forks` and `region` lowered, its script steps dropped
   one by one and their numbers (sleeps, waits) lowered, whole [[task]] tables dropped (the shrunk artifact carries
   the reduced scenario text); then 1 and 2 again.

A candidate is kept when it fails with the same class at the same site and is smaller: (preemptions, steps,
deviations) for the schedule passes, the programs' operations for the last.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
import tomllib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..report import artifact_scenario
from ..runner import RunResult, run_one
from ..scenario import ScenarioError, parse
from ..sched.control import Control
from ..sched.follow import Deviation, FollowStrategy
from .record import unnamed_file
from .tomlout import dumps

PROGRAM_KEYS = ("count", "ops", "child_ops", "max_forks")
PROGRAM_DEFAULTS = {"count": 1, "ops": 30, "child_ops": 15, "max_forks": 1}


def site_of(failure: dict[str, Any] | None) -> str:
    """Where a failure happened, for "the same failure": its site, else the walk, else the innermost function of
    its chain."""
    d = (failure or {}).get("details") or {}
    if d.get("site"):
        return str(d["site"])
    if d.get("walk"):
        return str(d["walk"])
    return str(d.get("chain", "")).split(" > ")[-1]


@dataclass
class Size:
    steps: int
    preemptions: int
    tasks: int
    ops: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass
class Candidate:
    deviations: list[Deviation]
    text: str
    res: RunResult
    preemptions: int

    def key(self) -> tuple[int, int, int]:
        return (self.preemptions, self.res.steps, len(self.deviations))


def program_ops(text: str) -> int:
    """The programs' size: every task's operations and script steps, times its count."""
    d = tomllib.loads(text)
    return sum(
        int(t.get("count", 1)) * (int(t.get("ops", 30)) + len(t.get("script", [])) + len(t.get("child_script", [])))
        for t in d.get("task", [])
    )


@dataclass
class Shrinker:
    art: dict[str, Any]
    path: Path
    seconds: float
    timeout: float = 60.0
    log: Callable[[str], None] = lambda _msg: None

    def __post_init__(self) -> None:
        sc = artifact_scenario(self.path, self.art)
        self.text = self.art["scenario"].get("text") or Path(sc.path).read_text()
        self.scenario_path = sc.path
        self.target = ((self.art.get("failure") or {}).get("class"), site_of(self.art.get("failure")))
        self.deadline = time.monotonic() + self.seconds
        self.runs = 0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    # -- one candidate -------------------------------------------------------------------------------------
    def attempt(
        self, deviations: list[Deviation], text: str, cap: int, schedule: bytes | None = None
    ) -> Candidate | None:
        """A controlled run of `deviations` (or, for the learning run, of `schedule` strictly) under the scenario
        `text`, at most `cap` steps; None when it does not fail the same way or the text is no scenario."""
        try:
            sc = parse(text, self.scenario_path)
        except ScenarioError:
            return None
        sc = dataclasses.replace(sc, max_steps=max(16, min(sc.max_steps, cap)))
        seen: dict[str, Control] = {}
        fd = unnamed_file()
        try:

            def follow(_st: Any, _k: Any, ctl: Control) -> None:
                strat = FollowStrategy(deviations, fd, schedule)
                ctl.strategy = strat  # type: ignore[assignment]
                ctl._pick = strat.pick
                seen["ctl"] = ctl

            self.runs += 1
            res = run_one(
                sc,
                self.art["seed"],
                self.art["strategy"],
                sorted(self.art["bugs"]),
                schedule=schedule or b"\0",  # a replay run; `follow` replaces its strategy before the first pick
                pct_depth=self.art.get("pct_depth"),
                timeout=min(self.timeout, max(5.0, self.left() + 5)),
                granularity=self.art["granularity"],
                observe=follow,
            )
            f = res.failure or {}
            if (f.get("class"), site_of(f)) != self.target:
                return None
            lines = os.pread(fd, os.fstat(fd).st_size, 0).decode().splitlines()
        finally:
            os.close(fd)
        taken = [(int(a), int(b), int(c)) for a, b, c in (line.split() for line in lines)]
        return Candidate(taken, text, res, FollowStrategy.preemptions(seen["ctl"]))

    def size(self, c: Candidate) -> Size:
        return Size(c.res.steps, c.preemptions, len(set(c.res.schedule)), program_ops(c.text))

    # -- the passes ----------------------------------------------------------------------------------------
    def run(self) -> tuple[Candidate, Candidate]:
        """(the original, as the learning run saw it; the smallest candidate found)."""
        first = self.attempt([], self.text, 1 << 62, schedule=self.art["schedule_bytes"])
        if first is None:
            raise ShrinkError("the artifact's failure does not reproduce under a controlled replay; nothing to shrink")
        best = self.reduce(first, switches_only=True)
        best = self.reduce(best, switches_only=False)
        before = best.text
        best = self.programs(best)
        if best.text != before:
            best = self.reduce(self.reduce(best, switches_only=True), switches_only=False)
        return first, best

    @staticmethod
    def _cap(c: Candidate) -> int:
        return 2 * c.res.steps + 1000

    def reduce(self, best: Candidate, switches_only: bool) -> Candidate:
        """Delta debugging over the deviations (only those that switch to another task, if asked): drop chunks,
        halving the chunk size, keeping every smaller candidate that still fails the same way."""

        def pool(c: Candidate) -> list[int]:
            return [j for j, (t, _n, to) in enumerate(c.deviations) if to != t or not switches_only]

        idx = pool(best)
        chunk = max(1, len(idx) // 2)
        while chunk >= 1 and self.left() > 0:
            i = 0
            while i < len(idx) and self.left() > 0:
                drop = set(idx[i : i + chunk])
                devs = [d for j, d in enumerate(best.deviations) if j not in drop]
                cand = self.attempt(devs, best.text, self._cap(best))
                if cand is not None and cand.key() < best.key():
                    best, idx = cand, pool(cand)
                    self.log(f"{best.preemptions} preemptions, {best.res.steps} steps, {len(idx)} deviations")
                else:
                    i += chunk
            chunk //= 2
        return best

    def programs(self, best: Candidate) -> Candidate:
        changed = True
        while changed and self.left() > 0:
            changed = False
            for text in _smaller_programs(best.text):
                if self.left() <= 0:
                    break
                cand = self.attempt(best.deviations, text, self._cap(best))
                if cand is not None and _program_key(cand) < _program_key(best):
                    best, changed = cand, True
                    self.log(f"programs: {program_ops(best.text)} operations, {best.res.steps} steps")
                    break
        return best


class ShrinkError(ValueError):
    """An artifact that cannot be shrunk (its failure does not reproduce): exit status 2."""


def _smaller_programs(text: str) -> list[str]:
    """Scenario texts one edit smaller than `text`, biggest cuts first."""
    d = tomllib.loads(text)
    tasks = d.get("task", [])
    out: list[dict[str, Any]] = []

    def with_task(i: int, t: dict[str, Any] | None) -> dict[str, Any]:
        new = dict(d)
        new["task"] = (
            [x for j, x in enumerate(tasks) if j != i]
            if t is None
            else [t if j == i else x for j, x in enumerate(tasks)]
        )
        return new

    for i, t in enumerate(tasks):
        if len(tasks) > 1:
            out.append(with_task(i, None))
        for key in PROGRAM_KEYS:
            v = int(t.get(key, PROGRAM_DEFAULTS[key]))
            low = 1 if key == "count" else 0
            for smaller in sorted({low, v // 2, v - 1}):
                if low <= smaller < v:
                    out.append(with_task(i, {**t, key: smaller}))
        for key in ("script", "child_script"):
            steps = list(t.get(key, []))
            for j in reversed(range(len(steps))):
                out.append(with_task(i, {**t, key: steps[:j] + steps[j + 1 :]}))
        for key in ("script", "child_script"):  # fewer pages, shorter sleeps and waits: fewer steps
            steps = list(t.get(key, []))
            for j, step in enumerate(steps):
                for fewer in _smaller_numbers(step):
                    out.append(with_task(i, {**t, key: [*steps[:j], fewer, *steps[j + 1 :]]}))
        region = int(t.get("region", 8))
        if region > 1:
            out.append(with_task(i, {**t, "region": region // 2}))
    return [dumps(x) for x in out]


def _smaller_numbers(step: str) -> list[str]:
    """A script step with its first number halved, then less one (`sleep:40` -> `sleep:20`, `sleep:39`)."""
    name, _, rest = step.partition(":")
    first, sep, tail = rest.partition(":")
    if not first.isdigit() or int(first) <= 1:
        return []
    n = int(first)
    return [f"{name}:{m}{sep}{tail}" for m in sorted({n // 2, n - 1}) if 1 <= m < n]


def _program_key(c: Candidate) -> tuple[int, int, int]:
    """Programs are smaller with fewer operations; at equal operations, a run with fewer preemptions, then fewer
    steps (shorter waits, fewer pages) is smaller."""
    return (program_ops(c.text), c.preemptions, c.res.steps)


def shrunk_artifact(art_path: Path, best: Candidate, before: Size, after: Size, seconds: float) -> dict[str, Any]:
    """The original artifact with the shrunk scenario text, schedule and failure: a normal artifact."""
    data = json.loads(art_path.read_text())
    data["scenario"] = {**data["scenario"], "text": best.text}
    data["steps"] = best.res.steps
    data["schedule_digest"] = best.res.schedule_digest
    data["schedule"] = base64.b64encode(zlib.compress(best.res.schedule, 9)).decode()
    data["failure"] = best.res.failure
    data["shrunk"] = {
        "from": str(art_path),
        "before": before.as_dict(),
        "after": after.as_dict(),
        "seconds": round(seconds, 1),
    }
    return data


def shrunk_path(art_path: Path) -> Path:
    stem = art_path.name[: -len(".json")] if art_path.name.endswith(".json") else art_path.name
    return art_path.with_name(f"{stem}-shrunk.json")
