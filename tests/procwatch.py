"""Watching the processes a test started, by pid only (psutil.Process objects notice pid reuse): which ones
exist, which still run, and whether they are all gone after a grace period. Never by name."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable
from typing import Any

import psutil


def collect_descendants(pid: int, seen: dict[int, psutil.Process]) -> list[psutil.Process]:
    """Add every current descendant of `pid` to `seen`; returns them ([] once `pid` is gone)."""
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for c in kids:
        seen.setdefault(c.pid, c)
    return kids


def alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The processes that still run (zombies waiting for a reaper are dead for this purpose)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_all_gone(procs: Iterable[psutil.Process], grace: float) -> list[psutil.Process]:
    """The processes still running after up to `grace` seconds (empty as soon as all are gone)."""
    procs = list(procs)
    deadline = time.monotonic() + grace
    left = alive(procs)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = alive(left)
    return left


def wait_all_reaped(procs: Iterable[psutil.Process], grace: float) -> list[psutil.Process]:
    """The processes that still exist after up to `grace` seconds, zombies included: a zombie nobody reaps (its
    parent died and PID 1 does not reap) is a leak too."""
    procs = list(procs)
    deadline = time.monotonic() + grace
    left = [p for p in procs if p.is_running()]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if p.is_running()]
    return left


def descendants_at_depth(pid: int, seen: dict[int, psutil.Process], depth: int, timeout: float) -> list[int]:
    """Collect `pid`'s descendants until some are `depth` levels below it (e.g. 2: a soak's run tasks under its
    workers); returns their pids, [] if none appeared within `timeout` seconds or `pid` ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        collect_descendants(pid, seen)
        level = [pid]
        for _ in range(depth):
            level = [c.pid for p in level for c in _kids(p)]
        if level:
            return level
        time.sleep(0.02)
    return []


def _kids(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []


SHM = "/dev/shm"


def shm_named_for(pids: Iterable[int]) -> set[str]:
    """The /dev/shm entries named after one of `pids`: ksmstress names its semaphores sem.mp-ksmstress<PID>-*
    (procs.name_semaphores), so a leak is attributed to the process that made it, not to whoever else on the
    machine creates semaphores at the same time."""
    wanted = {f"sem.mp-ksmstress{pid}-" for pid in pids}
    try:
        names = os.listdir(SHM)
    except FileNotFoundError:
        return set()
    return {n for n in names if any(n.startswith(w) for w in wanted)}


def end_session(proc: subprocess.Popen[Any], seen: Iterable[psutil.Process] = ()) -> None:
    """A test's last word on a front door it started with start_new_session=True: SIGKILL that session's process
    group if it still runs, then any process it was seen to have that still runs (psutil refuses a reused pid)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    for p in alive(seen):
        try:
            p.kill()
        except psutil.Error:
            pass
