"""The traversal duty from the page tables: it fires on mappings the lists lose, and the kernel's windows are its
only exemption (each built here step by step, quiet inside the window and loud when the pte stays unreachable
outside it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from ksmstress import runner, scenario
from ksmstress.arena import ref_slot
from ksmstress.checks import windows
from ksmstress.checks.traversal import TraversalCheck
from ksmstress.failures import Failure
from ksmstress.mm import ksm, memory, rmap, vmscan
from ksmstress.mm import mm as mmm
from ksmstress.mm.state import PG_KSM, K

from .harness import holding, make_kernel, new_program, page_locked, pte, pte_page, scan, vma_at, write


@contextmanager
def duties(*names: str) -> Iterator[None]:
    """Hold walks to these duties only (class-wide, so forked run tasks inherit it)."""
    old = TraversalCheck.DUTIES
    TraversalCheck.DUTIES = names
    try:
        yield
    finally:
        TraversalCheck.DUTIES = old


def at_point(k: K, site: str, action: Callable[[], None], nth: int = 1) -> None:
    """Run `action` once, as another task would, at the `nth` scheduling point named `site` (a lock's point comes
    before it is taken, an unlock's after it is released)."""
    own = k.ctl.point
    seen = [0]

    def point(s: str, yielding: bool = False) -> None:
        own(s, yielding)
        if s == site:
            seen[0] += 1
            if seen[0] == nth:
                action()

    k.ctl.point = point  # type: ignore[method-assign]


def reclaim(k: K, page: int) -> None:
    """Reclaim of one page as the reclaim task does it: isolated by a reference, page_referenced and try_to_unmap
    under the page lock (both walks are checked)."""
    memory.get_page(k, page, "isolate_lru_page")
    if not vmscan.shrink_page(k, page, swap=True):  # a freed page took its isolation reference with it
        memory.put_page(k, page, "putback_lru_page")


def maps(k: K, m: int, addr: int, page: int) -> bool:
    kind, ref, _w = pte(k, m, addr)
    return kind == 1 and ref == page


def merged_pair(k: K) -> tuple[int, int, int, int, int]:
    """Two programs with one equal page each, merged: (a ref, a slot, b ref, b slot, the KSM page)."""
    aref, a = new_program(k, 1)
    bref, b = new_program(k, 1)
    write(k, a, 1, 7)
    write(k, b, 1, 7)
    scan(k, 3)
    page = pte_page(k, a, 1)
    assert k.pg.flags[ref_slot(page)] & PG_KSM and pte_page(k, b, 1) == page
    return aref, a, bref, b, page


def own_item(k: K, m: int, addr: int) -> int:
    sref = k.mmc.slot[m]
    iref = k.ms.rmap_list[ref_slot(sref)]
    while iref:
        if k.ri.address[ref_slot(iref)] == addr:
            return iref
        iref = k.ri.rmap_next[ref_slot(iref)]
    raise AssertionError(f"mm[{m}] has no rmap_item at {addr}")


# -- the oracle sees what the lists hide ---------------------------------------------------------------------------
def test_a_forked_vma_missing_from_the_anon_vma_list_is_caught_from_the_page_tables_only():
    """A fork whose child vma is not on the anon_vma's list (linked after copy_page_range, or never): the anon walk
    cannot find the child's pte; the duty read from the list does not contain it, the page tables do."""
    k = make_kernel()
    aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 3)
    cref = mmm.dup_mmap(k, aref)
    c = ref_slot(cref)
    page = pte_page(k, a, 1)
    cvma = vma_at(k, c, 1)
    avref = k.vm.anon_vma[ref_slot(cvma)]
    with holding(k, k.av_lock(ref_slot(avref))):
        rmap._list_del(k, cvma, avref)  # the defect: the child's vma is off the list
    with duties("lists"):
        reclaim(k, page)  # blind: the list-based duty holds the walk only to what the list names
    assert maps(k, c, 1, page) and not maps(k, a, 1, page)
    write(k, a, 1, 3)  # the parent faults a fresh page in; the child still maps the old one
    with pytest.raises(Failure) as e:
        reclaim(k, page)
    f = e.value
    assert f.cls == "traversal" and f.details["duty"] == "page-tables"
    (miss,) = f.details["missed"]
    assert (miss["mm"], miss["address"], miss["vma"]) == (c, 1, ref_slot(cvma))
    assert miss["on_anon_vma_list"] is False and "NOT on its vma list" in f.message


def test_an_rmap_item_missing_from_the_stable_node_is_caught_from_the_page_tables_only():
    """A stable_tree_append that forgets an item: its pte maps the KSM page, no list names it."""
    k = make_kernel()
    _aref, a, _bref, b, page = merged_pair(k)
    bitem = own_item(k, b, 1)
    with page_locked(k, page):
        ksm._hlist_del(k, bitem)  # the defect: b's rmap_item is off the stable node's list
    with duties("lists"):
        reclaim(k, page)
    assert maps(k, b, 1, page) and not maps(k, a, 1, page)
    write(k, a, 1, 7)
    scan(k, 1)  # a's page merges back into the KSM page: a's pte is reachable again, b's still is not
    assert maps(k, a, 1, page)
    with pytest.raises(Failure) as e:
        reclaim(k, page)
    f = e.value
    assert f.cls == "traversal" and f.details["duty"] == "page-tables"
    (miss,) = f.details["missed"]
    assert (miss["mm"], miss["address"], miss["rmap_item"]) == (b, 1, ref_slot(bitem))
    assert miss["stable_items_here"] == [ref_slot(own_item(k, a, 1))]
    assert f.details["walk"] == "page_referenced_ksm"  # reclaim's first walk: it counted a, b was left uncounted


def test_the_oracle_is_quiet_on_the_correct_model_step_by_step():
    """Merges, forks, COW breaks, unmaps and reclaim of every mapped page, each walk held to the page tables."""
    k = make_kernel()
    aref, a = new_program(k, 4)
    bref, b = new_program(k, 4)
    for x in range(1, 5):
        write(k, a, x, x % 2)
        write(k, b, x, x % 3)
    scan(k, 3)
    cref = mmm.dup_mmap(k, aref)
    write(k, a, 2, 9)
    scan(k, 1)
    mmm.sys_munmap(k, bref, 3, 4)
    for s in range(k.pg.capacity):
        if k.pg.slot_live(s) and rmap.page_mapped(k, s):
            reclaim(k, k.page_ref(s))
    for ref in (aref, bref, cref):
        mmm.mmput(k, ref)


# -- the windows: quiet inside, loud outside -----------------------------------------------------------------------
def test_every_window_has_a_reason_and_a_recognition():
    names = [w.name for w in windows.WINDOWS]
    assert len(set(names)) == len(names) == 6
    for w in windows.WINDOWS:
        assert w.reason and w.recognised and "2.6.33" not in w.name
    assert set(windows.CODES) == {"replace-before-append", "fork-before-scan", "swapin-before-scan", "move-before-scan",
                                   "migrate-before-scan"}


def test_window_replace_before_append():
    """ksmd has pointed c's pte at the KSM page (replace_page) and not yet linked c's rmap_item
    (stable_tree_append, under lock_page(kpage)): a reclaim walk in between cannot reach c's pte, and is quiet.
    Once cmp_and_merge_page is done the window is shut: the same pte left unreachable is a miss."""
    k = make_kernel()
    _aref, a, _bref, b, page = merged_pair(k)
    _cref, c = new_program(k, 1)
    write(k, c, 1, 7)
    inside: list[bool] = []

    def walk() -> None:
        assert maps(k, c, 1, page)  # replace_page is done...
        assert not any(k.ri.mm[ref_slot(x)] == k.mmc.ref_of(c) for x in windows.stable_items(k, page))  # ...append not
        reclaim(k, page)
        inside.append(maps(k, c, 1, page))

    at_point(k, "cmp_and_merge_page:lock_page", walk)
    scan(k, 2)
    assert inside == [True]  # the walk ran in the window and left c's pte, unreported
    assert not maps(k, a, 1, page) and not maps(k, b, 1, page)
    citem = own_item(k, c, 1)
    assert citem in windows.stable_items(k, page)
    with page_locked(k, page):
        ksm._hlist_del(k, citem)  # outside the window: c's pte as unreachable as it was inside
    with pytest.raises(Failure) as e:
        reclaim(k, page)
    assert e.value.details["duty"] == "page-tables" and e.value.details["mm"] == c


def test_window_fork_before_scan():
    """p forks c: c's pte maps the KSM page with no rmap_item of its own, reached in pass 1 through p's. Once p's
    item is gone (p exited, ksmd removed it) and before ksmd scans c, nothing reaches c's pte: quiet. While p's item
    is there, a walk that skips pass 1 is a miss (the window does not hide single-pass-walk); after ksmd has scanned
    c, an unreachable c pte is a miss."""
    k = make_kernel(bugs=("single-pass-walk",))
    pref, p, _qref, q, page = merged_pair(k)
    cref = mmm.dup_mmap(k, pref)
    c = ref_slot(cref)
    assert maps(k, c, 1, page) and k.st.window[c, 1, windows.W_CODE] == windows.FORK_BEFORE_SCAN
    with pytest.raises(Failure) as e:  # p's item reaches c's pte in pass 1, which this walk skips
        reclaim(k, page)
    assert e.value.details["mm"] == c
    k.bugs = frozenset()
    memory.put_page(k, page, "test:unwind")  # the failed reclaim's isolation reference and page lock
    k.locks.unlock(k.page_lock(ref_slot(page)), "test:unwind")

    mmm.mmput(k, pref)  # p exits: its pte goes, its rmap_item waits for ksmd
    k.locks.lock(k.ksm_thread_mutex, "test")
    ksm.ksm_do_scan(k, 1)  # ksmd drops the exiting p's items and scans q's page; c's turn is next
    k.locks.unlock(k.ksm_thread_mutex, "test")
    assert not windows.family_item(k, c, 1, page)
    reclaim(k, page)  # in the window: c's pte is unreachable, by the kernel's design
    assert maps(k, c, 1, page) and not maps(k, q, 1, page)
    write(k, q, 1, 7)
    scan(k, 1)  # ksmd scans c (its own item now) and merges q's page back
    citem = own_item(k, c, 1)
    assert citem in windows.stable_items(k, page) and k.st.window[c, 1, windows.W_CODE] == 0
    with page_locked(k, page):
        ksm._hlist_del(k, citem)  # outside the window: c's pte unreachable again
    with pytest.raises(Failure) as e:
        reclaim(k, page)
    assert e.value.details["duty"] == "page-tables" and e.value.details["mm"] == c


def test_window_fork_before_scan_parent_side():
    """The parent's side of a fork: p forks c while their page is still an anon page, p's vma is made unmergeable,
    and ksmd merges c's (shared) page into a KSM page through c's rmap_item; p's pte is reachable only through c's
    item. Once c breaks COW and ksmd drops c's item, nothing reaches p's pte (and ksmd never scans p's unmergeable
    vma): the kernel's design, quiet. The same pte after ksmd had come round to it would be a miss."""
    k = make_kernel()
    _qref, q = new_program(k, 1)
    write(k, q, 1, 7)
    pref, p = new_program(k, 1)
    write(k, p, 1, 7)
    page = pte_page(k, p, 1)
    c = ref_slot(mmm.dup_mmap(k, pref))
    assert all(k.st.window[x, 1, windows.W_CODE] == windows.FORK_BEFORE_SCAN for x in (p, c))
    mmm.sys_madvise(k, pref, 1, 2, ksm.MADV_UNMERGEABLE)
    scan(k, 3)
    assert k.pg.flags[ref_slot(page)] & PG_KSM and all(maps(k, x, 1, page) for x in (p, c, q))
    assert windows.family_item(k, p, 1, page) == own_item(k, c, 1)
    write(k, c, 1, 8)  # c breaks COW...
    scan(k, 1)  # ...and ksmd drops c's rmap_item
    assert maps(k, p, 1, page) and not windows.family_item(k, p, 1, page)
    reclaim(k, page)
    assert maps(k, p, 1, page) and not maps(k, q, 1, page)
    k.hooks.window_close(k, "fork-before-scan", p, 1)  # as if ksmd had scanned p there: the window is over
    with pytest.raises(Failure) as e:
        reclaim(k, page)
    assert e.value.details["duty"] == "page-tables" and e.value.details["mm"] == p


def test_window_fork_before_scan_outlives_a_scan_of_a_ksm_page_with_no_stable_node():
    """a forks d and m: all three map one page. ksmd promotes it through a's rmap_item (try_to_merge_one_page(page,
    NULL): PageKsm, no stable node yet) and the second merge fails, so break_cow copies a's pte away: d and m map a
    KSM page that has no stable node. ksmd scanning d and m then links nothing (there is no node to append to), so
    their fork-before-scan marks stay: once the page gets its node through one of them, the other is reachable only
    by pass 1 until ksmd scans it with the node there."""
    k = make_kernel()
    aref, a = new_program(k, 1)
    write(k, a, 1, 7)
    d = ref_slot(mmm.dup_mmap(k, aref))
    m = ref_slot(mmm.dup_mmap(k, aref))
    page = pte_page(k, a, 1)
    with page_locked(k, page):
        ksm.set_page_stable_node(k, ref_slot(page), 0)
    write(k, a, 1, 8)  # break_cow
    assert maps(k, d, 1, page) and maps(k, m, 1, page) and not k.pg.mapping[ref_slot(page)]
    scan(k, 2)
    assert maps(k, d, 1, page) and maps(k, m, 1, page) and not k.pg.mapping[ref_slot(page)]
    assert all(k.st.window[x, 1, windows.W_CODE] == windows.FORK_BEFORE_SCAN for x in (d, m))


def test_window_exiting_mm():
    """p exits (mm_users 0): ksmd removes p's rmap_items before exit_mmap zaps p's ptes; a walk in between cannot
    reach p's pte and is quiet. The same pte unreachable in a live mm is a miss."""
    k = make_kernel()
    pref, p, _qref, _q, page = merged_pair(k)
    seen: list[str] = []

    def between() -> None:  # __ksm_exit's handshake is done, exit_mmap has not run
        k.locks.lock(k.ksm_thread_mutex, "test")
        ksm.ksm_do_scan(k, 1)
        k.locks.unlock(k.ksm_thread_mutex, "test")
        assert maps(k, p, 1, page) and not any(
            k.ri.mm[ref_slot(x)] == pref for x in windows.stable_items(k, page)
        )
        reclaim(k, page)  # quiet: p is exiting
        seen.append("inside")
        k.mmc.users[p] = 1  # the same pte, were p alive
        try:
            reclaim(k, page)
        except Failure as f:
            seen.append(f"{f.details['duty']} mm {f.details['mm']}")
            memory.put_page(k, page, "test:unwind")
            k.locks.unlock(k.page_lock(ref_slot(page)), "test:unwind")
        k.mmc.users[p] = 0

    at_point(k, "__ksm_exit", between, nth=4)  # after up_write(mmap_sem)
    mmm.mmput(k, pref)
    assert seen == ["inside", f"page-tables mm {p}"]


# -- real runs ------------------------------------------------------------------------------------------------------
def test_real_runs_need_the_windows_and_are_clean_with_them():
    """mixed.toml's runs meet the windows: without the exemption list the page-table duty reports one within a few
    seeds (about every other run); with it, the shipped scenarios are clean under random and pct (the soak sweeps
    many more seeds)."""
    sc = scenario.load(scenario.resolve(["mixed"])[0])
    saved = windows.WINDOWS
    windows.WINDOWS = ()
    try:
        hit = next((f for f in (runner.run_one(sc, seed).failure for seed in range(10)) if f), None)
    finally:
        windows.WINDOWS = saved
    assert hit is not None and hit["class"] == "traversal" and hit["details"]["duty"] == "page-tables"
    for path in scenario.every():
        one = scenario.load(path)
        for strategy in ("random", "pct"):
            r = runner.run_one(one, 1, strategy=strategy)
            assert r.verdict == "clean", (one.name, strategy, r.failure)


def test_an_unmap_walk_that_visits_a_mapping_and_leaves_it_is_a_traversal(monkeypatch):
    """try_to_unmap_one with its pte test inverted visits every pte and unmaps none: the walk's visits are not
    enough, the mapping it found must be gone when it returns."""
    from ksmstress.failures import Failure
    from ksmstress.mm import memory, rmap

    from .harness import holding, make_kernel, new_program, pte_page, write

    k = make_kernel()
    _a, a = new_program(k, 1)
    write(k, a, 1, 5)
    page = pte_page(k, a, 1)

    def visit_only(k, pref, vref, addr, token, flags=0):
        v = k.vm.deref(vref, "try_to_unmap_one")
        k.hooks.walk_visit(token, ref_slot(k.vm.mm[v]), addr)
        return rmap.SWAP_AGAIN

    monkeypatch.setattr(rmap, "try_to_unmap_one", visit_only)
    with holding(k, k.page_lock(ref_slot(page))), pytest.raises(Failure) as e:
        rmap.try_to_unmap(k, page)
    assert e.value.cls == "traversal" and "without unmapping" in e.value.message
    assert memory.PageAnon(k, ref_slot(page))
