"""Scenario files: TOML, validated into frozen dataclasses with one-line errors naming file, key and expectation.

A scenario says which actors run (mm tasks, ksmd, reclaim, an admin writing run=2), what each mm task does (a
script of fixed steps, then seeded random operations by weight), and how large the arena is. It never says how
the tasks interleave: that is the seed's and the strategy's job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import catalog
from .sched import DEFAULT_GRANULARITY, GRANULARITIES, TASK_GRANULARITIES
from .sched.pct import MAX_DEPTH
from .tomltable import TableReader, loads, read_file, shown

OPS = ("write", "read", "fork", "munmap", "mmap", "unmergeable", "mergeable", "sleep",
       "mlock", "munlock")  # issue 14 part B: mlock / munlock of a few pages
# --- issue 14 part A: threads, gup. "dontneed": MADV_DONTNEED of one of the task's pages; "dio": an O_DIRECT-style
# read into one of them (get_user_pages_fast for write, a few yields with the I/O in flight, the DMA, put_page).
OPS_A = ("dontneed", "dio")
OPS = OPS + OPS_A + ("mremap",)  # mremap: move, shrink or grow a few of the task's pages (MREMAP_MAYMOVE)
# "peek": a thread loads a page a sibling thread owns, bytes unchecked (the owner may be writing it): its fault meets
# the owner's on one pte, the races the kernel's pte_none / pte_same rechecks under the pte lock are for
OPS = OPS + ("peek",)
THREAD_UNSAFE_OPS = ("fork", "munmap", "mmap", "mremap")  # they change what the other threads of the mm have mapped
SCRIPT_RE = re.compile(
    r"^(fill(:\d+)?|read-all|wait-scans:\d+(:\d+)?|wait-merged:\d+(:\d+)?|sleep:\d+|fork|munmap-all|munmap-half|"
    r"unmergeable|mergeable|write:\d+:\d+|exit|mlock|munlock|dio:\d+:\d+|dontneed:\d+|"
    r"mremap:\d+:\d+:\d+(:\d+)?)$"
)
# Pattern p and p + 255 * 256 fill a page with the same bytes (checks/content.py), so larger numbers name no new
# page; they would also overflow the int64 record of what a task wrote.
MAX_PATTERN = 255 * 256 - 1
# The name becomes part of an artifact's file name: a safe set of characters, so it can never leave --artifacts.
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
NAME_EXPECTED = "a name of at most 64 letters, digits, '.', '_' or '-', not starting with '.'"


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
    threads: int = 1  # --- issue 14 part A: tasks sharing the mm (CLONE_VM), each with its own pages
    granularity: str = ""  # its own coarser granularity (sched.TASK_GRANULARITIES; "": the run's), forks' too
    dio_yields: int = 2  # scheduling points the dio op's I/O stays in flight
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
    reclaim_pause: int = 0  # [reclaim] pause: yields reclaim sleeps after each page (0: it never rests)
    reclaim_swapoff: float = 0.0  # [reclaim] swapoff: chance kswapd runs swapoff's try_to_unuse after a page
    reclaim_active: float = 0.0  # [reclaim] active: chance a pick is shrink_active_list's unlocked page_referenced
    admin_unmerge_every: int = 0
    pct_depth: int = 3
    pct_k: int = 0  # [pct] k: contested points the change points are drawn from (0: runner.pct_k estimates it)
    chaos_yield: float = 0.05  # free mode: chance a scheduling point yields the CPU
    chaos_sleep: float = 0.01  # ... or sleeps up to chaos_sleep_us microseconds
    chaos_sleep_us: float = 50.0
    granularity: str = DEFAULT_GRANULARITY  # [sched] granularity: where control may change hands (sched/__init__)
    # --- issue 14 part B: [migrate], memory hot-remove migrating seeded picks of mapped pages
    migrate: bool = False  # [migrate] enabled
    migrate_ksm_bias: float = 0.7  # [migrate] ksm_bias: chance a pick is a KSM page (when there is one)
    migrate_pause: int = 0  # [migrate] pause: yields it sleeps after each page
    # each system task's own coarser granularity (the `granularity` key of its table; "": the run's)
    ksmd_granularity: str = ""
    reclaim_granularity: str = ""
    admin_granularity: str = ""
    migrate_granularity: str = ""
    tasks: tuple[TaskCfg, ...] = field(default_factory=lambda: (TaskCfg(),))

    @property
    def initial_tasks(self) -> int:
        return sum(t.count for t in self.tasks)

    @property
    def extra_threads(self) -> int:
        """Task slots for the threads beyond each initial program's first (issue 14 part A)."""
        return sum(t.count * (t.threads - 1) for t in self.tasks)


def _table(path: str, where: str, data: Any) -> TableReader:
    return TableReader(path, where, data, ScenarioError)


@dataclass(frozen=True)
class _Limits:
    """What a script step's numbers may be, from the scenario's own sizes (read before the tasks)."""

    vpages: int
    max_steps: int


def _step_numbers(step: str, lim: _Limits) -> str | None:
    """Why the numbers of a well-formed step are out of range for this scenario, or None. Every number ends up in
    an int64 table or a loop bound: refusing it here is what keeps a typo from becoming a model `crash`."""
    name, *args = step.split(":")
    nums = [int(a) for a in args]
    if name == "fill" and nums and nums[0] > MAX_PATTERN:
        return f"a pattern in [0, {MAX_PATTERN}] in fill:P"
    if name in ("write", "dio", "dontneed"):  # dio:A:P and dontneed:A: issue 14 part A
        if not 1 <= nums[0] < lim.vpages:
            form = "dontneed:A" if name == "dontneed" else f"{name}:A:P"
            return f"an address in [1, arena.vpages - 1 = {lim.vpages - 1}] in {form}"
        if name != "dontneed" and nums[1] > MAX_PATTERN:
            return f"a pattern in [0, {MAX_PATTERN}] in {name}:A:P"
    if name == "mremap":
        if not (1 <= nums[0] < lim.vpages and all(1 <= n < lim.vpages for n in nums[1:3])):
            return f"an address and lengths in [1, arena.vpages - 1 = {lim.vpages - 1}] in mremap:A:OLD:NEW[:TO]"
        if len(nums) > 3 and not 1 <= nums[3] <= lim.vpages - nums[2]:
            return f"a target in [1, arena.vpages - NEW = {lim.vpages - nums[2]}] in mremap:A:OLD:NEW:TO"
    if name in ("wait-scans", "wait-merged", "sleep") and any(n > lim.max_steps for n in nums):
        return f"counts of at most max_steps = {lim.max_steps} in {name}"
    return None


def _script(r: TableReader, key: str, lim: _Limits) -> tuple[str, ...]:
    raw = r.get(key, list, [])
    for j, s in enumerate(raw):
        if not isinstance(s, str) or not SCRIPT_RE.fullmatch(s):
            raise ScenarioError(
                f"{r.path}: key '{r.key(key)}': bad step {shown(s)}; expected fill[:P], read-all, wait-scans:N[:CAP], "
                "wait-merged:N[:CAP], sleep:N, fork, munmap-all, munmap-half, unmergeable, mergeable, write:A:P, "
                "mlock, munlock, dio:A:P, dontneed:A, mremap:A:OLD:NEW[:TO] or exit"
            )
        if len(s) > 64:  # the regex bounds no digit run: a 5,000-digit number would not even convert to int
            raise ScenarioError(f"{r.path}: key '{r.key(key)}[{j}]': expected a step of at most 64 characters")
        why = _step_numbers(s, lim)
        if why:
            raise ScenarioError(f"{r.path}: key '{r.key(key)}[{j}]': expected {why}, got {s!r}")
    return tuple(raw)


def _task(path: str, i: int, data: Any, lim: _Limits) -> TaskCfg:
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
        script=_script(r, "script", lim),
        child_script=_script(r, "child_script", lim),
        child_ops=r.get("child_ops", int, 15, 0, 100_000),
        max_forks=r.get("max_forks", int, 1, 0, 16),
        mergeable=r.get("mergeable", bool, True),
        threads=r.get("threads", int, 1, 1, 8),
        dio_yields=r.get("dio_yields", int, 2, 0, 10_000),
        granularity=_task_granularity(r),
        weights=weights,
    )
    r.done()
    peek = dict(weights).get("peek", 0.0)  # the default weights have none
    if t.threads == 1 and peek > 0:
        raise ScenarioError(f"{path}: key 'task[{i}].weights.peek': expected 0 when threads is 1 (a peek loads a "
                            f"page a sibling thread owns), got {peek}")
    if t.threads > 1:  # --- issue 14 part A: a thread's knowledge of what is mapped must stay true
        for op, wt in weights:
            if op in THREAD_UNSAFE_OPS and wt > 0:
                raise ScenarioError(f"{path}: key 'task[{i}].weights.{op}': expected 0 when threads > 1 "
                                    "(fork, munmap, mmap and mremap change what the other threads have mapped), "
                                    f"got {wt}")
        for key in ("script", "child_script"):
            bad = [x for x in getattr(t, key) if x in ("fork", "munmap-all", "munmap-half") or x.startswith("mremap")]
            if bad:
                raise ScenarioError(f"{path}: key 'task[{i}].{key}': expected no fork, munmap or mremap step when "
                                    f"threads > 1, got {bad[0]!r}")
    return t


def _pct_k(r: TableReader) -> int:
    """[pct] k; the old key `steps` counted every scheduling point, which put most change points after the run's
    end: it is refused by name rather than silently reinterpreted."""
    if "steps" in r.data:
        raise r.error(f"{r.path}: key '{r.key('steps')}': renamed to 'k', expected the number of points with two or "
                      "more runnable tasks (0: estimated)")
    return int(r.get("k", int, 0, 0, 100_000_000))


def _granularity(r: TableReader, allowed: tuple[str, ...] = GRANULARITIES, default: str = DEFAULT_GRANULARITY) -> str:
    """A `granularity` key: [sched]'s (the run's, GRANULARITIES), or a task table's own (TASK_GRANULARITIES,
    absent: "", the run's)."""
    g = r.get("granularity", str, default)
    if g != default and g not in allowed:
        raise r.err("granularity", " or ".join(repr(x) for x in allowed), g)
    return g


def _task_granularity(r: TableReader) -> str:
    return _granularity(r, TASK_GRANULARITIES, "")


def _name(r: TableReader, path: str) -> str:
    """The scenario's name: the `name` key, checked (it becomes part of an artifact's file name), or else the
    file's stem made safe (a file may be called anything; its name must still not be a path)."""
    if "name" in r.data:
        name = r.get("name", str, "")
        if not NAME_RE.fullmatch(name):
            raise r.err("name", NAME_EXPECTED, name)
        return name
    r.seen.add("name")
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(path).stem).lstrip(".")[:64]
    return stem or "scenario"


def parse(text: str, path: str = "<string>") -> Scenario:
    """Parse and validate scenario TOML text; raises ScenarioError with a one-line message."""
    data = loads(text, path, ScenarioError)
    r = _table(path, "", data)
    a, k, rc, ad, p = r.table("arena"), r.table("ksm"), r.table("reclaim"), r.table("admin"), r.table("pct")
    ch, sd = r.table("chaos"), r.table("sched")
    mg = r.table("migrate")  # issue 14 part B
    name = _name(r, path)
    max_steps = r.get("max_steps", int, 400_000, 100, 250_000_000)
    vpages = a.get("vpages", int, 24, 4, 4096)
    r.seen.update({"task", "ksmd"})
    raw_tasks = data.get("task", [{}])
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise ScenarioError(f"{path}: key 'task': expected one or more [[task]] tables")
    lim = _Limits(vpages, max_steps)
    tasks = tuple(_task(path, i, t, lim) for i, t in enumerate(raw_tasks))
    kd = r.table("ksmd")
    sc = Scenario(
        name=name,
        path=path,
        description=r.get("description", str, ""),
        max_steps=max_steps,
        page_size=a.get("page_size", int, 64, 8, 4096),
        vpages=vpages,
        max_vmas=a.get("max_vmas", int, 6, 1, 256),
        max_mm=a.get("max_mm", int, 10, 1, 200),
        pages_to_scan=k.get("pages_to_scan", int, 16, 1, 100_000),
        refcount_bits=k.get("refcount_bits", int, 32, 2, 63),
        ksmd=kd.get("enabled", bool, True),
        reclaim=rc.get("enabled", bool, True),
        reclaim_ksm_bias=rc.get("ksm_bias", float, 0.7, 0.0, 1.0),
        reclaim_swap=rc.get("swap", float, 0.3, 0.0, 1.0),
        reclaim_pause=rc.get("pause", int, 0, 0, 10_000_000),
        reclaim_swapoff=rc.get("swapoff", float, 0.0, 0.0, 1.0),
        reclaim_active=rc.get("active", float, 0.0, 0.0, 1.0),
        admin_unmerge_every=ad.get("unmerge_every", int, 0, 0, 10_000_000),
        pct_depth=p.get("depth", int, 3, 1, MAX_DEPTH),
        pct_k=_pct_k(p),
        chaos_yield=ch.get("yield", float, 0.05, 0.0, 1.0),
        chaos_sleep=ch.get("sleep", float, 0.01, 0.0, 1.0),
        chaos_sleep_us=ch.get("sleep_us", float, 50.0, 0.0, 1_000_000.0),
        granularity=_granularity(sd),
        # --- issue 14 part B
        migrate=mg.get("enabled", bool, False),
        migrate_ksm_bias=mg.get("ksm_bias", float, 0.7, 0.0, 1.0),
        migrate_pause=mg.get("pause", int, 0, 0, 10_000_000),
        ksmd_granularity=_task_granularity(kd),
        reclaim_granularity=_task_granularity(rc),
        admin_granularity=_task_granularity(ad),
        migrate_granularity=_task_granularity(mg),
        tasks=tasks,
    )
    for sub in (a, k, rc, ad, p, kd, ch, sd, mg):
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
