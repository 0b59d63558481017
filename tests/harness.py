"""A single-task kernel for deterministic model tests: the test itself is the only runnable task.

With one runnable task every scheduling point returns at once, so a test drives the model step by step, as one
kernel thread after another, and checks exact counts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import multiprocess
import numpy as np

from ksmstress import procs
from ksmstress.arena import LIVE, ref_slot
from ksmstress.checks import Detectors
from ksmstress.checks.content import pattern_bytes
from ksmstress.failures import Failure
from ksmstress.mm import ksm, memory
from ksmstress.mm import mm as mmm
from ksmstress.mm.hooks import NoHooks
from ksmstress.mm.state import (
    G_PAGES_SHARED,
    G_PAGES_SHARING,
    G_PAGES_UNSHARED,
    G_RMAP_ITEMS,
    G_SEQNR,
    K,
    Sizes,
    pte_decode,
)
from ksmstress.runner import solo_kernel
from ksmstress.sched import DEFAULT_GRANULARITY
from ksmstress.sched.control import Control

PAGE = 32


class Recorder(Detectors):
    """The real detectors, plus a record of every pte each rmap walk visited."""

    def __init__(self) -> None:
        super().__init__()
        self.visits: list[tuple[int, int]] = []

    def walk_visit(self, token: Any, mm_slot: int, address: int) -> None:
        self.visits.append((mm_slot, address))
        super().walk_visit(token, mm_slot, address)


class InterleaveAt(NoHooks):
    """Runs `action` once, as another task would, when the model is about to take a lock at `site`: the single
    task of a test can then build an exact interleaving (the action stands for the other task's steps). No
    detectors: lockdep would rightly see one task holding both tasks' locks."""

    def __init__(self, site: str) -> None:
        super().__init__()
        self.site = site
        self.action: Any = None

    def lock_acquiring(self, tid: int, lid: int, site: str, trylock: bool, subclass: int) -> None:
        if site == self.site and self.action is not None:
            action, self.action = self.action, None
            action()


def make_kernel(bugs: tuple[str, ...] = (), hooks: Any = None, granularity: str = DEFAULT_GRANULARITY,
                **sizes: int) -> K:
    sz = Sizes(**{"page_size": PAGE, "vpages": 16, "max_mm": 6, "max_vmas": 6, "frames": 128, "swap": 64,
                  "rmap_items": 128, "stable_nodes": 64, "anon_vmas": 32, "quarantine": 4, **sizes})
    return solo_kernel(sz, bugs, Recorder() if hooks is None else hooks, granularity)


def quiet_kernel(**kw: Any) -> K:
    return make_kernel(hooks=NoHooks(), **kw)


def new_program(k: K, npages: int, start: int = 1, mergeable: bool = True) -> tuple[int, int]:
    """exec + mmap + madvise(MADV_MERGEABLE): returns (mm ref, mm slot)."""
    mref = mmm.mm_alloc(k)
    assert mmm.sys_mmap(k, mref, start, npages, 0)
    if mergeable:
        mmm.sys_madvise(k, mref, start, start + npages, ksm.MADV_MERGEABLE)
    return mref, ref_slot(mref)


def write(k: K, m: int, addr: int, p: int) -> None:
    assert memory.user_write(k, m, addr, pattern_bytes(p, k.st.sz.page_size))


def read(k: K, m: int, addr: int) -> bytes:
    data = memory.user_read(k, m, addr)
    assert data is not None
    return data.tobytes()


def content(k: K, p: int) -> bytes:
    return pattern_bytes(p, k.st.sz.page_size).tobytes()


def scan(k: K, passes: int = 1) -> None:
    """Let ksmd run until `passes` more full scans have completed (ksm_scan_thread's loop)."""
    target = int(k.g[G_SEQNR]) + passes
    for _ in range(10_000):
        if int(k.g[G_SEQNR]) >= target or not ksm.ksmd_should_run(k):
            return
        k.locks.lock(k.ksm_thread_mutex, "test")
        ksm.ksm_do_scan(k, 100)
        k.hooks.ksm_quiescent(k, "test")
        k.locks.unlock(k.ksm_thread_mutex, "test")
    raise AssertionError("ksmd made no progress")


def counters(k: K) -> dict[str, int]:
    g = k.g
    return {
        "shared": int(g[G_PAGES_SHARED]),
        "sharing": int(g[G_PAGES_SHARING]),
        "unshared": int(g[G_PAGES_UNSHARED]),
        "rmap_items": int(g[G_RMAP_ITEMS]),
    }


def pte_page(k: K, m: int, addr: int) -> int:
    """The page the pte maps, read raw: the test looks at the page table, it is not a kernel path (pte_get checks
    the pte lock the kernel's readers hold)."""
    kind, ref, _w = pte_decode(int(k.st.pte[m, addr]))
    assert kind == 1, f"pte ({m}, {addr}) not present"
    return ref


def pte(k: K, m: int, addr: int) -> tuple[int, int, int]:
    """(kind, target, write) of a pte, read raw: the test inspecting the page table is no kernel path."""
    return pte_decode(int(k.st.pte[m, addr]))


def vma_at(k: K, m: int, addr: int) -> int:
    """find_vma for the test's own inspection (the first vma ending above addr, or 0), read raw: the kernel's
    find_vma asserts the mmap_sem its callers hold."""
    return next((v for v in mmm.vma_walk(k, m) if k.vm.end[ref_slot(v)] > addr), 0)


@contextmanager
def holding(k: K, lid: int, site: str = "test") -> Iterator[None]:
    """The test, as a kernel path would, holds lock `lid` around what it does (the lock rules want it)."""
    k.locks.lock(lid, site)
    try:
        yield
    finally:
        k.locks.unlock(lid, site)


def page_locked(k: K, page: int) -> Any:
    """lock_page ... unlock_page around an rmap walk, as reclaim's shrink_page holds it (try_to_unmap and
    page_referenced_ksm run with the page locked)."""
    return holding(k, k.page_lock(ref_slot(page)), "test:lock_page")


def mapped_pages(k: K) -> np.ndarray:
    return np.flatnonzero((k.st.page.state == LIVE) & (k.st.page.c["mapcount"] > 0))


def merged_pair(k: K) -> tuple[tuple[int, int], tuple[int, int], int]:
    """Two programs with one identical page each, merged by ksmd: (aref, a), (bref, b), the KSM page."""
    from ksmstress.mm.state import PG_KSM

    aref, a = new_program(k, 1)
    bref, b = new_program(k, 1)
    write(k, a, 1, 5)
    write(k, b, 1, 5)
    scan(k, 3)
    page = pte_page(k, a, 1)
    assert k.pg.flags[ref_slot(page)] & PG_KSM and pte_page(k, b, 1) == page
    return (aref, a), (bref, b), page


@contextmanager
def task_processes(ctl: Control, bodies: list[Callable[[], None]]) -> Iterator[None]:
    """One real forked process per body, task id = its index, parked on its semaphore until `ctl` grants it; a
    body's Failure is reported through `ctl`, a body that returns exits its task. The caller starts the run inside
    the block (ctl.start) and waits on ctl.done; every process is killed and reaped when the block ends."""

    def main(tid: int) -> None:
        ctl.me = tid
        ctl.wait_turn()
        try:
            bodies[tid]()
            ctl.exit_current()
        except Failure as f:
            ctl.report(f.to_dict())
        os._exit(0)

    ctx = multiprocess.get_context("fork")
    ps = [ctx.Process(target=main, args=(t,), daemon=True) for t in range(len(bodies))]
    for p in ps:
        p.start()
    try:
        yield
    finally:
        procs.kill_and_join(ps)
