"""Run one (scenario, seed, strategy, bug variants) with real processes, or many seeds in a row.

The runner builds the arena, forks one process per task slot (each pinned to one CPU and parked on its
semaphore), grants the first task and waits. The run ends when the last task exits (then the quiescence checks
run here, on the same shared memory), when a task reports a failure, when a process dies, or when the wall
clock runs out. Whatever happens, every process of the run is killed and reaped before this returns: no process
outlives a run, and the arena is an anonymous mapping that leaves nothing in /dev/shm.
"""

from __future__ import annotations

import ctypes
import faulthandler
import gc
import hashlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import multiprocess
import numpy as np

from . import actors
from .arena import SharedBlock
from .bugs import validate
from .checks import Detectors
from .checks.invariants import check_quiescence
from .checks.lockdep import Lockdep, LockdepState
from .failures import Failure
from .mm.mm import mm_alloc
from .mm.state import G_MAX_REFCOUNT, G_MM_LIVE, G_PAGES_TO_SCAN, G_REFCOUNT_BITS, K, Sizes, State
from .scenario import Scenario
from .sched import make_strategy
from .sched.chaos import ChaosPolicy
from .sched.control import BLOCKED, CLEAN, CURRENT, FAILED, HANDOFFS, STEP, Control
from .sched.free import FreeControl

PR_SET_PDEATHSIG = 1
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


def _pick_cpu(cpu: int | None) -> int:
    """The CPU a controlled run's processes share: --cpu, else $KSMSTRESS_CPU (one per parallel job), else the
    last CPU this process may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if cpu is None and os.environ.get("KSMSTRESS_CPU", "").isdigit():
        cpu = int(os.environ["KSMSTRESS_CPU"])
    if cpu is not None and cpu in allowed:
        return cpu
    return allowed[-1]


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded once in the runner, inherited by every task


def _die_with_parent(parent: int) -> None:
    """PR_SET_PDEATHSIG: if the runner is SIGKILLed (or pytest-timeout os._exit()s), its tasks die too."""
    try:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except AttributeError:
        pass
    if os.getppid() != parent:
        os._exit(1)


def _assemble(block: SharedBlock, st: State, ctl: Control, bugs: frozenset[str], hooks: Any = None) -> K:
    """Lay out the arena, bind the model's state, the scheduler and lockdep to it, and make the kernel: the part
    a solo kernel and a run share. Default hooks are the detectors, with lockdep on this arena."""
    lds = LockdepState(block)
    arrays = block.allocate()
    st.bind(arrays)
    ctl.bind(arrays)
    lds.bind(arrays)
    hooks = Detectors() if hooks is None else hooks
    if isinstance(hooks, Detectors) and hooks.lockdep is None:
        hooks.lockdep = Lockdep(lds, st.locks, ctl.clock)
    k = K(st, ctl, hooks, bugs)
    ctl.explain_deadlock = st.locks.explain
    return k


def solo_kernel(sz: Sizes, bugs: tuple[str, ...] = (), hooks: Any = None) -> K:
    """A kernel driven by the calling process alone: one task, so every scheduling point returns at once.

    For deterministic step-by-step use (unit tests, the kernel oracle's model side): the caller is the only task
    and calls model functions (user_write, sys_madvise, ksm_do_scan under ksm_thread_mutex, ...) in program order.
    """
    block = SharedBlock()
    st = State(block, sz, 1)
    ctl = Control(block, 1, 1 << 26, make_strategy("random"), {actors.MM: "solo"})
    k = _assemble(block, st, ctl, validate(list(bugs)), hooks)
    ctl.add_task(actors.MM)
    ctl.me = 0
    ctl.prng.seed(0)
    return k


def _await_ready(procs: list[Any], ready: Any, ctl: Control, limit: float = 30.0) -> dict[str, Any] | None:
    """Wait until every task is parked and pinned; a task that dies or never parks is a failure, not a hang."""
    deadline = time.monotonic() + limit
    parked = 0
    while parked < len(procs):
        if ready.acquire(timeout=0.2):
            parked += 1
            continue
        dead = [i for i, p in enumerate(procs) if p.exitcode is not None]
        if dead:
            return Failure("crash", f"{ctl.label(dead[0])} died while starting (exit code {procs[dead[0]].exitcode})",
                           {"step": 0}).to_dict()
        if time.monotonic() > deadline:
            return Failure("hang", f"task processes did not start within {limit:.0f}s", {"step": 0}).to_dict()
    return None


def _signal_live(procs: list[Any], sig: int) -> None:
    """Send `sig` to every task process of this run that is still alive (by pid: only what the run started)."""
    for p in procs:
        if p.pid is not None and p.exitcode is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass


def _stacks(procs: list[Any], ctl: Control, stackdir: str) -> dict[str, str]:
    """Every live task's Python stack, through the faulthandler each one registered on SIGUSR1."""
    _signal_live(procs, signal.SIGUSR1)
    time.sleep(0.3)
    out = {}
    for tid in range(len(procs)):
        path = os.path.join(stackdir, f"{tid}.txt")
        if os.path.exists(path) and os.path.getsize(path):
            with open(path) as f:
                out[ctl.label(tid)] = f.read()
    return out


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
) -> RunResult:
    """Run one seed of a scenario under the controlled scheduler and return its verdict."""
    bugset = validate(list(bugs))
    strat_name = "replay" if schedule is not None else strategy
    depth = pct_depth if pct_depth is not None else sc.pct_depth
    strat = make_strategy(strat_name, depth=depth, steps=sc.pct_steps, schedule=schedule or b"")
    nsys = int(sc.ksmd) + int(sc.reclaim) + int(sc.admin_unmerge_every > 0)
    ntasks = nsys + sc.max_mm
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
    k = _assemble(block, st, ctl, bugset)
    st.g[G_PAGES_TO_SCAN] = sc.pages_to_scan
    st.g[G_REFCOUNT_BITS] = sc.refcount_bits
    if sc.ksmd:
        ctl.add_task(actors.KSMD)
    if sc.reclaim:
        ctl.add_task(actors.RECLAIM)
    if sc.admin_unmerge_every > 0:
        ctl.add_task(actors.ADMIN)
    for idx, t in enumerate(sc.tasks):
        for _ in range(t.count):
            mref = mm_alloc(k)  # exec: a fresh mm for every initial program
            ctl.add_task(actors.MM, (mref, idx, 0, t.max_forks))
            st.g[G_MM_LIVE] += 1

    the_cpu = _pick_cpu(cpu)
    parent = os.getpid()
    stackdir = tempfile.mkdtemp(prefix="ksmstress-stacks-")

    def child_main(tid: int) -> None:
        gc.disable()  # a collection would touch (and so copy) every inherited page; tasks make no cycles to speak of
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's to handle (blocked until here)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        _die_with_parent(parent)
        try:
            faulthandler.register(signal.SIGUSR1, open(os.path.join(stackdir, f"{tid}.txt"), "w"), all_threads=False)
        except OSError:
            os._exit(1)  # the run is already being torn down
        if mode == "controlled":  # one CPU for the whole run; free mode lets the OS use them all
            os.sched_setaffinity(0, {the_cpu})
        ctl.me = tid
        ready.release()
        ctl.wait_turn()
        actors.run_task(k, sc, seed, tid)

    ctx = multiprocess.get_context("fork")
    ready = ctx.Semaphore(0)
    procs = [ctx.Process(target=child_main, args=(tid,), daemon=True) for tid in range(ntasks)]
    failure: dict[str, Any] | None = None
    spawn_seconds = 0.0
    gc.freeze()  # keep the inherited heap out of the children's collections (fewer copy-on-write faults)
    t0 = time.perf_counter()
    try:
        # Ctrl-C while forking would land in CPython's after-fork hooks (and be dropped) or in a task before it
        # ignores SIGINT: hold it until every task exists, then let it reach the runner.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for p in procs:
                p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        t_spawn = time.perf_counter()
        failure = _await_ready(procs, ready, ctl)
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
            step, now = int(ctl.meta[STEP]), time.monotonic()
            if step != last_step:
                last_step, last_change = step, now
            elif mode == "free" and now - last_change > hang_seconds:
                blocked = np.flatnonzero(ctl.state == BLOCKED).tolist()
                msg, det = st.locks.explain(blocked, ctl.wait, ctl.label) if blocked else ("no task blocked", {})
                cls = "deadlock" if det.get("cycle") else "hang"
                failure = Failure(cls, f"no progress for {hang_seconds:.0f}s at step {step}: {msg}",
                                  {"step": step, **det, "stacks": _stacks(procs, ctl, stackdir)}).to_dict()
                break
            dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead:
                failure = Failure(
                    "crash",
                    f"{ctl.label(dead[0])} died (exit code {procs[dead[0]].exitcode}) at step {ctl.steps}",
                    {"step": ctl.steps},
                ).to_dict()
                break
            if time.monotonic() > deadline:
                failure = Failure(
                    "hang",
                    f"no end after {timeout:.0f}s wall clock at step {ctl.steps} "
                    f"(running: {ctl.label(int(ctl.meta[CURRENT]))})",
                    {"step": ctl.steps, "stacks": _stacks(procs, ctl, stackdir)},
                ).to_dict()
                break
        elapsed = time.perf_counter() - t0
        if failure is None and ctl.outcome == FAILED:
            failure = ctl.failure()
        elif failure is None and ctl.outcome == CLEAN:
            leak = check_quiescence(st)
            failure = leak.to_dict() if leak else None
    finally:
        gc.unfreeze()
        _signal_live(procs, signal.SIGKILL)
        for p in procs:
            if p.pid is not None:
                p.join()
        shutil.rmtree(stackdir, ignore_errors=True)  # after the tasks: a late one may still be opening its file
    return RunResult(
        scenario=sc.name,
        path=sc.path,
        seed=seed,
        strategy=strat_name,
        bugs=sorted(bugset),
        verdict=verdict_of(failure),
        failure=failure,
        steps=ctl.steps,
        handoffs=int(ctl.meta[HANDOFFS]),
        elapsed=elapsed,
        schedule=ctl.schedule(),
        max_refcount=int(st.g[G_MAX_REFCOUNT]),
        spawn_seconds=spawn_seconds,
        mode=mode,
    )


def verdict_of(failure: dict[str, Any] | None) -> str:
    """clean, failure, or budget: the scenario's max_steps ran out while its programs were still making progress
    (not a model failure: the scenario needs a larger budget)."""
    if failure is None:
        return "clean"
    return "budget" if failure.get("class") == "budget-exhausted" else "failure"


def reproduction(sc: Scenario, res: RunResult, reruns: int, timeout: float = 120.0, cls: str | None = None) -> str:
    """Free mode: rerun the seed `reruns` times; "k/M" counts the reruns that failed with class `cls` (default: the
    class `res` failed with)."""
    want = cls if cls is not None else (res.failure or {}).get("class")
    hits = sum(
        (run_one(sc, res.seed, "random", res.bugs, mode=res.mode, timeout=timeout).failure or {}).get("class") == want
        for _ in range(reruns)
    )
    return f"{hits}/{reruns}"


def run_seeds(sc: Scenario, seeds: Iterable[int], *args: Any, **kw: Any) -> Iterator[RunResult]:
    """The one seed loop of every front door (`run`, the plugin's `ksm_run`): run_one over `seeds` in order,
    yielding each result and stopping after the first failure. Extra arguments go to run_one."""
    for seed in seeds:
        res = run_one(sc, seed, *args, **kw)
        yield res
        if res.verdict != "clean":
            return
