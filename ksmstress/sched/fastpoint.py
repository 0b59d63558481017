"""The controlled scheduler's hot path for the `random` strategy: a scheduling point that keeps the running task
costs a few local operations, and a hand-off costs little beyond the semaphore pair.

Why a separate path: at `shared` granularity a run reaches a point before every unlocked shared access, and with
two runnable tasks half of the `random` strategy's points keep the running task. Control.point keeps every piece
of scheduler state in shared memory (the step, the PRNG's draw index, the runnable list's version) and calls the
strategy: each memoryview access costs 30-40 ns and a cold call more, so a point that stays cost more than half a
raw hand-off. Here the running process keeps its working copies in closure variables and publishes them only when
another process may look: at a hand-off (before posting the next task), and when Control itself reads or hands
on the state (clock, steps, report, exit_current), through `publish` and `leave`.

What a point costs, and why each piece is there (the bar: bench's bare scheduler at >= 0.75 of a raw same-CPU
semaphore ping-pong's hand-offs per CPU second, with a stay for every hand-off under `random` with two tasks):
- a stay: the step, one compare against `gate` (the step budget's next check; -1 when the baton must be taken or
  the runnable list rebuilt, so those three rare cases cost one test), the draw, the record byte. The draw is a
  list index into the block's residues modulo the runnable count, computed once per block and count: small ints,
  which CPython keeps as shared objects, where the raw 64-bit draws were a fresh heap object and a 3-digit long
  division at every point. The rare paths are functions of their own: every name the point uses is a closure
  cell copied into its frame at each call;
- a hand-off adds the step and draw index written back, post, park, both read again and one compare of VERSION.
  VERSION is the one cell a parked process must look at: it changes with every task state change, with a PRNG
  block refill (this path bumps it, so a woken task reloads the block only then) and with a stop (Control.report
  and a clean end bump it), so none of those needs a read of its own. Nothing else is written: who runs and how
  many hand-offs there were are both in the record (Control.current, Control.handoffs).

The decisions are RandomStrategy.pick's, draw for draw (`vbuf[i] % len(runnable)` over the shared splitmix64
block, refilled at the same index), so a seed's schedule is the same whichever path runs it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .control import Control

# Control's meta cells (checked there), the PRNG's among them: the state after the buffered block (names the
# block) and the draws used from it. The hot path writes them as literals (a LOAD_CONST, not a LOAD_GLOBAL).
_STEP, _TAG, _USED, _STOP, _VERSION = 0, 1, 2, 3, 4

PointFn = Callable[..., None]
Nothing = Callable[[], None]


def random_point(ctl: Control, runnable_state: int) -> tuple[PointFn, Nothing, Nothing, Nothing]:
    """(point, publish, leave, stale) for a bound Control whose strategy is RandomStrategy.

    point(site, yielding=False): the scheduling point. publish(): write the working step and draw index back to
    shared memory (the running task keeps them). leave(): publish, then let them go (another process will change
    them). stale(): this process changed a task's state (and VERSION): rebuild the runnable list at the next point.
    """
    meta, record, state = ctl._meta, ctl._record, ctl._state
    post, park = ctl._post, ctl._park
    buf, refill = ctl.prng.buf, ctl.prng._refill
    tids = ctl._tids
    live = False  # the working copies below are this process's to use (it holds the baton)
    step = used = 0  # STEP and the PRNG's draw index while live
    gate = -1  # point() takes the slow path when step reaches it: Control._limit while live and current, else -1
    tag = -1  # the PRNG block `mods` is taken from (its cell _TAG)
    by_n: dict[int, list[int]] = {}  # that block's draws modulo n, by n, as Python ints (small: cached objects)
    mods: list[int] = []  # by_n[n]: the draw at index i picks runnable[mods[i]]
    seen = -1  # VERSION the runnable list and `mods` were taken at (-1: take them again)
    runnable: list[int] = []
    n = 0
    me = -1
    wait_mine = park[0]  # park[me], bound at load

    def slow(site: str) -> None:
        """The rare part of a point (step >= gate): take the baton, look at the step budget, rebuild the view."""
        nonlocal live, step, used, gate, tag, by_n, mods, seen, runnable, n, me, wait_mine
        if not live:  # the shared state as the last running process left it; `step` was a stale copy
            step = meta[_STEP] + 1
            used = meta[_USED]
            me = ctl.me
            wait_mine = park[me]
            live = True
            seen = -1  # Control may have drawn (exit_current's pick) since this process left: look at the tag
        if step >= ctl._limit:
            ctl.budget_check(step, site)
        version = meta[_VERSION]
        if version != seen:  # other tasks blocked, woke, forked, exited or refilled the PRNG meanwhile
            if meta[_TAG] != tag:
                tag = meta[_TAG]
                by_n = {}
            runnable = [t for t in tids if state[t] == runnable_state]
            n = len(runnable)
            if not n:
                ctl._deadlock(site)
            if n > 1:
                mods = by_n.get(n) or by_n.setdefault(n, residues(n))
            seen = version
        gate = ctl._limit

    def residues(k: int) -> list[int]:
        """The block's draws modulo k: RandomStrategy's `vbuf[i] % k` (numpy's uint64 remainder is exact)."""
        return (buf % np.uint64(k)).tolist()

    def publish() -> None:
        if live:
            meta[_STEP] = step
            meta[_USED] = used

    def leave() -> None:
        nonlocal live, gate
        publish()
        live = False
        gate = -1

    def stale() -> None:
        nonlocal seen, gate
        seen = gate = -1

    def next_block() -> int:
        """used == BLOCK: refill at the same index as SharedPrng.below does; the first draw's pick."""
        nonlocal used, tag, by_n, mods, seen
        meta[_USED] = used
        refill()
        tag = meta[_TAG]
        mods = residues(n)
        by_n = {n: mods}
        used = 0
        seen += 1  # tell the parked tasks: their `mods` is stale (this view is current: slow() ran)
        meta[_VERSION] = seen
        return runnable[mods[0]]

    def point(site: str, yielding: bool = False) -> None:
        nonlocal step, used, gate
        step += 1
        if step >= gate:
            slow(site)
        if n > 1:  # prng.below(n)
            try:
                nxt = runnable[mods[used]]
            except IndexError:
                nxt = next_block()
            used += 1
        else:
            nxt = runnable[0]
        record[step] = nxt
        if nxt != me:  # hand off: publish, post, park; then take the baton back. meta[0] is _STEP, [2] _USED,
            meta[0] = step  # [3] _STOP, [4] _VERSION: literals, one LOAD_CONST each on the hottest lines
            meta[2] = used
            post[nxt]()
            wait_mine()  # nothing in this process runs until the next task hands back: `live` may stay set
            step = meta[0]
            used = meta[2]
            if meta[4] != seen:
                if meta[3]:
                    os._exit(0)
                gate = -1

    return point, publish, leave, stale
