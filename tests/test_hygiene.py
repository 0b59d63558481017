"""No run outlives itself: whatever way a run ends (clean, failure, wall-clock hang, a task dying, Ctrl-C, the runner
being SIGKILLed), none of its task processes survives and nothing is left in /dev/shm.

Processes are only ever signalled by pids this file started or collected (as psutil.Process objects, which notice
pid reuse), never by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import psutil
import pytest

from ksmstress.catalog import shipped_dir
from ksmstress.runner import run_one
from ksmstress.scenario import Scenario, load, parse

from .procwatch import alive, collect_descendants, wait_all_gone

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = shipped_dir()
SHM = Path("/dev/shm")

# One mm task that sleeps for tens of millions of scheduling points: it can only end by the wall clock.
ENDLESS = """
name = "endless"
max_steps = 50000000
[arena]
page_size = 32
vpages = 8
max_vmas = 4
max_mm = 2
[[task]]
region = 2
ops = 0
script = ["fill", "sleep:40000000"]
max_forks = 0
"""


# -- helpers ------------------------------------------------------------------------------------------------------
def shm_entries() -> set[str]:
    return set(os.listdir(SHM)) if SHM.is_dir() else set()


@pytest.fixture
def shm_unchanged() -> Iterator[None]:
    """The test must leave /dev/shm as it found it (fork-context semaphores are unlinked at creation and the
    arena is an anonymous mapping, so there should never be even a transient sem.mp-* left)."""
    before = shm_entries()
    yield
    new = shm_entries() - before
    assert not new, f"new entries in /dev/shm: {sorted(new)}"


def own_children() -> dict[int, psutil.Process]:
    return {c.pid: c for c in psutil.Process().children(recursive=True)}


def new_children_after(before: dict[int, psutil.Process], grace: float = 2.0) -> list[psutil.Process]:
    """Children of this test process that were not there before and are still alive after a short grace."""
    return wait_all_gone([c for pid, c in own_children().items() if pid not in before], grace)


def task_processes(sc: Scenario) -> int:
    """How many task processes a run of `sc` forks: ksmd, reclaim, the admin if any, one per mm slot."""
    return int(sc.ksmd) + int(sc.reclaim) + int(sc.admin_unmerge_every > 0) + sc.max_mm


def kill_leftovers(procs: Iterable[psutil.Process]) -> None:
    for p in alive(procs):
        try:
            p.kill()  # psutil refuses if the pid was reused by another process
        except psutil.Error:
            pass


# -- in-process runs ----------------------------------------------------------------------------------------------
def test_clean_run_leaves_nothing(shm_unchanged: None) -> None:
    before = own_children()
    res = run_one(load(SCENARIOS / "mixed.toml"), 0)
    assert res.verdict == "clean", res.failure
    assert new_children_after(before) == []


@pytest.mark.parametrize(
    ("scenario", "bug", "cls"),
    [
        ("seed-unmap-race", "no-anon-vma-ref", "use-after-free"),
        ("seed-unmap-race", "free-on-empty-list", "use-after-free"),
        ("seed-fork-race", "single-pass-walk", "traversal"),
    ],
)
def test_failing_run_leaves_nothing(scenario: str, bug: str, cls: str, shm_unchanged: None) -> None:
    """A detector stops the run with the other tasks parked mid-operation: they are killed and reaped."""
    before = own_children()
    sc = load(SCENARIOS / f"{scenario}.toml")
    for seed in range(30):
        res = run_one(sc, seed, bugs=[bug])
        if res.verdict == "failure":
            break
    assert res.verdict == "failure" and res.failure is not None
    assert res.failure["class"] == cls
    assert new_children_after(before) == []


def test_wall_clock_hang_leaves_nothing(shm_unchanged: None) -> None:
    before = own_children()
    t0 = time.monotonic()
    res = run_one(parse(ENDLESS, "endless.toml"), 0, timeout=1.0)
    took = time.monotonic() - t0
    assert res.verdict == "failure" and res.failure is not None
    assert res.failure["class"] == "hang"
    assert "wall clock" in res.failure["message"]
    assert res.steps > 0
    assert took < 15, f"a 1 s wall-clock budget took {took:.1f} s to enforce"
    assert new_children_after(before) == []


def test_tiny_timeout_leaves_nothing(shm_unchanged: None) -> None:
    """timeout=0.001 on mixed: the runner notices on its first poll, or the run already ended; either way the
    verdict is clean or hang, never anything else, and nothing survives."""
    before = own_children()
    res = run_one(load(SCENARIOS / "mixed.toml"), 0, timeout=0.001)
    assert res.verdict == "clean" or (res.failure or {}).get("class") == "hang", res.failure
    assert new_children_after(before) == []


def test_task_killed_mid_run_is_a_crash_and_leaves_nothing(shm_unchanged: None) -> None:
    """SIGKILL one task process of a running (endless) run: the runner reports `crash` and kills the rest."""
    before = own_children()
    victims: list[psutil.Process] = []
    stop = threading.Event()

    def assassin() -> None:
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            kids = [c for pid, c in own_children().items() if pid not in before]
            if len(kids) >= 3:  # ksmd, reclaim and the mm task
                time.sleep(0.3)  # let the run get going
                victims.append(kids[-1])
                try:
                    kids[-1].kill()
                except psutil.NoSuchProcess:
                    pass
                return
            time.sleep(0.01)

    t = threading.Thread(target=assassin, daemon=True)
    t.start()
    try:
        res = run_one(parse(ENDLESS, "endless.toml"), 0, timeout=20.0)
    finally:
        stop.set()
        t.join(5)
    assert victims, "never saw the run's task processes"
    assert res.verdict == "failure" and res.failure is not None
    assert res.failure["class"] == "crash", res.failure
    assert "died" in res.failure["message"]
    assert new_children_after(before) == []


# -- the CLI as a separate process: Ctrl-C and SIGKILL ------------------------------------------------------------
class Runner:
    """`ksmstress run SCENARIO --runs 1000` in its own session, with every descendant it is seen to have.

    `mixed` is a stream of short runs. `endless` is one run that cannot end by itself: its tasks would hand the CPU
    to each other forever without a runner, so only their own death (PR_SET_PDEATHSIG) or the runner's kill ends
    them. (Orphaned `mixed` tasks could simply finish their run, hiding a missing PDEATHSIG.)
    """

    def __init__(self, tmp_path: Path, scenario: str) -> None:
        if scenario == "endless":
            (tmp_path / "endless.toml").write_text(ENDLESS)
            scenario = str(tmp_path / "endless.toml")
        else:
            scenario = str(SCENARIOS / f"{scenario}.toml")
        self.ntasks = task_processes(load(scenario))
        self.out = (tmp_path / "stdout").open("w+")
        self.err = (tmp_path / "stderr").open("w+")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ksmstress.cli",
                "run",
                scenario,
                "--runs",
                "1000",
                "--timeout",
                "120",
                "--artifacts",
                str(tmp_path / "artifacts"),
            ],
            cwd=ROOT,
            stdout=self.out,
            stderr=self.err,
            start_new_session=True,
        )
        self.seen: dict[int, psutil.Process] = {}

    def collect(self) -> list[psutil.Process]:
        return collect_descendants(self.proc.pid, self.seen)

    def watch(self, seconds: float) -> None:
        """Collect descendants for `seconds`, then go on until a run has all its task processes forked (so that
        the signal that follows lands mid-run, not in the middle of the forks: see the fork test below)."""
        deadline = time.monotonic() + seconds
        while self.proc.poll() is None:
            kids = self.collect()
            if time.monotonic() > deadline and len(kids) >= self.ntasks:
                time.sleep(0.02)
                self.collect()
                return
            if time.monotonic() > deadline + 20:
                raise AssertionError("the runner never had its task processes up")
            time.sleep(0.01)
        raise AssertionError(f"the runner ended early with status {self.proc.returncode}: {self.stderr()}")

    def wait_for_forks(self) -> None:
        """Return as soon as a fresh run has begun forking its tasks (none alive, then at least one)."""
        deadline = time.monotonic() + 20
        while self.collect() and time.monotonic() < deadline:
            pass
        while not self.collect() and time.monotonic() < deadline:
            pass
        if time.monotonic() >= deadline or self.proc.poll() is not None:
            raise AssertionError(f"never saw a run start (status {self.proc.poll()}): {self.stderr()}")

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session/group this test created
            self.proc.wait(10)
        kill_leftovers(self.seen.values())
        self.out.close()
        self.err.close()


@pytest.mark.parametrize("scenario", ["mixed", "endless"])
def test_ctrl_c_leaves_nothing(scenario: str, tmp_path: Path, shm_unchanged: None) -> None:
    r = Runner(tmp_path, scenario)
    try:
        r.watch(2.0 if scenario == "mixed" else 1.0)
        os.killpg(r.proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C: the whole foreground group
        code = r.proc.wait(30)
        err = r.stderr()
        assert code == 130, f"exit status {code}; stderr:\n{err}"
        assert err.strip().splitlines()[-1] == "ksmstress: interrupted"
        assert "cli.py" not in err, f"the runner printed a traceback:\n{err}"
        assert "Traceback" not in err, err  # SIGINT is blocked across the forks, then ignored by the tasks
        assert r.seen, "no task process was ever seen"
        left = wait_all_gone(r.seen.values(), 5.0)
        assert left == [], f"task processes survived Ctrl-C: {[p.pid for p in left]}"
        assert not (tmp_path / "artifacts").exists(), "an interrupted clean run wrote an artifact"
    finally:
        r.cleanup()


def test_ctrl_c_while_forking_is_honoured(tmp_path: Path, shm_unchanged: None) -> None:
    """Ctrl-C at the start of a run, while its task processes are being forked: the runner must still stop
    (exit 130 within a few seconds) and leave nothing behind. Three tries, each at a fresh run's first fork."""
    for attempt in range(3):
        d = tmp_path / f"try{attempt}"
        d.mkdir()
        r = Runner(d, "mixed")
        try:
            time.sleep(0.5)
            r.wait_for_forks()
            os.killpg(r.proc.pid, signal.SIGINT)
            try:
                code = r.proc.wait(6)  # an honoured Ctrl-C ends the runner in well under a second
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"try {attempt}: the runner ignored Ctrl-C during a fork; stderr:\n{r.stderr()}"
                ) from None
            err = r.stderr()
            assert code == 130, f"try {attempt}: exit status {code}; stderr:\n{err}"
            assert "Traceback" not in err, f"try {attempt}: traceback on Ctrl-C:\n{err}"
            left = wait_all_gone(r.seen.values(), 5.0)
            assert left == [], f"task processes survived Ctrl-C: {[p.pid for p in left]}"
        finally:
            r.cleanup()


@pytest.mark.parametrize("scenario", ["mixed", "endless"])
def test_sigkill_of_the_runner_leaves_nothing(scenario: str, tmp_path: Path, shm_unchanged: None) -> None:
    """SIGKILL to the runner alone (not its group): the tasks must die by themselves (PR_SET_PDEATHSIG)."""
    r = Runner(tmp_path, scenario)
    try:
        r.watch(2.0 if scenario == "mixed" else 1.0)
        at_kill = alive(r.collect())
        assert at_kill, "no task process alive at the kill"
        os.kill(r.proc.pid, signal.SIGKILL)
        assert r.proc.wait(10) == -signal.SIGKILL
        assert r.seen
        left = wait_all_gone(r.seen.values(), 10.0)
        assert left == [], (
            f"task processes survived their runner's SIGKILL: {[p.pid for p in left]} "
            f"(alive at the kill: {[p.pid for p in at_kill]})"
        )
    finally:
        r.cleanup()
