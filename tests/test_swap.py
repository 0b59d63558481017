"""The swap cache (2.6.33 mm/swap_state.c, mm/swapfile.c, shrink_page_list, do_swap_page): what it keeps, who finds
it, when KSM copies, and the detectors' view of its reference and SWAP_HAS_CACHE."""

from __future__ import annotations

import pytest

from ksmstress.arena import ref_slot
from ksmstress.checks.invariants import check_counts, check_quiescence
from ksmstress.checks.traversal import mapping_ptes
from ksmstress.failures import Failure
from ksmstress.mm import gup, ksm, memory, rmap, swap_state, swapfile, vmscan
from ksmstress.mm import mm as mmm
from ksmstress.mm.state import PG_KSM, PG_SWAPCACHE, PTE_PRESENT, PTE_SWAP

from .harness import content, make_kernel, merged_pair, new_program, page_locked, pte, pte_page, read, scan, write


def shrink(k, page):
    """Reclaim of one isolated page with swap; True when it was freed."""
    memory.get_page(k, page, "isolate_lru_page")
    freed = vmscan.shrink_page(k, page, True)
    if not freed:
        memory.put_page(k, page, "putback_lru_page")
    return freed


def finish(k, refs):
    for ref in refs:
        mmm.mmput(k, ref)
    vmscan.drain_swap_cache(k)
    scan(k, 2)
    ksm.prune_stale_stable_nodes(k)
    assert check_quiescence(k.st) is None


def test_a_pinned_ksm_page_stays_in_the_swap_cache_and_every_mm_finds_it_again():
    """A KSM page swapped out while a get_user_pages pin holds it: its ptes become its entry, __remove_mapping
    refuses (page_count is not 2), so it stays in the swap cache, still PageKsm with its stable node. Each mm's
    fault finds that very page (page_anon_vma is NULL for a KSM page: no copy), and the rmap walk reaches both."""
    k = make_kernel()
    (aref, a), (bref, b), page = merged_pair(k)
    s = ref_slot(page)
    memory.get_page(k, page, "get_user_pages")
    assert not shrink(k, page)
    assert pte(k, a, 1)[0] == PTE_SWAP and pte(k, b, 1)[0] == PTE_SWAP
    sref = k.pg.private[s]
    assert k.pg.flags[s] & PG_SWAPCACHE and k.pg.flags[s] & PG_KSM
    assert k.st.swap.c["count"][ref_slot(sref)] == 2 and k.st.swap.c["cache"][ref_slot(sref)] == 1
    assert k.pg.count[s] == 2  # the swap cache's and the pin
    check_counts(k.st, "test")
    assert read(k, a, 1) == content(k, 5) and read(k, b, 1) == content(k, 5)
    assert pte_page(k, a, 1) == page and pte_page(k, b, 1) == page and k.pg.mapcount[s] == 2
    assert k.st.swap.c["count"][ref_slot(sref)] == 0 and k.st.swap.c["page"][ref_slot(sref)] == page
    with page_locked(k, page):
        assert rmap.page_referenced(k, page) == 2  # both ptes found again (their rmap_items are still there)
    memory.put_page(k, page, "put_page")
    with page_locked(k, page):  # write_protect_page's count: mapcount + 1 + PageSwapCache
        assert ksm._gup_count_ok(k, s) is False  # (no follow_page reference is held here)
        memory.get_page(k, page, "follow_page")
        assert ksm._gup_count_ok(k, s) is True
        memory.put_page(k, page, "follow_page")
    finish(k, (aref, bref))


def test_the_dma_into_a_pinned_page_survives_its_swap_out():
    """What deviation 22 used to forbid: an O_DIRECT read pins the page, reclaim swaps it out meanwhile (the pte
    becomes the entry, the page stays in the swap cache because of the pin), the DMA lands in the page, and the
    program's swap-in finds the DMA's bytes, not what pageout wrote."""
    k = make_kernel()
    aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 3)
    page = gup.get_user_pages_fast(k, a, 1, True)
    assert page
    assert not shrink(k, pte_page(k, a, 1))
    assert pte(k, a, 1)[0] == PTE_SWAP
    from ksmstress.checks.content import pattern_bytes

    gup.dio_complete(k, page, pattern_bytes(4, k.st.sz.page_size))
    assert read(k, a, 1) == content(k, 4)
    assert pte_page(k, a, 1) == page
    finish(k, (aref,))


def test_a_swap_cache_page_of_another_anon_vma_is_copied():
    """A KSM page swapped out and freed: the entry is in the ptes of two unrelated programs (two anon_vmas). The
    first swap-in reads a new page, which takes that program's anon_vma; the second finds it in the swap cache,
    and ksm_might_need_to_copy says copy (its anon_vma is not the vma's): each page is reached by its own walk."""
    k = make_kernel()
    (aref, a), (bref, b), page = merged_pair(k)
    assert shrink(k, page)  # freed: no pin
    sref = pte(k, a, 1)[1]
    assert pte(k, b, 1) == (PTE_SWAP, sref, 0)
    assert read(k, a, 1) == content(k, 5)
    pa = pte_page(k, a, 1)
    assert k.pg.flags[ref_slot(pa)] & PG_SWAPCACHE and not k.pg.flags[ref_slot(pa)] & PG_KSM
    assert read(k, b, 1) == content(k, 5)
    pb = pte_page(k, b, 1)
    assert pb != pa and not k.pg.flags[ref_slot(pb)] & PG_SWAPCACHE  # b's copy, outside the swap cache
    assert k.pg.mapping[ref_slot(pb)] != k.pg.mapping[ref_slot(pa)]
    assert [p[:2] for p in mapping_ptes(k, pa)] == [(a, 1)] and [p[:2] for p in mapping_ptes(k, pb)] == [(b, 1)]
    assert k.st.swap.c["count"][ref_slot(sref)] == 0  # both ptes' counts gone; the cache keeps the entry
    check_counts(k.st, "test")
    scan(k, 3)  # ksmd merges them back
    assert pte_page(k, a, 1) == pte_page(k, b, 1)
    finish(k, (aref, bref))


def test_free_swap_and_cache_leaves_a_locked_page_to_reclaim():
    """zap_pte_range's free_swap_and_cache drops the pte's count; only the swap cache is left, but its trylock_page
    fails (reclaim holds the lock): the page stays in the swap cache, and the drain takes it later."""
    k = make_kernel()
    aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 2)
    page = pte_page(k, a, 1)
    memory.get_page(k, page, "get_user_pages")
    assert not shrink(k, page)
    sref = pte(k, a, 1)[1]
    with page_locked(k, page):
        mmm.mmput(k, aref)
    assert k.st.swap.c["count"][ref_slot(sref)] == 0 and k.st.swap.c["page"][ref_slot(sref)] == page
    memory.put_page(k, page, "put_page")
    vmscan.drain_swap_cache(k)
    assert not k.st.swap.live_slots().size and not k.pg.is_live(page)
    assert check_quiescence(k.st) is None


def test_swapcache_prepare_answers_as_the_kernel():
    """-ENOENT for an entry no pte names, -EEXIST while SWAP_HAS_CACHE is held, 0 for the first taker."""
    k = make_kernel()
    aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 2)
    assert shrink(k, pte_page(k, a, 1))
    sref = pte(k, a, 1)[1]
    assert swapfile.swapcache_prepare(k, sref) == 0
    assert swapfile.swapcache_prepare(k, sref) == -17
    check_counts(k.st, "test")  # SWAP_HAS_CACHE without a page, and one add in flight: exact
    swapfile.swapcache_free(k, sref, "test")
    mmm.mmput(k, aref)
    assert swapfile.swapcache_prepare(k, sref) == -2
    assert check_quiescence(k.st) is None


def test_detector_names_a_swap_cache_page_the_tree_lost():
    """The swap cache's three views must agree: a PageSwapCache page whose entry's slot no longer names it,
    with nobody holding its page lock, is a refcount-mismatch (its reference would never be dropped)."""
    k = make_kernel()
    aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 2)
    page = pte_page(k, a, 1)
    with page_locked(k, page):
        assert swap_state.add_to_swap(k, page)
    check_counts(k.st, "test")
    sref = k.pg.private[ref_slot(page)]
    k.st.swap.c["page"][ref_slot(sref)] = 0  # a radix_tree_delete nobody accounted for
    with pytest.raises(Failure) as e:
        check_counts(k.st, "test")
    assert e.value.cls == "refcount-mismatch" and "does not name it" in e.value.message
    k.st.swap.c["page"][ref_slot(sref)] = page
    k.pg.count[ref_slot(page)] -= 1  # the swap cache's reference lost
    with pytest.raises(Failure) as e:
        check_counts(k.st, "test")
    assert e.value.cls == "refcount-mismatch" and "for the swap cache" in e.value.message
    k.pg.count[ref_slot(page)] += 1
    with page_locked(k, page):
        swapfile.try_to_free_swap(k, ref_slot(page))
    assert pte(k, a, 1)[0] == PTE_PRESENT
    finish(k, (aref,))


# -- swapoff ----------------------------------------------------------------------------------------------------
def test_swapoff_maps_a_forked_entry_back_into_parent_and_child():
    """try_to_unuse reads the entry into a fresh page, maps it into the parent (the page takes its anon_vma) and
    into the child (same anon_vma, same index: page_address_in_vma finds it), and with no pte left naming the entry
    takes the page out of the swap cache: the swap area is empty."""
    k = make_kernel()
    aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 6)
    cref = mmm.dup_mmap(k, aref)
    c = ref_slot(cref)
    assert shrink(k, pte_page(k, a, 1))
    assert pte(k, a, 1)[0] == PTE_SWAP and pte(k, c, 1)[0] == PTE_SWAP
    assert swapfile.try_to_unuse(k) == 2
    page = pte_page(k, a, 1)
    assert pte_page(k, c, 1) == page and k.pg.mapcount[ref_slot(page)] == 2
    assert not k.st.swap.live_slots().size and not k.pg.flags[ref_slot(page)] & PG_SWAPCACHE
    check_counts(k.st, "test")
    assert read(k, a, 1) == content(k, 6) and read(k, c, 1) == content(k, 6)
    finish(k, (aref, cref))


def test_swapoff_leaves_an_entry_of_another_anon_vma_to_the_fault():
    """A KSM page swapped out and freed: its entry is in two unrelated programs. swapoff maps the fresh page into
    the first (it takes that anon_vma); unuse_vma cannot reach the second (page_address_in_vma: another anon_vma),
    so that pte keeps the entry and the page stays cached for it; the second's fault copies it
    (ksm_might_need_to_copy), and no walk misses a pte."""
    k = make_kernel()
    (aref, a), (bref, b), page = merged_pair(k)
    assert shrink(k, page)
    assert swapfile.try_to_unuse(k) == 1
    pa = pte_page(k, a, 1)
    sref = pte(k, b, 1)[1]
    assert pte(k, b, 1)[0] == PTE_SWAP and k.st.swap.c["page"][ref_slot(sref)] == pa
    check_counts(k.st, "test")
    assert read(k, b, 1) == content(k, 5)
    assert pte_page(k, b, 1) != pa
    with page_locked(k, pa):
        assert rmap.page_referenced(k, pa) == 1
    finish(k, (aref, bref))


def test_swapoff_maps_a_cached_ksm_page_into_every_mm():
    """A KSM page kept in the swap cache by a pin: page_anon_vma is NULL for it, so unuse_vma looks at every
    address of every vma, and each mm gets the KSM page back."""
    k = make_kernel()
    (aref, a), (bref, b), page = merged_pair(k)
    memory.get_page(k, page, "get_user_pages")
    assert not shrink(k, page)
    assert swapfile.try_to_unuse(k) == 2
    assert pte_page(k, a, 1) == page == pte_page(k, b, 1) and k.pg.flags[ref_slot(page)] & PG_KSM
    assert not k.pg.flags[ref_slot(page)] & PG_SWAPCACHE and not k.st.swap.live_slots().size
    memory.put_page(k, page, "put_page")
    check_counts(k.st, "test")
    finish(k, (aref, bref))


def test_run_2_leaves_a_ksm_page_swapped_back_into_an_unmergeable_vma_and_so_does_its_detector():
    """MADV_UNMERGEABLE passes over a swapped KSM page's pte (break_ksm's follow_page finds no page); the fault
    maps the KSM page back as it is into the now unmergeable vma ("the vma might even be no longer VM_MERGEABLE",
    5ad6468801d2); run=2 walks only VM_MERGEABLE vmas, so it returns with that pte still mapping the KSM page, and
    the unmerge-incomplete detector, whose duty is those vmas, accepts it (tox -e stress's mixed met this)."""
    k = make_kernel()
    (aref, a), (bref, b), page = merged_pair(k)
    memory.get_page(k, page, "get_user_pages")  # a pin keeps it in the swap cache
    assert not shrink(k, page)
    assert mmm.sys_madvise(k, aref, 1, 2, ksm.MADV_UNMERGEABLE) == 0
    assert pte(k, a, 1)[0] == PTE_SWAP
    assert read(k, a, 1) == content(k, 5) and pte_page(k, a, 1) == page  # the KSM page itself, unmergeable vma
    memory.put_page(k, page, "put_page")
    ksm.run_store(k, 2)  # the detectors' unmerge_end runs as it returns
    assert pte_page(k, a, 1) == page and k.pg.flags[ref_slot(page)] & PG_KSM
    assert pte(k, b, 1)[0] == PTE_SWAP  # b's pte is still the entry: nothing to unmerge there either
