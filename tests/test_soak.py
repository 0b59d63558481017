"""`ksmstress soak`: seed sharding, parallel jobs, the summary by class, bad input, and Ctrl-C hygiene."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from ksmstress import procs
from ksmstress.argtypes import duration as parse_duration
from ksmstress.argtypes import shard as parse_shard
from ksmstress.catalog import shipped_dir
from ksmstress.scenario import load
from ksmstress.soak.item import Plan, run_item
from ksmstress.soak.seeds import SeedSpace

from .procwatch import (
    collect_descendants,
    descendants_at_depth,
    end_session,
    shm_named_for,
    wait_all_gone,
    wait_all_reaped,
)

ROOT = Path(__file__).resolve().parent.parent


def soak(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ksmstress.cli", "soak", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_durations_and_shards_parse():
    assert parse_duration("90s") == 90 and parse_duration("10m") == 600 and parse_duration("1h") == 3600
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_shard(bad)


def test_shards_cover_disjoint_seeds():
    n = 4
    seen = [{SeedSpace(100, 3, i, n).item(k) for k in range(60)} for i in range(1, n + 1)]
    seeds = [{s for _sc, s in part} for part in seen]
    for i in range(n):
        for j in range(i + 1, n):
            assert not seeds[i] & seeds[j]
    assert set().union(*seeds) == set(range(100, 180))  # 20 seeds per shard (60 items, 3 scenarios), 4 shards


def test_soak_keep_going_collects_failures_by_class(tmp_path: Path):
    r = soak(
        str(shipped_dir() / "seed-fork-race.toml"),
        "--bug",
        "single-pass-walk",
        "--runs",
        "12",
        "--jobs",
        "2",
        "--keep-going",
        "--json",
        "--artifacts",
        str(tmp_path / "art"),
        cwd=tmp_path,
    )
    assert r.returncode == 1, r.stderr
    d = json.loads(r.stdout)
    assert d["verdict"] == "failure"
    classes = d["by_class"] if "by_class" in d else d["classes"]
    assert set(classes) == {"traversal"}
    assert len(list((tmp_path / "art").glob("*.json"))) >= 2
    assert "ksmstress replay" in json.dumps(d)


def test_soak_clean_runs_exit_0(tmp_path: Path):
    r = soak(str(shipped_dir() / "seed-unmap-race.toml"), "--runs", "6", "--jobs", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "no failures" in r.stdout


@pytest.mark.parametrize("args", [("--shard", "3/2"), ("--duration", "5x"), ("--bug", "nope"), ("no-such-scenario",)])
def test_soak_bad_input_is_one_line_exit_2(args: tuple[str, ...], tmp_path: Path):
    r = soak(*args, cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_ctrl_c_on_a_soak_leaves_no_process(tmp_path: Path):
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ksmstress.cli",
            "soak",
            str(shipped_dir() / "mixed.toml"),
            "--duration",
            "2m",
            "--jobs",
            "2",
            "--artifacts",
            str(tmp_path),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline and p.poll() is None:
        collect_descendants(p.pid, seen)
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)
    p.wait(60)
    assert p.returncode == 130
    assert seen, "no worker or task process was seen"
    left = wait_all_gone(seen.values(), 10)
    assert not left, f"left behind: {[c.pid for c in left]}"
    assert shm_named_for({p.pid, *seen}) == set()


# -- every way a soak ends leaves nothing -------------------------------------------------------------------------
class SoakProc:
    """`ksmstress soak` in its own session, with a private $TMPDIR and every descendant it is seen to have."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.tmpdir = tmp_path / "tmp"
        self.tmpdir.mkdir()
        self.out, self.err = (tmp_path / "out").open("w+"), (tmp_path / "err").open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ksmstress.cli", "soak", *args, "--artifacts", str(tmp_path / "art")],
            cwd=tmp_path,
            stdout=self.out,
            stderr=self.err,
            start_new_session=True,
            env={**os.environ, "TMPDIR": str(self.tmpdir)},
        )
        self.seen: dict[int, psutil.Process] = {}

    def wait_for_tasks(self) -> list[int]:
        """Block until a worker has a run's tasks alive (two levels down): the soak is in full swing."""
        tasks = descendants_at_depth(self.proc.pid, self.seen, 2, timeout=60)
        assert tasks, f"never saw a run's tasks (status {self.proc.poll()}): {self.text(self.err)}"
        collect_descendants(self.proc.pid, self.seen)
        return tasks

    @staticmethod
    def text(f: Any) -> str:
        f.seek(0)
        return f.read()

    def all_pids(self) -> set[int]:
        return {self.proc.pid, *self.seen}

    def cleanup(self) -> None:
        end_session(self.proc, self.seen.values())
        self.out.close()
        self.err.close()


@pytest.mark.parametrize("mode", ["controlled", "free"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_sigterm_or_sigkill_of_a_soak_leaves_nothing(sig: int, mode: str, tmp_path: Path) -> None:
    """The issue's reproduction (`soak --duration 60s --jobs 2 & kill -TERM $!`): workers used to be orphaned
    forever. SIGTERM is handled like Ctrl-C (summary so far, exit 143); after SIGKILL the workers and their runs'
    tasks die by their death signals. Either way nothing is left: no process, no zombie, no temp file, no
    semaphore named after one of its pids."""
    s = SoakProc(tmp_path, str(shipped_dir() / "mixed.toml"), "--duration", "2m", "--jobs", "2", "--mode", mode)
    try:
        s.wait_for_tasks()
        os.kill(s.proc.pid, sig)  # the soak alone, as `kill` or a CI runner's timeout does
        code = s.proc.wait(60)
        out, err = s.text(s.out), s.text(s.err)
        if sig == signal.SIGTERM:
            assert code == 143, f"exit status {code}; stderr:\n{err}"
            assert out.startswith("soak interrupted after"), out
            assert err.strip().splitlines()[-1] == "ksmstress: interrupted"
            assert "Traceback" not in err, err
        else:
            assert code == -signal.SIGKILL
        left = wait_all_reaped(s.seen.values(), 10)
        assert not left, f"left behind: {[(p.pid, p.status()) for p in left if p.is_running()]}"
        assert list(s.tmpdir.iterdir()) == []
        assert shm_named_for(s.all_pids()) == set()
    finally:
        s.cleanup()


def _processes(pids: list[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return out


def _ppid(q: psutil.Process) -> int | None:
    try:
        return q.ppid()
    except psutil.NoSuchProcess:
        return None


def test_a_worker_killed_from_outside_is_reported_and_its_tasks_reaped(tmp_path: Path) -> None:
    """SIGKILL one worker mid-run: its tasks die with it and are reaped by the soak (a child subreaper), not left
    as zombies; the other worker goes on; the summary names the dead worker."""
    s = SoakProc(tmp_path, str(shipped_dir() / "mixed.toml"), "--duration", "2m", "--jobs", "2")
    try:
        victim, orphans = None, []
        while victim is None:  # runs end every fraction of a second: a task seen a moment ago may be gone
            live = _processes(s.wait_for_tasks())
            victim = next((q.parent() for q in live if _ppid(q) is not None), None)
            orphans = [q for q in live if victim is not None and _ppid(q) == victim.pid]
        victim.kill()
        assert wait_all_reaped([victim, *orphans], 10) == [], "the dead worker's tasks were not reaped"
        assert s.proc.poll() is None, "the soak ended with one worker gone"
        os.killpg(s.proc.pid, signal.SIGINT)
        assert s.proc.wait(60) == 130
        out = s.text(s.out)
        assert re.search(r"error: worker \d died \(exit code -9\)", out), out
        assert wait_all_reaped(s.seen.values(), 10) == []
    finally:
        s.cleanup()


# -- artifacts: refused up front, and a failure never lost to a failed write --------------------------------------
@pytest.mark.parametrize("where", ["/proc/x", "a-file"])
def test_unwritable_artifacts_directory_is_exit_2_before_any_run(where: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    r = soak(
        "seed-unmap-race", "--bug", "no-anon-vma-ref", "--runs", "3", "--jobs", "2", "--artifacts", where, cwd=tmp_path
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--artifacts" in r.stderr and where in r.stderr
    assert r.stdout == ""


def test_a_failure_whose_artifact_cannot_be_written_is_still_reported(tmp_path: Path) -> None:
    """The directory vanished (or filled up) after the up-front check: the row keeps the failure, its seed and the
    command that reruns it, and says why there is no artifact."""
    (tmp_path / "a-file").write_text("")
    sc = load(shipped_dir() / "seed-fork-race.toml")
    plan = Plan((sc,), SeedSpace(0, 1), "random", ("single-pass-walk",), None, 60.0, "controlled", tmp_path / "a-file")
    for k in range(40):
        row = run_item(plan, k, 0)
        if row["verdict"] == "failure":
            break
    assert row["verdict"] == "failure" and row["cls"] == "traversal", row
    assert row["artifact"] is None and "artifact not written" in row["message"]
    assert row["replay"].startswith("ksmstress run ") and f"--seed {row['seed']}" in row["replay"]
    assert "--bug single-pass-walk" in row["replay"]


def test_a_failure_interrupted_while_measuring_its_rate_still_reaches_the_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while a free-mode failure's reruns run: the reruns stop, the failure's row is still returned (the
    worker sends it, then stops at its next safe point: the interrupt is made pending again)."""
    import ksmstress.soak.item as item

    real = item.reproduction

    def interrupted_reproduction(*args: Any, **kw: Any) -> str:
        os.kill(os.getpid(), signal.SIGINT)  # lands in the first rerun's run_one, which stops at a safe point
        return real(*args, **kw)

    monkeypatch.setattr(item, "reproduction", interrupted_reproduction)
    sc = load(shipped_dir() / "seed-fork-race.toml")
    plan = Plan((sc,), SeedSpace(0, 1), "random", ("single-pass-walk",), None, 60.0, "free", tmp_path, reruns=3)
    rows: list[dict[str, Any]] = []
    pending: list[int | None] = []
    with pytest.raises(procs.Interrupted):  # raised by the next safe point: leaving catch_interrupts()
        with procs.catch_interrupts():
            for k in range(60):
                rows.append(run_item(plan, k, 0))
                if rows[-1]["verdict"] == "failure":
                    break
            pending.append(procs.interrupted())
    assert rows and rows[-1]["verdict"] == "failure", rows[-1:]
    assert rows[-1]["reproduced"] is None and rows[-1]["replay"].startswith("ksmstress replay "), rows[-1]
    assert pending == [signal.SIGINT]
