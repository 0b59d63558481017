"""`ksmstress coverage SCENARIO...`: which interleavings were ever exercised, random search beside coverage-guided.

Per scenario, the same budget (`--runs` runs or `--seconds` seconds each) for a random search (fresh seeds, as
`run`) and a coverage-guided one (search.py), both from `--seed`; then the distinct interleaving pairs each had
after 1, 2, 4, 8, ... runs, side by side; the (kind, site)s that accessed shared data but never met another task
in a pair; and the instrumented sites of the model (sites.py) that no run of either search reached at all.
A failure found on the way (with `--bug`) is written as an artifact and named with its replay command; the search
goes on, so the growth keeps its meaning (exit 1 then).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .. import argtypes
from ..bugs import validate
from ..report import check_artifact_dir, write_artifact
from ..scenario import Scenario, load, resolve
from ..sched import GRANULARITIES
from ..verdict import replay_command
from .search import SEARCHES, SearchResult, coverage_search
from .sites import instrumented_sites

DEFAULT_SECONDS = 30.0
EXIT_CLEAN, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _growth_points(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    out, k = [], 1
    while k < n:
        out.append(k)
        k *= 2
    return [*out, n] if n else out


def _measure(sc: Scenario, a: argparse.Namespace, bugs: list[str]) -> dict[str, SearchResult]:
    return {
        s: coverage_search(
            sc,
            bugs,
            a.runs,
            a.seconds,
            a.seed,
            strategy=s,
            stop_on_failure=False,
            timeout=a.timeout,
            granularity=a.granularity,
            cpu=a.cpu,
        )
        for s in SEARCHES[::-1]  # random first: the baseline
    }


def _report(sc: Scenario, res: dict[str, SearchResult], a: argparse.Namespace, static: set[str]) -> dict[str, Any]:
    """One scenario's figures (the JSON object; the text is printed from it)."""
    most = max(r.runs for r in res.values())
    growth = [
        {"runs": n, **{s: (r.pairs_after(n) if n <= r.runs else None) for s, r in res.items()}}
        for n in _growth_points(most)
    ]
    sites: set[tuple[str, str]] = set().union(*(r.sites for r in res.values()))
    pairs = {s: r.pairs for s, r in res.items()}
    union = frozenset().union(*pairs.values())
    paired = {(p[0], p[1]) for p in union} | {(p[2], p[3]) for p in union}
    reached = {site for _kind, site in sites}
    failures = []
    for s, r in res.items():
        if r.failure is not None:
            path = write_artifact(Path(a.artifacts), sc, r.failure, None)
            failures.append(
                {
                    "search": s,
                    "class": (r.failure.failure or {}).get("class"),
                    "run": r.runs_to_failure,
                    "artifact": str(path),
                    "replay": replay_command(path),
                }
            )
    return {
        "scenario": sc.name,
        "path": sc.path,
        "seed": a.seed,
        "searches": {
            s: {
                "runs": r.runs,
                "steps": r.steps,
                "seconds": r.seconds,
                "pairs": len(r.pair_runs),
                "only_here": len(pairs[s] - frozenset().union(*(p for t, p in pairs.items() if t != s))),
                "fresh_seeds": r.fresh,
                "mutated_schedules": r.mutants,
                "diverged_prefixes": r.diverged,
                "corpus": r.corpus,
            }
            for s, r in res.items()
        },
        "growth": growth,
        "pairs": len(union),
        "never_paired": [f"{kind}:{site}" for kind, site in sorted(sites - paired)],
        "never_reached": sorted(static - reached),
        "failures": failures,
    }


def _print(d: dict[str, Any]) -> None:
    names = list(d["searches"])
    print(f"{d['scenario']}: interleaving pairs (seed {d['seed']}), {' beside '.join(names)}")
    print(f"  {'runs':>6}" + "".join(f"{n:>10}" for n in names))
    for g in d["growth"]:
        print(f"  {g['runs']:>6}" + "".join(f"{'-' if g[n] is None else g[n]:>10}" for n in names))
    fig = d["searches"]
    print(f"  {'secs':>6}" + "".join(f"{fig[n]['seconds']:>10.1f}" for n in names))
    print(
        f"  {d['pairs']} distinct pairs in all; found by one search only: "
        + ", ".join(f"{n} {fig[n]['only_here']}" for n in names)
    )
    cov = fig.get("coverage")
    if cov:
        print(
            f"  coverage search: {cov['fresh_seeds']} fresh seed(s), {cov['mutated_schedules']} mutated "
            f"schedule(s) ({cov['diverged_prefixes']} cut short by a diverging prefix), corpus {cov['corpus']}"
        )
    print(
        f"  accessed shared data but never paired ({len(d['never_paired'])}): "
        + (", ".join(d["never_paired"]) or "none")
    )
    print(
        f"  instrumented sites never reached ({len(d['never_reached'])}): " + (", ".join(d["never_reached"]) or "none")
    )
    for f in d["failures"]:
        print(f"  FAILURE {f['class']} under {f['search']} at run {f['run']}: {f['replay']}")


def cmd_coverage(a: argparse.Namespace) -> int:
    bugs = sorted(validate(a.bug))
    scenarios = [load(p) for p in resolve(a.scenario, a.scenario_dir)]
    check_artifact_dir(a.artifacts)
    if a.runs is None and a.seconds is None:
        a.seconds = DEFAULT_SECONDS
    static = instrumented_sites()
    out = []
    for sc in scenarios:
        res = _measure(sc, a, bugs)
        budget = next((r.budget for r in res.values() if r.budget is not None), None)
        if budget is not None:
            ops = ((budget.failure or {}).get("details") or {}).get("operations", "?")
            print(
                f"ksmstress: error: {sc.path}: key 'max_steps': expected more than {sc.max_steps} scheduling "
                f"points for this scenario (seed {budget.seed} used them all while its programs were still "
                f"completing operations, {ops} in the last quarter: not a model failure)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        d = _report(sc, res, a, static)
        out.append(d)
        if not a.json:
            _print(d)
    if a.json:
        print(json.dumps({"scenarios": out, "bugs": bugs}, sort_keys=True))
    return EXIT_FAILURE if any(d["failures"] for d in out) else EXIT_CLEAN


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "coverage",
        help="interleaving-pair coverage of random and coverage-guided search side by side, and the sites never paired",
        description=__doc__,
    )
    p.add_argument("scenario", nargs="+", help="scenario files or names")
    p.add_argument(
        "--seconds",
        type=argtypes.positive_seconds,
        default=None,
        help=f"seconds for each search of each scenario (default: {DEFAULT_SECONDS:.0f} unless --runs)",
    )
    p.add_argument(
        "--runs",
        type=argtypes.positive_int,
        default=None,
        help="runs for each search of each scenario (the same count for both: a deterministic table)",
    )
    p.add_argument("--seed", type=argtypes.seed, default=0, help="the searches' seed (random: its first run seed)")
    p.add_argument("--bug", action="append", default=[], metavar="NAME", help="switch a bug variant on (repeatable)")
    p.add_argument(
        "--granularity",
        choices=GRANULARITIES,
        default=None,
        help="where control may change hands (default: each scenario's)",
    )
    p.add_argument(
        "--scenario-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="look for scenario names here before the shipped ones (repeatable)",
    )
    p.add_argument("--artifacts", default="ksmstress-artifacts", help="directory for a failure's artifact")
    p.add_argument(
        "--timeout", type=argtypes.positive_seconds, default=120.0, help="wall-clock seconds per run before 'hang'"
    )
    p.add_argument("--cpu", type=argtypes.cpu, default=None, help="CPU to pin the runs' processes to")
    p.add_argument("--json", action="store_true", help="print one JSON object: every scenario's figures")
    p.set_defaults(fn=cmd_coverage)
