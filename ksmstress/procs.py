"""Process lifecycle, one way for every part that forks: children that die with their parent, Ctrl-C and SIGTERM
that never land in the middle of a statement, killing and reaping by pid, and orphans adopted and reaped.

Why one module: the runner (a run's task processes), the worker pool (soak and bench) and the kernel oracle's
process tree all fork, and each had its own copy of the death signal, of the signal mask around fork and of the
kill-and-reap loop; the copies drifted (soak's workers had no death signal and outlived a SIGTERMed soak).

The rules, in the order a fork meets them:

- `fork_guard()` around every fork: SIGINT and SIGTERM wait until the fork is done. A signal handled inside
  os.fork() runs in CPython's after-fork hooks, where an exception is reported as "unraisable" and dropped.
- `in_child(parent)` first thing in every forked child: Ctrl-C (sent by a terminal to the whole foreground group)
  is ignored, since the parent decides what an interrupt means; SIGTERM takes its default action; and the child
  gets SIGKILL when its parent dies (PR_SET_PDEATHSIG), or exits at once if the parent is already gone.
- `catch_interrupts()` around a command: SIGINT and SIGTERM only set a flag, which `check_interrupt()` turns
  into `Interrupted` (a KeyboardInterrupt) at the safe points the loops choose. A KeyboardInterrupt raised
  wherever the signal lands can be swallowed ("Exception ignored in: <weakref callback>") and the run goes on.
- `subreaper()` around a parent whose children fork: an orphaned grandchild is reparented here, not to PID 1
  (which, in a container, may never reap it), and `reap_adopted()` collects it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Any

import multiprocess.process

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 1, 36, 37
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # what a user or a supervisor sends to end a command

_libc = ctypes.CDLL(None, use_errno=True)
_before_fork: set[signal.Signals] = set()  # the signal mask fork_guard() replaced: a child restores it
_pending: int | None = None  # the first SIGINT/SIGTERM caught by catch_interrupts() and not yet taken


# -- interrupts as a flag -------------------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: raised at a safe point by check_interrupt(). A KeyboardInterrupt, so code that
    already handles Ctrl-C (pytest, a `finally` that kills a run's tasks) handles SIGTERM the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return exit_status(self.signum)


def exit_status(signum: int) -> int:
    """The shell's status for a command ended by `signum`: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _pending is None:  # the first one says why we stop; a second Ctrl-C must not cut the clean-up short
        _pending = signum


@contextlib.contextmanager
def catch_interrupts(signals: Iterable[int] = STOP_SIGNALS) -> Iterator[None]:
    """For the block's life, `signals` only set a flag; check_interrupt() raises Interrupted at safe points.

    On leaving the block normally, a signal that came after the last safe point is raised then, so no interrupt is
    ever lost. Nested blocks share the flag. Outside the main thread (where Python runs handlers) this does
    nothing, and signals keep their current handling."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer = signal.getsignal(signal.SIGINT) is _on_signal or signal.getsignal(signal.SIGTERM) is _on_signal
    if not outer:
        _pending = None
    old = {s: signal.signal(s, _on_signal) for s in signals}
    try:
        yield
        check_interrupt()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def interrupted() -> int | None:
    """The signal caught under catch_interrupts() and not yet taken, if any (it stays pending)."""
    return _pending


def take_interrupt() -> int | None:
    """The pending signal, now handled by the caller (check_interrupt() will not raise for it)."""
    global _pending
    sig, _pending = _pending, None
    return sig


def repost(signum: int) -> None:
    """Make a taken interrupt pending again: for code that must finish one thing (send a failure it found) before
    stopping at the next safe point."""
    global _pending
    if _pending is None:
        _pending = signum


def check_interrupt() -> None:
    """A safe point: raise Interrupted if SIGINT or SIGTERM arrived under catch_interrupts()."""
    sig = take_interrupt()
    if sig is not None:
        raise Interrupted(sig)


# -- forking ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def blocked(signals: Iterable[int] = STOP_SIGNALS) -> Iterator[set[signal.Signals]]:
    """Hold `signals` (blocked, pending) for the block: delivered when it ends. Yields the mask it replaced."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))
    try:
        yield old
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def fork_guard(signals: Iterable[int] = STOP_SIGNALS) -> Iterator[None]:
    """Hold `signals` while forking: delivered after the last fork, in ordinary code (in_child() restores the
    mask this replaced, in each child)."""
    global _before_fork
    with blocked(signals) as old:
        _before_fork = old
        yield


def die_with_parent(parent: int) -> None:
    """SIGKILL when `parent` dies, even by SIGKILL; exit now if it already has (the prctl came too late)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def in_child(parent: int) -> None:
    """First thing in a child forked under fork_guard(): Ctrl-C ignored (the parent's to handle), SIGTERM's
    default action, no interrupt inherited as pending, death with the parent, then the signals unblocked."""
    global _pending
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _pending = None
    die_with_parent(parent)
    signal.pthread_sigmask(signal.SIG_SETMASK, _before_fork)


def name_semaphores() -> None:
    """Name this process's multiprocess semaphores after its pid (/dev/shm/sem.mp-ksmstress<PID>-...).

    They are unlinked as soon as they are created, but a SIGKILL between the two would leave one: the name says
    whose it is, so a test (or a user) can tell ours from another program's. multiprocess reads the prefix from
    the current process's private config at every creation; there is no public setting."""
    multiprocess.process.current_process()._config["semprefix"] = f"/mp-ksmstress{os.getpid()}"


# -- signalling, killing, reaping ---------------------------------------------------------------------------
def signal_pid(pid: int, sig: int) -> bool:
    """Send `sig` to `pid`; False if it no longer exists."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def signal_live(procs: Iterable[Any], sig: int) -> None:
    """`sig` to every started, not yet reaped multiprocess.Process of `procs` (by pid: only what we started)."""
    for p in procs:
        if p.pid is not None and p.exitcode is None:
            signal_pid(p.pid, sig)


def kill_and_join(procs: Iterable[Any]) -> None:
    """SIGKILL every live process of `procs` and reap them all: nothing of theirs needs to run any more."""
    procs = list(procs)
    signal_live(procs, signal.SIGKILL)
    for p in procs:
        if p.pid is not None:
            p.join()


def stop_and_join(procs: Iterable[Any], grace: float) -> None:
    """SIGTERM the live ones, give them `grace` seconds to clean up (kill and reap their own children), then
    SIGKILL whoever is left; every one is reaped."""
    procs = [p for p in procs if p.pid is not None]
    signal_live(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    kill_and_join(procs)


def gone(pid: int) -> bool:
    """Exited (zombie or reaped): its memory has been released (exit_mm runs before a task turns zombie)."""
    st = _stat(pid)
    return st is None or st[0] in ("Z", "X")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) from /proc/PID/stat, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def reap(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited, reaping it if it is (or has become, as an orphan) this process's child."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r, _ = os.waitpid(pid, os.WNOHANG)
            if r == pid:
                return True
        except ChildProcessError:
            if gone(pid):
                # someone else's child (its parent reaps it) or already reaped; if it is adopted by us later, as a
                # zombie, a later reap or sweep collects it
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)


def sweep(pids: Iterable[int], timeout: float = 1.0) -> None:
    """Reap any of `pids` that became this process's child late (an orphan adopted after it was last checked)."""
    pids = list(pids)
    me, deadline = os.getpid(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        ours = [pid for pid in pids if (st := _stat(pid)) is not None and st[1] == me]
        for pid in ours:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        if not ours:
            return
        time.sleep(0.005)


def children() -> set[int]:
    """The pids whose parent is this process (from /proc: this kernel has no /proc/PID/task/TID/children)."""
    me, out = os.getpid(), set()
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None and st[1] == me:
            out.add(int(name))
    return out


def reap_adopted(ours: Iterable[int], timeout: float = 2.0) -> list[int]:
    """Reap every child of this process that is not one of `ours` (the children it started and reaps itself):
    under subreaper(), those are orphans of our children, reparented here. They die by their own death signal;
    one still running after `timeout` is SIGKILLed (it is our child now). Returns the pids reaped."""
    keep = set(ours)
    adopted = children() - keep
    for pid in adopted:
        if not reap(pid, timeout):
            signal_pid(pid, signal.SIGKILL)
            reap(pid, timeout)
    return sorted(adopted)


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """PR_SET_CHILD_SUBREAPER for the block: orphaned descendants are reparented to this process (to be reaped
    with reap_adopted() or sweep()), not to PID 1. The previous setting is restored after."""
    buf = ctypes.c_int(0)
    _libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(buf), 0, 0, 0)
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        _libc.prctl(PR_SET_CHILD_SUBREAPER, buf.value, 0, 0, 0)
