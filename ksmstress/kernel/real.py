"""The kernel's side of a workload: real processes (proctree.py), real pages, the real ksmd, and settling.

ksmd is paused (run=0) while a phase's actions run, so the kernel starts every settle from the same state as the
model does, whatever ksmd's timing; settling is run=1 until full_scans has advanced by `min_scans` and two
snapshots taken with ksmd paused, a full scan apart, agree.
"""

from __future__ import annotations

import time

from .. import procs
from . import libc, swapspace, sysfs
from .model import Settled
from .proctree import KernelSideError, ProcTree
from .workload import Action, Figures, Workload

IDLE_AFTER = 0.1  # seconds without a full scan, with nothing mergeable: ksmd has stopped (empty mm list)

__all__ = ["KernelSideError", "RealSide", "merging_pages", "run_real"]


def merging_pages(pid: int) -> int | None:
    """/proc/PID/ksm_merging_pages (Linux 5.19+): the mm's rmap_items in the stable tree; None where absent."""
    try:
        with open(f"/proc/{pid}/ksm_merging_pages") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class RealSide:
    """One workload on the running kernel. Use as a context manager: leaving it kills and reaps every process."""

    def __init__(self, w: Workload, session: sysfs.Session, min_scans: int = 4, timeout: float = 60.0) -> None:
        self.w = w
        self.session = session
        self.min_scans, self.timeout = min_scans, timeout
        self.mode = 1  # the workload's run mode; sysfs run is 0 while actions run
        self.returns: list[int] = []  # this phase's madvise return values, span by span
        self.tree = ProcTree(w, timeout)

    def __enter__(self) -> RealSide:
        self.tree.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.tree.__exit__(*exc)

    def pids(self) -> dict[str, int]:
        return self.tree.pids()

    # -- actions ---------------------------------------------------------------------------------------------
    def apply(self, a: Action) -> None:
        """Run one action with ksmd paused (run=0), so no scan interleaves with a phase's actions."""
        procs.check_interrupt()  # under catch_interrupts(): Ctrl-C and SIGTERM end the workload between actions
        if a.kind == "run":
            self.mode = a.value
            if a.value != 1:  # run=1 takes effect when the phase settles
                self.session.run(a.value)
            return
        spans = [[s.region, s.start, s.end] for s in a.spans]
        if a.kind == "write":
            self.tree.call(a.proc, "write", spans, list(a.patterns), thread=a.thread)
        elif a.kind == "munmap":
            self.tree.call(a.proc, "munmap", spans, thread=a.thread)
        elif a.kind in ("mergeable", "unmergeable", "dontneed"):
            advice = {"mergeable": libc.MADV_MERGEABLE, "unmergeable": libc.MADV_UNMERGEABLE,
                      "dontneed": libc.MADV_DONTNEED}[a.kind]
            self.returns += self.tree.call(a.proc, "madvise", spans, advice, thread=a.thread)
        elif a.kind == "read":
            self.tree.call(a.proc, "read", spans, thread=a.thread)
        elif a.kind == "pageout":
            self.returns += self.tree.call(a.proc, "pageout", spans, thread=a.thread)
            swapspace.wait_writeback(min(self.timeout, 10.0))
        elif a.kind in ("mlock", "munlock"):
            self.tree.call(a.proc, "mlock", spans, a.kind == "mlock", thread=a.thread)
        elif a.kind == "mremap":
            self.tree.call(a.proc, "mremap", spans[0], a.dest)
        elif a.kind == "fork":
            self.tree.fork(a.proc, a.child)
        elif a.kind == "thread":
            self.tree.call(a.proc, "thread", a.child)
        elif a.kind == "exit" and a.thread:
            self.tree.call(a.proc, "endthread", a.thread)
        elif a.kind == "exit":
            self.tree.exit(a.proc)

    # -- ksmd ------------------------------------------------------------------------------------------------
    def figures(self) -> Figures:
        c = sysfs.counters()
        merging = {}
        for n, pid in self.pids().items():
            v = merging_pages(pid)
            if v is not None:
                merging[n] = v
        return Figures(c["pages_shared"], c["pages_sharing"], c["pages_unshared"], merging)

    def _any_mergeable(self) -> bool | None:
        """Whether a live workload process has a VM_MERGEABLE vma (/proc/PID/ksm_stat, 6.1+); None: unknown."""
        seen = False
        for pid in self.pids().values():
            try:
                with open(f"/proc/{pid}/ksm_stat") as f:
                    stat = f.read()
            except OSError:
                return None
            seen = True
            if "ksm_mergeable: yes" in stat:
                return True
        return False if seen or not self.pids() else None

    def _run_scans(self, n: int, deadline: float) -> int:
        """run=1 until full_scans has advanced by n, then run=0 (returns once ksmd is out of its batch).

        ksmd stops scanning when its mm list is empty (no process has mergeable memory and the last slots were
        dropped): then full_scans stands still, and that is settled too, as ksmd_should_run() is false.
        """
        start = sysfs.read_int("full_scans")
        self.session.run(1)
        last, since = start, time.monotonic()
        try:
            while (now := sysfs.read_int("full_scans")) < start + n:
                procs.check_interrupt()
                t = time.monotonic()
                if now != last:
                    last, since = now, t
                elif t - since > IDLE_AFTER and (m := self._any_mergeable()) is not True:
                    if m is False or t - since > 20 * IDLE_AFTER:  # unknown (no ksm_stat): wait longer
                        break
                if t > deadline:
                    raise KernelSideError(f"ksmd did {now - start} of {n} full scans in {self.timeout:.0f}s")
                time.sleep(0.0005)
        finally:
            self.session.run(0)
        return sysfs.read_int("full_scans") - start

    def settle(self) -> Settled:
        """With run=1: scans until full_scans has advanced by min_scans and two paused snapshots two full scans
        apart agree. With run 0 or 2 ksmd does not scan: the figures are read as they are."""
        t0 = time.perf_counter()
        returns, self.returns = tuple(self.returns), []
        if self.mode != 1:
            return Settled(self.figures(), 0, time.perf_counter() - t0, returns=returns)
        deadline = time.monotonic() + self.timeout
        scans = self._run_scans(self.min_scans, deadline)
        prev = self.figures()
        while True:
            scans += self._run_scans(2, deadline)
            cur = self.figures()
            if cur == prev:
                return Settled(cur, scans, time.perf_counter() - t0, returns=returns)
            prev = cur


def run_real(w: Workload, session: sysfs.Session, min_scans: int = 4, timeout: float = 60.0) -> tuple[
    list[Settled], float
]:
    """Every phase of `w` on the running kernel: the settled figures per phase and the total wall time."""
    t0 = time.perf_counter()
    out = []
    session.run(0)
    with RealSide(w, session, min_scans, timeout) as side:
        for ph in w.phases:
            for a in ph.actions:
                side.apply(a)
            out.append(side.settle())
    # leave no state for the next workload: unmerge and forget everything (full_scans back to 0)
    session.run(2)
    session.run(0)
    return out, time.perf_counter() - t0
