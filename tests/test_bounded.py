"""Bounded exploration: it runs exactly the schedules with at most C preemptions (counted independently, by brute
force over recorded runnable sets), each once; shards partition them; a budget says incomplete; a catalogue variant
is found at its minimal preemption count as an artifact that replays; bad options are usage errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ksmstress.catalog import shipped_dir
from ksmstress.explore import explore_bounded
from ksmstress.runner import RunResult, run_one
from ksmstress.scenario import Scenario, load, parse
from ksmstress.sched.guided import YIELDING, decode_masks, mask_tasks

from .clitools import cli

# two programs that map a page and exit, nothing else: 15 scheduling points, 8 of them with a choice
TINY = """
name = "tiny"
max_steps = 1000

[arena]
page_size = 8
vpages = 4
max_vmas = 2
max_mm = 2

[ksmd]
enabled = false

[reclaim]
enabled = false

[[task]]
count = 2
region = 1
patterns = 1
ops = 0
script = []
mergeable = false
max_forks = 0
"""
SEED = 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    p = tmp_path_factory.mktemp("bounded") / "tiny.toml"
    p.write_text(TINY)
    return parse(TINY, str(p))


def _choices(res: RunResult) -> list[tuple[int, list[int]]]:
    """(step, the runnable tasks other than the one picked) wherever there was a choice."""
    out = []
    for i, m in enumerate(decode_masks(res.runnable)):
        others = [t for t in mask_tasks(int(m) & ~YIELDING) if t != res.schedule[i]]
        if others:
            out.append((i, others))
    return out


def _departures(res: RunResult) -> int:
    """Steps whose decision is not the non-preemptive one (stay if runnable and not yielding, else round-robin)."""
    n = 0
    masks = decode_masks(res.runnable)
    for i, d in enumerate(res.schedule):
        run, cur = mask_tasks(int(masks[i]) & ~YIELDING), res.schedule[i - 1] if i else -1
        if cur in run and not int(masks[i]) & YIELDING:
            n += d != cur
        else:
            n += d != next((t for t in run if t > cur), run[0])
    return n


def _explore(sc: Scenario, c: int, **kw) -> tuple[object, list[RunResult]]:
    seen: list[RunResult] = []
    r = explore_bounded(sc, SEED, (), c, on_run=lambda _o, res: seen.append(res), **kw)
    return r, seen


@pytest.fixture(scope="module")
def whole(tiny: Scenario) -> tuple[object, list[RunResult]]:
    return _explore(tiny, 2)


def test_counts_match_a_brute_force_count_from_the_recorded_masks(tiny, whole):
    root = run_one(tiny, SEED, "guided")
    assert root.verdict == "clean"
    level1 = [root.schedule[:i] + bytes([t]) for i, others in _choices(root) for t in others]
    level2 = 0
    for prefix in level1:  # each one-preemption schedule, and where it can depart once more after its departure
        res = run_one(tiny, SEED, "guided", schedule=prefix)
        level2 += sum(len(others) for i, others in _choices(res) if i >= len(prefix))
    assert len(level1) > 3 and level2 > len(level1)

    r0, _ = _explore(tiny, 0)
    r1, _ = _explore(tiny, 1)
    r2, seen = whole
    assert (r0.schedules, r1.schedules, r2.schedules) == (1, 1 + len(level1), 1 + len(level1) + level2)
    assert r0.complete and r1.complete and r2.complete and r2.failure is None
    assert [lv.schedules for lv in r2.levels] == [1, len(level1), level2]
    # never the same schedule twice, and each one's own departures are within the bound, level by level
    assert len({s.schedule for s in seen}) == len(seen) == r2.schedules
    counts = [_departures(s) for s in seen]
    assert counts == sorted(counts) and counts.count(1) == len(level1) and counts.count(2) == level2


def test_shards_partition_the_tree(tiny, whole):
    _r, seen = whole
    everything = {s.schedule for s in seen}
    parts = []
    for i in range(3):
        r, mine = _explore(tiny, 2, shard=(i, 3))
        assert r.complete and r.schedules == len(mine) > 0
        parts.append({s.schedule for s in mine})
    assert sum(len(p) for p in parts) == len(everything)
    assert set().union(*parts) == everything


def test_a_budget_gives_incomplete(tiny):
    r, seen = _explore(tiny, 2, max_schedules=4)
    assert not r.complete and r.stopped == "schedules" and r.schedules == len(seen) == 4
    r, seen = _explore(tiny, 2, seconds=1e-9)
    assert not r.complete and r.stopped == "seconds" and r.schedules == 0


def test_cli_complete_and_incomplete(capsys, tiny):
    code, out, _err = cli(capsys, "run", tiny.path, "--seed", str(SEED), "--strategy", "bounded", "--preemptions", "1")
    assert code == 0 and "complete: 9 schedules, no failure with <= 1 preemption" in out
    code, out, _err = cli(
        capsys, "run", tiny.path, "--seed", str(SEED), "--strategy", "bounded", "--runs", "3", "--json"
    )
    d = json.loads(out)
    assert code == 0 and d["complete"] is False and d["schedules"] == 3 and d["preemptions"] == 2
    assert d["scenarios"][0]["stopped"] == "schedules" and d["seconds"] > 0


def test_a_variant_is_found_at_its_minimal_preemption_count_and_replays(capsys, tmp_path: Path):
    """focus-exit-scan's CVE-2011-2183 window: clean without a preemption, found with one."""
    sc = str(shipped_dir() / "focus-exit-scan.toml")
    args = ("run", sc, "--strategy", "bounded", "--bug", "scan-exit-race", "--artifacts", str(tmp_path), "--json")
    code, out, _err = cli(capsys, *args, "--preemptions", "0")
    d = json.loads(out)
    assert code == 0 and d["complete"] and d["schedules"] == 1 and d["failure"] is None
    code, out, _err = cli(capsys, *args)
    d = json.loads(out)
    assert code == 1 and d["verdict"] == "failure" and not d["complete"]
    assert d["failure"]["class"] == "oops" and d["failure"]["preemptions"] == 1
    assert d["scenarios"][0]["levels"][0] == {"preemptions": 0, "schedules": 1, "seconds": pytest.approx(0, abs=60)}
    art = json.loads(Path(d["artifact"]).read_text())
    assert art["strategy"] == "bounded"
    code, out, _err = cli(capsys, "replay", d["artifact"], "--json")
    r = json.loads(out)
    assert code == 1 and r["reproduced"] and r["failure"]["class"] == "oops"


def test_the_api_reports_the_failure_run(tiny):
    sc = load(shipped_dir() / "focus-exit-scan.toml")
    r = explore_bounded(sc, 0, ["scan-exit-race"], 2)
    assert r.failure is not None and r.preemptions == 1 and not r.complete
    assert _departures(r.failure) == 1 and r.failure.failure["class"] == "oops"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--strategy", "bounded", "--preemptions", "-1"), "--preemptions"),
        (("--strategy", "bounded", "--shard", "3/2"), "--shard"),
        (("--strategy", "bounded", "--shard", "x"), "--shard"),
        (("--strategy", "bounded", "--shard", "0/2"), "--shard"),
        (("--strategy", "bounded", "--seconds", "0"), "--seconds"),
        (
            (
                "--preemptions",
                "1",
            ),
            "--preemptions: only with --strategy bounded",
        ),
        (("--strategy", "pct", "--shard", "1/2"), "--shard: only with --strategy bounded"),
        (("--strategy", "bounded", "--mode", "free"), "--mode"),
        (("--strategy", "bounded", "--pct-depth", "2"), "--pct-depth"),
    ],
)
def test_bad_options_are_usage_errors(capsys, tiny, args, needle):
    code, out, err = cli(capsys, "run", tiny.path, *args)
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and needle in err


FOCUS = sorted(f[:-5] for f in os.listdir(shipped_dir()) if f.startswith("focus-") and f.endswith(".toml"))
FOCUS_SHARDS = 8  # one seed-0 tree at C=1 took over 30 min on a loaded machine (focus-swapoff: ~0.26 s a schedule)


@pytest.mark.stress
@pytest.mark.parametrize("shard", range(FOCUS_SHARDS))
@pytest.mark.parametrize("name", FOCUS)
def test_focus_scenarios_complete_clean_at_one_preemption(name, shard):
    """tox -e stress: every schedule of seed 0 with at most one preemption, on each focused scenario, and not one
    fails. Each tree is split into FOCUS_SHARDS disjoint shards (--shard), one xdist item each, so no item comes
    near pytest-timeout's limit and the workers stay evenly loaded (the C=2 trees hold 370 to 16,105 schedules for
    seed 0: 40 s to 35 min here)."""
    sc = load(shipped_dir() / f"{name}.toml")
    r = explore_bounded(sc, 0, (), 1, shard=(shard, FOCUS_SHARDS))
    assert r.complete and r.failure is None, (r.schedules, r.failure and r.failure.failure)
