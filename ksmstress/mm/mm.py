"""mm_struct and vmas: mmap, munmap (with vma splitting), fork's dup_mmap, exit, madvise and the fault entry.

Simplifications: no vma merging (vma_merge) on mmap or madvise; rlimits are a fixed per-mm vma budget
(`max_vmas`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..arena import ref_slot
from ..callchain import kfunc
from ..failures import Failure
from . import ksm, memory, mlock, rmap
from .state import PTE_NONE, VM_LOCKED, VM_MERGEABLE, K, mk_pte


# -- mm_struct -----------------------------------------------------------------------------------------------
def mm_alloc(k: K) -> int:
    """A new mm with one user and one count (mm_users / mm_count)."""
    mref = k.kmem_cache_alloc(k.mmc, "mm_alloc")
    m = ref_slot(mref)
    k.mmc.users[m] = 1
    k.mmc.mmcount[m] = 1
    k.mmc.note(m, 0, 1, "mm_alloc")
    k.mmc.note(m, 1, 1, "mm_alloc")
    k.st.pte[m, :] = mk_pte(PTE_NONE, 0, 0)
    k.st.expect[m, :] = -1
    return mref


def ksm_test_exit(k: K, m: int) -> bool:
    return k.mmc.users[m] == 0


def mmdrop(k: K, mref: int, site: str) -> None:
    m = k.mmc.deref(mref, site)
    c = k.atomic_add(k.mmc.mmcount, m, -1, site)
    if c < 0:
        raise Failure(
            "refcount-underflow",
            f"mm_struct[{m}] mm_count below zero at {site}; its last changes: {k.mmc.changes(m)}",
            k.fail_details(object=f"mm_struct[{m}]", site=site),
        )
    if c == 0:
        k.hooks.locks_freeing(k, (k.mmap_sem(m), k.ptl(m)), f"mm_struct[{m}]", site)
        k.mmc.free(mref, site)


@kfunc
def mmput(k: K, mref: int) -> None:
    """The last user is gone: ksm_exit (with its mmap_sem handshake), then exit_mmap, then mmdrop."""
    m = k.mmc.deref(mref, "mmput")
    if k.atomic_add(k.mmc.users, m, -1, "mmput") == 0:
        ksm.ksm_exit(k, mref)
        exit_mmap(k, mref)
        mmdrop(k, mref, "mmput")


@kfunc
def exit_mmap(k: K, mref: int) -> None:
    """Tear down every vma: zap all ptes first (unmap_vmas), then unlink and free each vma (free_pgtables)."""
    m = k.mmc.deref(mref, "exit_mmap")
    vmas = vma_walk(k, m)  # no mmap_sem: mm_users is 0 and __ksm_exit's handshake let ksmd out, nobody else is here
    for vref in vmas:  # mm->locked_vm: munlock_vma_pages_all of every VM_LOCKED vma first
        if k.vm.flags[k.vm.deref(vref, "exit_mmap")] & VM_LOCKED:
            mlock.munlock_vma_pages_all(k, m, vref)
    for vref in vmas:
        v = k.vm.deref(vref, "exit_mmap")
        memory.zap_pte_range(k, m, k.vm.start[v], k.vm.end[v])
    for vref in vmas:
        rmap.anon_vma_unlink(k, vref)
        k.vm.free(vref, "exit_mmap:remove_vma")
    # As 2.6.33's exit_mmap, mm->mmap is left pointing at the freed vmas: whoever still holds the mm (ksmd through
    # its mm_slot, run=2) must test ksm_test_exit before it walks them, and a walk that does not is a use-after-free


# -- the vma list --------------------------------------------------------------------------------------------
# An mm's vma list and its vmas are mmap_sem's (lock rule "mmap_sem"): read under it, changed under it for write.
def vma_walk(k: K, m: int) -> list[int]:
    """The vmas of mm m in address order, read without asserting mmap_sem: only for a caller that has the mm to
    itself (exit_mmap, with mm_users 0), or that is not the kernel (a program's record of its own mappings)."""
    out, vref = [], k.mmc.mmap[m]
    while vref:
        out.append(vref)
        vref = k.vm.next[k.vm.deref(vref, "vma_list")]
    return out


def vma_list(k: K, m: int) -> list[int]:
    """for (vma = mm->mmap; vma; vma = vma->vm_next), mmap_sem held."""
    k.hooks.lock_rule(k, "mmap_sem", k.mmap_sem(m), 0, m, "vma_list")
    return vma_walk(k, m)


def first_vma(k: K, m: int, site: str) -> int:
    """mm->mmap, mmap_sem held."""
    k.hooks.lock_rule(k, "mmap_sem", k.mmap_sem(m), 0, m, site)
    return int(k.mmc.mmap[m])


def vma_next(k: K, m: int, vref: int, site: str) -> int:
    """vma->vm_next of a vma of mm m, mmap_sem held."""
    k.hooks.lock_rule(k, "mmap_sem", k.mmap_sem(m), 0, m, site)
    return int(k.vm.next[k.vm.deref(vref, site)])


def set_vm_flags(k: K, m: int, vref: int, flags: int, site: str) -> None:
    """vma->vm_flags = flags, for a vma of mm m: mmap_sem held for write (madvise_behavior stores what
    ksm_madvise computed)."""
    v = k.vm.deref(vref, site)
    k.hooks.lock_rule(k, "vm_flags", k.mmap_sem(m), 1, v, site)
    k.vm.flags[v] = flags


def find_vma(k: K, m: int, addr: int) -> int:
    """The first vma with vm_end > addr (it may start above addr), or 0. mmap_sem held (later kernels'
    mmap_assert_locked)."""
    k.hooks.lock_rule(k, "mmap_sem", k.mmap_sem(m), 0, m, "find_vma")
    vref = k.mmc.mmap[m]
    while vref:
        v = k.vm.deref(vref, "find_vma")
        if k.vm.end[v] > addr:
            return vref
        vref = k.vm.next[v]
    return 0


def _link_vma(k: K, m: int, vref: int) -> None:
    """Insert into the mm's address-ordered list (__vma_link_list), mmap_sem held for write."""
    k.hooks.lock_rule(k, "mmap_sem", k.mmap_sem(m), 1, m, "vma_link")
    v = k.vm.deref(vref, "vma_link")
    start = k.vm.start[v]
    prev, cur = 0, k.mmc.mmap[m]
    while cur and k.vm.start[k.vm.deref(cur, "vma_link")] < start:
        prev, cur = cur, k.vm.next[k.vm.deref(cur, "vma_link")]
    k.vm.next[v] = cur
    if prev:
        k.vm.next[k.vm.deref(prev, "vma_link")] = vref
    else:
        k.mmc.mmap[m] = vref


def _unlink_vma(k: K, m: int, vref: int) -> None:
    """detach_vmas_to_be_unmapped's unlink of one vma, mmap_sem held for write."""
    k.hooks.lock_rule(k, "mmap_sem", k.mmap_sem(m), 1, m, "vma_unlink")
    prev, cur = 0, k.mmc.mmap[m]
    while cur and cur != vref:
        prev, cur = cur, k.vm.next[k.vm.deref(cur, "vma_unlink")]
    nxt = k.vm.next[k.vm.deref(vref, "vma_unlink")]
    if prev:
        k.vm.next[k.vm.deref(prev, "vma_unlink")] = nxt
    else:
        k.mmc.mmap[m] = nxt


@kfunc
def mmap_region(k: K, mref: int, start: int, npages: int, flags: int) -> int:
    """Map anonymous private memory [start, start+npages); the caller holds mmap_sem for write. 0 on failure."""
    m = k.mmc.deref(mref, "mmap_region")
    end = start + npages
    if start < 1 or end > k.st.sz.vpages or len(vma_list(k, m)) >= k.st.sz.max_vmas:
        return 0
    nxt = find_vma(k, m, start)
    if nxt and k.vm.start[k.vm.deref(nxt, "mmap_region")] < end:
        return 0  # overlaps (MAP_FIXED_NOREPLACE semantics)
    vref = k.kmem_cache_alloc(k.vm, "mmap_region")
    v = ref_slot(vref)
    k.vm.mm[v] = mref
    k.vm.start[v] = start
    k.vm.end[v] = end
    k.vm.flags[v] = flags
    k.vm.pgoff[v] = start  # an anon vma's vm_pgoff = addr >> PAGE_SHIFT (addresses are page numbers here)
    _link_vma(k, m, vref)
    k.hooks.validate_mm(k, m, "vma_link")
    return vref


@kfunc
def split_vma(k: K, m: int, vref: int, addr: int) -> int:
    """Split vma at addr: it keeps [start, addr), a new vma (same anon_vma, same flags) takes [addr, end).

    As vma_adjust does, the range change and the new vma's anon_vma link happen under anon_vma->lock, so an rmap
    walker sees either the old vma or both halves, never a hole.
    """
    k.hooks.lock_rule(k, "mmap_sem", k.mmap_sem(m), 1, m, "split_vma")
    v = k.vm.deref(vref, "split_vma")
    nref = k.kmem_cache_alloc(k.vm, "split_vma")
    n = ref_slot(nref)
    vm = k.vm
    vm.mm[n], vm.flags[n], vm.anon_vma[n] = vm.mm[v], vm.flags[v], vm.anon_vma[v]
    avref = k.vm.anon_vma[v]
    lid = k.av_lock(k.av.deref(avref, "vma_adjust")) if avref else -1
    if avref:
        k.locks.lock(lid, "vma_adjust")
    v = k.vm.deref(vref, "vma_adjust")
    k.vm.start[n] = addr
    k.vm.end[n] = k.vm.end[v]
    k.vm.pgoff[n] = k.vm.pgoff[v] + (addr - k.vm.start[v])  # new->vm_pgoff += (addr - vma->vm_start) >> PAGE_SHIFT
    k.vm.end[v] = addr
    _link_vma(k, m, nref)
    if avref:
        rmap.list_add_tail(k, nref, avref)
        k.locks.unlock(lid, "vma_adjust")
    k.hooks.validate_mm(k, m, "vma_adjust")
    return nref


@kfunc
def do_munmap(k: K, mref: int, start: int, end: int) -> bool:
    """Unmap [start, end): split the edge vmas, detach, zap their ptes, unlink from anon_vma, free.

    The caller holds mmap_sem for write. False (-ENOMEM) when a split would exceed the vma budget, or (-EINVAL)
    for an empty range.
    """
    m = k.mmc.deref(mref, "do_munmap")
    if end <= start:  # len == 0: -EINVAL in 2.6.33, before anything is split (a shrinking mremap to the same
        return False  # length passes it and ignores the error); else the splits below made an empty vma
    vmas = [x for x in vma_list(k, m) if k.vm.start[ref_slot(x)] < end and k.vm.end[ref_slot(x)] > start]
    if not vmas:
        return True
    splits = int(k.vm.start[ref_slot(vmas[0])] < start) + int(k.vm.end[ref_slot(vmas[-1])] > end)
    if len(vma_list(k, m)) + splits > k.st.sz.max_vmas:
        return False
    first, last = vmas[0], vmas[-1]
    if k.vm.start[ref_slot(first)] < start:
        nref = split_vma(k, m, first, start)
        if first == last:
            last = nref
        vmas[0] = nref
    if k.vm.end[ref_slot(last)] > end:
        split_vma(k, m, last, end)
    doomed = [x for x in vma_list(k, m) if start <= k.vm.start[ref_slot(x)] and k.vm.end[ref_slot(x)] <= end]
    for vref in doomed:  # mm->locked_vm: munlock the VM_LOCKED vmas before they go
        if k.vm.flags[k.vm.deref(vref, "do_munmap")] & VM_LOCKED:
            mlock.munlock_vma_pages_all(k, m, vref)
    for vref in doomed:  # detach_vmas_to_be_unmapped
        _unlink_vma(k, m, vref)
    k.hooks.validate_mm(k, m, "detach_vmas_to_be_unmapped")  # the model validates here too (2.6.33 does not)
    for vref in doomed:  # unmap_region: unmap_vmas
        v = k.vm.deref(vref, "unmap_region")
        memory.zap_pte_range(k, m, k.vm.start[v], k.vm.end[v])
    for vref in doomed:  # free_pgtables -> anon_vma_unlink, then remove_vma
        rmap.anon_vma_unlink(k, vref)
        k.vm.free(vref, "remove_vma")
    return True


# -- fork ----------------------------------------------------------------------------------------------------
@kfunc
def dup_mmap(k: K, oldref: int) -> int:
    """fork(): a new mm whose vmas copy the parent's, join the same anon_vmas, and share its pages COW.

    Order as in 2.6.33: mmap_sem of the parent then the child (write), ksm_fork, then per vma anon_vma_link and
    copy_page_range. Returns the child's mm reference.
    """
    old = k.mmc.deref(oldref, "dup_mmap")
    mref = mm_alloc(k)
    m = ref_slot(mref)
    k.locks.down_write(k.mmap_sem(old), "dup_mmap")
    k.locks.down_write_nested(k.mmap_sem(m), "dup_mmap:nested")
    ksm.ksm_fork(k, mref, oldref)
    for vref in vma_list(k, old):
        v = k.vm.deref(vref, "dup_mmap")
        tref = k.kmem_cache_alloc(k.vm, "dup_mmap:vm_area_dup")
        t = ref_slot(tref)
        vm = k.vm
        vm.start[t], vm.end[t], vm.anon_vma[t] = vm.start[v], vm.end[v], vm.anon_vma[v]
        vm.pgoff[t] = vm.pgoff[v]  # *tmp = *mpnt
        vm.flags[t] = vm.flags[v] & ~VM_LOCKED  # mlock is not inherited: tmp->vm_flags &= ~VM_LOCKED
        vm.mm[t] = mref
        rmap.anon_vma_link(k, tref)
        _link_vma(k, m, tref)
        memory.copy_page_range(k, m, old, vref)
    k.hooks.validate_mm(k, m, "dup_mmap")  # the model validates the child's list once (2.6.33: __vma_link_rb)
    k.locks.up_write(k.mmap_sem(m), "dup_mmap:nested")
    k.locks.up_write(k.mmap_sem(old), "dup_mmap")
    return mref


# -- syscalls as a user task issues them ---------------------------------------------------------------------
@kfunc
def sys_mmap(k: K, mref: int, start: int, npages: int, flags: int) -> int:
    m = k.mmc.deref(mref, "sys_mmap")
    k.locks.down_write(k.mmap_sem(m), "sys_mmap")
    vref = mmap_region(k, mref, start, npages, flags)
    k.locks.up_write(k.mmap_sem(m), "sys_mmap")
    return vref


@kfunc
def sys_munmap(k: K, mref: int, start: int, end: int) -> bool:
    m = k.mmc.deref(mref, "sys_munmap")
    k.locks.down_write(k.mmap_sem(m), "sys_munmap")
    ok = do_munmap(k, mref, start, end)
    k.locks.up_write(k.mmap_sem(m), "sys_munmap")
    return ok


@kfunc
def sys_madvise(k: K, mref: int, start: int, end: int, advice: int) -> int:
    """MADV_MERGEABLE / MADV_UNMERGEABLE over [start, end) under mmap_sem (write). As madvise_behavior does, a vma
    whose flags change is split at the range's edges first, so only the range changes; -ENOMEM when a split
    would exceed the vma budget, and (unmapped_error) when part of the range is mapped by no vma: the mapped
    parts are still advised."""
    if advice == MADV_DONTNEED:
        return madvise_dontneed(k, mref, start, end)
    m = k.mmc.deref(mref, "sys_madvise")
    want = advice == ksm.MADV_MERGEABLE
    k.locks.down_write(k.mmap_sem(m), "sys_madvise")
    err = 0
    covered = 0
    for vref in vma_list(k, m):
        v = k.vm.deref(vref, "sys_madvise")
        vs, ve = k.vm.start[v], k.vm.end[v]
        covered += max(0, min(ve, end) - max(vs, start))
        if ve <= start or vs >= end or bool(k.vm.flags[v] & VM_MERGEABLE) == want:
            continue
        if len(vma_list(k, m)) + int(vs < start) + int(ve > end) > k.st.sz.max_vmas:
            err = -12
            break
        if vs < start:
            vref = split_vma(k, m, vref, start)
        if ve > end:
            split_vma(k, m, vref, end)
        err = ksm.ksm_madvise(k, vref, advice) or err
    k.locks.up_write(k.mmap_sem(m), "sys_madvise")
    return err or (-12 if covered < end - start else 0)


# --- issue 14 part A: threads, gup -------------------------------------------------------------------------------
MADV_DONTNEED = 4


@kfunc
def madvise_dontneed(k: K, mref: int, start: int, end: int) -> int:
    """MADV_DONTNEED over [start, end): under mmap_sem held for READ (madvise_need_mmap_write is false for it), so
    it runs beside faults of other threads and beside ksmd, which holds the same mmap_sem for read: a pte can
    disappear under ksmd's follow_page / write_protect_page / break_ksm. zap_page_range per vma; the next touch
    faults in a zeroed page. -ENOMEM when part of the range is mapped by no vma (the mapped parts are zapped)."""
    m = k.mmc.deref(mref, "sys_madvise")
    return madvise_unlocked_vmas(k, m, start, end, "sys_madvise:dontneed", "madvise_dontneed",
                                 lambda lo, hi: zap_page_range(k, m, lo, hi))


def madvise_unlocked_vmas(k: K, m: int, start: int, end: int, site: str, vma_site: str,
                          advise: Callable[[int, int], None]) -> int:
    """The madvise loop of an advice that takes mmap_sem for read and refuses a VM_LOCKED vma (MADV_DONTNEED; also
    6.18's MADV_PAGEOUT, which the kernel oracle's stand-in runs): `advise(lo, hi)` on each vma's part of [start,
    end) in address order; -EINVAL at a VM_LOCKED vma, where madvise stops (the vmas before it advised), else
    -ENOMEM when part of the range is mapped by no vma (the mapped parts advised), else 0."""
    k.locks.down_read(k.mmap_sem(m), site)
    covered = 0
    for vref in vma_list(k, m):
        v = k.vm.deref(vref, vma_site)
        lo, hi = max(int(k.vm.start[v]), start), min(int(k.vm.end[v]), end)
        if lo < hi:
            if k.vm.flags[v] & VM_LOCKED:
                k.locks.up_read(k.mmap_sem(m), site)
                return -22
            covered += hi - lo
            advise(lo, hi)
    k.locks.up_read(k.mmap_sem(m), site)
    return -12 if covered < end - start else 0


@kfunc
def zap_page_range(k: K, m: int, start: int, end: int) -> None:
    """zap_page_range -> unmap_vmas -> zap_pte_range, mmap_sem held (for read from MADV_DONTNEED)."""
    memory.zap_pte_range(k, m, start, end)


def copy_mm_clone_vm(k: K, mref: int) -> None:
    """clone(CLONE_VM): the new thread shares the mm; copy_mm's atomic_inc(&mm->mm_users). Its exit's mmput
    drops it; the last thread's runs ksm_exit and exit_mmap."""
    m = k.mmc.deref(mref, "copy_mm")
    k.atomic_add(k.mmc.users, m, 1, "copy_mm")


def fault_in(k: K, m: int, addr: int, write: bool) -> bool:
    """do_page_fault: under mmap_sem (read) find the vma and resolve; False is SIGSEGV."""
    k.locks.down_read(k.mmap_sem(m), "do_page_fault")
    vref = find_vma(k, m, addr)
    ok = bool(vref) and k.vm.start[k.vm.deref(vref, "do_page_fault")] <= addr
    if ok:
        memory.handle_mm_fault(k, m, vref, addr, write)
    k.locks.up_read(k.mmap_sem(m), "do_page_fault")
    return ok
