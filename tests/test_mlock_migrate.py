"""Issue 14 part B: mlock (VM_LOCKED, PageMlocked, SWAP_MLOCK, try_to_munlock, KSM's hand-over of the mlock) and
memory hot-remove migration (migration entries, rmap_walk_ksm, ksm_migrate_page), their oracles, and the bug
variants from the real fixes on these paths, each caught by its detector in its focused scenario."""

from __future__ import annotations

import pytest

from ksmstress import runner, scenario
from ksmstress.arena import ref_slot
from ksmstress.catalog import shipped_dir
from ksmstress.checks.mlock import check_no_migration_ptes, check_nr_mlock
from ksmstress.failures import Failure
from ksmstress.mm import ksm, memory, migrate, mlock, rmap, swap_state, vmscan
from ksmstress.mm import mm as mmm
from ksmstress.mm.state import (
    GB_NR_MLOCK,
    PG_KSM,
    PG_MLOCKED,
    PG_SWAPCACHE,
    PTE_MIGRATION,
    PTE_PRESENT,
    PTE_SWAP,
    SWAP_MLOCK,
    mk_pte,
)

from .harness import content, make_kernel, new_program, page_locked, pte, pte_page, read, scan, write


def _mlocked(k, page: int) -> bool:
    return bool(k.pg.flags[ref_slot(page)] & PG_MLOCKED)


# -- mlock --------------------------------------------------------------------------------------------------------
def test_mlock_marks_pages_and_reclaim_refuses_them():
    """mlock faults the range in and marks each page PageMlocked; reclaim's walk finds VM_LOCKED and keeps the
    pte (SWAP_MLOCK), and shrink_page culls an mlocked page before walking it at all."""
    k = make_kernel()
    aref, a = new_program(k, 3)
    write(k, a, 1, 1)
    assert mlock.sys_mlock(k, aref, 1, 3, True) == 0
    page = pte_page(k, a, 1)
    assert _mlocked(k, page) and _mlocked(k, pte_page(k, a, 2))  # address 2 was faulted in by mlock
    assert int(k.gb[GB_NR_MLOCK]) == 2
    with page_locked(k, page):
        assert rmap.try_to_unmap(k, page) == SWAP_MLOCK
    assert pte(k, a, 1)[0] == PTE_PRESENT
    vmscan.shrink_page(k, page, True)
    assert pte(k, a, 1)[0] == PTE_PRESENT
    assert mlock.sys_mlock(k, aref, 1, 5, False) == -12  # address 4 is not mapped: -ENOMEM, the rest munlocked
    assert not _mlocked(k, page) and int(k.gb[GB_NR_MLOCK]) == 0
    vmscan.shrink_page(k, page, True)
    assert pte(k, a, 1)[0] == PTE_SWAP
    assert read(k, a, 1) == content(k, 1)
    check_nr_mlock(k.st, "test")
    mmm.mmput(k, aref)


def test_munlock_keeps_a_page_another_locked_vma_maps():
    """munlock_vma_page clears PageMlocked, then try_to_munlock finds the child's VM_LOCKED vma mapping the same
    page and mlocks it again; the child's exit munlocks it for good."""
    k = make_kernel()
    aref, a = new_program(k, 1)
    write(k, a, 1, 1)
    cref = mmm.dup_mmap(k, aref)
    c = ref_slot(cref)
    assert mlock.sys_mlock(k, aref, 1, 2, False) == 0
    # the child locks its copy: a read-only mapping of a private writable vma is write-faulted (COW) by mlock
    assert mlock.sys_mlock(k, cref, 1, 2, True) == 0
    assert pte_page(k, c, 1) != pte_page(k, a, 1)
    # so lock the parent too, and fork again: the new child shares the parent's page, unlocked (not inherited)
    assert mlock.sys_mlock(k, aref, 1, 2, True) == 0
    page = pte_page(k, a, 1)
    assert _mlocked(k, page)
    dref = mmm.dup_mmap(k, aref)
    d = ref_slot(dref)
    assert pte_page(k, d, 1) == page and not k.vm.flags[ref_slot(mmm.vma_walk(k, d)[0])] & 2
    assert mlock.sys_mlock(k, aref, 1, 2, False) == 0  # d's vma is not locked: the page goes unlocked
    assert not _mlocked(k, page)
    assert mlock.sys_mlock(k, dref, 1, 2, True) == 0  # d write-faults its own copy
    assert mlock.sys_mlock(k, aref, 1, 2, True) == 0
    page = pte_page(k, a, 1)
    assert _mlocked(k, page)
    for ref in (aref, cref, dref):
        mmm.mmput(k, ref)
    assert int(k.gb[GB_NR_MLOCK]) == 0


def test_ksm_merges_mlocked_pages_and_hands_the_lock_over():
    """Two mlocked equal pages merge; the replaced page is munlocked before it is freed and the KSM page is
    mlocked: NR_MLOCK counts one page, and the exit munlocks it."""
    k = make_kernel()
    aref, a = new_program(k, 2)
    write(k, a, 1, 3)
    write(k, a, 2, 3)
    assert mlock.sys_mlock(k, aref, 1, 3, True) == 0
    scan(k, 3)
    kpage = pte_page(k, a, 1)
    assert pte_page(k, a, 2) == kpage and k.pg.flags[ref_slot(kpage)] & PG_KSM
    assert _mlocked(k, kpage) and int(k.gb[GB_NR_MLOCK]) == 1
    check_nr_mlock(k.st, "test")
    mmm.mmput(k, aref)
    assert int(k.gb[GB_NR_MLOCK]) == 0


def test_munlock_reaches_a_ksm_page_with_no_stable_node_yet():
    """try_to_merge_one_page(page, NULL) makes the page PageKsm with a NULL stable node before the second merge;
    page->mapping still carries PAGE_MAPPING_ANON|KSM, so munlock's `if (page->mapping)` passes and the page is
    munlocked (a model that tested the bare pointer left it mlocked, and reclaim culled it for ever)."""
    k = make_kernel()
    aref, a = new_program(k, 1)
    write(k, a, 1, 2)
    assert mlock.sys_mlock(k, aref, 1, 2, True) == 0
    page = pte_page(k, a, 1)
    with page_locked(k, page):
        ksm.set_page_stable_node(k, ref_slot(page), 0)
    assert k.pg.flags[ref_slot(page)] & PG_KSM and not k.pg.mapping[ref_slot(page)] and _mlocked(k, page)
    assert mlock.sys_mlock(k, aref, 1, 2, False) == 0
    assert not _mlocked(k, page) and int(k.gb[GB_NR_MLOCK]) == 0
    check_nr_mlock(k.st, "test")
    mmm.mmput(k, aref)


def test_cull_mlocked_gives_up_the_swap_slot():
    """shrink_page_list's cull_mlocked calls try_to_free_swap: an mlocked page in the swap cache whose entry no
    swap pte names leaves the cache, so it cannot linger there once its last pte goes."""
    k = make_kernel()
    aref, a = new_program(k, 1)
    write(k, a, 1, 2)
    assert mlock.sys_mlock(k, aref, 1, 2, True) == 0
    page = pte_page(k, a, 1)
    s = ref_slot(page)
    with page_locked(k, page):
        assert swap_state.add_to_swap(k, page)
    assert k.pg.flags[s] & PG_SWAPCACHE
    used = int(k.st.swap.live_slots().size)
    memory.get_page(k, page, "isolate_lru_page")
    assert not vmscan.shrink_page(k, page, True)
    memory.put_page(k, page, "putback_lru_page")
    assert not k.pg.flags[s] & PG_SWAPCACHE and _mlocked(k, page) and pte(k, a, 1)[0] == PTE_PRESENT
    assert int(k.st.swap.live_slots().size) == used - 1
    mmm.mmput(k, aref)
    assert int(k.gb[GB_NR_MLOCK]) == 0


def test_a_page_freed_mlocked_is_an_mlock_failure():
    """The variant's effect: ksmd frees the replaced page still PageMlocked; the mlock detector names it."""
    k = make_kernel(bugs=("merge-mlockfreed",))
    aref, a = new_program(k, 2)
    write(k, a, 1, 3)
    write(k, a, 2, 3)
    assert mlock.sys_mlock(k, aref, 1, 3, True) == 0
    with pytest.raises(Failure) as e:
        scan(k, 3)
    assert e.value.cls == "mlock" and "PageMlocked" in e.value.message


def test_a_page_mlocked_for_a_vma_that_is_not_vm_locked_is_an_mlock_failure():
    """mlock_vma_page's callers hold a VM_LOCKED vma. KSM's hand-over without its VM_LOCKED test (a campaign's
    survivor, try_to_merge_one_page:555:drop-recheck:2) mlocks kpage at every merge, leaving it unevictable with no
    munlock to come; the same page mlocked through mlock(2), whose vma is VM_LOCKED, is quiet."""
    k = make_kernel()
    aref, a = new_program(k, 2)
    write(k, a, 1, 3)
    page = pte_page(k, a, 1)
    k.locks.down_read(k.mmap_sem(a), "test")  # as the callers: the vma pinned by its mm's mmap_sem
    vref = mmm.find_vma(k, a, 1)
    with pytest.raises(Failure) as e, page_locked(k, page):
        mlock.mlock_vma_page(k, page, vref)
    k.locks.up_read(k.mmap_sem(a), "test")
    assert e.value.cls == "mlock" and "not VM_LOCKED" in e.value.message
    assert mlock.sys_mlock(k, aref, 1, 3, True) == 0
    assert _mlocked(k, page)
    check_nr_mlock(k.st, "test")


# -- migration ----------------------------------------------------------------------------------------------------
def test_migrating_a_ksm_page_restores_every_pte_forked_ones_included():
    """A KSM page mapped by two ptes with rmap_items and by a forked child without one: hot-remove migrates it,
    remove_migration_ptes finds all three through rmap_walk_ksm (the child in pass 1), the stable node follows the
    page (kpfn), and the bytes survive."""
    k = make_kernel()
    aref, a = new_program(k, 2)
    write(k, a, 1, 4)
    write(k, a, 2, 4)
    scan(k, 3)
    old = pte_page(k, a, 1)
    assert k.pg.flags[ref_slot(old)] & PG_KSM and pte_page(k, a, 2) == old
    cref = mmm.dup_mmap(k, aref)
    c = ref_slot(cref)
    assert migrate.offline_page(k, ref_slot(old)) == 0
    new = pte_page(k, a, 1)
    assert new != old and pte_page(k, a, 2) == new and pte_page(k, c, 1) == new and pte_page(k, c, 2) == new
    assert k.pg.mapcount[ref_slot(new)] == 4 and k.pg.flags[ref_slot(new)] & PG_KSM
    assert not k.pg.is_live(old)
    nref = k.pg.mapping[ref_slot(new)]
    assert k.sn.kpfn[ref_slot(nref)] == ref_slot(new)
    for m in (a, c):
        assert read(k, m, 1) == content(k, 4) and read(k, m, 2) == content(k, 4)
    check_no_migration_ptes(k.st, "test")
    scan(k, 2)  # ksmd finds the node's page again through kpfn
    for ref in (aref, cref):
        mmm.mmput(k, ref)


def test_a_migration_that_cannot_move_puts_the_old_page_back():
    """An extra reference (a get_user_pages, reclaim's isolation) makes migrate_page refuse (-EAGAIN): every
    migration entry goes back to the old page."""
    k = make_kernel()
    aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 2)
    page = pte_page(k, a, 1)
    from ksmstress.mm import memory

    memory.get_page(k, page, "test:gup")
    k.locks.lock(k.ksm_thread_mutex, "test")
    iso = memory.get_page_unless_zero(k, ref_slot(page))
    assert migrate.unmap_and_move(k, iso) == migrate.EAGAIN
    memory.put_page(k, iso, "test")
    k.locks.unlock(k.ksm_thread_mutex, "test")
    memory.put_page(k, page, "test:gup")
    assert pte_page(k, a, 1) == page and k.pg.mapcount[ref_slot(page)] == 1
    assert read(k, a, 1) == content(k, 2)
    mmm.mmput(k, aref)


def test_a_migration_entry_left_behind_is_a_traversal_failure():
    """Hot-remove migrates under ksm_thread_mutex: where ksmd holds it, any migration entry outlived its
    migration; and the page it names may not be freed while it stands."""
    k = make_kernel()
    aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 1)
    page = pte_page(k, a, 1)
    word = int(k.st.pte[a, 1])
    k.st.pte[a, 1] = mk_pte(PTE_MIGRATION, page, 1)  # by hand, as try_to_unmap leaves it: no kernel path keeps it
    with pytest.raises(Failure) as e:
        check_no_migration_ptes(k.st, "test")
    assert e.value.cls == "traversal" and e.value.details["address"] == 1
    with pytest.raises(Failure) as e:
        k.hooks.page_freeing(k, page, "test")
    assert e.value.cls == "traversal" and "migration entry" in e.value.message
    k.st.pte[a, 1] = word
    mmm.mmput(k, aref)


# -- the variants, in their focused scenarios ---------------------------------------------------------------------
CAUGHT = [  # (variant, scenario, strategy, seeds searched)
    ("merge-mlockfreed", "focus-mlock-merge", "random", 3),
    ("merge-mlockfreed", "focus-mlock-merge", "pct", 3),
    ("break-ksm-no-foll-migration", "focus-unmerge-migrate", "random", 20),
    ("break-ksm-no-foll-migration", "focus-unmerge-migrate", "pct", 40),
    ("migrate-no-rcu", "focus-migrate-munmap", "random", 40),
    ("migrate-no-rcu", "focus-migrate-munmap", "pct", 60),
]


@pytest.mark.parametrize(("bug", "name", "strategy", "seeds"), CAUGHT)
def test_each_variant_is_caught_by_its_detector_and_the_model_is_clean(bug, name, strategy, seeds):
    """The first seed (of a fixed range) on which the variant fails is caught by the catalogue's detector, and
    the same seed is clean without the variant."""
    from ksmstress.bugs import VARIANTS

    sc = scenario.load(shipped_dir() / f"{name}.toml")
    assert VARIANTS[bug].scenario == f"{name}.toml"
    for seed in range(seeds):
        r = runner.run_one(sc, seed, strategy=strategy, bugs=[bug])
        if r.verdict != "clean":
            assert r.failure["class"] in VARIANTS[bug].classes, r.failure
            clean = runner.run_one(sc, seed, strategy=strategy)
            assert clean.verdict == "clean", clean.failure
            return
    pytest.fail(f"{bug} not caught on {name} in seeds 0..{seeds - 1} ({strategy})")


def test_mixed_with_mlock_and_migration_is_clean_on_fixed_seeds():
    sc = scenario.load(shipped_dir() / "mlock-migrate-mixed.toml")
    for seed in (0, 1):
        for strategy in ("random", "pct"):
            r = runner.run_one(sc, seed, strategy=strategy)
            assert r.verdict == "clean", (seed, strategy, r.failure)
