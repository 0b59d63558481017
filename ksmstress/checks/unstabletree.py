"""`unstable-tree`: the unstable tree of this scan is an rbtree of exactly the rmap_items inserted in this scan.

What 2.6.33's mm/ksm.c relies on, read from the tables (never from unstable_tree_search_insert):
- unstable_tree_search_insert links an rmap_item and sets UNSTABLE_FLAG and the scan's seqnr together;
  remove_rmap_item_from_tree erases one whose seqnr is this scan's ("age 0") before it clears the flag; the scan
  that completes bumps seqnr and the next one starts with root_unstable_tree = RB_ROOT. So whenever a live
  rmap_item is UNSTABLE with age 0, the tree is this scan's, and its nodes are exactly those rmap_items: every link
  leads to a live one of them, reached once, whose rb_parent is the node it hangs from.
- With no such rmap_item the root may still hold the last scan's tree (seqnr was bumped, RB_ROOT comes with the
  next scan), whose nodes run=2 may since have freed: nothing is checked then.
The ordering is not checked: the unstable tree's pages are not write-protected, so their contents may change
under it (why it is rebuilt every scan). Only ksmd and run=2 change the tree and the rmap_items, under
ksm_thread_mutex, so this holds at every ksm_quiescent point, in free mode too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..arena import ref_slot
from ..failures import Failure
from ..mm.state import G_SEQNR, G_UNSTABLE_ROOT, SEQNR_MASK, UNSTABLE_FLAG
from . import rbwalk

if TYPE_CHECKING:
    from ..mm.state import K


def check_unstable_tree(k: K, where: str) -> None:
    """The tree of this scan against the rmap_items flagged UNSTABLE with this scan's seqnr."""
    ri = k.st.rmap_item
    live = ri.live_slots()
    age = (int(k.st.g[G_SEQNR]) - ri.c["seqnr"][live].astype(np.int64)) & SEQNR_MASK
    young = live[((ri.c["flags"][live] & UNSTABLE_FLAG) != 0) & (age == 0)]
    if not len(young):
        return

    def fail(msg: str, obj: str) -> None:
        step, who = k.ctl.clock()
        raise Failure("unstable-tree", f"{msg.replace('the tree', 'the unstable tree')} ({where})",
                      {"step": step, "task": who, "object": obj})

    nodes, seen = rbwalk.walk(ri, int(k.st.g[G_UNSTABLE_ROOT]), fail)
    want = {int(s) for s in young}
    extra = sorted(seen - want)
    if extra:
        s = extra[0]
        path = next(p for ref, p in nodes if ref_slot(ref) == s)
        fail(f"the tree links rmap_item[{s}] at {path or 'the root'}, which is not UNSTABLE with this scan's seqnr "
             f"(flags {int(ri.c['flags'][s])}, seqnr {int(ri.c['seqnr'][s])}, scan {int(k.st.g[G_SEQNR])})",
             f"rmap_item[{s}]")
    missing = sorted(want - seen)
    if missing:
        s = missing[0]
        info = ri.alloc_info(s)
        fail(f"rmap_item[{s}] (allocated by {info.get('task')} at step {info.get('step')}) is UNSTABLE with this "
             f"scan's seqnr {int(ri.c['seqnr'][s])} but not in the tree", f"rmap_item[{s}]")
