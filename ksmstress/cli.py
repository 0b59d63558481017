"""`ksmstress`: run, replay, shrink, soak, bench, bugs, scenarios, kernel, mutate.

Exit status: 0 clean, 1 a failure was found, 2 bad input (one line naming the file, the key and what was
expected; never a traceback for a user's mistake), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import structlog

from . import __version__, argtypes, catalog, mutate, procs
from . import bench as benchmod
from . import explain as explainmod
from . import soak as soakmod
from .bugs import VARIANTS, UnknownBug, validate
from .explain import autoshrink
from .explain import shrink as shrinkmod
from .explore import SearchResult, explore_bounded
from .explore import bounded_cmd as explore_cmd
from .explore import coverage_cmd as coverage_command
from .explore.search import search_runs
from .failures import CLASSES
from .kernel import WorkloadError
from .kernel import add_parser as add_kernel_parser
from .options import EXIT_CLEAN, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, add_run_options
from .progress import Progress
from .report import (
    ArtifactError,
    check_artifact_dir,
    configure_logging,
    read_artifact,
    write_artifact,
)
from .runner import RunResult, reproduction, rerun_free, run_one, run_seeds
from .scenario import Scenario, ScenarioError, load, parse, resolve
from .sched import SEARCH_STRATEGIES
from .verdict import failure_lines, replay_command, reproduced_text, rerun_command, where

log = structlog.get_logger("ksmstress")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help shows its default, unless the help already says it or the default means 'off'."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if (
            "default" in text
            or d is None
            or d is False
            or d == []
            or d is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kw)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _usage_error(msg: str) -> NoReturn:
    print(f"ksmstress: error: {msg}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _print_failure(res: RunResult, artifact: Path | None) -> None:
    print(f"FAILURE {(res.failure or {}).get('class')} in {where(res)} after {res.steps} steps")
    for line in failure_lines(res.failure):
        print(line)
    rep = reproduced_text(res)
    if rep:
        print(f"  {rep} (free mode: the same seed rerun, the OS interleaving differs)")
    if artifact is not None:
        print(f"  artifact: {artifact}")
        print(f"  replay:   {replay_command(artifact)}")


# -- run --------------------------------------------------------------------------------------------------------
@dataclass
class _Totals:
    """What `run` adds up over every run of every scenario (the progress line reads the same fields)."""

    started: float = field(default_factory=time.monotonic)
    runs: int = 0
    steps: int = 0
    handoffs: int = 0
    run_seconds: float = 0.0
    max_refcount: int = 0
    failures: list[RunResult] = field(default_factory=list)
    digest: Any = field(default_factory=hashlib.sha256)

    def add(self, res: RunResult) -> None:
        self.runs += 1
        self.steps += res.steps
        self.handoffs += res.handoffs
        self.run_seconds += res.elapsed
        self.max_refcount = max(self.max_refcount, res.max_refcount)
        self.digest.update(res.schedule_digest.encode())
        if res.verdict == "failure":
            self.failures.append(res)

    def wall(self) -> float:
        return time.monotonic() - self.started

    def figures(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "steps": self.steps,
            "handoffs": self.handoffs,
            "run_seconds": round(self.run_seconds, 4),
            "steps_per_second": round(self.steps / self.run_seconds, 1) if self.run_seconds > 0 else 0.0,
            "max_ksm_refcount": self.max_refcount,
            # one digest over every run's schedule, in order: two invocations ran the same schedules iff equal
            "schedule_digest": self.digest.hexdigest()[:16],
        }


def _failure_dict(res: RunResult, artifact: Path | None) -> dict[str, Any]:
    f = res.failure or {}
    d: dict[str, Any] = {
        "scenario": res.scenario,
        "seed": res.seed,
        "steps": res.steps,
        "schedule_digest": res.schedule_digest,
        "class": f.get("class"),
        "message": f.get("message"),
        "details": f.get("details", {}),
    }
    if res.reproduced is not None:
        d["reproduced_rate"] = res.reproduced
    if artifact is not None:
        d["artifact"] = str(artifact)
        d["replay"] = replay_command(artifact)
    return d


def _run_json(a: argparse.Namespace, total: _Totals, per: list[dict[str, Any]], failed: dict[str, Any] | None) -> str:
    last = per[-1]["seeds"]["last"] if per else a.seed
    d: dict[str, Any] = {
        "verdict": "failure" if failed else "clean",
        **total.figures(),
        "wall_seconds": round(total.wall(), 3),
        "seeds": {"first": a.seed, "last": last},
        "strategy": a.strategy if a.mode == "controlled" else "free",
        "mode": a.mode,
        "bugs": sorted(a.bug),
        "scenarios": per,
        "failure": failed,
    }
    if failed and "artifact" in failed:
        d["artifact"], d["replay"] = failed["artifact"], failed["replay"]
    return json.dumps(d, sort_keys=True)


def _search_figures(s: SearchResult) -> dict[str, Any]:
    """What a coverage search adds to a scenario's figures: how its runs were made and the pairs they reached."""
    return {"pairs": len(s.pair_runs), "fresh_seeds": s.fresh, "mutated_schedules": s.mutants,
            "diverged_prefixes": s.diverged, "corpus": s.corpus}


def _shrink_after(a: argparse.Namespace, artifact: Path) -> autoshrink.Shrunk | str | None:
    """--shrink: the failure's artifact shrunk within --shrink-seconds (a line saying why not, if it cannot be)."""
    if not a.shrink:
        return None
    log.info("shrink.start", artifact=str(artifact), seconds=a.shrink_seconds)
    return autoshrink.try_shrink(artifact, a.shrink_seconds, a.timeout, lambda msg: log.info("shrink", progress=msg))


def _shrunk_fields(sh: autoshrink.Shrunk | str | None) -> dict[str, Any]:
    if sh is None:
        return {}
    return {"shrunk": sh.to_dict() if isinstance(sh, autoshrink.Shrunk) else {"error": sh}}


def _print_shrunk(sh: autoshrink.Shrunk | str | None) -> None:
    if sh is not None:
        print(f"  shrunk:   {sh.line() if isinstance(sh, autoshrink.Shrunk) else sh}")


def cmd_run(a: argparse.Namespace) -> int:
    wrong = explore_cmd.misuse(a)
    if wrong:
        _usage_error(wrong)
    bugs = sorted(validate(a.bug))
    if a.strategy in SEARCH_STRATEGIES and a.mode != "controlled":
        _usage_error(f"--strategy {a.strategy}: expected --mode controlled (the search steers the controlled "
                     f"scheduler), got --mode {a.mode}")
    scenarios: list[Scenario] = [load(p) for p in resolve(a.scenario, a.scenario_dir)]
    check_artifact_dir(a.artifacts)  # before any run: a failure found later must have somewhere to go
    _check_out("--trace", a.trace)
    _check_out("--timeline", a.timeline)
    if (a.trace or a.timeline) and a.mode == "free":
        _usage_error("--trace/--timeline: expected --mode controlled (a free-mode run has no schedule to replay)")
    if a.shrink and a.mode == "free":
        _usage_error("--shrink: expected --mode controlled (a free-mode run has no schedule to shrink)")
    if (a.trace or a.timeline) and a.strategy == "bounded":
        _usage_error("--trace/--timeline: not with --strategy bounded; replay its artifact with --trace instead")
    if a.strategy == "bounded":
        return _cmd_bounded(a, scenarios, bugs)
    a.runs = a.runs or 1
    total = _Totals()
    count = a.runs * len(scenarios)
    # a redrawn line on a terminal; with --json or into a log, a line every 10 s on stderr (none for short runs)
    progress = Progress(count, None, label="run", tty=False if a.json else None) if count > 1 else None
    per: list[dict[str, Any]] = []
    log.info("run.start", scenarios=[sc.name for sc in scenarios], seed=a.seed, runs=a.runs, strategy=a.strategy,
             mode=a.mode, bugs=bugs)
    for sc in scenarios:
        mine = _Totals()
        last: RunResult | None = None
        seeds = range(a.seed, a.seed + a.runs)
        search: SearchResult | None = None
        if a.strategy == "coverage":  # one search of --runs runs; its fresh seeds count up from --seed
            search = SearchResult(sc.name, a.strategy, a.seed)
            results = search_runs(search, sc, bugs, a.runs, timeout=a.timeout, granularity=a.granularity, cpu=a.cpu)
        else:
            results = run_seeds(sc, seeds, a.strategy, bugs, cpu=a.cpu, pct_depth=a.pct_depth, timeout=a.timeout,
                                mode=a.mode, hang_seconds=a.hang_seconds, granularity=a.granularity)
        for res in results:
            last = res
            total.add(res)
            mine.add(res)
            log.debug("run.done", scenario=sc.name, seed=res.seed, verdict=res.verdict, steps=res.steps)
            if progress:
                progress.update(total)
            if res.verdict != "clean":
                break
        assert last is not None
        if last.verdict == "budget":
            if progress:
                progress.clear()
            _usage_error(_budget_line(sc, last))
        last_seed = last.seed if search is None else a.seed + max(0, search.fresh - 1)
        per.append({"scenario": sc.name, "path": sc.path, "verdict": last.verdict, "granularity": last.granularity,
                    "seeds": {"first": a.seed, "last": last_seed}, **mine.figures(),
                    **({"search": _search_figures(search)} if search is not None else {})})
        if last.verdict == "failure":
            if progress:
                progress.clear()
            if a.mode == "free" and a.reruns:
                last.reproduced = reproduction(sc, last, a.reruns, a.timeout)
            artifact = write_artifact(Path(a.artifacts), sc, last, a.pct_depth)
            log.info("failure", scenario=sc.name, seed=last.seed, cls=(last.failure or {}).get("class"),
                        artifact=str(artifact))
            # a search is deterministic for its seed: the same command with the runs it took finds the same run
            rerun = (rerun_command(sc, a.seed, a.strategy, bugs, None, runs=search.runs, granularity=a.granularity)
                     if search is not None else None)
            sh = _shrink_after(a, artifact)
            if a.json:
                fd = {**_failure_dict(last, artifact), **_shrunk_fields(sh)}
                if rerun:
                    fd["rerun"] = rerun
                print(_run_json(a, total, per, fd))
            else:
                _print_failure(last, artifact)
                if rerun:
                    print(f"  rerun:    {rerun}   (the search; it finds this failure at run {search.runs})")
                _print_shrunk(sh)
            if (a.trace or a.timeline) and a.mode == "controlled":  # the failing run again, with its events
                again, events = explainmod.recorded_replay(read_artifact(artifact), artifact, a.timeout)
                _export(a, events, again)
            return EXIT_FAILURE
        if progress:
            progress.clear()
        if not a.json:
            fig = mine.figures()
            how = (f"seeds {a.seed}..{last.seed}" if search is None else
                   f"seed {a.seed}: {search.fresh} fresh seed(s), {search.mutants} mutated schedule(s)"
                   + (f" ({search.diverged} cut short where a prefix diverged)" if search.diverged else "")
                   + f", {len(search.pair_runs)} interleaving pairs")
            print(
                f"{sc.name}: {mine.runs} run(s) clean ({a.strategy if a.mode == 'controlled' else 'free'}, "
                f"{how}" + (f", bugs {','.join(bugs)}" if bugs else "")
                + f"), {fig['steps']:,} steps, {fig['steps_per_second']:,.0f} steps/s"
            )
    log.info("run.end", runs=total.runs, steps=total.steps, wall_seconds=round(total.wall(), 3))
    if a.json:
        print(_run_json(a, total, per, None))
    elif len(scenarios) > 1 or a.runs > 1:
        fig = total.figures()
        print(f"all clean: {total.runs} run(s), {fig['steps']:,} steps in {total.wall():.1f} s "
              f"({fig['steps_per_second']:,.0f} steps/s while running)")
    return EXIT_CLEAN


def _cmd_bounded(a: argparse.Namespace, scenarios: list[Scenario], bugs: list[str]) -> int:
    """`run --strategy bounded`: explore each scenario's schedules of seed --seed with at most --preemptions
    preemptions (ksmstress/explore), stopping at the first failure, which becomes an artifact as any run's."""
    bound = a.preemptions if a.preemptions is not None else explore_cmd.DEFAULT_PREEMPTIONS
    shard = (a.shard[0] - 1, a.shard[1]) if a.shard else (0, 1)
    counts = explore_cmd.Counts()
    n = len(scenarios)  # --runs and --seconds are per scenario
    progress = Progress(a.runs and a.runs * n, a.seconds and a.seconds * n, label="bounded",
                        tty=False if a.json else None)
    per: list[dict[str, Any]] = []

    def on_run(_r: Any, res: RunResult) -> None:
        counts.add(res)
        progress.update(counts)

    def as_json(failed: dict[str, Any] | None) -> str:
        d: dict[str, Any] = {
            "verdict": "failure" if failed else "clean",
            "strategy": "bounded",
            "mode": "controlled",
            "seed": a.seed,
            "bugs": bugs,
            "preemptions": bound,
            "shard": f"{shard[0] + 1}/{shard[1]}",
            "schedules": sum(p["schedules"] for p in per),
            "runs": sum(p["runs"] for p in per),
            "complete": all(p["complete"] for p in per),
            "seconds": round(counts.wall(), 3),
            "scenarios": per,
            "failure": failed,
        }
        if failed and "artifact" in failed:
            d["artifact"], d["replay"] = failed["artifact"], failed["replay"]
        return json.dumps(d, sort_keys=True)

    log.info("bounded.start", scenarios=[sc.name for sc in scenarios], seed=a.seed, preemptions=bound, bugs=bugs)
    for sc in scenarios:
        if not a.json:
            print(explore_cmd.head_line(sc.name, a.seed, bound, shard, bugs))
        r = explore_bounded(sc, a.seed, bugs, bound, a.runs, a.seconds, shard, granularity=a.granularity,
                            timeout=a.timeout, on_run=on_run)
        progress.clear()
        per.append(explore_cmd.result_dict(r, sc.path))
        if not a.json:
            for lv in r.levels:
                print(explore_cmd.level_line(lv))
        res = r.failure
        if res is None:
            if not a.json:
                print(explore_cmd.outcome_line(r))
            continue
        if res.verdict == "budget":
            _usage_error(_budget_line(sc, res))
        res.strategy = "bounded"  # the artifact replays the recorded schedule step by step
        artifact = write_artifact(Path(a.artifacts), sc, res, None)
        log.info("failure", scenario=sc.name, seed=res.seed, cls=(res.failure or {}).get("class"),
                 preemptions=r.preemptions, artifact=str(artifact))
        sh = _shrink_after(a, artifact)
        if a.json:
            print(as_json({**_failure_dict(res, artifact), "preemptions": r.preemptions, "schedules": r.schedules,
                           **_shrunk_fields(sh)}))
        else:
            _print_failure(res, artifact)
            print(explore_cmd.outcome_line(r))
            _print_shrunk(sh)
        return EXIT_FAILURE
    if a.json:
        print(as_json(None))
    return EXIT_CLEAN


def _budget_line(sc: Scenario, res: RunResult) -> str:
    """A run that only ran out of scheduling points is the scenario's size, not the model's fault: exit 2."""
    ops = ((res.failure or {}).get("details") or {}).get("operations", "?")
    return (f"{sc.path}: key 'max_steps': expected more than {sc.max_steps} scheduling points for this scenario "
            f"(seed {res.seed} used them all while its programs were still completing operations, {ops} in the "
            f"last quarter: not a model failure)")


# -- replay -----------------------------------------------------------------------------------------------------
def _same_failure(recorded: dict[str, Any] | None, got: dict[str, Any] | None) -> bool:
    """Controlled mode: the same class, and the same step, site and object where the recording names them."""
    if not recorded or not got or recorded.get("class") != got.get("class"):
        return recorded is None and got is None
    rd, gd = recorded.get("details") or {}, got.get("details") or {}
    return all(rd.get(k) == gd.get(k) for k in ("step", "site", "object") if k in rd)


def _replay_outcome(art: dict[str, Any], res: RunResult) -> tuple[bool, str]:
    """(reproduced, what to say). Controlled: reproduced means the same failure (class, step, site, object) by
    the same schedule (digest); anything else is a divergence or a different failure, named."""
    recorded = art.get("failure")
    got = res.failure
    rec_name = (recorded or {}).get("class") or "clean run"
    if res.mode == "free":
        same = (recorded or {}).get("class") == (got or {}).get("class")
        return same, (
            f"free mode: seed {res.seed} rerun (the seed fixes the workload and the chaos decisions, not the OS's "
            f"interleaving, so there is no schedule to compare); the recorded {rec_name} "
            + (f"reproduced {res.reproduced}" if res.reproduced else ("recurred" if same else "did not recur"))
        )
    if got and got.get("class") == "replay-diverged":
        step = (got.get("details") or {}).get("step", "?")
        return False, f"replay diverged at step {step}: the recorded {rec_name} was not reached"
    digest_ok = res.schedule_digest == art.get("schedule_digest")
    if _same_failure(recorded, got) and digest_ok:
        return True, f"reproduced the recorded {rec_name} (schedule digest {res.schedule_digest})"
    if got is None:
        return False, f"clean replay ({res.steps} steps): the recorded {rec_name} did not reproduce"
    gd = got.get("details") or {}
    at = f"{got.get('class')} at step {gd.get('step', '?')} ({gd.get('site', '?')}, {gd.get('object', '?')})"
    if recorded:
        rd = recorded.get("details") or {}
        rec = f"{recorded.get('class')} at step {rd.get('step', '?')} ({rd.get('site', '?')}, {rd.get('object', '?')})"
    else:
        rec = "a clean run"
    why = "" if digest_ok else f"; schedule digest {res.schedule_digest}, recorded {art.get('schedule_digest')}"
    return False, f"different failure: {at} instead of {rec}{why}"


def add_export_options(p: argparse.ArgumentParser) -> None:
    """--trace and --timeline: what a failing controlled run (replayed with per-step events) is exported as."""
    p.add_argument("--trace", metavar="FILE", default=None,
                   help="write the failing run as Chrome trace-event JSON (Perfetto UI, chrome://tracing)")
    p.add_argument("--timeline", metavar="FILE.svg", default=None,
                   help="draw the failing run as SVG swimlanes (lock holds, the free and the failing access)")


def cmd_replay(a: argparse.Namespace) -> int:
    art = read_artifact(a.artifact)
    scd = art["scenario"]
    try:
        sc = parse(scd["text"], scd.get("path", a.artifact)) if scd.get("text") else load(scd["path"])
    except KeyError:
        _usage_error(f"{a.artifact}: key 'scenario.path': expected the scenario's text or path")
    bugs = sorted(validate(art["bugs"]))
    events: list[explainmod.Event] | None = None
    if art.get("mode") == "free" and (a.explain or a.trace or a.timeline):
        _usage_error(f"{a.artifact}: key 'mode': expected a controlled-mode artifact for --explain, --trace or "
                     f"--timeline (a free-mode run has no schedule to replay step by step)")
    _check_out("--trace", a.trace)
    _check_out("--timeline", a.timeline)
    if art.get("mode") == "free":  # nothing to replay step by step: rerun the seed every time asked, count hits
        rep = rerun_free(sc, art["seed"], bugs, (art.get("failure") or {}).get("class"), max(1, a.reruns), a.timeout,
                         art["granularity"])
        res = rep.first or rep.last
        assert res is not None
        res.reproduced = rep.rate
    elif a.explain or a.trace or a.timeline or a.verbose:  # the same controlled replay, with per-step events
        res, events = explainmod.recorded_replay(art, a.artifact, a.timeout, sc)
        if a.verbose:  # one structured event each (JSON lines when stderr is not a terminal): searchable CI logs
            for e in events:
                log.info("replay.event", **e.to_dict())
    else:
        res = run_one(sc, art["seed"], art["strategy"], bugs, schedule=art["schedule_bytes"],
                      pct_depth=art.get("pct_depth"), timeout=a.timeout, granularity=art["granularity"])
    same, text = _replay_outcome(art, res)
    x = explainmod.view.explain(events, res.failure or {}) if events is not None and res.failure else None
    log.info("replay", artifact=str(a.artifact), reproduced=same, verdict=res.verdict)
    if a.json:
        d: dict[str, Any] = {
            "verdict": res.verdict,
            "scenario": res.scenario,
            "seed": res.seed,
            "strategy": res.strategy,
            "mode": res.mode,
            "granularity": res.granularity,
            "bugs": res.bugs,
            "steps": res.steps,
            "schedule_digest": res.schedule_digest,
            "recorded_schedule_digest": art.get("schedule_digest"),
            "failure": res.failure,
            "recorded_class": (art.get("failure") or {}).get("class"),
            "reproduced": same,
            "outcome": text,
        }
        if res.reproduced is not None:
            d["reproduced_rate"] = res.reproduced
        if a.explain:
            d["explain"] = x.to_dict() if x is not None else None
        print(json.dumps(d, sort_keys=True))
    else:
        if res.verdict == "failure":
            _print_failure(res, None)
        print(("  " if res.verdict == "failure" else "") + text)
        if a.explain and x is not None:
            print()
            print("\n".join(explainmod.view.render(x)))
        elif a.explain:
            print("nothing to explain: the replay did not fail")
    if events is not None:
        _export(a, events, res)
    return EXIT_FAILURE if res.verdict == "failure" else EXIT_CLEAN


def _check_out(option: str, path: str | None) -> None:
    """Refuse, before any run, an output file that could not be written (exit status 2, naming the option)."""
    if path is None:
        return
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        _usage_error(f"{option} {path}: is a directory; expected a file path to write")
    if not parent.is_dir() or not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        _usage_error(f"{option} {path}: cannot write there; expected a file path in a writable directory")


def _export(a: argparse.Namespace, events: list[explainmod.Event], res: RunResult) -> None:
    """--trace and --timeline of a recorded replay."""
    title = f"{res.scenario} seed {res.seed}" + (f" ({', '.join(res.bugs)})" if res.bugs else "")
    try:
        if getattr(a, "trace", None):
            explainmod.trace.write_trace(a.trace, explainmod.trace.chrome_trace(events, res.failure, title))
            if not getattr(a, "json", False):
                print(f"  trace:    {a.trace} (open it in https://ui.perfetto.dev or chrome://tracing)")
        if getattr(a, "timeline", None):
            explainmod.timeline.write_svg(a.timeline, events, res.failure or {}, title)
            if not getattr(a, "json", False):
                print(f"  timeline: {a.timeline}")
    except OSError as e:
        _usage_error(f"{e.filename}: cannot write it ({e.strerror}); expected a writable file path")


# -- shrink -----------------------------------------------------------------------------------------------------
def cmd_shrink(a: argparse.Namespace) -> int:
    """Minimise an artifact's schedule and programs, write the shrunk artifact, prove that replay reproduces it."""
    art = read_artifact(a.artifact)
    if art.get("mode") == "free":
        _usage_error(f"{a.artifact}: key 'mode': expected a controlled-mode artifact (a free-mode run has no "
                     f"schedule to shrink)")
    if not art.get("failure"):
        _usage_error(f"{a.artifact}: key 'failure': expected a failing run's artifact (there is nothing to shrink)")
    out = Path(a.out) if a.out else shrinkmod.shrunk_path(Path(a.artifact))
    _check_out("--out", str(out))
    _check_out("--trace", a.trace)
    _check_out("--timeline", a.timeline)
    try:
        sh = autoshrink.shrink_file(Path(a.artifact), a.seconds, a.timeout, out,
                                    log=lambda msg: log.info("shrink", progress=msg))
    except shrinkmod.ShrinkError as e:
        _usage_error(f"{a.artifact}: {e}")
    except OSError as e:
        _usage_error(f"--out {out}: cannot write it ({e.strerror}); expected a writable file path")
    shrunk, before, after, took = sh.art, sh.before, sh.after, sh.seconds
    same, text = _replay_outcome(shrunk, sh.proof)
    if a.json:
        print(json.dumps({"artifact": str(out), "from": str(a.artifact), "before": before.as_dict(),
                          "after": after.as_dict(), "seconds": round(took, 1), "candidates": sh.candidates,
                          "reproduced": same, "outcome": text, "replay": replay_command(out)}, sort_keys=True))
    else:
        f = sh.best.res.failure or {}
        site = shrinkmod.site_of(f)  # a data-loss has none: the read that found it is the program's own check
        where = f" at {site}" if site else ""
        print(f"shrunk {f.get('class')}{where} in {took:.1f} s ({sh.candidates} candidate runs)")
        print(f"  {'':<12}{'before':>8}{'after':>8}")
        for k in ("steps", "preemptions", "tasks", "ops"):
            print(f"  {k:<12}{getattr(before, k):>8}{getattr(after, k):>8}")
        if after.steps > before.steps:  # Candidate.key: preemptions past the bound outrank steps
            print(f"  (more steps, fewer preemptions: a run with at most {shrinkmod.PREEMPTION_BOUND} preemptions "
                  "wins over a shorter one with more)")
        print(f"  artifact: {out}")
        print(f"  replay:   {replay_command(out)}  ({text})")
    if a.trace or a.timeline:
        again, events = explainmod.recorded_replay(shrunk, out, a.timeout)
        _export(a, events, again)
    return EXIT_CLEAN if same else EXIT_FAILURE  # 1: the shrunk artifact did not replay (never expected)


# -- listings ---------------------------------------------------------------------------------------------------
def cmd_bugs(a: argparse.Namespace) -> int:
    if a.json:
        print(json.dumps([v.__dict__ for v in VARIANTS.values()], indent=1))
        return EXIT_CLEAN
    for v in VARIANTS.values():
        print(
            f"{v.name}\n  breaks:   {v.breaks}\n  caught by: {v.detector} ({CLASSES[v.detector]})\n"
            f"  scenario: {Path(v.scenario).stem} (ksmstress run {Path(v.scenario).stem} --bug {v.name})"
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
        origin = "shipped" if e.origin == catalog.SHIPPED else f"from {e.origin}"
        hidden = f"; the name {e.name!r} picks {first[e.name].path}" if first[e.name] is not e else ""
        print(f"{e.name}  ({origin}: {e.path}{hidden})\n  {sc.description}")
    return EXIT_CLEAN


# -- the parser -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="ksmstress", description=__doc__)
    ap.add_argument("--version", action="version", version=f"ksmstress {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="log events (run start/end, each failure and artifact, soak progress) to stderr: "
                         "key=value on a terminal, JSON lines otherwise")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser("run", help="run scenarios over seeds N..N+K-1, stop at the first failure")
    r.add_argument("scenario", nargs="*", help="scenario files or names (default: mixed)")
    r.add_argument("--seed", type=argtypes.seed, default=0, help="first seed")
    r.add_argument("--runs", type=argtypes.positive_int, default=None,
                   help="seeds per scenario (seed, seed+1, ...; default: 1); with --strategy bounded: at most this "
                        "many schedules per scenario (default: no cap)")
    r.add_argument("--json", action="store_true",
                   help="print one machine-readable verdict: totals over every run, a list per scenario, the "
                        "failing run under 'failure'")
    add_run_options(r, reruns=10, searches=SEARCH_STRATEGIES)
    explore_cmd.add_bounded_options(r)
    r.add_argument("--cpu", type=argtypes.cpu, default=None,
                   help="CPU to pin the run's processes to (default: $KSMSTRESS_CPU, else the last allowed CPU)")
    r.add_argument("--hang-seconds", type=argtypes.positive_seconds, default=10.0,
                   help="free mode: no progress this long is a hang")
    add_export_options(r)
    autoshrink.add_options(r)
    r.set_defaults(fn=cmd_run)

    p = sub.add_parser("replay", help="replay a failure artifact and say whether the same failure recurs")
    p.add_argument("artifact", help="an artifact JSON file written by run, soak or the pytest plugin")
    p.add_argument("--json", action="store_true", help="print one machine-readable verdict")
    p.add_argument("--timeout", type=argtypes.positive_seconds, default=120.0,
                   help="wall-clock seconds before 'hang'")
    p.add_argument("--reruns", type=argtypes.non_negative_int, default=10,
                   help="free-mode artifacts: reruns for the reproduction rate")
    p.add_argument("--explain", action="store_true",
                   help="print the interleaving as columns, one per task that matters, with call chains, lock "
                        "operations and the failing object's count changes (with --json: the same rows)")
    add_export_options(p)
    p.set_defaults(fn=cmd_replay)

    k = sub.add_parser("shrink", help="minimise a failing artifact (preemptions, steps, programs) that replay "
                                      "still reproduces")
    k.add_argument("artifact", help="an artifact JSON file of a controlled-mode failure")
    k.add_argument("--seconds", type=argtypes.positive_seconds, default=60.0, help="time budget for the search")
    k.add_argument("--out", metavar="FILE", default=None,
                   help="where to write the shrunk artifact (default: next to ARTIFACT, named ...-shrunk.json)")
    k.add_argument("--json", action="store_true", help="print one machine-readable summary")
    k.add_argument("--timeout", type=argtypes.positive_seconds, default=60.0,
                   help="wall-clock seconds per candidate run before 'hang'")
    add_export_options(k)
    k.set_defaults(fn=cmd_shrink)

    soakmod.add_parser(sub)
    benchmod.add_parser(sub)

    b = sub.add_parser("bugs", help="list the bug variants, each with its detector and scenario")
    b.add_argument("--json", action="store_true", help="print the catalogue as JSON")
    b.set_defaults(fn=cmd_bugs)

    s = sub.add_parser("scenarios", help="list the scenarios (shipped and from --scenario-dir), with their origin")
    s.add_argument("--scenario-dir", action="append", default=[], metavar="DIR", help="also list the scenarios here")
    s.set_defaults(fn=cmd_scenarios)

    add_kernel_parser(sub)
    mutate.add_parser(sub)
    coverage_command.add_parser(sub)
    for cmd in sub.choices.values():  # `ksmstress replay X -v` as well as `ksmstress -v replay X`
        if "-v" not in cmd._option_string_actions:
            cmd.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="the same as ksmstress -v before the command")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.cmd is None:  # bare `ksmstress`: what it can do
        ap.print_help()
        return EXIT_CLEAN
    configure_logging(a.verbose)
    try:
        with procs.catch_interrupts():  # Ctrl-C/SIGTERM raise Interrupted at the loops' safe points, never elsewhere
            return int(a.fn(a))
    except (ScenarioError, UnknownBug, ArtifactError, WorkloadError) as e:
        _usage_error(str(e))
    except KeyboardInterrupt as e:
        print("ksmstress: interrupted", file=sys.stderr)
        return e.exit_status if isinstance(e, procs.Interrupted) else EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
