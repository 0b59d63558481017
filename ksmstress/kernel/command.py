"""`ksmstress kernel [WORKLOAD ...] [--json]`: the model beside the running kernel's KSM, phase by phase.

Exit status: 0 when every workload agrees (or when the kernel cannot be used: the verdict is then `skipped`, with
the reason, never a silent pass), 1 on any mismatch or error, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from . import sysfs
from .compare import Report, compare_recorded, render, run_against_kernel, settings_line
from .generate import generate
from .reader import load, resolve
from .workload import Workload, WorkloadError


def _positive(a: argparse.Namespace) -> None:
    for opt, lo in (("generate", 0), ("min_scans", 2), ("pages_to_scan", 1), ("sleep_millisecs", 0),
                    ("timeout", 1), ("lock_timeout", 0), ("seed", 0)):
        v = getattr(a, opt)
        if not (math.isfinite(v) and v >= lo):  # NaN and inf would pass a bare comparison
            raise WorkloadError(f"--{opt.replace('_', '-')}: expected a finite number >= {lo}, got {v}")


def _summary(reports: list[Report]) -> tuple[int, int]:
    return len(reports), sum(r.verdict == "agree" for r in reports)


def _n_later(reports: list[Report]) -> int:
    """How many agreed only with a later kernel's behaviour on."""
    return sum(bool(r.later) for r in reports)


def _as_later(reports: list[Report]) -> str:
    """`, 1 of them as the later kernel (mlock_populate)` when the model agreed only with a later behaviour on."""
    names = sorted({n for r in reports for n in r.later})
    n = _n_later(reports)
    return f", {n} of them as the later kernel ({', '.join(names)})" if n else ""


def cmd_kernel(a: argparse.Namespace) -> int:
    _positive(a)
    paths = resolve(a.workload) if a.workload or not a.generate else []
    shipped: list[Workload] = [load(p) for p in paths]
    generated = [generate(s) for s in range(a.seed, a.seed + a.generate)]
    if not shipped and not generated:
        raise WorkloadError("ksmstress kernel: no workloads to run (none named, none shipped, --generate 0)")
    out: dict[str, Any] = {"against": "recorded" if a.recorded else "kernel", "kernel": os.uname().release}
    if a.recorded:
        if generated:
            raise WorkloadError("--recorded: expected no --generate (generated workloads have no recorded figures)")
        reports = [compare_recorded(w, a.min_scans) for w in shipped]
        header = "model against the kernel figures recorded in the workload files (no kernel run)"
    else:
        try:
            reports, session = run_against_kernel(
                shipped + generated, a.min_scans, a.pages_to_scan, a.sleep_millisecs, a.timeout, a.lock_timeout,
                a.native,
            )
        except sysfs.RestoreError as e:
            print(f"ksmstress: error: {e}", file=sys.stderr)
            return 1
        except sysfs.Unavailable as e:
            reason = str(e)
            if a.json:
                print(json.dumps({**out, "verdict": "skipped", "reason": reason}, sort_keys=True))
            else:
                print(f"skipped: the kernel's KSM cannot be used here: {reason}")
                print("  (`ksmstress kernel --recorded` compares the model with the recorded kernel figures)")
            return 0
        header = settings_line(session, a.native)
        out["settings"] = [{"file": n, "value": v, "was": w, "why": why} for n, v, w, why in session.applied]
    gen_reports = reports[len(shipped):]
    ok = all(r.verdict in ("agree", "skipped") for r in reports)  # skipped: the machine cannot run it (says why)
    out["verdict"] = "agree" if ok else "mismatch"
    if a.json:
        out["workloads"] = [r.to_dict() for r in reports]
        if generated:
            ran, agreed = _summary(gen_reports)
            out["generated"] = {"seed": a.seed, "ran": ran, "agreed": agreed,
                                "as_later": _n_later(gen_reports)}
        print(json.dumps(out, sort_keys=True))
        return 0 if ok else 1
    print(header)
    for r in reports[: len(shipped)]:
        print()
        print(render(r))
    if generated:
        print()
        for r, w in zip(gen_reports, generated, strict=True):
            if r.verdict == "agree" and not r.later:
                timing = f"model {r.model_seconds:.2f}s, kernel {r.kernel_seconds:.2f}s"
                print(f"{w.name}: agree ({len(w.layout())} processes, {w.total_pages} pages, "
                      f"{len(w.phases)} phases; {timing})")
            else:
                print(render(r))
                print(f"  replay: ksmstress kernel --generate 1 --seed {w.name.removeprefix('gen-')}")
        ran, agreed = _summary(gen_reports)
        print(f"generated workloads (seeds {a.seed}..{a.seed + a.generate - 1}): {ran} ran, {agreed} agreed"
              + _as_later(gen_reports))
    n, agreed = _summary(reports)
    skipped = sum(r.verdict == "skipped" for r in reports)
    print(f"verdict: {out['verdict']} ({agreed} of {n} workloads agree{_as_later(reports)}"
          + (f", {skipped} skipped)" if skipped else ")"))
    return 0 if ok else 1


def add_parser(sub: Any) -> None:
    """Register `ksmstress kernel` on the CLI's subparsers."""
    k = sub.add_parser("kernel", help="compare the model with the running kernel's KSM, workload by workload",
                       description=__doc__.split("\n")[0])
    k.add_argument("workload", nargs="*", help="workload files or names (default: every shipped workload)")
    k.add_argument("--json", action="store_true", help="print one machine-readable object")
    k.add_argument("--generate", type=int, default=0, metavar="N", help="also run N generated workloads")
    k.add_argument("--seed", type=int, default=0, help="first seed of the generated workloads")
    k.add_argument("--recorded", action="store_true",
                   help="compare the model with the kernel figures recorded in the workload files, not the kernel")
    k.add_argument("--native", action="store_true",
                   help="keep the kernel's later features (max_page_sharing, smart_scan, ...): shows what they change")
    k.add_argument("--min-scans", type=int, default=4, help="full scans before a phase may count as settled")
    k.add_argument("--pages-to-scan", type=int, default=10_000, help="ksmd's pages_to_scan during the run")
    k.add_argument("--sleep-millisecs", type=int, default=0, help="ksmd's sleep_millisecs during the run")
    k.add_argument("--timeout", type=float, default=60.0, help="seconds a phase may take to settle on the kernel")
    k.add_argument("--lock-timeout", type=float, default=120.0,
                   help="seconds to wait for another run's hold on the kernel's KSM")
    k.set_defaults(fn=cmd_kernel)
