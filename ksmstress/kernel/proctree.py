"""The kernel oracle's workload processes: one real process per workload process, forked as the workload says
(a forked process is forked by its workload parent, so it really shares its parent's pages copy-on-write), each
serving commands on its own socket: write patterns, fork, madvise, munmap, mlock, mremap, exit, and start or end a
thread (a pthread of the process, sharing its mm) that the memory commands may be handed to.

No process outlives the tree (ksmstress.procs does the lifecycle): the driver is a child subreaper for the tree's
life, so a workload process whose parent exited is reparented to it and reaped; an initial process dies with the
driver (PR_SET_PDEATHSIG); a forked one cannot (it must outlive its workload parent's `exit`), so every process
also exits when its socket to the driver reaches end-of-file, which is when the driver dies. For that, each
process keeps only the sockets of its own line of descent and closes every other it inherited.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import queue
import signal
import socket
import threading
import warnings
from dataclasses import dataclass
from typing import Any

from .. import procs
from ..checks.content import pattern_bytes
from . import libc
from .workload import Workload

MSG_MAX = 1 << 16
THREAD_CMDS = ("write", "read", "madvise", "munmap", "mlock", "pageout")  # what a workload thread can be asked to do
# Regions are mapped from here up, far below the mmap area: the kernel's top-down search for a free range
# (vm_unmapped_area_topdown) takes the highest gap that fits, always one above this, so a mapping the workload
# process makes for itself (a thread's, the allocator's) never lands in a hole a workload's munmap punched; from
# mmap(NULL) the regions sat among such mappings, and a thread started after a munmap could fill the hole
# (madvise over it then returned 0, not -ENOMEM)
REGION_BASE = 0x2000_0000_0000
REGION_GAP = 16  # pages between regions: they stay separate vmas


class KernelSideError(RuntimeError):
    """A workload process failed or did not answer: the kernel side could not run the workload as written."""


# -- inside a workload process -------------------------------------------------------------------------------
class _Thread:
    """A thread of a workload process (a threading.Thread is a pthread: clone(CLONE_VM), its own task), which runs
    the memory commands handed to it, so their stores and syscalls are that task's, on the process's mm. The
    process's main thread hands one over and waits for it: one command at a time, as the driver sends them."""

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.jobs: queue.SimpleQueue[tuple[str, list[Any]] | None] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()
        self.tid = int(self.done.get())  # its kernel task id: not the process's

    def run(self) -> None:
        self.done.put(threading.get_native_id())
        while (job := self.jobs.get()) is not None:
            try:
                self.done.put(("ok", self.worker.do(*job)))
            except OSError as e:
                self.done.put(("err", e))

    def call(self, cmd: str, args: list[Any]) -> Any:
        self.jobs.put((cmd, args))
        status, value = self.done.get()
        if status == "err":
            raise value
        return value

    def stop(self) -> None:
        self.jobs.put(None)
        self.t.join()


class _Worker:
    """What runs inside one workload process: its mappings and its command loop. Never returns (os._exit)."""

    def __init__(self, sock: socket.socket, regions: list[tuple[int, int]], keep: dict[int, socket.socket]) -> None:
        self.sock = sock
        self.regions = regions  # (address, pages) per region
        self.keep = keep  # sockets of the processes this one will fork, directly or through its children
        self.pages: dict[int, bytes] = {}
        self.threads: dict[str, _Thread] = {}

    @staticmethod
    def map_regions(regions: list[tuple[int, bool]]) -> list[tuple[int, int]]:
        out = []
        hint = REGION_BASE
        for pages, mergeable in regions:
            n = pages * libc.PAGE_SIZE
            addr = libc.mmap_anon(n, hint)
            hint = addr + n + REGION_GAP * libc.PAGE_SIZE
            libc.madvise_hint(addr, n, libc.MADV_NOHUGEPAGE)  # 2.6.33 has no transparent huge pages
            if mergeable:
                libc.madvise(addr, n, libc.MADV_MERGEABLE)
            out.append((addr, pages))
        return out

    def page(self, p: int) -> bytes:
        if p not in self.pages:
            self.pages[p] = pattern_bytes(p, libc.PAGE_SIZE).tobytes()
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
                    ctypes.memmove(base + p * libc.PAGE_SIZE, self.page(patterns[i % len(patterns)]), libc.PAGE_SIZE)
                    i += 1
            return None
        if cmd in ("madvise", "munmap"):
            returns = []
            for r, a, b in args[0]:
                addr, n = self.regions[r][0] + a * libc.PAGE_SIZE, (b - a) * libc.PAGE_SIZE
                if cmd == "munmap":
                    libc.munmap(addr, n)
                else:  # over unmapped pages the kernel advises the mapped parts and returns -ENOMEM: recorded
                    returns.append(libc.madvise_return(addr, n, args[1]))
            return returns
        if cmd == "read":  # pages in memory or in swap (pagemap bit 63 or 62): a never-touched one is not faulted
            for r, a, b in args[0]:
                base = self.regions[r][0] + a * libc.PAGE_SIZE
                for i, e in enumerate(_pagemap(base, b - a)):
                    if e >> 62:
                        ctypes.string_at(base + i * libc.PAGE_SIZE, 1)
            return None
        if cmd == "pageout":
            return [pageout(self.regions[r][0] + a * libc.PAGE_SIZE, b - a) for r, a, b in args[0]]
        if cmd == "mremap":  # the span's pages move to page `dest` of the same region
            (r, a, b), dest = args
            base = self.regions[r][0]
            libc.mremap_fixed(base + a * libc.PAGE_SIZE, (b - a) * libc.PAGE_SIZE, base + dest * libc.PAGE_SIZE)
            return None
        if cmd == "mlock":
            for r, a, b in args[0]:
                libc.mlock(self.regions[r][0] + a * libc.PAGE_SIZE, (b - a) * libc.PAGE_SIZE, bool(args[1]))
            return None
        if cmd == "thread":
            self.threads[args[0]] = _Thread(self)
            return self.threads[args[0]].tid
        if cmd == "endthread":
            self.threads.pop(args[0]).stop()
            return None
        if cmd == "in":  # a memory command done by one of this process's threads
            if args[1] not in THREAD_CMDS:
                raise OSError(0, f"not a thread's command: {args[1]!r}")
            return self.threads[args[0]].call(args[1], args[2])
        if cmd == "fork":
            child, owned = args[0], set(args[1])
            with warnings.catch_warnings():  # fork with threads (3.12+ warns): they sit idle in jobs.get() and
                warnings.simplefilter("ignore", DeprecationWarning)  # the child, which has none of them, drops them
                pid = os.fork()
            if pid == 0:
                self.threads = {}
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


PAGEOUT_ROUNDS = 5  # madvise(MADV_PAGEOUT) rounds over the CPUs until no page mapped once is left resident


def pageout(addr: int, pages: int) -> int:
    """madvise(MADV_PAGEOUT) of `pages` pages at `addr` as the workload's `pageout` means it: every page that this
    pte alone maps goes to swap and stays in the swap cache. Returns the call's value (0, or -errno).

    - Each present page is referenced (libc.pin_pages) while the call runs, so __remove_mapping cannot free it
      when its write to swap has already ended by the time reclaim looks (a fast disk): the page stays in the swap
      cache whatever the disk's speed, as the model's pageout.py keeps it.
    - The call reclaims only pages on an LRU list, and a page faulted in lately may still sit in the per-CPU batch
      of the CPU that faulted it (a thread's, ksmd's), while the call drains only its own CPU's batch
      (lru_add_drain): so it is made on each CPU in turn.
    - Then no page mapped once (/proc/self/pagemap, /proc/kpagecount) may be left resident: retried, and an error
      after PAGEOUT_ROUNDS rounds.
    """
    cpus = sorted(os.sched_getaffinity(0))
    first = None
    pins = libc.pin_pages([addr + i * libc.PAGE_SIZE for i in _present(addr, pages)])
    try:
        for _round in range(PAGEOUT_ROUNDS):
            for cpu in cpus:
                os.sched_setaffinity(0, {cpu})
                rc = libc.madvise_return(addr, pages * libc.PAGE_SIZE, libc.MADV_PAGEOUT)
                first = rc if first is None else first
            left = _resident_alone(addr, pages)
            if not left or first == -errno.EINVAL:  # a VM_LOCKED vma: the call stops there
                return int(first or 0)
    finally:
        os.sched_setaffinity(0, cpus)
        libc.unpin(pins)
    raise OSError(0, f"pageout left {len(left)} page(s) mapped once resident (page {left[0]} of the range)")


def _pagemap(addr: int, pages: int) -> list[int]:
    with open("/proc/self/pagemap", "rb") as pm:
        raw = os.pread(pm.fileno(), 8 * pages, (addr // libc.PAGE_SIZE) * 8)
    return [int.from_bytes(raw[8 * i : 8 * i + 8], "little") for i in range(pages)]


def _present(addr: int, pages: int) -> list[int]:
    """The pages of the range a pte maps (bit 63 of the pagemap entry)."""
    return [i for i, e in enumerate(_pagemap(addr, pages)) if e >> 63 & 1]


def _resident_alone(addr: int, pages: int) -> list[int]:
    """The pages of the range that are present and mapped once: the pfn from one pagemap read, the mapcount from
    /proc/kpagecount (both need root)."""
    with open("/proc/kpagecount", "rb") as kc:
        return [i for i, e in enumerate(_pagemap(addr, pages)) if e >> 63 & 1
                and int.from_bytes(os.pread(kc.fileno(), 8, (e & ((1 << 55) - 1)) * 8), "little") == 1]


# -- the driver's side ---------------------------------------------------------------------------------------
@dataclass
class _Proc:
    name: str
    index: int
    sock: socket.socket
    pid: int = 0
    alive: bool = False


def lines(w: Workload) -> dict[str, set[str]]:
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


class ProcTree:
    """The processes of one workload. Use as a context manager: leaving it kills and reaps every process."""

    def __init__(self, w: Workload, timeout: float = 60.0) -> None:
        self.w = w
        self.timeout = timeout
        self.lines = lines(w)
        self.procs: dict[str, _Proc] = {}
        self.ever: list[_Proc] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ProcTree:
        self._stack.enter_context(procs.subreaper())
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
                with procs.fork_guard():
                    pid = os.fork()
                    if pid == 0:
                        self._child_main(parent, p.name, pairs, [(r.pages, r.mergeable) for r in p.regions])
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

    def _child_main(self, parent: int, name: str, pairs: dict[str, tuple[socket.socket, socket.socket]],
                    regions: list[tuple[int, bool]]) -> None:
        """The initial workload process `name`: dies with the driver, maps its regions, serves commands."""
        code = 1
        try:
            procs.in_child(parent)
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # its forked children are reaped by the kernel
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

    def call(self, name: str, *cmd: Any, thread: str = "") -> Any:
        """Send workload process `name` one command and return its reply (KernelSideError if it failed); with
        `thread`, the process hands the command to that thread of its own."""
        p = self.procs[name]
        if thread:
            cmd = ("in", thread, cmd[0], list(cmd[1:]))
        p.sock.send(json.dumps(cmd).encode())
        msg = self._recv(p)
        if msg[0] != "ok":
            raise KernelSideError(f"workload process {p.name}: {msg[1] if len(msg) > 1 else msg}")
        return msg[1] if len(msg) > 1 else None

    def fork(self, parent: str, child: str) -> None:
        """`parent` forks `child` (which then owns the sockets of its own future descendants)."""
        c = self.procs[child]
        owned = [self.procs[n].index for n in self.lines[child]]
        self.call(parent, "fork", c.index, owned)
        msg = self._recv(c)
        if msg[0] != "ready":
            raise KernelSideError(f"{child} did not start: {msg}")
        c.pid, c.alive = int(msg[1]), True

    def exit(self, name: str) -> None:
        """`name` exits; returns once it has (its mm released), reaping it if it is (or became) our child."""
        p = self.procs[name]
        self.call(name, "exit")
        p.alive = False
        if not procs.reap(p.pid, self.timeout):
            raise KernelSideError(f"workload process {p.name} (pid {p.pid}) did not exit")

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items() if p.alive}

    def __exit__(self, *exc: object) -> None:
        """Kill and reap every workload process (SIGKILL: nothing of theirs needs to run)."""
        try:
            live = [p for p in self.ever if p.pid and p.alive]
            for p in live:
                procs.signal_pid(p.pid, signal.SIGKILL)
            stuck = [p for p in live if not procs.reap(p.pid, 10.0)]
            procs.sweep([p.pid for p in self.ever if p.pid])
            for p in self.ever:
                p.alive = False
                with contextlib.suppress(OSError):
                    p.sock.close()
        finally:
            self._stack.close()
        if stuck:
            raise KernelSideError("workload processes did not exit: " + ", ".join(str(p.pid) for p in stuck))
