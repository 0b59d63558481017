"""The `traversal` detector: rmap walks that miss a mapping, and pages freed while still mapped.

At the start of a walk it snapshots the ptes the walk is bound to find: for a KSM page, every pte at an
rmap_item's address, in a vma on that rmap_item's anon_vma, that maps the page; for an anon page, every pte at
page->index in a vma of page->mapping. When the walk returns, any of those ptes still mapping the page that the
walk never examined is a miss. page_referenced walks stop, as in the kernel, once their own count of
mappings is used up (a concurrent replace_page, or a pass-1 revisit, can use it up early: that makes
page_referenced advisory, not wrong), so only a walk that returns with mappings still uncounted, or an unmap
walk, is held to the snapshot. Ptes are keyed by the mm's generation-tagged reference, so an mm slot reused
during the walk is not mistaken for the mm that was there. The snapshot reads the arena raw (never through the
KASAN check): a freed anon_vma is the walk's own use-after-free to report, not the detector's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..arena import ref_slot
from ..failures import Failure
from ..mm.state import PG_KSM, PTE_PRESENT, PTE_WRITE, mk_pte

if TYPE_CHECKING:
    from ..mm.state import K


@dataclass
class Walk:
    kind: str
    page: int
    expected: dict[tuple[int, int], tuple[int, str]]  # (mm slot, address) -> (mm ref, how it is reached)
    visited: set[tuple[int, int]] = field(default_factory=set)


def _vmas_of(k: K, avref: int) -> list[int]:
    out: list[int] = []
    if not k.av.is_live(avref):
        return out
    vref = k.av.head[ref_slot(avref)]
    while vref and k.vm.is_live(vref) and len(out) < k.st.vma.capacity:
        out.append(vref)
        vref = k.vm.av_next[ref_slot(vref)]
    return out


def _maps(k: K, m: int, addr: int, pref: int) -> bool:
    """Whether the pte maps the page: one load of its word, so the kind and the target are of one moment (a swap
    reference can equal a page reference, so reading them apart can pair a present kind with a swap target)."""
    return (int(k.st.pte[m, addr]) & ~PTE_WRITE) == mk_pte(PTE_PRESENT, pref, 0)


def reachable(k: K, pref: int) -> dict[tuple[int, int], tuple[int, str]]:
    """(mm, address) -> how it is reached, for every pte the rmap walk of `pref` must visit."""
    s = ref_slot(pref)
    out: dict[tuple[int, int], tuple[int, str]] = {}
    targets: list[tuple[int, int, str]] = []
    if k.pg.flags[s] & PG_KSM:
        nref = k.pg.mapping[s]
        if not k.sn.is_live(nref):
            return out
        iref = k.sn.hfirst[ref_slot(nref)]
        while iref and k.ri.is_live(iref):
            i = ref_slot(iref)
            targets.append((k.ri.anon_vma[i], k.ri.address[i], f"rmap_item[{i}]"))
            iref = k.ri.hnext[i]
    else:
        targets.append((k.pg.mapping[s], k.pg.index[s], f"page[{s}]->mapping"))
    for avref, addr, via in targets:
        for vref in _vmas_of(k, avref):
            v = ref_slot(vref)
            if k.vm.start[v] <= addr < k.vm.end[v]:
                mref = k.vm.mm[v]
                m = ref_slot(mref)
                if _maps(k, m, addr, pref):
                    out.setdefault(
                        (m, addr),
                        (
                            mref,
                            f"vma[{v}] [{k.vm.start[v]},{k.vm.end[v]}) "
                            f"on anon_vma[{ref_slot(avref)}] via {via}",
                        ),
                    )
    return out


class TraversalCheck:
    def walk_begin(self, k: K, pref: int, kind: str) -> Walk:
        return Walk(kind, pref, reachable(k, pref))

    def walk_visit(self, token: Walk | None, mm_slot: int, address: int) -> None:
        if token is not None:
            token.visited.add((mm_slot, address))

    def walk_end(self, k: K, token: Walk | None, uncounted: int | None = None) -> None:
        """`uncounted`: a page_referenced walk's mapcount left (0 = it stopped having counted them all);
        None for an unmap walk, which is bound to every mapping."""
        if token is None or uncounted == 0:
            return
        missed = sorted(
            key
            for key, (mref, _via) in token.expected.items()
            if key not in token.visited and k.mmc.is_live(mref) and _maps(k, *key, token.page)
        )
        if missed:
            m, addr = missed[0]
            step, who = k.ctl.clock()
            raise Failure(
                "traversal",
                f"{token.kind} of page[{ref_slot(token.page)}] by {who} returned at step {step} without visiting "
                f"mm[{m}] address {addr} ({token.expected[(m, addr)][1]}), which maps it",
                {
                    "walk": token.kind,
                    "page": ref_slot(token.page),
                    "mm": m,
                    "address": addr,
                    "step": step,
                    "task": who,
                    "missed": [list(x) for x in missed],
                    "via": token.expected[(m, addr)][1],
                },
            )

    def page_freeing(self, k: K, pref: int, site: str) -> None:
        """No pte may still map a page whose last reference is going. Each pte is read once, as one word: in free
        mode other tasks change ptes during the scan, and a scan of kinds then a scan of targets would pair a pte's
        old present kind with its new swap target, which can equal the page's reference."""
        hits = np.argwhere((k.st.pte & ~PTE_WRITE) == mk_pte(PTE_PRESENT, pref, 0))
        if hits.size:
            m, addr = (int(x) for x in hits[0])
            step, who = k.ctl.clock()
            raise Failure(
                "traversal",
                f"page[{ref_slot(pref)}] freed by {who} at step {step} ({site}) while mm[{m}] still maps it at "
                f"address {addr}",
                {
                    "page": ref_slot(pref),
                    "mm": m,
                    "address": addr,
                    "site": site,
                    "step": step,
                    "task": who,
                    "mappings": [[int(a), int(b)] for a, b in hits.tolist()],
                },
            )
