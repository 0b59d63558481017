"""Scenario files: TOML, validated into frozen dataclasses with one-line errors naming file, key and expectation.

A scenario says which actors run (mm tasks, ksmd, reclaim, an admin writing run=2), what each mm task does (a
script of fixed steps, then seeded random operations by weight), and how large the arena is. It never says how
the tasks interleave: that is the seed's and the strategy's job.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import catalog
from .tomltable import TableReader, read_file

OPS = ("write", "read", "fork", "munmap", "mmap", "unmergeable", "mergeable", "sleep")
SCRIPT_RE = re.compile(
    r"^(fill(:\d+)?|read-all|wait-scans:\d+(:\d+)?|wait-merged:\d+(:\d+)?|sleep:\d+|fork|munmap-all|munmap-half|"
    r"unmergeable|mergeable|write:\d+:\d+|exit)$"
)


class ScenarioError(ValueError):
    """A malformed scenario: the message is the one line the user sees (exit status 2)."""


@dataclass(frozen=True)
class TaskCfg:
    count: int = 1
    region: int = 8
    patterns: int = 2
    ops: int = 30
    script: tuple[str, ...] = ()
    child_script: tuple[str, ...] = ()
    child_ops: int = 15
    max_forks: int = 1
    mergeable: bool = True
    weights: tuple[tuple[str, float], ...] = (
        ("write", 3.0),
        ("read", 3.0),
        ("fork", 0.5),
        ("munmap", 0.5),
        ("mmap", 0.5),
        ("sleep", 2.0),
    )


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    description: str = ""
    max_steps: int = 400_000
    page_size: int = 64
    vpages: int = 24
    max_vmas: int = 6
    max_mm: int = 10
    pages_to_scan: int = 16
    refcount_bits: int = 32
    ksmd: bool = True
    reclaim: bool = True
    reclaim_ksm_bias: float = 0.7
    reclaim_swap: float = 0.3
    admin_unmerge_every: int = 0
    pct_depth: int = 3
    pct_steps: int = 4000
    chaos_yield: float = 0.05  # free mode: chance a scheduling point yields the CPU
    chaos_sleep: float = 0.01  # ... or sleeps up to chaos_sleep_us microseconds
    chaos_sleep_us: float = 50.0
    tasks: tuple[TaskCfg, ...] = field(default_factory=lambda: (TaskCfg(),))

    @property
    def initial_tasks(self) -> int:
        return sum(t.count for t in self.tasks)


def _table(path: str, where: str, data: Any) -> TableReader:
    return TableReader(path, where, data, ScenarioError)


def _script(r: TableReader, key: str) -> tuple[str, ...]:
    raw = r.get(key, list, [])
    for s in raw:
        if not isinstance(s, str) or not SCRIPT_RE.fullmatch(s):
            raise ScenarioError(
                f"{r.path}: key '{r.key(key)}': bad step {s!r}; expected fill[:P], read-all, wait-scans:N[:CAP], "
                "wait-merged:N[:CAP], sleep:N, fork, munmap-all, munmap-half, unmergeable, mergeable, write:A:P or exit"
            )
    return tuple(raw)


def _task(path: str, i: int, data: Any) -> TaskCfg:
    r = _table(path, f"task[{i}]", data)
    w = r.table("weights")
    weights = tuple((op, w.get(op, float, 0.0, 0.0, 1000.0)) for op in OPS)
    w.done()
    if "weights" not in r.data:
        weights = TaskCfg().weights
    t = TaskCfg(
        count=r.get("count", int, 1, 1, 8),
        region=r.get("region", int, 8, 1, 4096),
        patterns=r.get("patterns", int, 2, 1, 65535),
        ops=r.get("ops", int, 30, 0, 100_000),
        script=_script(r, "script"),
        child_script=_script(r, "child_script"),
        child_ops=r.get("child_ops", int, 15, 0, 100_000),
        max_forks=r.get("max_forks", int, 1, 0, 16),
        mergeable=r.get("mergeable", bool, True),
        weights=weights,
    )
    r.done()
    return t


def parse(text: str, path: str = "<string>") -> Scenario:
    """Parse and validate scenario TOML text; raises ScenarioError with a one-line message."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    r = _table(path, "", data)
    a, k, rc, ad, p = r.table("arena"), r.table("ksm"), r.table("reclaim"), r.table("admin"), r.table("pct")
    ch = r.table("chaos")
    r.seen.update({"task", "ksmd"})
    raw_tasks = data.get("task", [{}])
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise ScenarioError(f"{path}: key 'task': expected one or more [[task]] tables")
    tasks = tuple(_task(path, i, t) for i, t in enumerate(raw_tasks))
    kd = r.table("ksmd")
    sc = Scenario(
        name=r.get("name", str, Path(path).stem),
        path=path,
        description=r.get("description", str, ""),
        max_steps=r.get("max_steps", int, 400_000, 100, 250_000_000),
        page_size=a.get("page_size", int, 64, 8, 4096),
        vpages=a.get("vpages", int, 24, 4, 4096),
        max_vmas=a.get("max_vmas", int, 6, 1, 256),
        max_mm=a.get("max_mm", int, 10, 1, 200),
        pages_to_scan=k.get("pages_to_scan", int, 16, 1, 100_000),
        refcount_bits=k.get("refcount_bits", int, 32, 2, 63),
        ksmd=kd.get("enabled", bool, True),
        reclaim=rc.get("enabled", bool, True),
        reclaim_ksm_bias=rc.get("ksm_bias", float, 0.7, 0.0, 1.0),
        reclaim_swap=rc.get("swap", float, 0.3, 0.0, 1.0),
        admin_unmerge_every=ad.get("unmerge_every", int, 0, 0, 10_000_000),
        pct_depth=p.get("depth", int, 3, 1, 16),
        pct_steps=p.get("steps", int, 4000, 1, 100_000_000),
        chaos_yield=ch.get("yield", float, 0.05, 0.0, 1.0),
        chaos_sleep=ch.get("sleep", float, 0.01, 0.0, 1.0),
        chaos_sleep_us=ch.get("sleep_us", float, 50.0, 0.0, 1_000_000.0),
        tasks=tasks,
    )
    for sub in (a, k, rc, ad, p, kd, ch):
        sub.done()
    r.done()
    if sc.initial_tasks > sc.max_mm:
        raise ScenarioError(f"{path}: key 'arena.max_mm': expected at least the {sc.initial_tasks} initial tasks")
    for i, t in enumerate(tasks):
        if t.region + 1 > sc.vpages:
            raise ScenarioError(
                f"{path}: key 'task[{i}].region': expected at most arena.vpages - 1 = "
                f"{sc.vpages - 1} pages, got {t.region}"
            )
    return sc


def load(path: str | Path) -> Scenario:
    p = Path(path)
    return parse(read_file(p, "scenario", ScenarioError), str(p))


def resolve(names: list[str], dirs: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """Scenario arguments as paths (see catalog: a file as given, then the user's directories, then the shipped);
    none means the default scenario, `mixed`."""
    out = []
    for n in names or ["mixed"]:
        p = catalog.find(n, dirs)
        if p is None:
            raise ScenarioError(f"{n}: no such scenario file or name (known: {catalog.names(dirs)})")
        out.append(p)
    return out


def every(dirs: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """The default set of `soak`: every scenario a bare name can reach (the user's directories' and the shipped)."""
    return [e.path for e in catalog.visible(dirs)]
