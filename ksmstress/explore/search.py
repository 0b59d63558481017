"""Coverage-guided search over schedules (`--strategy coverage`), and the random search it is measured against.

Why: uniform random choice reaches a window that needs several consecutive steps of one task about once in a
thousand runs. Coverage feedback keeps the schedules that produced an interleaving pair never seen before
(checks.pairs) and spends most runs on small changes of them (corpus.py), preferring those holding rare pairs,
while a share of runs (`fresh`) still starts from new seeds, so new programs keep coming in.

Every run is an ordinary run_one: a fresh seed runs the guided strategy with an empty prefix and a random tail,
the same schedule `random` gives that seed; a mutant runs its entry's seed with the mutant's prefix. A failure is
an ordinary RunResult whose schedule is the whole schedule the run followed, so `ksmstress replay` of its
artifact reproduces it; its strategy is named `coverage`. A mutant's prefix that stops being followable (a delay
or swap asked for a task that had blocked) ends that run with `replay-diverged`: not a failure, it is counted as
`diverged`, its pairs still count, and the same prefix cut at the divergence runs again (a second run).

The search is deterministic for (scenario, bugs, seed, runs): its choices come from its own PRNG seeded by
`seed`, and each run is deterministic for its seed and prefix. A `seconds` budget makes only the count of runs
depend on the machine.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ..checks.pairs import Pair, Site
from ..runner import RunResult, run_one
from ..scenario import Scenario
from .corpus import Arms, Corpus, Entry, Mutant

SEARCHES = ("coverage", "random")  # coverage-guided, and fresh random seeds only (the baseline)
FRESH = 0.25  # the least share of a coverage search's runs that start from a new seed
DIVERGED = "replay-diverged"


@dataclass(frozen=True)
class Sample:
    """The search after `runs` runs: elapsed seconds (run time, forks included) and distinct pairs so far."""

    runs: int
    seconds: float
    pairs: int


@dataclass
class SearchResult:
    """What a search did: runs, steps, seconds, every pair and how many runs produced it, the sites that accessed
    shared data, the growth of the pair count run by run, and the first failure (or a run that used up
    max_steps while still making progress: the scenario's budget, not a model failure)."""

    scenario: str
    strategy: str
    seed: int
    runs: int = 0
    steps: int = 0
    seconds: float = 0.0
    pair_runs: dict[Pair, int] = field(default_factory=dict)
    sites: set[Site] = field(default_factory=set)
    timeline: list[Sample] = field(default_factory=list)
    failure: RunResult | None = None
    runs_to_failure: int | None = None
    failure_origin: str | None = None  # fresh, or the operator whose mutant failed
    seconds_to_failure: float | None = None
    steps_to_failure: int | None = None  # scheduling points of every run up to and including the failing one
    budget: RunResult | None = None
    fresh: int = 0  # runs from a new seed
    mutants: int = 0  # runs of a mutated schedule (diverged ones and their reruns included)
    diverged: int = 0
    corpus: int = 0  # entries kept at the end

    @property
    def pairs(self) -> frozenset[Pair]:
        return frozenset(self.pair_runs)

    def pairs_after(self, runs: int) -> int:
        """Distinct pairs after the first `runs` runs (all of them if the search ran fewer)."""
        n = 0
        for s in self.timeline:
            if s.runs > runs:
                break
            n = s.pairs
        return n

    def never_paired(self) -> list[Site]:
        """(kind, site)s that accessed shared data but took part in no pair: races never exercised."""
        paired = {(a, sa) for a, sa, _b, _sb in self.pair_runs} | {(b, sb) for _a, _sa, b, sb in self.pair_runs}
        return sorted(self.sites - paired)


def coverage_search(
    sc: Scenario,
    bugs: Sequence[str] = (),
    runs: int | None = None,
    seconds: float | None = None,
    seed: int = 0,
    *,
    strategy: str = "coverage",
    fresh: float = FRESH,
    stop_on_failure: bool = True,
    timeout: float = 120.0,
    granularity: str | None = None,
    cpu: int | None = None,
    on_run: Callable[[RunResult, SearchResult], None] | None = None,
) -> SearchResult:
    """Search `sc` with `bugs` switched on for at most `runs` runs and/or `seconds` seconds (at least one of them),
    `strategy` coverage (guided by pairs) or random (seeds seed, seed+1, ... as `ksmstress run`), recording the
    interleaving pairs of every run. Stops at the first failure unless `stop_on_failure` is False, and at a run
    that exhausted max_steps (`budget`). `on_run` is called after each run that was not cut short by a diverging
    prefix (progress lines)."""
    out = SearchResult(sc.name, strategy, seed)
    for res in search_runs(
        out, sc, bugs, runs, seconds, fresh=fresh, timeout=timeout, granularity=granularity, cpu=cpu
    ):
        if on_run is not None:
            on_run(res, out)
        if res.verdict == "budget" or (res.verdict == "failure" and stop_on_failure):
            break
    return out


def search_runs(
    out: SearchResult,
    sc: Scenario,
    bugs: Sequence[str] = (),
    runs: int | None = None,
    seconds: float | None = None,
    *,
    fresh: float = FRESH,
    timeout: float = 120.0,
    granularity: str | None = None,
    cpu: int | None = None,
) -> Iterator[RunResult]:
    """The search as an iterator: yields every run that was not cut short by a diverging prefix, after counting it
    into `out` (its strategy and seed say which search); the caller decides when to stop (a failure, a budget
    run). A failing run's strategy is set to the search's name (`coverage` or `random`)."""
    strategy, seed = out.strategy, out.seed
    if strategy not in SEARCHES:
        raise ValueError(f"unknown search {strategy!r}; expected one of {', '.join(SEARCHES)}")
    if runs is None and seconds is None:
        raise ValueError("a search needs a budget: runs, seconds or both")
    rng = random.Random(f"coverage-search:{seed}")
    corpus = Corpus()
    arms = Arms(fresh)
    next_seed = seed
    started = time.monotonic()

    def left() -> bool:
        return (runs is None or out.runs < runs) and (seconds is None or time.monotonic() - started < seconds)

    def run(s: int, prefix: bytes | None) -> RunResult:
        if prefix is None and strategy == "random":
            return run_one(sc, s, "random", bugs, cpu=cpu, timeout=timeout, granularity=granularity, coverage=True)
        return run_one(
            sc,
            s,
            "guided",
            bugs,
            schedule=prefix or b"",
            tail="random",
            cpu=cpu,
            timeout=timeout,
            granularity=granularity,
            coverage=True,
        )

    try:
        while left():
            m: Mutant | None = None
            if strategy == "coverage" and corpus.entries:
                arm = arms.pick(rng)
                if arm != "fresh":
                    m = corpus.mutant(rng, arm)
            if m is None:
                res = run(next_seed, None)
                next_seed += 1
                out.fresh += 1
                origin = "fresh"
            else:
                res = run(m.seed, m.prefix)
                out.mutants += 1
                origin = m.operator
                if _diverged(res):
                    arms.count(origin, _account(out, corpus, res, origin, started, keep=False))
                    out.diverged += 1
                    if not left():
                        break
                    step = int((res.failure or {}).get("details", {}).get("step", 0))
                    res = run(m.seed, m.prefix[:step])
                    out.mutants += 1
            arms.count(origin, _account(out, corpus, res, origin, started, keep=strategy == "coverage"))
            if res.verdict == "failure":
                res.strategy = strategy
                if out.failure is None:
                    out.failure = res
                    out.runs_to_failure = out.runs
                    out.failure_origin = origin
                    out.steps_to_failure = out.steps
                    out.seconds_to_failure = round(time.monotonic() - started, 3)
            elif res.verdict == "budget" and out.budget is None:
                out.budget = res
            out.seconds = round(time.monotonic() - started, 3)
            out.corpus = len(corpus.entries)
            yield res
    finally:
        out.seconds = round(time.monotonic() - started, 3)
        out.corpus = len(corpus.entries)


def _diverged(res: RunResult) -> bool:
    return (res.failure or {}).get("class") == DIVERGED


def _account(out: SearchResult, corpus: Corpus, res: RunResult, origin: str, started: float, keep: bool) -> int:
    """Count one run: its steps and pairs, a timeline sample, and a corpus entry if it added pairs; returns how
    many pairs it added."""
    out.runs += 1
    out.steps += res.steps
    cov = res.coverage
    if cov is None:
        return 0
    new = corpus.count(cov.pairs)
    out.sites |= cov.sites
    for p in cov.pairs:
        out.pair_runs[p] = out.pair_runs.get(p, 0) + 1
    out.timeline.append(Sample(out.runs, round(time.monotonic() - started, 3), len(out.pair_runs)))
    if keep and new and res.runnable and not _diverged(res):
        corpus.add(Entry(res.seed, res.schedule, res.runnable, cov.pairs, cov.witness, origin))
    return len(new)
