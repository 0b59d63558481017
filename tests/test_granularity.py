"""Scheduling granularity: `shared` adds a point before every shared access the kernel makes without the lock that
would serialise it; `locks` has none of them (and so today's schedules); the fast random point decides as
RandomStrategy.pick does; PCT's pick is the numpy one it replaced."""

from __future__ import annotations

import collections
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from ksmstress.arena import SharedBlock, ref_slot
from ksmstress.catalog import shipped_dir
from ksmstress.mm import memory
from ksmstress.mm.state import K
from ksmstress.report import read_artifact, write_artifact
from ksmstress.runner import run_one
from ksmstress.scenario import ScenarioError, load, parse
from ksmstress.sched.control import ATOMIC_MOST, EXITED, RUNNABLE, UNUSED, Control
from ksmstress.sched.pct import PctStrategy
from ksmstress.sched.prng import BLOCK
from ksmstress.sched.random import RandomStrategy

from .harness import make_kernel, new_program, quiet_kernel, write

SCEN = str(shipped_dir())


def _scenario(name: str):
    return load(os.path.join(SCEN, f"{name}.toml"))


def _counting(k: K) -> list[str]:
    """Count the running task's scheduling points by site (a solo kernel: every point returns at once)."""
    sites: list[str] = []
    inner = k.ctl.point

    def point(site: str, yielding: bool = False) -> None:
        sites.append(site)
        inner(site, yielding)

    k.ctl.point = point  # type: ignore[method-assign]  (Locks calls the waiter's point at each operation)
    if k.granularity == "shared":  # rebind K's shared points to the counting one, as K does at construction
        k.spoint = point
        k.spoint_unless, k.pte_spoint, k._points_off = K._shared_points(k.ctl, k.st.locks._owner, k._ptl)
    return sites


def _steps_sites(granularity: str) -> list[str]:
    k = make_kernel(granularity=granularity)
    _mref, m = new_program(k, 2)
    sites = _counting(k)
    write(k, m, 1, 5)  # fault: pte reads and writes under the pte lock, page _count / _mapcount atomics
    page = memory.follow_page(k, m, 1, "test")
    memory.PageKsm(k, ref_slot(page))  # a flag test without the page lock
    memory.put_page(k, page, "test")  # an atomic: its point is named by the caller's site
    return sites


def test_points_before_unlocked_accesses_only_at_shared() -> None:
    """The same model steps: at `shared` the atomics and a lockless flag test add points (the atomics named by
    their caller's site), and an access under the lock that serialises it (a pte under its page_table_lock) never
    does; at `locks` only lock operations and explicit points do."""
    locks, shared = _steps_sites("locks"), _steps_sites("shared")
    assert "PageKsm" in shared and "PageKsm" not in locks
    assert len(shared) > len(locks) + 1, (locks, shared)  # the flag test and at least one atomic
    assert collections.Counter(locks) - collections.Counter(shared) == collections.Counter(), "a point was lost"
    for sites in (locks, shared):
        assert not {"pte_get", "set_pte_at"} & set(sites), "a pte access under its pte lock needs no point"


def test_pte_access_without_the_pte_lock_is_a_point() -> None:
    k = quiet_kernel(granularity="shared")  # no detectors: unlocked-access would (rightly) stop the unlocked read
    _mref, m = new_program(k, 2)
    sites = _counting(k)
    memory.pte_get(k, m, 1)  # as a mutant that lost the page_table_lock would
    k.locks.lock(k.ptl(m), "test")
    memory.pte_get(k, m, 1)
    k.locks.unlock(k.ptl(m), "test")
    assert sites.count("pte_get") == 1


def _coarsened_sites(level: str) -> list[str]:
    """The points of the model steps of _steps_sites made by a task that runs at `level` in a `shared` run."""
    k = make_kernel(granularity="shared")
    _mref, m = new_program(k, 2)
    sites = _counting(k)
    k.coarsen(level)  # what a task's own `granularity` key makes its process do before its body
    write(k, m, 1, 5)
    page = memory.follow_page(k, m, 1, "test")
    memory.PageKsm(k, ref_slot(page))
    memory.put_page(k, page, "test")
    k.point("sleep", yielding=True)
    return sites


def test_a_task_coarsened_to_locks_keeps_only_lock_points_and_at_yields_only_its_sleeps() -> None:
    """A task's own granularity coarsens the run's for it alone: at `locks` its shared-access points go (its lock
    operations stay: the same points as a `locks` run), at `yields` every point but a sleep does."""
    locks_run = _steps_sites("locks")
    assert _coarsened_sites("locks") == [*locks_run, "sleep"]
    assert _coarsened_sites("yields") == ["sleep"]
    assert _coarsened_sites("shared") == [*_steps_sites("shared"), "sleep"]  # no coarser than the run: unchanged


def test_a_yields_task_still_hands_on_every_atomic_most_points_and_when_it_blocks() -> None:
    """A loop that polls at non-yielding points still reaches a real point now and then (the step budget sees
    it), and a task that must wait for a lock still switches away (block uses the real point)."""
    from ksmstress.sched.control import ATOMIC_MOST

    k = make_kernel(granularity="shared")
    sites = _counting(k)
    k.coarsen("yields")
    for _ in range(2 * ATOMIC_MOST + 2):
        k.ctl.point("poll")
    assert sites == ["poll", "poll"]
    k.ctl.block(0, "wait")
    assert sites[-1] == "wait"


def test_a_task_granularity_key_is_read_and_checked(tmp_path: Path) -> None:
    sc = parse('[ksmd]\ngranularity = "yields"\n[reclaim]\ngranularity = "locks"\n[[task]]\nops = 3\n'
               'granularity = "yields"\n', "x.toml")
    assert (sc.ksmd_granularity, sc.reclaim_granularity, sc.tasks[0].granularity) == ("yields", "locks", "yields")
    assert parse("[[task]]\nops = 3\n").tasks[0].granularity == ""
    with pytest.raises(ScenarioError, match=r"x.toml: key 'task\[0\].granularity': expected 'shared' or 'locks' "
                                            r"or 'yields', got 'atomic'"):
        parse('[[task]]\ngranularity = "atomic"\n', "x.toml")
    with pytest.raises(ScenarioError, match=r"key 'ksmd.granularity': expected"):
        parse('[ksmd]\ngranularity = 3\n', "x.toml")


def test_a_failure_at_a_coarser_task_granularity_replays_and_is_found_by_the_same_detector() -> None:
    """ksmd at `yields` (its batches run whole): merge-without-wrprotect's writable KSM page is still there to
    find, by the same detector, in a schedule that replays exactly; and ksmd's batch takes no step of its own, so
    the failing runs are shorter than the same scenario's at `shared` (in total over the seeds tried)."""
    import dataclasses

    sc = _scenario("merge-write-race")
    coarse = dataclasses.replace(sc, ksmd_granularity="yields")
    fine_steps = coarse_steps = 0
    found = None
    for seed in range(20):
        r = run_one(coarse, seed, "random", ["merge-without-wrprotect"])
        fine_steps += run_one(sc, seed, "random", ["merge-without-wrprotect"]).steps
        coarse_steps += r.steps
        if r.failure and found is None:
            found = r
    assert found is not None and found.failure["class"] == "writable-ksm"
    again = run_one(coarse, found.seed, "random", found.bugs, schedule=found.schedule)
    assert again.schedule_digest == found.schedule_digest and again.failure == found.failure
    assert coarse_steps < fine_steps


def test_locks_granularity_binds_no_op_points() -> None:
    """At `locks` the shared-access points are a function that does nothing, chosen once (no per-call test)."""
    k = make_kernel(granularity="locks")
    steps = k.ctl.steps
    k.spoint("x")
    k.spoint_unless(0, "x")
    k.pte_spoint(0, "x")
    assert k.ctl.steps == steps
    s = make_kernel(granularity="shared")
    steps = s.ctl.steps
    s.spoint("x")
    assert s.ctl.steps == steps + 1


def test_unlocked_refcount_drop_is_interleaved_only_at_shared_granularity() -> None:
    """drop_anon_vma's unlocked variant: `ksm_refcount-- ; list_empty(&anon_vma->head)` outside anon_vma->lock.
    At `shared` the lockless list read is a point, so some seed runs anon_vma_unlink between the decrement and the
    read (the anon_vma is freed under ksmd: use-after-free at that read). At `locks` the two are one step and no
    seed can get inside."""
    sc = _scenario("drop-unlink-race")
    inside = None
    for seed in range(40):
        r = run_one(sc, seed, "random", ["unlocked-refcount-drop"], granularity="shared")
        if r.verdict == "failure":
            inside = r
            break
    assert inside is not None, "no seed interleaved inside the unlocked read-modify-write at shared granularity"
    f = inside.failure or {}
    assert f["class"] in ("use-after-free", "double-free")
    assert "drop_anon_vma" in f["message"]
    for seed in range(inside.seed + 1):
        for strategy in ("random", "pct"):
            r = run_one(sc, seed, strategy, ["unlocked-refcount-drop"], granularity="locks")
            assert r.verdict == "clean", (seed, strategy, r.failure)


def test_granularity_changes_the_schedule_and_locks_is_deterministic() -> None:
    sc = _scenario("mixed")
    a = run_one(sc, 5, "random", granularity="locks")
    b = run_one(sc, 5, "random", granularity="locks")
    c = run_one(sc, 5, "random", granularity="shared")
    d = run_one(sc, 5, "random", granularity="shared")
    assert a.schedule_digest == b.schedule_digest and c.schedule_digest == d.schedule_digest
    assert a.schedule_digest != c.schedule_digest
    assert (a.granularity, c.granularity) == ("locks", "shared")


class _PlainRandom(RandomStrategy):
    """RandomStrategy under another type: Control.point and RandomStrategy.pick run it, not fastpoint."""


@pytest.mark.parametrize(("granularity", "seed"), [("locks", 3), ("shared", 1)])  # long runs: > 1.5 blocks
def test_fast_random_point_decides_as_the_strategy(
    granularity: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fastpoint keeps its working copies out of shared memory; the decisions must still be RandomStrategy.pick's,
    draw for draw, through blocks, wakes, forks, exits and PRNG block refills: the same seed gives the same
    schedule either way."""
    import ksmstress.runner as runner

    sc = _scenario("mixed")
    fast = run_one(sc, seed, "random", granularity=granularity)
    assert fast.steps > 3 * BLOCK / 2  # more draws than one buffered block holds: the refill path ran
    monkeypatch.setattr(runner, "make_strategy", lambda name, **kw: _PlainRandom())
    plain = run_one(sc, seed, "random", granularity=granularity)
    assert (fast.schedule_digest, fast.steps, fast.handoffs, fast.verdict) == (
        plain.schedule_digest, plain.steps, plain.handoffs, plain.verdict)


def _numpy_pct_pick(s: PctStrategy, ctl: Control, runnable: list[int], current: int, step: int, yielding: bool) -> int:
    """PctStrategy.pick as it was written with numpy (the reference the memoryview version must equal)."""
    if current >= 0:
        others = (ctl.state != EXITED) & (np.arange(ctl.ntasks) != current)
        change = False
        if not yielding and len(runnable) > 1:
            ctl.strat[17] += 1
            change = int(ctl.strat[17]) in {int(ctl.strat[1 + i]) for i in range(int(ctl.strat[0]))}
        if (yielding or change) and others.any():
            ctl.prio[current] = int(ctl.prio[others].min()) - 1
    if len(runnable) == 1:
        return runnable[0]
    return runnable[int(np.argmax(ctl.prio[runnable]))]


def test_pct_pick_equals_the_numpy_reference() -> None:
    rng = random.Random(7)
    for trial in range(200):
        n = rng.randint(2, 9)
        block = SharedBlock()
        ctl = Control(block, n, 1000, PctStrategy(), {1: "t"})
        ctl.bind(block.allocate())
        for _ in range(n):
            ctl.add_task(1)
        ctl.prng.seed(trial)
        depth = rng.randint(1, 5)
        fast, ref = PctStrategy(depth=depth, k=20), PctStrategy(depth=depth, k=20)
        fast.setup(ctl)
        for t in range(n):
            ctl.state[t] = rng.choice([RUNNABLE, RUNNABLE, EXITED, UNUSED])
        for step in range(1, 25):
            runnable = [t for t in range(n) if ctl.state[t] == RUNNABLE] or [0]
            current, yielding = rng.choice([-1, *range(n)]), rng.random() < 0.3
            before, count = ctl.prio.copy(), int(ctl.strat[17])
            want = _numpy_pct_pick(ref, ctl, runnable, current, step, yielding)
            want_prio, want_count = ctl.prio.copy(), int(ctl.strat[17])
            ctl.prio[:], ctl.strat[17] = before, count
            assert fast.pick(ctl, runnable, current, step, yielding) == want
            assert (ctl.prio == want_prio).all() and int(ctl.strat[17]) == want_count


def test_scenario_key_and_its_errors(tmp_path: Path) -> None:
    assert parse("[sched]\ngranularity = \"locks\"\n").granularity == "locks"
    assert parse("").granularity == "shared"
    with pytest.raises(ScenarioError, match=r"key 'sched.granularity': expected 'locks' or 'shared', got 'fine'"):
        parse("[sched]\ngranularity = \"fine\"\n", "x.toml")
    with pytest.raises(ScenarioError, match=r"key 'sched.granular': unknown key"):
        parse("[sched]\ngranular = \"locks\"\n", "x.toml")
    sc = parse("[sched]\ngranularity = \"locks\"\n[[task]]\nops = 3\n", str(tmp_path / "s.toml"))
    assert run_one(sc, 0).granularity == "locks"
    assert run_one(sc, 0, granularity="shared").granularity == "shared"


def test_artifact_records_the_granularity_and_an_old_one_means_locks(tmp_path: Path) -> None:
    sc = _scenario("seed-fork-race")
    res = next(r for seed in range(50)
               if (r := run_one(sc, seed, "random", ["single-pass-walk"], granularity="locks")).verdict == "failure")
    art = write_artifact(tmp_path, sc, res, None)
    data = json.loads(art.read_text())
    assert data["granularity"] == "locks"
    assert read_artifact(art)["granularity"] == "locks"
    replayed = run_one(sc, res.seed, "random", res.bugs, schedule=res.schedule, granularity="locks")
    assert replayed.schedule_digest == res.schedule_digest and replayed.failure == res.failure
    del data["granularity"]  # written before artifacts said: recorded at lock granularity
    art.write_text(json.dumps(data))
    assert read_artifact(art)["granularity"] == "locks"
    data["granularity"] = "fine"
    art.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="key 'granularity'"):
        read_artifact(art)


def test_free_mode_points_are_the_chaos_points() -> None:
    """In free mode the shared-access points are FreeControl.point, where the chaos policy may yield or sleep: a
    window inside a list update can be widened there too."""
    from ksmstress.actors import KIND_NAMES
    from ksmstress.mm.state import Sizes, State
    from ksmstress.runner import _assemble
    from ksmstress.sched.chaos import ChaosPolicy
    from ksmstress.sched.free import FreeControl

    block = SharedBlock()
    st = State(block, Sizes(frames=16, swap=16, rmap_items=16, stable_nodes=16, anon_vmas=16), 2)
    ctl = FreeControl(block, 2, 1000, RandomStrategy(), KIND_NAMES, 0, ChaosPolicy())
    k = _assemble(block, st, ctl, frozenset(), granularity="shared")
    assert k.spoint.__func__ is FreeControl.point  # type: ignore[attr-defined]
    assert "point" not in vars(ctl)  # no fast closure shadows the chaos point
    k.coarsen("yields")  # a task's own granularity shapes the controlled schedule only: every chaos point stays
    assert k.spoint.__func__ is FreeControl.point  # type: ignore[attr-defined]
    assert "point" not in vars(ctl)


class _Embed:
    """A strategy that runs the fine scenario as the coarse one ran: a task coarse there stays at every point it
    skipped there (a non-yielding point while runnable, up to ATOMIC_MOST in a row); every other point takes the
    coarse run's next recorded decision (a shared index: each task process has its own copy of this object)."""

    name = "embed"

    def __init__(self, coarse: set[int], record: bytes) -> None:
        self.coarse, self.record = coarse, record
        self.skipped: dict[int, int] = {}

    def setup(self, ctl: Control) -> None:
        ctl.strat[0] = 0

    def on_new_task(self, ctl: Control, tid: int) -> None:
        pass

    def pick(self, ctl: Control, runnable: list[int], current: int, step: int, yielding: bool) -> int:
        if current in self.coarse and current in runnable and not yielding:
            n = self.skipped.get(current, 0)
            if n < ATOMIC_MOST:
                self.skipped[current] = n + 1
                return current
        if current in self.coarse and (yielding or current in runnable):  # Control.coarsen's reset
            self.skipped[current] = 0
        i = int(ctl.strat[0])
        ctl.strat[0] = i + 1
        return self.record[i]


def test_a_coarse_run_is_a_run_of_the_fine_scenario() -> None:
    """What the README says of a task's own granularity: every schedule of the coarser scenario is one of the
    finer's. A failing run with ksmd at `yields` is replayed in the scenario as shipped, ksmd staying at each point
    it skipped and every other decision the coarse run's: the same failure, at the same site, in more steps."""
    import dataclasses

    from ksmstress.explain.shrink import failure_key

    sc = _scenario("merge-write-race")
    coarse = dataclasses.replace(sc, ksmd_granularity="yields")
    bug = ["merge-without-wrprotect"]
    runs = [r for seed in range(3) if (r := run_one(coarse, seed, "random", bug)).failure]
    assert runs, "no failing coarse run in 3 seeds"
    for r in runs:
        def embed(_st: object, _k: object, ctl: Control, r=r) -> None:
            strat = _Embed({0}, r.schedule)  # ksmd is task 0
            ctl.strategy = strat  # type: ignore[assignment]
            ctl._pick = strat.pick

        fine = run_one(sc, r.seed, "random", bug, schedule=b"\0", observe=embed)  # Control.point, then `embed`
        assert failure_key(fine.failure) == failure_key(r.failure), (r.seed, fine.failure, r.failure)
        assert fine.steps > r.steps
