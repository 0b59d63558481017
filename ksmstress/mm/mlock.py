"""mlock and munlock: the parts of 2.6.33 mm/mlock.c that KSM meets (VM_LOCKED vmas, PageMlocked pages).

An mlocked page is unevictable: reclaim's try_to_unmap_one refuses it (SWAP_MLOCK) and marks it PageMlocked
lazily; munlock clears the flag and asks the rmap walk (try_to_munlock) whether another VM_LOCKED vma still maps
it, which sets it again. KSM merges pages of VM_LOCKED vmas too, so try_to_merge_one_page hands the lock over
from the page it frees to the KSM page ("ksm: fix mlockfreed to munlocked", 2.6.33).

Simplifications: no LRU, so isolate_lru_page / putback_lru_page are nothing (every page counts as isolated when
munlock_vma_page walks it); no RLIMIT_MEMLOCK and no mm->locked_vm (every mlock is allowed); mlockall is absent.
"""

from __future__ import annotations

import numpy as np

from ..arena import ref_slot
from ..callchain import kfunc
from . import memory, rmap
from .state import (
    GB_NR_MLOCK,
    PG_MLOCK_STRAY,
    PG_MLOCKED,
    PTE_PRESENT,
    PTE_WRITE,
    TTU_MUNLOCK,
    VM_LOCKED,
    K,
    mk_pte,
)


def PageMlocked(k: K, s: int) -> bool:  # noqa: N802 - the kernel's name
    return bool(k.pg.flags[s] & PG_MLOCKED)


def _set_mlocked(k: K, s: int, on: bool, site: str) -> bool:
    """TestSetPageMlocked / TestClearPageMlocked with NR_MLOCK's inc_zone_page_state: True when the bit changed.
    Under the page lock; the bit and the counter change in one step (no scheduling point between), so NR_MLOCK
    equals the PageMlocked pages whenever a detector looks."""
    k.spoint(site)
    with k.guard:
        had = bool(k.pg.flags[s] & PG_MLOCKED)
        if had == on:
            return False
        if on:
            k.pg.flags[s] |= PG_MLOCKED | (0 if _mapped_locked(k, s) else PG_MLOCK_STRAY)
        else:
            k.pg.flags[s] &= ~(PG_MLOCKED | PG_MLOCK_STRAY)
        k.gb[GB_NR_MLOCK] += 1 if on else -1
        return True


def _mapped_locked(k: K, s: int) -> bool:
    """Whether some VM_LOCKED vma maps page slot s now (the detectors' bookkeeping, read raw: not a kernel path)."""
    hits = np.argwhere((k.st.pte & ~PTE_WRITE) == mk_pte(PTE_PRESENT, k.page_ref(s), 0))
    for m, addr in hits.tolist():
        vref, n = k.mmc.mmap[m], 0
        while vref and n < k.vm.capacity:
            v = ref_slot(vref)
            if k.vm.start[v] <= addr < k.vm.end[v]:
                if k.vm.flags[v] & VM_LOCKED:
                    return True
                break
            vref, n = k.vm.next[v], n + 1
    return False


def mlock_vma_page(k: K, pref: int, vref: int) -> None:
    """Mark a page mlocked (BUG_ON(!PageLocked(page))); a no-op when it already is. `vref` is the VM_LOCKED vma the
    caller holds (2.6.33 passes only the page; the detectors check the caller's side of the contract)."""
    s = k.pg.deref(pref, "mlock_vma_page")
    k.hooks.lock_rule(k, "page_locked", k.page_lock(s), 2, s, "mlock_vma_page")
    k.hooks.mlocking(k, pref, vref, "mlock_vma_page")
    _set_mlocked(k, s, True, "mlock_vma_page")


@kfunc
def munlock_vma_page(k: K, pref: int) -> None:
    """Clear PageMlocked, then let try_to_munlock set it again if some VM_LOCKED vma still maps the page (the
    page is locked; simplified: isolate_lru_page always succeeds, there being no LRU)."""
    s = k.pg.deref(pref, "munlock_vma_page")
    k.hooks.lock_rule(k, "page_locked", k.page_lock(s), 2, s, "munlock_vma_page")
    if _set_mlocked(k, s, False, "munlock_vma_page"):
        try_to_munlock(k, pref)


@kfunc
def try_to_munlock(k: K, pref: int) -> int:
    """The rmap walk with TTU_MUNLOCK: each VM_LOCKED vma found mapping the page mlocks it again (SWAP_MLOCK);
    nothing is unmapped."""
    from . import ksm
    from .memory import PageAnon, PageKsm

    s = k.pg.deref(pref, "try_to_munlock")
    k.hooks.lock_rule(k, "page_locked", k.page_lock(s), 2, s, "try_to_munlock")
    if PageKsm(k, s):
        return ksm.try_to_unmap_ksm(k, pref, TTU_MUNLOCK)
    if PageAnon(k, s):
        return rmap.try_to_unmap_anon(k, pref, TTU_MUNLOCK)
    return rmap.SWAP_AGAIN


def _gup_one(k: K, m: int, vref: int, addr: int, write: bool) -> int:
    """__get_user_pages for one address (FOLL_TOUCH | FOLL_GET, FOLL_WRITE when asked): fault until the pte maps
    a page (writable when `write`), then return it with a reference taken under the pte lock."""
    ptl = k.ptl(m)
    while True:
        k.cond_resched("__get_user_pages:cond_resched")
        k.locks.lock(ptl, "follow_page")
        kind, ref, w = memory.pte_get(k, m, addr)
        if kind == PTE_PRESENT and (w or not write):
            memory.get_pte_page(k, m, ref, "follow_page")
            k.locks.unlock(ptl, "follow_page")
            return ref
        k.locks.unlock(ptl, "follow_page")
        memory.handle_mm_fault(k, m, vref, addr, write)


@kfunc
def __mlock_vma_pages_range(k: K, m: int, vref: int, start: int, end: int) -> None:  # noqa: N807
    """Fault in every page of [start, end) (a write fault, as for a private writable vma: it breaks COW, KSM's
    included) and mlock each one under its page lock. mmap_sem is held (for write by mlock)."""
    for addr in range(start, end):
        page = _gup_one(k, m, vref, addr, True)
        s = ref_slot(page)
        k.locks.lock(k.page_lock(s), "__mlock_vma_pages_range:lock_page")
        if memory.page_mapping_nonnull(k, s):  # truncation's check: an anon page keeps its mapping until freed
            mlock_vma_page(k, page, vref)
        k.locks.unlock(k.page_lock(s), "__mlock_vma_pages_range:unlock_page")
        memory.put_page(k, page, "__mlock_vma_pages_range")


@kfunc
def munlock_vma_pages_range(k: K, m: int, vref: int, start: int, end: int) -> None:
    """Clear VM_LOCKED, then munlock_vma_page each page still mapped in [start, end) (follow_page, no fault).
    The caller holds mmap_sem for write, or is exit_mmap with the mm to itself."""
    v = k.vm.deref(vref, "munlock_vma_pages_range")
    k.vm.flags[v] &= ~VM_LOCKED  # vma->vm_flags &= ~VM_LOCKED (mmap_sem for write, or mm_users 0)
    for addr in range(start, end):
        k.cond_resched("munlock_vma_pages_range:cond_resched")
        page = memory.follow_page(k, m, addr, "munlock_vma_pages_range")
        if not page:
            continue
        s = ref_slot(page)
        k.locks.lock(k.page_lock(s), "munlock_vma_pages_range:lock_page")
        if memory.page_mapping_nonnull(k, s):
            munlock_vma_page(k, page)
        k.locks.unlock(k.page_lock(s), "munlock_vma_pages_range:unlock_page")
        memory.put_page(k, page, "munlock_vma_pages_range")


def munlock_vma_pages_all(k: K, m: int, vref: int) -> None:
    """munlock a whole vma (munmap and exit_mmap, before they zap it)."""
    v = k.vm.deref(vref, "munlock_vma_pages_all")
    munlock_vma_pages_range(k, m, vref, int(k.vm.start[v]), int(k.vm.end[v]))


@kfunc
def mlock_fixup(k: K, m: int, vref: int, start: int, end: int, lock: bool) -> None:
    """Set or clear VM_LOCKED on [start, end) of the vma (already split to the range), then mlock or munlock its
    pages."""
    from .mm import set_vm_flags

    v = k.vm.deref(vref, "mlock_fixup")
    flags = int(k.vm.flags[v])
    if bool(flags & VM_LOCKED) == lock:
        return
    if lock:
        set_vm_flags(k, m, vref, flags | VM_LOCKED, "mlock_fixup")
        __mlock_vma_pages_range(k, m, vref, start, end)
    else:
        munlock_vma_pages_range(k, m, vref, start, end)


@kfunc
def sys_mlock(k: K, mref: int, start: int, end: int, lock: bool) -> int:
    """mlock / munlock of [start, end) under mmap_sem (write): the vmas split at the range's edges as
    mlock_fixup's split_vma does; -ENOMEM when part of the range is unmapped (the mapped parts done, as do_mlock
    stops at the first hole: simplified, it goes on past it) or a split exceeds the vma budget."""
    from .mm import split_vma, vma_list

    m = k.mmc.deref(mref, "sys_mlock")
    k.locks.down_write(k.mmap_sem(m), "sys_mlock")
    err, covered = 0, 0
    for vref in vma_list(k, m):
        v = k.vm.deref(vref, "sys_mlock")
        vs, ve = int(k.vm.start[v]), int(k.vm.end[v])
        covered += max(0, min(ve, end) - max(vs, start))
        if ve <= start or vs >= end or bool(k.vm.flags[v] & VM_LOCKED) == lock:
            if k.later("mlock_populate"):  # 2.6.38: __mm_populate faults a locked range in again
                if lock and ve > start and vs < end:  # simplified: under mmap_sem for write (6.18: read, after)
                    __mlock_vma_pages_range(k, m, vref, max(vs, start), min(ve, end))
            continue
        if len(vma_list(k, m)) + int(vs < start) + int(ve > end) > k.st.sz.max_vmas:
            err = -12
            break
        if vs < start:
            vref = split_vma(k, m, vref, start)
        if ve > end:
            split_vma(k, m, vref, end)
        mlock_fixup(k, m, vref, max(vs, start), min(ve, end), lock)
    k.locks.up_write(k.mmap_sem(m), "sys_mlock")
    return err or (-12 if covered < end - start else 0)
