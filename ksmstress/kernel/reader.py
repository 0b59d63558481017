"""Workload files: TOML and the action grammar, read into a `Workload` with one-line errors naming file and key.

Each action is checked against the workload's structure as it stands at that point (structure.py), so a write to
an unmapped page, a fork of an exited process or a reused child name is refused before either side runs. Every
number in the grammar has a bounded number of digits: a 5,000-digit page index must be an error line, not
Python's int-conversion ValueError.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .. import catalog
from ..tomltable import TableReader, loads, read_file, shown
from .structure import Structure
from .workload import ACTIONS, MAX_PATTERN, Action, Expect, Phase, Process, Region, Span, Workload, WorkloadError

NAME_MAX = 16  # a process name, as the kernel's comm (TASK_COMM_LEN - 1 characters)
NAME_RE = re.compile(rf"[A-Za-z_][A-Za-z0-9_-]{{0,{NAME_MAX - 1}}}")
NAME_EXPECTED = f"a name of letters, digits, '-' or '_' (at most {NAME_MAX} characters, not starting with a digit)"
TARGET_RE = re.compile(r"(?P<proc>[A-Za-z_][A-Za-z0-9_-]*)(?:\.(?P<region>[0-9]{1,9})(?:\[(?P<a>[0-9]{0,9}):"
                       r"(?P<b>[0-9]{0,9})\])?)?")
PATTERNS_RE = re.compile(r"([0-9]{1,9}|z)(,([0-9]{1,9}|z))*")  # z: an all-zero page
MAX_PATTERNS = 4096  # patterns in one write
GRAMMAR = (
    "write TARGET P[,P...] (P a pattern number or z) | read TARGET | fork PARENT CHILD | unmergeable TARGET | "
    "mergeable TARGET | munmap TARGET | mlock TARGET | munlock TARGET | dontneed TARGET | pageout TARGET | "
    "mremap P.R[A:B] D | thread PROC T | exit PROC|T | run 0|1|2 (TARGET: P, P.R or P.R[A:B], P a process or a "
    "thread, which acts on its process's memory; mremap moves the pages to page D of the same region)"
)
MAX_PROCESSES = 16
MAX_THREADS = 16  # threads started over the whole workload
MAX_PAGES = 200_000


def _table(path: str, where: str, data: Any) -> TableReader:
    return TableReader(path, where, data, WorkloadError)


def _process(path: str, i: int, data: Any) -> Process:
    r = _table(path, f"process[{i}]", data)
    name = r.get("name", str, "")
    if not NAME_RE.fullmatch(name):
        raise r.err("name", NAME_EXPECTED, name)
    regions = r.get("regions", list, None)
    if not regions or not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 65536 for n in regions):
        raise r.err("regions", "a non-empty list of page counts in [1, 65536]", regions)
    if len(regions) > 8:
        raise r.err("regions", "at most 8 regions", regions)
    mergeable = r.get("mergeable", bool, True)
    r.done()
    return Process(name, tuple(Region(n, mergeable) for n in regions))


def _expect(r: TableReader) -> Expect | None:
    if "expect" not in r.data:
        r.seen.add("expect")
        return None
    e = _table(r.path, r.key("expect"), r.get("expect", dict, {}))
    shared = e.get("shared", int, None, 0, 1 << 40)
    sharing = e.get("sharing", int, None, 0, 1 << 40)
    unshared = e.get("unshared", int, None, 0, 1 << 40)
    m = _table(r.path, e.key("merging"), e.get("merging", dict, {}))
    merging = tuple((name, m.get(name, int, 0, 0, 1 << 40)) for name in m.data)
    m.done()
    e.done()
    return Expect(shared, sharing, unshared, merging)


class _Actions:
    """The action grammar, read against the structure as it stands: each accepted action also updates it."""

    def __init__(self, path: str, structure: Structure) -> None:
        self.path = path
        self.s = structure
        self.key = self.text = ""

    def fail(self, expected: str, got: str = "") -> WorkloadError:
        """One line: the key, what was expected, and what was there (the action's text, cut, by default)."""
        got = f"{got} in {shown(self.text)}" if got else shown(self.text)
        return WorkloadError(f"{self.path}: key '{self.key}': expected {expected}, got {got}")

    def live(self, proc: str) -> str:
        if proc in self.s.threads:
            raise self.fail("a process", f"the thread {shown(proc)}")
        if not self.s.alive(proc):
            state = "exited" if proc in self.s.ever else "unknown"
            raise self.fail("a live process", f"{state} {shown(proc)}")
        return proc

    def actor(self, name: str) -> tuple[str, str]:
        """(process, thread) for a live process (thread "") or a live thread of one."""
        if name in self.s.threads:
            return self.s.threads[name], name
        return self.live(name), ""

    def target(self, tok: str) -> tuple[str, tuple[Span, ...], str]:
        m = TARGET_RE.fullmatch(tok)
        if not m:
            raise self.fail("a target PROC, PROC.R or PROC.R[A:B]")
        proc, thread = self.actor(m["proc"])
        regs = self.s.regions[proc]
        if m["region"] is None:
            return proc, tuple(Span(i, 0, r.pages) for i, r in enumerate(regs)), thread
        ri = int(m["region"])
        if ri >= len(regs):
            raise self.fail(f"a region of {proc} in [0, {len(regs) - 1}]")
        n = regs[ri].pages
        a = int(m["a"]) if m["a"] else 0
        b = int(m["b"]) if m["b"] else n
        if not 0 <= a < b <= n:
            raise self.fail(f"pages [A:B] with 0 <= A < B <= {n} in {proc}.{ri}")
        return proc, (Span(ri, a, b),), thread

    def require_mapped(self, proc: str, spans: tuple[Span, ...]) -> None:
        for s in spans:
            hole = self.s.hole(proc, s)
            if hole is not None:
                raise self.fail("mapped pages", f"page {hole} of {proc}.{s.region} (unmapped earlier)")

    def patterns(self, tok: str) -> tuple[int, ...]:
        pats = tok.split(",")
        if len(pats) > MAX_PATTERNS or not PATTERNS_RE.fullmatch(tok) or any(
            p != "z" and int(p) > MAX_PATTERN for p in pats
        ):
            raise self.fail(
                f"patterns P or P,P,... (at most {MAX_PATTERNS}, each in [0, {MAX_PATTERN}] or z for a zero page)"
            )
        return tuple(-1 if p == "z" else int(p) for p in pats)

    def action(self, key: str, text: Any) -> Action:
        self.key, self.text = key, text
        if not isinstance(text, str):
            raise self.fail(f"an action ({GRAMMAR})")
        toks = text.split()
        kind = toks[0] if toks else ""
        arity = {"write": 3, "fork": 3, "thread": 3, "exit": 2, "run": 2, "mremap": 3}.get(kind, 2)
        if kind not in ACTIONS or len(toks) != arity:
            raise self.fail(f"an action ({GRAMMAR})")
        if kind == "run":
            if toks[1] not in ("0", "1", "2"):
                raise self.fail("run 0, 1 or 2")
            return Action("run", value=int(toks[1]), text=text)
        if kind == "exit":
            proc, thread = self.actor(toks[1])
            if thread:
                self.s.thread_exit(thread)
            else:
                self.s.exit(proc)
            return Action("exit", proc, thread=thread, text=text)
        if kind in ("fork", "thread"):
            parent, child = self.live(toks[1]), toks[2]
            what = "process name for the child" if kind == "fork" else "name for the thread"
            if child in self.s.ever:
                raise self.fail(f"a new {what}", f"the existing {shown(child)}")
            if not NAME_RE.fullmatch(child):
                raise self.fail(f"the {what.split()[-1]}'s name to be {NAME_EXPECTED}", shown(child))
            if kind == "fork":
                self.s.fork(parent, child)
                return Action("fork", parent, child=child, text=text)
            if sum(1 for n in self.s.ever if n not in self.s.regions) >= MAX_THREADS:
                raise self.fail(f"at most {MAX_THREADS} threads in all")
            self.s.thread(parent, child)
            return Action("thread", parent, child=child, text=text)
        proc, spans, thread = self.target(toks[1])
        if kind == "munmap":
            self.s.munmap(proc, spans)
            return Action("munmap", proc, spans, text=text, thread=thread)
        if kind == "mremap":
            return self.mremap(proc, spans, thread, toks[2])
        if kind == "write":
            self.require_mapped(proc, spans)
            return Action("write", proc, spans, self.patterns(toks[2]), text=text, thread=thread)
        if kind == "read":  # a load from each page in memory or in swap (none is faulted in: no ZERO_PAGE in the model)
            self.require_mapped(proc, spans)
            return Action("read", proc, spans, text=text, thread=thread)
        if kind in ("mlock", "munlock"):  # over mapped pages only: a hole's -ENOMEM differs between kernels
            self.require_mapped(proc, spans)
            self.s.mlock(proc, spans, kind == "mlock")
            return Action(kind, proc, spans, text=text, thread=thread)
        if kind in ("dontneed", "pageout"):  # over a hole -ENOMEM, over an mlocked page -EINVAL, as madvise
            returns = self.s.unlocked_vmas_returns(proc, spans)
            return Action(kind, proc, spans, text=text, thread=thread, returns=returns)
        if kind in ("mergeable", "unmergeable"):
            self.s.cut(proc, spans)
        # madvise over a hole is legal: the kernel advises the mapped parts and returns -ENOMEM
        return Action(kind, proc, spans, text=text, thread=thread, returns=self.s.madvise_returns(proc, spans))


    def mremap(self, proc: str, spans: tuple[Span, ...], thread: str, dest_tok: str) -> Action:
        """mremap P.R[A:B] D: MREMAP_MAYMOVE | MREMAP_FIXED of mapped pages inside one vma to page D of the same
        region, not overlapping them (the kernel's -EINVAL and -EFAULT cases are refused here, not compared)."""
        if thread or len(spans) != 1:
            raise self.fail("mremap P.R[A:B] D with P a process and one region")
        s = spans[0]
        self.require_mapped(proc, spans)
        cut = self.s.cut_inside(proc, s)
        if cut is not None:
            raise self.fail("pages inside one vma", f"a vma edge at page {cut} of {proc}.{s.region}")
        n, size = s.end - s.start, self.s.regions[proc][s.region].pages
        if not dest_tok.isdigit() or len(dest_tok) > 9 or int(dest_tok) + n > size:
            raise self.fail(f"a destination page D in [0, {size - n}] of {proc}.{s.region}")
        dest = int(dest_tok)
        if dest < s.end and s.start < dest + n:
            raise self.fail(f"a destination not overlapping [{s.start}:{s.end}]", f"D = {dest}")
        self.s.mremap(proc, s, dest)
        return Action("mremap", proc, spans, text=self.text, dest=dest)


def parse(text: str, path: str = "<string>") -> Workload:
    """Parse and validate workload TOML; raises WorkloadError with a one-line message."""
    data = loads(text, path, WorkloadError)
    r = _table(path, "", data)
    name = r.get("name", str, Path(path).stem)
    description = r.get("description", str, "")
    source = r.get("source", str, "")
    raw_procs = r.get("process", list, [])
    if not raw_procs:
        raise r.err("process", "one or more [[process]] tables", data.get("process"))
    procs = tuple(_process(path, i, p) for i, p in enumerate(raw_procs))
    names = [p.name for p in procs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise WorkloadError(f"{path}: key 'process': expected distinct process names, got {dup!r} twice")
    raw_phases = r.get("phase", list, [])
    if not raw_phases:
        raise r.err("phase", "one or more [[phase]] tables", data.get("phase"))
    r.done()
    structure = Structure(procs)
    actions = _Actions(path, structure)
    phases = []
    for i, ph in enumerate(raw_phases):
        pr = _table(path, f"phase[{i}]", ph)
        pname = pr.get("name", str, f"phase {i + 1}")
        do = pr.get("do", list, None)
        if not do:
            raise pr.err("do", "a non-empty list of actions", do)
        acts = tuple(actions.action(f"phase[{i}].do[{j}]", a) for j, a in enumerate(do))
        expect = _expect(pr)
        pr.done()
        if expect is not None:
            unknown = next((n for n, _ in expect.merging if not structure.alive(n)), None)
            if unknown:
                key = _table(path, f"phase[{i}].expect.merging", {}).key(unknown)
                raise WorkloadError(f"{path}: key '{key}': expected a process alive after the phase")
        phases.append(Phase(pname, acts, expect))
    if len(structure.regions) > MAX_PROCESSES:
        raise WorkloadError(
            f"{path}: key 'phase': expected at most {MAX_PROCESSES} processes in all, got {len(structure.regions)}"
        )
    w = Workload(name, path, procs, tuple(phases), description, source, text)
    if w.total_pages > MAX_PAGES:
        raise WorkloadError(f"{path}: key 'process': expected at most {MAX_PAGES} pages in all, got {w.total_pages}")
    return w


def load(path: str | Path) -> Workload:
    p = Path(path)
    return parse(read_file(p, "workload", WorkloadError), str(p))


def resolve(names: list[str]) -> list[Path]:
    """Workload arguments as paths: a file, or a workload's name (user directories' `kernel/`, then shipped ones);
    none means every shipped workload."""
    if not names:
        return [e.path for e in catalog.entries(sub="kernel") if e.origin == catalog.SHIPPED]
    out = []
    for n in names:
        hit = catalog.find(n, sub="kernel")
        if hit is None:
            raise WorkloadError(f"{n}: no such workload file or name (known: {catalog.names(sub='kernel')})")
        out.append(hit)
    return out
