"""`ksmstress soak`: seed sharding, parallel jobs, the summary by class, bad input, and Ctrl-C hygiene."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ksmstress.argtypes import duration as parse_duration
from ksmstress.argtypes import shard as parse_shard
from ksmstress.catalog import shipped_dir
from ksmstress.soak.seeds import SeedSpace

from .procwatch import collect_descendants, wait_all_gone

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
    before = set(os.listdir("/dev/shm"))
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
    assert set(os.listdir("/dev/shm")) <= before
