"""The model's side of a kernel workload: the same processes and pages on a single-task model kernel.

Processes are mms (exec is mm_alloc + mmap + madvise, fork is dup_mmap, exit is mmput); a write is a user store
of the pattern's bytes; ksmd is ksm_do_scan under ksm_thread_mutex, run pass by pass until the counters settle.
Pages are `PAGE` bytes here against 4096 on the kernel: a pattern fills either page size the same way, so the
same pages are equal on both sides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..arena import ref_slot
from ..checks.content import pattern_bytes
from ..mm import ksm, memory, mlock, mremap
from ..mm import mm as mmm
from ..mm.state import (
    G_PAGES_SHARED,
    G_PAGES_SHARING,
    G_PAGES_UNSHARED,
    G_RUN,
    G_SEQNR,
    KSM_RUN_MERGE,
    PTE_NONE,
    STABLE_FLAG,
    K,
    Sizes,
)
from ..runner import solo_kernel
from . import pageout
from .workload import Action, Figures, Workload

PAGE = 16  # model page size: patterns stay distinct down to 2 bytes
SCAN_BATCH = 10_000  # pages_to_scan, as the kernel side sets it


@dataclass(frozen=True)
class Settled:
    """A phase's outcome on one side: the figures, the full scans it took, and whether they settled."""

    figures: Figures
    scans: int
    seconds: float
    settled: bool = True
    returns: tuple[int, ...] | None = None  # what each madvise span's call of the phase returned; None: not recorded


def region_bases(w: Workload) -> list[int]:
    """Model address of each region index: regions one after another from page 1, a page of gap between."""
    most = max(len(regs) for regs in w.layout().values())
    widest = [max((regs[i].pages for regs in w.layout().values() if i < len(regs)), default=0) for i in range(most)]
    bases, addr = [], 1
    for n in widest:
        bases.append(addr)
        addr += n + 1
    return bases


def sizes_for(w: Workload) -> Sizes:
    """Arena dimensions no run of `w` can outgrow."""
    layout = w.layout()
    bases = region_bases(w)
    widest = max(bases[len(regs) - 1] + regs[-1].pages for regs in layout.values())
    range_ops = sum(1 for ph in w.phases for a in ph.actions
                    if a.kind in ("munmap", "mergeable", "unmergeable", "mlock", "munlock", "dontneed"))
    range_ops += 2 * sum(1 for ph in w.phases for a in ph.actions if a.kind == "mremap")  # two munmaps and a copy
    nregions = max(len(regs) for regs in layout.values())
    total = w.total_pages
    nmm = len(layout)
    max_vmas = nregions + 2 * range_ops + 2 + 3  # move_vma wants three vmas to spare
    return Sizes(
        page_size=PAGE,
        vpages=widest + 2,
        max_mm=nmm,
        max_vmas=max_vmas,
        frames=2 * total + 64,
        swap=total + 16,  # every page may be paged out
        rmap_items=total + 64,
        stable_nodes=total + 64,
        anon_vmas=nmm * max_vmas + 64,
        quarantine=4,
    )


class ModelSide:
    """One workload on a fresh model kernel, driven action by action (`apply`) and phase by phase (`settle`)."""

    def __init__(self, w: Workload, min_scans: int = 4, max_scans: int = 400,
                 later: frozenset[str] = frozenset()) -> None:
        self.w = w
        self.min_scans, self.max_scans = min_scans, max_scans
        self.k: K = solo_kernel(sizes_for(w))
        self.k.later_kernel = later  # later kernels' behaviours to take on (later.py); none: 2.6.33
        self.bases = region_bases(w)
        self.mms: dict[str, int] = {}  # live process -> mm reference
        self.threads: dict[str, str] = {}  # live thread -> its process, whose mm it shares (mm_users + 1)
        self.returns: list[int] = []  # this phase's madvise return values, span by span
        for p in w.processes:
            mref = mmm.mm_alloc(self.k)
            for i, r in enumerate(p.regions):
                if not mmm.sys_mmap(self.k, mref, self.bases[i], r.pages, 0):
                    raise RuntimeError(f"model: mmap of {p.name}.{i} failed")
                if r.mergeable:
                    mmm.sys_madvise(self.k, mref, self.bases[i], self.bases[i] + r.pages, ksm.MADV_MERGEABLE)
            self.mms[p.name] = mref

    # -- actions ---------------------------------------------------------------------------------------------
    def apply(self, a: Action) -> None:
        k = self.k
        if a.kind == "run":
            ksm.run_store(k, a.value)
            return
        mref = self.mms[a.proc]
        m = ref_slot(mref)
        if a.kind == "write":
            for region, page, pat in a.page_patterns():
                if not memory.user_write(k, m, self.bases[region] + page, pattern_bytes(pat, PAGE)):
                    raise RuntimeError(f"model: SIGSEGV writing {a.proc}.{region}[{page}]")
        elif a.kind == "read":  # a page never touched (or zapped) is not read: its read fault maps the ZERO_PAGE
            for s in a.spans:
                for addr in range(self.bases[s.region] + s.start, self.bases[s.region] + s.end):
                    k.locks.lock(k.ptl(m), "read")
                    kind = memory.pte_get(k, m, addr)[0]
                    k.locks.unlock(k.ptl(m), "read")
                    if kind != PTE_NONE and memory.user_read(k, m, addr) is None:
                        raise RuntimeError(f"model: SIGSEGV reading {a.text!r}")
        elif a.kind == "fork":
            self.mms[a.child] = mmm.dup_mmap(k, mref)
        elif a.kind == "thread":  # clone(CLONE_VM): the same mm, one more user
            mmm.copy_mm_clone_vm(k, mref)
            self.threads[a.child] = a.proc
        elif a.kind == "exit" and a.thread:  # the thread's exit: its mmput (never the last: its process lives)
            mmm.mmput(k, mref)
            del self.threads[a.thread]
        elif a.kind == "exit":  # exit_group: each thread's mmput, the last one tears the mm down
            for t in [t for t, p in self.threads.items() if p == a.proc]:
                mmm.mmput(k, mref)
                del self.threads[t]
            mmm.mmput(k, mref)
            del self.mms[a.proc]
        elif a.kind in ("mlock", "munlock"):
            for s in a.spans:
                start, end = self.bases[s.region] + s.start, self.bases[s.region] + s.end
                if mlock.sys_mlock(k, mref, start, end, a.kind == "mlock"):
                    raise RuntimeError(f"model: {a.text!r} failed")
        elif a.kind == "mremap":  # MREMAP_MAYMOVE | MREMAP_FIXED to page `dest` of the span's region
            s = a.spans[0]
            base = self.bases[s.region]
            flags = mremap.MREMAP_MAYMOVE | mremap.MREMAP_FIXED
            n = s.end - s.start
            if mremap.sys_mremap(k, mref, base + s.start, n, n, flags, base + a.dest) != base + a.dest:
                raise RuntimeError(f"model: {a.text!r} failed")
        elif a.kind == "munmap":
            for s in a.spans:
                if not mmm.sys_munmap(k, mref, self.bases[s.region] + s.start, self.bases[s.region] + s.end):
                    raise RuntimeError(f"model: munmap of {a.text!r} ran out of vmas")
        elif a.kind == "pageout":  # MADV_PAGEOUT (5.4): the model's stand-in, pageout.py
            for s in a.spans:
                start, end = self.bases[s.region] + s.start, self.bases[s.region] + s.end
                self.returns.append(pageout.madvise_pageout(k, mref, start, end))
        else:  # madvise: MERGEABLE / UNMERGEABLE, or DONTNEED (zap_page_range; -EINVAL on a VM_LOCKED vma)
            advice = {"mergeable": ksm.MADV_MERGEABLE, "unmergeable": ksm.MADV_UNMERGEABLE,
                      "dontneed": mmm.MADV_DONTNEED}[a.kind]
            for s in a.spans:
                self.returns.append(
                    self.madvise(mref, self.bases[s.region] + s.start, self.bases[s.region] + s.end, advice)
                )

    def madvise(self, mref: int, start: int, end: int, advice: int) -> int:
        """madvise(2) as the program would call it (the model splits vmas at the range's edges, as 2.6.33), and
        its return value: -ENOMEM over a range with unmapped pages, whose mapped parts are advised all the same
        (sizes_for leaves room for every split, so a split never fails here)."""
        return mmm.sys_madvise(self.k, mref, start, end, advice)

    # -- ksmd ------------------------------------------------------------------------------------------------
    def full_scan(self) -> None:
        """ksm_scan_thread until one more full scan has completed (seqnr++)."""
        k = self.k
        target = int(k.g[G_SEQNR]) + 1
        while int(k.g[G_SEQNR]) < target and ksm.ksmd_should_run(k):
            k.locks.lock(k.ksm_thread_mutex, "ksm_scan_thread")
            ksm.ksm_do_scan(k, SCAN_BATCH)
            k.locks.unlock(k.ksm_thread_mutex, "ksm_scan_thread")

    def figures(self) -> Figures:
        """The counters, and per live process its rmap_items in the stable tree (what ksm_merging_pages counts)."""
        k = self.k
        ri = k.st.rmap_item.c  # numpy columns (k.ri is the scalar view)
        items = k.st.rmap_item.live_slots()
        owners = ri["mm"][items[(ri["flags"][items] & STABLE_FLAG) != 0]]
        return Figures(
            shared=int(k.g[G_PAGES_SHARED]),
            sharing=int(k.g[G_PAGES_SHARING]),
            unshared=int(k.g[G_PAGES_UNSHARED]),
            merging={name: int(np.count_nonzero(owners == mref)) for name, mref in self.mms.items()},
        )

    def settle(self) -> Settled:
        """Full scans until at least `min_scans` have run and two in a row left the figures unchanged (no scans
        at all when ksmd would not run: run is 0 or 2, or no mm is registered)."""
        t0 = time.perf_counter()
        returns, self.returns = tuple(self.returns), []
        if not int(self.k.g[G_RUN]) & KSM_RUN_MERGE:
            return Settled(self.figures(), 0, time.perf_counter() - t0, returns=returns)
        prev, scans = self.figures(), 0
        while scans < self.max_scans:
            if not ksm.ksmd_should_run(self.k):
                break
            self.full_scan()
            scans += 1
            cur = self.figures()
            if scans >= self.min_scans and cur == prev:
                return Settled(cur, scans, time.perf_counter() - t0, returns=returns)
            prev = cur
        return Settled(self.figures(), scans, time.perf_counter() - t0, scans < self.max_scans, returns)


def run_model(w: Workload, min_scans: int = 4, later: frozenset[str] = frozenset()) -> tuple[list[Settled], float]:
    """Every phase of `w` on the model (as 2.6.33, or with `later` kernels' behaviours): the settled figures per
    phase and the total wall time."""
    t0 = time.perf_counter()
    side = ModelSide(w, min_scans, later=later)
    out = []
    for ph in w.phases:
        for a in ph.actions:
            side.apply(a)
        out.append(side.settle())
    return out, time.perf_counter() - t0
