"""The design's invariants, checked from the tables themselves (never from the code paths under test), and the
quiescence check.

Where they are exact, and so where they run (2.6.33's locking makes each hold at those points):
- `refcount-mismatch` ksm_refcount: each anon_vma's ksm_refcount equals the stable rmap_items recording it, and a
  stable rmap_item's anon_vma is live. Every hold_anon_vma / drop_anon_vma and every STABLE_FLAG change happens
  under ksm_thread_mutex, so this holds exactly whenever ksmd or run=2 holds it between batches (`ksm_quiescent`),
  in free mode too.
- `stale-pte`: no pte maps a freed page frame or swap slot (every path clears or replaces a pte before dropping
  the reference it held, in one stretch with no scheduling point); `writable-ksm`: no PageKsm page is mapped by a
  writable pte (KSM write-protects before it sets PageKsm, and only COW ever writes a KSM page's mapping). Checked
  at every pte store (`check_pte_store`, cheap) and over every pte at ksm_quiescent (controlled mode: in free mode
  a scan would race with the stores it reads).
- `refcount-mismatch` mapcount / swap: page_mapcount equals the present ptes that map the page, page_count is at
  least its mapcount plus the swap cache's reference (PageSwapCache), a swap entry's count is exactly its swap
  ptes, swapper_space names only live PageSwapCache pages whose page->private is that entry and whose
  SWAP_HAS_CACHE is set, a PageSwapCache page is named by its entry's slot unless its page lock is held (adding or
  deleting), and the entries with SWAP_HAS_CACHE but no page are exactly those in flight (G_SWAPIN_HELD). The model
  changes a mapcount or swap count and its pte under that mm's pte lock, so these are checked only when no task
  holds any pte lock (controlled mode).
- `stable-tree` (checks.stabletree: the tree's structure at every ksm_quiescent, its memcmp order, distinct contents
  and page/node agreement in controlled mode), `unstable-tree` (checks.unstabletree: this scan's tree is an rbtree
  of exactly the rmap_items inserted in this scan) and `registration` (checks.registration, controlled mode):
  KSM's own structures, also exact whenever ksmd or run=2 holds ksm_thread_mutex between batches.
- At quiescence (every task gone) all of the above, then `leak`: every table empty, every counter 0, no pte, no
  lock; a leaked object is named with its counts, its allocation and the references it still holds.

Each report names the object, the step and site, and the last changes of the broken count from its history ring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..arena import NO_GUARD, ref_slot
from ..failures import Failure
from ..mm.state import (
    G_PAGES_SHARED,
    G_PAGES_SHARING,
    G_PAGES_UNSHARED,
    G_RMAP_ITEMS,
    G_SWAPIN_HELD,
    PG_KSM,
    PG_SWAPCACHE,
    PTE_KIND_MASK,
    PTE_MIGRATION,
    PTE_PRESENT,
    PTE_SWAP,
    STABLE_FLAG,
    pte_fields,
)
from ..sync import NOBODY, PAGE_LOCK, PAGE_TABLE_LOCK
from .history import changes_text, last_changes, outstanding, reference_text
from .mlock import check_no_migration_ptes, check_nr_mlock
from .registration import check_registration
from .stabletree import check_stable_tree
from .unstabletree import check_unstable_tree

if TYPE_CHECKING:
    from ..arena import Table
    from ..mm.state import K, State

COUNTERS = {
    "pages_shared": G_PAGES_SHARED,
    "pages_sharing": G_PAGES_SHARING,
    "pages_unshared": G_PAGES_UNSHARED,
    "rmap_items": G_RMAP_ITEMS,
}


def _fail(cls: str, msg: str, where: str, t: Table, slot: int, field: str | None, **details: Any) -> Failure:
    """A violation on t[slot]: the message ends with the object's last count changes (all its tracked counts: a
    page's _count and _mapcount change together), the broken one named in the details."""
    return Failure(
        cls,
        f"{msg} ({where}); last changes of {t.name}[{slot}]: {changes_text(t, slot)}",
        {"object": f"{t.name}[{slot}]", "where": where, "count": field, "history": last_changes(t, slot), **details},
    )


def pte_text(st: State, m: int, addr: int) -> str:
    """The pte's last stores, oldest first (its history ring)."""
    vp = st.sz.vpages
    out = []
    for step, task, site, kind, ref, write in st.pte_hist.entries(m * vp + addr):
        what = {
            PTE_PRESENT: f"page[{ref_slot(ref)}]" + (" writable" if write else ""),
            PTE_SWAP: f"swap[{ref_slot(ref)}]",
            PTE_MIGRATION: f"migration entry for page[{ref_slot(ref)}]",
        }
        out.append(f"step {step} {st.stamp.label(task)} {site}: {what.get(kind, 'none')}")
    return "; ".join(out) or "none recorded"


# -- ksm_refcount -------------------------------------------------------------------------------------------
def check_ksm_refcounts(st: State, where: str) -> None:
    """Each live anon_vma's ksm_refcount is the number of stable rmap_items recording it; those are all live."""
    ri, av = st.rmap_item, st.anon_vma
    live = ri.live_slots()
    stable = live[(ri.c["flags"][live] & STABLE_FLAG) != 0]
    avrefs = ri.c["anon_vma"][stable]
    ok = av.live_mask(avrefs)
    if not ok.all():
        i = int(stable[~ok][0])
        a = ref_slot(int(ri.c["anon_vma"][i]))
        freed = av._freed_info(a)
        raise _fail(
            "refcount-mismatch",
            f"stable rmap_item[{i}] records anon_vma[{a}], which was freed by {freed['task']} at step {freed['step']} "
            f"({freed['site']}) while that rmap_item still held a ksm_refcount on it",
            where, av, a, "refcount", rmap_item=i, freed=freed,
        )
    counts = np.bincount((avrefs & 0xFFFFFFFF) - 1, minlength=av.capacity)
    alive = av.live_slots()
    have = av.c["refcount"][alive]
    bad = alive[have != counts[alive]]
    if bad.size:
        a = int(bad[0])
        items = [int(i) for i in stable[(avrefs & 0xFFFFFFFF) - 1 == a]]
        named = ", ".join(f"rmap_item[{i}]" for i in items[:6]) or "none"
        raise _fail(
            "refcount-mismatch",
            f"anon_vma[{a}] ksm_refcount is {int(av.c['refcount'][a])} but {len(items)} stable rmap_items record it "
            f"({named})",
            where, av, a, "refcount", refcount=int(av.c["refcount"][a]), stable_items=items,
        )


# -- ptes ---------------------------------------------------------------------------------------------------
def check_pte_store(k: K, m: int, addr: int, kind: int, ref: int, write: int, site: str) -> None:
    """At every pte store (the storer holds the pte lock): a present pte maps a live page, never a writable
    PageKsm one; a swap pte names a live swap slot."""
    if kind == PTE_PRESENT:
        pg = k.pg
        if not pg.is_live(ref):
            _stale(k.st, m, addr, ref, f"stored at {site}", pg)
        if write and pg.flags[ref_slot(ref)] & PG_KSM:
            _writable_ksm(k.st, m, addr, ref, f"stored at {site}")
    elif kind == PTE_SWAP and not k.st.swap.is_live(ref):
        _stale(k.st, m, addr, ref, f"stored at {site}", k.st.swap)


def _stale(st: State, m: int, addr: int, ref: int, how: str, t: Table) -> None:
    s = ref_slot(ref)
    freed = t._freed_info(s) if 0 <= s < t.capacity else {}
    raise _fail(
        "stale-pte",
        f"mm[{m}] address {addr} maps {t.name}[{s}] (generation {ref >> 32}), {how}, but it was freed by "
        f"{freed.get('task')} at step {freed.get('step')} ({freed.get('site')}); the pte's last stores: "
        f"{pte_text(st, m, addr)}",
        how, t, s, None, mm=m, address=addr, freed=freed,
    )


def _writable_ksm(st: State, m: int, addr: int, ref: int, how: str) -> None:
    s = ref_slot(ref)
    raise _fail(
        "writable-ksm",
        f"mm[{m}] address {addr} maps KSM page[{s}] writable, {how}: a write would reach every sharer; the pte's "
        f"last stores: {pte_text(st, m, addr)}",
        how, st.page, s, None, mm=m, address=addr, page=s,
    )


def check_ptes(st: State, where: str) -> None:
    """Every pte at once: no stale pte, no writable KSM mapping."""
    kind, ref, write = pte_fields(st.pte)
    for k_, t in ((PTE_PRESENT, st.page), (PTE_SWAP, st.swap)):
        sel = kind == k_
        refs = ref[sel]
        ok = t.live_mask(refs)
        if not ok.all():
            m, addr = (int(x) for x in np.argwhere(sel)[~ok][0])
            _stale(st, m, addr, int(ref[m, addr]), f"found {where}", t)
    sel = (kind == PTE_PRESENT) & write
    slots = (ref[sel] & 0xFFFFFFFF) - 1
    bad = (st.page.c["flags"][slots] & PG_KSM) != 0
    if bad.any():
        m, addr = (int(x) for x in np.argwhere(sel)[bad][0])
        _writable_ksm(st, m, addr, int(ref[m, addr]), f"found {where}")


def _held(st: State, cls: int) -> int:
    """How many locks of class `cls` some task holds."""
    b = st.locks.base[cls]
    return int(np.count_nonzero(st.locks.owner[b : b + st.locks.counts[cls]] != NOBODY))


def check_counts(st: State, where: str) -> None:
    """page_mapcount = present ptes mapping the page, page_count >= mapcount + PageSwapCache (each pte and the swap
    cache hold a reference), a swap entry's count = its swap ptes, and the swap cache's three views of itself
    agree (see `check_swap_cache`). Exact only while no pte lock is held (the caller's business)."""
    pg, sw = st.page, st.swap
    kind, ref, _write = pte_fields(st.pte)
    present = kind == PTE_PRESENT
    slots = (ref[present] & 0xFFFFFFFF) - 1
    ptes = np.bincount(slots, minlength=pg.capacity)
    alive = pg.live_slots()
    mapc = pg.c["mapcount"][alive]
    bad = alive[mapc != ptes[alive]]
    if bad.size:
        s = int(bad[0])
        where_mapped = [[int(a), int(b)] for a, b in np.argwhere(present & ((ref & 0xFFFFFFFF) - 1 == s))]
        raise _fail(
            "refcount-mismatch",
            f"page[{s}] mapcount is {int(pg.c['mapcount'][s])} but {int(ptes[s])} ptes map it "
            f"({', '.join(f'mm[{a}] address {b}' for a, b in where_mapped[:6]) or 'none'})",
            where, pg, s, "mapcount", mapcount=int(pg.c["mapcount"][s]), ptes=where_mapped,
        )
    cnt = pg.c["count"][alive]
    cached = (pg.c["flags"][alive] & PG_SWAPCACHE) != 0
    # a live page at count 0 (and mapcount 0) is in put_page's window between the zero count and the free, or
    # frozen by __remove_mapping on its way out of the swap cache
    bad = alive[(cnt < mapc) | ((cnt < mapc + cached) & (cnt != 0)) | (cnt < 0)]
    if bad.size:
        s = int(bad[0])
        raise _fail(
            "refcount-mismatch",
            f"page[{s}] page_count is {int(pg.c['count'][s])}, below its mapcount {int(pg.c['mapcount'][s])} plus "
            f"{int(bool(pg.c['flags'][s] & PG_SWAPCACHE))} for the swap cache (every pte mapping a page, and the "
            f"swap cache, hold a reference on it)",
            where, pg, s, "count", count=int(pg.c["count"][s]), mapcount=int(pg.c["mapcount"][s]),
        )
    sptes = np.bincount((ref[kind == PTE_SWAP] & 0xFFFFFFFF) - 1, minlength=sw.capacity)
    salive = sw.live_slots()
    bad = salive[sw.c["count"][salive] != sptes[salive]]
    if bad.size:
        s = int(bad[0])
        raise _fail(
            "refcount-mismatch",
            f"swap[{s}] count is {int(sw.c['count'][s])} but {int(sptes[s])} swap ptes name it",
            where, sw, s, "count", count=int(sw.c["count"][s]), swap_ptes=int(sptes[s]),
        )
    check_swap_cache(st, where)


def check_swap_cache(st: State, where: str) -> None:
    """The swap cache's views agree: every page swapper_space names is live, PageSwapCache, its page->private that
    entry, and the entry has SWAP_HAS_CACHE; a PageSwapCache page whose entry does not name it has its page lock
    held (add_to_swap_cache or a delete in progress); the entries with SWAP_HAS_CACHE and no page number exactly
    the adds and deletes in flight (G_SWAPIN_HELD)."""
    pg, sw = st.page, st.swap
    salive = sw.live_slots()
    named = salive[sw.c["page"][salive] != 0]
    for ss in named:
        ss = int(ss)
        pref = int(sw.c["page"][ss])
        s = ref_slot(pref)
        ok = pg.is_live(pref) and pg.c["flags"][s] & PG_SWAPCACHE and int(pg.c["private"][s]) == sw.ref_of(ss)
        if not ok or not sw.c["cache"][ss]:
            raise _fail(
                "refcount-mismatch",
                f"swapper_space names page[{s}] for swap[{ss}] but the page is "
                f"{'live' if pg.is_live(pref) else 'freed'}, PageSwapCache "
                f"{int(bool(pg.c['flags'][s] & PG_SWAPCACHE))}, private swap[{ref_slot(int(pg.c['private'][s]))}], "
                f"SWAP_HAS_CACHE {int(sw.c['cache'][ss])}",
                where, sw, ss, "cache", page=s,
            )
    alive = pg.live_slots()
    cached = alive[(pg.c["flags"][alive] & PG_SWAPCACHE) != 0]
    plock = st.locks.base[PAGE_LOCK]
    for s in cached:
        s = int(s)
        sref = int(pg.c["private"][s])
        ss = ref_slot(sref)
        if sw.is_live(sref) and ref_slot(int(sw.c["page"][ss])) == s:
            continue
        if st.locks.owner[plock + s] != NOBODY:
            continue
        raise _fail(
            "refcount-mismatch",
            f"page[{s}] is PageSwapCache with private swap[{ss}], but swapper_space does not name it for that entry "
            f"and nobody holds its page lock",
            where, pg, s, "count", swap=ss,
        )
    pending = int(np.count_nonzero((sw.c["cache"][salive] != 0) & (sw.c["page"][salive] == 0)))
    if pending != int(st.g[G_SWAPIN_HELD]):
        s = int(salive[(sw.c["cache"][salive] != 0) & (sw.c["page"][salive] == 0)][0]) if pending else -1
        raise Failure(
            "refcount-mismatch",
            f"{pending} swap entries have SWAP_HAS_CACHE with no page in swapper_space, but "
            f"{int(st.g[G_SWAPIN_HELD])} adds or deletes are in flight ({where})"
            + (f"; last changes of swap[{s}]: {changes_text(sw, s)}" if s >= 0 else ""),
            {"where": where, "pending": pending, "in_flight": int(st.g[G_SWAPIN_HELD])},
        )


def check_ksm_quiescent(k: K, where: str) -> None:
    """ksmd or run=2 holds ksm_thread_mutex between batches: every invariant that is exact here."""
    step, who = k.ctl.clock()
    at = f"at {where}, step {step}, {who}"
    st = k.st
    check_ksm_refcounts(st, at)
    check_stable_tree(k, at)  # its structure in free mode too (only ksmd changes it); the rest controlled only
    check_unstable_tree(k, at)  # structure and membership only: exact in free mode too
    if k.guard is not NO_GUARD:
        return  # free mode: the other tasks run meanwhile, a scan of ptes and counts would race with them
    check_registration(k, at)
    check_ptes(st, at)
    if _held(st, PAGE_TABLE_LOCK) == 0:
        check_counts(st, at)


# -- quiescence ---------------------------------------------------------------------------------------------
def _describe(t: Table, s: int) -> str:
    """A leaked object: its counts, its allocation, and the references it still holds."""
    parts = []
    if t.TRACKED:
        parts.append(", ".join(f"{f} {int(t.c[f][s])}" for f in t.TRACKED))
    info = t.alloc_info(s)
    if info:
        through = f" in {info['chain']}" if info.get("chain") else ""
        parts.append(f"allocated by {info['task']} at step {info['step']} ({info['site']}){through}")
    for f in t.TRACKED:
        refs = outstanding(t, s, f)
        if refs:
            parts.append(
                f"{f} never dropped below {', '.join(str(c['value']) for c in refs)} since "
                + "; ".join(reference_text(t, c) for c in refs)
                + " took it"
            )
    if t.TRACKED:
        parts.append(f"last changes: {changes_text(t, s)}")
    return "; ".join(parts)


def check_quiescence(st: State) -> Failure | None:
    """Return the first invariant violation, else a `leak` failure describing what is left behind, or None when
    the arena is clean. Every task is gone: every invariant is exact here."""
    where = "at quiescence"
    try:
        check_ksm_refcounts(st, where)
        check_ptes(st, where)
        check_counts(st, where)
        check_no_migration_ptes(st, where)
        check_nr_mlock(st, where)
    except Failure as f:
        return f
    left = []
    objects: dict[str, str] = {}
    for t in st.tables:
        live = t.live_slots()
        if live.size:
            s = int(live[0])
            desc = _describe(t, s)
            objects[f"{t.name}[{s}]"] = desc
            left.append(f"{live.size} {t.name} (first: {t.name}[{s}]: {desc})")
    for name, cell in COUNTERS.items():
        if st.g[cell]:
            left.append(f"ksm_{name} = {int(st.g[cell])}")
    ptes = int(np.count_nonzero(st.pte & PTE_KIND_MASK))
    if ptes:
        left.append(f"{ptes} ptes still set")
    held = st.locks.any_held()
    if held:
        left.append("locks held: " + ", ".join(f"{st.locks.name(lid)} by task {t}" for t, lid in held))
    if not left:
        return None
    return Failure("leak", "at quiescence: " + "; ".join(left), {"left": left, "objects": objects})
