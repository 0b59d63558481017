"""Which CPU a controlled run uses: one rule for `run --cpu`, the worker pool (soak, bench), the pytest plugin's
xdist workers and the benchmarks.

Why it matters: a controlled run hands the CPU from process to process thousands of times a second, and those
hand-offs are several times faster when every process of the run shares one core; parallel jobs must each get a
core of their own, or two runs would share (and halve) one core's hand-offs while another core idles.
"""

from __future__ import annotations

import os

ENV = "KSMSTRESS_CPU"  # the CPU a parallel job's runs use, set by the pool (or a test harness) for the runner


def allowed() -> list[int]:
    """The CPUs this process may run on, in increasing order."""
    return sorted(os.sched_getaffinity(0))


def nth(i: int) -> int:
    """Job i's CPU: the i-th allowed CPU counting down from the last, wrapping around. From the last, so that a
    lone run (pick()) and job 0 share a default, and the low CPUs, where system daemons tend to run, come last."""
    cpus = allowed()
    return cpus[-1 - i % len(cpus)]


def spread(n: int) -> list[int]:
    """A distinct CPU for each of n jobs (at most one per allowed CPU: fewer if n exceeds them)."""
    return [nth(i) for i in range(min(n, len(allowed())))]


def chosen() -> int | None:
    """The CPU $KSMSTRESS_CPU names (a parallel job's, or a test harness's), None when it names none."""
    value = os.environ.get(ENV, "")
    return int(value) if value.isdigit() else None


def pick(cpu: int | None = None) -> int:
    """The CPU a controlled run's processes share: `cpu` (e.g. --cpu), else $KSMSTRESS_CPU (one per parallel job),
    else the last allowed one. A value this process may not use is passed over, not an error (argtypes.cpu is
    where a user's --cpu is checked)."""
    cpus = allowed()
    if cpu is None:
        cpu = chosen()
    return cpu if cpu in cpus else cpus[-1]
