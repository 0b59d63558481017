"""`stable-tree`: the stable tree is a search tree of distinct KSM pages, and each KSM page and its node agree.

What 2.6.33's mm/ksm.c relies on, read from the tables (never from stable_tree_search / stable_tree_insert):
- Structure: every node linked from root_stable_tree is a live stable_node, reached once, whose rb_parent is the
  node it hangs from; every allocated stable_node is in the tree (stable_tree_insert links what it allocates,
  remove_node_from_stable_tree erases before it frees). Only ksmd changes the tree, under ksm_thread_mutex, so
  this holds at every quiescent point, in free mode too.
- Order: an in-order walk meets the nodes' KSM pages in strictly increasing memcmp order (the rbtree is keyed by
  memcmp_pages, stable_tree_search and stable_tree_insert go left when it is negative), so no two nodes hold the
  same content ("not found by the search because kpage was not yet write-protected": stable_tree_insert refuses
  a duplicate). A stale node is exempt, as 2.6.33 leaves one in the tree until get_ksm_page meets it: its page
  was freed (and maybe reused), so its bytes say nothing, but it was in order when its page was alive and every
  insert since met it first (get_ksm_page prunes it and the insert gives up), so the live nodes around it still
  are.
- Agreement: a live node's page (the frame at kpfn, not freed since the node was made) is PageKsm and its
  mapping names the node (set_page_stable_node); conversely a PageKsm page whose mapping names a node names a
  node in the tree whose kpfn is that page (a KSM page with no node, made by try_to_merge_one_page and left by
  break_cow to a forked sharer, is legal).
Order and agreement read page bytes and flags that other tasks change: controlled mode only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..arena import NO_GUARD, ref_slot
from ..failures import Failure
from ..mm.state import G_STABLE_ROOT, PG_KSM
from . import rbwalk

if TYPE_CHECKING:
    from ..mm.state import K


def _fail(k: K, where: str, msg: str, **details: Any) -> None:
    step, who = k.ctl.clock()
    raise Failure("stable-tree", f"{msg} ({where})", {"step": step, "task": who, **details})


def _walk(k: K, where: str) -> list[tuple[int, str]]:
    """(node ref, path from the root as L/R letters) in order, checking links, liveness and parents, and that
    every allocated stable_node is in the tree."""
    sn = k.st.stable_node

    def fail(msg: str, obj: str) -> None:
        _fail(k, where, msg.replace("the tree", "the stable tree"), object=obj)

    out, seen = rbwalk.walk(sn, int(k.st.g[G_STABLE_ROOT]), fail)
    off = sorted(set(int(x) for x in sn.live_slots()) - seen)
    if off:
        info = sn.alloc_info(off[0])
        _fail(
            k,
            where,
            f"stable_node[{off[0]}] is allocated (by {info.get('task')} at step {info.get('step')}, "
            f"{info.get('site')}) but not in the stable tree",
            object=f"stable_node[{off[0]}]",
        )
    return out


def _named_page(k: K, nref: int) -> int | None:
    """The node's KSM page slot if the node is live (its page not freed since the node was made), None if stale;
    fails if the page is still the node's own but no longer says so."""
    st = k.st
    pg, sn = st.page, st.stable_node
    n = ref_slot(nref)
    s = int(sn.c["kpfn"][n])
    if not pg.slot_live(s):
        return None  # stale: its KSM page was freed, get_ksm_page has not met it yet
    # page->mapping names a stable node only on a PageKsm page: an anon page's names an anon_vma, whose reference
    # (another table's generation and slot) can equal the node's
    if int(pg.c["mapping"][s]) == nref and int(pg.c["flags"][s]) & PG_KSM:
        return s
    if int(pg.alloc_step[s, 0]) >= int(sn.alloc_step[n, 0]):
        return None  # stale: the frame was freed and holds another page now
    return -1 - s  # the node's own page, never freed, naming something else


def check_stable_tree(k: K, where: str) -> None:
    """The tree's structure always; its order, distinct contents and page/node agreement in controlled mode."""
    nodes = _walk(k, where)
    if k.guard is not NO_GUARD:
        return
    st = k.st
    pg = st.page
    frames = st.frames
    last: tuple[int, int, str, bytes] | None = None  # (node slot, page slot, path, bytes)
    seen: dict[bytes, tuple[int, int]] = {}
    for nref, path in nodes:
        n = ref_slot(nref)
        s = _named_page(k, nref)
        if s is None:
            continue
        if s < 0:
            s = -1 - s
            _fail(
                k,
                where,
                f"stable_node[{n}]'s KSM page[{s}] (allocated before the node, never freed since) no "
                f"longer names it: its mapping is {int(pg.c['mapping'][s]):#x} and it is "
                f"{'' if int(pg.c['flags'][s]) & PG_KSM else 'not '}PageKsm; last changes of page[{s}]: "
                f"{pg.changes(s)}",
                object=f"stable_node[{n}]",
                page=s,
            )
        if not int(pg.c["flags"][s]) & PG_KSM:
            _fail(
                k,
                where,
                f"page[{s}] names stable_node[{n}] in its mapping but is not PageKsm",
                object=f"stable_node[{n}]",
                page=s,
            )
        data = frames[s].tobytes()
        if data in seen:
            m, ms_ = seen[data]
            _fail(
                k,
                where,
                f"stable_node[{m}] (page[{ms_}]) and stable_node[{n}] (page[{s}], at {path or 'the root'}) "
                f"hold identical contents: the stable tree keeps one node per content (stable_tree_insert "
                f"refuses a duplicate, stable_tree_search merges into the node it finds)",
                object=f"stable_node[{n}]",
                nodes=[m, n],
                pages=[ms_, s],
            )
        seen[data] = (n, s)
        if last is not None and last[3] > data:
            _fail(
                k,
                where,
                f"stable tree out of order: stable_node[{last[0]}] (page[{last[1]}], at "
                f"{last[2] or 'the root'}) comes before stable_node[{n}] (page[{s}], at {path or 'the root'}) in "
                f"the tree but its page is greater by memcmp",
                object=f"stable_node[{n}]",
                nodes=[last[0], n],
                pages=[last[1], s],
                paths=[last[2], path],
            )
        last = (n, s, path, data)
    _check_ksm_pages(k, where, {ref_slot(nref) for nref, _p in nodes})


def _check_ksm_pages(k: K, where: str, in_tree: set[int]) -> None:
    """Every PageKsm page whose mapping names a node names a live node in the tree whose kpfn is that page."""
    st = k.st
    pg, sn = st.page, st.stable_node
    live = pg.live_slots()
    # a page at count 0 is in put_page's window before free_hot_cold_page clears its mapping: get_ksm_page rightly
    # took it for stale and freed its node meanwhile, so only pages someone still holds are checked
    ksm = live[((pg.c["flags"][live] & PG_KSM) != 0) & (pg.c["mapping"][live] != 0) & (pg.c["count"][live] > 0)]
    for s in ksm.tolist():
        nref = int(pg.c["mapping"][s])
        ok = sn.is_live(nref) and ref_slot(nref) in in_tree and int(sn.c["kpfn"][ref_slot(nref)]) == s
        if not ok:
            n = ref_slot(nref)
            state = (
                "freed"
                if not sn.is_live(nref)
                else "not in the stable tree"
                if n not in in_tree
                else f"for page[{int(sn.c['kpfn'][n])}]"
            )
            _fail(
                k,
                where,
                f"KSM page[{s}] names stable_node[{n}] in its mapping, which is {state}",
                object=f"page[{s}]",
                node=n,
            )
