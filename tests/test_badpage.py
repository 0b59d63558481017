"""`bad-page` (free_pages_check) and lockdep's "held lock freed" (debug_check_no_locks_freed): what a freed page
or object may not still carry. Defects are built in the test; the faithful model frees quietly."""

from __future__ import annotations

import pytest

from ksmstress.arena import ref_slot
from ksmstress.failures import Failure
from ksmstress.mm import memory, rmap, vmscan
from ksmstress.mm import mm as mmm

from .defects import edited
from .harness import make_kernel, new_program, page_locked, pte_page, write
from .test_swap import shrink


def one_page(k):
    """A program with one written page; (its mm slot, the page)."""
    _ref, m = new_program(k, 1)
    write(k, m, 1, 3)
    return m, pte_page(k, m, 1)


def unmapped_last_reference(k):
    """One written page whose pte is gone with its mapcount (the pte's reference left to put)."""
    m, page = one_page(k)
    k.st.pte[m, 1] = 0
    k.pg.mapcount[ref_slot(page)] = 0
    return page


def test_reclaim_frees_a_swapped_page_unlocked_and_out_of_the_swap_cache():
    """The faithful shrink_page_list: __clear_page_locked, then free. Freed with no complaint."""
    k = make_kernel()
    _m, page = one_page(k)
    assert shrink(k, page)
    assert not k.pg.is_live(page)


def test_a_page_freed_before_its_lock_is_released_is_a_bad_page(monkeypatch):
    """__remove_mapping freeing the page before __clear_page_locked (`ksmstress mutate`'s
    __remove_mapping:swap-sched:0): free_pages_check sees PG_locked."""
    edited(monkeypatch, vmscan.__remove_mapping,
           '    k.locks.unlock(k.page_lock(s), "shrink_page_list:__clear_page_locked")\n'
           '    memory.free_page(k, page, "shrink_page_list:free_it")',
           '    memory.free_page(k, page, "shrink_page_list:free_it")\n'
           '    k.locks.unlock(k.page_lock(s), "shrink_page_list:__clear_page_locked")')
    k = make_kernel()
    _m, page = one_page(k)
    with pytest.raises(Failure) as e:
        shrink(k, page)
    assert e.value.cls == "bad-page" and "PG_locked" in e.value.message, e.value


def test_a_page_freed_still_in_the_swap_cache_is_a_bad_page(monkeypatch):
    """__remove_mapping freeing the page without __delete_from_swap_cache: PG_swapcache is still set."""
    edited(monkeypatch, vmscan.__remove_mapping,
           'sref = swap_state.__delete_from_swap_cache(k, s, "__remove_mapping")',
           'sref = k.pg.private[s]')
    k = make_kernel()
    _m, page = one_page(k)
    with pytest.raises(Failure) as e:
        shrink(k, page)
    assert e.value.cls == "bad-page" and "PG_swapcache" in e.value.message, e.value


def test_a_page_freed_still_mapcounted_is_a_bad_page():
    """The last reference put while page_mapcount says a pte still maps the page."""
    k = make_kernel()
    m, page = one_page(k)
    k.st.pte[m, 1] = 0  # the pte gone without page_remove_rmap: its reference is the last
    with pytest.raises(Failure) as e:
        memory.put_page(k, page, "test")
    assert e.value.cls == "bad-page" and "page_mapcount 1" in e.value.message, e.value


def test_a_page_whose_last_reference_goes_under_its_page_lock_is_a_bad_page():
    """PG_locked is a bit in struct page: the free is refused whoever holds it; the report names the holder."""
    k = make_kernel()
    page = unmapped_last_reference(k)
    with page_locked(k, page), pytest.raises(Failure) as e:
        memory.put_page(k, page, "test")
    assert e.value.cls == "bad-page" and "its page lock held by solo#0" in e.value.message, e.value


def test_an_anon_vma_freed_under_its_own_lock_is_a_held_lock_freed(monkeypatch):
    """anon_vma_unlink freeing the anon_vma before its spin_unlock: lockdep's debug_check_no_locks_freed."""
    edited(monkeypatch, rmap.anon_vma_unlink,
           '    k.locks.unlock(k.av_lock(a), "anon_vma_unlink")\n'
           '    if empty:\n'
           '        anon_vma_free(k, avref, "anon_vma_unlink")',
           '    if empty:\n'
           '        anon_vma_free(k, avref, "anon_vma_unlink")\n'
           '    k.locks.unlock(k.av_lock(a), "anon_vma_unlink")')
    k = make_kernel()
    ref, m = new_program(k, 1)
    write(k, m, 1, 3)
    with pytest.raises(Failure) as e:
        mmm.sys_munmap(k, ref, 1, 2)
    assert e.value.cls == "lockdep" and "held lock freed: anon_vma[" in e.value.message, e.value
