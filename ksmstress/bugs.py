"""The catalogue of injectable bug variants.

A variant is a named switch that the model consults at exactly one place (`k.bug(NAME)`); it never replaces a
function. Each entry says what it breaks, which detector must catch it and which scenario shows it, so that
`ksmstress bugs` documents the catalogue and the tests can check every variant against its detector.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    breaks: str
    detector: str
    scenario: str
    also: tuple[str, ...] = ()  # other classes of the same detector family that may fire first

    @property
    def classes(self) -> tuple[str, ...]:
        return (self.detector, *self.also)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "no-anon-vma-ref",
            "rmap_item records the anon_vma but takes and drops no reference (the lifetime before db114b83ab): "
            "the anon_vma is freed when its last vma is unmapped while a stable rmap_item still points at it",
            "use-after-free",
            "seed-unmap-race.toml",
            also=("refcount-mismatch",),  # ksm_refcount != stable rmap_items at ksmd's next quiescent point
        ),
        Variant(
            "free-on-empty-list",
            "references are counted, but anon_vma_unlink frees the anon_vma once its vma list is empty, "
            "ignoring ksm_refcount",
            "use-after-free",
            "seed-unmap-race.toml",
            also=("refcount-mismatch",),  # a stable rmap_item's anon_vma found freed at ksmd's next quiescent point
        ),
        Variant(
            "single-pass-walk",
            "page_referenced_ksm / try_to_unmap_ksm do pass 0 only, so ptes that fork duplicated before ksmd "
            "gave them an rmap_item are never visited",
            "traversal",
            "seed-fork-race.toml",
        ),
        Variant(
            "unlocked-refcount-drop",
            "drop_anon_vma decrements ksm_refcount to 0 and tests the vma list outside anon_vma->lock, so a "
            "racing anon_vma_unlink frees the anon_vma in between",
            "use-after-free",
            "drop-unlink-race.toml",
            also=("double-free",),
        ),
        Variant(
            "narrow-refcount",
            "anon_vma->ksm_refcount is 8 bits wide: 128 stable rmap_items on one anon_vma wrap it",
            "refcount-overflow",
            "refcount-width.toml",
        ),
        Variant(
            "inverted-lock-order",
            "reclaim's walk takes anon_vma->lock before the page lock (2.6.33: page lock -> anon_vma->lock)",
            "lockdep",
            "seed-fork-race.toml",
        ),
        Variant(
            "ksmd-no-mmap-sem",
            "ksmd walks an mm's vmas (scan_get_next_rmap_item) without mmap_sem, while the owner unmaps them",
            "unlocked-access",  # find_vma without mmap_sem breaks the lock rule at once, before any unmap races it
            "scan-munmap-race.toml",
            # the race itself: a vma freed by munmap under the scan; and the mmap_sem that keeps MADV_MERGEABLE
            # out while ksmd frees an idle mm's slot is gone too: madvise sees MMF_VM_MERGEABLE still set, skips
            # __ksm_enter, and ksmd then clears it under a mergeable vma
            also=("use-after-free", "registration"),
        ),
        Variant(
            "merge-without-wrprotect",
            "try_to_merge_one_page merges without write_protect_page, and replace_page does not recheck the pte: "
            "a write between the compare and the replace is lost",
            "data-loss",
            "merge-write-race.toml",
            also=("writable-ksm",),  # the page becomes KSM under a writable pte: ksmd's next quiescent point sees it
        ),
        Variant(
            "fork-no-mapcount",
            "copy_page_range maps a KSM page into the child without raising its mapcount: the last unmaps drive "
            "it below zero, or an unmap walk stops early (page_mapped false) with the child's pte still there",
            "refcount-underflow",
            "seed-fork-race.toml",
            also=("traversal", "refcount-mismatch"),  # mapcount != ptes at a quiescent point with no pte lock held
        ),
        Variant(
            "scan-exit-race",
            "2.6.33's scan_get_next_rmap_item as it was: no recheck after taking ksm_mmlist_lock, so a __ksm_exit "
            "that frees the last mm_slot between list_empty() and the lock leaves ksmd on ksm_mm_head and its NULL "
            "mm (CVE-2011-2183, fixed in 3.0; found by ksmstress on the faithful model)",
            "oops",
            "scan-exit-race.toml",
        ),
        # --- issue 14 part B: mlock, migration
        Variant(
            "merge-mlockfreed",
            "try_to_merge_one_page merges a page of a VM_LOCKED vma without munlock_vma_page(page) and "
            "mlock_vma_page(kpage), as before \"ksm: fix mlockfreed to munlocked\" (2.6.33; linux-mm [PATCH 1/9], "
            "Nov 2009; commit 73848b4684e8, id not verified here): the replaced page is freed still PageMlocked",
            "mlock",
            "focus-mlock-merge.toml",
        ),
        Variant(
            "break-ksm-no-foll-migration",
            "break_ksm's follow_page without FOLL_MIGRATION, as 2.6.33 until 5117b3b835f2 \"mm,ksm: FOLL_MIGRATION "
            "do migration_entry_wait\" (3.9): MADV_UNMERGEABLE meeting a KSM page under hot-remove migration sees "
            "no page, returns, and the migration puts the KSM page back under the unmerged vma",
            "unmerge-incomplete",
            "focus-unmerge-migrate.toml",
        ),
        Variant(
            "migrate-no-rcu",
            "unmap_and_move keeps the page's anon_vma neither by rcu_read_lock (2.6.33, SLAB_DESTROY_BY_RCU) nor "
            "by a reference (3f6c82728f4e \"mm: migration: take a reference to the anon_vma before migrating\", "
            "2.6.35, then 7f60c214fd3a sharing KSM's count): the last munmap frees it during the migration and "
            "remove_migration_ptes' rmap_walk_anon locks freed memory",
            "use-after-free",
            "focus-migrate-munmap.toml",
        ),
        # --- issue 14 part A: threads, gup
        Variant(
            "wrprotect-no-gup-check",
            "write_protect_page write-protects and the merge goes on without comparing page_mapcount + 1 with "
            "page_count, so a page pinned by get_user_pages for an O_DIRECT read is merged: the DMA lands in a page "
            "the program no longer maps, or in the KSM page every sharer maps. The check and Andrea Arcangeli's "
            "comment on it came with KSM itself (31dbd01f3143 'ksm: Kernel SamePage Merging', 2.6.32)",
            "data-loss",
            "focus-dio-merge.toml",
        ),
        Variant(
            "wrprotect-check-before-clear",
            "write_protect_page reads the counts while the pte still maps the page writable and only then "
            "write-protects it: a get_user_pages_fast that reads the pte after the check pins the page unseen, and "
            "the O_DIRECT data is lost to the merge. 2.6.33 clears and flushes the pte first (the flush waits for "
            "gup_fast's interrupts-off walk); 088b8aa537c2 'mm: fix PageAnonExclusive clearing racing with "
            "concurrent RCU GUP-fast' (6.0) had to restore the same clear-then-check order for RCU GUP-fast",
            "data-loss",
            "focus-dio-merge.toml",
        ),
        Variant(
            "wrprotect-readonly-unchecked",
            "write_protect_page checks the counts only when the pte is writable, as 2.6.33 does: a page pinned for "
            "an O_DIRECT read that reclaim unmaps while the I/O is in flight comes back read-only (swap-in on a "
            "read fault, swapoff's unuse_pte) and is merged with the pin held, so the DMA is lost to the merge. "
            "Found by this model (focus-dio-swap); later kernels check a read-only pte of an exclusive anonymous "
            "page too (PageAnonExclusive, 5.19)",
            "data-loss",
            "focus-dio-swap.toml",
        ),
        # --- issue 14: the swap cache
        Variant(
            "swapin-ksm-during-unmerge",
            "do_swap_page maps a KSM page it finds in the swap cache as it is even while run=2 unmerges (2.6.33's "
            "ksm_might_need_to_copy has no KSM_RUN_UNMERGE test): break_ksm's follow_page passed over the swap "
            "pte, so run=2 returns with a pte mapping a KSM page. cbf86cfe04a6 'ksm: remove old stable nodes more "
            "thoroughly' (3.9) copies such a page",
            "unmerge-incomplete",
            "focus-swapin-unmerge.toml",
        ),
    )
}


class UnknownBug(ValueError):
    """A bug name that is not in the catalogue (a user's mistake: exit status 2)."""


def validate(names: list[str] | tuple[str, ...]) -> frozenset[str]:
    """Return the set of variant names, or raise UnknownBug naming the first unknown one."""
    for n in names:
        if n not in VARIANTS:
            raise UnknownBug(f"unknown bug variant {n!r}; expected one of: {', '.join(sorted(VARIANTS))}")
    return frozenset(names)
