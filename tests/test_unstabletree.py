"""`unstable-tree`: the unstable tree of a scan is an rbtree of exactly the rmap_items that scan inserted, checked
between ksmd's batches and at the end of every full scan. Defects are built in the test."""

from __future__ import annotations

import inspect
import textwrap

import pytest

from ksmstress.failures import Failure
from ksmstress.mm import ksm, tree

from .defects import edited
from .harness import counters, make_kernel, new_program, scan, write

# One program, scanned in address order: page 1 goes in first, the other contents hang left and right of it, and
# the last page matches it, so the merge erases page 1's rmap_item, a node with two children, from the tree.
DEEP_SUCCESSOR = [5, 3, 8, 7, 5]  # its in-order successor (7) sits below its right child (8)
RIGHT_CHILD_SUCCESSOR = [5, 3, 8, 5]  # its in-order successor is its right child (8)


def program(k, patterns, start=1):
    mref, m = new_program(k, len(patterns), start)
    for i, p in enumerate(patterns):
        write(k, m, start + i, p)
    return mref, m


def erase_inverted(monkeypatch) -> None:
    """Tree.erase with `self.parent[ys] != z` inverted (what `ksmstress mutate` calls Tree.erase:invert-cmp:0)."""
    src = textwrap.dedent(inspect.getsource(tree.Tree.erase))
    assert src.count("self.parent[ys] != z") == 1
    ns: dict = {}
    exec(compile(src.replace("self.parent[ys] != z", "self.parent[ys] == z"), "<erase>", "exec"), vars(tree), ns)  # noqa: S102
    monkeypatch.setattr(tree.Tree, "erase", ns["erase"])


@pytest.mark.parametrize("patterns", [DEEP_SUCCESSOR, RIGHT_CHILD_SUCCESSOR, [1, 2, 3, 4, 5, 6], [4, 4, 2, 6, 2, 6]])
def test_trees_of_several_shapes_are_quiet(patterns):
    k = make_kernel()
    program(k, patterns)
    scan(k, 4)
    assert counters(k)["shared"] == sum(patterns.count(p) > 1 for p in set(patterns))  # one KSM page per twin set


def test_an_erase_that_loses_the_right_subtree_leaves_an_rmap_item_of_this_scan_out(monkeypatch):
    """rb_erase of a node whose successor is deeper must hang the node's right subtree below the successor;
    skipped, the right child (8) is gone from the tree though still UNSTABLE with this scan's seqnr."""
    erase_inverted(monkeypatch)
    k = make_kernel()
    program(k, DEEP_SUCCESSOR)
    with pytest.raises(Failure) as e:
        scan(k, 4)
    assert e.value.cls == "unstable-tree", e.value
    assert "is UNSTABLE with this scan's seqnr" in e.value.message and "but not in the unstable tree" in e.value.message


def test_an_erase_that_links_the_successor_to_itself_is_a_node_reached_twice(monkeypatch):
    """The same defect where the successor is the right child: it becomes its own right child."""
    erase_inverted(monkeypatch)
    k = make_kernel()
    program(k, RIGHT_CHILD_SUCCESSOR)
    with pytest.raises(Failure) as e:
        scan(k, 4)
    assert e.value.cls == "unstable-tree" and "reached twice in the unstable tree" in e.value.message, e.value


def test_an_rmap_item_left_linked_when_it_leaves_for_the_stable_tree_is_foreign_to_it(monkeypatch):
    """remove_rmap_item_from_tree must erase an rmap_item of this scan from the unstable tree: page 1's, matched by
    page 4 and merged with it, goes on into the stable tree; left linked, the unstable tree hangs an rmap_item
    that is no longer UNSTABLE (the next search would compare against a KSM page through it)."""
    edited(monkeypatch, ksm.remove_rmap_item_from_tree, "        if age == 0:\n", "        if age == 7:\n")
    k = make_kernel()
    program(k, RIGHT_CHILD_SUCCESSOR)
    with pytest.raises(Failure) as e:
        scan(k, 4)
    assert e.value.cls == "unstable-tree" and "which is not UNSTABLE with this scan's seqnr" in e.value.message, e.value
