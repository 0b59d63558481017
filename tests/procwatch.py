"""Watching the processes a test started, by pid only (psutil.Process objects notice pid reuse): which ones
exist, which still run, and whether they are all gone after a grace period. Never by name."""

from __future__ import annotations

import time
from collections.abc import Iterable

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
