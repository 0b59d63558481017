"""The bodies of the task processes: mm tasks (user programs), ksmd, reclaim (kswapd) and an admin writing run.

Each body runs in its own OS process and reaches the model only through `K`. An mm task draws its operations
from its own PRNG seeded by (run seed, task id), and keeps its own record of what it wrote (`expect`), which it
checks on every read: any other bytes are data loss.
"""

from __future__ import annotations

import os
import random
import traceback

import numpy as np

from .arena import FREE, LIVE, ref_slot
from .checks.content import check_read, pattern_bytes
from .failures import Failure
from .mm import gup, ksm, memory, migrate, mlock, mremap, swapfile, vmscan
from .mm import mm as mmm
from .mm.state import (
    G_MM_LIVE,
    G_PAGES_SHARING,
    G_SEQNR,
    KSM_RUN_MERGE,
    KSM_RUN_UNMERGE,
    PG_KSM,
    VM_LOCKED,
    K,
    State,
)
from .scenario import Scenario
from .sched.control import EXITED, UNUSED

KSMD, RECLAIM, ADMIN, MM, MIGRATE = 1, 2, 3, 4, 5
KIND_NAMES = {KSMD: "ksmd", RECLAIM: "reclaim", ADMIN: "admin", MM: "mm", MIGRATE: "migrate"}
# mm task arguments (ctl.arg row)
A_MM, A_CFG, A_CHILD, A_FORKS = range(4)
A_THREAD, A_NTHREADS = 4, 5  # --- issue 14 part A: this task's index among the threads of its mm, and their number
WAIT_CAP = 3_000  # yields a wait-* script step may spend before giving up (wait-merged:N:CAP overrides)


class MmTask:
    """A user program: maps a region, makes it mergeable, writes, reads back, forks, unmaps, exits."""

    def __init__(self, k: K, sc: Scenario, seed: int, tid: int) -> None:
        self.k, self.sc, self.tid = k, sc, tid
        args = k.ctl.arg[tid]
        self.mref = int(args[A_MM])
        self.m = ref_slot(self.mref)
        self.cfg_idx = int(args[A_CFG])
        self.cfg = sc.tasks[self.cfg_idx]
        self.child = bool(args[A_CHILD])
        self.forks_left = int(args[A_FORKS])
        self.rng = random.Random(f"{seed}:{tid}")
        self.page_size = sc.page_size
        # threads (issue 14 part A): thread `thread` of `nthreads` sharing the mm owns the pages a with
        # a % nthreads == thread: it alone writes, reads, zaps and does I/O to them, so the mm's one record of what
        # was written stays exact. A thread other than the first starts after the first mapped its region.
        self.thread = int(args[A_THREAD])
        self.nthreads = max(1, int(args[A_NTHREADS]))
        # what this program knows it has mapped (its /proc/self/maps): a child inherits the parent's
        self.mapped: set[int] = set()
        if self.thread:
            self.mapped.update(range(1, 1 + self.cfg.region))  # the first thread's mmap, before the clone
        else:
            for vref in mmm.vma_walk(k, self.m):  # not the kernel: only this program changes its own vmas
                v = ref_slot(vref)
                self.mapped.update(range(k.vm.start[v], k.vm.end[v]))

    # -- the program -----------------------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.cfg
        if not self.child and not self.thread:
            self.do_mmap(1, cfg.region)
            if cfg.threads > 1:
                self.clone_threads()
        for step in () if self.thread else cfg.child_script if self.child else cfg.script:
            if self.script_step(step):
                break
            self.k.ctl.progress()
        else:
            ops = [op for op, w in cfg.weights if w > 0]
            weights = [w for _op, w in cfg.weights if w > 0]
            for _ in range(cfg.child_ops if self.child else cfg.ops):
                if not ops:
                    break
                self.op(self.rng.choices(ops, weights)[0])
                self.k.ctl.progress()
        mmm.mmput(self.k, self.mref)
        self.k.atomic_add(self.k.g, G_MM_LIVE, -1)

    def script_step(self, step: str) -> bool:
        """Run one fixed step; True ends the program (exit)."""
        name, *args = step.split(":")
        k = self.k
        if name == "fill":
            for i, a in enumerate(self.mine()):
                self.write(a, int(args[0]) if args else i % self.cfg.patterns)
        elif name == "read-all":
            for a in self.mine():
                self.read(a)
        elif name == "wait-scans":  # as LTP's wait_ksmd_full_scan: watch full_scans in sysfs
            # counted as they complete: run=2 sets full_scans back to 0 (unmerge_and_remove_all_rmap_items'
            # ksm_scan.seqnr = 0), and a fixed target above the old count would then wait out its whole cap
            need, last = int(args[0]), int(k.g[G_SEQNR])
            for _ in range(int(args[1]) if len(args) > 1 else WAIT_CAP):
                cur = int(k.g[G_SEQNR])
                need -= cur if cur < last else cur - last
                last = cur
                if need <= 0 or not self.ksmd_alive():
                    break
                k.point("user:wait-scans", yielding=True)
        elif name == "wait-merged":
            for _ in range(int(args[1]) if len(args) > 1 else WAIT_CAP):
                if int(k.g[G_PAGES_SHARING]) >= int(args[0]) or not self.ksmd_alive():
                    break
                k.point("user:wait-merged", yielding=True)
        elif name == "sleep":
            for _ in range(int(args[0])):
                k.point("user:sleep", yielding=True)
        elif name == "fork":
            self.op("fork")
        elif name == "munmap-all":
            self.do_munmap(1, self.sc.vpages)
        elif name == "munmap-half":
            pages = sorted(self.mapped)
            if pages:
                self.do_munmap(pages[0], pages[len(pages) // 2] + 1)
        elif name in ("mergeable", "unmergeable"):
            self.madvise(1, self.sc.vpages, name == "mergeable")
        elif name in ("mlock", "munlock"):
            self.do_mlock(1, self.sc.vpages, name == "mlock")
        elif name == "write":
            self.write(int(args[0]), int(args[1]))
        elif name == "dio":
            self.dio(int(args[0]), int(args[1]))
        elif name == "dontneed":
            self.dontneed(int(args[0]))
        elif name == "mremap":  # mremap:A:OLD:NEW (MREMAP_MAYMOVE) or mremap:A:OLD:NEW:TO (| MREMAP_FIXED)
            self.do_mremap(int(args[0]), int(args[1]), int(args[2]), int(args[3]) if len(args) > 3 else 0)
        elif name == "exit":
            return True
        return False

    def ksmd_alive(self) -> bool:
        return self.sc.ksmd

    def mine(self) -> list[int]:
        """The mapped pages this thread owns (all of them for a single-threaded program)."""
        n, t = self.nthreads, self.thread
        return sorted(a for a in self.mapped if a % n == t) if n > 1 else sorted(self.mapped)

    def op(self, op: str) -> None:
        rng, k = self.rng, self.k
        pages = self.mine()
        if op == "write" and pages:
            self.write(rng.choice(pages), rng.randrange(self.cfg.patterns))
        elif op == "read" and pages:
            self.read(rng.choice(pages))
        elif op == "fork":
            self.fork()
        elif op == "munmap" and pages:
            a = rng.choice(pages)
            self.do_munmap(a, a + 1 + rng.randrange(3))
        elif op == "mmap":
            n = 1 + rng.randrange(3)
            free = [a for a in range(1, self.sc.vpages - n + 1) if not self.mapped & set(range(a, a + n))]
            if free:
                self.do_mmap(rng.choice(free), n)
        elif op in ("mergeable", "unmergeable") and pages:
            a = rng.choice(pages)  # a range that may run past the mapping: madvise must then say -ENOMEM
            self.madvise(a, min(a + 1 + rng.randrange(3), self.sc.vpages), op == "mergeable")
        elif op in ("mlock", "munlock") and pages:
            a = rng.choice(pages)
            self.do_mlock(a, min(a + 1 + rng.randrange(3), self.sc.vpages), op == "mlock")
        elif op == "sleep":
            k.point("user:sleep", yielding=True)
        elif op == "dontneed" and pages:
            self.dontneed(rng.choice(pages))
        elif op == "dio" and pages:
            self.dio(rng.choice(pages), rng.randrange(self.cfg.patterns))
        elif op == "peek":
            theirs = sorted(self.mapped.difference(pages))  # a sibling thread's pages (none without threads)
            if theirs:
                self.peek(rng.choice(theirs))
        elif op == "mremap" and pages:
            # a few pages that may span vmas (then -EFAULT), to a size that may shrink, stay or grow, moved where
            # the kernel likes or (MREMAP_FIXED) to a free range of the program's choosing
            a = rng.choice(pages)
            old_len, new_len = min(1 + rng.randrange(3), self.sc.vpages - a), 1 + rng.randrange(3)
            to = 0
            if rng.random() < 0.5:
                free = [t for t in range(1, self.sc.vpages - new_len + 1)
                        if not self.mapped & set(range(t, t + new_len)) and (t + new_len <= a or t >= a + old_len)]
                to = rng.choice(free) if free else 0
            self.do_mremap(a, old_len, new_len, to)

    # -- issue 14 part A: threads, MADV_DONTNEED, O_DIRECT ----------------------------------------------------
    def clone_threads(self) -> None:
        """pthread_create for threads 1..n-1: clone(CLONE_VM) takes an mm_users reference each."""
        k = self.k
        for i in range(1, self.cfg.threads):
            tid = k.ctl.reserve()
            if tid < 0:
                return  # -EAGAIN
            mmm.copy_mm_clone_vm(k, self.mref)
            k.atomic_add(k.g, G_MM_LIVE, 1)
            k.ctl.spawn(tid, MM, (self.mref, self.cfg_idx, 0, 0, i, self.cfg.threads))

    def dontneed(self, addr: int) -> None:
        """madvise(addr, 1 page, MADV_DONTNEED): the page reads as zeros afterwards."""
        if addr not in self.mapped:
            return
        err = mmm.sys_madvise(self.k, self.mref, addr, addr + 1, mmm.MADV_DONTNEED)
        if err == -22 and self.vma_locked(addr):
            return  # -EINVAL on an mlocked range: nothing was zapped, the page keeps its data
        if err:
            self.syscall_failure(f"madvise([{addr},{addr + 1}), MADV_DONTNEED) returned {err} on a mapped page",
                                 self.proc_maps())
        self.k.st.expect[self.m, addr] = -1

    def dio(self, addr: int, p: int) -> None:
        """read(fd, addr, page) with O_DIRECT: get_user_pages_fast(write) pins the page, the I/O stays in flight
        for `dio_yields` scheduling points, the device's DMA lands in the pinned page, the pin is dropped, and
        the program's buffer now holds pattern p."""
        k = self.k
        if addr not in self.mapped:
            return
        page = gup.get_user_pages_fast(k, self.m, addr, True)
        if not page:
            raise Failure("crash", f"{k.ctl.label(self.tid)}: get_user_pages failed on mapped address {addr}")
        for _ in range(self.cfg.dio_yields):
            k.point("user:dio-in-flight", yielding=True)
        gup.dio_complete(k, page, pattern_bytes(p, self.page_size))
        k.st.expect[self.m, addr] = p

    # -- system calls and memory accesses --------------------------------------------------------------------
    def write(self, addr: int, p: int) -> None:
        if addr not in self.mapped:
            return
        if not memory.user_write(self.k, self.m, addr, pattern_bytes(p, self.page_size)):
            raise Failure("crash", f"{self.k.ctl.label(self.tid)}: SIGSEGV writing mapped address {addr}")
        self.k.st.expect[self.m, addr] = p

    def load(self, addr: int) -> np.ndarray:
        """A load of a mapped page (faulting it in): SIGSEGV there is a crash."""
        data = memory.user_read(self.k, self.m, addr)
        if data is None:
            raise Failure("crash", f"{self.k.ctl.label(self.tid)}: SIGSEGV reading mapped address {addr}")
        return data

    def read(self, addr: int) -> None:
        if addr not in self.mapped:
            return
        data = self.load(addr)
        step, who = self.k.ctl.clock()
        check_read(data, int(self.k.st.expect[self.m, addr]), who, self.m, addr, step, self.k)

    def peek(self, addr: int) -> None:
        """A load from a page a sibling thread owns: mapped (threads never unmap), its bytes unchecked (the owner
        may be writing them; the owner's own reads check them)."""
        self.load(addr)

    def do_mmap(self, start: int, n: int) -> None:
        if mmm.sys_mmap(self.k, self.mref, start, n, 0):
            self.mapped.update(range(start, start + n))
            self.k.st.expect[self.m, start : start + n] = -1
            if self.cfg.mergeable:
                self.madvise(start, start + n, True)
            return
        maps = self.proc_maps()
        if 1 <= start and start + n <= self.sc.vpages and len(maps) < self.k.st.sz.max_vmas and not any(
            vs < start + n and ve > start for vs, ve in maps
        ):
            self.syscall_failure(
                f"mmap([{start},{start + n})) failed though its range is free and {len(maps)} of "
                f"{self.k.st.sz.max_vmas} vmas are in use (mmap fails only on an overlap or at max_map_count)", maps
            )

    def do_munmap(self, start: int, end: int) -> None:
        end = min(end, self.sc.vpages)
        if mmm.sys_munmap(self.k, self.mref, start, end):
            self.mapped.difference_update(range(start, end))
            self.k.st.expect[self.m, start:end] = -1
            return
        maps = self.proc_maps()
        hit = [(vs, ve) for vs, ve in maps if vs < end and ve > start]
        splits = int(bool(hit) and hit[0][0] < start) + int(bool(hit) and hit[-1][1] > end)
        if len(maps) + splits <= self.k.st.sz.max_vmas:
            self.syscall_failure(
                f"munmap([{start},{end})) failed (ENOMEM) though its {splits} split(s) fit: {len(maps)} of "
                f"{self.k.st.sz.max_vmas} vmas are in use (__split_vma fails only at max_map_count)", maps
            )

    def madvise(self, start: int, end: int, mergeable: bool) -> None:
        advice = ksm.MADV_MERGEABLE if mergeable else ksm.MADV_UNMERGEABLE
        err = mmm.sys_madvise(self.k, self.mref, start, end, advice)
        holes = [a for a in range(start, end) if a not in self.mapped]
        if holes and err != -12:
            self.syscall_failure(
                f"madvise([{start},{end})) returned {err} though address {holes[0]} is not mapped "
                "(sys_madvise reports -ENOMEM for a range with unmapped pages)", self.proc_maps()
            )
        if not holes and err == -12:
            maps = self.proc_maps()
            if len(maps) + 2 <= self.k.st.sz.max_vmas:
                self.syscall_failure(
                    f"madvise([{start},{end})) returned -ENOMEM though the range is mapped and any split fits "
                    f"({len(maps)} of {self.k.st.sz.max_vmas} vmas in use)", maps
                )

    def do_mlock(self, start: int, end: int, lock: bool) -> None:
        """mlock / munlock: -ENOMEM exactly when part of the range is unmapped (or a split does not fit)."""
        err = mlock.sys_mlock(self.k, self.mref, start, end, lock)
        holes = [a for a in range(start, end) if a not in self.mapped]
        if holes and err != -12:
            self.syscall_failure(
                f"{'mlock' if lock else 'munlock'}([{start},{end})) returned {err} though address {holes[0]} is "
                "not mapped (-ENOMEM expected)", self.proc_maps()
            )

    def do_mremap(self, addr: int, old_len: int, new_len: int, to: int) -> None:
        """mremap(addr, old_len, new_len, MREMAP_MAYMOVE[ | MREMAP_FIXED, to]): the first min(old_len, new_len) pages
        keep their data at the address returned, a grown tail reads as zeros, what is left of the old range is
        unmapped. A failure must be one the kernel may give: -EFAULT for a range that is not inside one vma,
        -ENOMEM for want of vmas (move_vma keeps three spare, a split needs one) or of a free range."""
        k, keep = self.k, min(old_len, new_len)
        flags = mremap.MREMAP_MAYMOVE | (mremap.MREMAP_FIXED if to else 0)
        ret = mremap.sys_mremap(k, self.mref, addr, old_len, new_len, flags, to)
        expect = k.st.expect[self.m]
        if ret > 0:
            moved_or_grown = ret != addr or new_len > old_len  # vma_to_resize found all of [addr, +keep) mapped
            data = [int(x) for x in expect[addr : addr + keep]]
            self.mapped.difference_update(range(addr + keep if ret == addr else addr, addr + old_len))
            expect[addr + keep if ret == addr else addr : addr + old_len] = -1
            if moved_or_grown:
                self.mapped.update(range(ret, ret + new_len))
                expect[ret : ret + new_len] = -1
                expect[ret : ret + keep] = data
            return
        maps = self.proc_maps()
        if to and old_len > new_len:  # mremap_to's shrink may have unmapped the tail before the failure
            for a in range(addr + new_len, addr + old_len):
                if not any(vs <= a < ve for vs, ve in maps):
                    self.mapped.discard(a)
                    expect[a] = -1
        inside = any(vs <= addr and addr + keep <= ve for vs, ve in maps)
        vmas = k.st.sz.max_vmas
        ends, starts = [1] + [ve for _vs, ve in maps], [vs for vs, _ve in maps] + [self.sc.vpages]
        gap = any(b - a >= new_len for a, b in zip(ends, starts, strict=True))
        if ret == mremap.EFAULT and not inside and (to or new_len > old_len):
            return
        if ret == mremap.ENOMEM and (len(maps) >= vmas - 3 or len(maps) + 2 > vmas or not (to or gap)):
            return
        self.syscall_failure(f"mremap([{addr},{addr + old_len}), {new_len}, flags {flags}, {to}) returned {ret}", maps)

    def vma_locked(self, addr: int) -> bool:
        """Whether /proc/self/smaps shows the vma at `addr` locked (its Locked: line), read under mmap_sem (read)."""
        k = self.k
        k.locks.down_read(k.mmap_sem(self.m), "show_smap")
        slots = [ref_slot(v) for v in mmm.vma_list(k, self.m)]
        locked = any(int(k.vm.start[v]) <= addr < int(k.vm.end[v]) and bool(k.vm.flags[v] & VM_LOCKED) for v in slots)
        k.locks.up_read(k.mmap_sem(self.m), "show_smap")
        return locked

    # -- the syscall contract: a program knows what it mapped, and reads /proc/self/maps when a call fails -------
    def proc_maps(self) -> list[tuple[int, int]]:
        """/proc/self/maps: the vmas' ranges, read under mmap_sem (read) as show_map's m_start takes it."""
        k = self.k
        k.locks.down_read(k.mmap_sem(self.m), "show_map")
        maps = [(int(k.vm.start[ref_slot(v)]), int(k.vm.end[ref_slot(v)])) for v in mmm.vma_list(k, self.m)]
        k.locks.up_read(k.mmap_sem(self.m), "show_map")
        return maps

    def syscall_failure(self, what: str, maps: list[tuple[int, int]]) -> None:
        step, who = self.k.ctl.clock()
        raise Failure(
            "syscall",
            f"{who}: {what}, at step {step}; /proc/self/maps: "
            + (" ".join(f"[{a},{b})" for a, b in maps) or "empty"),
            {"task": who, "step": step, "maps": [list(x) for x in maps]},
        )

    def fork(self) -> None:
        k = self.k
        if self.forks_left <= 0 or not (k.st.mm.state == FREE).any():
            return  # -EAGAIN: no mm_struct left for a child
        tid = k.ctl.reserve()  # no scheduling point since the check: dup_mmap's mm_alloc cannot fail
        if tid < 0:
            return  # -EAGAIN: no task left
        cref = mmm.dup_mmap(k, self.mref)
        k.st.expect[ref_slot(cref), :] = k.st.expect[self.m, :]  # the child's memory is the parent's
        k.atomic_add(k.g, G_MM_LIVE, 1)
        k.ctl.spawn(tid, MM, (cref, self.cfg_idx, 1, self.forks_left - 1, 0, 1))
        self.forks_left -= 1


def ksmd_body(k: K, sc: Scenario) -> None:
    """ksm_scan_thread: scan a batch under ksm_thread_mutex, sleep, repeat. Simplified: the sleep is one yielding
    scheduling point, and ksmd ends once every mm is gone (the kernel's never does), pruning stale stable nodes."""
    while True:
        k.locks.lock(k.ksm_thread_mutex, "ksm_scan_thread")
        if ksm.ksmd_should_run(k):
            ksm.ksm_do_scan(k, sc.pages_to_scan)
        k.hooks.ksm_quiescent(k, "ksm_scan_thread")
        k.locks.unlock(k.ksm_thread_mutex, "ksm_scan_thread")
        if k.g[G_MM_LIVE] == 0 and ksm.ksm_mm_list_empty(k):
            break
        k.point("ksmd:sleep", yielding=True)
    # quiescence means every other task is gone: reclaim may still hold a KSM page's reference until it exits
    while any(int(k.ctl.state[t]) not in (UNUSED, EXITED) for t in range(k.ctl.ntasks) if t != k.ctl.me):
        k.point("ksmd:sleep", yielding=True)
    ksm.prune_stale_stable_nodes(k)


def _pick_mapped_page(st: State, rng: random.Random, ksm_bias: float) -> int:
    """A seeded pick of a mapped page's slot (a KSM one with chance `ksm_bias` when there is one), or -1 when none
    is mapped: reclaim and hot-remove choose their victims alike."""
    cand = np.flatnonzero((st.page.state == LIVE) & (st.page.c["mapcount"] > 0))
    if not cand.size:
        return -1
    ksm_cand = cand[(st.page.c["flags"][cand] & PG_KSM) != 0]
    pool = ksm_cand if ksm_cand.size and rng.random() < ksm_bias else cand
    return int(pool[rng.randrange(pool.size)])


def reclaim_body(k: K, sc: Scenario, seed: int, tid: int) -> None:
    """kswapd over seeded picks: a mapped anon or KSM page (KSM ones preferred by ksm_bias) goes through
    shrink_active_list's unlocked page_referenced (`[reclaim] active` of the picks) or shrink_page, which walks it
    locked and sometimes swaps it out, then `[reclaim] pause` yields of rest. Simplified: no
    LRU; the pick is the PRNG's."""
    rng = random.Random(f"{seed}:{tid}")
    st = k.st
    while k.g[G_MM_LIVE] > 0:
        k.point("reclaim:sleep", yielding=True)
        s = _pick_mapped_page(st, rng, sc.reclaim_ksm_bias)
        if s < 0:
            continue
        page = memory.get_page_unless_zero(k, s)  # isolate_lru_page: the page may be freed meanwhile
        if page and sc.reclaim_active and rng.random() < sc.reclaim_active:  # drawn only when on
            vmscan.shrink_active_page(k, page)  # the unlocked page_referenced of shrink_active_list
            memory.put_page(k, page, "putback_lru_page")
        elif page and not vmscan.shrink_page(k, page, rng.random() < sc.reclaim_swap):
            memory.put_page(k, page, "putback_lru_page")  # kept: freed pages took their isolation reference
        if sc.reclaim_swapoff and rng.random() < sc.reclaim_swapoff:  # drawn only when on: other seeds unchanged
            swapfile.try_to_unuse(k)  # swapoff(2) then swapon(2)
        for _ in range(sc.reclaim_pause):  # kswapd waits for the next shortage: mms may settle meanwhile
            if k.g[G_MM_LIVE] == 0:
                break
            k.point("reclaim:sleep", yielding=True)
    vmscan.drain_swap_cache(k)  # before ksmd's last prune: a KSM page in the swap cache keeps its stable node


def migrate_body(k: K, sc: Scenario, seed: int, tid: int) -> None:
    """Memory hot-remove over seeded picks: a mapped anon or KSM page (KSM ones preferred by `[migrate]
    ksm_bias`) stands for a section to offline; offline_page migrates it under ksm_thread_mutex. Simplified: one
    page per offline, no retry passes."""
    rng = random.Random(f"{seed}:{tid}:migrate")
    st = k.st
    while k.g[G_MM_LIVE] > 0:
        k.point("migrate:sleep", yielding=True)
        s = _pick_mapped_page(st, rng, sc.migrate_ksm_bias)
        if s < 0:
            continue
        migrate.offline_page(k, s)
        for _ in range(sc.migrate_pause):
            if k.g[G_MM_LIVE] == 0:
                return
            k.point("migrate:sleep", yielding=True)


def admin_body(k: K, sc: Scenario) -> None:
    """A root shell that now and then writes 2 then 1 to /sys/kernel/mm/ksm/run."""
    while k.g[G_MM_LIVE] > 0:
        for _ in range(sc.admin_unmerge_every):
            k.point("admin:sleep", yielding=True)
            if k.g[G_MM_LIVE] == 0:
                return
        ksm.run_store(k, KSM_RUN_UNMERGE)
        k.point("admin:sleep", yielding=True)
        ksm.run_store(k, KSM_RUN_MERGE)


def task_granularity(sc: Scenario, kind: int, cfg_idx: int) -> str:
    """The scenario's own granularity for a task of `kind` (an mm task's, its [[task]]'s `cfg_idx`: forks and
    threads take their program's); "" when it sets none."""
    if kind == MM:
        return sc.tasks[cfg_idx].granularity
    return {KSMD: sc.ksmd_granularity, RECLAIM: sc.reclaim_granularity, ADMIN: sc.admin_granularity,
            MIGRATE: sc.migrate_granularity}.get(kind, "")


def run_task(k: K, sc: Scenario, seed: int, tid: int) -> None:
    """A task process's life once first granted the CPU: its body, then exit; any failure ends the run."""
    ctl = k.ctl
    try:
        kind = int(ctl.kind[tid])
        k.coarsen(task_granularity(sc, kind, int(ctl.arg[tid, A_CFG])))
        if kind == MM:
            MmTask(k, sc, seed, tid).run()
        elif kind == KSMD:
            ksmd_body(k, sc)
        elif kind == RECLAIM:
            reclaim_body(k, sc, seed, tid)
        elif kind == ADMIN:
            admin_body(k, sc)
        elif kind == MIGRATE:
            migrate_body(k, sc, seed, tid)
        k.hooks.task_exit(k)
        ctl.exit_current()
    except Failure as f:
        ctl.report(f.to_dict())
    except Exception as e:  # a defect of the framework itself: report it, never hang the run
        step, who = ctl.clock()
        ctl.report(
            {
                "class": "crash",
                "message": f"{who} raised {type(e).__name__}: {e} at step {step}",
                "details": {"traceback": traceback.format_exc()},
            }
        )
    os._exit(0)
