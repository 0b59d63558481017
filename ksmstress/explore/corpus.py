"""The corpus of coverage-guided search: schedules that added interleaving pairs, and how to mutate them.

An entry is a seed (which fixes the programs) and the full schedule one run of it followed, with each step's
runnable set (sched.guided records it). A mutant keeps the seed and changes the schedule at one place, as a
decision prefix that the guided strategy follows before a random tail:
- flip: at a step where another task could run, run it instead (the prefix ends there: always followable);
- delay: at such a step, keep the task that was picked off the CPU for the next m points by running another
  (a prefix that may stop being followable once that other task blocks: see search.py);
- swap: exchange two adjacent runs of one task each (... A B C ... becomes ... A C B ...), when the second could
  already run where the first began;
- reorder: take one of the entry's pairs (a rare one more often), go back to the point just before its first
  access and run the second task there instead, for as many points as it took to reach its own access: the two
  accesses then come the other way round (Razzer's and Snowboard's idea: steer toward a chosen interleaving).
Entries are chosen with weight the sum of 1 / (runs that produced it) over their pairs, so an entry holding
rare pairs is mutated more often than one holding only pairs every run produces (AFL's favouring of rare edges).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from ..checks.pairs import Pair, Witness
from ..sched.guided import MAX_TASKS, YIELDING, decode_masks

DELAYS = (2, 4, 8, 16, 32)  # points a delayed task is kept off the CPU
OPERATORS = ("flip", "delay", "swap", "reorder")
REORDER_BACK = 64  # steps back from a pair's first access to look for a point where the second task could run
MAX_ENTRIES = 256  # the corpus keeps the entries of highest weight beyond this


@dataclass
class Entry:
    """A schedule that added pairs: its seed, full schedule, runnable sets and pairs."""

    seed: int
    schedule: bytes
    runnable: bytes
    pairs: frozenset[Pair]
    witness: dict[Pair, Witness] = field(default_factory=dict, repr=False)
    origin: str = "fresh"  # fresh, or the operator that made it
    choices: np.ndarray = field(init=False, repr=False)  # steps where at least two tasks could run

    def __post_init__(self) -> None:
        masks = decode_masks(self.runnable)[: len(self.schedule)] & np.uint64(~YIELDING & (1 << 64) - 1)
        counts = np.zeros(len(masks), dtype=np.int64)
        for t in range(MAX_TASKS):
            counts += ((masks >> np.uint64(t)) & np.uint64(1)).astype(np.int64)
        self.choices = np.flatnonzero(counts >= 2)
        self.choices = self.choices[self.choices >= 1]  # step 0's decision is taken by the runner, before any task

    def runnable_at(self, step: int) -> list[int]:
        mask = int(decode_masks(self.runnable)[step]) & ~YIELDING
        return [t for t in range(MAX_TASKS) if mask >> t & 1]


@dataclass
class Mutant:
    """A candidate: a seed, a decision prefix to follow, and how it was made."""

    seed: int
    prefix: bytes
    operator: str


def flip(e: Entry, rng: random.Random) -> Mutant | None:
    if not len(e.choices):
        return None
    i = int(e.choices[rng.randrange(len(e.choices))])
    others = [t for t in e.runnable_at(i) if t != e.schedule[i]]
    return Mutant(e.seed, e.schedule[:i] + bytes([rng.choice(others)]), "flip")


def delay(e: Entry, rng: random.Random) -> Mutant | None:
    if not len(e.choices):
        return None
    i = int(e.choices[rng.randrange(len(e.choices))])
    others = [t for t in e.runnable_at(i) if t != e.schedule[i]]
    return Mutant(e.seed, e.schedule[:i] + bytes([rng.choice(others)]) * rng.choice(DELAYS), "delay")


def swap(e: Entry, rng: random.Random) -> Mutant | None:
    s = e.schedule
    starts = [j for j in range(1, len(s)) if s[j] != s[j - 1]]  # where a run of one task begins
    cands = [
        (starts[n], starts[n + 1], starts[n + 2] if n + 2 < len(starts) else len(s))
        for n in range(len(starts) - 1)
        if s[starts[n + 1]] in e.runnable_at(starts[n])
    ]
    if not cands:
        return None
    a, b, c = cands[rng.randrange(len(cands))]
    return Mutant(e.seed, s[:a] + s[b:c] + s[a:b], "swap")


def reorder(e: Entry, rng: random.Random, pair: Pair) -> Mutant | None:
    """Run B's task at the last point before A's access where it could run, until it has passed B's access."""
    w = e.witness.get(pair)
    if w is None:
        return None
    sa, ta, sb, tb = w
    s = e.schedule
    for j in range(min(sa, len(s) - 1), max(0, sa - REORDER_BACK), -1):
        if s[j] == ta and tb in e.runnable_at(j):
            n = s[j : sb + 1].count(tb)  # the points B's task passed from here to its access
            return Mutant(e.seed, s[:j] + bytes([tb]) * max(1, n), "reorder")
    return None


MUTATORS = {"flip": flip, "delay": delay, "swap": swap}


class Arms:
    """Which way to make the next run: a fresh seed or one of the operators, chosen in proportion to the new pairs
    each has found per run so far (Laplace-smoothed, so an arm that stopped paying can come back), with a floor
    for fresh seeds: new programs are where the pairs of paths no corpus entry takes come from."""

    NAMES = ("fresh", *OPERATORS)

    def __init__(self, fresh_floor: float) -> None:
        self.fresh_floor = fresh_floor
        self.gain = dict.fromkeys(self.NAMES, 0)
        self.tries = dict.fromkeys(self.NAMES, 0)

    def pick(self, rng: random.Random) -> str:
        w = {a: (self.gain[a] + 1) / (self.tries[a] + 2) for a in self.NAMES}
        total = sum(w.values())
        others = total - w["fresh"]
        share = max(self.fresh_floor, w["fresh"] / total)
        if rng.random() < share:
            return "fresh"
        ops = list(OPERATORS)
        return rng.choices(ops, [w[o] / others for o in ops])[0]

    def count(self, arm: str, new: int) -> None:
        self.tries[arm] += 1
        self.gain[arm] += new


class Corpus:
    """The entries, how many runs produced each pair, and the weighted choice of what to mutate next."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.pair_runs: dict[Pair, int] = {}

    def count(self, pairs: frozenset[Pair]) -> frozenset[Pair]:
        """Count one run's pairs; returns those never seen before."""
        new = frozenset(p for p in pairs if p not in self.pair_runs)
        for p in pairs:
            self.pair_runs[p] = self.pair_runs.get(p, 0) + 1
        return new

    def weight(self, e: Entry) -> float:
        return sum(1.0 / self.pair_runs.get(p, 1) for p in e.pairs)

    def add(self, e: Entry) -> None:
        self.entries.append(e)
        if len(self.entries) > MAX_ENTRIES:
            self.entries.remove(min(self.entries, key=self.weight))

    def mutant(self, rng: random.Random, operator: str | None = None) -> Mutant | None:
        """A mutant of an entry chosen by weight, made by `operator` (or another, if that one finds nothing to
        change in the entries drawn), or None when no entry offers a choice to change."""
        if not self.entries:
            return None
        weights = [self.weight(e) + 1e-9 for e in self.entries]
        for attempt in range(8):
            e = rng.choices(self.entries, weights)[0]
            op = operator if operator is not None and attempt < 4 else rng.choice(OPERATORS)
            if op == "reorder":
                pairs = sorted(e.witness)
                if not pairs:
                    continue
                pair = rng.choices(pairs, [1.0 / self.pair_runs.get(p, 1) for p in pairs])[0]
                m = reorder(e, rng, pair)
            else:
                m = MUTATORS[op](e, rng)
            if m is not None:
                return m
        return None
