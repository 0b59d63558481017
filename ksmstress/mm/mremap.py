"""mremap of private anonymous memory: 2.6.33 mm/mremap.c (do_mremap, mremap_to, vma_to_resize, move_vma,
move_page_tables, move_ptes) and the parts of mm/mmap.c it calls (copy_vma, vma_adjust's grow).

Why KSM cares: ksmd's rmap_items record addresses, and the KSM rmap walks (rmap_walk_ksm, try_to_unmap_ksm,
page_referenced_ksm) look for a KSM page's ptes at those addresses, not through page->index. So move_vma first
breaks every KSM page of the range (ksm_madvise(MADV_UNMERGEABLE) on a copy of vm_flags, leaving the vma
mergeable), all under mmap_sem held for write, which keeps ksmd (mmap_sem for read) from merging them again before
the move. An anon page moves with its page->index: the new vma gets vm_pgoff such that vma_address finds it.

Simplified (deviation 28): get_unmapped_area is the lowest free range (arch_get_unmapped_area bottom-up, no
cache); no vma_merge in copy_vma (deviation 13), so the new vma is always a fresh one linked at its anon_vma's
tail; one page table per mm (deviation 7), so move_page_tables is one move_ptes extent under one page_table_lock
(old_ptl == new_ptl); a grown VM_LOCKED vma is not made present (2.6.33's make_pages_present only faults, it
mlocks nothing: the pages fault in on first touch); no rlimits beyond the vma budget (max_vmas is
sysctl_max_map_count).
"""

from __future__ import annotations

from ..arena import ref_slot
from ..callchain import kfunc
from . import ksm, memory, rmap
from . import mm as mmm
from .state import PTE_NONE, PTE_PRESENT, K

MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
EFAULT, EINVAL, ENOMEM = -14, -22, -12


@kfunc
def sys_mremap(k: K, mref: int, addr: int, old_len: int, new_len: int, flags: int, new_addr: int = 0) -> int:
    """mremap(2): the new address, or a negative errno. do_mremap under down_write(mmap_sem)."""
    m = k.mmc.deref(mref, "sys_mremap")
    k.locks.down_write(k.mmap_sem(m), "sys_mremap")
    ret = do_mremap(k, mref, addr, old_len, new_len, flags, new_addr)
    k.locks.up_write(k.mmap_sem(m), "sys_mremap")
    return ret


def do_mremap(k: K, mref: int, addr: int, old_len: int, new_len: int, flags: int, new_addr: int) -> int:
    """Shrink in place (unmap the tail), grow in place when the range after the vma is free (vma_adjust), or
    move (MREMAP_MAYMOVE: get_unmapped_area, then move_vma); MREMAP_FIXED goes through mremap_to."""
    m = k.mmc.deref(mref, "do_mremap")
    if flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED) or (flags & MREMAP_FIXED and not flags & MREMAP_MAYMOVE):
        return EINVAL
    if addr < 1 or new_len <= 0 or old_len < 0:  # addr & ~PAGE_MASK; !new_len
        return EINVAL
    if flags & MREMAP_FIXED:
        return mremap_to(k, mref, addr, old_len, new_len, new_addr)
    if old_len >= new_len:  # always allow a shrinking remap: that just unmaps the unnecessary pages
        if not mmm.do_munmap(k, mref, addr + new_len, addr + old_len) and old_len != new_len:
            return ENOMEM
        return addr
    vref = vma_to_resize(k, m, addr, old_len, new_len)
    if vref <= 0:
        return vref or EFAULT
    v = k.vm.deref(vref, "do_mremap")
    if old_len == k.vm.end[v] - addr and vma_expandable(k, m, vref, new_len - old_len):
        vma_adjust_end(k, m, vref, addr + new_len)
        return addr
    if not flags & MREMAP_MAYMOVE:
        return ENOMEM
    new_addr = get_unmapped_area(k, m, new_len)
    if new_addr < 0:
        return new_addr
    return move_vma(k, mref, vref, addr, old_len, new_len, new_addr)


def mremap_to(k: K, mref: int, addr: int, old_len: int, new_len: int, new_addr: int) -> int:
    """MREMAP_FIXED: unmap whatever is at [new_addr, new_addr + new_len), shrink the source if asked, then move."""
    m = k.mmc.deref(mref, "mremap_to")
    if new_addr < 1 or new_addr + new_len > k.st.sz.vpages:  # new_addr > TASK_SIZE - new_len
        return EINVAL
    if new_addr <= addr < new_addr + new_len or addr <= new_addr < addr + old_len:  # the ranges overlap
        return EINVAL
    if not mmm.do_munmap(k, mref, new_addr, new_addr + new_len):
        return ENOMEM
    if old_len >= new_len:
        if not mmm.do_munmap(k, mref, addr + new_len, addr + old_len) and old_len != new_len:
            return ENOMEM
        old_len = new_len
    vref = vma_to_resize(k, m, addr, old_len, new_len)
    if vref <= 0:
        return vref or EFAULT
    return move_vma(k, mref, vref, addr, old_len, new_len, new_addr)


def vma_to_resize(k: K, m: int, addr: int, old_len: int, new_len: int) -> int:
    """The vma holding all of [addr, addr + old_len), or -EFAULT: mremap never spans vmas."""
    vref = mmm.find_vma(k, m, addr)
    if not vref:
        return EFAULT
    v = k.vm.deref(vref, "vma_to_resize")
    if k.vm.start[v] > addr or old_len > k.vm.end[v] - addr:  # we can't remap across vm area boundaries
        return EFAULT
    return vref


def vma_expandable(k: K, m: int, vref: int, delta: int) -> bool:
    """The vma can grow by delta pages in place: the range after it is free and inside the address space."""
    v = k.vm.deref(vref, "vma_expandable")
    end = int(k.vm.end[v]) + delta
    if end > k.st.sz.vpages:
        return False
    nxt = mmm.vma_next(k, m, vref, "vma_expandable")
    return not nxt or k.vm.start[k.vm.deref(nxt, "vma_expandable")] >= end


def vma_adjust_end(k: K, m: int, vref: int, end: int) -> None:
    """vma_adjust(vma, vma->vm_start, end, vma->vm_pgoff, NULL): only vm_end changes, under anon_vma->lock as
    2.6.33 takes it whenever the vma has one ("we don't really need anon_vma lock: but is that case worth
    optimizing out?"), so an rmap walk reads a consistent range."""
    k.hooks.lock_rule(k, "mmap_sem", k.mmap_sem(m), 1, m, "vma_adjust")
    v = k.vm.deref(vref, "vma_adjust")
    avref = k.vm.anon_vma[v]
    lid = k.av_lock(k.av.deref(avref, "vma_adjust")) if avref else -1
    if avref:
        k.locks.lock(lid, "vma_adjust")
    k.vm.end[k.vm.deref(vref, "vma_adjust")] = end
    if avref:
        k.locks.unlock(lid, "vma_adjust")
    k.hooks.validate_mm(k, m, "vma_adjust")


def get_unmapped_area(k: K, m: int, npages: int) -> int:
    """The lowest free range of npages pages (arch_get_unmapped_area, bottom-up), or -ENOMEM."""
    start = 1
    for vref in mmm.vma_list(k, m):
        v = k.vm.deref(vref, "get_unmapped_area")
        if k.vm.start[v] - start >= npages:
            return start
        start = max(start, int(k.vm.end[v]))
    return start if start + npages <= k.st.sz.vpages else ENOMEM


@kfunc
def move_vma(k: K, mref: int, vref: int, old_addr: int, old_len: int, new_len: int, new_addr: int) -> int:
    """Move [old_addr, old_addr + old_len) of vma to new_addr: unmerge its KSM pages, copy_vma, move_page_tables,
    then do_munmap the old range. mmap_sem held for write throughout."""
    m = k.mmc.deref(mref, "move_vma")
    if len(mmm.vma_list(k, m)) >= k.st.sz.max_vmas - 3:  # mm->map_count >= sysctl_max_map_count - 3
        return ENOMEM  # we'd prefer to avoid failure later on in do_munmap, which may split one vma into three
    v = k.vm.deref(vref, "move_vma")
    vm_flags = [int(k.vm.flags[v])]
    # Advise KSM to break any KSM pages in the area to be moved: rmap_items record addresses, so a KSM page
    # turning up at the new location would be found by no KSM rmap walk. vma->vm_flags stays as it was, so KSM
    # can come around to merge on vma and new_vma afterwards.
    err = ksm.ksm_madvise(k, vref, ksm.MADV_UNMERGEABLE, old_addr, old_addr + old_len, vm_flags)
    if err:
        return err
    v = k.vm.deref(vref, "move_vma")
    new_pgoff = int(k.vm.pgoff[v]) + (old_addr - int(k.vm.start[v]))
    new_vref = copy_vma(k, m, vref, new_addr, new_len, new_pgoff)
    move_page_tables(k, m, vref, old_addr, new_vref, new_addr, old_len)
    mmm.do_munmap(k, mref, old_addr, old_addr + old_len)  # OOM (a split over budget) only leaves the old vma
    return new_addr


@kfunc
def copy_vma(k: K, m: int, vref: int, addr: int, npages: int, pgoff: int) -> int:
    """A new vma for [addr, addr + npages) with the old one's flags and anon_vma (*new_vma = *vma) and vm_pgoff
    pgoff, linked by vma_link under anon_vma->lock: __anon_vma_link puts it at the list's tail, after the old vma,
    which is what lets move_ptes go without that lock (an rmap walk meets the old vma first, so it sees a moving
    pte at its old place or, later in the same walk, at its new one). No vma_merge (deviation 13)."""
    v = k.vm.deref(vref, "copy_vma")
    avref = int(k.vm.anon_vma[v])
    if not avref:  # an anonymous vma not yet faulted: pgoff follows the new location
        pgoff = addr
    nref = k.kmem_cache_alloc(k.vm, "copy_vma")
    n = ref_slot(nref)
    vm = k.vm
    vm.mm[n], vm.flags[n], vm.anon_vma[n] = vm.mm[v], vm.flags[v], avref
    vm.start[n], vm.end[n], vm.pgoff[n] = addr, addr + npages, pgoff
    lid = k.av_lock(k.av.deref(avref, "vma_link")) if avref else -1
    if avref:  # vma_link: anon_vma_lock(vma)
        k.locks.lock(lid, "vma_link")
    mmm._link_vma(k, m, nref)
    if avref:
        rmap.list_add_tail(k, nref, avref)  # __anon_vma_link
        k.locks.unlock(lid, "vma_link")
    return nref


@kfunc
def move_page_tables(k: K, m: int, vref: int, old_addr: int, new_vref: int, new_addr: int, npages: int) -> int:
    """Move every pte of [old_addr, old_addr + npages) to new_addr. One extent: the model's page table is one
    flat row per mm (deviation 7), well under LATENCY_LIMIT."""
    move_ptes(k, m, vref, old_addr, old_addr + npages, new_vref, new_addr)
    return npages


@kfunc
def move_ptes(k: K, m: int, vref: int, old_addr: int, old_end: int, new_vref: int, new_addr: int) -> None:
    """ptep_clear_flush the old pte and set_pte_at the new one, each present, swap or migration entry, under the
    page_table_lock (old_ptl == new_ptl here: one lock per mm). As in 2.6.33 no anon_vma lock is taken (only a
    file vma's i_mmap_lock): the rmap walks rely on copy_vma's list order instead."""
    ptl = k.ptl(m)
    k.locks.lock(ptl, "move_ptes")
    for delta in range(old_end - old_addr):
        kind, ref, w = memory.pte_get(k, m, old_addr + delta)
        if kind == PTE_NONE:
            continue
        memory.ptep_clear_flush(k, m, old_addr + delta, "move_ptes")
        if kind == PTE_PRESENT:
            # no rmap_item names the new address: a page shared by fork with an unmoved sibling may become KSM
            # through the sibling's item, and then only ksmd's scan of this address links one (checks.windows)
            k.hooks.window_open(k, "move-before-scan", m, new_addr + delta, ref)
        memory.pte_set(k, m, new_addr + delta, kind, ref, w, "move_ptes")
    k.locks.unlock(ptl, "move_ptes")
