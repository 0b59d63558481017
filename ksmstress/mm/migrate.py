"""Page migration as memory hot-remove does it in 2.6.33 (mm/migrate.c, ksm.c's ksm_migrate_page and
ksm_memory_callback): isolate the page, lock it, replace its ptes by migration entries, copy it to a new page,
and put the ptes back, found through rmap_walk (rmap_walk_ksm for a KSM page, "ksm: rmap_walk to
remove_migration_ptes").

Hot-remove holds ksm_thread_mutex from MEM_GOING_OFFLINE to MEM_OFFLINE ("ksm: memory hotremove migration
only"), so ksmd never meets a KSM page half-way through; faults, fork, munmap, exit, reclaim, mlock and
MADV_UNMERGEABLE still do. unmap_and_move keeps the anon_vma by rcu_read_lock only, as 2.6.33 does: the
anon_vma cache is SLAB_DESTROY_BY_RCU, so a vma list emptied meanwhile is read as type-stable memory (raw, not
KASAN-checked), the way page_lock_anon_vma reads it.

Simplifications: one page per migration (the caller's pick stands for a memory section); no retry passes
(-EAGAIN cancels the offline); newpage always comes from the allocator; no writeback, no swap-cache page.
"""

from __future__ import annotations

from collections.abc import Callable

from ..arena import ref_slot
from ..callchain import kfunc
from . import memory, rmap
from .state import (
    GB_MIGRATING,
    PG_ANON,
    PG_KSM,
    PG_MLOCKED,
    PTE_MIGRATION,
    PTE_PRESENT,
    TTU_IGNORE_MLOCK,
    TTU_MIGRATION,
    K,
)

EAGAIN = -11
RmapOne = Callable[[K, int, int, int, int], int]


# -- rmap_walk ------------------------------------------------------------------------------------------------
@kfunc
def rmap_walk_anon(k: K, pref: int, rmap_one: RmapOne, arg: int) -> int:
    """Every vma of the page's anon_vma covering page->index: the anon_vma is locked as found in page->mapping
    (no page_lock_anon_vma: the caller's rcu_read_lock keeps it type-stable, so it is read raw)."""
    s = k.pg.deref(pref, "rmap_walk_anon")
    avref = k.pg.mapping[s]
    if not avref:
        return rmap.SWAP_AGAIN
    if k.bug("migrate-no-rcu"):
        # the defect: no rcu_read_lock (2.6.33) nor anon_vma reference (2.6.35) keeps the anon_vma: an anon_vma
        # freed by the last munmap during the migration is dereferenced
        k.av.deref(avref, "rmap_walk_anon")
    a = ref_slot(avref)
    k.locks.lock(k.av_lock(a), "rmap_walk_anon")
    ret = rmap.SWAP_AGAIN
    for vref in rmap.anon_vma_vmas_rcu(k, avref, "rmap_walk_anon"):
        addr = rmap._vma_address(k, s, vref, "rmap_walk_anon")
        if addr < 0:  # vma_address: -EFAULT
            continue
        ret = rmap_one(k, pref, vref, addr, arg)
        if ret != rmap.SWAP_AGAIN:
            break
    k.locks.unlock(k.av_lock(a), "rmap_walk_anon")
    return ret


@kfunc
def rmap_walk_ksm(k: K, pref: int, rmap_one: RmapOne, arg: int) -> int:
    """Every vma that may map the KSM page: each rmap_item's own vma (pass 0), then the vmas of other mms in its
    anon_vma covering its address (pass 1, search_new_forks: ptes fork copied before ksmd gave them an item)."""
    from .ksm import _hlist, _rmap_walk_passes

    s = k.pg.deref(pref, "rmap_walk_ksm")
    k.hooks.lock_rule(k, "page_locked", k.page_lock(s), 2, s, "rmap_walk_ksm")
    nref = k.pg.mapping[s]
    if not nref:
        return rmap.SWAP_AGAIN
    ret = rmap.SWAP_AGAIN
    for search_new_forks in range(_rmap_walk_passes(k)):
        for iref in _hlist(k, nref, "rmap_walk_ksm"):
            i = k.ri.deref(iref, "rmap_walk_ksm")
            avref, addr, imm = k.ri.anon_vma[i], int(k.ri.address[i]), k.ri.mm[i]
            lid = k.av_lock(k.av.deref(avref, "rmap_walk_ksm:spin_lock"))
            k.locks.lock(lid, "rmap_walk_ksm")
            for vref in rmap.anon_vma_vmas(k, avref, "rmap_walk_ksm"):
                v = k.vm.deref(vref, "rmap_walk_ksm")
                if addr < k.vm.start[v] or addr >= k.vm.end[v]:
                    continue
                if (imm == k.vm.mm[v]) == bool(search_new_forks):
                    continue
                ret = rmap_one(k, pref, vref, addr, arg)
                if ret != rmap.SWAP_AGAIN:
                    k.locks.unlock(lid, "rmap_walk_ksm")
                    return ret
            k.locks.unlock(lid, "rmap_walk_ksm")
    return ret


def rmap_walk(k: K, pref: int, rmap_one: RmapOne, arg: int) -> int:
    """rmap_walk: the page locked (VM_BUG_ON(!PageLocked(page))), KSM or anon."""
    s = k.pg.deref(pref, "rmap_walk")
    k.hooks.lock_rule(k, "page_locked", k.page_lock(s), 2, s, "rmap_walk")
    if memory.PageKsm(k, s):
        return rmap_walk_ksm(k, pref, rmap_one, arg)
    return rmap_walk_anon(k, pref, rmap_one, arg)


# -- migration ptes -------------------------------------------------------------------------------------------
def remove_migration_pte(k: K, new: int, vref: int, addr: int, old: int) -> int:
    """Put back one pte: a migration entry naming `old` at addr becomes a present pte of `new` (writable if the
    entry was), with new's reference and mapcount."""
    v = k.vm.deref(vref, "remove_migration_pte")
    m = k.mmc.deref(k.vm.mm[v], "remove_migration_pte")
    ptl = k.ptl(m)
    k.locks.lock(ptl, "remove_migration_pte")
    kind, ref, w = memory.pte_get(k, m, addr)
    if kind == PTE_MIGRATION and ref == old:
        memory.get_page(k, new, "remove_migration_pte")
        k.hooks.window_open(k, "migrate-before-scan", m, addr, new)  # a new word: no rmap_item of its own yet
        memory.pte_set(k, m, addr, PTE_PRESENT, new, w, "remove_migration_pte")
        rmap.page_add_anon_rmap(k, new)
    k.locks.unlock(ptl, "remove_migration_pte")
    return rmap.SWAP_AGAIN


@kfunc
def remove_migration_ptes(k: K, old: int, new: int) -> None:
    """Every migration entry naming `old` becomes a pte of `new` (new == old when the migration failed)."""
    rmap_walk(k, new, remove_migration_pte, old)


# -- moving the page ------------------------------------------------------------------------------------------
def mlock_migrate_page(k: K, ns: int, os_: int) -> None:
    """PageMlocked moves to the new page (NR_MLOCK unchanged): both pages locked."""
    with k.guard:
        if k.pg.flags[os_] & PG_MLOCKED:
            k.pg.flags[os_] &= ~PG_MLOCKED
            k.pg.flags[ns] |= PG_MLOCKED


def ksm_migrate_page(k: K, new: int, old: int) -> None:
    """The stable node follows its KSM page: stable_node->kpfn = page_to_pfn(newpage) (both pages locked,
    ksm_thread_mutex held by the hot-remove)."""
    ns = k.pg.deref(new, "ksm_migrate_page")
    nref = k.pg.mapping[ns]
    if k.pg.flags[ns] & PG_KSM and nref:
        n = k.sn.deref(nref, "ksm_migrate_page")
        k.sn.kpfn[n] = ns


def migrate_page_copy(k: K, new: int, old: int) -> None:
    """The bytes, the flags (PageAnon, PageKsm through the mapping, PageMlocked), the stable node's kpfn; then
    the old page loses its mapping (page->mapping = NULL)."""
    ns, os_ = ref_slot(new), k.pg.deref(old, "migrate_page_copy")
    k.hooks.shared_access(k, k.st.frames, os_, 0, "migrate_page_copy")
    k.st.frames[ns, :] = k.st.frames[os_, :]
    k.pg.flags[ns] |= k.pg.flags[os_] & (PG_ANON | PG_KSM)
    mlock_migrate_page(k, ns, os_)
    ksm_migrate_page(k, new, old)
    k.pg.flags[os_] &= ~(PG_ANON | PG_KSM)
    k.pg.mapping[os_] = 0


@kfunc
def move_to_new_page(k: K, new: int, old: int) -> int:
    """Lock the new page, give it the old one's mapping and index, migrate_page (an anon page without a
    swap-cache mapping moves only if the migration's own reference is the last: page_count == 1), then put the
    ptes back onto the new page. 0 or -EAGAIN."""
    ns, os_ = ref_slot(new), k.pg.deref(old, "move_to_new_page")
    if not k.locks.trylock(k.page_lock(ns), "move_to_new_page:trylock_page"):
        raise AssertionError("a fresh page's lock is held")  # BUG(): nobody else knows the new page yet
    k.pg.index[ns] = k.pg.index[os_]
    k.pg.mapping[ns] = k.pg.mapping[os_]
    k.spoint("migrate_page_move_mapping")
    rc = 0 if memory.page_count(k, os_) == 1 else EAGAIN
    if rc == 0:
        migrate_page_copy(k, new, old)
        remove_migration_ptes(k, old, new)
    else:
        k.pg.mapping[ns] = 0
    k.locks.unlock(k.page_lock(ns), "move_to_new_page:unlock_page")
    return rc


@kfunc
def unmap_and_move(k: K, page: int) -> int:
    """Migrate one isolated page (the caller holds its isolation reference): 0, or -EAGAIN with every migration
    entry put back onto the old page."""
    new = memory.alloc_page(k, "unmap_and_move:get_new_page")
    s = ref_slot(page)
    k.locks.lock(k.page_lock(s), "unmap_and_move:lock_page")  # force: hot-remove waits for the page lock
    if k.pg.flags[s] & PG_MLOCKED:
        # Simplified: an mlocked page is left alone (-EBUSY). 2.6.33 migrates it, and a munlock meanwhile misses
        # it (follow_page sees a migration entry), so the new page stays mlocked under an unlocked vma and is
        # freed mlocked later: the unevictable_pgs_mlockfreed count, which the mlock detector would call a bug
        k.locks.unlock(k.page_lock(s), "unmap_and_move:unlock_page")
        memory.put_page(k, new, "unmap_and_move:put_new_page")
        return EAGAIN
    k.atomic_add(k.gb, GB_MIGRATING, 1, "unmap_and_move")
    rc = EAGAIN
    # rcu_read_lock(): keeps the anon_vma type-stable until remove_migration_ptes (see rmap_walk_anon)
    if memory.page_mapping_nonnull(k, s):
        rmap.try_to_unmap(k, page, TTU_MIGRATION | TTU_IGNORE_MLOCK)
    if not rmap.page_mapped(k, s):
        rc = move_to_new_page(k, new, page)
    if rc:
        remove_migration_ptes(k, page, page)
    k.atomic_add(k.gb, GB_MIGRATING, -1, "unmap_and_move")
    k.locks.unlock(k.page_lock(s), "unmap_and_move:unlock_page")
    memory.put_page(k, new, "unmap_and_move:putback_lru_page")  # the allocation's reference; ptes hold theirs
    return rc


# -- memory hot-remove ----------------------------------------------------------------------------------------
@kfunc
def ksm_check_stable_tree(k: K, slot: int) -> None:
    """MEM_OFFLINE: a stable node still naming the offlined frame is stale (its page was freed, not migrated):
    remove it, so nothing points into removed memory."""
    from .ksm import remove_node_from_stable_tree, stable_tree

    for nref in stable_tree(k).nodes():
        if k.sn.is_live(nref) and k.sn.kpfn[ref_slot(nref)] == slot:
            remove_node_from_stable_tree(k, nref)


@kfunc
def offline_page(k: K, s: int) -> int:
    """offline_pages of the section holding frame s: ksm_memory_callback(MEM_GOING_OFFLINE) takes
    ksm_thread_mutex (nested: hot-remove's own locks come first in the kernel); isolate (a reference unless
    the page is already free), unmap_and_move, putback; then MEM_OFFLINE (ksm_check_stable_tree) or
    MEM_CANCEL_OFFLINE, and the mutex goes (simplified: mutex_lock, not _nested: the model has no hot-remove
    locks before it). Returns unmap_and_move's result (0 for a page found free)."""
    k.locks.lock(k.ksm_thread_mutex, "ksm_memory_callback:MEM_GOING_OFFLINE")
    rc = 0
    page = memory.get_page_unless_zero(k, s)  # isolate_lru_page
    if page:
        if k.pg.flags[s] & PG_ANON:
            rc = unmap_and_move(k, page)
        memory.put_page(k, page, "putback_lru_page")
    if rc == 0:
        ksm_check_stable_tree(k, s)
    k.locks.unlock(k.ksm_thread_mutex, "ksm_memory_callback:MEM_OFFLINE")
    return rc
