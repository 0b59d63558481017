"""How `tox -e stress` spends its 1,000 runs per shipped scenario across strategies: measured, not assumed.

`python -m ksmstress.bench.split [--runs R] [--seconds S] [--jobs J]` measures, for every catalogue variant in its
scenario, the runs each strategy spends per detection: random and PCT (the scenario's depth, as the soak runs it)
over seeds 0..R-1, 1 / the per-run detection rate; coverage-guided search over SEARCHES searches (seeds 0, 1000,
...) each until its first failure or R runs, the runs of all of them / the searches that found it. It prints those
figures and the split they give, as the Python literal that `STRESS_SPLIT` below holds.

The rule (`split_of`): a strategy's value for a variant is its detections per run; each variant of a scenario
weighs the same, and within it each strategy gets its share of the total detection rate; a scenario's shares are
the mean over its variants. random and PCT keep at least FLOOR each (the variants are a sample of the races, and a
strategy that finds none of them may find an uncatalogued one); coverage gets a share only where it pays (for at
least one variant of the scenario its rate is at least the best per-seed strategy's), else none. A scenario with no
variant takes the mean over all variants. Shares are rounded to multiples of CHUNK runs (one xdist item each) and
always add up to TOTAL.

Runs are the unit because the soak's budget is counted in runs (seeds), and a per-run rate does not move with the
machine's load; the wall seconds per run are printed beside it (a coverage run records every shared access and
takes about twice as long as a random one), and would only lower coverage's shares further.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from .. import cpus
from ..bugs import VARIANTS
from ..pool import Pool
from ..runner import run_one
from ..scenario import load, resolve

TOTAL = 1000  # runs per shipped scenario and session
CHUNK = 50  # the unit of a share (and of an xdist item's runs, up to MAX_ITEM)
MAX_ITEM = 250  # runs of one stress test item: items this size keep xdist's workers evenly loaded
FLOOR = 0.10  # the least share of random and of PCT
SATURATED = 0.9  # a variant every strategy finds in at least this share of runs carries no weight
SEARCHES = 5
PER_SEED = ("random", "pct")
STRATEGIES = (*PER_SEED, "coverage")

# Measured on this machine on 2026-12-02, under the load of four helpers' jobs on two CPUs (rates per run do not
# depend on it): `python -m ksmstress.bench.split --runs 60 --seconds 45 --jobs 2 --json` for every variant, then
# `... --runs 300 --searches 20 --seconds 120 --jobs 2 --json --variant V` for the six variants that tell the
# strategies apart (their rows replace the first ones); `--rows FILE` recomputes the split from saved rows.
# Regenerate both tables with those commands when the model or a strategy changes. random and pct: seeds 0..; coverage:
# searches from seeds 0, 1000, ..., each until its first failure (the runs of all / the searches that found it).
# Result: PCT for merge-without-wrprotect (1.00 against 0.02), free-on-empty-list and fork-no-mapcount; random for
# unlocked-refcount-drop (PCT 0/110) and scan-exit-race; coverage search is below the best per-seed strategy on every
# variant (and a run of it takes about twice as long), so it has no share anywhere.
MEASURED: dict[str, dict[str, tuple[int, int]]] = {  # variant -> strategy -> (detections, runs)
    "fork-no-mapcount": {"random": (124, 221), "pct": (278, 300), "coverage": (20, 45)},
    "free-on-empty-list": {"random": (204, 300), "pct": (169, 176), "coverage": (20, 31)},
    "inverted-lock-order": {"random": (60, 60), "pct": (60, 60), "coverage": (5, 5)},
    "ksmd-no-mmap-sem": {"random": (60, 60), "pct": (60, 60), "coverage": (5, 5)},
    "merge-without-wrprotect": {"random": (6, 300), "pct": (159, 159), "coverage": (10, 239)},
    "narrow-refcount": {"random": (60, 60), "pct": (60, 60), "coverage": (5, 5)},
    "no-anon-vma-ref": {"random": (58, 60), "pct": (60, 60), "coverage": (5, 5)},
    "scan-exit-race": {"random": (15, 121), "pct": (5, 112), "coverage": (9, 106)},
    "single-pass-walk": {"random": (46, 72), "pct": (26, 56), "coverage": (20, 45)},
    "unlocked-refcount-drop": {"random": (14, 149), "pct": (0, 110), "coverage": (10, 203)},
}

# scenario -> {strategy: runs}; "*": a scenario not listed (no variant tells the strategies apart there: the
# mean over every variant that does).
STRESS_SPLIT: dict[str, dict[str, int]] = {
    "drop-unlink-race": {"random": 900, "pct": 100},
    "exit-merge-race": {"random": 500, "pct": 500},
    "focus-exit-scan": {"random": 500, "pct": 500},
    "focus-fault-merge": {"random": 500, "pct": 500},
    "focus-munmap-merge": {"random": 500, "pct": 500},
    "focus-walk-fork": {"random": 500, "pct": 500},
    "merge-settle": {"random": 500, "pct": 500},
    "merge-write-race": {"random": 100, "pct": 900},
    "mixed": {"random": 500, "pct": 500},
    "refcount-width": {"random": 500, "pct": 500},
    "scan-exit-race": {"random": 750, "pct": 250},
    "scan-munmap-race": {"random": 500, "pct": 500},
    "seed-fork-race": {"random": 450, "pct": 550},
    "seed-unmap-race": {"random": 400, "pct": 600},
    "wp-fault-merge-race": {"random": 500, "pct": 500},
    "*": {"random": 500, "pct": 500},
}


def _per_seed(variant: str, strategy: str, runs: int, seconds: float) -> dict[str, Any]:
    sc = load(resolve([VARIANTS[variant].scenario])[0])
    t_end = time.monotonic() + seconds
    hits = done = steps = 0
    wall = 0.0
    for seed in range(runs):
        r = run_one(sc, seed, strategy, [variant])
        done += 1
        steps += r.steps
        wall += r.elapsed
        hits += r.verdict == "failure"
        if time.monotonic() > t_end:
            break
    return {"variant": variant, "scenario": sc.name, "strategy": strategy, "runs": done, "detections": hits,
            "seconds_per_run": wall / done if done else None, "steps": steps}


def _coverage(variant: str, runs: int, seconds: float, searches: int = SEARCHES) -> dict[str, Any]:
    from ..explore.search import coverage_search

    sc = load(resolve([VARIANTS[variant].scenario])[0])
    hits = done = steps = 0
    wall = 0.0
    t_end = time.monotonic() + seconds
    for i in range(searches):
        left = t_end - time.monotonic()
        if left <= 0:
            break
        out = coverage_search(sc, [variant], runs=runs, seconds=left, seed=1000 * i)
        found = out.failure is not None
        hits += found
        done += out.runs_to_failure if found and out.runs_to_failure else out.runs
        steps += out.steps
        wall += out.seconds
    return {"variant": variant, "scenario": sc.name, "strategy": "coverage", "runs": done, "detections": hits,
            "seconds_per_run": wall / done if done else None, "steps": steps}


def measure(runs: int, seconds: float, jobs: int, variants: list[str] | None = None,
            searches: int = SEARCHES) -> list[dict[str, Any]]:
    """Every (variant, strategy) cell, in ksmstress.pool's workers (one CPU each)."""
    cells = [(v, s) for v in (variants or sorted(VARIANTS)) for s in STRATEGIES]

    def work(k: int, _job: int) -> dict[str, Any]:
        v, s = cells[k]
        return _coverage(v, runs, seconds, searches) if s == "coverage" else _per_seed(v, s, runs, seconds)

    out: list[dict[str, Any]] = []
    pool = Pool(work, cpus.spread(max(1, min(jobs, len(cells)))), name="ksmstress-split")
    handed = iter(range(len(cells)))

    def feed() -> tuple[int, int] | None:
        k = next(handed, None)
        return None if k is None else (k, k + 1)

    def on_row(row: dict[str, Any]) -> None:
        out.append(row)
        print(f"[{len(out)}/{len(cells)}] {row['variant']} {row['strategy']}: {row['detections']}/{row['runs']}",
              file=sys.stderr, flush=True)

    pool.run(feed, on_row, on_error=lambda msg: print(f"split: {msg}", file=sys.stderr, flush=True))
    return sorted(out, key=lambda r: (r["variant"], STRATEGIES.index(r["strategy"])))


def _rate(row: dict[str, Any]) -> float:
    return row["detections"] / row["runs"] if row["runs"] else 0.0


def costs(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each strategy's median seconds per run over every cell (a coverage run records every shared access)."""
    out = {}
    for s in STRATEGIES:
        xs = sorted(r["seconds_per_run"] for r in rows if r["strategy"] == s and r.get("seconds_per_run"))
        out[s] = xs[len(xs) // 2] if xs else 1.0
    return out


def saturated(rows: list[dict[str, Any]]) -> bool:
    """A variant every strategy finds in nearly every run: it cannot tell the strategies apart."""
    return all(_rate(r) >= SATURATED for r in rows)


def _shares_of_variant(rows: list[dict[str, Any]]) -> tuple[dict[str, float], bool]:
    """Each strategy's share of one variant's total detections per run, and whether coverage pays for it."""
    value = {r["strategy"]: _rate(r) for r in rows}
    total = sum(value.values())
    shares = {s: (value.get(s, 0.0) / total if total else 1.0 / len(STRATEGIES)) for s in STRATEGIES}
    cov = value.get("coverage", 0.0)
    return shares, cov > 0 and cov >= max(value.get(s, 0.0) for s in PER_SEED)


def split_of(rows: list[dict[str, Any]], scenario: str) -> dict[str, int]:
    """The runs of each strategy for one scenario (see the module's docstring for the rule)."""
    telling: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        telling.setdefault(r["variant"], []).append(r)
    telling = {v: rs for v, rs in telling.items() if not saturated(rs)}
    mine = {v: rs for v, rs in telling.items() if rs[0]["scenario"] == scenario}
    per = [_shares_of_variant(rs) for rs in (mine or telling).values()]
    if not per:  # nothing measured tells the strategies apart: an even split of the per-seed ones
        per = [({"random": 0.5, "pct": 0.5, "coverage": 0.0}, False)]
    mean = {s: sum(sh[s] for sh, _p in per) / len(per) for s in STRATEGIES}
    if not any(p for _sh, p in per):
        mean["coverage"] = 0.0
    norm = sum(mean.values())
    share = {s: mean[s] / norm for s in STRATEGIES}
    for s in PER_SEED:  # raise to the floor, taking the difference from the others in proportion
        if share[s] < FLOOR:
            rest = [o for o in STRATEGIES if o != s and share[o] > 0]
            above = sum(share[o] for o in rest)
            for o in rest:
                share[o] -= (FLOOR - share[s]) * share[o] / above
            share[s] = FLOOR
    units = TOTAL // CHUNK
    want = {s: share[s] * units for s in STRATEGIES}
    got = {s: math.floor(want[s]) for s in STRATEGIES}
    for s in sorted(STRATEGIES, key=lambda s: got[s] - want[s])[: units - sum(got.values())]:
        got[s] += 1  # largest remainders first
    return {s: got[s] * CHUNK for s in STRATEGIES if got[s]}


def split_for(scenario: str) -> dict[str, int]:
    """The stress split of a shipped scenario (the pooled one for a scenario not measured)."""
    return STRESS_SPLIT.get(scenario) or STRESS_SPLIT["*"]


def items(split: dict[str, int]) -> list[tuple[str, int, int]]:
    """(strategy, chunk index, runs) of each stress test item: a strategy's runs in items of at most MAX_ITEM."""
    out = []
    for s, n in split.items():
        k = 0
        while n > 0:
            out.append((s, k, min(n, MAX_ITEM)))
            n -= MAX_ITEM
            k += 1
    return out


def main(argv: list[str] | None = None) -> int:
    from ..catalog import shipped_dir

    ap = argparse.ArgumentParser(prog="python -m ksmstress.bench.split", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=60, help="seeds per per-seed cell, runs per coverage search")
    ap.add_argument("--seconds", type=float, default=45.0, help="wall-time budget per cell")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--searches", type=int, default=SEARCHES, help="coverage searches per variant")
    ap.add_argument("--variant", action="append", default=None)
    ap.add_argument("--json", action="store_true", help="the measured rows as JSON too")
    ap.add_argument("--rows", metavar="FILE", help="compute the split from these rows (a --json output) instead")
    a = ap.parse_args(argv)
    if a.rows:
        text = Path(a.rows).read_text()
        rows = json.loads(text[: text.index("\n]") + 2])
    else:
        rows = measure(a.runs, a.seconds, a.jobs, a.variant, a.searches)
    if a.json and not a.rows:
        print(json.dumps(rows, indent=1))
    print(f"{'variant':24} {'scenario':18} " + "  ".join(f"{s:>18}" for s in STRATEGIES))
    for v in sorted({r["variant"] for r in rows}):
        rs = {r["strategy"]: r for r in rows if r["variant"] == v}
        cells = [f"{rs[s]['detections']}/{rs[s]['runs']} {_rate(rs[s]):.2f}" if s in rs else "-" for s in STRATEGIES]
        print(f"{v:24} {next(iter(rs.values()))['scenario']:18} " + "  ".join(f"{c:>18}" for c in cells))
    print("median seconds per run: " + ", ".join(f"{s} {c:.3f}" for s, c in costs(rows).items()))
    print("saturated (no weight): " + ", ".join(
        sorted(v for v in {r["variant"] for r in rows} if saturated([r for r in rows if r["variant"] == v]))))
    names = sorted(p.stem for p in shipped_dir().glob("*.toml"))
    print("STRESS_SPLIT = {")
    for n in names:
        print(f"    {n!r}: {split_of(rows, n)!r},")
    print(f"    '*': {split_of(rows, '')!r},  # a scenario not listed here")
    print("}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
