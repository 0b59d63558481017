"""The controlled scheduler's hot path for the `random` strategy: a scheduling point that keeps the running task
costs a few local operations.

Why a separate path: at `shared` granularity a run reaches a point before every unlocked shared access, and with
two runnable tasks half of the `random` strategy's points keep the running task. Control.point keeps every piece
of scheduler state in shared memory (the step, the PRNG's draw index, the runnable list's version) and calls the
strategy: each memoryview access costs 60-80 ns and a cold call more, so a point that stays cost more than half a
raw hand-off. Here the running process keeps its working copies in closure variables and publishes them only when
another process may look: at a hand-off (before posting the next task), and when Control itself reads or hands
on the state (clock, steps, report, exit_current), through `publish` and `leave`.

The decisions are RandomStrategy.pick's, draw for draw (`vbuf[i] % len(runnable)` over the shared splitmix64
block, refilled at the same index), so a seed's schedule is the same whichever path runs it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .control import Control

_STEP, _CURRENT, _STOP, _HANDOFFS, _VERSION = 0, 1, 2, 4, 7  # Control's meta cells (checked there)
_USED, _TAG = 1, 0  # the PRNG's shared cells: draws used from the block, the state after it (names the block)

PointFn = Callable[..., None]
Nothing = Callable[[], None]


def random_point(ctl: Control, runnable_state: int) -> tuple[PointFn, Nothing, Nothing, Nothing]:
    """(point, publish, leave, stale) for a bound Control whose strategy is RandomStrategy.

    point(site, yielding=False): the scheduling point. publish(): write the working step and draw index back to
    shared memory (the running task keeps them). leave(): publish, then let them go (another process will change
    them). stale(): this process changed a task's state: rebuild the runnable list at the next point.
    """
    meta, record, state = ctl._meta, ctl._record, ctl._state
    post, park = ctl._post, ctl._park
    cell, buf, refill = ctl.prng.cell, ctl.prng.buf, ctl.prng._refill
    tids = ctl._tids
    live = False  # the working copies below are this process's to use (it holds the baton)
    step = used = 0  # STEP and the PRNG's draw index while live
    tag = -1  # the PRNG block `vals` holds (its cell _TAG)
    vals: list[int] = []  # that block as Python ints: one list index per draw
    seen = -1  # VERSION the runnable list was built at (-1: rebuild)
    runnable: list[int] = []
    n = 0
    me = -1
    wait_mine = park[0]  # park[me], bound at load
    limit = 0  # Control._limit: the next step budget_check looks at

    def load() -> None:
        """Take the baton: the shared state as the last running process left it."""
        nonlocal live, step, used, tag, vals, me, seen, limit, wait_mine
        step = meta[_STEP]
        used = cell[_USED]
        if cell[_TAG] != tag:
            tag = cell[_TAG]
            vals = buf.tolist()
        if seen != meta[_VERSION]:  # other tasks blocked, woke, forked or exited meanwhile
            seen = -1
        me = ctl.me
        wait_mine = park[me]
        limit = ctl._limit
        live = True

    def rebuild(site: str) -> None:
        nonlocal seen, runnable, n
        seen = meta[_VERSION]
        runnable = [t for t in tids if state[t] == runnable_state]
        n = len(runnable)
        if not n:
            ctl._deadlock(site)

    def publish() -> None:
        if live:
            meta[_STEP] = step
            cell[_USED] = used

    def leave() -> None:
        nonlocal live
        publish()
        live = False

    def stale() -> None:
        nonlocal seen
        seen = -1

    def point(site: str, yielding: bool = False) -> None:
        nonlocal step, used, tag, vals, seen, limit
        if not live:
            load()
        step += 1
        if step >= limit:
            ctl.budget_check(step, site)
            limit = ctl._limit
        if seen < 0:
            rebuild(site)
        if n == 1:
            nxt = runnable[0]
        else:  # prng.below(n)
            try:
                v = vals[used]
            except IndexError:  # used == BLOCK: the next block, as SharedPrng.below refills it
                cell[_USED] = used
                refill()
                tag = cell[_TAG]
                vals = buf.tolist()
                used = 0
                v = vals[0]
            used += 1
            nxt = runnable[v % n]
        record[step] = nxt
        if nxt != me:  # hand off: publish, post, park; then take the baton back (load, inlined)
            meta[_STEP] = step
            cell[_USED] = used
            meta[_CURRENT] = nxt
            meta[_HANDOFFS] += 1
            post[nxt]()
            wait_mine()  # nothing in this process runs until the next task hands back: `live` may stay set
            if meta[_STOP]:
                os._exit(0)
            step = meta[_STEP]
            used = cell[_USED]
            if cell[_TAG] != tag:
                tag = cell[_TAG]
                vals = buf.tolist()
            if seen != meta[_VERSION]:
                seen = -1

    return point, publish, leave, stale
