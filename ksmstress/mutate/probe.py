"""The process that soaks one mutant: `python -m ksmstress.mutate.probe CONFIG.json`, run by scratch.Probe with
PYTHONPATH set to a scratch copy of the package that holds the mutant.

Why in-process `run_one` rather than a `ksmstress soak` subprocess: a mutant is killed by its first failure, so
the probe stops there and reports the time to the kill; it rotates through every scenario and every strategy
before a second seed of any, so a budget of a few dozen runs already covers them all. One JSON line per run goes
to the results file as it ends, so a probe ended at the hard deadline still leaves what it saw.

Outcomes: `killed` (a detector named a failure, or the model raised: class `crash`), `timeout` (a run that did
not end within the mutant's budget, or ran out of its scenario's step budget while still making progress), and
`survived` (every run clean until the budget was spent).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO


class _Stopped(BaseException):
    """SIGTERM from the campaign: unwind through run_one's `finally`, which kills and reaps the run's tasks."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Stopped()


def _emit(out: TextIO, row: dict[str, Any]) -> None:
    out.write(json.dumps(row, sort_keys=True) + "\n")
    out.flush()


def soak(cfg: dict[str, Any], out: TextIO) -> dict[str, Any]:
    """Run (scenario, strategy, seed) items round-robin until a failure or the budget; the final row."""
    from ..failures import Failure
    from ..report import write_artifact
    from ..runner import run_one
    from ..scenario import load

    scenarios = [load(p) for p in cfg["scenarios"]]
    strategies: list[str] = cfg["strategies"]
    budget: float = cfg["budget"]
    floor: float = cfg["run_timeout_floor"]
    ns, nt = len(scenarios), len(strategies)
    t0 = time.monotonic()
    runs = steps = budget_runs = 0
    k = 0
    while time.monotonic() - t0 < budget:
        sc, strat = scenarios[k % ns], strategies[(k // ns) % nt]
        seed = cfg["seed"] + k // (ns * nt)
        k += 1
        remaining = budget - (time.monotonic() - t0)
        timeout = max(remaining, floor)  # a slow but healthy run is never cut short near the end of the budget
        row: dict[str, Any] = {"type": "run", "scenario": sc.name, "strategy": strat, "seed": seed}
        try:
            res = run_one(sc, seed, strat, timeout=timeout)
        except Exception as e:  # the mutant raised in the runner's own process (mm_alloc, the quiescence checks)
            cls = e.cls if isinstance(e, Failure) else "crash"
            msg = e.message if isinstance(e, Failure) else f"run_one raised {type(e).__name__}: {e}"
            row.update(verdict="failure", cls=cls, message=msg, steps=0, elapsed=time.monotonic() - t0)
            _emit(out, row)
            runs += 1
            return {"type": "end", "outcome": "killed", "cls": cls, "message": msg, "time_to_kill":
                    round(time.monotonic() - t0, 3), "runs": runs, "steps": steps, "kill": row,
                    "traceback": traceback.format_exc(limit=-4)}
        runs += 1
        steps += res.steps
        f = res.failure or {}
        row.update(verdict=res.verdict, cls=f.get("class"), message=f.get("message"), steps=res.steps,
                   elapsed=round(res.elapsed, 3))
        _emit(out, row)
        if res.verdict == "budget":
            budget_runs += 1
            continue
        if res.verdict != "failure":
            continue
        t = round(time.monotonic() - t0, 3)
        if f.get("class") == "hang" and res.elapsed >= timeout:
            return {"type": "end", "outcome": "timeout", "cls": "hang", "message": f.get("message"),
                    "time_to_kill": None, "runs": runs, "steps": steps, "kill": row}
        if cfg.get("artifacts"):
            try:
                row["artifact"] = str(write_artifact(Path(cfg["artifacts"]), sc, res, None))
            except OSError:
                pass
        return {"type": "end", "outcome": "killed", "cls": f.get("class"), "message": f.get("message"),
                "time_to_kill": t, "runs": runs, "steps": steps, "kill": row}
    if budget_runs:
        return {"type": "end", "outcome": "timeout", "cls": "budget-exhausted", "runs": runs, "steps": steps,
                "message": f"{budget_runs} run(s) used up their scenario's max_steps while still making progress",
                "time_to_kill": None, "kill": None}
    return {"type": "end", "outcome": "survived", "cls": None, "message": None, "time_to_kill": None, "runs": runs,
            "steps": steps, "kill": None}


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the campaign stops us by process group, never the terminal
    signal.signal(signal.SIGTERM, _on_sigterm)
    cfg = json.loads(Path(argv[0]).read_text())
    import ksmstress

    where = Path(ksmstress.__file__).resolve()
    root = Path(cfg["root"]).resolve()
    with open(cfg["results"], "a") as out:
        if root not in where.parents:  # the checkout was imported instead of the copy: the mutant is not in play
            _emit(out, {"type": "error", "message": f"imported ksmstress from {where}, not from the scratch copy"})
            return 3
        _emit(out, {"type": "start", "pid": os.getpid()})
        try:
            _emit(out, soak(cfg, out))
        except _Stopped:
            return 143
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
