"""The running kernel's KSM knobs (/sys/kernel/mm/ksm): availability, a cross-process lock, and a session that
sets 2.6.33-equivalent settings and puts every writable value back, also on an exception, Ctrl-C or SIGTERM.

KSM is one global daemon: two runs at once would count each other's pages, so every use goes through one file
lock, and a machine where some other process has MADV_MERGEABLE memory is "busy" (its pages would be counted
too). Later kernels added behaviour 2.6.33 lacks; the session switches it off for the run (`SETTINGS_2633`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from .. import procs

KSM_DIR = Path("/sys/kernel/mm/ksm")
LOCK_DIRS = (Path("/run/lock"), Path("/tmp"))
LOCK_NAME = "ksmstress-kernel.lock"
SAVED_NAME = "ksmstress-kernel.saved.json"  # a live session's originals: a SIGKILLed run's are restored by the next
COUNTERS = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile")
INT_MAX = 2**31 - 1

# (file, value, why): what a later kernel does differently from 2.6.33, switched off for the run
SETTINGS_2633: tuple[tuple[str, str, str], ...] = (
    ("advisor_mode", "none", "no scan-rate advisor (6.9): pages_to_scan stays as set"),
    ("max_page_sharing", str(INT_MAX), "no stable_node chains (4.13): one KSM page per content, any sharing"),
    ("use_zero_pages", "0", "no merging of zero pages into the zero page (4.14)"),
    ("merge_across_nodes", "1", "one stable tree for all NUMA nodes (3.9), as 2.6.33"),
    ("smart_scan", "0", "no skipping of pages that did not merge lately (6.7): every page every pass"),
)


class Unavailable(Exception):
    """The kernel's KSM cannot be used here; the message says why (the run is `skipped`, exit 0)."""


class RestoreError(RuntimeError):
    """A sysfs value could not be put back: the message names each file, its value and the original."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so every `finally` (process reaping, sysfs restore) runs."""


def _path(name: str) -> Path:
    return KSM_DIR / name


def read(name: str) -> str:
    """A knob's value; a choice file ("[none] scan-time") reads as its selected word."""
    raw = _path(name).read_text().strip()
    if "[" in raw and "]" in raw:
        return raw[raw.index("[") + 1 : raw.index("]")]
    return raw


def read_int(name: str) -> int:
    return int(read(name))


def write(name: str, value: str | int) -> None:
    """Write a knob; an error names the file and the value (the kernel's errno says why)."""
    try:
        with open(_path(name), "w") as f:
            f.write(str(value))
    except OSError as e:
        raise OSError(e.errno, f"cannot write {value} to {_path(name)}: {os.strerror(e.errno or 0)}") from None


def present(name: str) -> bool:
    return _path(name).exists()


def writable() -> list[str]:
    """Every file of the KSM directory that has a write bit: the values a session saves and restores."""
    return sorted(p.name for p in KSM_DIR.iterdir() if p.is_file() and p.stat().st_mode & 0o200)


def snapshot() -> dict[str, str]:
    """Every readable value (writable knobs and read-only statistics)."""
    out = {}
    for p in sorted(KSM_DIR.iterdir()):
        with contextlib.suppress(OSError):
            out[p.name] = read(p.name)
    return out


def counters() -> dict[str, int]:
    out = {name: read_int(name) for name in COUNTERS if present(name)}
    out["full_scans"] = read_int("full_scans")
    return out


def availability() -> str | None:
    """Why the kernel's KSM cannot be used by this process, or None."""
    if not KSM_DIR.is_dir():
        return f"no {KSM_DIR} (a kernel without CONFIG_KSM, or not Linux)"
    if os.geteuid() != 0:
        return "not root: the KSM knobs in /sys/kernel/mm/ksm are writable by root only"
    if not os.access(_path("run"), os.W_OK):
        return f"{_path('run')} is not writable (read-only sysfs, e.g. in a container)"
    return None


def mergeable_processes(exclude: set[int] | frozenset[int] = frozenset()) -> list[str]:
    """Processes (other than `exclude`) with memory KSM would scan: "PID (comm)" each, from /proc/PID/ksm_stat."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in exclude:
            continue
        try:
            stat = (d / "ksm_stat").read_text()
        except OSError:
            continue
        fields = dict(line.split(None, 1) if " " in line else (line, "") for line in stat.splitlines())
        items = fields.get("ksm_rmap_items", "0").strip()
        if "ksm_mergeable: yes" in stat or "ksm_merge_any: yes" in stat or items not in ("", "0"):
            with contextlib.suppress(OSError):
                out.append(f"{d.name} ({(d / 'comm').read_text().strip()})")
    return out


def busy_reason() -> str | None:
    """Why KSM is in use by someone else (their pages would be counted with ours), or None."""
    c = counters()
    used = {k: v for k, v in c.items() if k != "full_scans" and v}
    if used:
        return "KSM busy: " + ", ".join(f"{k}={v}" for k, v in used.items()) + " before the run"
    procs = mergeable_processes({os.getpid()})
    if procs:
        return "KSM busy: mergeable memory in " + ", ".join(procs[:5]) + (" ..." if len(procs) > 5 else "")
    return None


# -- the lock ------------------------------------------------------------------------------------------------
def lock_path() -> Path:
    for d in LOCK_DIRS:
        if d.is_dir() and os.access(d, os.W_OK):
            return d / LOCK_NAME
    return Path(LOCK_NAME)


@contextlib.contextmanager
def ksm_lock(timeout: float = 120.0) -> Iterator[Path]:
    """Hold the cross-process lock on the kernel's KSM (flock: released by the kernel if the holder dies)."""
    path = lock_path()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"KSM busy: another ksmstress kernel run has held {path} for {timeout:.0f}s"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def saved_path() -> Path:
    return lock_path().with_name(SAVED_NAME)


def recover() -> dict[str, str] | None:
    """Restore the originals a run that could not clean up (SIGKILL, power cut) left beside the lock; the caller
    holds the lock. Returns what was restored, or None when no run left anything."""
    p = saved_path()
    try:
        original = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(original, dict):
        return None
    restore({str(k): str(v) for k, v in original.items() if present(str(k))})
    p.unlink(missing_ok=True)
    return original


# -- the session ---------------------------------------------------------------------------------------------
@dataclass
class Session:
    """A run's hold on the kernel's KSM: the originals it will restore and the settings it applied."""

    original: dict[str, str]
    applied: list[tuple[str, str, str, str]] = field(default_factory=list)  # (file, value, was, why)
    touched: bool = False
    recovered: bool = False  # a killed run's values were put back first

    def set(self, name: str, value: str | int, why: str = "") -> None:
        was = read(name)
        write(name, value)
        self.touched = True
        if why:
            self.applied.append((name, str(value), was, why))

    def run(self, value: int) -> None:
        """echo VALUE > run: returns once ksmd is out of its batch (run_store takes ksm_thread_mutex)."""
        write("run", value)
        self.touched = True

    def describe(self) -> str:
        parts = [f"{n}={v}" + (f" (was {w})" if w != v else "") for n, v, w, _why in self.applied]
        return ", ".join(parts)


def restore(original: dict[str, str], touched: bool = True) -> None:
    """Put every writable value back: run=2 first (our pages unmerged, so max_page_sharing and
    merge_across_nodes accept writes), the knobs, then advisor_mode (it refuses pages_to_scan writes while on),
    then run. Raises RestoreError naming whatever could not be put back."""
    errors = []
    if touched:
        with contextlib.suppress(OSError):
            write("run", 2)
    order = [n for n in original if n not in ("run", "advisor_mode")] + [
        n for n in ("advisor_mode", "run") if n in original
    ]
    for name in order:
        try:
            if read(name) != original[name]:
                write(name, original[name])
        except OSError as e:
            errors.append(str(e))
    for name in order:
        with contextlib.suppress(OSError):
            if (now := read(name)) != original[name]:
                errors.append(f"{name} is {now}, was {original[name]}")
    if errors:
        raise RestoreError("could not restore /sys/kernel/mm/ksm: " + "; ".join(dict.fromkeys(errors)))


@contextlib.contextmanager
def _signals_as_exceptions() -> Iterator[None]:
    """SIGTERM raises Terminated in the main thread for the session's life (Ctrl-C already raises)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the restore is done (a second Ctrl-C must not leave it half-way)."""
    with procs.blocked():
        yield


@contextlib.contextmanager
def ksm_session(pages_to_scan: int = 10_000, sleep_millisecs: int = 0, lock_timeout: float = 120.0,
                native: bool = False) -> Iterator[Session]:
    """Own the kernel's KSM for a run, with 2.6.33-equivalent settings; every writable value is restored after.

    Raises Unavailable (before touching anything) when the kernel cannot be used. On entry: run=2 (clears any
    state, full_scans=0), the SETTINGS_2633 that this kernel has, ksmd's speed (pages_to_scan, sleep_millisecs:
    settled counters do not depend on them), and run=0 (ksmd paused: the run drives it phase by phase).
    `native` keeps the later kernel's own behaviour (only the advisor is switched off, as it rewrites
    pages_to_scan): the disagreements that remain are then the later features' doing.
    """
    reason = availability()
    if reason:
        raise Unavailable(reason)
    with ksm_lock(lock_timeout):
        recovered = recover()
        reason = busy_reason()
        if reason:
            raise Unavailable(reason)
        with _signals_as_exceptions():
            s = Session(original={n: read(n) for n in writable()}, recovered=recovered is not None)
            saved = saved_path()
            saved.write_text(json.dumps(s.original))
            try:
                try:
                    s.run(2)
                    for name, value, why in SETTINGS_2633:
                        if present(name) and (not native or name == "advisor_mode"):
                            s.set(name, value, why)
                    s.set("pages_to_scan", pages_to_scan, "ksmd speed (settled counters do not depend on it)")
                    s.set("sleep_millisecs", sleep_millisecs, "ksmd speed")
                    s.run(0)
                except OSError as e:
                    raise Unavailable(str(e)) from None
                yield s
            finally:
                with _signals_blocked():
                    restore(s.original, s.touched)
                    saved.unlink(missing_ok=True)
