"""The chaos policy of free mode: seeded delays at scheduling points that widen race windows.

When every task runs at once (sched/free.py), the OS interleaves them and most races are too narrow to hit. At each
scheduling point the policy may yield the CPU or sleep a few microseconds, as KCSAN's delays do. The decisions
come from a per-task PRNG seeded by the run's seed, so the seed fixes the workload and the chaos decisions, not
the interleaving: a failure comes with its reproduction rate over reruns.
"""

from __future__ import annotations


class ChaosPolicy:
    """Per-point delays: yield with probability p_yield, else sleep up to sleep_us with probability p_sleep."""

    def __init__(self, p_yield: float = 0.05, p_sleep: float = 0.01, sleep_us: float = 50.0) -> None:
        self.p_yield = p_yield
        self.p_sleep = p_sleep
        self.sleep_us = sleep_us
