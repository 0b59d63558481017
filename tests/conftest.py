"""Shared test setup: spread xdist workers' controlled runs over the CPUs (one CPU per worker)."""

from __future__ import annotations

import os


def pytest_configure(config: object) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and "KSMSTRESS_CPU" not in os.environ:
        cpus = sorted(os.sched_getaffinity(0))
        os.environ["KSMSTRESS_CPU"] = str(cpus[int(worker[2:]) % len(cpus)])
