"""Model beside kernel (or beside the kernel figures recorded in the workload), phase by phase, and the verdict.

A phase agrees when pages_shared, pages_sharing and pages_unshared are equal, and each live process's merged
pages (the model's stable rmap_items of that mm; the kernel's /proc/PID/ksm_merging_pages, where it exists) are
equal. A workload agrees when every phase does: as 2.6.33, or else as the later kernel it runs on, when the model
with that kernel's later behaviours (later.py) predicts every figure; the report then names the behaviour.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

from ..failures import Failure
from . import later, swapspace, sysfs
from .model import Settled, run_model
from .real import KernelSideError, run_real
from .workload import Expect, Figures, Phase, Workload

COUNTS = ("shared", "sharing", "unshared")


def differences(model: Figures, other: Figures) -> list[str]:
    """What differs, one phrase each ("shared 2 != 3"); per-process only where `other` has a figure."""
    out = [f"{key} {getattr(model, key)} != {getattr(other, key)}" for key in COUNTS
           if getattr(model, key) != getattr(other, key)]
    out += [f"merged[{n}] {model.merging.get(n)} != {v}" for n, v in other.merging.items() if model.merging.get(n) != v]
    return out


def return_problems(ph: Phase, model: Settled, kernel: Settled | None = None) -> list[str]:
    """madvise return values against what the kernel returns for this phase's actions (-ENOMEM over a range with
    unmapped pages, 0 otherwise; workload.Action.returns), on each side that recorded them."""
    want = [r for a in ph.actions for r in a.returns]
    out = []
    for side, got in (("model", model.returns), ("kernel", kernel.returns if kernel else None)):
        if got is not None and list(got) != want:
            out.append(f"madvise returned {list(got)} on the {side}, expected {want}")
    return out


def expected_figures(e: Expect) -> Figures:
    """Recorded figures as a Figures (what was not recorded reads -1 and is not compared)."""
    return Figures(
        -1 if e.shared is None else e.shared,
        -1 if e.sharing is None else e.sharing,
        -1 if e.unshared is None else e.unshared,
        dict(e.merging),
    )


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """Figures for JSON: what was not recorded (-1) is null."""
    return {k: _plain(v) if isinstance(v, dict) else None if isinstance(v, int) and v < 0 else v for k, v in d.items()}


@dataclass
class Row:
    phase: str
    model: Figures
    other: Figures | None  # the kernel's, or the recorded figures
    problems: list[str] = field(default_factory=list)
    model_scans: int = 0
    kernel_scans: int = 0
    returns: tuple[int, ...] = ()  # the model's madvise return values in the phase, span by span

    @property
    def agree(self) -> bool:
        return not self.problems


@dataclass
class Report:
    """One workload compared: rows per phase, timings per side, and the verdict."""

    workload: Workload
    against: str  # "kernel" | "recorded"
    rows: list[Row] = field(default_factory=list)
    model_seconds: float = 0.0
    kernel_seconds: float = 0.0
    error: str = ""
    skipped: str = ""  # why the kernel could not run this workload (no swap area for a pageout): not a mismatch
    later: tuple[str, ...] = ()  # the later behaviours (later.py) the rows' model took on to agree; (): as 2.6.33
    as_2633: list[str] = field(default_factory=list)  # then, how 2.6.33's figures differ ("phase: shared 1 != 0")

    @property
    def verdict(self) -> str:
        if self.error:
            return "error"
        if self.skipped:
            return "skipped"
        return "agree" if all(r.agree for r in self.rows) else "mismatch"

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload.name,
            "path": self.workload.path,
            "against": self.against,
            "verdict": self.verdict,
            "error": self.error or None,
            "skipped": self.skipped or None,
            "later": list(self.later),
            "differs_as_2633": self.as_2633,
            "model_seconds": round(self.model_seconds, 4),
            "kernel_seconds": round(self.kernel_seconds, 4) if self.against == "kernel" else None,
            "phases": [
                {
                    "phase": r.phase,
                    "model": r.model.as_dict(),
                    self.against: _plain(r.other.as_dict()) if r.other else None,
                    "agree": r.agree,
                    "mismatches": r.problems,
                    "full_scans": {"model": r.model_scans, "kernel": r.kernel_scans if r.kernel_scans else None},
                    "madvise_returns": list(r.returns),
                }
                for r in self.rows
            ],
        }


def model_side(w: Workload, min_scans: int,
               later_kernel: frozenset[str] = frozenset()) -> tuple[list[Settled] | None, float, str]:
    """The model's figures, or the model failure that stopped it (a detector firing is a finding too)."""
    try:
        res, secs = run_model(w, min_scans, later_kernel)
    except Failure as f:
        return None, 0.0, f"model: {f.cls}: {f.message}"
    bad = next((w.phases[i].name for i, r in enumerate(res) if not r.settled), None)
    return res, secs, f"model: counters did not settle in phase {bad!r}" if bad else ""


def kernel_rows(w: Workload, mres: list[Settled], kres: list[Settled]) -> list[Row]:
    """The model's phases beside the kernel's, each with what differs."""
    rows = []
    for ph, m, k in zip(w.phases, mres, kres, strict=True):
        problems = differences(m.figures, k.figures) + return_problems(ph, m, k)
        rows.append(Row(ph.name, m.figures, k.figures, problems, m.scans, k.scans, m.returns or ()))
    return rows


def compare_kernel(w: Workload, model: tuple[list[Settled] | None, float, str], session: sysfs.Session,
                   min_scans: int = 4, timeout: float = 60.0) -> Report:
    """Run `w` on the kernel (the model's results already in hand) and compare phase by phase; where 2.6.33's
    figures differ, try the model as the running kernel's release is (as_later)."""
    mres, msecs, merr = model
    rep = Report(w, "kernel", model_seconds=msecs, error=merr)
    if mres is None:
        return rep
    try:
        kres, rep.kernel_seconds = run_real(w, session, min_scans, timeout)
    except (KernelSideError, OSError) as e:
        rep.error = f"kernel: {e}"
        return rep
    rep.rows = kernel_rows(w, mres, kres)
    if rep.verdict != "agree":
        as_later(rep, kres, min_scans, os.uname().release)
    return rep


def as_later(rep: Report, kres: list[Settled], min_scans: int, release: str) -> None:
    """Where 2.6.33's figures differ: the model again with the later behaviours `release` has (each alone, then
    all); the first run whose every figure agrees takes the rows, and 2.6.33's differences are kept beside them."""
    w = rep.workload
    for behaviours in later.candidates(release):
        mres, secs, err = model_side(w, min_scans, behaviours)
        rep.model_seconds += secs
        if mres is None or err:
            continue
        rows = kernel_rows(w, mres, kres)
        if all(r.agree for r in rows):
            rep.as_2633 = [f"{r.phase}: {', '.join(r.problems)}" for r in rep.rows if r.problems]
            rep.rows, rep.later = rows, tuple(sorted(behaviours))
            return


def compare_recorded(w: Workload, min_scans: int = 4) -> Report:
    """The model against the kernel figures recorded in the workload file (where the kernel is not at hand)."""
    mres, msecs, merr = model_side(w, min_scans)
    rep = Report(w, "recorded", model_seconds=msecs, error=merr)
    if mres is None:
        return rep
    if not any(ph.expect for ph in w.phases):
        rep.error = "no recorded figures (expect = {...}) in the workload"
        return rep
    for ph, m in zip(w.phases, mres, strict=True):
        other = expected_figures(ph.expect) if ph.expect else None
        problems = [p.replace("!= recorded", "!=") for p in ph.expect.mismatches(m.figures)] if ph.expect else []
        problems += return_problems(ph, m)
        rep.rows.append(Row(ph.name, m.figures, other, problems, m.scans, returns=m.returns or ()))
    return rep


def run_against_kernel(workloads: list[Workload], min_scans: int = 4, pages_to_scan: int = 10_000,
                       sleep_millisecs: int = 0, timeout: float = 60.0, lock_timeout: float = 120.0,
                       native: bool = False) -> tuple[list[Report], sysfs.Session]:
    """Every workload on the model, then on the kernel within one session (lock held, settings restored after).

    Raises sysfs.Unavailable when the kernel cannot be used (nothing was changed then)."""
    reason = sysfs.availability()
    if reason:
        raise sysfs.Unavailable(reason)
    models = [model_side(w, min_scans) for w in workloads]
    swapping = [w.uses("pageout") for w in workloads]
    with sysfs.ksm_session(pages_to_scan, sleep_millisecs, lock_timeout, native) as s:
        need = max((w.total_pages for w, sw in zip(workloads, swapping, strict=True) if sw), default=0)
        with swapspace.swap_area(need) if need else contextlib.nullcontext("") as no_swap:
            reports = []
            for w, m, sw in zip(workloads, models, swapping, strict=True):
                if sw and no_swap:
                    reports.append(Report(w, "kernel", model_seconds=m[1], skipped=no_swap))
                else:
                    reports.append(compare_kernel(w, m, s, min_scans, timeout))
    return reports, s


# -- rendering -----------------------------------------------------------------------------------------------
def _cell(m: int | None, o: int | None) -> str:
    """`model = other`; `!` where they differ; no mark where there is nothing to compare with."""
    ms = "-" if m is None else str(m)
    os_ = "-" if o is None else str(o)
    mark = " " if o is None or m is None else "=" if m == o else "!"
    return f"{ms:>5} {mark} {os_:<5}"


def _known(v: int | None) -> int | None:
    return None if v is None or v < 0 else v  # recorded figures use -1 for "not recorded"


def render(rep: Report) -> str:
    """The phase-by-phase table: each cell is `model = other`, `!` where they differ."""
    w = rep.workload
    other = rep.against
    timing = f"model {rep.model_seconds:.2f}s" + (f", kernel {rep.kernel_seconds:.2f}s" if other == "kernel" else "")
    lines = [f"{w.name}: {rep.verdict} ({timing})" + (f" - {w.description}" if w.description else "")]
    if rep.error:
        lines.append(f"  error: {rep.error}")
    if rep.skipped:
        lines.append(f"  skipped on the kernel: {rep.skipped}")
    if rep.later:
        lines.append(f"  as the later kernel: the model with {later.describe(rep.later)}")
        lines.append(f"  as 2.6.33 (the model without it): {'; '.join(rep.as_2633)}")
    if not rep.rows:
        return "\n".join(lines)
    procs = list(w.layout())
    width = max(len(r.phase) for r in rep.rows) + 2
    cw = 14
    head = [*COUNTS, *[f"merged {p}"[:cw - 1] for p in procs]]
    lines.append("  " + " " * width + "".join(f"{h:^{cw}}" for h in head))
    lines.append("  " + f"{'phase':<{width}}" + "".join(f"{'model ' + other[:6]:^{cw}}" for _ in head))
    for r in rep.rows:
        o = r.other
        cells = [_cell(getattr(r.model, k), _known(getattr(o, k)) if o else None) for k in COUNTS]
        cells += [_cell(r.model.merging.get(p), _known(o.merging.get(p)) if o else None) for p in procs]
        tail = "" if r.agree else "  <- " + "; ".join(r.problems)
        lines.append(f"  {r.phase:<{width}}" + "".join(f"{c:^{cw}}" for c in cells) + tail)
    return "\n".join(lines)


def settings_line(s: sysfs.Session, native: bool) -> str:
    rel = os.uname().release
    if s.recovered:
        rel += " (first restored the values a killed run had left)"
    if native:
        return f"kernel {rel}, its own settings kept (--native); ksmd speed: {s.describe()}"
    return f"kernel {rel}, 2.6.33-equivalent settings for the run: {s.describe()}; every value restored after"
