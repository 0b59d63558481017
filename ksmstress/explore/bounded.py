"""Bounded systematic exploration (CHESS's iterative context bounding): every schedule of one seed's programs with
at most C preemptions, fewest preemptions first.

A schedule is named by where it departs from the non-preemptive one (sched/guided.py's `stay` tail: the running
task goes on until it yields, blocks or exits, then the next runnable one in task-id order). Each departure is a
preemption: a switch away from a task that could have gone on, or, where the running task yields, blocks or exits,
a pick other than the round-robin next task. Counting the second kind too keeps the tree finite: ksmd and the
wait loops yield dozens of times per run, and free choices there would make even C = 0 exponential in them.

The tree: the root is the run with no prefix; a node's run, with prefix p, records every step's decision and
runnable set; its children are the runs whose prefix is that schedule up to a step i >= len(p), then another
runnable task at i. Children depart strictly after their parent's last departure, so each schedule is reached
exactly once (two prefixes differ at their first different decision, so do their schedules). Iterative bounding:
level c holds the nodes with c departures; all of level c runs before level c+1, in depth-first order of the
tree, so the first failure found has the fewest preemptions any failure of this seed has.

Every node is one real `run_one` under the `guided` strategy; `bounded_runs` is the exploration as an iterator
(one schedule per step), `explore_bounded` runs it to its end. Partial-order reduction (sleep sets, DPOR) would need
the objects each step touches, which the scheduler does not see; the focused scenarios are small enough without.

Sharding: the root's k-th child and everything below it belong to shard k mod N; the root belongs to shard 0.
Every shard runs the root (its children are known only from its run), and counts it only as shard 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..runner import RunResult, run_one
from ..scenario import Scenario
from ..sched.guided import YIELDING, decode_masks


@dataclass
class Level:
    """The schedules of one preemption count this shard ran, and how long they took."""

    preemptions: int
    schedules: int = 0
    seconds: float = 0.0


@dataclass
class BoundedResult:
    scenario: str
    seed: int
    bound: int  # the C asked for
    shard: tuple[int, int]  # (index, count), 0 <= index < count
    schedules: int = 0  # this shard's schedules that ran
    runs: int = 0  # run_one calls, the root's included when another shard owns it
    complete: bool = False  # every schedule of this shard with <= bound preemptions ran, none failed
    failure: RunResult | None = None  # the first failing (or budget-exhausted) run
    preemptions: int | None = None  # the failure's
    seconds: float = 0.0
    levels: list[Level] = field(default_factory=list)
    stopped: str = ""  # why an incomplete exploration stopped: "schedules" or "seconds"


@dataclass
class _Node:
    """A run whose children are still to be made: its schedule, where its children may depart, and its shard."""

    schedule: bytes
    branches: list[tuple[int, tuple[int, ...]]]  # (step, the other runnable tasks there), steps after the prefix
    owner: int | None  # the shard every child belongs to; None: the root, whose k-th child is shard k mod N


def _node(res: RunResult, start: int, owner: int | None) -> _Node:
    """The departures a run offers from step `start` on: wherever another task was runnable."""
    sched, masks = res.schedule, decode_masks(res.runnable)
    branches = []
    for i in range(start, min(len(sched), len(masks))):
        m = int(masks[i]) & ~YIELDING
        if m & (m - 1):  # two or more runnable
            others = tuple(t for t in range(m.bit_length()) if m >> t & 1 and t != sched[i])
            branches.append((i, others))
    return _Node(sched, branches, owner)


def _children(node: _Node, nshards: int) -> Iterator[tuple[bytes, int]]:
    """(prefix, owner shard) of each child, in depth-first order: earlier departures first, then lower task ids."""
    k = 0
    for i, others in node.branches:
        for t in others:
            owner = k % nshards if node.owner is None else node.owner
            k += 1
            yield node.schedule[:i] + bytes([t]), owner


def explore_bounded(
    sc: Scenario,
    seed: int,
    bugs: list[str] | tuple[str, ...] = (),
    preemptions: int = 2,
    max_schedules: int | None = None,
    seconds: float | None = None,
    shard: tuple[int, int] = (0, 1),
    *,
    granularity: str | None = None,
    timeout: float = 120.0,
    on_run: Callable[[BoundedResult, RunResult], None] | None = None,
) -> BoundedResult:
    """Run every schedule of `sc` at `seed` with at most `preemptions` departures from the non-preemptive one, level
    by level, until the first failure or a budget (`max_schedules` of this shard's schedules, `seconds` of wall
    clock). `shard` = (index, count) picks this shard's disjoint part of the tree. `on_run` sees each of this shard's
    schedules as it ends (a progress line, a test collecting them)."""
    out = BoundedResult(sc.name, seed, preemptions, shard)
    deadline = None if seconds is None else time.monotonic() + seconds

    def budget(mine: bool) -> str:
        if mine and max_schedules is not None and out.schedules >= max_schedules:
            return "schedules"
        if deadline is not None and time.monotonic() >= deadline:
            return "seconds"
        return ""

    for res in bounded_runs(out, sc, bugs, budget, granularity=granularity, timeout=timeout):
        if on_run is not None:
            on_run(out, res)
    return out


def bounded_runs(
    out: BoundedResult,
    sc: Scenario,
    bugs: list[str] | tuple[str, ...] = (),
    budget: Callable[[bool], str] = lambda mine: "",
    *,
    granularity: str | None = None,
    timeout: float = 120.0,
) -> Iterator[RunResult]:
    """The exploration `out` names (its seed, bound and shard) as an iterator: yields each of this shard's schedules
    as it ends, after counting it into `out`, and sets `out.complete`, `out.failure` or `out.stopped` before it
    returns. `budget(mine)` is asked before each run (`mine`: one of this shard's schedules) and stops the
    exploration when it names a reason ("schedules", "seconds"). Why an iterator: `ksmstress mutate` explores many
    scenarios at once, one schedule of each in turn, within one budget."""
    seed, preemptions, shard = out.seed, out.bound, out.shard
    if preemptions < 0:
        raise ValueError(f"preemptions: expected a non-negative bound, got {preemptions}")
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard: expected (index, count) with 0 <= index < count, got {shard}")
    t0 = time.monotonic()

    def run(prefix: bytes, mine: bool, level: Level) -> RunResult | None:
        """One schedule; None when a budget stops the exploration before it."""
        why = budget(mine)
        if why:
            out.stopped = why
            return None
        t = time.monotonic()
        res = run_one(sc, seed, "guided", bugs, schedule=prefix, granularity=granularity, timeout=timeout)
        out.runs += 1
        level.seconds += time.monotonic() - t
        if mine:
            out.schedules += 1
            level.schedules += 1
        return res

    def failed(res: RunResult, c: int) -> bool:
        if res.verdict == "clean":
            return False
        out.failure, out.preemptions = res, c
        return True

    try:
        level = Level(0)
        out.levels.append(level)
        if index and not preemptions:  # the root is shard 0's and has no children here
            out.complete = True
            return
        root = run(b"", index == 0, level)
        if root is None:
            return
        if index == 0:
            out.seconds = time.monotonic() - t0
            yield root
            if failed(root, 0):
                return
        frontier = [_node(root, 0, None)]
        for c in range(1, preemptions + 1):
            level = Level(c)
            out.levels.append(level)
            nxt: list[_Node] = []
            for node in frontier:
                for prefix, owner in _children(node, count):
                    if owner != index:
                        continue
                    res = run(prefix, True, level)
                    if res is None:
                        return
                    out.seconds = time.monotonic() - t0
                    yield res
                    if failed(res, c):
                        return
                    if c < preemptions:
                        nxt.append(_node(res, len(prefix), owner))
            frontier = nxt
        out.complete = True
    finally:
        out.seconds = time.monotonic() - t0
