"""`stable-tree`: the stable tree is a binary search tree of live nodes in memcmp order of their KSM pages, with no
two nodes of one content, each live node's page PageKsm and naming it, and each KSM page's node in the tree.
Defects are built in the test; stale nodes (their page freed, not yet met by get_ksm_page) are exempt."""

from __future__ import annotations

import pytest

from ksmstress.arena import ref_slot
from ksmstress.failures import Failure
from ksmstress.mm import ksm
from ksmstress.mm import mm as mmm
from ksmstress.mm.state import G_STABLE_ROOT

from .defects import edited
from .harness import counters, make_kernel, new_program, pte_page, scan, write


def quiescent(k) -> None:
    k.locks.lock(k.ksm_thread_mutex, "test")
    try:
        k.hooks.ksm_quiescent(k, "test")
    finally:
        k.locks.unlock(k.ksm_thread_mutex, "test")


def pairs(k, patterns):
    """Two programs whose page i both hold patterns[i]: (aref, a), (bref, b)."""
    aref, a = new_program(k, len(patterns))
    bref, b = new_program(k, len(patterns))
    for i, p in enumerate(patterns):
        write(k, a, 1 + i, p)
        write(k, b, 1 + i, p)
    return (aref, a), (bref, b)


def test_a_tree_of_several_contents_is_quiet():
    k = make_kernel()
    pairs(k, [3, 1, 4, 2, 5])
    scan(k, 4)
    assert counters(k)["shared"] == 5
    quiescent(k)


def test_inserts_going_the_wrong_way_put_the_tree_out_of_order(monkeypatch):
    edited(monkeypatch, ksm.stable_tree_insert, "parent, go_left = node, ret < 0", "parent, go_left = node, ret >= 0")
    k = make_kernel()
    pairs(k, [1, 2])
    with pytest.raises(Failure) as e:
        scan(k, 4)
    f = e.value
    assert f.cls == "stable-tree" and "out of order" in f.message and "greater by memcmp" in f.message
    assert f.details["paths"] == ["L", ""]  # the second node hangs left of the root, though its page is greater


def test_a_duplicate_node_is_named(monkeypatch):
    """A search that finds nothing and an insert that does not refuse an equal page: two nodes of one content."""
    monkeypatch.setattr(ksm, "stable_tree_search", lambda k, pref: 0)
    edited(monkeypatch, ksm.stable_tree_insert, "if ret == 0:\n", "if False:\n")
    k = make_kernel()
    pairs(k, [7])
    pairs(k, [7])
    with pytest.raises(Failure) as e:
        scan(k, 4)
    assert e.value.cls == "stable-tree" and "hold identical contents" in e.value.message


def test_a_node_whose_page_does_not_name_it(monkeypatch):
    edited(monkeypatch, ksm.stable_tree_insert, "set_page_stable_node(k, ks, nref)", "pass")
    k = make_kernel()
    pairs(k, [7])
    with pytest.raises(Failure) as e:
        scan(k, 4)
    assert e.value.cls == "stable-tree" and "no longer names it" in e.value.message


def test_a_ksm_page_naming_a_freed_node(monkeypatch):
    """get_ksm_page pruning a node whose page is alive (its checks inverted, built here)."""
    k = make_kernel()
    pairs(k, [7])
    scan(k, 3)
    assert counters(k)["shared"] == 1
    orig = ksm.get_ksm_page

    def get_ksm_page_that_prunes(k, nref):
        page = orig(k, nref)
        if page:
            ksm.memory.put_page(k, page, "test")
            ksm.remove_node_from_stable_tree(k, nref)
        return 0

    monkeypatch.setattr(ksm, "get_ksm_page", get_ksm_page_that_prunes)
    _c, c = new_program(k, 1)
    write(k, c, 1, 8)
    with pytest.raises(Failure) as e:
        scan(k, 2)
    f = e.value
    assert f.cls == "stable-tree" and "names stable_node[" in f.message and "which is freed" in f.message


def test_a_stale_node_is_exempt_from_the_order():
    """Both sharers of the KSM page of 1 unmap it: its node stays in the tree, stale, until a search meets it, and
    its frame's bytes may be anything by then (here: greater than its right child's)."""
    k = make_kernel()
    (aref, a), (bref, b) = pairs(k, [1, 2])
    scan(k, 3)
    assert counters(k)["shared"] == 2
    root = ref_slot(int(k.g[G_STABLE_ROOT]))
    frame = int(k.sn.kpfn[root])
    assert frame == ref_slot(pte_page(k, a, 1))
    mmm.sys_munmap(k, aref, 1, 2)
    mmm.sys_munmap(k, bref, 1, 2)
    assert not k.pg.slot_live(frame) and k.sn.is_live(k.sn.ref_of(root))  # freed page, node still in the tree
    k.st.frames[frame, :] = 0xFF
    quiescent(k)


def test_a_live_node_out_of_order_is_named():
    """The same bytes in a live node's page: a KSM page whose contents changed under the tree."""
    k = make_kernel()
    (_aref, a), _b = pairs(k, [1, 2])
    scan(k, 3)
    k.st.frames[ref_slot(pte_page(k, a, 1)), :] = 0xFF
    with pytest.raises(Failure) as e:
        quiescent(k)
    assert e.value.cls == "stable-tree" and "out of order" in e.value.message


def test_a_stale_nodes_frame_reused_by_an_anon_page_whose_anon_vma_shares_the_nodes_reference_is_no_failure():
    """The KSM page of stable_node[0] is freed (both ptes COWed away) and its frame is reused by a new anon page of
    the same mm, whose page->mapping is anon_vma[0]: the same generation and slot, so the same reference number
    as stable_node[0]. The stale node's frame names an anon_vma, not the node (mixed with the unlocked active walk
    met this at seed 1029); the detector must not read it as the node's own page."""
    from ksmstress.checks.stabletree import check_stable_tree

    k = make_kernel(frames=6)
    _aref, a = new_program(k, 6)
    write(k, a, 1, 5)
    write(k, a, 2, 5)
    scan(k, 3)
    kpage = pte_page(k, a, 1)
    nref = k.pg.mapping[ref_slot(kpage)]
    write(k, a, 1, 6)
    write(k, a, 2, 7)
    assert not k.pg.is_live(kpage) and k.sn.is_live(nref)  # stale, until get_ksm_page meets it
    for addr in range(3, 7):
        write(k, a, addr, 8 + addr)
        if ref_slot(pte_page(k, a, addr)) == ref_slot(kpage):
            break
    page = pte_page(k, a, addr)
    assert ref_slot(page) == ref_slot(kpage) and k.pg.mapping[ref_slot(page)] == nref  # the collision
    check_stable_tree(k, "test")
