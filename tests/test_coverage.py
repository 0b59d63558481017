"""Interleaving coverage: the pairs a run records, their determinism, coverage-guided search, its failures' replay,
and the `coverage` command's input checks.

The hand-built patterns run as two real task processes under the controlled scheduler, with the real recorder
(checks.accesslog) installed on a real kernel context: each task makes its accesses through the hooks the model
calls, holding real emulated locks, and the pairs are computed by the runner's code from the shared log.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable

import pytest

from ksmstress import actors
from ksmstress.arena import SharedBlock
from ksmstress.catalog import shipped_dir
from ksmstress.checks.accesslog import AccessLogState
from ksmstress.checks.pairs import RunCoverage
from ksmstress.explore import coverage_search
from ksmstress.explore.corpus import Entry, delay, flip, swap
from ksmstress.mm.state import K, Sizes, State
from ksmstress.runner import _assemble, run_coverage, run_one
from ksmstress.scenario import load
from ksmstress.sched import make_strategy
from ksmstress.sched.control import CLEAN, Control

from .clitools import cli, run_cli
from .harness import task_processes

Body = Callable[[K], None]


def _scenario(name: str):
    return load(os.path.join(str(shipped_dir()), f"{name}.toml"))


def _two_tasks(ksmd: Body, mm: Body) -> RunCoverage:
    """Run `ksmd` (task 0) to its end, then `mm` (task 1), as two processes of one controlled run whose accesses
    are recorded; return the run's coverage."""
    block = SharedBlock()
    st = State(
        block,
        Sizes(
            page_size=16,
            vpages=8,
            max_mm=2,
            max_vmas=2,
            frames=16,
            swap=8,
            rmap_items=8,
            stable_nodes=8,
            anon_vmas=8,
            quarantine=2,
        ),
        2,
    )
    ctl = Control(block, 2, 10_000, make_strategy("guided"), actors.KIND_NAMES)  # stay: each runs to its end
    alog = AccessLogState(block, capacity=64)
    k = _assemble(block, st, ctl, frozenset(), access_log=alog)
    ctl.add_task(actors.KSMD)
    ctl.add_task(actors.MM)
    with task_processes(ctl, [lambda: ksmd(k), lambda: mm(k)]):
        ctl.start(0)
        assert ctl.done.acquire(timeout=60)
        assert ctl.outcome == CLEAN, ctl.failure()
        assert list(ctl.schedule()).index(1) > 0  # ksmd ran first
        return run_coverage(alog, st, ctl)


def _under(k: K, lid: int, access: Callable[[], None]) -> None:
    k.locks.lock(lid, "test")
    access()
    k.locks.unlock(lid, "test")


def test_a_write_then_an_unlocked_read_by_another_task_is_a_pair():
    def ksmd(k: K) -> None:
        k.hooks.shared_access(k, k.pg.count, 3, 1, "A:write")
        k.hooks.shared_access(k, k.pg.count, 4, 1, "A:other-object")

    def mm(k: K) -> None:
        k.hooks.shared_access(k, k.pg.count, 3, 0, "B:read")

    cov = _two_tasks(ksmd, mm)
    assert cov.pairs == {("ksmd", "A:write", "mm", "B:read")}
    assert cov.sites == {("ksmd", "A:write"), ("ksmd", "A:other-object"), ("mm", "B:read")}
    assert cov.accesses == 3


def test_accesses_under_a_lock_both_hold_make_no_pair_and_read_read_none():
    def ksmd(k: K) -> None:
        _under(k, k.av_lock(2), lambda: k.hooks.lock_rule(k, "anon_vma", k.av_lock(2), 1, 2, "A:locked-write"))
        _under(k, k.page_lock(1), lambda: k.hooks.shared_access(k, k.st.frames, 5, 1, "A:frame-write"))
        k.hooks.shared_access(k, k.mmc.flags, 0, 0, "A:read")

    def mm(k: K) -> None:
        _under(k, k.av_lock(2), lambda: k.hooks.lock_rule(k, "anon_vma", k.av_lock(2), 0, 2, "B:locked-read"))
        # the same frame under another page's lock: the locks differ, so nothing orders the two accesses
        _under(k, k.page_lock(2), lambda: k.hooks.shared_access(k, k.st.frames, 5, 0, "B:frame-read"))
        k.hooks.shared_access(k, k.mmc.flags, 0, 0, "B:read")

    cov = _two_tasks(ksmd, mm)
    assert cov.pairs == {("ksmd", "A:frame-write", "mm", "B:frame-read")}


def test_a_lockless_read_meets_the_locked_write_of_the_data_its_lock_guards():
    """spoint_unless (a read without the lock) and lock_rule (a write under it) name the same object: the lock's."""

    def ksmd(k: K) -> None:
        _under(k, k.av_lock(2), lambda: k.hooks.lock_rule(k, "anon_vma", k.av_lock(2), 1, 2, "A:list_add"))

    def mm(k: K) -> None:
        k.spoint_unless(k.av_lock(2), "B:list_empty")

    assert _two_tasks(ksmd, mm).pairs == {("ksmd", "A:list_add", "mm", "B:list_empty")}


def test_pairs_are_deterministic_and_recording_changes_no_schedule():
    sc = _scenario("merge-write-race")
    plain = run_one(sc, 3)
    a = run_one(sc, 3, coverage=True)
    b = run_one(sc, 3, coverage=True)
    again = run_one(sc, 3, schedule=a.schedule, coverage=True)  # replayed by its schedule
    assert plain.coverage is None and plain.pairs == frozenset()
    assert a.schedule_digest == plain.schedule_digest == b.schedule_digest == again.schedule_digest
    assert a.pairs and a.pairs == b.pairs == again.pairs and a.coverage.sites == b.coverage.sites
    # page bytes that a program writes under its pte lock and ksmd reads without it: the race KSM tolerates
    assert {("mm", "user_write", "ksmd", "calc_checksum"), ("ksmd", "calc_checksum", "mm", "user_write")} & a.pairs
    # every pte access holds that pte's lock: no two of them can ever pair
    assert not [p for p in a.pairs if p[1] == p[3] == "pte_get"]


def test_coverage_search_grows_and_finds_pairs_random_misses():
    sc = _scenario("merge-write-race")
    rnd = coverage_search(sc, runs=12, seed=0, strategy="random")
    cov = coverage_search(sc, runs=12, seed=0, strategy="coverage")
    assert rnd.runs == cov.runs == 12 and rnd.mutants == 0 and cov.mutants > 0
    counts = [s.pairs for s in cov.timeline]
    assert counts == sorted(counts) and counts[-1] == len(cov.pairs)
    assert cov.pairs - rnd.pairs  # interleavings of the same programs that no fresh seed produced
    assert cov.timeline[0].pairs == rnd.timeline[0].pairs  # both begin with seed 0 as `random` schedules it


def test_a_mutated_schedule_is_an_ordinary_schedule_that_replays():
    """A mutant runs as a guided prefix with a random tail; its whole recorded schedule replays to the same run."""
    sc = _scenario("scan-exit-race")
    base = run_one(sc, 5, "guided", schedule=b"", tail="random", coverage=True)
    entry = Entry(base.seed, base.schedule, base.runnable, base.pairs, base.coverage.witness)
    rng = random.Random(0)
    for op in (flip, delay, swap):
        m = op(entry, rng)
        assert m is not None and m.seed == 5 and m.prefix != base.schedule[: len(m.prefix)]
        res = run_one(sc, m.seed, "guided", schedule=m.prefix, tail="random", coverage=True)
        if (res.failure or {}).get("class") == "replay-diverged":  # a delay or swap may ask for a blocked task
            continue
        assert res.schedule[: len(m.prefix)] == m.prefix
        again = run_one(sc, m.seed, schedule=res.schedule, coverage=True)
        assert (again.schedule_digest, again.verdict, again.pairs) == (res.schedule_digest, res.verdict, res.pairs)


def test_a_failure_found_by_coverage_replays_and_its_rerun_finds_it_again(tmp_path):
    art = tmp_path / "art"
    args = [
        "run",
        "seed-unmap-race",
        "--strategy",
        "coverage",
        "--bug",
        "free-on-empty-list",
        "--runs",
        "40",
        "--seed",
        "7",
        "--artifacts",
        str(art),
        "--json",
    ]
    r = run_cli(*args)
    assert r.returncode == 1, r.stderr
    d = json.loads(r.stdout)
    f = d["failure"]
    assert d["strategy"] == "coverage" and f["class"] in ("use-after-free", "refcount-mismatch")
    assert f["rerun"].startswith("ksmstress run ") and "--strategy coverage" in f["rerun"]
    rep = run_cli("replay", f["artifact"], "--json")
    assert rep.returncode == 1
    rd = json.loads(rep.stdout)
    assert rd["reproduced"] and rd["schedule_digest"] == f["schedule_digest"]
    # the printed rerun command runs the same search, which fails at the same run, the same way
    again = run_cli(*f["rerun"].split()[1:], "--artifacts", str(tmp_path / "again"), "--json")
    assert again.returncode == 1
    assert json.loads(again.stdout)["failure"]["schedule_digest"] == f["schedule_digest"]


def test_the_coverage_command_reports_growth_and_unpaired_sites(capsys):
    code, out, err = cli(capsys, "coverage", "merge-write-race", "--runs", "3", "--json")
    assert code == 0, err
    d = json.loads(out)["scenarios"][0]
    assert [g["runs"] for g in d["growth"]] == [1, 2, 3]
    assert d["searches"]["random"]["runs"] == d["searches"]["coverage"]["runs"] == 3
    assert d["growth"][0]["random"] == d["growth"][0]["coverage"] > 0  # the same first run
    assert d["pairs"] >= d["growth"][-1]["coverage"]
    assert "ksmd:calc_checksum" not in d["never_paired"]
    assert "swapcache_prepare" in d["never_reached"]  # no reclaim in this scenario: nothing is ever swapped


@pytest.mark.parametrize(
    "args, says",
    [
        (["coverage", "no-such-scenario"], "no-such-scenario"),
        (["coverage", "mixed", "--runs", "0"], "--runs"),
        (["coverage", "mixed", "--seconds", "soon"], "--seconds"),
        (["coverage", "mixed", "--bug", "no-such-bug"], "no-such-bug"),
        (["coverage"], "scenario"),
        (["run", "mixed", "--strategy", "coverage", "--mode", "free"], "--mode controlled"),
        (["soak", "--strategy", "coverage"], "--strategy"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, says):
    code, out, err = cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert says in lines[-1] and "Traceback" not in err
