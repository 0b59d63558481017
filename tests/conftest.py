"""Shared test setup: spread xdist workers' controlled runs over the CPUs (one CPU per worker), by the rule the
pool and the plugin use (ksmstress.cpus); the failing artifacts several test files replay."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ksmstress import cpus


def pytest_configure(config: object) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit() and cpus.ENV not in os.environ:
        os.environ[cpus.ENV] = str(cpus.nth(int(worker[2:])))


# -- a failing run, shared --------------------------------------------------------------------------------------
FAILING_VARIANTS = {  # three catalogue variants (scenario, bug), by the class each fails with
    "use-after-free": ("seed-unmap-race", "no-anon-vma-ref"),
    "traversal": ("seed-fork-race", "single-pass-walk"),
    "writable-ksm": ("merge-write-race", "merge-without-wrprotect"),
}


def first_failure(scenario: str, bug: str, directory: Path) -> Path:
    """The artifact of the first failing seed of `scenario` with `bug` within 50 (the loop `ksmstress run`
    runs)."""
    from ksmstress.report import write_artifact
    from ksmstress.runner import run_seeds
    from ksmstress.scenario import load, resolve

    sc = load(resolve([scenario], [])[0])
    for res in run_seeds(sc, range(50), "random", [bug]):
        if res.verdict == "failure":
            return write_artifact(directory, sc, res, None)
    raise AssertionError(f"{scenario} --bug {bug}: no failure in 50 seeds")


@pytest.fixture(scope="session")
def failing_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One artifact per FAILING_VARIANTS class, made once per test process: test_explain and test_cli read them
    (and write any altered copy elsewhere), so none of them runs the same failing seeds again."""
    d = tmp_path_factory.mktemp("failing")
    return {cls: first_failure(sc, bug, d) for cls, (sc, bug) in FAILING_VARIANTS.items()}
