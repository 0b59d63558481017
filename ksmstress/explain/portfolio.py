"""Two shrinkers at once, one per CPU, and the smaller result: a portfolio against the search's luck.

Why: a shrink is a greedy search under a wall-clock budget, and where it ends depends on which of many local
minima its first passes fall into (the same first failure of wrprotect-check-before-clear shrank to 1, 4 and 7
preemptions in three runs of one shrinker). Two members that search differently (variant 1 skips the quick
pass and draws other random schedules) on two CPUs fail together far less often than one alone, in the same
wall-clock time. Each member's runs are pinned to its own CPU (cpus.ENV); with one CPU allowed, or when the caller
already pinned this process to one (a pool worker, a parallel job), the shrink runs alone.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import cpus, procs
from .shrink import Candidate, Shrinker

SLACK = 30.0  # seconds past the budget the second member may take to hand its result over (one last run)


def members() -> list[int]:
    """The CPUs a shrink's members run on: two when this process may use two and nobody chose one for it (the
    first is pick()'s default, so this process's own runs need no pinning of their own)."""
    if cpus.chosen() is not None:
        return [cpus.pick()]
    return cpus.spread(2)


def shrink_portfolio(
    art: dict[str, Any], path: Path, seconds: float, timeout: float, log: Callable[[str], None]
) -> tuple[Candidate, Candidate, int]:
    """(the original as the learning run saw it, the smallest candidate any member found, candidate runs in
    all). The first member runs here and logs; the second runs in a forked child that dies with this process
    and sends its best back pickled."""
    where = members()
    if len(where) < 2:
        s = Shrinker(art, path, seconds, timeout, log=log)
        first, best = s.run()
        return first, best, s.runs
    parent = os.getpid()
    r, w = os.pipe()
    with procs.fork_guard():
        pid = os.fork()
    if pid == 0:  # the second member: its best, or nothing if it fails
        try:
            procs.in_child(parent)
            os.close(r)
            os.environ[cpus.ENV] = str(where[1])
            other = Shrinker(art, path, seconds, timeout, variant=1)
            _first, got = other.run()
            data = pickle.dumps((got, other.runs))
            with os.fdopen(w, "wb") as f:
                f.write(data)
        finally:
            os._exit(0)
    os.close(w)
    try:
        s = Shrinker(art, path, seconds, timeout, log=log)  # on where[0]: cpus.pick() with no $KSMSTRESS_CPU
        first, best = s.run()
        runs = s.runs
        got = _receive(r, time.monotonic() + SLACK)
        if got is not None:
            theirs, their_runs = got
            runs += their_runs
            kept = theirs.key() < best.key()
            log(f"the second member: {theirs.preemptions} preemptions, {theirs.res.steps} steps "
                f"({'kept' if kept else 'not kept'})")
            best = theirs if kept else best
        return first, best, runs
    finally:
        os.close(r)
        procs.signal_pid(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _receive(fd: int, deadline: float) -> tuple[Candidate, int] | None:
    """The second member's pickled (best, runs) from `fd`, or None if it sent nothing by `deadline` (it failed,
    or its last run hangs)."""
    chunks: list[bytes] = []
    while True:
        procs.check_interrupt()
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    try:
        best, runs = pickle.loads(b"".join(chunks))
    except Exception:  # the member died while writing: nothing to compare
        return None
    return best, int(runs)
