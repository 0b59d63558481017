"""The modelled 2.6.33 kernel: memory.c (faults, COW), mm (mmap, fork, exit), rmap.c, ksm.c, over the arena.

The model follows Linux 2.6.33 mm/ksm.c (after db114b83ab "ksm: hold anon_vma in rmap_item"), mm/rmap.c and the
parts of mm/memory.c, mm/mmap.c, kernel/fork.c and mm/vmscan.c that KSM meets, with the kernel's function names
and lock order (ksm_thread_mutex -> mmap_sem -> page lock -> anon_vma->lock -> page_table_lock; ksm_mmlist_lock
a leaf). Every function takes `k` (state.K): tables read field by field (`k.sn.hfirst[n]` is
stable_node->hlist.first), every pointer is a generation-tagged reference, every dereference the kernel makes is
a KASAN check (`k.sn.deref(ref, site)`), and every lock operation is a scheduling point. Data a kernel lock rule
covers (ptes, vma and anon_vma lists, the mm_slot list, the trees, a stable node's rmap_items...) is touched through
a helper that names the lock the rule wants (`k.hooks.lock_rule`, checked by checks/lockrules.py as
lockdep_assert_held would); where the kernel itself goes without that lock, the place says why in one line.

Deviations from 2.6.33: what, where, why (each also has a one-line note at its place).

 1. scan_get_next_rmap_item rechecks the mm list after taking ksm_mmlist_lock (the CVE-2011-2183 fix of 3.0).
    where: ksm.scan_get_next_rmap_item
    why:   without it ksmd walks ksm_mm_head's NULL mm when the last mm exits in that window (found by this model);
           bug variant `scan-exit-race` restores the 2.6.33 code.
 2. A final pass prunes stale stable nodes, and ksmd ends once every mm is gone.
    where: ksm.prune_stale_stable_nodes, actors.ksmd_body
    why:   2.6.33 keeps a stale node until a later search passes over it, and its ksmd never ends; a run must
           reach quiescence for the leak check to see what truly survives.
 3. Counters and reference counts are checked as they change: below zero, or past the scenario's refcount_bits.
    where: ksm._dec, ksm.hold_anon_vma, memory.put_page, rmap.page_remove_rmap, mm.mmdrop, swapfile.swap_free
    why:   the kernel wraps silently (or BUGs much later); the model names the failure at the step it happens.
 4. The page checksum is crc32, not jhash2.
    where: ksm.calc_checksum
    why:   only "unchanged since the last scan" matters.
 5. The stable and unstable trees are binary search trees without rebalancing.
    where: tree.Tree
    why:   same search order, insertion points and erase; only the depth differs, which changes no KSM decision.
 6. rmap_item's STABLE_FLAG / UNSTABLE_FLAG and seqnr are columns, not the low bits of ->address; an mm finds
    its mm_slot through mm_struct.slot, not mm_slots_hash.
    where: state.RmapItems, state.MmStructs
    why:   the same information, without bit packing or a hash table.
 7. Addresses are page numbers; a page table is one flat row of ptes per mm, with one page_table_lock per mm
    (no split ptlocks).
    where: state, memory
    why:   the walks and locks KSM meets are per pte and per mm; page 0 stays unmapped, as address 0 does.
 8. A read fault on an untouched page allocates a zeroed page (no ZERO_PAGE).
    where: memory.do_anonymous_page
    why:   the zero page is not PageAnon, so 2.6.33's KSM never merges it; a real page only adds candidates.
 9. do_wp_page copies when trylock_page fails, instead of sleeping on the page lock.
    where: memory.do_wp_page
    why:   a copy is always correct, and the fault path stays free of a sleeping wait.
10. The swap cache's radix tree is a column of the swap table (entry -> page) and its tree_lock, like swap_lock,
    is the model's atomic step; swap I/O is synchronous under the page lock; vm_swap_full is "more than half of
    the swap table in use"; swapin_readahead reads one page.
    where: swap_state, swapfile
    why:   what KSM meets is PageSwapCache, page->private, SWAP_HAS_CACHE and the swap cache's page reference, all
           modelled; the tree's shape and the I/O's timing change none of them.
11. page_referenced counts every mapping it finds as referenced (no young bits).
    where: rmap.page_referenced_one
    why:   the walk's coverage is under test, not page ageing.
12. Reclaim has no LRU and no dirty/writeback states: a seeded pick of a mapped page goes through
    shrink_page_list's steps (pageout always writes) or, `[reclaim] active` of the time, shrink_active_list's
    unlocked page_referenced(page, 0) (no active/inactive lists: the answer only ends the step); once every mm is
    gone, reclaim drains the swap cache. Without PG_lru, migration may pick a page reclaim has isolated (2.6.33's
    isolate_lru_page would refuse it): the unlocked walk takes its traversal duty under anon_vma->lock, which
    migration's rmap walks also take.
    where: vmscan.shrink_page, vmscan.shrink_active_page, vmscan.drain_swap_cache, actors.reclaim_body
    why:   it exists to drive the rmap walks against KSM at chosen moments; the drain stands for the LRU scans
           that would reach the pages left in the swap cache, so the leak check sees what truly survives.
13. anon_vma_prepare never reuses a neighbour's anon_vma (find_mergeable_anon_vma); no vma_merge on mmap or
    madvise; rlimits are a fixed per-mm vma budget.
    where: rmap.anon_vma_prepare, mm
    why:   fewer shapes, the same lifetimes: fork and split still share a vma's anon_vma.
14. Every vma is private anonymous memory: no file, shared, huge or special vmas (VM_LOCKED ones are modelled).
    where: ksm.ksm_madvise, mm.mmap_region
    why:   KSM merges only private anonymous pages.
15. Faults cannot fail and tasks get no signals: break_ksm has no OOM/SIGBUS, unmerge_ksm_pages no -ERESTARTSYS.
    where: ksm.break_ksm, ksm.unmerge_ksm_pages
    why:   those paths only abandon work; they guard no object's lifetime.
16. A user store or load of a whole page is one step under the pte lock.
    where: memory.user_write, memory.user_read
    why:   the hardware plus ptep_clear_flush's TLB flush make a store atomic against a pte change.
17. get_ksm_page's mapping check, get_page_unless_zero and recheck are one atomic step.
    where: ksm.get_ksm_page
    why:   the recheck exists to close exactly that window.
18. (none any more: mmap_sem is 2.6.33's rwsem, a reader queues behind a waiting writer; sync.Locks.down_read)
19. try_to_merge_with_ksm_page checks the vma as find_mergeable_vma does (VM_MERGEABLE and anon_vma; 3.4).
    where: ksm.try_to_merge_with_ksm_page
    why:   without it, a KSM page forked into a vma the mm has since replaced by a fresh one (no anon_vma yet) is
           "merged" by the page == kpage shortcut and hold_anon_vma takes a NULL anon_vma (found by this model at
           shared granularity, seed-fork-race random seed 30 before later changes moved the schedules; no seed of
           0..399 reaches it now, so the 2.6.33 code is not yet a catalogue variant: it needs a focused scenario).
20. Threads of one mm own disjoint pages, and a threaded program neither forks, mmaps nor munmaps.
    where: actors.MmTask (threads, mine), scenario (threads > 1)
    why:   each program checks every read against its own record of what it wrote; two threads storing to one
           page would make that record ambiguous, and a thread must know what is mapped. The kernel paths are
           shared as in Linux: one mm, mm_users per thread, MADV_DONTNEED and faults under mmap_sem for read.
21. get_user_pages pins one page per call; O_DIRECT's I/O is one DMA store made when the caller says so, with no
    set_page_dirty_lock; get_user_pages_fast's interrupts-off walk is one step.
    where: gup
    why:   what KSM meets is the pin (an extra page_count) and the store through it with no pte and no lock; the
           IPI that ptep_clear_flush sends cannot complete inside that walk, which one step models exactly.
22. (none any more: a pinned page stays in the swap cache, __remove_mapping's page_freeze_refs fails, 10)
23. break_ksm follows the pte with FOLL_MIGRATION (3.9, 5117b3b835f2): a migration entry is waited out.
    where: ksm.break_ksm, memory.follow_page
    why:   2.6.33's follow_page sees no page under migration, so MADV_UNMERGEABLE or run=2 racing a hot-remove
           leaves a KSM page merged (Hugh Dickins found it in 2013); variant `break-ksm-no-foll-migration`.
24. mlock has no LRU (isolate_lru_page always succeeds, putback is nothing), no RLIMIT_MEMLOCK, no mlockall.
    where: mlock
    why:   the model has no LRU lists; what KSM meets is PageMlocked and the VM_LOCKED vmas.
25. Hot-remove migrates one page per offline, with no retry passes, and leaves mlocked pages alone (-EBUSY).
    where: migrate.offline_page, migrate.unmap_and_move
    why:   2.6.33 migrates them, and a munlock meanwhile misses the page under its migration entry, so it is later
           freed mlocked (counted as unevictable_pgs_mlockfreed), which the mlock detector would call a bug.
    A swap-cache page is unmapped into migration entries and then refused (page_count is not 1: -EAGAIN);
    2.6.33 unmaps it into swap entries and moves its swap-cache slot to the new page.
26. do_swap_page rechecks, after lock_page, that the page is still the entry's swap-cache page
    (!PageSwapCache(page) || page_private(page) != entry.val), and when KSM copies it, keeps the swap-cache page
    locked and referenced until swap_free (4969c1192d15 "mm: fix swapin race condition" and 31c4a3d3a0f8 "mm:
    further fix swapin race condition").
    where: memory.do_swap_page, ksm.ksm_does_need_to_copy
    why:   without them reuse_swap_page or try_to_free_swap can take the page out of the swap cache (and its entry
           can be reused) between the lookup and the lock, and pte_same then maps another page's bytes.
27. swapoff's try_to_unuse makes one pass over the entries in use with the swap area still usable (swapoff then
    swapon at once), so an entry still named by a pte afterwards (another index or anon_vma, which unuse_vma
    does not reach; or a swap-out meanwhile) keeps its page for the faults; it puts the mms it held after the page
    lock goes (2.6.33 mmputs the previous mm under it).
    where: swapfile.try_to_unuse
    why:   swapoff is an op among the others ([reclaim] swapoff); an mmput that runs exit_mmap under a page lock
           would take mmap_sem after it (ksm_exit), against the lock order.
28. mremap: get_unmapped_area is the lowest free range; a VM_LOCKED vma that mremap grows or moves larger is not
    made present (make_pages_present); no may_expand_vm, RLIMIT_MEMLOCK or VM_ACCOUNT; move_page_tables is one
    extent.
    where: mremap
    why:   none of it decides whether a pte or a KSM page is found: the pages fault in on first touch, and 2.6.33's
           make_pages_present mlocks nothing either.
29. do_swap_page copies a KSM page it finds in the swap cache while run=2 unmerges (ksm_might_need_to_copy's
    KSM_RUN_UNMERGE test, cbf86cfe04a6 "ksm: remove old stable nodes more thoroughly", 3.9).
    where: ksm.ksm_might_need_to_copy
    why:   break_ksm's follow_page passes over a swap pte, so in 2.6.33 a KSM page swapped in beside the unmerge
           is mapped as it is and run=2 returns with it merged (found by this model: mixed at locks granularity);
           variant `swapin-ksm-during-unmerge` restores the 2.6.33 test.
30. __ksm_enter inserts a new mm_slot at the end of the mm list while run=2 unmerges (ahead of its cursor), not
    just behind ksmd's scanning cursor (Hugh Dickins' later fix: "otherwise KSM pages in newly forked mms will be
    missed"; commit id not verified here).
    where: ksm.__ksm_enter
    why:   in 2.6.33 a child forked during unmerge_and_remove_all_rmap_items is linked where the unmerge has
           already been, so run=2 returns with the KSM ptes the child copied still merged (found by this model:
           mixed in free mode, unmerge-incomplete).
31. write_protect_page checks `page_mapcount + 1 + swapped == page_count` for a read-only pte too, not only for
    a writable one (later kernels check a read-only pte of a PageAnonExclusive page, 5.19; commit id not
    verified here).
    where: ksm.write_protect_page
    why:   in 2.6.33 a page pinned for an O_DIRECT read (get_user_pages for write) that reclaim unmaps into a swap
           entry while the I/O is in flight comes back read-only (a read fault's do_swap_page, swapoff's
           unuse_pte), and write_protect_page then merges it unchecked: the DMA lands in the page the program no
           longer maps (found by this model: focus-dio-swap, data-loss); variant `wrprotect-readonly-unchecked`
           restores the 2.6.33 test.

Kept as 2.6.33 has them, though they may look like simplifications: one anon_vma per fork family and no
anon_vma_chain (that is 2.6.34); page_lock_anon_vma reads a SLAB_DESTROY_BY_RCU anon_vma raw (type-stable memory,
so not KASAN-checked), while rmap_item->anon_vma, which only ksm_refcount keeps alive, is checked; mremap's
move_ptes takes no anon_vma lock (copy_vma's new vma follows the old on the anon_vma list, so a walk sees a moving
pte at one place or the other).
"""
