"""The kernel's side of a workload: one real process per workload process, real pages, the real ksmd.

Each process is forked (the initial ones from here, a forked workload process from its parent, so the child
really shares its parent's pages copy-on-write), maps its regions with mmap(MAP_PRIVATE|MAP_ANONYMOUS) and
madvise(MADV_MERGEABLE) through libc, and then waits for commands on its own socket (write patterns, fork,
madvise, munmap, exit). ksmd is paused (run=0) while a phase's actions run, so the kernel starts every settle from
the same state as the model does, whatever ksmd's timing; settling is run=1 until full_scans has advanced by
`min_scans` and two snapshots taken with ksmd paused, a full scan apart, agree.

No process outlives a run: every process is killed and reaped (this process is a child subreaper for the
run's life, so a workload process whose parent exited is reaped here); an initial process dies with this one
(PR_SET_PDEATHSIG), and every process exits when its socket to this one reaches EOF, which is when this one dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from ..checks.content import pattern_bytes
from . import sysfs
from .model import Settled
from .workload import Action, Figures, Workload

PAGE_SIZE = mmap.PAGESIZE
MADV_MERGEABLE, MADV_UNMERGEABLE, MADV_NOHUGEPAGE = 12, 13, 15
PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 1, 36, 37
MSG_MAX = 1 << 16
IDLE_AFTER = 0.1  # seconds without a full scan, with nothing mergeable: ksmd has stopped (empty mm list)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MAP_FAILED = ctypes.c_void_p(-1).value


class KernelSideError(RuntimeError):
    """A workload process failed or did not answer: the kernel side could not run the workload as written."""


def merging_pages(pid: int) -> int | None:
    """/proc/PID/ksm_merging_pages (Linux 5.19+): the mm's rmap_items in the stable tree; None where absent."""
    try:
        with open(f"/proc/{pid}/ksm_merging_pages") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def has_merging_pages() -> bool:
    return os.path.exists("/proc/self/ksm_merging_pages")


# -- the workload process ------------------------------------------------------------------------------------
def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


class _Worker:
    """What runs inside one workload process: its mappings and its command loop. Never returns (os._exit)."""

    def __init__(self, sock: socket.socket, regions: list[tuple[int, int]], keep: dict[int, socket.socket]) -> None:
        self.sock = sock
        self.regions = regions  # (address, pages) per region
        self.keep = keep  # sockets of the processes this one will fork, directly or through its children
        self.pages: dict[int, bytes] = {}

    @staticmethod
    def map_regions(regions: list[tuple[int, bool]]) -> list[tuple[int, int]]:
        out = []
        for pages, mergeable in regions:
            n = pages * PAGE_SIZE
            addr = _libc.mmap(None, n, PROT_RW, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
            if addr in (None, MAP_FAILED):
                raise OSError(ctypes.get_errno(), "mmap failed")
            # 2.6.33 has no transparent huge pages: keep every page a small page
            _libc.madvise(addr, n, MADV_NOHUGEPAGE)
            if mergeable:
                _check(_libc.madvise(addr, n, MADV_MERGEABLE), "madvise(MADV_MERGEABLE)")
            out.append((addr, pages))
        return out

    def page(self, p: int) -> bytes:
        if p not in self.pages:
            self.pages[p] = pattern_bytes(p, PAGE_SIZE).tobytes()
        return self.pages[p]

    def send(self, *msg: Any) -> None:
        self.sock.send(json.dumps(msg).encode())

    def loop(self) -> None:
        while True:
            try:
                raw = self.sock.recv(MSG_MAX)
            except InterruptedError:
                continue
            if not raw:  # the driver is gone
                os._exit(0)
            cmd, *args = json.loads(raw)
            try:
                reply = self.do(cmd, args)
            except OSError as e:
                self.send("err", f"{cmd}: {e.strerror or e}")
                continue
            if cmd == "exit":
                self.send("ok")
                os._exit(0)
            self.send("ok", reply)

    def do(self, cmd: str, args: list[Any]) -> Any:
        if cmd == "write":
            spans, patterns = args
            i = 0
            for r, a, b in spans:
                base = self.regions[r][0]
                for p in range(a, b):
                    ctypes.memmove(base + p * PAGE_SIZE, self.page(patterns[i % len(patterns)]), PAGE_SIZE)
                    i += 1
            return None
        if cmd in ("madvise", "munmap"):
            for r, a, b in args[0]:
                addr, n = self.regions[r][0] + a * PAGE_SIZE, (b - a) * PAGE_SIZE
                if cmd == "munmap":
                    _check(_libc.munmap(addr, n), "munmap")
                else:
                    _check(_libc.madvise(addr, n, args[1]), f"madvise({args[1]})")
            return None
        if cmd == "fork":
            child, owned = args[0], set(args[1])
            pid = os.fork()
            if pid == 0:
                sock = self.keep.pop(child)
                for j, s in list(self.keep.items()):  # the parent keeps what is not the child's line
                    if j not in owned:
                        s.close()
                        del self.keep[j]
                self.sock.close()
                self.sock = sock
                self.send("ready", os.getpid())
                self.loop()
            for j in [child, *owned]:
                if j in self.keep:
                    self.keep.pop(j).close()
            return pid
        if cmd == "exit":
            return None
        raise OSError(0, f"unknown command {cmd!r}")


# -- the driver ----------------------------------------------------------------------------------------------
@dataclass
class _Proc:
    name: str
    index: int
    sock: socket.socket
    pid: int = 0
    alive: bool = False


def _lines(w: Workload) -> dict[str, set[str]]:
    """Each process's descendants by fork, from the workload's actions."""
    children: dict[str, list[str]] = {}
    for ph in w.phases:
        for a in ph.actions:
            if a.kind == "fork":
                children.setdefault(a.proc, []).append(a.child)

    def desc(n: str) -> set[str]:
        out = set()
        for c in children.get(n, []):
            out |= {c} | desc(c)
        return out

    return {n: desc(n) for n in w.layout()}


def _gone(pid: int) -> bool:
    """Exited (zombie or reaped): its mm has been released (exit_mm runs before the task turns zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _reap(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited, reaping it if it is (or has become, as an orphan) this process's child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r, _ = os.waitpid(pid, os.WNOHANG)
            if r == pid:
                return True
        except ChildProcessError:
            if _gone(pid):
                # someone else's child (its parent reaps it) or already reaped; a zombie adopted by us later
                # is reaped by a later call
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                return True
        time.sleep(0.001)
    return False


def _sweep(pids: list[int], timeout: float = 1.0) -> None:
    """Reap any of `pids` that became this process's zombie late (an orphan adopted after its check)."""
    me, deadline = os.getpid(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        ours = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == me:
                ours.append(pid)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
        if not ours:
            return
        time.sleep(0.005)


class RealSide:
    """One workload on the running kernel. Use as a context manager: leaving it kills and reaps every process."""

    def __init__(self, w: Workload, session: sysfs.Session, min_scans: int = 4, timeout: float = 60.0) -> None:
        self.w = w
        self.session = session
        self.min_scans, self.timeout = min_scans, timeout
        self.mode = 1  # the workload's run mode; sysfs run is 0 while actions run
        self.lines = _lines(w)
        self.procs: dict[str, _Proc] = {}
        self.ever: list[_Proc] = []
        self._subreaper = 0

    # -- processes -------------------------------------------------------------------------------------------
    def __enter__(self) -> RealSide:
        buf = ctypes.c_int(0)
        _libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(buf), 0, 0, 0)
        self._subreaper = buf.value
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        names = list(self.w.layout())
        pairs = {n: socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for n in names}
        index = {n: i for i, n in enumerate(names)}
        try:
            for n in names:
                self.procs[n] = _Proc(n, index[n], pairs[n][0])
            self.ever = list(self.procs.values())
            parent = os.getpid()
            for p in self.w.processes:
                pid = os.fork()
                if pid == 0:
                    self._worker_main(parent, p.name, pairs, [(r.pages, r.mergeable) for r in p.regions])
                self.procs[p.name].pid = pid
                self.procs[p.name].alive = True
        finally:
            for _a, b in pairs.values():
                b.close()  # the workload processes hold these
        for p in self.w.processes:
            msg = self._recv(self.procs[p.name])
            if msg[0] != "ready":
                raise KernelSideError(f"{p.name} did not start: {msg}")
        # the processes that will be forked exist later: their driver ends stay open until then

    def _worker_main(self, parent: int, name: str, pairs: dict[str, tuple[socket.socket, socket.socket]],
                     regions: list[tuple[int, bool]]) -> None:
        """The initial workload process `name`: dies with the driver, maps its regions, serves commands."""
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # its forked children are reaped by the kernel
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:
                os._exit(1)
            mine = {name} | self.lines[name]
            keep = {}
            for n, (a, b) in pairs.items():
                os.close(a.detach())
                if n in mine:
                    keep[self.procs[n].index] = b
                else:
                    b.close()
            sock = keep.pop(self.procs[name].index)
            worker = _Worker(sock, _Worker.map_regions(regions), keep)
            worker.send("ready", os.getpid())
            worker.loop()
        except BaseException as e:  # noqa: B036 - a workload process must never return into the caller's code
            with contextlib.suppress(BaseException):
                os.write(2, f"ksmstress kernel: workload process {name}: {e!r}\n".encode())
        finally:
            os._exit(code)

    def _recv(self, p: _Proc) -> list[Any]:
        p.sock.settimeout(self.timeout)
        try:
            raw = p.sock.recv(MSG_MAX)
        except TimeoutError:
            raise KernelSideError(f"workload process {p.name} (pid {p.pid}) silent for {self.timeout}s") from None
        if not raw:
            raise KernelSideError(f"workload process {p.name} (pid {p.pid}) died")
        return json.loads(raw)

    def _call(self, p: _Proc, *cmd: Any) -> Any:
        p.sock.send(json.dumps(cmd).encode())
        msg = self._recv(p)
        if msg[0] != "ok":
            raise KernelSideError(f"workload process {p.name}: {msg[1] if len(msg) > 1 else msg}")
        return msg[1] if len(msg) > 1 else None

    def __exit__(self, *exc: object) -> None:
        """Kill and reap every workload process (SIGKILL: nothing of theirs needs to run)."""
        live = [p for p in self.ever if p.pid and p.alive]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        stuck = [p for p in live if not _reap(p.pid, 10.0)]
        _sweep([p.pid for p in self.ever if p.pid])
        for p in self.ever:
            p.alive = False
            with contextlib.suppress(OSError):
                p.sock.close()
        _libc.prctl(PR_SET_CHILD_SUBREAPER, self._subreaper, 0, 0, 0)
        if stuck:
            raise KernelSideError("workload processes did not exit: " + ", ".join(str(p.pid) for p in stuck))

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items() if p.alive}

    # -- actions ---------------------------------------------------------------------------------------------
    def apply(self, a: Action) -> None:
        """Run one action with ksmd paused (run=0), so no scan interleaves with a phase's actions."""
        if a.kind == "run":
            self.mode = a.value
            if a.value != 1:  # run=1 takes effect when the phase settles
                self.session.run(a.value)
            return
        p = self.procs[a.proc]
        spans = [[s.region, s.start, s.end] for s in a.spans]
        if a.kind == "write":
            self._call(p, "write", spans, list(a.patterns))
        elif a.kind == "munmap":
            self._call(p, "munmap", spans)
        elif a.kind in ("mergeable", "unmergeable"):
            self._call(p, "madvise", spans, MADV_MERGEABLE if a.kind == "mergeable" else MADV_UNMERGEABLE)
        elif a.kind == "fork":
            c = self.procs[a.child]
            owned = [self.procs[n].index for n in self.lines[a.child]]
            self._call(p, "fork", c.index, owned)
            msg = self._recv(c)
            if msg[0] != "ready":
                raise KernelSideError(f"{a.child} did not start: {msg}")
            c.pid, c.alive = int(msg[1]), True
        elif a.kind == "exit":
            self._call(p, "exit")
            p.alive = False
            if not _reap(p.pid, self.timeout):
                raise KernelSideError(f"workload process {p.name} (pid {p.pid}) did not exit")

    # -- ksmd ------------------------------------------------------------------------------------------------
    def figures(self) -> Figures:
        c = sysfs.counters()
        merging = {}
        for n, pid in self.pids().items():
            v = merging_pages(pid)
            if v is not None:
                merging[n] = v
        return Figures(c["pages_shared"], c["pages_sharing"], c["pages_unshared"], merging)

    def _any_mergeable(self) -> bool | None:
        """Whether a live workload process has a VM_MERGEABLE vma (/proc/PID/ksm_stat, 6.1+); None: unknown."""
        seen = False
        for pid in self.pids().values():
            try:
                with open(f"/proc/{pid}/ksm_stat") as f:
                    stat = f.read()
            except OSError:
                return None
            seen = True
            if "ksm_mergeable: yes" in stat:
                return True
        return False if seen or not self.pids() else None

    def _run_scans(self, n: int, deadline: float) -> int:
        """run=1 until full_scans has advanced by n, then run=0 (returns once ksmd is out of its batch).

        ksmd stops scanning when its mm list is empty (no process has mergeable memory and the last slots were
        dropped): then full_scans stands still, and that is settled too, as ksmd_should_run() is false.
        """
        start = sysfs.read_int("full_scans")
        self.session.run(1)
        last, since = start, time.monotonic()
        try:
            while (now := sysfs.read_int("full_scans")) < start + n:
                t = time.monotonic()
                if now != last:
                    last, since = now, t
                elif t - since > IDLE_AFTER and (m := self._any_mergeable()) is not True:
                    if m is False or t - since > 20 * IDLE_AFTER:  # unknown (no ksm_stat): wait longer
                        break
                if t > deadline:
                    raise KernelSideError(f"ksmd did {now - start} of {n} full scans in {self.timeout:.0f}s")
                time.sleep(0.0005)
        finally:
            self.session.run(0)
        return sysfs.read_int("full_scans") - start

    def settle(self) -> Settled:
        """With run=1: scans until full_scans has advanced by min_scans and two paused snapshots two full scans
        apart agree. With run 0 or 2 ksmd does not scan: the figures are read as they are."""
        t0 = time.perf_counter()
        if self.mode != 1:
            return Settled(self.figures(), 0, time.perf_counter() - t0)
        deadline = time.monotonic() + self.timeout
        scans = self._run_scans(self.min_scans, deadline)
        prev = self.figures()
        while True:
            scans += self._run_scans(2, deadline)
            cur = self.figures()
            if cur == prev:
                return Settled(cur, scans, time.perf_counter() - t0)
            prev = cur


def run_real(w: Workload, session: sysfs.Session, min_scans: int = 4, timeout: float = 60.0) -> tuple[
    list[Settled], float
]:
    """Every phase of `w` on the running kernel: the settled figures per phase and the total wall time."""
    t0 = time.perf_counter()
    out = []
    session.run(0)
    with RealSide(w, session, min_scans, timeout) as side:
        for ph in w.phases:
            for a in ph.actions:
                side.apply(a)
            out.append(side.settle())
    # leave no state for the next workload: unmerge and forget everything (full_scans back to 0)
    session.run(2)
    session.run(0)
    return out, time.perf_counter() - t0
