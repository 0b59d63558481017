"""The modelled kernel's memory: every table of the arena, and `K`, the context each model function receives.

Addresses are page numbers inside an mm (page 0 is never mapped, as address 0 is not in Linux). Page contents
are `page_size` bytes per frame. Flags and pointer tags follow the kernel's meaning: a KSM page is PageAnon and
PageKsm and its mapping names its stable_node; an anon page's mapping names its anon_vma.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..arena import Column, Ring, SharedBlock, Stamp, Table, make_ref
from ..sched import DEFAULT_GRANULARITY, GRANULARITIES, coarsest
from ..sched.control import STEP
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
# A pte is one word, as in the kernel: kind in the low two bits, the write bit above, the target (a page or swap
# reference) above that; one load gives a reader without the pte lock the kind and target of the same moment.
PTE_KIND_MASK, PTE_WRITE, PTE_SHIFT = 3, 4, 3


def mk_pte(kind: int, ref: int, write: int) -> int:
    """The pte word for `kind` naming `ref` (mk_pte / swp_entry_to_pte)."""
    return (ref << PTE_SHIFT) | (PTE_WRITE if write else 0) | kind


def pte_decode(word: int) -> tuple[int, int, int]:
    """(kind, target reference, write bit) of one pte word."""
    return word & PTE_KIND_MASK, word >> PTE_SHIFT, int(bool(word & PTE_WRITE))


def pte_fields(words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kind, target reference, write) arrays of a copy of pte words: a detector scanning many ptes reads each
    word once, so kind and target always belong to the same moment."""
    w = np.array(words, copy=True)
    return w & PTE_KIND_MASK, w >> PTE_SHIFT, (w & PTE_WRITE) != 0

# --- issue 14 part B: mlock, swap, migration ---------------------------------------------------------------
PG_MLOCKED = 4  # struct page: PageMlocked (mm/mlock.c), set and cleared under the page lock
# Not the kernel's: the detectors' note that PG_MLOCKED was last set while no VM_LOCKED vma mapped the page (a
# racing mlock_vma_page, e.g. KSM's hand-over to a kpage unmapped meanwhile): its free is the kernel's tolerated
# unevictable_pgs_mlockfreed, not a missed munlock
PG_MLOCK_STRAY = 8
# --- swap cache (mm/swap_state.c, mm/swapfile.c) ---
PG_SWAPCACHE = 16  # struct page: PageSwapCache, page->private then holds the swap entry (set under the page lock)
EEXIST, ENOENT = 17, 2  # __swap_duplicate's refusals: SWAP_HAS_CACHE already set / the entry is not in use
VM_LOCKED = 2  # vma->vm_flags: mlock()ed
# a migration entry (swp_entry of type SWP_MIGRATION_READ/WRITE): the pte names the page under migration, whose
# lock the migrating task holds; a fault on it waits for that lock (migration_entry_wait). The write bit is the
# entry's (is_write_migration_entry).
PTE_MIGRATION = 3
# try_to_unmap's ttu_flags actions (TTU_ACTION); the IGNORE bits as the kernel passes them
TTU_UNMAP, TTU_MIGRATION, TTU_MUNLOCK = 0, 1, 2
TTU_IGNORE_MLOCK = 1 << 8
SWAP_MLOCK = 3  # try_to_unmap's verdict: a VM_LOCKED vma maps the page (beside rmap's SWAP_SUCCESS/AGAIN/FAIL)
# Later kernels' behaviours the model can take on (K.later), by name: the release that brought each, and what it
# changes. The kernel oracle (kernel/later.py) applies those the running kernel has where 2.6.33's figures differ.
LATER_BEHAVIOURS: dict[str, tuple[str, str]] = {
    "page_sharing_candidate": ("4.13", "is_page_sharing_candidate: no merge into a stable node without rmap_items"),
    "mlock_populate": ("2.6.38", "__mm_populate: mlock write-faults a range already locked"),
}
# cells of `k.gb` (the array "mm.partb")
GB_NR_MLOCK = 0  # NR_MLOCK: pages with PG_MLOCKED set
GB_MIGRATING = 1  # migrations in flight (the old page is locked and maybe unmapped into migration entries)
GB_CELLS = 4
# --- end of issue 14 part B block ---------------------------------------------------------------------------

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
    # entries whose SWAP_HAS_CACHE is set while swapper_space holds no page for them: add_to_swap between
    # get_swap_page and add_to_swap_cache, a swap-in between swapcache_prepare and __add_to_swap_cache, a delete
    # between __delete_from_swap_cache and swapcache_free (the detectors' tally, changed in the same atomic step)
    G_SWAPIN_HELD,
) = range(17)
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


# -- the kernel's objects, one table each: a column per field the model needs ------------------------------------
class Pages(Table):
    """struct page, one per frame (the frame's bytes are `State.frames[slot]`)."""

    TRACKED = ("count", "mapcount")

    flags: Column  # PG_ANON | PG_KSM
    count: Column  # _count: references
    mapcount: Column  # _mapcount + 1: ptes mapping the page
    mapping: Column  # anon page: its anon_vma; KSM page: its stable_node (0 while it has none)
    index: Column  # page->index: linear_page_index(vma, address) = vm_pgoff + (address - vm_start)
    private: Column  # page_private: while PageSwapCache, the swap entry (a swap reference)


class MmStructs(Table):
    """struct mm_struct (its page table is row `slot` of `State.pte`)."""

    TRACKED = ("users", "mmcount")

    users: Column  # mm_users
    mmcount: Column  # mm_count
    flags: Column  # MMF_VM_MERGEABLE
    mmap: Column  # the first vma of the address-ordered list
    slot: Column  # its ksm mm_slot (the kernel finds it through mm_slots_hash)


class Vmas(Table):
    """struct vm_area_struct, covering [start, end) in pages."""

    mm: Column  # vm_mm
    start: Column  # vm_start
    end: Column  # vm_end
    flags: Column  # vm_flags: VM_MERGEABLE
    anon_vma: Column
    next: Column  # vm_next: the mm's list
    av_next: Column  # anon_vma_node: the anon_vma's list
    av_prev: Column
    pgoff: Column  # vm_pgoff: for an anon vma, vm_start's page number when it was mmapped (mremap keeps it)


class AnonVmas(Table):
    """struct anon_vma: the list of vmas its pages may be mapped in, and db114b83ab's ksm_refcount."""

    TRACKED = ("refcount",)
    ARG = "rmap_item"  # the rmap_item whose reference it is

    refcount: Column  # ksm_refcount
    head: Column  # the first and last vma of the list
    tail: Column


class RmapItems(Table):
    """struct rmap_item: one page of one mm that ksmd scanned."""

    mm: Column
    address: Column  # the page's address (the kernel keeps STABLE_FLAG / UNSTABLE_FLAG in its low bits)
    flags: Column  # STABLE_FLAG | UNSTABLE_FLAG
    seqnr: Column  # the scan that put it in the unstable tree (the kernel's low bits of address)
    oldchecksum: Column
    anon_vma: Column  # while in the stable tree: the page's anon_vma, referenced
    rmap_next: Column  # rmap_list: the mm_slot's address-ordered list
    head: Column  # while in the stable tree: its stable_node
    hnext: Column  # hlist node on the stable_node's list
    hprev: Column
    left: Column  # rb_node while in the unstable tree
    right: Column
    parent: Column


class StableNodes(Table):
    """struct stable_node: a KSM page in the stable tree, and the rmap_items that map it."""

    kpfn: Column  # the KSM page's frame
    hfirst: Column  # hlist.first: the first rmap_item
    left: Column  # rb_node
    right: Column
    parent: Column


class MmSlots(Table):
    """struct mm_slot: an mm on ksmd's list (slot MM_SLOT_HEAD is ksm_mm_head, the list head)."""

    mm: Column
    rmap_list: Column  # the first rmap_item
    next: Column  # mm_list
    prev: Column


class SwapSlots(Table):
    """A swap entry: swap_map[offset] as two columns (the count of swap ptes and SWAP_HAS_CACHE), swapper_space's
    radix tree slot for it, and, in `State.swapdata`, the bytes written out. The slot is free when both are 0."""

    TRACKED = ("count", "cache")

    count: Column  # swap_map & ~SWAP_HAS_CACHE: the swap ptes naming the entry
    cache: Column  # SWAP_HAS_CACHE: the swap cache holds (or is adding or deleting) a page for the entry
    # swapper_space's radix tree, keyed by the entry: the page in the swap cache for it (0 when none). Its
    # tree_lock is the model's atomic step (k.guard): every insert, delete and lookup is one step.
    page: Column


MM_SLOT_HEAD = 0  # the reserved mm_slot that is ksm_mm_head
PTE_HIST = 4  # stores kept per pte in its history ring (data-loss reports name the last merge, COW or replace)


class State:
    """All tables and arrays of the modelled kernel, laid out in one shared block."""

    def __init__(self, block: SharedBlock, sz: Sizes, ntasks: int) -> None:
        self.sz = sz
        q = sz.quarantine
        self.page = Pages(block, "page", sz.frames, q)
        self.mm = MmStructs(block, "mm_struct", sz.max_mm, 0)
        self.vma = Vmas(block, "vma", sz.max_mm * sz.max_vmas, q)
        self.anon_vma = AnonVmas(block, "anon_vma", sz.anon_vmas, q)
        self.rmap_item = RmapItems(block, "rmap_item", sz.rmap_items, q)
        self.stable_node = StableNodes(block, "stable_node", sz.stable_nodes, q)
        self.mm_slot = MmSlots(block, "mm_slot", sz.max_mm + 1, 0, reserved=MM_SLOT_HEAD + 1)
        self.swap = SwapSlots(block, "swap", sz.swap, q)
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
        self.stamp = Stamp(block)
        for t in self.tables:
            t.use_stamp(self.stamp, block)
        # per pte (key m * vpages + addr): field = kind, value = ref, arg = write bit
        self.pte_hist = Ring(block, "pte.hist", sz.max_mm * sz.vpages, PTE_HIST, self.stamp)
        block.want("frames", np.uint8, (sz.frames, sz.page_size))
        block.want("swapdata", np.uint8, (sz.swap, sz.page_size))
        block.want("pte", np.int64, (sz.max_mm, sz.vpages))  # mk_pte words
        block.want("expect", np.int64, (sz.max_mm, sz.vpages))
        block.want("window", np.int64, (sz.max_mm, sz.vpages, 3))  # checks.windows: the kernel window a pte is in
        block.want("ksm.g", np.int64, 17)
        block.want("mm.partb", np.int64, GB_CELLS)  # issue 14 part B: NR_MLOCK, migrations in flight
        self.locks = LockSpace(
            block,
            {MMAP_SEM: sz.max_mm, PAGE_LOCK: sz.frames, ANON_VMA_LOCK: sz.anon_vmas, PAGE_TABLE_LOCK: sz.max_mm},
            ntasks,
        )

    def bind(self, a: dict[str, np.ndarray]) -> None:
        self.stamp.bind(a)
        for t in self.tables:
            t.bind(a)
        self.pte_hist.bind(a)
        self.frames = a["frames"]
        self.swapdata = a["swapdata"]
        self.pte = a["pte"]
        self.expect = a["expect"]
        self.window = a["window"]
        self.g = a["ksm.g"]
        self.gb = a["mm.partb"]  # issue 14 part B
        self.locks.bind(a)
        # ksm_mm_head: a permanent slot (never freed, so its reference never changes), an empty list at first
        self.ksm_mm_head = head = self.mm_slot.ref_of(MM_SLOT_HEAD)
        self.mm_slot.next[MM_SLOT_HEAD] = head
        self.mm_slot.prev[MM_SLOT_HEAD] = head
        self.g[G_SCAN_SLOT] = head
        self.g[G_RUN] = KSM_RUN_MERGE
        self.g[G_REFCOUNT_BITS] = 32
        self.expect[:] = -1


def _no_point(site: str) -> None:
    """The shared-access point at `locks` granularity: nothing (bound once, so the call sites test nothing)."""


def _no_point_unless(lid: int, site: str) -> None:
    """spoint_unless at `locks` granularity: nothing."""


def _nothing() -> None:
    """No switch to turn off (spoint_unless at `locks` granularity is no point already)."""


class K:
    """The context a model function runs in: state, locks, scheduler handle, detector hooks, bug switches."""

    def __init__(
        self, st: State, ctl: Control, hooks: Hooks | None, bugs: frozenset[str], granularity: str = DEFAULT_GRANULARITY
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}")
        self.st = st
        self.ctl = ctl
        self.granularity = granularity
        # k.spoint(site): a scheduling point before a shared access the kernel makes without the lock that would
        # serialise it (an atomic, a list link, a page flag bit, a lockless read), so another task can run between
        # a read and the write that depends on it. The scheduler's own point at `shared` granularity (free mode's
        # chaos included), a no-op at `locks`: chosen here once, never tested per call.
        self.spoint: Callable[[str], None] = ctl.point if granularity == "shared" else _no_point
        # k.spoint_unless(lid, site): the same point, unless the running task holds lock `lid`, the lock that
        # serialises this access (anon_vma->lock for its vma list, the KSM page's lock for its stable node's list
        # and PG_KSM, ksm_mmlist_lock for the mm_slot list): under it no other task can touch the data, so a point
        # adds nothing; without it (a lockless reader, a bug, a mutant that dropped the lock) the access races.
        # k.pte_spoint(m, site): spoint_unless for a pte of mm m and its page_table_lock.
        self.spoint_unless: Callable[[int, str], None] = _no_point_unless
        self.pte_spoint: Callable[[int, str], None] = _no_point_unless
        self._points_off: Callable[[], None] = _nothing  # coarsen's switch for the two (a wrapper may hold them)
        if granularity == "shared":
            self.spoint_unless, self.pte_spoint, self._points_off = self._shared_points(
                ctl, st.locks._owner, st.locks.base[PAGE_TABLE_LOCK])
        self.hooks: Hooks = hooks or NoHooks()
        self.bugs = bugs
        # later kernels' behaviours this model takes on (LATER_BEHAVIOURS): set only by the kernel oracle's model
        # side (kernel/later.py), to tell a difference a later kernel makes from a fault of the model
        self.later_kernel: frozenset[str] = frozenset()
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
        st.stamp.use_clock(memoryview(ctl.meta), STEP, ctl, ctl.label)  # a history entry's stamp: no scheduling point
        st.stamp.guard = ctl.guard
        # the history ring behind each TRACKED column, by the column's identity (atomic_add's fast lookup)
        self._tracked = {id(getattr(t, f)): (t.hist, j) for t in st.tables for j, f in enumerate(t.TRACKED)}
        # the tables by short name, so the model reads field by field as the kernel does:
        # stable_node->hlist.first = next is k.sn.hfirst[n] = nxt, and k.sn.deref(ref, site) is the KASAN check
        self.pg: Pages = st.page
        self.mmc: MmStructs = st.mm
        self.vm: Vmas = st.vma
        self.av: AnonVmas = st.anon_vma
        self.ri: RmapItems = st.rmap_item
        self.sn: StableNodes = st.stable_node
        self.ms: MmSlots = st.mm_slot
        self.g = st.g
        self.gb = st.gb  # issue 14 part B: NR_MLOCK, migrations in flight

    def atomic_add(self, view: Column | np.ndarray, i: int, delta: int, site: str = "atomic_add", arg: int = 0) -> int:
        """atomic_add_return: one read-modify-write that no other task can interleave (page _count, _mapcount,
        swap_map, ksm_refcount, mm_users...); the guard is a real mutex only in free mode. At `shared`
        granularity a scheduling point comes before it (never inside: the read-modify-write stays atomic). A
        TRACKED column's change goes into its object's history ring, at `site` (arg: the table's ARG object)."""
        self.spoint(site)
        with self.guard:
            v = view[i] + delta
            view[i] = v
            tr = self._tracked.get(id(view))
            if tr is not None:
                tr[0].note(i, tr[1], v, site, arg)
        return int(v)

    @staticmethod
    def _shared_points(
        ctl: Control, owner: memoryview, ptl_base: int
    ) -> tuple[Callable[[int, str], None], Callable[[int, str], None], Callable[[], None]]:
        """spoint_unless and pte_spoint at `shared` granularity, as closures over the lock owners (the hot path:
        no attribute lookups beyond the running task's id), and the switch that makes both no points (coarsen:
        through the closures' cell, so a wrapper installed around them, the access log's, keeps working)."""
        point = ctl.point

        def spoint_unless(lid: int, site: str) -> None:
            if owner[lid] != ctl.me:
                point(site)

        def pte_spoint(m: int, site: str) -> None:
            if owner[ptl_base + m] != ctl.me:
                point(site)

        def off() -> None:
            nonlocal point
            point = _no_point

        return spoint_unless, pte_spoint, off

    def coarsen(self, level: str) -> None:
        """The running task's process runs at `level` (sched.TASK_GRANULARITIES) when it is coarser than the run's:
        from `locks` on, its shared accesses are no points; at `yields` its lock operations and cond_resched are
        none either (Control.coarsen). Called once, in the task's own process, before its body."""
        level = coarsest(self.granularity, level)
        if level == self.granularity or not self.ctl.coarsen(level):
            return
        self.spoint = _no_point
        self._points_off()

    def bug(self, name: str) -> bool:
        """Whether bug variant `name` is switched on (each variant is consulted at exactly one place)."""
        return name in self.bugs

    def later(self, name: str) -> bool:
        """Whether this model behaves as a later kernel does at `name` (a LATER_BEHAVIOURS key; each consulted at
        exactly one place). Never on in a scheduled run: those test 2.6.33."""
        return name in self.later_kernel

    def point(self, site: str, yielding: bool = False) -> None:
        """A scheduling point; a yielding one is where the task sleeps (schedule): no spinlock may be held."""
        if yielding:
            self.hooks.might_sleep(self, site, True)
        self.ctl.point(site, yielding)

    def cond_resched(self, site: str) -> None:
        """cond_resched(): a scheduling point where the task may sleep; 2.6.33's cond_resched() begins with
        __might_sleep, so no spinlock may be held here."""
        self.hooks.might_sleep(self, site)
        self.ctl.point(site, False)

    def might_sleep(self, site: str) -> None:
        """might_sleep(): a GFP_KERNEL (or GFP_HIGHUSER) allocation and the like may sleep: no spinlock held."""
        self.hooks.might_sleep(self, site)

    def kmem_cache_alloc(self, table: Table, site: str) -> int:
        """kmem_cache_alloc(cache, GFP_KERNEL): the allocation may sleep (might_sleep), then the new object's ref."""
        self.hooks.might_sleep(self, site)
        return table.alloc(site)

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
