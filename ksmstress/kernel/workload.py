"""Kernel workloads: one description of processes, pages and phases that drives both the model and the kernel.

A workload is a TOML file (`scenarios/kernel/*.toml`). It names the processes that exist at the start, each with
anonymous private regions of given page counts (mmapped and madvised MADV_MERGEABLE before the first phase, never
touched until a phase writes them), and a list of phases. A phase is a list of actions; after the last action both
sides let ksmd settle and the counters are compared. Page contents are patterns: pattern P is the page filled with
byte (P % 255) + 1 whose last byte is P // 255 (`checks.content.pattern_bytes`), so P and P + 255 differ only in
the last byte (LTP ksm01's "last byte e") and no pattern is an all-zero page (zero-page merging is a later kernel
feature; `z` asks for one where that is the point). The model's small pages and the kernel's 4096-byte pages then
fall into the same equality classes.

Validation replays the workload's structure (which processes are alive, which pages are mapped), so a workload
that would write to an unmapped page or fork an exited process is refused with one line naming the file and the
key, before either side runs.
"""

from __future__ import annotations

import random
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import catalog
from ..tomltable import TableReader, read_file

ACTIONS = ("write", "fork", "unmergeable", "mergeable", "munmap", "exit", "run")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,15}$")
TARGET_RE = re.compile(r"^(?P<proc>[A-Za-z_][A-Za-z0-9_-]*)(?:\.(?P<region>\d+)(?:\[(?P<a>\d*):(?P<b>\d*)\])?)?$")
PATTERNS_RE = re.compile(r"^(\d+|z)(,(\d+|z))*$")  # z: an all-zero page
MAX_PATTERN = 255 * 256 - 1  # pattern // 255 must fit the last byte
GRAMMAR = (
    "write TARGET P[,P...] (P a pattern number or z) | fork PARENT CHILD | unmergeable TARGET | mergeable TARGET | "
    "munmap TARGET | exit PROC | run 0|1|2 (TARGET: PROC, PROC.R or PROC.R[A:B])"
)


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
    child: str = ""  # fork
    value: int = 0  # run
    text: str = ""

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

    @property
    def total_pages(self) -> int:
        return sum(r.pages for regs in self.layout().values() for r in regs)


# -- reading -------------------------------------------------------------------------------------------------
def _table(path: str, where: str, data: Any) -> TableReader:
    return TableReader(path, where, data, WorkloadError)


def _process(path: str, i: int, data: Any) -> Process:
    r = _table(path, f"process[{i}]", data)
    name = r.get("name", str, "")
    if not NAME_RE.match(name):
        raise r.err("name", "a name of letters, digits, '-' or '_' (at most 16, not starting with a digit)", name)
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


class _Sim:
    """The workload's structure as it runs: live processes and, per region, which pages are mapped."""

    def __init__(self, path: str, procs: tuple[Process, ...]) -> None:
        self.path = path
        self.regions: dict[str, tuple[Region, ...]] = {p.name: p.regions for p in procs}
        self.mapped: dict[str, list[list[bool]]] = {p.name: [[True] * r.pages for r in p.regions] for p in procs}
        self.ever = set(self.mapped)

    def target(self, key: str, text: str, tok: str) -> tuple[str, tuple[Span, ...]]:
        m = TARGET_RE.match(tok)
        if not m:
            raise WorkloadError(
                f"{self.path}: key '{key}': expected a target PROC, PROC.R or PROC.R[A:B], got {text!r}"
            )
        proc = self.live(key, text, m["proc"])
        regs = self.regions[proc]
        if m["region"] is None:
            return proc, tuple(Span(i, 0, r.pages) for i, r in enumerate(regs))
        ri = int(m["region"])
        if ri >= len(regs):
            raise WorkloadError(
                f"{self.path}: key '{key}': expected a region of {proc} in [0, {len(regs) - 1}], got {text!r}"
            )
        n = regs[ri].pages
        a = int(m["a"]) if m["a"] else 0
        b = int(m["b"]) if m["b"] else n
        if not 0 <= a < b <= n:
            raise WorkloadError(
                f"{self.path}: key '{key}': expected pages [A:B] with 0 <= A < B <= {n} in {proc}.{ri}, got {text!r}"
            )
        return proc, (Span(ri, a, b),)

    def live(self, key: str, text: str, proc: str) -> str:
        if proc not in self.mapped:
            state = "exited" if proc in self.ever else "unknown"
            raise WorkloadError(f"{self.path}: key '{key}': expected a live process, got {state} {proc!r} in {text!r}")
        return proc

    def require_mapped(self, key: str, text: str, proc: str, spans: tuple[Span, ...]) -> None:
        for s in spans:
            hole = next((p for p in range(s.start, s.end) if not self.mapped[proc][s.region][p]), None)
            if hole is not None:
                raise WorkloadError(
                    f"{self.path}: key '{key}': expected mapped pages, got page {hole} of {proc}.{s.region} "
                    f"(unmapped earlier) in {text!r}"
                )

    def action(self, key: str, text: Any) -> Action:
        if not isinstance(text, str):
            raise WorkloadError(f"{self.path}: key '{key}': expected an action ({GRAMMAR}), got {text!r}")
        toks = text.split()
        kind = toks[0] if toks else ""
        arity = {"write": 3, "fork": 3, "exit": 2, "run": 2}.get(kind, 2)
        if kind not in ACTIONS or len(toks) != arity:
            raise WorkloadError(f"{self.path}: key '{key}': expected an action ({GRAMMAR}), got {text!r}")
        if kind == "run":
            if toks[1] not in ("0", "1", "2"):
                raise WorkloadError(f"{self.path}: key '{key}': expected run 0, 1 or 2, got {text!r}")
            return Action("run", value=int(toks[1]), text=text)
        if kind == "exit":
            proc = self.live(key, text, toks[1])
            del self.mapped[proc]
            return Action("exit", proc, text=text)
        if kind == "fork":
            parent = self.live(key, text, toks[1])
            child = toks[2]
            if not NAME_RE.match(child) or child in self.ever:
                raise WorkloadError(
                    f"{self.path}: key '{key}': expected a new process name for the child, got {text!r}"
                )
            self.regions[child] = self.regions[parent]
            self.mapped[child] = [list(m) for m in self.mapped[parent]]
            self.ever.add(child)
            return Action("fork", parent, child=child, text=text)
        proc, spans = self.target(key, text, toks[1])
        if kind == "munmap":
            for s in spans:
                self.mapped[proc][s.region][s.start : s.end] = [False] * (s.end - s.start)
            return Action("munmap", proc, spans, text=text)
        self.require_mapped(key, text, proc, spans)
        if kind == "write":
            pats = toks[2].split(",")
            bad = not PATTERNS_RE.match(toks[2]) or any(p != "z" and int(p) > MAX_PATTERN for p in pats)
            if bad or len(pats) > 4096:
                raise WorkloadError(
                    f"{self.path}: key '{key}': expected patterns P or P,P,... (at most 4096, each in "
                    f"[0, {MAX_PATTERN}] or z for a zero page), got {text!r}"
                )
            return Action("write", proc, spans, tuple(-1 if p == "z" else int(p) for p in pats), text=text)
        return Action(kind, proc, spans, text=text)


def parse(text: str, path: str = "<string>") -> Workload:
    """Parse and validate workload TOML; raises WorkloadError with a one-line message."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise WorkloadError(f"{path}: not valid TOML: {e}") from None
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
    sim = _Sim(path, procs)
    phases = []
    for i, ph in enumerate(raw_phases):
        pr = _table(path, f"phase[{i}]", ph)
        pname = pr.get("name", str, f"phase {i + 1}")
        do = pr.get("do", list, None)
        if not do:
            raise pr.err("do", "a non-empty list of actions", do)
        actions = tuple(sim.action(f"phase[{i}].do[{j}]", a) for j, a in enumerate(do))
        expect = _expect(pr)
        pr.done()
        if expect is not None:
            unknown = next((n for n, _ in expect.merging if n not in sim.mapped), None)
            if unknown:
                raise WorkloadError(
                    f"{path}: key 'phase[{i}].expect.merging.{unknown}': expected a process alive after the phase"
                )
        phases.append(Phase(pname, actions, expect))
    if len(sim.ever) > 16:
        raise WorkloadError(f"{path}: key 'phase': expected at most 16 processes in all, got {len(sim.ever)}")
    w = Workload(name, path, procs, tuple(phases), description, source, text)
    if w.total_pages > 200_000:
        raise WorkloadError(f"{path}: key 'process': expected at most 200000 pages in all, got {w.total_pages}")
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


# -- generated workloads -------------------------------------------------------------------------------------
def _rng_patterns(rng: random.Random, pool: list[int], n: int) -> str:
    """A pattern list with duplication: a few patterns from a small pool, cycled or drawn per page."""
    if rng.random() < 0.4:
        return str(rng.choice(pool))
    k = rng.randint(1, min(n, 6))
    return ",".join(str(rng.choice(pool)) for _ in range(k))


def generate_text(seed: int) -> str:
    """TOML for a random workload: process counts, page counts and content duplication drawn from `seed`.

    Each workload starts by writing every page, then runs one to four phases of random actions (writes with
    duplicated patterns, forks, MADV_UNMERGEABLE / MERGEABLE of a range, munmap of a range, exits, run=2 then
    run=1), always valid by construction.
    """
    rng = random.Random(seed)
    pool = rng.sample(range(0, 600), rng.randint(1, 5))
    nproc = rng.randint(1, 4)
    procs: dict[str, list[list[bool]]] = {}
    lines = [f'name = "gen-{seed}"', f'description = "generated from seed {seed}"', ""]
    for i in range(nproc):
        regions = [rng.randint(1, 24) for _ in range(rng.randint(1, 2))]
        name = f"p{i}"
        procs[name] = [[True] * n for n in regions]
        lines += ["[[process]]", f'name = "{name}"', f"regions = {regions}", ""]
    phases: list[tuple[str, list[str]]] = [
        ("fill", [f"write {p}.{r} {_rng_patterns(rng, pool, len(m))}" for p, regs in procs.items()
                  for r, m in enumerate(regs)])
    ]
    nforks = 0
    ran2 = False
    for ph in range(rng.randint(1, 4)):
        acts: list[str] = []
        for _ in range(rng.randint(1, 3)):
            live = sorted(procs)
            op = rng.choices(
                ["write", "fork", "unmergeable", "mergeable", "munmap", "exit", "run"], [5, 2, 2, 1, 2, 1, 1]
            )[0]
            p = rng.choice(live)
            regs = procs[p]
            r = rng.randrange(len(regs))
            mapped = [i for i, v in enumerate(regs[r]) if v]
            if op == "run":
                acts += ["run 1"] if ran2 else ["run 2"]
                ran2 = not ran2
                continue
            if op == "fork" and nforks < 3 and len(live) < 6:
                child = f"c{nforks}"
                nforks += 1
                procs[child] = [list(m) for m in regs]
                acts.append(f"fork {p} {child}")
                continue
            if op == "exit" and len(live) > 1:
                del procs[p]
                acts.append(f"exit {p}")
                continue
            if not mapped:
                continue
            # a run of mapped pages
            a = rng.choice(mapped)
            b = a
            while b + 1 < len(regs[r]) and regs[r][b + 1] and rng.random() < 0.8:
                b += 1
            target = f"{p}.{r}[{a}:{b + 1}]"
            if op == "munmap":
                regs[r][a : b + 1] = [False] * (b + 1 - a)
                acts.append(f"munmap {target}")
            elif op in ("unmergeable", "mergeable"):
                acts.append(f"{op} {target}")
            else:
                acts.append(f"write {target} {_rng_patterns(rng, pool, b + 1 - a)}")
        if acts:
            phases.append((f"step {ph + 1}", acts))
    if ran2:
        phases.append(("run=1", ["run 1"]))
    for name, acts in phases:
        lines += ["[[phase]]", f'name = "{name}"', "do = [" + ", ".join(f'"{a}"' for a in acts) + "]", ""]
    return "\n".join(lines)


def generate(seed: int) -> Workload:
    """A random valid workload from `seed` (see generate_text)."""
    return parse(generate_text(seed), f"<generated seed {seed}>")
