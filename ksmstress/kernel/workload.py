"""Kernel workloads: one description of processes, pages and phases that drives both the model and the kernel.

A workload is a TOML file (`scenarios/kernel/*.toml`). It names the processes that exist at the start, each with
anonymous private regions of given page counts (mmapped and madvised MADV_MERGEABLE before the first phase, never
touched until a phase writes them), and a list of phases. A phase is a list of actions; after the last action both
sides let ksmd settle and the counters are compared. Page contents are patterns: pattern P is the page filled with
byte (P % 255) + 1 whose last byte is P // 255 (`checks.content.pattern_bytes`), so P and P + 255 differ only in
the last byte (LTP ksm01's "last byte e") and no pattern is an all-zero page (zero-page merging is a later kernel
feature; `z` asks for one where that is the point). The model's small pages and the kernel's 4096-byte pages then
fall into the same equality classes.

This module is what a workload is (the types both sides run); reader.py turns the TOML into one, structure.py
follows which processes are alive and which pages are mapped while it does, generate.py draws random ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ACTIONS = ("write", "fork", "unmergeable", "mergeable", "munmap", "exit", "run", "mlock", "munlock", "dontneed",
           "thread", "mremap", "pageout", "read")
MAX_PATTERN = 255 * 256 - 1  # pattern // 255 must fit the last byte
ENOMEM = 12  # madvise(2) over a range with unmapped pages: applied to the mapped parts, then -ENOMEM
EINVAL = 22  # madvise(MADV_DONTNEED) over an mlocked (VM_LOCKED) vma


class WorkloadError(ValueError):
    """A malformed workload: the one line the user sees (exit status 2)."""


@dataclass(frozen=True)
class Region:
    pages: int
    mergeable: bool = True


@dataclass(frozen=True)
class Process:
    name: str
    regions: tuple[Region, ...]


@dataclass(frozen=True)
class Span:
    """Pages [start, end) of one region."""

    region: int
    start: int
    end: int


@dataclass(frozen=True)
class Action:
    kind: str  # one of ACTIONS
    proc: str = ""  # the acting process (the parent for fork)
    spans: tuple[Span, ...] = ()
    patterns: tuple[int, ...] = ()  # write: cycled over the pages of the spans
    child: str = ""  # fork: the child process; thread: the new thread
    thread: str = ""  # the thread of `proc` that does the action (its exit, for exit); "": the process itself
    value: int = 0  # run
    text: str = ""
    returns: tuple[int, ...] = ()  # madvise: what the kernel returns per span (0, -ENOMEM over a hole, -EINVAL)
    dest: int = 0  # mremap: the page of the span's region the pages move to (MREMAP_MAYMOVE | MREMAP_FIXED)

    def page_patterns(self) -> list[tuple[int, int, int]]:
        """(region, page, pattern) for every page a write stores, in program order."""
        out, i = [], 0
        for s in self.spans:
            for p in range(s.start, s.end):
                out.append((s.region, p, self.patterns[i % len(self.patterns)]))
                i += 1
        return out


@dataclass(frozen=True)
class Figures:
    """What is compared after a phase: the global counters and each live process's merged pages."""

    shared: int
    sharing: int
    unshared: int
    merging: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"shared": self.shared, "sharing": self.sharing, "unshared": self.unshared, "merging": self.merging}


@dataclass(frozen=True)
class Expect:
    """Recorded kernel figures for a phase; None for what was not recorded."""

    shared: int | None = None
    sharing: int | None = None
    unshared: int | None = None
    merging: tuple[tuple[str, int], ...] = ()

    def mismatches(self, got: Figures) -> list[str]:
        out = [
            f"{key} {getattr(got, key)} != recorded {want}"
            for key in ("shared", "sharing", "unshared")
            if (want := getattr(self, key)) is not None and getattr(got, key) != want
        ]
        out += [
            f"merging[{name}] {got.merging.get(name)} != recorded {want}"
            for name, want in self.merging
            if got.merging.get(name) != want
        ]
        return out


@dataclass(frozen=True)
class Phase:
    name: str
    actions: tuple[Action, ...]
    expect: Expect | None = None


@dataclass(frozen=True)
class Workload:
    name: str
    path: str
    processes: tuple[Process, ...]
    phases: tuple[Phase, ...]
    description: str = ""
    source: str = ""
    text: str = ""

    def layout(self) -> dict[str, tuple[Region, ...]]:
        """Every process that ever exists (initial ones, then forked children in order) and its regions."""
        out = {p.name: p.regions for p in self.processes}
        for ph in self.phases:
            for a in ph.actions:
                if a.kind == "fork":
                    out[a.child] = out[a.proc]
        return out

    def uses(self, kind: str) -> bool:
        """Whether an action of this kind occurs in the workload."""
        return any(a.kind == kind for ph in self.phases for a in ph.actions)

    @property
    def total_pages(self) -> int:
        return sum(r.pages for regs in self.layout().values() for r in regs)
