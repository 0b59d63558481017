"""Run one (scenario, seed, strategy, bug variants) with real processes, or many seeds in a row.

The runner builds the arena, forks one process per task slot (each pinned to one CPU and parked on its
semaphore), grants the first task and waits. The run ends when the last task exits (then the quiescence checks
run here, on the same shared memory), when a task reports a failure, when a process dies, or when the wall
clock runs out. Whatever happens, every process of the run is killed and reaped before this returns: no process
outlives a run, and the arena is an anonymous mapping that leaves nothing in /dev/shm.
"""

from __future__ import annotations

import faulthandler
import gc
import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import multiprocess
import numpy as np
import numpy.ma  # noqa: F401  np.unique imports it on first use: here, once, not in each task of each run

from . import actors, cpus, procs
from .arena import SharedBlock
from .bugs import validate
from .checks import Detectors
from .checks.accesslog import AccessLogState, AccessRecorder
from .checks.disturbance import Disturbance, DisturbanceState
from .checks.invariants import check_quiescence
from .checks.lockdep import Lockdep, LockdepState
from .checks.pairs import Pair, RunCoverage, pairs_of
from .failures import Failure
from .mm.mm import mm_alloc
from .mm.state import G_MAX_REFCOUNT, G_MM_LIVE, G_PAGES_TO_SCAN, G_REFCOUNT_BITS, K, Sizes, State
from .scenario import Scenario
from .sched import DEFAULT_GRANULARITY, make_strategy
from .sched.chaos import ChaosPolicy
from .sched.control import BLOCKED, CLEAN, FAILED, STEP, Control
from .sched.free import FreeControl
from .sched.pct import PctStrategy

MODES = ("controlled", "free")  # controlled: one task at a time, replayable; free: all at once


@dataclass
class RunResult:
    scenario: str
    path: str
    seed: int
    strategy: str
    bugs: list[str]
    verdict: str  # clean | failure | budget
    failure: dict[str, Any] | None
    steps: int
    handoffs: int
    elapsed: float
    schedule: bytes = field(repr=False, default=b"")
    max_refcount: int = 0
    spawn_seconds: float = 0.0  # forking and parking the task processes, before the run's clock starts
    mode: str = "controlled"
    reproduced: str | None = None  # free mode: "k/M" reruns of the seed that failed the same way
    granularity: str = DEFAULT_GRANULARITY  # where control could change hands (sched.GRANULARITIES)
    contested: int = 0  # pct: the run's points with two or more runnable tasks (what k estimates); 0 otherwise
    pct_k: int = 0  # pct: the k its change points were drawn from; 0 otherwise
    # the guided strategy: each step's runnable set, uint64 per step (sched.guided.decode_masks); else empty
    runnable: bytes = field(repr=False, default=b"")
    coverage: RunCoverage | None = field(repr=False, default=None)  # interleaving pairs, when asked for

    @property
    def pairs(self) -> frozenset[Pair]:
        """The run's interleaving pairs (checks.pairs); empty when the run did not record coverage."""
        return self.coverage.pairs if self.coverage is not None else frozenset()

    @property
    def schedule_digest(self) -> str:
        return hashlib.sha256(self.schedule).hexdigest()[:16]

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.elapsed if self.elapsed > 0 else 0.0


def sizes_for(sc: Scenario) -> Sizes:
    """Arena dimensions that a scenario cannot outgrow: every mm may map every page, twice over for COW."""
    per_mm = sc.vpages * sc.max_mm
    return Sizes(
        page_size=sc.page_size,
        vpages=sc.vpages,
        max_mm=sc.max_mm,
        max_vmas=sc.max_vmas,
        frames=2 * per_mm + 64,
        swap=2 * per_mm + 64,
        rmap_items=per_mm + 64,
        stable_nodes=per_mm + 64,
        anon_vmas=sc.max_mm * sc.max_vmas + 64,
        quarantine=16,
    )


def _assemble(
    block: SharedBlock, st: State, ctl: Control, bugs: frozenset[str], hooks: Any = None,
    granularity: str = DEFAULT_GRANULARITY, access_log: AccessLogState | None = None,
) -> K:
    """Lay out the arena, bind the model's state, the scheduler and lockdep to it, and make the kernel: the part
    a solo kernel and a run share. Default hooks are the detectors, with lockdep and the merge-completeness
    bookkeeping on this arena. With `access_log` (made on `block` before this), the kernel's shared accesses are
    recorded into it (interleaving coverage)."""
    lds = LockdepState(block)
    dst = DisturbanceState(block)
    arrays = block.allocate()
    st.bind(arrays)
    ctl.bind(arrays)
    lds.bind(arrays)
    dst.bind(arrays)
    if access_log is not None:
        access_log.bind(arrays)
    hooks = Detectors() if hooks is None else hooks
    if isinstance(hooks, Detectors) and hooks.lockdep is None:
        hooks.lockdep = Lockdep(lds, st.locks, ctl.clock)
    if isinstance(hooks, Detectors) and hooks.disturbance is None:
        hooks.disturbance = Disturbance(dst, st, ctl)
    k = K(st, ctl, hooks, bugs, granularity)
    ctl.explain_deadlock = st.locks.explain
    if access_log is not None:
        AccessRecorder(access_log, k).install(k)
    return k


def run_coverage(access_log: AccessLogState, st: State, ctl: Control) -> RunCoverage:
    """The interleaving pairs of a finished run, from its access log (read in the runner, tasks gone)."""
    kinds = ctl.kind.copy()
    return pairs_of(access_log.rows(), access_log.lockset_table(),
                    lambda tid: actors.KIND_NAMES.get(int(kinds[tid]), "task"), st.stamp.site, access_log.dropped)


def solo_kernel(
    sz: Sizes, bugs: tuple[str, ...] = (), hooks: Any = None, granularity: str = DEFAULT_GRANULARITY
) -> K:
    """A kernel driven by the calling process alone: one task, so every scheduling point returns at once.

    For deterministic step-by-step use (unit tests, the kernel oracle's model side): the caller is the only task
    and calls model functions (user_write, sys_madvise, ksm_do_scan under ksm_thread_mutex, ...) in program order.
    """
    procs.name_semaphores()
    block = SharedBlock()
    st = State(block, sz, 1)
    ctl = Control(block, 1, 1 << 26, make_strategy("random"), {actors.MM: "solo"})
    k = _assemble(block, st, ctl, validate(list(bugs)), hooks, granularity)
    ctl.add_task(actors.MM)
    ctl.me = 0
    ctl.prng.seed(0)
    return k


def _await_ready(tasks: list[Any], ready: Any, ctl: Control, limit: float = 30.0) -> dict[str, Any] | None:
    """Wait until every task is parked and pinned; a task that dies or never parks is a failure, not a hang."""
    deadline = time.monotonic() + limit
    parked = 0
    while parked < len(tasks):
        procs.check_interrupt()
        if ready.acquire(timeout=0.2):
            parked += 1
            continue
        dead = [i for i, p in enumerate(tasks) if p.exitcode is not None]
        if dead:
            return Failure("crash", f"{ctl.label(dead[0])} died while starting (exit code {tasks[dead[0]].exitcode})",
                           {"step": 0}).to_dict()
        if time.monotonic() > deadline:
            return Failure("hang", f"task processes did not start within {limit:.0f}s", {"step": 0}).to_dict()
    return None


class _StackFiles:
    """One anonymous in-memory file (memfd) per task, where its faulthandler writes its Python stack on SIGUSR1.

    Why not files in $TMPDIR: a runner killed by SIGTERM or SIGKILL never removed its directory, and every such
    kill left one behind. A memfd has no name anywhere; the kernel frees it with the last process holding it."""

    def __init__(self, ntasks: int) -> None:
        self.fds: list[int] = []
        for tid in range(ntasks):
            self.fds.append(os.memfd_create(f"ksmstress-stack-{tid}", os.MFD_CLOEXEC))

    def register(self, tid: int) -> None:
        """In task `tid`: dump this task's stack into its file on SIGUSR1."""
        faulthandler.register(signal.SIGUSR1, self.fds[tid], all_threads=False)

    def collect(self, tasks: list[Any], ctl: Control, wait: float = 1.0) -> dict[str, str]:
        """Every live task's stack: signal them, then read each file once it has stopped growing (or after
        `wait` seconds: a task stuck in the kernel may never write)."""
        live = [tid for tid, p in enumerate(tasks) if p.pid is not None and p.exitcode is None]
        procs.signal_live([tasks[t] for t in live], signal.SIGUSR1)
        deadline, sizes = time.monotonic() + wait, {t: -1 for t in live}
        while time.monotonic() < deadline:
            now = {t: os.fstat(self.fds[t]).st_size for t in live}
            if all(now[t] and now[t] == sizes[t] for t in live):
                break
            sizes = now
            time.sleep(0.05)
        out = {}
        for tid in live:
            size = os.fstat(self.fds[tid]).st_size
            if size:
                out[ctl.label(tid)] = os.pread(self.fds[tid], size, 0).decode(errors="replace")
        return out

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def run_one(
    sc: Scenario,
    seed: int,
    strategy: str = "random",
    bugs: list[str] | tuple[str, ...] = (),
    schedule: bytes | None = None,
    cpu: int | None = None,
    pct_depth: int | None = None,
    timeout: float = 120.0,
    mode: str = "controlled",
    hang_seconds: float = 10.0,
    granularity: str | None = None,
    pct_k: int | None = None,
    tail: str = "stay",
    coverage: bool = False,
    observe: Callable[[State, K, Control], None] | None = None,
) -> RunResult:
    """Run one seed of a scenario under the controlled scheduler and return its verdict. `granularity` None is the
    scenario's ([sched] granularity); `pct_k` None is the scenario's [pct] k, else estimated (pct_k_of). Under
    strategy `guided`, `schedule` is the prefix to follow and `tail` what decides after it (sched/guided.py); under
    any other, a `schedule` is replayed. `coverage`: record the run's shared accesses and return its interleaving
    pairs (checks.pairs; controlled mode only). `observe(st, k, ctl)` runs once the run is assembled, before any
    task exists: ksmstress.explain instruments (or swaps) that run's own instances there, so a normal run pays
    nothing for it."""
    bugset = validate(list(bugs))
    gran = granularity if granularity is not None else sc.granularity
    procs.name_semaphores()
    strat_name = "replay" if schedule is not None and strategy != "guided" else strategy
    depth = pct_depth if pct_depth is not None else sc.pct_depth
    change_k = 0  # pct: the contested points its change points are drawn from
    if strat_name == "pct" and mode == "controlled":
        change_k = pct_k or sc.pct_k or pct_k_of(sc, gran, timeout)
    strat = make_strategy(strat_name, depth=depth, k=change_k, schedule=schedule or b"", tail=tail)
    if coverage and mode != "controlled":
        raise ValueError("interleaving coverage needs the controlled mode (one task at a time)")
    nsys = int(sc.ksmd) + int(sc.reclaim) + int(sc.admin_unmerge_every > 0) + int(sc.migrate)
    ntasks = nsys + sc.max_mm + sc.extra_threads
    block = SharedBlock()
    st = State(block, sizes_for(sc), ntasks)
    if mode == "free":
        chaos = ChaosPolicy(sc.chaos_yield, sc.chaos_sleep, sc.chaos_sleep_us)
        ctl: Control = FreeControl(block, ntasks, sc.max_steps, strat, actors.KIND_NAMES, seed, chaos)
        strat_name = "free"
    elif mode == "controlled":
        ctl = Control(block, ntasks, sc.max_steps, strat, actors.KIND_NAMES)
    else:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    alog = AccessLogState(block) if coverage else None
    k = _assemble(block, st, ctl, bugset, granularity=gran, access_log=alog)
    if observe is not None:
        observe(st, k, ctl)
    st.g[G_PAGES_TO_SCAN] = sc.pages_to_scan
    st.g[G_REFCOUNT_BITS] = sc.refcount_bits
    if sc.ksmd:
        ctl.add_task(actors.KSMD)
    if sc.reclaim:
        ctl.add_task(actors.RECLAIM)
    if sc.admin_unmerge_every > 0:
        ctl.add_task(actors.ADMIN)
    if sc.migrate:
        ctl.add_task(actors.MIGRATE)
    for idx, t in enumerate(sc.tasks):
        for _ in range(t.count):
            mref = mm_alloc(k)  # exec: a fresh mm for every initial program
            ctl.add_task(actors.MM, (mref, idx, 0, t.max_forks, 0, t.threads))
            st.g[G_MM_LIVE] += 1

    the_cpu = cpus.pick(cpu)
    parent = os.getpid()

    def child_main(tid: int) -> None:
        gc.disable()  # a collection would touch (and so copy) every inherited page; tasks make no cycles to speak of
        procs.in_child(parent)  # dies with the runner; Ctrl-C is the runner's to handle
        stacks.register(tid)
        if mode == "controlled":  # one CPU for the whole run; free mode lets the OS use them all
            os.sched_setaffinity(0, {the_cpu})
        ctl.me = tid
        ready.release()
        ctl.wait_turn()
        actors.run_task(k, sc, seed, tid)

    ctx = multiprocess.get_context("fork")
    ready = ctx.Semaphore(0)
    tasks = [ctx.Process(target=child_main, args=(tid,), daemon=True) for tid in range(ntasks)]
    failure: dict[str, Any] | None = None
    spawn_seconds = 0.0
    procs.check_interrupt()  # before anything needs undoing
    stacks = _StackFiles(ntasks)
    gc.freeze()  # keep the inherited heap out of the children's collections (fewer copy-on-write faults)
    t0 = time.perf_counter()
    try:
        # Ctrl-C or SIGTERM while forking would land in CPython's after-fork hooks (and be dropped) or in a task
        # before it ignores SIGINT: hold them until every task exists, then let them reach the runner.
        with procs.fork_guard():
            for p in tasks:
                p.start()
        t_spawn = time.perf_counter()
        failure = _await_ready(tasks, ready, ctl)
        t0 = time.perf_counter()  # steps/s measures the run, not the forks that set it up
        spawn_seconds = t0 - t_spawn
        if failure is None:
            try:
                ctl.start(seed)
            except Failure as f:  # a replay whose very first decision diverges
                failure = f.to_dict()
        deadline = time.monotonic() + timeout
        last_step, last_change = -1, time.monotonic()
        while failure is None and not ctl.done.acquire(timeout=0.2):
            procs.check_interrupt()  # under catch_interrupts(): Ctrl-C and SIGTERM end the run here, at most 0.2 s late
            step, now = int(ctl.meta[STEP]), time.monotonic()
            if step != last_step:
                last_step, last_change = step, now
            elif mode == "free" and now - last_change > hang_seconds:
                blocked = np.flatnonzero(ctl.state == BLOCKED).tolist()
                msg, det = st.locks.explain(blocked, ctl.wait, ctl.label) if blocked else ("no task blocked", {})
                cls = "deadlock" if det.get("cycle") else "hang"
                failure = Failure(cls, f"no progress for {hang_seconds:.0f}s at step {step}: {msg}",
                                  {"step": step, **det, "stacks": stacks.collect(tasks, ctl)}).to_dict()
                break
            dead = [i for i, p in enumerate(tasks) if p.exitcode not in (None, 0)]
            if dead:
                failure = Failure(
                    "crash",
                    f"{ctl.label(dead[0])} died (exit code {tasks[dead[0]].exitcode}) at step {ctl.steps}",
                    {"step": ctl.steps},
                ).to_dict()
                break
            if time.monotonic() > deadline:
                failure = Failure(
                    "hang",
                    f"no end after {timeout:.0f}s wall clock at step {ctl.steps}"
                    + (f" (running: {ctl.label(ctl.current())})" if ctl.current() >= 0 else ""),
                    {"step": ctl.steps, "stacks": stacks.collect(tasks, ctl)},
                ).to_dict()
                break
        elapsed = time.perf_counter() - t0
        if failure is None and ctl.outcome == FAILED:
            failure = ctl.failure()
        elif failure is None and ctl.outcome == CLEAN:
            leak = check_quiescence(st)
            failure = leak.to_dict() if leak else None
        cov = run_coverage(alog, st, ctl) if alog is not None else None
    finally:
        gc.unfreeze()
        procs.kill_and_join(tasks)
        stacks.close()
        ctl.release()
    return RunResult(
        scenario=sc.name,
        path=sc.path,
        seed=seed,
        strategy=strat_name,
        bugs=sorted(bugset),
        verdict=verdict_of(failure),
        failure=failure,
        steps=ctl.steps,
        handoffs=ctl.handoffs(),
        elapsed=elapsed,
        schedule=ctl.schedule(),
        max_refcount=int(st.g[G_MAX_REFCOUNT]),
        spawn_seconds=spawn_seconds,
        mode=mode,
        granularity=gran,
        contested=strat.contested(ctl) if isinstance(strat, PctStrategy) else 0,
        pct_k=change_k,
        coverage=cov,
        runnable=ctl.runnable_masks(),
    )


# PCT's k per (scenario, granularity), estimated once per process: warm-up runs are whole runs
_PCT_K: dict[tuple[str, str], int] = {}
PCT_WARMUP = 3  # warm-up runs: seeds 0..2, depth 1 (no change points), no bug variant


def pct_k_of(sc: Scenario, granularity: str, timeout: float = 120.0) -> int:
    """PCT's k for a scenario: the most contested points (two or more runnable tasks) in PCT_WARMUP depth-1 runs
    of the faithful model. Fixed seeds and no variant make k a function of the scenario and granularity alone, so
    a seed's PCT schedule is the same in every process and every front door (a rerun command needs no k); the
    faithful model keeps a variant that fails early from shrinking k for the runs that follow."""
    key = (repr(sc), granularity)
    if key not in _PCT_K:
        runs = [run_one(sc, seed, "pct", (), pct_depth=1, pct_k=1, timeout=timeout, granularity=granularity)
                for seed in range(PCT_WARMUP)]
        _PCT_K[key] = max(1, *(r.contested for r in runs))
    return _PCT_K[key]


def verdict_of(failure: dict[str, Any] | None) -> str:
    """clean, failure, or budget: the scenario's max_steps ran out while its programs were still making progress
    (not a model failure: the scenario needs a larger budget)."""
    if failure is None:
        return "clean"
    return "budget" if failure.get("class") == "budget-exhausted" else "failure"


@dataclass
class Reproduction:
    """Free mode: how often `reruns` fresh runs of one seed failed with the recorded class."""

    hits: int
    reruns: int
    first: RunResult | None  # the first rerun that failed with that class (to print), None if none did
    last: RunResult | None  # the last rerun (None if reruns == 0)

    @property
    def rate(self) -> str:
        return f"{self.hits}/{self.reruns}"


def rerun_free(
    sc: Scenario, seed: int, bugs: list[str] | tuple[str, ...], cls: str | None, reruns: int, timeout: float = 120.0,
    granularity: str | None = None,
) -> Reproduction:
    """Run `seed` of `sc` in free mode `reruns` times, every time (a free-mode failure depends on the OS's
    interleaving, so one clean or failing rerun says nothing about the rate), counting those failing with `cls`."""
    hits, first, last = 0, None, None
    for _ in range(reruns):
        last = run_one(sc, seed, "random", bugs, mode="free", timeout=timeout, granularity=granularity)
        if (last.failure or {}).get("class") == cls and cls is not None:
            hits += 1
            first = first or last
    return Reproduction(hits, reruns, first, last)


def reproduction(sc: Scenario, res: RunResult, reruns: int, timeout: float = 120.0) -> str:
    """Free mode: rerun the failing seed `reruns` times; "k/M" counts the reruns that failed the same way."""
    return rerun_free(sc, res.seed, res.bugs, (res.failure or {}).get("class"), reruns, timeout, res.granularity).rate


def run_seeds(sc: Scenario, seeds: Iterable[int], *args: Any, **kw: Any) -> Iterator[RunResult]:
    """The one seed loop of every front door (`run`, the plugin's `ksm_run`): run_one over `seeds` in order,
    yielding each result and stopping after the first failure. Extra arguments go to run_one."""
    for seed in seeds:
        res = run_one(sc, seed, *args, **kw)
        yield res
        if res.verdict != "clean":
            return
