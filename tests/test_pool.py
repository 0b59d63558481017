"""The worker pool shared by `soak` and `bench` (ksmstress/pool.py): every item done once, errors reported, no
inherited pipe end, and `bench` front-door behaviour that rests on it (bad --variant, Ctrl-C)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from ksmstress.pool import Pool

from .clitools import run_cli
from .procwatch import descendants_at_depth, end_session, wait_all_reaped


def _sockets() -> set[int]:
    """Inodes of the sockets this process holds."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if stat.S_ISSOCK(st.st_mode):
            out.add(st.st_ino)
    return out


def _serve(pool: Pool, n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    items = iter(range(n))

    def feed() -> tuple[int, int] | None:
        k = next(items, None)
        return None if k is None else (k, k + 1)

    pool.run(feed, rows.append)
    return rows


def test_every_item_once_and_no_worker_holds_another_pipe_end() -> None:
    """Each worker closes the parent's pipe ends it inherited (its own and earlier workers'): while a worker held
    one, another worker never saw end-of-file when the parent died, and lived on forever."""
    before = set(psutil.Process().children())
    parent_ends: set[int] = set()

    def work(k: int, job: int) -> dict[str, Any]:
        return {"k": k, "job": job, "pid": os.getpid(), "sockets": sorted(_sockets())}

    pool = Pool(work, [None, None, None])
    orig_start = pool._start

    def start() -> None:
        orig_start()
        parent_ends.update(os.fstat(c.fileno()).st_ino for c in pool._conns)

    pool._start = start  # type: ignore[method-assign]
    rows = _serve(pool, 30)
    assert sorted(r["k"] for r in rows) == list(range(30))
    assert pool.errors == [] and pool.interrupted is None
    assert len(parent_ends) == 3
    for r in rows:
        assert not parent_ends & set(r["sockets"]), f"worker {r['job']} holds a parent's pipe end"
    assert set(psutil.Process().children()) == before


def test_an_item_that_raises_is_an_error_not_a_dead_pool() -> None:
    def work(k: int, job: int) -> dict[str, Any]:
        if k == 3:
            raise ValueError("item three")
        return {"k": k}

    pool = Pool(work, [None, None])
    rows = _serve(pool, 6)
    assert sorted(r["k"] for r in rows) == [0, 1, 2, 4, 5]
    assert pool.errors == ["worker 0: item 3 raised ValueError: item three"] or (
        pool.errors == ["worker 1: item 3 raised ValueError: item three"]
    )


# -- bench through the front door ---------------------------------------------------------------------------------
def test_bench_unknown_variant_is_exit_2_one_line(tmp_path: Path) -> None:
    r = run_cli("bench", "--variant", "nope", cwd=tmp_path, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "unknown bug variant 'nope'" in r.stderr


def test_bench_ctrl_c_prints_the_finished_cells_and_leaves_no_zombie(tmp_path: Path) -> None:
    """Ctrl-C once a cell is done and the next cells' runs are under way: the finished cells are printed, exit
    130, and every worker and task is reaped (it used to leave 10-12 zombies reparented to PID 1)."""
    out, err = (tmp_path / "out").open("w+"), (tmp_path / "err").open("w+")
    p = subprocess.Popen(
        [sys.executable, "-m", "ksmstress.cli", "bench", "--runs", "40", "--seconds", "30", "--jobs", "2"],
        cwd=tmp_path,
        stdout=out,
        stderr=err,
        start_new_session=True,
    )
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 120
        while "[1/" not in (tmp_path / "err").read_text() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert descendants_at_depth(p.pid, seen, 2, timeout=60), "no run under way after the first cell"
        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(60) == 130
        err.seek(0)
        out.seek(0)
        text, errtext = out.read(), err.read()
        assert errtext.strip().splitlines()[-1] == "ksmstress: interrupted" and "Traceback" not in errtext
        lines = text.splitlines()
        assert lines[0].startswith("variant") and len([line for line in lines[1:] if line.strip()]) >= 1, text
        left = wait_all_reaped(seen.values(), 10)
        assert left == [], f"left behind: {[(q.pid, q.status()) for q in left if q.is_running()]}"
    finally:
        end_session(p, seen.values())
        out.close()
        err.close()
