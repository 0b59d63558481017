"""PCT (Burckhardt et al., ASPLOS'10): probabilistic concurrency testing with priority change points.

Every task gets a random distinct priority; the highest-priority runnable task always runs. At d-1 change
points, drawn uniformly from the first k steps, the running task drops to priority i (below every initial
priority). A bug of depth d is then found in one run with probability at least 1/(n * k^(d-1)).

Two adaptations for a kernel with daemons: a task that yields (a sleep of ksmd, reclaim or a workload pause)
drops below every other live task, as shuttle does, so a daemon's endless loop cannot starve the tasks it waits
for, not even one a change point has lowered; a forked task gets a fresh random priority among the initial ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .control import EXITED

if TYPE_CHECKING:
    from .control import Control

MAX_DEPTH = 16  # scenarios and --pct-depth alike (ctl.strat holds the change points; deeper bugs are not sought)
_SPREAD = 1 << 20  # initial priorities live in [depth*_SPREAD, ...), change points use 1..depth-1
# ctl.strat cells: how many change points, then the steps they fall on (sorted)
_NPOINTS, _POINTS = 0, 1


class PctStrategy:
    name = "pct"

    def __init__(self, depth: int = 3, steps: int = 5000) -> None:
        self.depth = depth
        self.steps = steps
        # change point step -> the priority it gives, read once per process from ctl.strat (fixed after setup,
        # which may run after this process was forked: so read on first use, not inherited)
        self._lower: dict[int, int] | None = None

    def setup(self, ctl: Control) -> None:
        n = ctl.ntasks
        order = list(range(n))
        for i in range(n - 1, 0, -1):  # Fisher-Yates with the shared PRNG
            j = ctl.prng.below(i + 1)
            order[i], order[j] = order[j], order[i]
        for rank, tid in enumerate(order):
            ctl.prio[tid] = (self.depth + rank) * _SPREAD
        points = sorted(1 + ctl.prng.below(self.steps) for _ in range(self.depth - 1))
        ctl.strat[_NPOINTS] = len(points)
        for i, p in enumerate(points):
            ctl.strat[_POINTS + i] = p
        self._lower = None

    def on_new_task(self, ctl: Control, tid: int) -> None:
        ctl.prio[tid] = (self.depth + ctl.prng.below(ctl.ntasks)) * _SPREAD + 1 + ctl.prng.below(_SPREAD - 1)

    def _change_points(self, ctl: Control) -> dict[int, int]:
        strat = ctl._strat
        lower: dict[int, int] = {}
        for i in range(strat[_NPOINTS]):
            lower[strat[_POINTS + i]] = self.depth - 1 - i  # i-th change point: lower than all others so far
        self._lower = lower  # two change points on one step: the later one's (lower) priority, as applied in turn
        return lower

    def pick(self, ctl: Control, runnable: list[int], current: int, step: int, yielding: bool) -> int:
        """Plain ints through memoryviews (a point's hot path: numpy indexing here cost microseconds)."""
        prio = ctl._prio
        if current >= 0:
            lower = self._lower
            if lower is None:
                lower = self._change_points(ctl)
            if step in lower:
                prio[current] = lower[step]
            if yielding:  # below every live task but this one
                st = ctl._state
                low = None
                for t in ctl._tids:
                    if t != current and st[t] != EXITED and (low is None or prio[t] < low):
                        low = prio[t]
                if low is not None:
                    prio[current] = low - 1
        best = runnable[0]
        if len(runnable) > 1:  # the first of the highest priority, as np.argmax
            top = prio[best]
            for t in runnable:
                if prio[t] > top:
                    best, top = t, prio[t]
        return best
