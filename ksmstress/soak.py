"""`ksmstress soak`: many seeds across scenarios in parallel jobs, with live progress and a summary by failure class.

Why a separate command from `run`: `run` answers "is this seed range clean?" in one process; a soak is a campaign,
bounded by wall time or run count, spread over every CPU, that keeps every failure it finds (with `--keep-going`)
and ends with one replay command per failure class. Its structure follows `bench`:

- The parent loads and validates everything first (bad input is exit 2 before any process starts), then forks
  `--jobs` worker processes (non-daemon: a daemon process may not have children, and each run forks its tasks).
  In controlled mode each worker gets its own CPU through `$KSMSTRESS_CPU`, so a run's hand-offs stay on one core
  and jobs do not compete; free mode leaves placement to the OS.
- The parent feeds each worker small ranges of work-item indices over a duplex Pipe, on demand, so fast and slow
  scenarios balance themselves. Item k is scenario k % S at the (k // S)-th seed of this shard's seed sequence, so a
  duration-bounded soak covers the scenarios evenly, and `--runs K` means K seeds per scenario as in `run`.
- Workers answer with one JSON message per run (bytes over the Pipe, as in `bench`), writing the artifact of a
  failure themselves, so the parent only aggregates, draws progress and decides when to stop.
- Stopping (deadline, first failure, all work done): the parent sends "stop"; workers finish the run in hand and
  exit. Ctrl-C, or a worker that does not stop within a grace period: the parent signals its workers by pid
  (SIGTERM: run_one's `finally` kills and reaps that run's tasks; then SIGKILL, after which the tasks die by
  PR_SET_PDEATHSIG) and joins them. Workers ignore SIGINT, so a terminal's Ctrl-C reaches only the parent's logic.

`--shard I/N` keeps the seeds s (counting up from `--seed`) with s % N == I - 1, so N machines given the same
`--seed` and shards 1/N..N/N cover disjoint seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import multiprocess
import multiprocess.connection

from . import argtypes
from .bugs import validate
from .options import EXIT_CLEAN, EXIT_FAILURE, EXIT_INTERRUPTED, add_run_options
from .progress import Progress, fmt_duration
from .report import write_artifact
from .runner import reproduction, run_one
from .scenario import Scenario, ScenarioError, every, load, resolve
from .verdict import replay_command, reproduced_text, rerun_command

DEFAULT_DURATION = 600.0  # neither --duration nor --runs: the example, 10m
STOP_GRACE = 5.0  # seconds a stopped worker may take to finish the run in hand before it is signalled
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*$")


# -- argument types (argparse turns their errors into one-line usage errors: exit 2) ----------------------------
def parse_duration(text: str) -> float:
    """'90s', '10m', '1h', '1.5m' or plain seconds, as seconds > 0."""
    m = _DURATION_RE.match(text)
    seconds = float(m.group(1)) * _UNITS[m.group(2)] if m else 0.0
    if not m or seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration such as 90s, 10m or 1h, got {text!r}")
    return seconds


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' with 1 <= I <= N: this machine's share of the seed space."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N (e.g. 2/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


# -- the seed space -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedSpace:
    """Work item k -> (scenario index, seed). Items are numbered so that any prefix covers the scenarios evenly,
    and seeds are this shard's: base <= s, s % shards == shard - 1, in increasing order."""

    base: int
    nscenarios: int
    shard: int = 1
    shards: int = 1

    @property
    def first(self) -> int:
        return self.base + (self.shard - 1 - self.base) % self.shards

    def seed(self, m: int) -> int:
        """The m-th seed (0-based) of this shard."""
        return self.first + m * self.shards

    def item(self, k: int) -> tuple[int, int]:
        return k % self.nscenarios, self.seed(k // self.nscenarios)


# -- the worker -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What every worker needs, inherited through fork (nothing here is pickled)."""

    scenarios: tuple[Scenario, ...]
    space: SeedSpace
    strategy: str
    bugs: tuple[str, ...]
    pct_depth: int | None
    timeout: float
    mode: str
    artifacts: Path
    reruns: int = 5


class _Stopped(BaseException):
    """Raised in a worker by SIGTERM: unwinds through run_one's `finally`, which kills and reaps the run's tasks."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Stopped()


def _unraisable(u: Any) -> None:
    """A SIGTERM that lands while run_one is inside os.fork() raises in an after-fork hook, where CPython reports
    the exception as unraisable and drops it. Raise it again 10 ms later (SIGALRM), in ordinary code, where it
    unwinds through run_one's `finally` as intended. (Re-sending SIGTERM at once would run the handler right here.)"""
    if isinstance(u.exc_value, _Stopped):
        signal.setitimer(signal.ITIMER_REAL, 0.01)
    else:
        sys.__unraisablehook__(u)


def _run_item(plan: Plan, k: int, job: int) -> dict[str, Any]:
    si, seed = plan.space.item(k)
    sc = plan.scenarios[si]
    row: dict[str, Any] = {"type": "run", "k": k, "job": job, "scenario": sc.name, "seed": seed}
    extra: dict[str, Any] = {"mode": plan.mode} if plan.mode != "controlled" else {}
    rerun = rerun_command(sc, seed, plan.strategy, list(plan.bugs), plan.pct_depth, plan.mode)
    try:
        res = run_one(sc, seed, plan.strategy, list(plan.bugs), pct_depth=plan.pct_depth, timeout=plan.timeout, **extra)
    except Exception as e:  # a bug of the framework itself, not of the model: reported, never swallowed
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        row.update(
            verdict="failure",
            cls="error",
            message=f"run_one raised {tb}",
            steps=0,
            elapsed=0.0,
            replay=rerun,
            artifact=None,
            reproduced=None,
        )
        return row
    if res.verdict == "failure" and plan.mode == "free" and plan.reruns:
        res.reproduced = reproduction(sc, res, plan.reruns, plan.timeout)  # the OS picks the interleaving: how often?
    row.update(
        verdict=res.verdict, steps=res.steps, elapsed=res.elapsed + res.spawn_seconds, reproduced=reproduced_text(res)
    )
    if res.verdict == "failure":
        f = res.failure or {}
        row.update(cls=f.get("class"), message=f.get("message"), artifact=None, replay=rerun)
        try:
            art = write_artifact(plan.artifacts, sc, res, plan.pct_depth)
            row.update(artifact=str(art), replay=replay_command(art))
        except OSError as e:
            row["message"] = f"{row['message']} (artifact not written: {e.strerror or e})"
    return row


def _worker(plan: Plan, job: int, cpu: int | None, conn: Any, sigmask: set[int]) -> None:
    """Run the item ranges the parent sends until it says stop; between runs, look for a stop message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops us by pid
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGALRM, _on_sigterm)
    sys.unraisablehook = _unraisable
    signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)  # the parent blocked SIGINT around our fork
    if cpu is not None:
        os.environ["KSMSTRESS_CPU"] = str(cpu)  # run_one pins this job's runs here (fork: the parent's env is intact)
    try:
        while True:
            msg = json.loads(conn.recv_bytes())
            if msg.get("stop"):
                return
            for k in range(msg["start"], msg["end"]):
                if conn.poll():  # the only message that can arrive mid-range is "stop"
                    return
                conn.send_bytes(json.dumps(_run_item(plan, k, job)).encode())
            conn.send_bytes(b'{"type": "need"}')
    except (_Stopped, EOFError, BrokenPipeError, ConnectionResetError):
        pass
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGALRM})  # no _Stopped past this point
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a late SIGTERM ends us quietly, with no traceback
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGALRM})
        conn.close()


# -- the parent -----------------------------------------------------------------------------------------------
@dataclass
class Tally:
    """Everything the progress line and the summary show, accumulated from the workers' messages."""

    started: float
    runs: int = 0
    steps: int = 0
    by_scenario: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    ran: list[tuple[str, int]] = field(default_factory=list)

    def add(self, row: dict[str, Any]) -> None:
        self.runs += 1
        self.steps += int(row.get("steps") or 0)
        self.by_scenario[row["scenario"]] += 1
        self.ran.append((row["scenario"], row["seed"]))
        if row["verdict"] == "failure":
            self.failures.append(row)

    def wall(self) -> float:
        return time.monotonic() - self.started


class Soak:
    """The parent's side: start the workers, feed them, collect, stop them, and never leave one behind."""

    def __init__(
        self, plan: Plan, jobs: int, total: int | None, duration: float | None, keep_going: bool, progress: Progress
    ) -> None:
        self.plan, self.total, self.duration, self.keep_going = plan, total, duration, keep_going
        self.progress = progress
        cpus = sorted(os.sched_getaffinity(0))
        if plan.mode == "controlled":
            jobs = min(jobs, len(cpus))  # one CPU per controlled job: two jobs on one core would share its hand-offs
            self.cpus: list[int | None] = [cpus[-1 - j] for j in range(jobs)]
        else:
            self.cpus = [None] * jobs
        if total is not None:
            jobs = min(jobs, total)
            self.cpus = self.cpus[:jobs]
        self.jobs = jobs
        self.chunk = 1
        self.next_k = 0
        self.stopping = False
        self.interrupted = False
        self.tally = Tally(time.monotonic())
        self.procs: list[Any] = []
        self.conns: dict[Any, int] = {}  # open parent ends -> job number
        self.errors: list[str] = []

    # feeding ------------------------------------------------------------------------------------------------
    def _chunk_size(self) -> int:
        """Ranges of a few items when the total is known (fewer round trips), single items near the end so the
        last runs spread over every job; single items in duration mode, where a range would outlive the deadline."""
        if self.total is None:
            return 1
        left = self.total - self.next_k
        return max(1, min(8, left // (4 * self.jobs)))

    def _feed(self, conn: Any) -> None:
        expired = self.duration is not None and self.tally.wall() >= self.duration
        exhausted = self.total is not None and self.next_k >= self.total
        if self.stopping or expired or exhausted:
            self._send(conn, {"stop": True})
            return
        n = self._chunk_size()
        self._send(conn, {"start": self.next_k, "end": self.next_k + n})
        self.next_k += n

    def _send(self, conn: Any, msg: dict[str, Any]) -> None:
        try:
            conn.send_bytes(json.dumps(msg).encode())
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the worker is gone: its EOF is handled where it is read

    def stop_all(self) -> None:
        if not self.stopping:
            self.stopping = True
            for c in self.conns:
                self._send(c, {"stop": True})

    # the loop -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        ctx = multiprocess.get_context("fork")
        # SIGINT blocked while forking: a Ctrl-C that lands inside os.fork() would otherwise be lost in an after-fork
        # hook; blocked, it stays pending and is raised here right after, where the `finally` of run() handles it.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for j, cpu in enumerate(self.cpus):
                parent_end, child_end = ctx.Pipe(duplex=True)
                p = ctx.Process(
                    target=_worker,
                    args=(self.plan, j, cpu, child_end, set(old)),
                    daemon=False,
                    name=f"ksmstress-soak-{j}",
                )
                p.start()
                child_end.close()
                self.procs.append(p)
                self.conns[parent_end] = j
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        for c in list(self.conns):
            self._feed(c)

    def _handle(self, conn: Any) -> None:
        try:
            row = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            job = self.conns.pop(conn)
            conn.close()
            p = self.procs[job]
            p.join(timeout=1.0)
            if not self.stopping and p.exitcode not in (0, None) and not self.interrupted:
                self.errors.append(f"worker {job} died (exit code {p.exitcode})")
                self.progress.note(f"ksmstress soak: worker {job} died (exit code {p.exitcode})")
            return
        if row.get("type") == "need":
            self._feed(conn)
            return
        self.tally.add(row)
        if row["verdict"] == "failure":
            rep = f" ({row['reproduced']})" if row.get("reproduced") else ""
            self.progress.note(
                f"FAILURE {row['cls']} in {row['scenario']} seed {row['seed']}{rep}: "
                f"{row['message']}\n  replay: {row['replay']}"
            )
            if not self.keep_going:
                self.stop_all()
        if self.duration is not None and self.tally.wall() >= self.duration:
            self.stop_all()
        self.progress.update(self.tally)

    def run(self) -> Tally:
        stop_deadline: float | None = None
        try:
            self.start()
            while self.conns:
                for c in multiprocess.connection.wait(list(self.conns), timeout=0.25):
                    self._handle(c)
                if self.duration is not None and self.tally.wall() >= self.duration:
                    self.stop_all()
                if self.stopping and stop_deadline is None:
                    stop_deadline = time.monotonic() + STOP_GRACE
                if stop_deadline is not None and time.monotonic() > stop_deadline:
                    break  # the finally signals whoever has not finished its run in hand
                self.progress.update(self.tally)
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            self.shutdown()
        self.progress.finish(self.tally)
        return self.tally

    def shutdown(self) -> None:
        """Every worker ends and is reaped: those still running are signalled by pid, SIGTERM then SIGKILL."""
        if self.interrupted:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon the clean-up
        try:
            if not self.interrupted:  # told to stop, they are exiting or finishing a run: a moment's grace
                deadline = time.monotonic() + KILL_GRACE
                for p in self.procs:
                    if p.pid is not None:
                        p.join(timeout=max(0.0, deadline - time.monotonic()))
            for p in self.procs:
                if p.pid is not None and p.is_alive():
                    _signal(p.pid, signal.SIGTERM)
            deadline = time.monotonic() + KILL_GRACE
            for p in self.procs:
                if p.pid is not None:
                    p.join(timeout=max(0.0, deadline - time.monotonic()))
                    if p.exitcode is None:
                        _signal(p.pid, signal.SIGKILL)  # its tasks die by PR_SET_PDEATHSIG
                        p.join()
            for c in self.conns:
                c.close()
            self.conns.clear()
        finally:
            if self.interrupted:
                signal.signal(signal.SIGINT, signal.default_int_handler)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# -- the summary ----------------------------------------------------------------------------------------------
def by_class(failures: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Failures grouped by class; each class's replay is its shortest failing run (fewest steps, then lowest
    seed), the easiest one to step through."""
    out: dict[str, dict[str, Any]] = {}
    for f in failures:
        d = out.setdefault(f["cls"], {"count": 0, "scenarios": Counter(), "best": f})
        d["count"] += 1
        d["scenarios"][f["scenario"]] += 1
        b = d["best"]
        if (f.get("steps") or 0, f["seed"]) < (b.get("steps") or 0, b["seed"]):
            d["best"] = f
    return dict(sorted(out.items(), key=lambda kv: (-kv[1]["count"], kv[0])))


def summary_dict(soak: Soak, scenarios: tuple[Scenario, ...], args: argparse.Namespace) -> dict[str, Any]:
    t = soak.tally
    wall = t.wall()
    classes = by_class(t.failures)
    return {
        "verdict": "failure" if (t.failures or soak.errors) else "clean",
        "interrupted": soak.interrupted,
        "runs": t.runs,
        "steps": t.steps,
        "elapsed_seconds": round(wall, 3),
        "runs_per_minute": round(t.runs / wall * 60, 1) if wall > 0 else 0.0,
        "steps_per_second": round(t.steps / wall, 1) if wall > 0 else 0.0,
        "jobs": soak.jobs,
        "cpus": soak.cpus,
        "mode": args.mode,
        "strategy": args.strategy,
        "bugs": sorted(args.bug),
        "seed": args.seed,
        "shard": f"{args.shard[0]}/{args.shard[1]}",
        "scenarios": [sc.name for sc in scenarios],
        "runs_by_scenario": dict(sorted(t.by_scenario.items())),
        "ran": sorted(t.ran),
        "failures": t.failures,
        "classes": {
            c: {
                "count": d["count"],
                "scenarios": dict(d["scenarios"]),
                "seed": d["best"]["seed"],
                "scenario": d["best"]["scenario"],
                "replay": d["best"]["replay"],
                "reproduced": d["best"].get("reproduced"),
            }
            for c, d in classes.items()
        },
        "errors": soak.errors,
    }


def print_summary(d: dict[str, Any]) -> None:
    nfail = len(d["failures"])
    state = "interrupted after" if d["interrupted"] else "ran"
    shard = f", shard {d['shard']}" if d["shard"] != "1/1" else ""
    print(
        f"soak {state} {d['runs']} runs of {len(d['scenarios'])} scenario(s) in {d['elapsed_seconds']:.1f} s "
        f"({d['jobs']} job(s), {d['mode']} {d['strategy']}, base seed {d['seed']}{shard}"
        + (f", bugs {','.join(d['bugs'])}" if d["bugs"] else "")
        + f"): {d['runs_per_minute']:,.0f} runs/min, {d['steps_per_second']:,.0f} steps/s"
    )
    print("  runs by scenario: " + ", ".join(f"{k} {v}" for k, v in d["runs_by_scenario"].items()))
    for e in d["errors"]:
        print(f"  error: {e}")
    if not nfail:
        print("no failures")
        return
    print(f"{nfail} failure{'s' if nfail != 1 else ''} in {len(d['classes'])} class(es):")
    rows = [
        (
            c,
            str(v["count"]),
            ", ".join(f"{s} x{n}" if n > 1 else s for s, n in v["scenarios"].items()),
            f"{v['scenario']} seed {v['seed']}" + (f" ({v['reproduced']})" if v.get("reproduced") else ""),
            v["replay"],
        )
        for c, v in d["classes"].items()
    ]
    head = ("class", "count", "scenarios", "shortest", "replay")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for r in [head, *rows]:
        print("  " + "  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])


# -- the command ----------------------------------------------------------------------------------------------
def cmd_soak(a: argparse.Namespace) -> int:
    bugs = validate(a.bug)
    paths = resolve(a.scenario, a.scenario_dir) if a.scenario else every(a.scenario_dir)
    if not paths:
        raise ScenarioError("ksmstress: no scenarios found (none shipped with this install); name scenario files")
    scenarios = tuple(load(p) for p in paths)  # every file validated before any process starts
    runs = a.soak_runs
    duration = None if runs else (a.duration or DEFAULT_DURATION)
    space = SeedSpace(a.seed, len(scenarios), *a.shard)
    plan = Plan(
        scenarios, space, a.strategy, tuple(sorted(bugs)), a.pct_depth, a.timeout, a.mode, Path(a.artifacts), a.reruns
    )
    total = runs * len(scenarios) if runs else None
    progress = Progress(total, duration)
    soak = Soak(plan, a.jobs, total, duration, a.keep_going, progress)
    bound = f"{runs} seed(s) per scenario" if runs else f"{fmt_duration(duration or 0)}"
    cpus = ", ".join(str(c) for c in soak.cpus) if a.mode == "controlled" else "any"
    print(
        f"ksmstress soak: {len(scenarios)} scenario(s), seeds from {space.first} step {space.shards} "
        f"(--seed {a.seed} --shard {a.shard[0]}/{a.shard[1]}), {bound}, {soak.jobs} job(s) on CPU(s) {cpus}, "
        f"{a.mode} {a.strategy}"
        + (f", bugs {','.join(sorted(bugs))}" if bugs else "")
        + (", keep going" if a.keep_going else ", stop at the first failure"),
        file=sys.stderr,
        flush=True,
    )
    soak.run()
    d = summary_dict(soak, scenarios, a)
    if a.json:
        print(json.dumps(d, sort_keys=True))
    else:
        print_summary(d)
    sys.stdout.flush()
    if soak.interrupted:
        print("ksmstress: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_FAILURE if d["verdict"] == "failure" else EXIT_CLEAN


def add_parser(sub: Any) -> None:
    s = sub.add_parser("soak", help="many seeds across scenarios in parallel jobs, with a summary by failure class")
    s.add_argument("scenario", nargs="*", help="scenario files or shipped names (default: every shipped scenario)")
    bound = s.add_mutually_exclusive_group()
    bound.add_argument(
        "--duration",
        type=parse_duration,
        default=None,
        metavar="TIME",
        help="wall-clock budget: 90s, 10m, 1h (default 10m)",
    )
    bound.add_argument(
        "--runs",
        dest="soak_runs",
        type=argtypes.positive_int,
        default=None,
        metavar="K",
        help="seeds per scenario instead of a duration",
    )
    s.add_argument(
        "--jobs",
        type=argtypes.positive_int,
        default=len(os.sched_getaffinity(0)),
        help="parallel worker processes (controlled: at most one per CPU)",
    )
    add_run_options(s, reruns=5)
    s.add_argument("--keep-going", action="store_true", help="collect every failure instead of stopping at the first")
    s.add_argument(
        "--shard",
        type=parse_shard,
        default=(1, 1),
        metavar="I/N",
        help="run only the seeds s with s %% N == I-1 (a CI matrix of N machines covers disjoint seeds)",
    )
    s.add_argument("--seed", type=argtypes.seed, default=0, help="base seed (default 0)")
    s.add_argument("--json", action="store_true", help="print one machine-readable summary instead of the table")
    s.set_defaults(fn=cmd_soak)
