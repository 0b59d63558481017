"""Minimise a failing artifact while its failure keeps its class and its site (CHESS's fewest preemptions first).

A schedule is taken as its deviations from a non-preemptive default (sched/follow.py): a learning run follows the
artifact's schedule strictly and logs every point where it deviates. Every candidate is a controlled run of a set
of deviations, so none is ever unrunnable, and the decisions a run actually took are a schedule the strict replay
follows exactly. Two tracks share the time budget:

1. the recorded schedule (40%), or the default schedule if that alone fails the same way (one run that spares
   the rest): first a quick pass (10%: every deviation in chunks down to an eighth, then as below), because a
   random schedule's stays are often needless all together and the greedy passes may settle elsewhere; then,
   from the recorded schedule again, delta debugging over the deviations that switch away from a task that could
   go on, then over every deviation left (a run stops at its failure: no step after it is ever kept); then the
   preemptions left moved to yields in chunks (`to_yields`), then each moved or dropped (`unpreempt`); the
   smaller of the two, then the scenario under its schedule, keeping an edit only when the carried-over schedule
   still fails and the run is smaller;
2. the scenario first (to 60%), then the schedule (to 85%; time left over goes to track 1's delta
   debugging, then to more sparse schedules): delta debugging over the scenario (see
   `smaller_scenarios`: granularity coarsened to `locks`, ksmd/reclaim/admin/migrate off, a [[task]] dropped,
   counts, ops, regions, patterns and script numbers lowered, a script's tail cut by halves and its steps
   dropped, swapping off), keeping every
   edit that still fails the same way under some schedule, and the faster ones (`faster_scenarios`: ksmd's batch
   raised to cover every page twice or lowered, reclaim resting between pages, a task's own granularity
   coarsened to `yields` or `locks`) only when the run is smaller;
   under the current schedule carried over to the new task ids, none, or a few dense random ones (a smaller
   program moves the points where the race's switches must fall); then the default schedule with a single
   switch at each of its points (from the last backwards), then sparse schedules from scratch (the default
   schedule with a few seeded random switches), each hit reduced, then the deviations of the best run again.

The smallest of the original and the two tracks by Candidate.key (preemptions beyond three, then steps) is then
polished in the last 15%: its preemptions moved to yields, then the scenario under its schedule; when it still has
more than three, each preemption traded for random choices at yields (`reorder_turns`: what a preemption buys is
often only that one daemon's turn comes before another's), then the default schedule of that final scenario with
one switch at each point (`single_switches`, plain switches before staying ones): a switch that suffices on the
smallest program may not on the larger ones the tracks searched (wrprotect-check-before-clear's 6-op program fails
after one preemption; its 9-op one kept 4). A candidate
counts only when it fails with the same class at the same site (object numbers aside: `page[0]` and `page[1]`
are one code site). The shrunk artifact carries the reduced scenario text and its
granularity.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import json
import os
import re
import time
import tomllib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..report import artifact_scenario
from ..runner import RunResult, run_one
from ..scenario import ScenarioError, parse
from ..sched import DEFAULT_GRANULARITY, TASK_GRANULARITIES, coarsest
from ..sched.control import Control
from ..sched.follow import _SHIFT, Deviation, FollowStrategy, default_pick
from .record import unnamed_file
from .tomlout import dumps

RECLAIM_REST = 8  # faster_scenarios: reclaim's rest after each page, in yields
PROGRAM_KEYS = ("count", "ops", "child_ops", "max_forks", "region", "patterns")
PROGRAM_DEFAULTS = {"count": 1, "ops": 30, "child_ops": 15, "max_forks": 1, "region": 8, "patterns": 2}
PROGRAM_LOWEST = {"count": 1, "region": 1, "patterns": 1}
PROGRAM_TRIES = (3, 8)  # dense random schedules tried per smaller scenario (by round) when the carried ones fail
DENSE_RATES = (0.05, 0.2, 0.5)  # their switches per contested point
UNPREEMPT_MOST = 40  # unpreempt's limit: more preemptions are delta debugging's to cut, at fewer runs each
QUICK = 0.1  # track 1's quick pass (big chunks of the schedule, then moves): a random schedule's stays are
# often needless all together, and the greedy one-by-one passes may settle in a worse schedule
POLISH = 0.15  # the budget's share kept for polishing the winner (unpreempt, then the scenario under its schedule)
PREEMPTION_BOUND = 3  # CHESS: most concurrency bugs need at most two or three preemptions
_STAY_TASK, _STAY_LEFT = 8, 9  # ctl.strat cells of SwitchStay (FollowStrategy uses cell 0)
TURN_TRIES = 8  # reorder_turns: random orders of turns tried per preemption dropped
STAYS = 8  # yields a task switched to by SwitchStay keeps the CPU through
_INDEX = re.compile(r"\[\d+\]")


def site_of(failure: dict[str, Any] | None) -> str:
    """Where a failure happened, for "the same failure": its site, else the walk, else the innermost function of
    its chain."""
    d = (failure or {}).get("details") or {}
    if d.get("site"):
        return str(d["site"])
    if d.get("walk"):
        return str(d["walk"])
    return str(d.get("chain", "")).split(" > ")[-1]


def failure_key(failure: dict[str, Any] | None) -> tuple[Any, str]:
    """(class, site without object numbers): a lockdep site names `page[0].page_lock`, and the same inversion on
    `page[1]` is the same bug at the same code site."""
    return (failure or {}).get("class"), _INDEX.sub("", site_of(failure))


class SparseFollow(FollowStrategy):
    """`follow` plus seeded random switches at a rate of `rate` per scheduling point where another task could run:
    a schedule with few preemptions that is not the default's. The switches it makes are logged like any other
    deviation, so a hit becomes a plain deviation list. Each decision hashes (salt, task, position) rather than
    drawing from a PRNG, because every task process picks with its own copy of the strategy."""

    def __init__(
        self, deviations: list[Deviation], log_fd: int, salt: int, rate: float, yields_only: bool = False
    ) -> None:
        super().__init__(deviations, log_fd)
        self.salt, self.limit = salt, int(min(1.0, rate) * (1 << 32))
        self.yields_only = yields_only  # switch only where the running task yields or cannot go on: no preemption

    def pick(self, ctl: Control, runnable: list[int], current: int, step: int, yielding: bool) -> int:
        pos = self.points.get(current, 0)
        n = pos + 1 if yielding else ((pos >> _SHIFT) + 1) << _SHIFT  # the position FollowStrategy.pick will use
        free = yielding or current not in runnable
        if (current, n) not in self.wanted and len(runnable) > 1 and (free or not self.yields_only):
            h = hashlib.blake2b(f"{self.salt}:{current}:{n}".encode(), digest_size=8).digest()
            if int.from_bytes(h[:4], "little") < self.limit:
                default = default_pick(runnable, current, yielding)
                others = [t for t in runnable if t not in (default, current)]
                if others:
                    self.wanted[(current, n)] = others[int.from_bytes(h[4:], "little") % len(others)]
        return super().pick(ctl, runnable, current, step, yielding)


class SwitchStay(FollowStrategy):
    """`follow` in which the task each of `switches` switches to stays on the CPU through up to `stays` of its
    yields (a sleep or cond_resched would otherwise pass it on): a switch into a task that then runs its next steps
    in a row costs one preemption at most. Which task stays, and how many yields it has left, live in ctl.strat
    (shared memory), because the task that switches and the task that stays are different processes."""

    def __init__(self, deviations: list[Deviation], log_fd: int, switches: list[Deviation], stays: int) -> None:
        super().__init__([*deviations, *switches], log_fd)
        self.switches = {(t, at): to for t, at, to in switches}
        self.stays = stays

    def setup(self, ctl: Control) -> None:
        super().setup(ctl)
        ctl.strat[_STAY_TASK], ctl.strat[_STAY_LEFT] = -1, 0

    def pick(self, ctl: Control, runnable: list[int], current: int, step: int, yielding: bool) -> int:
        pos = self.points.get(current, 0)
        n = pos + 1 if yielding else ((pos >> _SHIFT) + 1) << _SHIFT
        to = self.switches.get((current, n))
        if to is not None:
            ctl.strat[_STAY_TASK], ctl.strat[_STAY_LEFT] = to, self.stays
        elif (yielding and current == int(ctl.strat[_STAY_TASK]) and int(ctl.strat[_STAY_LEFT]) > 0
              and (current, n) not in self.wanted):
            self.wanted[(current, n)] = current
            ctl.strat[_STAY_LEFT] -= 1
        return super().pick(ctl, runnable, current, step, yielding)


class PointLog(FollowStrategy):
    """`follow` that also writes every scheduling point where another task could run to `points_fd` ("task
    position yielding runnable,..." lines): the points where a single switch could go."""

    def __init__(self, deviations: list[Deviation], log_fd: int, points_fd: int) -> None:
        super().__init__(deviations, log_fd)
        self.points_fd = points_fd

    def pick(self, ctl: Control, runnable: list[int], current: int, step: int, yielding: bool) -> int:
        if len(runnable) > 1:
            pos = self.points.get(current, 0)
            n = pos + 1 if yielding else ((pos >> _SHIFT) + 1) << _SHIFT
            os.write(self.points_fd, f"{current} {n} {int(yielding)} {','.join(map(str, runnable))}\n".encode())
        return super().pick(ctl, runnable, current, step, yielding)


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
    ops: int = 0

    def key(self) -> tuple[int, int, int, int, int]:
        """Smaller is better: preemptions past PREEMPTION_BOUND first, then steps, preemptions, operations and
        deviations. Within the bound a shorter run wins: 2 preemptions in 300 steps explain less readily than 3
        in 150."""
        over = max(0, self.preemptions - PREEMPTION_BOUND)
        return (over, self.res.steps, self.preemptions, self.ops, len(self.deviations))


def size_of(c: Candidate) -> Size:
    """A candidate's sizes for the before/after table: steps, preemptions, tasks that ran, operations."""
    return Size(c.res.steps, c.preemptions, len(set(c.res.schedule)), program_ops(c.text))


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
    variant: int = 0  # a portfolio's member (portfolio.py): 1 skips the quick pass and draws other random schedules

    def __post_init__(self) -> None:
        sc = artifact_scenario(self.path, self.art)
        text = self.art["scenario"].get("text") or Path(sc.path).read_text()
        d = tomllib.loads(text)  # the text carries the run's granularity, so coarsening it is a scenario edit
        if (d.get("sched") or {}).get("granularity") != self.art["granularity"]:
            text = dumps({**d, "sched": {**(d.get("sched") or {}), "granularity": self.art["granularity"]}})
        self.text = text
        self.scenario_path = sc.path
        self.target = failure_key(self.art.get("failure"))
        self.deadline = time.monotonic() + self.seconds
        self.runs = 0
        self.cap0 = 1 << 62  # a step cap for the scenario pass: the learning run's, set by run()
        self.tried: set[tuple[str, tuple[Deviation, ...]]] = set()  # deterministic candidates that did not fit

    def left(self) -> float:
        return self.deadline - time.monotonic()

    # -- one candidate -------------------------------------------------------------------------------------
    def attempt(
        self, deviations: list[Deviation], text: str, cap: int, schedule: bytes | None = None,
        sparse: tuple[int, float] | tuple[int, float, bool] | None = None, points_fd: int = -1,
        stay: list[Deviation] | None = None,
    ) -> Candidate | None:
        """A controlled run of `deviations` (or, for the learning run, of `schedule` strictly; with `sparse` =
        (salt, rate), of SparseFollow's extra switches too; with `stay`, of those switches, each followed by its
        target's yields (SwitchStay)) under the scenario `text`, at most `cap` steps; None
        when it does not fail the same way or the text is no scenario."""
        memo = (text, tuple(deviations))
        plain = schedule is None and sparse is None and points_fd < 0 and stay is None
        if plain and memo in self.tried:
            return None
        try:
            sc = parse(text, self.scenario_path)
        except ScenarioError:
            return None
        sc = dataclasses.replace(sc, max_steps=max(16, min(sc.max_steps, cap)))
        seen: dict[str, Control] = {}
        if sparse is not None and self.variant:  # another member of a portfolio: other random schedules
            sparse = (sparse[0] ^ (self.variant * 0x9E3779B1), *sparse[1:])  # type: ignore[assignment]
        fd = unnamed_file()
        try:

            def follow(_st: Any, _k: Any, ctl: Control) -> None:
                strat = (SparseFollow(deviations, fd, *sparse) if sparse is not None
                         else PointLog(deviations, fd, points_fd) if points_fd >= 0
                         else SwitchStay(deviations, fd, stay, STAYS) if stay is not None
                         else FollowStrategy(deviations, fd, schedule))
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
                timeout=min(self.timeout, max(1.0, self.left())),  # a candidate cut short fails as a hang: dropped
                granularity=sc.granularity,
                observe=follow,
            )
            if failure_key(res.failure) != self.target:
                if plain:
                    self.tried.add(memo)
                return None
            lines = os.pread(fd, os.fstat(fd).st_size, 0).decode().splitlines()
        finally:
            os.close(fd)
        taken = [(int(a), int(b), int(c)) for a, b, c in (line.split() for line in lines)]
        return Candidate(taken, text, res, FollowStrategy.preemptions(seen["ctl"]), program_ops(text))

    def better(self, cand: Candidate | None, best: Candidate, what: str) -> bool:
        if cand is None or cand.key() >= best.key():
            return False
        self.log(f"{what}: {cand.preemptions} preemptions, {cand.res.steps} steps, {cand.ops} operations, "
                 f"{len(cand.deviations)} deviations")
        return True

    # -- the passes ----------------------------------------------------------------------------------------
    def run(self) -> tuple[Candidate, Candidate]:
        """(the original, as the learning run saw it; the smallest candidate found)."""
        first = self.attempt([], self.text, 1 << 62, schedule=self.art["schedule_bytes"])
        if first is None:
            raise ShrinkError("the artifact's failure does not reproduce under a controlled replay; nothing to shrink")
        self.cap0 = self._cap(first)
        start, end = time.monotonic(), self.deadline
        # the recorded schedule shrunk, then the scenario under it (edits whose carried schedule still fails)
        plain = self.attempt([], self.text, self.cap0)  # one run that may spare all the delta debugging below
        kept = plain if plain is not None and plain.key() < first.key() else first
        quick = kept
        if not self.variant:  # big chunks of the schedule only, then its moves
            self.deadline = start + (end - start) * QUICK
            quick = self.reduce(kept, switches_only=False, finest=max(1, len(kept.deviations) // 8))
            quick = self.unpreempt(self.to_yields(self.deltas(quick)))
        self.deadline = start + (end - start) * 0.4  # the whole delta debugging, from the recorded schedule again
        kept = self.deltas(kept)
        if self.left() > 0:  # delta debugging done: what it could not drop, move
            kept = self.unpreempt(self.to_yields(kept))
        kept = min(quick, kept, key=Candidate.key)
        kept = self.programs(kept, 0, any_schedule=False)
        # then the scenario first, a schedule re-found for each edit, and the schedule shrunk again
        best = kept
        for tries in PROGRAM_TRIES:
            self.deadline = start + (end - start) * 0.6
            best = self.programs(best, tries, any_schedule=True)
        self.deadline = end - (end - start) * POLISH
        if best.preemptions > 0:  # a dense schedule's many deviations would take delta debugging long
            best = self.single_switches(best, time.monotonic() + self.left() * 0.5)
        best = self.scratch(best, time.monotonic() + self.left() * 0.4)
        best = self.deltas(best)
        if self.left() > 0:  # time left: the first track's delta debugging may have been cut short
            kept = self.deltas(kept)
        if self.left() > 0:
            best = self.reduce(self.scratch(best, self.deadline), switches_only=False)
        best = min(first, kept, best, key=Candidate.key)  # a pass cut short may have left more steps
        self.deadline = end  # the polish: the winner's preemptions moved to yields, then its scenario cut
        best = self.programs(self.unpreempt(self.to_yields(best)), 0, any_schedule=False)
        best = self.reorder_turns(best, time.monotonic() + self.left() * 0.7)
        for ways in ((False,), (True,)):  # the smallest program may need fewer switches than the track's did
            if best.preemptions > PREEMPTION_BOUND:  # plain switches first: the polish is short
                best = self.single_switches(best, self.deadline, ways)
        return first, best

    @staticmethod
    def _cap(c: Candidate) -> int:
        return 2 * c.res.steps + 1000

    def sparse_tries(self, text: str, steps: int, tries: int | None) -> Iterator[tuple[int, float]]:
        """(salt, rate) for `tries` sparse schedules of about one, two or three random switches in a run of
        about `steps` scheduling points."""
        for salt in range(tries) if tries is not None else itertools.count():
            yield (zlib.crc32(text.encode()) ^ salt, (1 + salt % 3) / max(8, steps))

    def scratch(self, best: Candidate, until: float) -> Candidate:
        """The non-preemptive schedule of best's scenario, then sparse ones until `until`: a failing one with
        fewer preemptions, or steps, replaces best (each hit is reduced before it is compared)."""
        for sparse in itertools.chain([None], self.sparse_tries(best.text, best.res.steps, None)):
            if self.left() <= 0 or time.monotonic() >= until:
                break
            cand = self.attempt([], best.text, self._cap(best), sparse=sparse)
            if cand is not None and sparse is not None and cand.preemptions <= best.preemptions:
                cand = self.reduce(cand, switches_only=True, quiet=True)
            if self.better(cand, best, "a fresh schedule"):
                assert cand is not None
                best = cand
        return best

    def single_switches(self, best: Candidate, until: float, ways: tuple[bool, ...] = (False, True)) -> Candidate:
        """The default schedule of best's scenario with one deviation, at each of its points where another task
        could run, from its last point backwards (where the objects die is where a race usually is), the
        switches that preempt no one first; each tried plain and (`ways` True) with the task switched to staying
        on through its next yields (SwitchStay); until `until`. A run that fails the same way and is smaller
        wins."""
        devs: list[tuple[bool, Deviation]] = []
        for cur, n, y, runnable in reversed(self.points([], best.text, self._cap(best))):
            default = default_pick(list(runnable), cur, y)
            preempts = not y and cur in runnable
            devs += [(preempts, (cur, n, t)) for t in runnable if t not in (default, cur)]
        devs.sort(key=lambda pd: pd[0])  # stable: non-preempting first, each group from the end backwards
        for _p, dev in devs:
            for stay in ways:
                if time.monotonic() >= until or self.left() <= 0:
                    return best
                cand = (self.attempt([], best.text, self._cap(best), stay=[dev]) if stay
                        else self.attempt([dev], best.text, self._cap(best)))
                if self.better(cand, best, "one switch"):
                    assert cand is not None
                    best = cand
        return best

    def points(self, deviations: list[Deviation], text: str, cap: int) -> list[Point]:
        """Every scheduling point of the run of `deviations` where another task could run, in the run's order."""
        fd = unnamed_file()
        try:
            self.attempt(deviations, text, cap, points_fd=fd)
            lines = os.pread(fd, os.fstat(fd).st_size, 0).decode().splitlines()
        finally:
            os.close(fd)
        return [(int(c), int(n), y == "1", tuple(int(x) for x in rn.split(",")))
                for c, n, y, rn in (line.split() for line in lines)]

    def unpreempt(self, best: Candidate) -> Candidate:
        """Fewer preemptions by moving each one to a yield: a switch that takes the CPU from task t at one of its
        points is tried at t's next yield instead (t runs on a little, then gives way), at the last yield of any
        task before it (the task switched to runs a little earlier), or not at all. A yield's switch preempts no
        one, and the other deviations keep their anchors (each task's own position), so one change moves only
        what it names. Greedy, until a round keeps nothing; only for a run with few preemptions left (each costs
        up to three runs a round), after delta debugging has cut the rest."""
        improved = True
        while improved and 0 < best.preemptions <= UNPREEMPT_MOST and self.left() > 0:
            improved = False
            pts, where, preempting = self.preempting(best)
            for d in preempting:
                if self.left() <= 0 or d not in best.deviations:
                    break
                i = where[(d[0], d[1])]  # the points of the round's first run: a kept move shifts few of the others
                rest = [x for x in best.deviations if x != d]
                taken = {(x, m) for x, m, _ in rest}
                alts = [rest + [(p[0], p[1], d[2])] for p in (_yield_for(pts, i, d, False), _yield_for(pts, i, d, True))
                        if p is not None and p not in taken]
                for devs in [*alts, rest]:
                    cand = self.attempt(devs, best.text, self._cap(best))
                    if self.better(cand, best, "a preemption moved to a yield"):
                        assert cand is not None
                        best, improved = cand, True
                        break
        return best

    def to_yields(self, best: Candidate) -> Candidate:
        """Delta debugging over moves rather than drops: each preemption of best taken to the last yield before
        it of a task other than the one it switches to (that task runs a little earlier), then to its own task's
        next yield (which runs on a little); all at once first, then halves, quarters, ... A move keeps the switch
        (and so the order of what the two tasks do) but makes it free; with tens of preemptions left, moving
        them in chunks costs a few runs where unpreempt's one-by-one rounds cost a run or three each."""
        for earlier in (True, False):
            todo = self._moves(best, earlier)
            chunk = len(todo)
            while chunk >= 1 and todo and self.left() > 0 and best.preemptions > PREEMPTION_BOUND:
                i = 0
                while i < len(todo) and self.left() > 0:
                    swap = dict(todo[i : i + chunk])
                    cand = self.attempt([swap.get(d, d) for d in best.deviations], best.text, self._cap(best))
                    if self.better(cand, best, "preemptions moved to yields"):
                        assert cand is not None
                        best, todo = cand, self._moves(cand, earlier)
                        chunk = min(chunk, len(todo))
                    else:
                        i += chunk
                chunk //= 2
        return best

    def _moves(self, c: Candidate, earlier: bool) -> list[tuple[Deviation, Deviation]]:
        """For each preemption of c, the same switch at a yield: the last one before it of a task other than
        its target (`earlier`), else its own task's next one; a yield another deviation already uses is
        skipped."""
        pts, where, preempting = self.preempting(c)
        taken = {(t, n) for t, n, _ in c.deviations}
        out = []
        for d in preempting:
            at = _yield_for(pts, where[(d[0], d[1])], d, earlier)
            if at is not None and at not in taken:
                taken.add(at)
                out.append((d, (at[0], at[1], d[2])))
        return out

    def preempting(self, best: Candidate) -> tuple[list[Point], dict[tuple[int, int], int], list[Deviation]]:
        """The points of best's run (where another task could run), each (task, position)'s index among them, and
        best's deviations that preempt: what unpreempt and reorder_turns both start from."""
        pts = self.points(best.deviations, best.text, self._cap(best))
        where = {(t, n): i for i, (t, n, _y, _r) in enumerate(pts)}
        return pts, where, [d for d in best.deviations if _preempts(d, pts, where)]

    def reorder_turns(self, best: Candidate, until: float) -> Candidate:
        """Fewer preemptions by trading one for another order of turns: each preemption of best dropped, and
        the rest of its deviations run with TURN_TRIES sparse random switches where a task yields or cannot go on
        (free in preemptions), until `until`; only while more than PREEMPTION_BOUND are left. What a preemption
        often buys is that one daemon's turn comes before another's (reclaim's walk before ksmd's next batch),
        which a yield's choice gives as well."""
        while best.preemptions > PREEMPTION_BOUND and self.left() > 0 and time.monotonic() < until:
            pts, _where, preempting = self.preempting(best)
            free = [(cur, y, rn) for cur, _n, y, rn in pts if y or cur not in rn]
            # a yield's only other choice, with two tasks, is the default: then one plain try per preemption
            tries = TURN_TRIES if any(set(rn) - {cur, default_pick(list(rn), cur, y)} for cur, y, rn in free) else 1
            found = None
            for d in preempting:
                rest = [x for x in best.deviations if x != d]
                for salt in range(tries):
                    if self.left() <= 0 or time.monotonic() >= until:
                        return best
                    sparse = (zlib.crc32(repr(d).encode()) ^ salt, (1 + salt % 3) / max(4, len(free)), True)
                    cand = self.attempt(rest, best.text, self._cap(best), sparse=sparse)
                    if self.better(cand, best, "a preemption traded for turns"):
                        found = cand
                        break
                if found is not None:
                    break
            if found is None:
                return best
            best = found
        return best

    def deltas(self, best: Candidate) -> Candidate:
        """Delta debugging over best's deviations: those that switch away from a task, then every one left."""
        return self.reduce(self.reduce(best, switches_only=True), switches_only=False)

    def reduce(self, best: Candidate, switches_only: bool, quiet: bool = False, finest: int = 1) -> Candidate:
        """Delta debugging over the deviations (only those that switch away from a task that could go on, if
        asked): drop chunks, halving the chunk size, keeping every smaller candidate that still fails the same
        way."""

        def pool(c: Candidate) -> list[int]:
            return [j for j, (t, _n, to) in enumerate(c.deviations) if to != t or not switches_only]

        idx = pool(best)
        chunk = max(1, len(idx) // 2)
        while chunk >= finest and self.left() > 0:
            i = 0
            while i < len(idx) and self.left() > 0:
                drop = set(idx[i : i + chunk])
                devs = [d for j, d in enumerate(best.deviations) if j not in drop]
                cand = self.attempt(devs, best.text, self._cap(best))
                if cand is not None and cand.key() < best.key() and (quiet or self.better(cand, best, "schedule")):
                    best, idx = cand, pool(cand)
                else:
                    i += chunk
            chunk //= 2
        return best

    def programs(self, best: Candidate, sparse: int, any_schedule: bool) -> Candidate:
        """Delta debugging over the scenario: walk the one-edit-smaller scenarios (biggest cuts first); after a
        kept edit, go on from the same place in the new scenario's list; repeat while an edit is kept. Each edit
        is tried with best's deviations carried over, with none, then with `sparse` dense random schedules (as a
        random run switches). `any_schedule`: keep every edit that fails the same way (the schedule passes shrink
        its schedule after); else only one whose run is smaller by Candidate.key."""
        changed = True
        while changed and self.left() > 0:
            changed = False
            edits, i = scenario_edits(best.text), 0
            while i < len(edits) and self.left() > 0:
                text, remap, strict = edits[i]
                carried = [d for d in (_remapped(dv, remap) for dv in best.deviations) if d is not None]
                tries: list[tuple[list[Deviation], tuple[int, float] | None]] = [(carried, None)]
                moved = recoarsened(best.text, text)  # their positions count other points now: their anchors go
                if moved and any(d[0] in moved for d in carried):
                    tries.append(([d for d in carried if d[0] not in moved], None))
                if carried:
                    tries.append(([], None))
                tries += [([], (salt, DENSE_RATES[salt % len(DENSE_RATES)])) for salt in range(sparse)]
                for devs, sp in tries:
                    if self.left() <= 0:
                        break
                    cand = self.attempt(devs, text, max(self._cap(best), self.cap0), sparse=sp)
                    if cand is not None and ((any_schedule and not strict) or cand.key() < best.key()):
                        self.log(f"scenario: {cand.ops} operations, {cand.res.steps} steps")
                        best, changed = cand, True
                        edits = scenario_edits(best.text)
                        break
                else:
                    i += 1
        return best


class ShrinkError(ValueError):
    """An artifact that cannot be shrunk (its failure does not reproduce): exit status 2."""


Point = tuple[int, int, bool, tuple[int, ...]]  # (task, its position, yielding, the runnable tasks)
Remap = dict[int, int]  # a task id before an edit -> after it (absent: the task is gone)


def _preempts(d: Deviation, pts: list[Point], where: dict[tuple[int, int], int]) -> bool:
    """Whether deviation `d` of the run whose points are `pts` took the CPU from a task that could have gone on
    (not at a yield, and its task runnable), i.e. counts as a preemption."""
    i = where.get((d[0], d[1]), -1)
    return i >= 0 and not pts[i][2] and d[0] in pts[i][3] and d[2] != d[0]


def _yield_for(pts: list[Point], i: int, d: Deviation, earlier: bool) -> tuple[int, int] | None:
    """Where preemption `d` (at point i of `pts`) could switch at a yield instead: the last yield before it of a
    task other than its target, from which the target can run (`earlier`: the target runs a little sooner), else
    its own task's next yield with the target runnable (its task runs on a little first). (task, position)."""
    t, _n, to = d
    if earlier:
        return next(((x, m) for x, m, y, rn in reversed(pts[:i]) if y and to in rn and x != to), None)
    return next(((x, m) for x, m, y, rn in pts[i + 1 :] if x == t and y and to in rn), None)


def _remapped(d: Deviation, remap: Remap | None) -> Deviation | None:
    if remap is None:
        return d
    t, n, to = d
    if t not in remap or to not in remap:
        return None
    return (remap[t], n, remap[to])


def _layout(d: dict[str, Any], ids: list[int]) -> list[Any]:
    """The initial task ids' owners, in runner.run_one's order: ksmd, reclaim, admin, migrate, then each [[task]]'s
    programs (`ids` names the [[task]] tables, so one dropped keeps the others' names)."""
    out: list[Any] = []
    if (d.get("ksmd") or {}).get("enabled", True):
        out.append("ksmd")
    if (d.get("reclaim") or {}).get("enabled", True):
        out.append("reclaim")
    if int((d.get("admin") or {}).get("unmerge_every", 0)) > 0:
        out.append("admin")
    if (d.get("migrate") or {}).get("enabled", False):
        out.append("migrate")
    for name, t in zip(ids, d.get("task", []), strict=True):
        out += [(name, j) for j in range(int(t.get("count", 1)))]
    return out


def recoarsened(old_text: str, new_text: str) -> set[int]:
    """The task ids (after the edit) whose granularity an edit changed: a deviation anchored on such a task's own
    position (FollowStrategy) names another point now. A coarsened [[task]] changes its forks' too (the ids past
    the initial ones)."""
    old, new = tomllib.loads(old_text), tomllib.loads(new_text)
    if len(old.get("task", [])) != len(new.get("task", [])):
        return set()

    def level(d: dict[str, Any], owner: Any) -> str:
        own = (d.get(owner) or {}) if isinstance(owner, str) else d["task"][owner[0]]
        return coarsest(_run_level(d), own.get("granularity", ""))

    ids = list(range(len(new.get("task", []))))
    owners = _layout(new, ids)
    if owners != _layout(old, ids):
        return set()
    out = {i for i, o in enumerate(owners) if level(old, o) != level(new, o)}
    if any(not isinstance(owners[i], str) for i in out):
        max_mm = int((new.get("arena") or {}).get("max_mm", 10))
        out |= set(range(len(owners), len(owners) + max_mm + 3))
    return out


def _remap(old: dict[str, Any], new: dict[str, Any], new_ids: list[int], max_mm: int) -> Remap:
    """Task ids before -> after an edit: each initial task by its owner; forked children (ids past the initial
    ones) shift with them."""
    a, b = _layout(old, list(range(len(old.get("task", []))))), _layout(new, new_ids)
    where = {owner: i for i, owner in enumerate(b)}
    out = {i: where[owner] for i, owner in enumerate(a) if owner in where}
    shift = len(b) - len(a)
    for tid in range(len(a), len(a) + max_mm + 3):
        out[tid] = tid + shift
    return out


def scenario_edits(text: str) -> list[tuple[str, Remap, bool]]:
    """The one-edit-smaller scenarios, then the faster ones; the flag says an edit is kept only when its run is
    smaller by Candidate.key, whatever the search (a faster scenario is not a smaller one, and lowering it back
    must not undo it in a loop)."""
    return [(t, r, False) for t, r in smaller_scenarios(text)] + [(t, r, True) for t, r in faster_scenarios(text)]


def faster_scenarios(text: str) -> list[tuple[str, Remap]]:
    """Scenario texts that spend fewer steps on the same work: every idle turn of the round-robin schedule is a
    step. ksmd's batches cover every page of every program twice (its two passes before a merge, in one batch:
    each yield between batches gives every polling program and reclaim a turn); reclaim rests a few yields after
    each page (a rest costs one step per turn, a pass over a page ten or more); a task runs at a coarser
    granularity of its own (`yields`, then `locks`: its points that are not sleeps, or not lock operations, are
    no steps)."""
    d = tomllib.loads(text)
    ids = list(range(len(d.get("task", []))))
    arena = d.get("arena") or {}
    max_mm = int(arena.get("max_mm", 10))
    every = 2 * int(arena.get("vpages", 16)) * max_mm

    def edit(name: str, **kv: Any) -> tuple[str, Remap]:
        new = _with_table(d, name, **kv)
        return dumps(new), _remap(d, new, ids, max_mm)

    out: list[tuple[str, Remap]] = []
    batch = int((d.get("ksm") or {}).get("pages_to_scan", 16))
    if (d.get("ksmd") or {}).get("enabled", True):  # or smaller batches, when the race needs ksmd to rest sooner
        out += [edit("ksm", pages_to_scan=n) for n in ([every] if batch < every else []) + _lower(batch, 1)]
    rc = d.get("reclaim") or {}
    if rc.get("enabled", True) and int(rc.get("pause", 0)) < RECLAIM_REST:
        out.append(edit("reclaim", pause=RECLAIM_REST))
    # a task's own coarser granularity: its points the race needs no switch at are steps the schedule need not
    # show. Kept only when the run is smaller: fewer points also means fewer places a needed switch can fall
    run_level = _run_level(d)
    for name in (o for o in _layout(d, ids) if isinstance(o, str)):  # the system tasks that run
        out += [edit(name, granularity=level)
                for level in _coarser(run_level, (d.get(name) or {}).get("granularity", ""))]
    for i, t in enumerate(d.get("task", [])):
        for level in _coarser(run_level, t.get("granularity", "")):
            new = _with_task(d, i, {**t, "granularity": level})
            out.append((dumps(new), _remap(d, new, ids, max_mm)))
    return out


def _with_table(d: dict[str, Any], name: str, **kv: Any) -> dict[str, Any]:
    """Scenario data `d` with keys of its table `name` set (the table made if absent)."""
    return {**d, name: {**(d.get(name) or {}), **kv}}


def _with_task(d: dict[str, Any], i: int, t: dict[str, Any] | None) -> dict[str, Any]:
    """Scenario data `d` with its [[task]] `i` replaced by `t` (dropped when None)."""
    tasks = d.get("task", [])
    if t is None:
        return {**d, "task": [x for j, x in enumerate(tasks) if j != i]}
    return {**d, "task": [t if j == i else x for j, x in enumerate(tasks)]}


def _run_level(d: dict[str, Any]) -> str:
    """The run's granularity in scenario data `d` ([sched] granularity)."""
    return str((d.get("sched") or {}).get("granularity", DEFAULT_GRANULARITY))


def smaller_scenarios(text: str) -> list[tuple[str, Remap]]:
    """Scenario texts one edit smaller than `text`, biggest cuts first, each with its task-id map."""
    d = tomllib.loads(text)
    tasks = d.get("task", [])
    ids = list(range(len(tasks)))
    max_mm = int((d.get("arena") or {}).get("max_mm", 10))
    out: list[tuple[str, Remap]] = []

    def add(new: dict[str, Any], new_ids: list[int] = ids) -> None:
        out.append((dumps(new), _remap(d, new, new_ids, max_mm)))

    def with_table(name: str, **kv: Any) -> dict[str, Any]:
        return _with_table(d, name, **kv)

    def with_task(i: int, t: dict[str, Any] | None) -> dict[str, Any]:
        return _with_task(d, i, t)

    if (d.get("sched") or {}).get("granularity") == "shared":  # far fewer points, if the race needs none of them
        add(with_table("sched", granularity="locks"))
    if (d.get("reclaim") or {}).get("enabled", True):
        add(with_table("reclaim", enabled=False))
    if (d.get("ksmd") or {}).get("enabled", True):
        add(with_table("ksmd", enabled=False))
    if int((d.get("admin") or {}).get("unmerge_every", 0)) > 0:
        add(with_table("admin", unmerge_every=0))
    if (d.get("migrate") or {}).get("enabled", False):
        add(with_table("migrate", enabled=False))
    for i, t in enumerate(tasks):
        if len(tasks) > 1:
            add(with_task(i, None), [j for j in ids if j != i])
        forks = int(t.get("max_forks", 1)) > 0 and (
            "fork" in t.get("script", []) or int(t.get("ops", 30)) > 0)  # else the child keys mean nothing

        def lowered(keys: tuple[str, ...], i: int = i, t: dict[str, Any] = t, forks: bool = forks) -> None:
            for key in keys:
                if key in ("child_ops", "max_forks") and not forks:
                    continue
                v = int(t.get(key, PROGRAM_DEFAULTS[key]))
                for smaller in _lower(v, PROGRAM_LOWEST.get(key, 0)):
                    add(with_task(i, {**t, key: smaller}))

        lowered(("region", "count"))  # fewer pages and programs: the most steps gone (ksmd scans each page twice)
        for key in ("script", "child_script") if forks else ("script",):
            steps = list(t.get(key, []))
            cut = len(steps) // 2  # the tail first, by halves: a race needs its program's first steps, seldom all
            while cut >= 2:
                add(with_task(i, {**t, key: steps[:-cut]}))
                cut //= 2
            for j in reversed(range(len(steps))):
                add(with_task(i, {**t, key: steps[:j] + steps[j + 1 :]}))
        for key in ("script", "child_script") if forks else ("script",):  # shorter sleeps and waits: fewer steps
            steps = list(t.get(key, []))
            for j, step in enumerate(steps):
                for fewer in _smaller_numbers(step):
                    add(with_task(i, {**t, key: [*steps[:j], fewer, *steps[j + 1 :]]}))
        lowered(tuple(k for k in PROGRAM_KEYS if k not in ("region", "count")))
        if int(t.get("ops", 30)) + (int(t.get("child_ops", 15)) if forks else 0) > 0:  # a kind of random op fewer
            weights = dict(t.get("weights") or {})
            for op, w in weights.items():
                if w and sum(1 for x in weights.values() if x) > 1:
                    add(with_task(i, {**t, "weights": {**weights, op: 0}}))
    rc = d.get("reclaim") or {}
    if rc.get("enabled", True) and float(rc.get("swap", 0.3)) > 0:
        add(with_table("reclaim", swap=0.0))
    return out


def _coarser(run_level: str, own: str) -> list[str]:
    """A task's coarser granularities than it runs at now (its own key over the run's), coarsest first: the
    points of a task the race needs no switch inside are steps the shrunk schedule need not show."""
    now = coarsest(run_level, own)
    return [g for g in reversed(TASK_GRANULARITIES) if TASK_GRANULARITIES.index(g) > TASK_GRANULARITIES.index(now)]


def _lower(v: int, low: int) -> list[int]:
    """Smaller values to try for a count: the lowest, half, and (once it is small) one less."""
    return sorted(x for x in {low, v // 2, v - 1 if v <= 4 else low} if low <= x < v)


def _smaller_numbers(step: str) -> list[str]:
    """A script step with its first number halved, then less one (`sleep:40` -> `sleep:20`, `sleep:39`), and a
    wait's cap dropped (`wait-merged:129:50000` -> `wait-merged:129`)."""
    name, _, rest = step.partition(":")
    first, sep, tail = rest.partition(":")
    out = [f"{name}:{first}"] if name.startswith("wait-") and tail else []
    if not first.isdigit() or int(first) <= 1 or name == "fill" or name == "write":
        return out
    n = int(first)
    return out + [f"{name}:{m}{sep}{tail}" for m in _lower(n, 1)]


def shrunk_artifact(art_path: Path, best: Candidate, before: Size, after: Size, seconds: float) -> dict[str, Any]:
    """The original artifact with the shrunk scenario text, schedule and failure: a normal artifact."""
    data = json.loads(art_path.read_text())
    data["scenario"] = {**data["scenario"], "text": best.text}
    data["granularity"] = parse(best.text).granularity
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
