"""`ksmstress`: run, replay, bugs, scenarios, bench, kernel.

Exit status: 0 clean, 1 a failure was found, 2 bad input (one line naming the file, the key and what was
expected; never a traceback for a user's mistake).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn

from . import argtypes, catalog
from . import bench as benchmod
from . import soak as soakmod
from .bugs import VARIANTS, UnknownBug, validate
from .failures import CLASSES
from .kernel import WorkloadError
from .kernel import add_parser as add_kernel_parser
from .options import EXIT_CLEAN, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, add_run_options
from .report import ArtifactError, configure_logging, read_artifact, verdict_dict, write_artifact
from .runner import RunResult, reproduction, run_one
from .scenario import ScenarioError, load, parse, resolve


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _usage_error(msg: str) -> NoReturn:
    print(f"ksmstress: error: {msg}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _print_failure(res: RunResult, artifact: Path | None) -> None:
    f = res.failure or {}
    print(
        f"FAILURE {f.get('class')} in {res.scenario} (seed {res.seed}, {res.strategy}"
        + (f", bugs {','.join(res.bugs)}" if res.bugs else "")
        + f") after {res.steps} steps"
    )
    print(f"  {f.get('message')}")
    details = f.get("details") or {}
    for key in ("task", "object", "site", "freed", "mm", "address", "cycle", "blocked", "walk", "via"):
        if key in details:
            print(f"  {key}: {details[key]}")
    if res.reproduced is not None:
        print(f"  reproduced {res.reproduced} (free mode: the same seed rerun, the OS interleaving differs)")
    if artifact is not None:
        print(f"  artifact: {artifact}")
        print(f"  replay:   ksmstress replay {shlex.quote(str(artifact))}")


def cmd_run(a: argparse.Namespace) -> int:
    bugs = validate(a.bug)
    paths = resolve(a.scenario, a.scenario_dir)
    scenarios = [load(p) for p in paths]
    last: RunResult | None = None
    total_runs = 0
    summaries: list[dict[str, Any]] = []
    for sc in scenarios:
        steps = elapsed = 0.0
        done = 0
        for seed in range(a.seed, a.seed + a.runs):
            res = run_one(
                sc,
                seed,
                a.strategy,
                sorted(bugs),
                cpu=a.cpu,
                pct_depth=a.pct_depth,
                timeout=a.timeout,
                mode=a.mode,
                hang_seconds=a.hang_seconds,
            )
            done += 1
            total_runs += 1
            steps += res.steps
            elapsed += res.elapsed
            last = res
            if res.verdict == "failure":
                break
        assert last is not None
        sps = steps / elapsed if elapsed else 0.0
        summaries.append({"scenario": sc.name, "runs": done, "verdict": last.verdict, "steps_per_second": round(sps)})
        if last.verdict == "failure":
            if a.mode == "free" and a.reruns:
                last.reproduced = reproduction(sc, last, a.reruns, a.timeout)
            artifact = write_artifact(Path(a.artifacts), sc, last, a.pct_depth)
            if a.json:
                d = verdict_dict(last, total_runs, str(artifact))
                d["scenarios"] = summaries
                print(json.dumps(d, sort_keys=True))
            else:
                _print_failure(last, artifact)
            return EXIT_FAILURE
        if not a.json:
            print(
                f"{sc.name}: {done} run(s) clean ({a.strategy}, seeds {a.seed}..{a.seed + done - 1}"
                + (f", bugs {','.join(sorted(bugs))}" if bugs else "")
                + f"), {sps:,.0f} steps/s"
            )
    assert last is not None
    if a.json:
        d = verdict_dict(last, total_runs)
        d["scenarios"] = summaries
        print(json.dumps(d, sort_keys=True))
    return EXIT_CLEAN


def cmd_replay(a: argparse.Namespace) -> int:
    art = read_artifact(a.artifact)
    scd = art["scenario"]
    try:
        sc = parse(scd["text"], scd.get("path", a.artifact)) if scd.get("text") else load(scd["path"])
    except KeyError:
        _usage_error(f"{a.artifact}: key 'scenario.path': expected the scenario's text or path")
    bugs = validate(art["bugs"])
    if art.get("mode") == "free":  # nothing to replay step by step: rerun the seed and say how often it fails
        res = run_one(sc, art["seed"], "random", sorted(bugs), timeout=a.timeout, mode="free")
        if res.failure:
            res.reproduced = reproduction(sc, res, a.reruns, a.timeout)
    else:
        res = run_one(
            sc,
            art["seed"],
            art["strategy"],
            sorted(bugs),
            schedule=art["schedule_bytes"],
            pct_depth=art.get("pct_depth"),
            timeout=a.timeout,
        )
    recorded = (art.get("failure") or {}).get("class")
    if a.json:
        d = verdict_dict(res, 1, str(a.artifact))
        d["recorded_class"] = recorded
        d["reproduced"] = (res.failure or {}).get("class") == recorded
        print(json.dumps(d, sort_keys=True))
    elif res.verdict == "failure":
        _print_failure(res, None)
        same = (res.failure or {}).get("class") == recorded
        print(
            f"  {'reproduced' if same else 'DIFFERENT from'} the recorded {recorded} "
            f"(schedule digest {res.schedule_digest}, recorded {art.get('schedule_digest')})"
        )
    else:
        print(
            f"clean replay of {sc.name} seed {art['seed']} ({res.steps} steps): the recorded {recorded} "
            f"did not reproduce"
        )
    return EXIT_FAILURE if res.verdict == "failure" else EXIT_CLEAN


def cmd_bugs(a: argparse.Namespace) -> int:
    if a.json:
        print(json.dumps([v.__dict__ for v in VARIANTS.values()], indent=1))
        return EXIT_CLEAN
    for v in VARIANTS.values():
        print(
            f"{v.name}\n  breaks:   {v.breaks}\n  caught by: {v.detector} ({CLASSES[v.detector]})\n"
            f"  scenario: scenarios/{v.scenario}"
        )
    return EXIT_CLEAN


def cmd_scenarios(a: argparse.Namespace) -> int:
    """Every scenario a name can reach, with its origin; a user file that takes a shipped name says so."""
    found = catalog.entries(a.scenario_dir)
    if not found:
        _usage_error("no scenarios found: this install ships none and no --scenario-dir/$KSMSTRESS_SCENARIOS is set")
    first: dict[str, catalog.Entry] = {}
    for e in found:
        first.setdefault(e.name, e)
    for e in found:
        sc = load(e.path)
        where = "shipped" if e.origin == catalog.SHIPPED else f"from {e.origin}"
        hidden = f"; the name {e.name!r} picks {first[e.name].path}" if first[e.name] is not e else ""
        print(f"{e.name}  ({where}: {e.path}{hidden})\n  {sc.description}")
    return EXIT_CLEAN


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="ksmstress", description=__doc__.split("\n")[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="log events (structlog) to stderr")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run scenarios over seeds N..N+K-1, stop at the first failure")
    r.add_argument("scenario", nargs="*", help="scenario files or shipped names (default: mixed)")
    r.add_argument("--seed", type=argtypes.seed, default=0)
    r.add_argument("--runs", type=argtypes.positive_int, default=1)
    r.add_argument("--json", action="store_true", help="print one machine-readable verdict")
    add_run_options(r, reruns=10)
    r.add_argument("--cpu", type=argtypes.cpu, default=None, help="CPU to pin the run's processes to")
    r.add_argument(
        "--hang-seconds",
        type=argtypes.positive_seconds,
        default=10.0,
        help="free mode: no progress this long is a hang",
    )
    r.set_defaults(fn=cmd_run)

    p = sub.add_parser("replay", help="replay a failure artifact step by step")
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=argtypes.positive_seconds, default=120.0)
    p.add_argument(
        "--reruns",
        type=argtypes.non_negative_int,
        default=10,
        help="free-mode artifacts: reruns for the reproduction rate",
    )
    p.set_defaults(fn=cmd_replay)

    b = sub.add_parser("bugs", help="list the bug variants")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=cmd_bugs)

    s = sub.add_parser("scenarios", help="list the scenarios (shipped and from --scenario-dir), with their origin")
    s.add_argument("--scenario-dir", action="append", default=[], metavar="DIR", help="also list the scenarios here")
    s.set_defaults(fn=cmd_scenarios)

    benchmod.add_parser(sub)
    soakmod.add_parser(sub)
    add_kernel_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    configure_logging(a.verbose)
    try:
        return int(a.fn(a))
    except (ScenarioError, UnknownBug, ArtifactError, WorkloadError) as e:
        _usage_error(str(e))
    except KeyboardInterrupt:
        print("ksmstress: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
