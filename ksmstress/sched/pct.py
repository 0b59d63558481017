"""PCT (Burckhardt et al., ASPLOS'10): probabilistic concurrency testing with priority change points.

Every task gets a random distinct priority; the highest-priority runnable task always runs. At d-1 change
points, drawn uniformly from 1..k, the running task drops below every other task's priority. A bug of
depth d is then found in one run with probability at least 1/(n * k^(d-1)), n tasks, k steps.

As in the paper and shuttle's pct.rs, k counts only the points where a choice exists: a point with at least two
runnable tasks (a "contested" point) where the running task does not yield. A point with one runnable task cannot
change the schedule whatever the priorities say, and a yield already drops the task below every other (below), so
a change point at either would be spent for nothing; counting all points spread the change points over stretches
where nothing could change and past the end of most runs. The caller gives k (the runner estimates
it per scenario from warm-up runs: runner.pct_k), this strategy counts contested points as it goes.

Two adaptations for a kernel with daemons: a task that yields (a sleep of ksmd, reclaim or a workload pause)
drops below every other live task, as shuttle does, so a daemon's endless loop cannot starve the tasks it waits
for, not even one a change point has lowered; a forked task gets a fresh random priority among the initial ones.
Priorities and the contested count start afresh in every run (setup).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .control import EXITED

if TYPE_CHECKING:
    from .control import Control

MAX_DEPTH = 16  # scenarios and --pct-depth alike (ctl.strat holds the change points; deeper bugs are not sought)
_SPREAD = 1 << 20  # initial priorities live in [depth*_SPREAD, ...); yields and change points go below them
# ctl.strat cells: how many change points, the contested points they fall on (sorted), the contested points so far
_NPOINTS, _POINTS, _CONTESTED = 0, 1, 1 + MAX_DEPTH


class PctStrategy:
    name = "pct"

    def __init__(self, depth: int = 3, k: int = 1000) -> None:
        self.depth = depth
        self.k = max(1, k)
        # change point (contested index) -> the priority it gives, read once per process from ctl.strat (fixed after
        # setup, which may run after this process was forked: so read on first use, not inherited)
        self._lower: frozenset[int] | None = None

    def setup(self, ctl: Control) -> None:
        n = ctl.ntasks
        order = list(range(n))
        for i in range(n - 1, 0, -1):  # Fisher-Yates with the shared PRNG
            j = ctl.prng.below(i + 1)
            order[i], order[j] = order[j], order[i]
        for rank, tid in enumerate(order):
            ctl.prio[tid] = (self.depth + rank) * _SPREAD
        points = sorted(1 + ctl.prng.below(self.k) for _ in range(self.depth - 1))
        ctl.strat[_NPOINTS] = len(points)
        for i, p in enumerate(points):
            ctl.strat[_POINTS + i] = p
        ctl.strat[_CONTESTED] = 0
        self._lower = None

    def on_new_task(self, ctl: Control, tid: int) -> None:
        ctl.prio[tid] = (self.depth + ctl.prng.below(ctl.ntasks)) * _SPREAD + 1 + ctl.prng.below(_SPREAD - 1)

    @staticmethod
    def contested(ctl: Control) -> int:
        """The run's points with at least two runnable tasks and no yield so far: what k estimates."""
        return int(ctl.strat[_CONTESTED])

    def _change_points(self, ctl: Control) -> frozenset[int]:
        strat = ctl._strat
        self._lower = frozenset(strat[_POINTS + i] for i in range(strat[_NPOINTS]))
        return self._lower

    @staticmethod
    def _below_others(ctl: Control, current: int) -> None:
        """Give `current` a priority below every other live task's: the paper's change-point priority d-i, lower
        than every priority so far. A fixed d-i would not do: yields push priorities below it, and a change point
        would then raise the task it is meant to lower (it did: depth 3 changed nothing over depth 2 for most
        seeds)."""
        prio, st = ctl._prio, ctl._state
        low = None
        for t in ctl._tids:
            if t != current and st[t] != EXITED and (low is None or prio[t] < low):
                low = prio[t]
        if low is not None:
            prio[current] = low - 1

    def pick(self, ctl: Control, runnable: list[int], current: int, step: int, yielding: bool) -> int:
        """Plain ints through memoryviews (a point's hot path: numpy indexing here cost microseconds)."""
        prio = ctl._prio
        if current >= 0:
            if yielding:  # below every live task but this one
                self._below_others(ctl, current)
            elif len(runnable) > 1:
                strat = ctl._strat
                c = strat[_CONTESTED] + 1
                strat[_CONTESTED] = c
                lower = self._lower
                if lower is None:
                    lower = self._change_points(ctl)
                if c in lower:
                    self._below_others(ctl, current)
        best = runnable[0]
        if len(runnable) > 1:  # the first of the highest priority, as np.argmax
            top = prio[best]
            for t in runnable:
                if prio[t] > top:
                    best, top = t, prio[t]
        return best
