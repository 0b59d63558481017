"""What a mutation campaign found: the score, the table, the summary by detector, and the kept diffs.

The score is killed / (killed + survived + timed out), over the mutants not marked equivalent; a timed-out mutant
(its runs hang or never end) is a defect that no detector named, so it is not counted as killed, but it is shown
on its own. `error` (the probe itself failed, not the mutant) is left out of the score and always printed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from .campaign import Result
from .generate import Mutant

OUTCOMES = ("killed", "survived", "timeout", "error")


def summary(results: list[Result], equivalent: list[tuple[Mutant, str]], meta: dict[str, Any]) -> dict[str, Any]:
    counts = Counter(r.outcome for r in results)
    scored = counts["killed"] + counts["survived"] + counts["timeout"]
    kills = [r for r in results if r.outcome == "killed"]
    ttk = sorted(r.time_to_kill for r in kills if r.time_to_kill is not None)
    return {
        **meta,
        **{o: counts[o] for o in OUTCOMES},
        "equivalent": len(equivalent),
        "score": round(counts["killed"] / scored, 4) if scored else None,
        "by_class": dict(sorted(Counter(r.cls or "?" for r in kills).items(), key=lambda kv: (-kv[1], kv[0]))),
        "by_rule": {
            rule: dict(Counter(r.outcome for r in results if r.mutant.rule == rule))
            for rule in sorted({r.mutant.rule for r in results})
        },
        "median_time_to_kill": ttk[len(ttk) // 2] if ttk else None,
        "results": [r.as_dict() for r in sorted(results, key=lambda r: r.mutant.name)],
        "equivalent_mutants": [{"name": m.name, "reason": why} for m, why in equivalent],
    }


def _fmt_time(t: float | None) -> str:
    return "-" if t is None else f"{t:.1f}s"


def print_table(d: dict[str, Any]) -> None:
    rows = [
        (r["name"], r["outcome"], r["class"] or "-", _fmt_time(r["time_to_kill"]), str(r["runs"]), r["description"])
        for r in d["results"]
    ]
    head = ("mutant", "outcome", "class", "to kill", "runs", "mutation")
    if rows:
        widths = [max(len(x[i]) for x in [head, *rows]) for i in range(5)]
        for x in [head, *rows]:
            print("  ".join(x[i].ljust(widths[i]) for i in range(5)) + "  " + x[5])
    for r in d["results"]:
        if r["outcome"] == "error":
            print(f"error: {r['name']}: {r['detail']}")
    state = f"interrupted ({d['interrupted']}) after" if d.get("interrupted") else "ran"
    score = "-" if d["score"] is None else f"{100 * d['score']:.1f}%"
    print(
        f"mutate {state} {len(d['results'])} of {d['selected']} selected mutant(s) ({d['generated']} generated), "
        f"{d['seconds_per_mutant']:g}s each, {d['jobs']} job(s): killed {d['killed']}, survived {d['survived']}, "
        f"timed out {d['timeout']}, equivalent {d['equivalent']}, errors {d['error']}; score {score} "
        f"(killed / non-equivalent; median time to kill {_fmt_time(d['median_time_to_kill'])})"
    )
    if d["by_class"]:
        print("killed by: " + ", ".join(f"{c} {n}" for c, n in d["by_class"].items()))


def safe_name(name: str) -> str:
    """A mutant name as a file name (mm/ksm.py:f:12:rule:0 -> mm_ksm.py-f-12-rule-0)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name.replace("/", "_"))


def keep(directory: Path, result: Result) -> None:
    """Write the mutant's diff and its result next to each other, as it finishes (an interrupted campaign keeps
    every mutant it completed)."""
    directory.mkdir(parents=True, exist_ok=True)
    base = safe_name(result.mutant.name)
    (directory / f"{base}.diff").write_text(result.mutant.diff())
    (directory / f"{base}.json").write_text(json.dumps(result.as_dict(), indent=1, sort_keys=True) + "\n")


def compare(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`--compare`: each strategy's score, and for every mutant the strategies that killed it; the mutants only one
    strategy kills say what that strategy adds, the ones none kills are leads for an oracle or a scenario (both
    over the mutants every strategy soaked)."""
    killers: dict[str, list[str]] = {}
    for strat, d in summaries.items():
        for r in d["results"]:
            killers.setdefault(r["name"], [])
            if r["outcome"] == "killed":
                killers[r["name"]].append(strat)
    # only mutants every strategy soaked tell them apart (an interrupted comparison has some that one did not)
    everywhere = set.intersection(*({r["name"] for r in d["results"]} for d in summaries.values())) if len(
        summaries) > 1 else set()
    first = next(iter(summaries.values()), {})
    return {
        "seconds_per_mutant": first.get("seconds_per_mutant"),
        "sample": first.get("sample"),
        "seed": first.get("seed"),
        "jobs": first.get("jobs"),
        "strategies": {
            s: {o: d[o] for o in ("score", *OUTCOMES, "equivalent", "median_time_to_kill")}
            for s, d in summaries.items()
        },
        "killed_by": dict(sorted(killers.items())),
        "only_one": {name: ks[0] for name, ks in sorted(killers.items()) if len(ks) == 1 and name in everywhere},
        "none": sorted(name for name, ks in killers.items() if not ks and name in everywhere),
        "by_strategy": {s: {r["name"]: r["outcome"] for r in d["results"]} for s, d in summaries.items()},
    }


def print_compare(c: dict[str, Any]) -> None:
    """One line per strategy, then the mutants that tell the strategies apart."""
    print(f"comparison, {c['seconds_per_mutant']:g}s per mutant and strategy:")
    for s, x in c["strategies"].items():
        scored = x["killed"] + x["survived"] + x["timeout"]
        score = "-" if x["score"] is None else f"{100 * x['score']:.1f}%"
        print(f"  {s:10} killed {x['killed']}/{scored} ({score}), survived {x['survived']}, timed out "
              f"{x['timeout']}, errors {x['error']}, median time to kill {_fmt_time(x['median_time_to_kill'])}")
    for name, s in c["only_one"].items():
        others = ", ".join(f"{o} {out[name]}" for o, out in c["by_strategy"].items() if o != s and name in out)
        print(f"only {s} kills {name}" + (f" ({others})" if others else ""))
    for name in c["none"]:
        outs = ", ".join(f"{o} {out[name]}" for o, out in c["by_strategy"].items() if name in out)
        print(f"no strategy kills {name} ({outs})")
