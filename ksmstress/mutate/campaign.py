"""Soak many mutants, one per job, in parallel; stop every probe it started on Ctrl-C or SIGTERM.

Why jobs pin to CPUs: a controlled run's processes share one CPU (hand-offs on one core are much faster), so job j
gets its own CPU through $KSMSTRESS_CPU, as `soak` does. Each probe has a hard deadline (its budget, the last
run's allowance and a grace for starting Python); a probe past it is stopped and its mutant counted as timed out.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .generate import Mutant
from .scratch import Probe, Scratch

START_GRACE = 20.0  # seconds for Python, numpy and the scenarios to load before the budget starts counting
POLL = 0.1


class Terminated(BaseException):
    """SIGTERM to the campaign: handled like Ctrl-C (every probe stopped, summary so far), exit 143."""


@dataclass
class Result:
    """What one mutant's soak found (JSON-ready through `as_dict`)."""

    mutant: Mutant
    outcome: str  # killed | survived | timeout | error
    cls: str | None = None
    message: str | None = None
    time_to_kill: float | None = None
    runs: int = 0
    steps: int = 0
    wall: float = 0.0
    kill: dict[str, Any] | None = None
    detail: str | None = None  # error: what went wrong with the probe itself

    def as_dict(self) -> dict[str, Any]:
        m = self.mutant
        return {
            "name": m.name,
            "key": m.key,
            "file": m.file,
            "function": m.function,
            "line": m.line,
            "rule": m.rule,
            "description": m.description,
            "outcome": self.outcome,
            "class": self.cls,
            "message": self.message,
            "time_to_kill": self.time_to_kill,
            "runs": self.runs,
            "steps": self.steps,
            "wall_seconds": round(self.wall, 3),
            "kill": self.kill,
            "detail": self.detail,
        }


@dataclass
class Plan:
    scenarios: list[str]  # scenario file paths, validated by the caller
    strategies: list[str]
    seconds: float
    seed: int
    run_timeout_floor: float
    artifacts: str | None = None
    preemptions: int = 1  # bounded's C
    reach: dict[str, list[tuple[str, float]]] | None = None  # reach.reach_map: `file:function` -> [(scenario, rate)]

    def config(self, mutant: Mutant | None = None) -> dict[str, Any]:
        focus = (self.reach or {}).get(f"{mutant.file}:{mutant.function}", []) if mutant else []
        return {"scenarios": self.scenarios, "strategies": self.strategies, "budget": self.seconds,
                "seed": self.seed, "run_timeout_floor": self.run_timeout_floor, "artifacts": self.artifacts,
                "preemptions": self.preemptions, "focus": focus}

    def deadline(self) -> float:
        return self.seconds + self.run_timeout_floor + START_GRACE


def result_of(probe: Probe, mutant: Mutant, timed_out: bool) -> Result:
    """Read a finished (or stopped) probe's rows into a Result."""
    rows = probe.rows()
    wall = probe.elapsed()
    end = next((r for r in rows if r.get("type") == "end"), None)
    runs = [r for r in rows if r.get("type") == "run"]
    if end is not None:
        return Result(mutant, end["outcome"], end.get("cls"), end.get("message"), end.get("time_to_kill"),
                      end.get("runs", len(runs)), end.get("steps", 0), wall, end.get("kill"))
    err = next((r for r in rows if r.get("type") == "error"), None)
    if err is not None:
        return Result(mutant, "error", wall=wall, detail=err.get("message"))
    steps = sum(int(r.get("steps") or 0) for r in runs)
    if timed_out:
        return Result(mutant, "timeout", "hang", f"the probe did not end within {probe.elapsed():.0f}s",
                      runs=len(runs), steps=steps, wall=wall)
    tail = probe.stderr_tail()
    started = any(r.get("type") == "start" for r in rows)
    if mutant.file in tail or started:  # the mutated code raised on import or took the probe down
        last = tail.splitlines()[-1] if tail else f"exit code {probe.poll()}"
        return Result(mutant, "killed", "crash", f"the probe died: {last}", round(wall, 3), len(runs), steps, wall)
    return Result(mutant, "error", wall=wall, detail=tail or f"the probe exited with code {probe.poll()}")


@dataclass
class Campaign:
    mutants: list[Mutant]
    plan: Plan
    jobs: int
    on_result: Callable[[Result], None] = lambda r: None
    results: list[Result] = field(default_factory=list)
    interrupted: str | None = None  # "interrupt" | "terminate"

    def __post_init__(self) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        self.jobs = max(1, min(self.jobs, len(self.mutants) or 1))
        self.cpus = [cpus[-1 - (j % len(cpus))] for j in range(self.jobs)]
        self.running: dict[int, tuple[Probe, Scratch, Mutant]] = {}

    def run(self) -> list[Result]:
        old = signal.signal(signal.SIGTERM, self._on_sigterm)
        # Ctrl-C must stop the campaign even when this process was started with SIGINT ignored (a background job of
        # a non-interactive shell, a CI step): Python then leaves SIG_IGN in place instead of KeyboardInterrupt
        old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        pending = list(self.mutants)
        try:
            while pending or self.running:
                for slot in range(self.jobs):
                    if slot not in self.running and pending:
                        self._start(slot, pending.pop(0))
                for slot, (probe, scratch, mutant) in list(self.running.items()):
                    late = probe.elapsed() > self.plan.deadline()
                    if probe.poll() is None and not late:
                        continue
                    if late:
                        probe.stop()
                    else:
                        probe.reap_group()
                    res = result_of(probe, mutant, timed_out=late)
                    scratch.remove()
                    del self.running[slot]
                    self.results.append(res)
                    self.on_result(res)
                time.sleep(POLL)
        except KeyboardInterrupt:
            self.interrupted = "interrupt"
        except Terminated:
            self.interrupted = "terminate"
        finally:
            self._stop_all()
            signal.signal(signal.SIGTERM, old)
            signal.signal(signal.SIGINT, old_int)
        return self.results

    def _start(self, slot: int, mutant: Mutant) -> None:
        """Copy, start and register in one stretch that Ctrl-C / SIGTERM cannot split (they are held until the
        probe is on the books, where the clean-up finds it)."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            scratch = Scratch(mutant)
            try:
                probe = Probe(scratch, self.plan.config(mutant), self.cpus[slot])
            except BaseException:
                scratch.remove()
                raise
            self.running[slot] = (probe, scratch, mutant)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _stop_all(self) -> None:
        """Every probe still running is stopped by its process group and its scratch directory removed; a second
        Ctrl-C or SIGTERM cannot abandon this."""
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            for _slot, (probe, scratch, _mutant) in list(self.running.items()):
                probe.stop()
                scratch.remove()
            self.running.clear()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        raise Terminated()
