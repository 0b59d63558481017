"""get_user_pages and get_user_pages_fast (mm/memory.c, arch/x86/mm/gup.c), and the O_DIRECT-style reference
holder that writes through the page reference they return (fs/direct-io.c's shape): no pte, no lock.

Why it is here: write_protect_page's `page_mapcount + 1 != page_count` check, and its order (clear and flush the
pte first), exist for exactly this reference holder; without one nothing in the model can observe them.

Simplifications (one line each): one page per call; the I/O is a DMA store of a whole page made when the caller
says so (no bio, no completion interrupt); set_page_dirty_lock is omitted (no dirty state in the model, 12).
"""

from __future__ import annotations

import numpy as np

from ..arena import ref_slot
from ..callchain import kfunc
from . import memory
from .state import PTE_PRESENT, K, pte_decode


@kfunc
def gup_pte_range(k: K, m: int, addr: int, write: bool) -> int:
    """get_user_pages_fast's lockless walk of one pte: local_irq_disable, read the pte, get_page, enable. No pte
    lock and no mmap_sem: the walk is safe because ptep_clear_flush's TLB-flush IPI cannot complete while a CPU
    has interrupts off inside it. Modelled as one step (no scheduling point between the pte read and the
    reference), which is what the IPI guarantees against a pte clear. 0 when the pte is not present (or not
    writable for a write): the caller falls back to get_user_pages."""
    k.point("get_user_pages_fast:local_irq_disable")
    with k.guard:
        # the pte word read without the pte lock, as gup_get_pte does (the lock-rule exemption: irqs off)
        kind, ref, w = pte_decode(int(k.st.pte[m, addr]))
        if kind != PTE_PRESENT or (write and not w):
            return 0
        s = ref_slot(ref)
        k.pg.count[s] += 1  # get_page: the pte's own reference keeps the page alive meanwhile
        k.pg.note(s, 0, int(k.pg.count[s]), "gup_pte_range:get_page")
        return ref


@kfunc
def get_user_pages(k: K, m: int, addr: int, write: bool) -> int:
    """__get_user_pages for one page, mmap_sem held for read by the caller: follow_page(FOLL_GET | FOLL_WRITE)
    under the pte lock, and while it finds no page (or, for a write, no writable pte) handle_mm_fault, which
    breaks COW first (a KSM page is always copied). 0 when addr is in no vma (-EFAULT)."""
    from . import mm as mmmod  # mm.py builds on memory.py, as this module does

    vref = mmmod.find_vma(k, m, addr)
    if not vref or k.vm.start[k.vm.deref(vref, "get_user_pages")] > addr:
        return 0
    while True:
        page = follow_page_foll(k, m, addr, write)
        if page:
            return page
        memory.handle_mm_fault(k, m, vref, addr, write)
        k.cond_resched("get_user_pages:cond_resched")


def follow_page_foll(k: K, m: int, addr: int, write: bool) -> int:
    """follow_page(vma, addr, FOLL_GET | (write ? FOLL_WRITE : 0)): the present page with a reference, or 0 when
    there is none or, for FOLL_WRITE, its pte is not writable (`(flags & FOLL_WRITE) && !pte_write(pte)`)."""
    ptl = k.ptl(m)
    k.locks.lock(ptl, "follow_page")
    kind, ref, w = memory.pte_get(k, m, addr)
    page = 0
    if kind == PTE_PRESENT and (w or not write):
        memory.get_pte_page(k, m, ref, "follow_page")
        page = ref
    k.locks.unlock(ptl, "follow_page")
    return page


@kfunc
def get_user_pages_fast(k: K, m: int, addr: int, write: bool) -> int:
    """The lockless walk first; if it finds nothing, get_user_pages under down_read(mmap_sem), as 2.6.33's slow
    path does. The page comes back with a reference the caller must put_page."""
    page = gup_pte_range(k, m, addr, write)
    if page:
        return page
    k.locks.down_read(k.mmap_sem(m), "get_user_pages_fast:slow")
    page = get_user_pages(k, m, addr, write)
    k.locks.up_read(k.mmap_sem(m), "get_user_pages_fast:slow")
    return page


@kfunc
def dio_complete(k: K, pref: int, data: np.ndarray) -> None:
    """The device's DMA into the page the I/O was set up with, then dio_bio_complete's put_page. Through the
    reference only: whatever pte maps the page now, or none, the bytes land in this frame."""
    s = k.pg.deref(pref, "dio_bio_complete")  # the held reference keeps it alive: a free here is a refcount bug
    k.hooks.shared_access(k, k.st.frames, s, 1, "dio_bio_complete:dma")
    k.spoint("dio_bio_complete:dma")
    k.st.frames[s, :] = data
    # set_page_dirty_lock before the page_cache_release: the completion waits for a reclaim that holds the page
    # lock from pageout to __remove_mapping, whose page_freeze_refs then still sees the pin and keeps the page (the
    # model has no PG_dirty: pageout writes every time); a put without it let a pageout that copied the frame
    # before the DMA free the page after it, and the DMA's bytes were lost
    k.locks.lock(k.page_lock(s), "set_page_dirty_lock:lock_page")
    k.locks.unlock(k.page_lock(s), "set_page_dirty_lock:unlock_page")
    memory.put_page(k, pref, "dio_bio_complete:put_page")
