"""Shared test setup: spread xdist workers' controlled runs over the CPUs (one CPU per worker), by the rule the
pool and the plugin use (ksmstress.cpus)."""

from __future__ import annotations

import os

from ksmstress import cpus


def pytest_configure(config: object) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit() and cpus.ENV not in os.environ:
        os.environ[cpus.ENV] = str(cpus.nth(int(worker[2:])))
