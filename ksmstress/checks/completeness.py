"""`missed-merge`: once the world has stood still for a few full scans, no two page frames in mergeable areas of
registered mms hold the same bytes.

KSM's promise (Documentation/vm/ksm.txt: ksmd "merges identical pages"; mm/ksm.c's header: the unstable tree holds
pages "not changed frequently enough", and their checksum decides) is a liveness contract, so it is checked
only where the kernel's own algorithm guarantees it, counted in full scans (full_scans, G_SEQNR) completed
entirely after the last disturbance (checks.disturbance says what moves the world, and why that is all of it):
1. the first full scan visits every page: a page whose checksum was never taken, or changed, gets it now
   (cmp_and_merge_page returns at `rmap_item->oldchecksum != checksum`); a page equal to a stable one merges now
   (stable_tree_search comes before the checksum);
2. the second meets every unchanged page: the first of two equal pages enters the unstable tree, the second
   finds it there and try_to_merge_two_pages makes them one stable page; a third equal page then finds it in
   the stable tree;
3. the third catches what the second could not: the other mappings of a page forked copy-on-write (the second
   found its own page in the unstable tree, `page == tree_page`, and stopped: it is not inserted, and the page
   it maps is merged through the first mapping only), which now find the stable page.
stable_tree_insert refusing (an equal stable page already there) needs the search before it to have given up on
a stale node, which counts as a disturbance. So 3 scans suffice; SETTLE_SCANS adds a margin of 2, for orders of
events this reasoning missed (a false alarm costs more than a later catch, and merge-settle's quiet phases last
longer than 5 scans).

Scope, as 2.6.33 scans: the present ptes of VM_MERGEABLE vmas of mms on ksm_mm_head's list that are not exiting
(mm_users > 0). Two ptes mapping one page frame are fine (a forked page is not merged with itself,
unstable_tree_search_insert's `page == tree_page`). Exempt, with 2.6.33's reason: a PageKsm page whose mapping
names no stable node (try_to_merge_one_page made it KSM, then its merge failed and break_cow left it to a forked
sharer): 2.6.33's page_address_in_vma compares vma->anon_vma with page_anon_vma(page), NULL for a KSM page, so
write_protect_page returns -EFAULT for it forever (memory.page_address_in_vma, as 2.6.33). Two stable pages with
equal bytes are the stable tree's business (checks.stabletree runs first).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from ..arena import ref_slot
from ..failures import Failure
from ..mm.state import (
    G_SEQNR,
    MM_SLOT_HEAD,
    PG_KSM,
    PTE_PRESENT,
    SEQNR_MASK,
    STABLE_FLAG,
    UNSTABLE_FLAG,
    VM_MERGEABLE,
    pte_fields,
)

if TYPE_CHECKING:
    from ..mm.state import K
    from .disturbance import Disturbance

KERNEL_SCANS = 3  # full scans 2.6.33 needs to merge unchanged identical pages (see above)
SETTLE_SCANS = KERNEL_SCANS + 2  # and the margin


def _scope(k: K) -> list[tuple[int, int, int]]:
    """(page slot, mm slot, address) of every present pte in a VM_MERGEABLE vma of a listed, live mm."""
    st = k.st
    ms, mm, vm = st.mm_slot, st.mm, st.vma
    head = st.ksm_mm_head
    out: list[tuple[int, int, int]] = []
    sref, n = int(ms.c["next"][MM_SLOT_HEAD]), 0
    while sref != head and ms.is_live(sref) and n <= ms.capacity:
        s = ref_slot(sref)
        mref = int(ms.c["mm"][s])
        sref, n = int(ms.c["next"][s]), n + 1
        if not mm.is_live(mref):
            continue
        m = ref_slot(mref)
        if int(mm.c["users"][m]) == 0:
            continue
        kind, ref, _w = pte_fields(st.pte[m])
        vref, j = int(mm.c["mmap"][m]), 0
        while vref and vm.is_live(vref) and j <= vm.capacity:
            v = ref_slot(vref)
            if int(vm.c["flags"][v]) & VM_MERGEABLE:
                for a in range(int(vm.c["start"][v]), int(vm.c["end"][v])):
                    if kind[a] == PTE_PRESENT and st.page.is_live(int(ref[a])):
                        out.append((ref_slot(int(ref[a])), m, a))
            vref, j = int(vm.c["next"][v]), j + 1
    return out


def _orphan_ksm(k: K, s: int) -> bool:
    """A PageKsm page that no live stable node owns (2.6.33 cannot write-protect it: see the module doc)."""
    pg, sn = k.st.page, k.st.stable_node
    if not int(pg.c["flags"][s]) & PG_KSM:
        return False
    nref = int(pg.c["mapping"][s])
    return not (nref and sn.is_live(nref) and int(sn.c["kpfn"][ref_slot(nref)]) == s)


def _item_text(k: K, m: int, addr: int, s: int) -> dict[str, Any]:
    """The rmap_item ksmd keeps for (mm, address): its state and whether its checksum matches the page now."""
    st = k.st
    ri = st.rmap_item
    live = ri.live_slots()
    mref = int(st.mm.ref_of(m))
    hit = live[(ri.c["mm"][live] == mref) & (ri.c["address"][live] == addr)]
    if not hit.size:
        return {"rmap_item": None, "state": "none"}
    i = int(hit[0])
    flags = int(ri.c["flags"][i])
    crc = zlib.crc32(st.frames[s].tobytes())
    if flags & STABLE_FLAG:
        state = f"stable (stable_node[{ref_slot(int(ri.c['head'][i]))}])"
    elif flags & UNSTABLE_FLAG:
        state = f"unstable (seqnr {int(ri.c['seqnr'][i])}, full_scans {int(st.g[G_SEQNR]) & SEQNR_MASK} now)"
    else:
        state = "in no tree"
    checksum = "checksum settled" if int(ri.c["oldchecksum"][i]) == crc else "checksum not yet the page's"
    return {"rmap_item": i, "state": state, "checksum": checksum}


def check_merge_completeness(k: K, where: str, dist: Disturbance) -> None:
    """If the world has been still for SETTLE_SCANS full scans: every content appears in one page frame."""
    if not dist.active or dist.sample(k, where) is not None or dist.settled_scans() < SETTLE_SCANS:
        return
    dist.count_check()
    st = k.st
    scope = _scope(k)
    if not scope:
        return
    where_mapped: dict[int, list[tuple[int, int]]] = {}
    for s, m, a in scope:
        where_mapped.setdefault(s, []).append((m, a))
    slots = np.fromiter(where_mapped, dtype=np.int64)
    by_content: dict[bytes, list[int]] = {}
    for s in slots.tolist():
        if not _orphan_ksm(k, s):
            by_content.setdefault(st.frames[s].tobytes(), []).append(s)
    for pages in by_content.values():
        if len(pages) < 2:
            continue
        _report(k, where, dist, pages[:2], where_mapped)


def _report(
    k: K, where: str, dist: Disturbance, pages: list[int], where_mapped: dict[int, list[tuple[int, int]]]
) -> None:
    step, who = k.ctl.clock()
    pg = k.st.page
    last = dist.last()
    parts, info = [], []
    for s in pages:
        items = [{"mm": m, "address": a, **_item_text(k, m, a, s)} for m, a in where_mapped[s]]
        ksm = bool(int(pg.c["flags"][s]) & PG_KSM)
        mapped = "; ".join(
            f"mm[{it['mm']}] address {it['address']}: "
            + (
                f"rmap_item[{it['rmap_item']}] {it['state']}, {it['checksum']}"
                if it["rmap_item"] is not None
                else "no rmap_item"
            )
            for it in items[:4]
        )
        parts.append(f"{'KSM page' if ksm else 'page'}[{s}] ({mapped})")
        info.append({"page": s, "ksm": ksm, "mappings": items})
    full, settled = int(k.st.g[G_SEQNR]), dist.settled_scans()
    raise Failure(
        "missed-merge",
        f"{' and '.join(parts)} hold identical bytes after {settled} full scans with nothing disturbing, where "
        f"2.6.33 merges unchanged identical pages within {KERNEL_SCANS} (full_scans {full}; the last disturbance: "
        f"step {last['step']}, {last['task']} at {last['site']}, full_scans {last['full_scans']}) (at {where}, step "
        f"{step}, {who})",
        {
            "step": step,
            "task": who,
            "object": f"page[{pages[1]}]",
            "pages": info,
            "full_scans": full,
            "last_disturbance": last,
            "settled_scans": settled,
        },
    )
