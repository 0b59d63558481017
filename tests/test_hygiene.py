"""No run outlives itself: whatever way a run ends (clean, failure, wall-clock hang, a task dying, Ctrl-C, SIGTERM,
the runner being SIGKILLed), none of its task processes survives and nothing is left in /dev/shm or $TMPDIR.

Processes are only ever signalled by pids this file started or collected (as psutil.Process objects, which notice
pid reuse), never by name. /dev/shm is checked only for entries named after those pids (ksmstress names its
semaphores after their creator), so another program's semaphores on a shared machine cannot fail a test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ksmstress import procs
from ksmstress.catalog import shipped_dir
from ksmstress.runner import run_one
from ksmstress.scenario import Scenario, load, parse

from .procwatch import (
    alive,
    collect_descendants,
    descendants_at_depth,
    end_session,
    shm_named_for,
    wait_all_gone,
    wait_all_reaped,
)

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = shipped_dir()

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
@pytest.fixture
def shm_unchanged() -> Iterator[set[int]]:
    """The test's processes must leave nothing in /dev/shm (fork-context semaphores are unlinked at creation and
    the arena is an anonymous mapping). Yields the set of pids to check: this process, plus whatever pids the
    test adds (a CLI subprocess and its descendants)."""
    pids = {os.getpid()}
    before = shm_named_for(pids)
    yield pids
    new = shm_named_for(pids) - before
    assert not new, f"new entries in /dev/shm: {sorted(new)}"


def test_semaphores_are_named_after_their_creator() -> None:
    """What makes shm_unchanged precise: a leaked semaphore would carry the pid of the process that made it."""
    from multiprocess.synchronize import SemLock

    procs.name_semaphores()
    assert SemLock._make_name().startswith(f"/mp-ksmstress{os.getpid()}-")


def own_children() -> dict[int, psutil.Process]:
    return {c.pid: c for c in psutil.Process().children(recursive=True)}


def new_children_after(before: dict[int, psutil.Process], grace: float = 2.0) -> list[psutil.Process]:
    """Children of this test process that were not there before and are still alive after a short grace."""
    return wait_all_gone([c for pid, c in own_children().items() if pid not in before], grace)


def task_processes(sc: Scenario) -> int:
    """How many task processes a run of `sc` forks: ksmd, reclaim, the admin if any, one per mm slot."""
    return int(sc.ksmd) + int(sc.reclaim) + int(sc.admin_unmerge_every > 0) + sc.max_mm


# -- in-process runs ----------------------------------------------------------------------------------------------
def test_clean_run_leaves_nothing(shm_unchanged: set[int]) -> None:
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
def test_failing_run_leaves_nothing(scenario: str, bug: str, cls: str, shm_unchanged: set[int]) -> None:
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


def test_wall_clock_hang_leaves_nothing(shm_unchanged: set[int]) -> None:
    before = own_children()
    t0 = time.monotonic()
    res = run_one(parse(ENDLESS, "endless.toml"), 0, timeout=1.0)
    took = time.monotonic() - t0
    assert res.verdict == "failure" and res.failure is not None
    assert res.failure["class"] == "hang"
    assert "wall clock" in res.failure["message"]
    stacks = res.failure["details"]["stacks"]  # dumped by each task's faulthandler into its memfd
    assert stacks and all("File " in text for text in stacks.values()), stacks
    assert res.steps > 0
    assert took < 15, f"a 1 s wall-clock budget took {took:.1f} s to enforce"
    assert new_children_after(before) == []


def test_tiny_timeout_leaves_nothing(shm_unchanged: set[int]) -> None:
    """timeout=0.001 on mixed: the runner notices on its first poll, or the run already ended; either way the
    verdict is clean or hang, never anything else, and nothing survives."""
    before = own_children()
    res = run_one(load(SCENARIOS / "mixed.toml"), 0, timeout=0.001)
    assert res.verdict == "clean" or (res.failure or {}).get("class") == "hang", res.failure
    assert new_children_after(before) == []


def test_task_killed_mid_run_is_a_crash_and_leaves_nothing(shm_unchanged: set[int]) -> None:
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

    def __init__(self, tmp_path: Path, scenario: str, mode: str = "controlled") -> None:
        self.tmpdir = tmp_path / "tmp"  # a private $TMPDIR: whatever the runner leaves there is visible
        self.tmpdir.mkdir()
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
                "--mode",
                mode,
            ],
            cwd=ROOT,
            stdout=self.out,
            stderr=self.err,
            start_new_session=True,
            env={**os.environ, "TMPDIR": str(self.tmpdir)},
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

    def stop_with_tasks_alive(self) -> list[psutil.Process]:
        """Freeze the runner's whole process group (SIGSTOP) at a moment when a run's tasks exist, and return
        them: an event to synchronise on, where a sleep would race a short run's end on a loaded machine. The
        caller signals the runner, then resume() lets the frozen tasks act on what follows."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            self.wait_for_forks()
            os.killpg(self.proc.pid, signal.SIGSTOP)
            tasks = alive(self.collect())
            if tasks:
                return tasks
            os.killpg(self.proc.pid, signal.SIGCONT)  # between two runs: try at the next one
        raise AssertionError(f"never caught a run with live tasks (status {self.proc.poll()}): {self.stderr()}")

    def resume(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # the whole group is gone already

    def leftover_temp_files(self) -> list[str]:
        return sorted(p.name for p in self.tmpdir.iterdir())

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def cleanup(self) -> None:
        end_session(self.proc, self.seen.values())
        self.out.close()
        self.err.close()


@pytest.mark.parametrize("scenario", ["mixed", "endless"])
def test_ctrl_c_leaves_nothing(scenario: str, tmp_path: Path, shm_unchanged: set[int]) -> None:
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
        assert r.leftover_temp_files() == []
    finally:
        shm_unchanged.update({r.proc.pid, *r.seen})
        r.cleanup()


def test_ctrl_c_while_forking_is_honoured(tmp_path: Path, shm_unchanged: set[int]) -> None:
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
            assert r.leftover_temp_files() == []
        finally:
            shm_unchanged.update({r.proc.pid, *r.seen})
            r.cleanup()


@pytest.mark.parametrize("mode", ["controlled", "free"])
@pytest.mark.parametrize("scenario", ["mixed", "endless"])
def test_sigkill_of_the_runner_leaves_nothing(
    scenario: str, mode: str, tmp_path: Path, shm_unchanged: set[int]
) -> None:
    """SIGKILL to the runner alone (not its group): the tasks must die by themselves (PR_SET_PDEATHSIG), and no
    stack-dump file may be left in $TMPDIR (there is none: the dumps go to memfds)."""
    r = Runner(tmp_path, scenario, mode)
    try:
        at_kill = r.stop_with_tasks_alive()
        os.kill(r.proc.pid, signal.SIGKILL)
        r.resume()
        assert r.proc.wait(10) == -signal.SIGKILL
        left = wait_all_gone(r.seen.values(), 10.0)
        assert left == [], (
            f"task processes survived their runner's SIGKILL: {[p.pid for p in left]} "
            f"(alive at the kill: {[p.pid for p in at_kill]})"
        )
        assert r.leftover_temp_files() == []
    finally:
        shm_unchanged.update({r.proc.pid, *r.seen})
        r.cleanup()


@pytest.mark.parametrize("mode", ["controlled", "free"])
def test_sigterm_of_the_runner_leaves_nothing(mode: str, tmp_path: Path, shm_unchanged: set[int]) -> None:
    """SIGTERM to the runner mid-run: it ends (143 once cli.main catches interrupts; until then by the signal's
    default action), its tasks die, and $TMPDIR stays empty."""
    r = Runner(tmp_path, "mixed", mode)
    try:
        r.stop_with_tasks_alive()
        os.kill(r.proc.pid, signal.SIGTERM)
        r.resume()
        code = r.proc.wait(30)
        assert code in (143, -signal.SIGTERM), f"exit status {code}; stderr:\n{r.stderr()}"
        assert "Traceback" not in r.stderr()
        left = wait_all_gone(r.seen.values(), 10.0)
        assert left == [], f"task processes survived SIGTERM: {[p.pid for p in left]}"
        assert r.leftover_temp_files() == []
    finally:
        shm_unchanged.update({r.proc.pid, *r.seen})
        r.cleanup()


# -- interrupts as a flag: in-process, Ctrl-C and SIGTERM end a run at its next safe point ----------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_under_catch_interrupts_ends_the_run_cleanly(sig: int, shm_unchanged: set[int]) -> None:
    """Under procs.catch_interrupts(), a signal sent while the run's tasks are alive (an event, not a delay) is
    raised as Interrupted by run_one's wait loop; its `finally` kills and reaps every task."""
    before = own_children()
    seen: list[psutil.Process] = []

    def sender() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            kids = [c for pid, c in own_children().items() if pid not in before]
            if len(alive(kids)) >= 3:  # ksmd, reclaim and the mm task: the run is under way
                seen.extend(kids)
                os.kill(os.getpid(), sig)
                return
            time.sleep(0.01)

    t = threading.Thread(target=sender, daemon=True)
    with pytest.raises(procs.Interrupted) as exc:
        with procs.catch_interrupts():
            t.start()
            run_one(parse(ENDLESS, "endless.toml"), 0, timeout=60.0)
    t.join(5)
    assert seen, "never saw the run's task processes"
    assert exc.value.signum == sig and exc.value.exit_status == 128 + sig
    assert procs.interrupted() is None
    assert new_children_after(before) == []


def test_a_signal_after_the_last_safe_point_is_not_lost() -> None:
    """catch_interrupts() raises on leaving its block for a signal no safe point saw (the run that has just
    finished does not swallow it)."""
    before = signal.getsignal(signal.SIGINT)  # not necessarily Python's default: a job started with & ignores it
    with pytest.raises(procs.Interrupted):
        with procs.catch_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # let the handler run (it only sets the flag)
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_during_the_imports_is_one_line_and_130(tmp_path: Path) -> None:
    """The console script's entry point (ksmstress.entry:main) imports the CLI inside its handler: a Ctrl-C that
    lands while numpy and the model load is `ksmstress: interrupted`, exit 130, no traceback. The interrupt is
    injected at the import itself, so the test does not depend on timing."""
    code = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name == 'cli' or name.endswith('ksmstress.cli'):\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "from ksmstress.entry import main\n"
        "sys.exit(main())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 130, r.stderr
    assert r.stderr == "ksmstress: interrupted\n"


def test_sigkill_of_an_xdist_worker_leaves_nothing_and_no_hang(tmp_path: Path) -> None:
    """`pytest -n 2` whose worker is SIGKILLed mid-`ksm_run`: the run's tasks (forked from the worker, so holding
    its execnet pipes) die with it, the controller sees the worker gone and finishes instead of hanging, and no
    process is left. The plugin starts no process other than run_one's tasks."""
    (tmp_path / "endless.toml").write_text(ENDLESS)
    (tmp_path / "test_endless.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('i', [0, 1])\n"
        "def test_endless(ksm_run, i):\n"
        "    ksm_run('endless.toml', timeout=6.0)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-n", "2", "-q", "-p", "no:cacheprovider", "--max-worker-restart=0",
         "test_endless.py"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    seen: dict[int, psutil.Process] = {}
    try:
        worker = None
        deadline = time.monotonic() + 60
        while worker is None and time.monotonic() < deadline:
            # a task seen a moment ago may have ended its run already (a loaded machine): take a live one's worker
            for t in descendants_at_depth(p.pid, seen, 2, timeout=60):
                with contextlib.suppress(psutil.NoSuchProcess):
                    worker = psutil.Process(t).parent()
                    if worker is not None:
                        break
        assert worker is not None, "no xdist worker ever ran a scenario"
        collect_descendants(p.pid, seen)
        worker.kill()
        try:
            out, _ = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            raise AssertionError("pytest hung after one xdist worker was SIGKILLed") from None
        # xdist says "crashed" or names the worker; killed before its first test it says "node down"
        assert any(w in out for w in (b"crashed", b"worker", b"node down")), out.decode()
        left = wait_all_reaped(seen.values(), 10)
        assert left == [], f"left behind: {[(q.pid, q.status()) for q in left if q.is_running()]}"
    finally:
        end_session(p, seen.values())
