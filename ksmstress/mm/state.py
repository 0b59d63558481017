"""The modelled kernel's memory: every table of the arena, and `K`, the context each model function receives.

Addresses are page numbers inside an mm (page 0 is never mapped, as address 0 is not in Linux). Page contents
are `page_size` bytes per frame. Flags and pointer tags follow the kernel's meaning: a KSM page is PageAnon and
PageKsm and its mapping names its stable_node; an anon page's mapping names its anon_vma.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..arena import SharedBlock, Table, make_ref
from ..sync import (
    ANON_VMA_LOCK,
    KSM_MMLIST_LOCK,
    KSM_THREAD_MUTEX,
    MMAP_SEM,
    PAGE_LOCK,
    PAGE_TABLE_LOCK,
    Locks,
    LockSpace,
)
from .hooks import Hooks, NoHooks

if TYPE_CHECKING:
    from ..sched.control import Control

# struct page flags
PG_ANON, PG_KSM = 1, 2
# mm->flags
MMF_VM_MERGEABLE = 1
# vma->vm_flags
VM_MERGEABLE = 1
# rmap_item flags (the kernel keeps them in the low bits of ->address)
STABLE_FLAG, UNSTABLE_FLAG = 1, 2
SEQNR_MASK = 0xFF
# pte kinds
PTE_NONE, PTE_PRESENT, PTE_SWAP = 0, 1, 2

# ksm globals (cells of `k.g`)
(
    G_RUN,
    G_PAGES_TO_SCAN,
    G_SCAN_SLOT,
    G_SCAN_ADDRESS,
    G_SCAN_RL_KIND,
    G_SCAN_RL_REF,
    G_SEQNR,
    G_STABLE_ROOT,
    G_UNSTABLE_ROOT,
    G_PAGES_SHARED,
    G_PAGES_SHARING,
    G_PAGES_UNSHARED,
    G_RMAP_ITEMS,
    G_MM_LIVE,
    G_MAX_REFCOUNT,
    G_REFCOUNT_BITS,
) = range(16)
RL_SLOT, RL_ITEM = 0, 1  # ksm_scan.rmap_list points into an mm_slot's head or into an rmap_item's next

KSM_RUN_STOP, KSM_RUN_MERGE, KSM_RUN_UNMERGE = 0, 1, 2


@dataclass(frozen=True)
class Sizes:
    """Arena dimensions for one run, derived from the scenario."""

    page_size: int = 64
    vpages: int = 32  # address-space size of every mm, in pages
    max_mm: int = 16
    max_vmas: int = 8  # per mm
    frames: int = 512
    swap: int = 512
    rmap_items: int = 512
    stable_nodes: int = 256
    anon_vmas: int = 128
    quarantine: int = 16


class State:
    """All tables and arrays of the modelled kernel, laid out in one shared block."""

    def __init__(self, block: SharedBlock, sz: Sizes, ntasks: int) -> None:
        self.sz = sz
        q = sz.quarantine
        nvma = sz.max_mm * sz.max_vmas
        self.page = Table(block, "page", sz.frames, ("flags", "count", "mapcount", "mapping", "index"), q)
        self.mm = Table(block, "mm_struct", sz.max_mm, ("users", "mmcount", "flags", "mmap", "slot"), 0)
        self.vma = Table(
            block, "vma", nvma, ("mm", "start", "end", "flags", "anon_vma", "next", "av_next", "av_prev"), q
        )
        self.anon_vma = Table(block, "anon_vma", sz.anon_vmas, ("refcount", "head", "tail"), q)
        self.rmap_item = Table(
            block,
            "rmap_item",
            sz.rmap_items,
            (
                "mm",
                "address",
                "flags",
                "seqnr",
                "oldchecksum",
                "anon_vma",
                "rmap_next",
                "head",
                "hnext",
                "hprev",
                "left",
                "right",
                "parent",
            ),
            q,
        )
        self.stable_node = Table(
            block, "stable_node", sz.stable_nodes, ("kpfn", "hfirst", "left", "right", "parent"), q
        )
        # slot 0 is ksm_mm_head, the permanent list head
        self.mm_slot = Table(block, "mm_slot", sz.max_mm + 1, ("mm", "rmap_list", "next", "prev"), 0, reserved=1)
        self.swap = Table(block, "swap", sz.swap, ("count",), q)
        self.tables = (
            self.page,
            self.mm,
            self.vma,
            self.anon_vma,
            self.rmap_item,
            self.stable_node,
            self.mm_slot,
            self.swap,
        )
        block.want("frames", np.uint8, (sz.frames, sz.page_size))
        block.want("swapdata", np.uint8, (sz.swap, sz.page_size))
        block.want("pte.kind", np.int8, (sz.max_mm, sz.vpages))
        block.want("pte.ref", np.int64, (sz.max_mm, sz.vpages))
        block.want("pte.write", np.int8, (sz.max_mm, sz.vpages))
        block.want("expect", np.int64, (sz.max_mm, sz.vpages))
        block.want("ksm.g", np.int64, 16)
        self.locks = LockSpace(
            block,
            {MMAP_SEM: sz.max_mm, PAGE_LOCK: sz.frames, ANON_VMA_LOCK: sz.anon_vmas, PAGE_TABLE_LOCK: sz.max_mm},
            ntasks,
        )

    def bind(self, a: dict[str, np.ndarray]) -> None:
        for t in self.tables:
            t.bind(a)
        self.frames = a["frames"]
        self.swapdata = a["swapdata"]
        self.pte_kind = a["pte.kind"]
        self.pte_ref = a["pte.ref"]
        self.pte_write = a["pte.write"]
        self.expect = a["expect"]
        self.g = a["ksm.g"]
        self.locks.bind(a)
        head = self.mm_slot.ref_of(0)
        self.mm_slot.c["next"][0] = head
        self.mm_slot.c["prev"][0] = head
        self.g[G_SCAN_SLOT] = head
        self.g[G_RUN] = KSM_RUN_MERGE
        self.g[G_REFCOUNT_BITS] = 32
        self.expect[:] = -1

    @property
    def ksm_mm_head(self) -> int:
        return self.mm_slot.ref_of(0)


class K:
    """The context a model function runs in: state, locks, scheduler handle, detector hooks, bug switches."""

    def __init__(self, st: State, ctl: Control, hooks: Hooks | None, bugs: frozenset[str]) -> None:
        self.st = st
        self.ctl = ctl
        self.hooks: Hooks = hooks or NoHooks()
        self.bugs = bugs
        self.locks = Locks(st.locks, ctl, self.hooks)
        ls = st.locks
        self.ksm_thread_mutex = ls.lid(KSM_THREAD_MUTEX)
        self.ksm_mmlist_lock = ls.lid(KSM_MMLIST_LOCK)
        self._mmap_sem = ls.base[MMAP_SEM]
        self._ptl = ls.base[PAGE_TABLE_LOCK]
        self._page_lock = ls.base[PAGE_LOCK]
        self._av_lock = ls.base[ANON_VMA_LOCK]
        self.guard = ctl.guard
        for t in st.tables:
            t.clock = ctl.clock
            t.guard = ctl.guard
        # column shortcuts (memoryviews: plain ints): the model reads like the kernel (pg["mapcount"][slot])
        self.pg = st.page.v
        self.mmc = st.mm.v
        self.vm = st.vma.v
        self.av = st.anon_vma.v
        self.ri = st.rmap_item.v
        self.sn = st.stable_node.v
        self.ms = st.mm_slot.v
        self.g = st.g

    def atomic_add(self, view: Any, i: int, delta: int) -> int:
        """atomic_add_return: one read-modify-write that no other task can interleave (page _count, _mapcount,
        swap_map, ksm_refcount, mm_users...); the guard is a real mutex only in free mode."""
        with self.guard:
            v = view[i] + delta
            view[i] = v
        return int(v)

    def bug(self, name: str) -> bool:
        """Whether bug variant `name` is switched on (each variant is consulted at exactly one place)."""
        return name in self.bugs

    def point(self, site: str, yielding: bool = False) -> None:
        self.ctl.point(site, yielding)

    # lock ids of per-object locks
    def mmap_sem(self, mm_slot: int) -> int:
        return self._mmap_sem + mm_slot

    def ptl(self, mm_slot: int) -> int:
        return self._ptl + mm_slot

    def page_lock(self, page_slot: int) -> int:
        return self._page_lock + page_slot

    def av_lock(self, av_slot: int) -> int:
        return self._av_lock + av_slot

    def page_ref(self, slot: int) -> int:
        return make_ref(slot, int(self.st.page.gen[slot]))

    def fail_details(self, **kw: Any) -> dict[str, Any]:
        step, who = self.ctl.clock()
        return {"step": step, "task": who, **kw}
