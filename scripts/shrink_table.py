#!/usr/bin/env python3
"""The shrink table: for every catalogue variant, its first failing artifact shrunk, before and after.

For each variant (`ksmstress bugs`) this runs its scenario with the variant on (`ksmstress run SCENARIO --bug NAME
--runs 200`) until the first failure, shrinks that artifact (`ksmstress shrink --seconds S --json`), and replays the
shrunk artifact `--replays` times (`ksmstress replay --json`), counting the replays that reproduced it. It prints
one row per variant (steps, preemptions, tasks and operations before -> after, the shrink's seconds, replays) and
the summary the issue asks for: the median of the steps cut, the most preemptions left, every replay reproduced.
Everything goes through the console commands a user types, so the table measures what they get.

    python scripts/shrink_table.py [--seconds 60] [--variant NAME ...] [--keep DIR] [--json]

Exit status 0 when every target holds (median steps cut >= 5x, at most 3 preemptions each, every replay
reproduced), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ksmstress.bugs import VARIANTS

CLI = [sys.executable, "-m", "ksmstress.entry"]
KEYS = ("steps", "preemptions", "tasks", "ops")


def ksmstress(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, check=False)


def first_failure(name: str, runs: int, where: Path) -> Path | None:
    """The variant's first failing artifact from `run --runs N` (seeds 0, 1, ...), or None if none failed."""
    v = VARIANTS[name]
    arts = where / name
    kept = sorted(a for a in arts.glob("*.json") if not a.name.endswith("-shrunk.json")) if arts.is_dir() else []
    if kept:  # --keep DIR from an earlier table: the same first failure, so two tables compare the shrinker alone
        return kept[0]
    ksmstress("run", Path(v.scenario).stem, "--bug", name, "--runs", str(runs), "--artifacts", str(arts))
    found = sorted(a for a in arts.glob("*.json") if not a.name.endswith("-shrunk.json")) if arts.is_dir() else []
    return found[0] if found else None


def row(name: str, a: argparse.Namespace, where: Path) -> dict[str, Any]:
    art = first_failure(name, a.runs, where)
    if art is None:
        return {"variant": name, "error": f"no failure in {a.runs} runs"}
    p = ksmstress("shrink", str(art), "--seconds", str(a.seconds), "--json")
    if p.returncode not in (0, 1) or not p.stdout.strip():
        return {"variant": name, "artifact": str(art), "error": (p.stderr or p.stdout).strip()[-300:]}
    s = json.loads(p.stdout.strip().splitlines()[-1])
    ok = 0
    for _ in range(a.replays):
        r = ksmstress("replay", s["artifact"], "--json")
        ok += bool(json.loads(r.stdout.strip().splitlines()[-1]).get("reproduced")) if r.stdout.strip() else 0
    cls = json.loads(Path(s["artifact"]).read_text())["failure"]["class"]
    return {"variant": name, "class": cls, "artifact": s["artifact"], "before": s["before"], "after": s["after"],
            "seconds": s["seconds"], "candidates": s["candidates"], "replays": f"{ok}/{a.replays}",
            "replayed": ok == a.replays}


NAME = max(len(n) for n in VARIANTS) + 1  # the widest variant name and a space: columns line up from the first row


def render(rows: list[dict[str, Any]]) -> list[str]:
    head = f"{'variant':<{NAME}}{'class':<18}" + "".join(f"{k:>16}" for k in KEYS) + f"{'seconds':>9}{'replays':>9}"
    out = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            out.append(f"{r['variant']:<{NAME}}error: {r['error']}")
            continue
        cells = "".join(f"{str(r['before'][k]) + ' -> ' + str(r['after'][k]):>16}" for k in KEYS)
        out.append(f"{r['variant']:<{NAME}}{r['class']:<18}{cells}{r['seconds']:>9.1f}{r['replays']:>9}")
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in rows if "error" not in r]
    cuts = [r["before"]["steps"] / max(1, r["after"]["steps"]) for r in good]
    med = statistics.median(cuts) if cuts else 0.0
    most = max((r["after"]["preemptions"] for r in good), default=0)
    replayed = all(r["replayed"] for r in good) and len(good) == len(rows)
    return {"median_steps_cut": round(med, 2), "max_preemptions_after": most, "all_replayed": replayed,
            "targets_met": med >= 5 and most <= 3 and replayed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="shrink budget per variant (default: 60)")
    ap.add_argument("--variant", action="append", default=[], help="only these variants (repeatable)")
    ap.add_argument("--runs", type=int, default=200, help="seeds to find the first failure in (default: 200)")
    ap.add_argument("--replays", type=int, default=10, help="replays of each shrunk artifact (default: 10)")
    ap.add_argument("--keep", metavar="DIR", help="keep the artifacts here, and take a variant's first failure from "
                    "here if an earlier table kept it (default: a temporary directory)")
    ap.add_argument("--json", action="store_true", help="print the rows and the summary as JSON")
    a = ap.parse_args()
    names = a.variant or list(VARIANTS)
    for n in names:
        if n not in VARIANTS:
            ap.error(f"--variant {n}: expected one of {', '.join(VARIANTS)}")
    load0 = os.getloadavg()  # the budget is wall-clock: a loaded machine runs fewer candidates in it
    if not a.json:
        print(f"load average at the start: {' '.join(f'{x:.2f}' for x in load0)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ksmstress-shrink-") as tmp:
        where = Path(a.keep) if a.keep else Path(tmp)
        rows = []
        for n in names:
            rows.append(row(n, a, where))
            if not a.json:
                print(render(rows)[-1] if len(rows) > 1 else "\n".join(render(rows)), flush=True)
        s = summary(rows)
    s["load_average"] = {"start": [round(x, 2) for x in load0], "end": [round(x, 2) for x in os.getloadavg()]}
    if a.json:
        print(json.dumps({"rows": rows, "summary": s}, indent=1))
    else:
        print(f"median steps cut {s['median_steps_cut']}x, at most {s['max_preemptions_after']} preemptions, "
              f"every replay reproduced: {s['all_replayed']}")
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in s['load_average']['end'])}")
    return 0 if s["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
