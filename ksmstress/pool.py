"""A pool of worker processes fed work items on demand: the one way `soak` and `bench` spread runs over the CPUs.

- The parent forks one worker per CPU slot (non-daemon: a daemon process may not have children, and each run
  forks its tasks). A worker given a CPU exports it as $KSMSTRESS_CPU, so its controlled runs stay on that core.
- Work is a numbered sequence of items. The parent hands each worker a range of item numbers over a duplex pipe
  whenever it asks ("need"), so fast and slow items balance themselves; the worker answers with one JSON row per
  item (whatever the caller's `work(k, job)` returns). The caller decides the ranges (`feed`) and when to stop.
- Stopping (the caller's `stop()`, or no more work): workers are told, finish the item in hand and exit.
  Ctrl-C or SIGTERM to the parent (caught as a flag, see procs.catch_interrupts) or a worker that does not stop
  within STOP_GRACE: the parent closes its pipe ends and sends SIGTERM, which a worker also takes as a flag and
  acts on at run_one's next safe point (its `finally` kills and reaps that run's tasks); SIGKILL after KILL_GRACE.
- Nothing outlives the pool: each worker closes the parent's pipe ends it inherited (its own and earlier
  workers': while a worker held one, another's end never saw end-of-file) and dies with the parent
  (PR_SET_PDEATHSIG), as its runs' tasks die with it; the parent is a child subreaper while the pool runs, so
  the tasks of a worker killed from outside are reparented here and reaped, not left as zombies under PID 1.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import multiprocess
import multiprocess.connection

from . import cpus as cpumod
from . import procs

STOP_GRACE = 5.0  # seconds a stopped worker may take to finish the item in hand before it is signalled
KILL_GRACE = 2.0  # seconds between SIGTERM (clean up and exit) and SIGKILL
POLL = 0.25  # seconds between the loops' looks at the clock and the interrupt flag

Row = dict[str, Any]
Work = Callable[[int, int], Row]  # (item number, job number) -> one JSON-serialisable result row
Feed = Callable[[], "tuple[int, int] | None"]  # the next range [start, end) of item numbers, None: no more work


def _worker_main(work: Work, job: int, cpu: int | None, conn: Any, parent: int, inherited: list[Any]) -> None:
    """A worker's life: do the ranges the parent sends until it says stop, goes away, or sends SIGTERM."""
    procs.in_child(parent)
    for c in inherited:  # the parent's ends of every pipe forked so far, our own included: theirs to close
        c.close()
    if cpu is not None:
        os.environ[cpumod.ENV] = str(cpu)  # run_one pins this job's controlled runs there
    try:
        with procs.catch_interrupts((signal.SIGTERM,)):
            while True:
                while not conn.poll(POLL):
                    procs.check_interrupt()
                msg = json.loads(conn.recv_bytes())
                if msg.get("stop"):
                    return
                for k in range(msg["start"], msg["end"]):
                    if conn.poll():  # the only message that can arrive mid-range is "stop"
                        return
                    procs.check_interrupt()
                    conn.send_bytes(json.dumps(_do(work, k, job)).encode())
                conn.send_bytes(b'{"type": "need"}')
    except (procs.Interrupted, EOFError, OSError):
        pass  # told to stop by signal, or the parent is gone: run_one's `finally` has reaped the run's tasks
    finally:
        conn.close()


def _do(work: Work, k: int, job: int) -> Row:
    """One item; an exception of the work itself (a framework bug) is reported to the parent, not swallowed."""
    try:
        return work(k, job)
    except Exception as e:
        return {"type": "error", "k": k, "job": job, "error": traceback.format_exception_only(e)[-1].strip()}


class Pool:
    """Workers on `cpus` (one per entry; None: the OS places it) running `work` over the items `feed` hands out.

    `run()` returns once every worker has ended and been reaped. After it: `interrupted` is the signal that
    stopped the pool (SIGINT or SIGTERM) or None, and `errors` lists workers that died and items whose work
    raised."""

    def __init__(self, work: Work, cpus: Sequence[int | None], name: str = "ksmstress-worker") -> None:
        self.work, self.cpus, self.name = work, list(cpus), name
        self.jobs = len(self.cpus)
        self.interrupted: int | None = None
        self.errors: list[str] = []
        self.stopping = False
        self._procs: list[Any] = []
        self._conns: dict[Any, int] = {}  # open parent ends -> job number

    def stop(self) -> None:
        """No more work: every worker finishes the item in hand and exits."""
        if not self.stopping:
            self.stopping = True
            for c in self._conns:
                self._send(c, {"stop": True})

    def run(
        self,
        feed: Feed,
        on_row: Callable[[Row], None],
        on_tick: Callable[[], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        """Start the workers and serve them until all have ended. `on_row` gets each result row, `on_tick` is
        called at least every POLL seconds (progress, deadlines: either may call stop()), `on_error` each error."""
        self._on_error = on_error
        with procs.catch_interrupts(), procs.subreaper():
            self._before = procs.children()  # the caller's own children: never reaped here
            try:
                self._start()
                self._serve(feed, on_row, on_tick)
            finally:
                self._shutdown(on_row)
                sig = procs.take_interrupt()  # a signal during the shutdown still says the run was interrupted
                if self.interrupted is None:
                    self.interrupted = sig

    # -- the parent's side ----------------------------------------------------------------------------------
    def _start(self) -> None:
        ctx = multiprocess.get_context("fork")
        parent = os.getpid()
        with procs.fork_guard():
            for j, cpu in enumerate(self.cpus):
                parent_end, child_end = ctx.Pipe(duplex=True)
                inherited = [*self._conns, parent_end]
                p = ctx.Process(
                    target=_worker_main,
                    args=(self.work, j, cpu, child_end, parent, inherited),
                    daemon=False,
                    name=f"{self.name}-{j}",
                )
                self._procs.append(p)
                self._conns[parent_end] = j
                p.start()
                child_end.close()

    def _serve(self, feed: Feed, on_row: Callable[[Row], None], on_tick: Callable[[], None] | None) -> None:
        for c in list(self._conns):
            self._feed(c, feed)
        stop_deadline: float | None = None
        while self._conns:
            if (sig := procs.take_interrupt()) is not None:
                self.interrupted = sig
                return
            for c in multiprocess.connection.wait(list(self._conns), timeout=POLL):
                self._handle(c, feed, on_row)
            if on_tick is not None:
                on_tick()
            if self.stopping:
                stop_deadline = stop_deadline or time.monotonic() + STOP_GRACE
                if time.monotonic() > stop_deadline:
                    return  # the shutdown signals whoever has not finished the item in hand

    def _feed(self, conn: Any, feed: Feed) -> None:
        span = None if self.stopping else feed()
        if span is None:
            self._send(conn, {"stop": True})
        else:
            self._send(conn, {"start": span[0], "end": span[1]})

    def _send(self, conn: Any, msg: Row) -> None:
        try:
            conn.send_bytes(json.dumps(msg).encode())
        except OSError:
            pass  # the worker is gone: its end-of-file is handled where it is read

    def _handle(self, conn: Any, feed: Feed, on_row: Callable[[Row], None]) -> None:
        try:
            row = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            self._ended(conn)
            return
        if row.get("type") == "need":
            self._feed(conn, feed)
        elif row.get("type") == "error":
            self._error(f"worker {row['job']}: item {row['k']} raised {row['error']}")
        else:
            on_row(row)

    def _ended(self, conn: Any) -> None:
        """A worker closed its end: it exited (told to stop) or died. Reap it, and the tasks it left orphaned."""
        job = self._conns.pop(conn)
        conn.close()
        p = self._procs[job]
        p.join(timeout=KILL_GRACE)
        if p.exitcode is None:
            procs.kill_and_join([p])
        if p.exitcode != 0 and not self.stopping and self.interrupted is None:
            self._error(f"worker {job} died (exit code {p.exitcode})")
        procs.reap_adopted(self._before | {q.pid for q in self._procs}, timeout=KILL_GRACE)

    def _error(self, msg: str) -> None:
        self.errors.append(msg)
        if self._on_error is not None:
            self._on_error(msg)

    def _shutdown(self, on_row: Callable[[Row], None]) -> None:
        """Every worker ends and is reaped. Told to stop, they finish the item in hand; interrupted, they get SIGTERM
        and stop at their run's next safe point. Either way, the rows they still send (a failure found just now)
        are read until each closes its end, for up to KILL_GRACE; then the rest get SIGTERM, then SIGKILL."""
        self.stop()
        if self.interrupted is not None:
            procs.signal_live(self._procs, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE
        while self._conns and (left := deadline - time.monotonic()) > 0:
            for c in multiprocess.connection.wait(list(self._conns), timeout=min(POLL, left)):
                self._handle(c, lambda: None, on_row)
        for c in self._conns:
            c.close()  # an idle worker sees end-of-file at once
        self._conns.clear()
        procs.stop_and_join(self._procs, KILL_GRACE)
        procs.reap_adopted(self._before | {p.pid for p in self._procs}, timeout=KILL_GRACE)
