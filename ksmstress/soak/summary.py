"""A soak's tally (fed by the workers' rows), its summary as a dictionary (`--json`) and as the printed table."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tally:
    """Everything the progress line and the summary show, accumulated from the workers' rows."""

    started: float
    runs: int = 0
    steps: int = 0
    by_scenario: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    ran: list[tuple[str, int]] = field(default_factory=list)
    stopped: float | None = None  # when the runs ended (what --shrink does after them is not the soak's rate)

    def add(self, row: dict[str, Any]) -> None:
        self.runs += 1
        self.steps += int(row.get("steps") or 0)
        self.by_scenario[row["scenario"]] += 1
        self.ran.append((row["scenario"], row["seed"]))
        if row["verdict"] == "failure":
            self.failures.append(row)

    def wall(self) -> float:
        return (self.stopped if self.stopped is not None else time.monotonic()) - self.started


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


def summary_dict(t: Tally, setup: dict[str, Any], interrupted: bool, errors: list[str]) -> dict[str, Any]:
    """The `--json` summary: `setup` (jobs, cpus, mode, strategy, bugs, seed, shard, scenarios) and the tally."""
    wall = t.wall()
    classes = by_class(t.failures)
    return {
        "verdict": "failure" if (t.failures or errors) else "clean",
        "interrupted": interrupted,
        "runs": t.runs,
        "steps": t.steps,
        "elapsed_seconds": round(wall, 3),
        "runs_per_minute": round(t.runs / wall * 60, 1) if wall > 0 else 0.0,
        "steps_per_second": round(t.steps / wall, 1) if wall > 0 else 0.0,
        **setup,
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
                **({"shrunk": d["best"]["shrunk"]} if "shrunk" in d["best"] else {}),
            }
            for c, d in classes.items()
        },
        "errors": errors,
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
    for c, v in d["classes"].items():  # --shrink: each class's shortest failure, shrunk
        if "shrunk" in v:
            print(f"  shrunk {c}: {v['shrunk'].get('line') or v['shrunk'].get('error')}")
