"""`ksmstress mutate`: mutation testing of the model, our own measure of the detectors' power.

Mutants of ksmstress/mm/ are made by concurrency-shaped AST rules (rules.py), each soaked in a scratch copy of the
package over the shipped scenarios and strategies (scratch.py, probe.py), several at once (campaign.py), and
scored over the mutants not listed as equivalent (equivalent.py, report.py). A survivor is a lead for a new
oracle, scenario or strategy.

Strategies (--strategy, repeatable; default random and pct): random and pct rotate seed by seed over the
scenarios; bounded explores every schedule of seed --seed with at most --preemptions C (default 1) preemptions,
one schedule of each scenario in turn (the non-preemptive ones first), a finished tree moving on to the next
seed; coverage runs one coverage-guided search per scenario, one run of each in turn. A mutant is killed when its
strategy's runs meet a failure within its budget; (random/pct), bounded and coverage each get an equal share of
it. --compare soaks the same mutants once per strategy, each with the whole budget, and prints every strategy's
score, the mutants only one strategy kills and those none kills.

Exit status: 0 the campaign ran (whatever the score, unless --fail-under), 1 the score is below --fail-under,
2 bad input, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM); an interrupted campaign prints what it had.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .. import argtypes
from ..options import EXIT_CLEAN, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE
from ..scenario import ScenarioError, every, load, resolve
from ..sched import SEARCH_STRATEGIES, STRATEGIES
from . import equivalent as eqmod
from . import report
from .campaign import Campaign, Plan, Result
from .generate import Mutant, generate, key_of, sample
from .probe import DEFAULT_PREEMPTIONS
from .reach import SEEDS as REACH_SEEDS
from .reach import reach_map
from .rules import RULES
from .scratch import package_dir

EXIT_TERMINATED = 143
DEFAULT_SECONDS = 60.0
DEFAULT_STRATEGIES = STRATEGIES  # random and pct: the campaign's figures over time are comparable


def _select(mutants: list[Mutant], a: argparse.Namespace) -> list[Mutant]:
    if a.file:
        files = sorted({m.file for m in mutants})
        bad = [f for f in a.file if f not in files]
        if bad:
            raise eqmod.EquivalentError(f"--file {bad[0]!r}: expected a model file, one of {', '.join(files)}")
        mutants = [m for m in mutants if m.file in a.file]
    if a.rule:
        mutants = [m for m in mutants if m.rule in a.rule]
    if a.mutant:
        wanted = set(a.mutant) | {key_of(n) for n in a.mutant}
        unknown = [n for n in a.mutant if not any(m.name == n or m.key == key_of(n) for m in mutants)]
        if unknown:
            raise eqmod.EquivalentError(f"--mutant {unknown[0]!r}: no such mutant (see `ksmstress mutate --list`)")
        mutants = [m for m in mutants if m.name in wanted or m.key in wanted]
    return sample(mutants, a.sample, a.seed)


def _list(selected: list[Mutant], eq: eqmod.Equivalents, as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"name": m.name, "rule": m.rule, "description": m.description,
                           "equivalent": eq.reason(m)} for m in selected], indent=1))
    else:
        for m in selected:
            why = eq.reason(m)
            print(f"{m.name}  {m.description}" + (f"  [equivalent: {why}]" if why else ""))
    per = Counter(m.rule for m in selected)
    print(f"{len(selected)} mutant(s): " + ", ".join(f"{r} {per[r]}" for r in RULES if per[r]), file=sys.stderr)


def _progress(total: int, label: str = "") -> Any:
    done = [0]

    def note(r: Result) -> None:
        done[0] += 1
        what = {"killed": f"killed ({r.cls}) in {r.time_to_kill or 0:.1f}s", "survived": f"survived {r.runs} runs",
                "timeout": f"timed out ({r.cls})", "error": f"error: {r.detail}"}[r.outcome]
        print(f"[{label}{done[0]}/{total}] {r.mutant.name}: {what}", file=sys.stderr, flush=True)

    return note


def cmd_mutate(a: argparse.Namespace) -> int:
    try:
        eq = eqmod.load(Path(a.equivalent) if a.equivalent else None)
        every_mutant = generate(package_dir())
        selected = _select(every_mutant, a)
        paths = resolve(a.scenario, a.scenario_dir) if a.scenario else every(a.scenario_dir)
        if not paths:
            raise ScenarioError("ksmstress mutate: no scenarios found (none shipped with this install); name some")
        for p in paths:
            load(p)  # every file validated before any probe starts
        if a.preemptions is not None and "bounded" not in a.strategy:
            raise ScenarioError("--preemptions: only with --strategy bounded")
    except (eqmod.EquivalentError, ScenarioError) as e:
        print(f"ksmstress: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if a.preemptions is None:
        a.preemptions = DEFAULT_PREEMPTIONS
    for name in eq.stale(every_mutant):
        print(f"ksmstress mutate: {eq.path}: entry {name!r} matches no mutant (stale: the code moved or changed)",
              file=sys.stderr)
    if a.list:
        _list(selected, eq, a.json)
        return EXIT_CLEAN
    equivalent = [(m, why) for m in selected if (why := eq.reason(m))]
    to_run = [m for m in selected if not eq.reason(m)]
    keep = Path(a.keep) if a.keep else None
    strategies = a.strategy or list(DEFAULT_STRATEGIES)
    rounds = [[s] for s in strategies] if a.compare else [strategies]
    summaries: dict[str, dict[str, Any]] = {}
    interrupted: str | None = None
    resolved = [str(Path(p).resolve()) for p in paths]
    reached = None
    if not a.no_reach and len(paths) > 1 and to_run:
        t0 = time.monotonic()
        reached = reach_map(resolved)
        print(f"ksmstress mutate: measured which of {len(paths)} scenario(s) run each model function in "
              f"{time.monotonic() - t0:.0f}s (faithful runs, seeds 0-{REACH_SEEDS - 1}); a mutant's runs go to those "
              f"first", file=sys.stderr, flush=True)
    for rnd in rounds:
        where = keep / rnd[0] if keep and a.compare else keep
        plan = Plan(resolved, rnd, a.seconds_per_mutant, a.seed, a.run_timeout,
                    str((where / "artifacts").resolve()) if where else None, a.preemptions, reached)
        note = _progress(len(to_run), f"{rnd[0]} " if a.compare else "")

        def on_result(r: Result, where: Path | None = where, note: Any = note) -> None:
            note(r)
            if where:
                report.keep(where, r)

        print(f"ksmstress mutate: {len(to_run)} mutant(s) to soak ({len(equivalent)} equivalent skipped, "
              f"{len(every_mutant)} generated), {a.seconds_per_mutant:g}s each over {len(paths)} scenario(s) x "
              f"{', '.join(plan.strategies)}, {min(a.jobs, max(1, len(to_run)))} job(s)", file=sys.stderr,
              flush=True)
        camp = Campaign(to_run, plan, a.jobs, on_result)
        results = camp.run()
        meta = {"generated": len(every_mutant), "selected": len(selected), "seconds_per_mutant": a.seconds_per_mutant,
                "jobs": camp.jobs, "sample": a.sample, "seed": a.seed, "strategies": plan.strategies,
                "preemptions": a.preemptions if "bounded" in plan.strategies else None,
                "scenarios": [Path(p).stem for p in paths], "interrupted": camp.interrupted,
                "reach": reached is not None}
        summaries["+".join(rnd)] = d = report.summary(results, equivalent, meta)
        if where:
            where.mkdir(parents=True, exist_ok=True)
            (where / "summary.json").write_text(json.dumps(d, indent=1, sort_keys=True) + "\n")
        if not a.json:
            report.print_table(d)
        interrupted = camp.interrupted
        if interrupted:
            break
    if a.compare:
        cmp = report.compare(summaries)
        if keep:
            (keep / "compare.json").write_text(json.dumps(cmp, indent=1, sort_keys=True) + "\n")
        if a.json:
            print(json.dumps(cmp, sort_keys=True))
        else:
            report.print_compare(cmp)
        scores = [x["score"] for x in cmp["strategies"].values() if x["score"] is not None]
        score = min(scores) if scores else None  # --fail-under: every strategy must reach it
    else:
        d = next(iter(summaries.values()))
        if a.json:
            print(json.dumps(d, sort_keys=True))
        score = d["score"]
    sys.stdout.flush()
    if interrupted:
        print("ksmstress: interrupted" if interrupted == "interrupt" else "ksmstress: terminated", file=sys.stderr)
        return EXIT_INTERRUPTED if interrupted == "interrupt" else EXIT_TERMINATED
    if a.fail_under is not None and (score or 0.0) * 100 < a.fail_under:
        return EXIT_FAILURE
    return EXIT_CLEAN


def _percent(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = -1.0
    if not 0 <= x <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage in [0, 100], got {text!r}")
    return x


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `mutate` on the CLI's subparsers (cli.build_parser calls `mutate.add_parser(sub)`)."""
    p = sub.add_parser(
        "mutate",
        help="mutation testing of the model: soak AST mutants of ksmstress/mm/ and score the detectors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", nargs="*", help="scenario files or shipped names (default: every shipped scenario)")
    p.add_argument("--scenario-dir", action="append", default=[], metavar="DIR",
                   help="look for scenario names here before the shipped ones (repeatable)")
    p.add_argument("--strategy", action="append", choices=STRATEGIES + SEARCH_STRATEGIES, default=[],
                   help="how a mutant's runs are scheduled (repeatable; default: "
                        f"{' and '.join(DEFAULT_STRATEGIES)}). random and pct rotate together seed by seed; "
                        "bounded explores, one schedule of each scenario in turn, every schedule of seed --seed with "
                        "at most --preemptions preemptions (then the next seed); coverage runs a coverage-guided "
                        "search per scenario, one run of each in turn. Each of (random/pct), bounded and coverage "
                        "gets an equal share of the budget, in that order")
    p.add_argument("--preemptions", type=argtypes.non_negative_int, default=None, metavar="C",
                   help=f"--strategy bounded: the preemption bound C (default {DEFAULT_PREEMPTIONS})")
    p.add_argument("--compare", action="store_true",
                   help="soak the same mutants once per --strategy, each with the whole budget, and print each "
                        "strategy's score and the mutants only one strategy kills (and those none kills)")
    p.add_argument("--seconds-per-mutant", type=argtypes.positive_seconds, default=DEFAULT_SECONDS, metavar="S",
                   help=f"soak budget of each mutant, in seconds (default {DEFAULT_SECONDS:g})")
    p.add_argument("--jobs", type=argtypes.positive_int, default=len(os.sched_getaffinity(0)),
                   help="mutants soaked at once, one per job, each pinned to its own CPU (default: the CPUs allowed)")
    p.add_argument("--sample", type=argtypes.positive_int, default=None, metavar="N",
                   help="soak N mutants picked by --seed (the same N on every machine; default: all)")
    p.add_argument("--seed", type=argtypes.seed, default=0,
                   help="picks the sample, and is the first seed of every mutant's runs (default 0)")
    p.add_argument("--file", action="append", default=[], metavar="FILE",
                   help="only mutants of this model file, as --list names it, e.g. mm/swapfile.py (repeatable): "
                        "a campaign over one path of the model")
    p.add_argument("--rule", action="append", choices=RULES, default=[],
                   help="only mutants of this rule (repeatable)")
    p.add_argument("--mutant", action="append", default=[], metavar="NAME",
                   help="only this mutant, by the name --list prints (repeatable; the line number may differ)")
    p.add_argument("--list", action="store_true", help="list the selected mutants without running them")
    p.add_argument("--json", action="store_true", help="print one machine-readable summary (or list) instead")
    p.add_argument("--keep", metavar="DIR",
                   help="write each mutant's diff and result (and the artifact of its killing run) into DIR")
    p.add_argument("--equivalent", metavar="FILE",
                   help="the equivalent-mutant list to use (default: the shipped ksmstress/mutants-equivalent.toml)")
    p.add_argument("--no-reach", action="store_true",
                   help="give every scenario the same share of a mutant's runs, instead of first measuring which "
                        "scenarios run each model function (faithful runs, seeds 0-1 of each, some seconds) and "
                        "soaking a mutant mostly on those")
    p.add_argument("--run-timeout", type=argtypes.positive_seconds, default=20.0, metavar="S",
                   help="least wall-clock allowance of one run: a run past max(the mutant's remaining budget, S) "
                        "is a hang, and the mutant counts as timed out (default 20)")
    p.add_argument("--fail-under", type=_percent, default=None, metavar="PCT",
                   help="exit 1 when the score (with --compare: any strategy's) is below PCT percent")
    p.set_defaults(fn=cmd_mutate)
    return p


def main(argv: list[str] | None = None) -> int:
    """`ksmstress mutate` on its own (before the main CLI registers it): main(["--list"])."""
    ap = argparse.ArgumentParser(prog="ksmstress")
    sub = ap.add_subparsers(dest="cmd")
    add_parser(sub)
    a = ap.parse_args(["mutate", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(a.fn(a))
    except KeyboardInterrupt:
        print("ksmstress: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
