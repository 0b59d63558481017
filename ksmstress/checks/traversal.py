"""The `traversal` detector: rmap walks that miss a mapping, and pages freed while still mapped.

A walk's duty is computed twice, and either shortfall is a `traversal` failure:

- From the page tables (the oracle that does not trust the code under test): at the start of a walk (the walker
  holds the page lock, as shrink_page_list's page_referenced and try_to_unmap do in 2.6.33; shrink_active_list's
  unlocked walk of an anon page begins once page_lock_anon_vma holds anon_vma->lock) it scans every mm's ptes for
  those that map the page; each one that still maps it, with the same word, when the walk returns and was never
  examined is a miss, unless the kernel leaves it unreachable by design: the windows of `checks.windows`, the only
  exemption. A mapping kept off the anon_vma's vma list or the stable node's rmap_item list, or linked too late, is
  caught here, where a duty read from those lists cannot see it.
- From the lists the walk reads (kept: the two disagree only on bugs, and this one names the rmap_item or vma
  the walk went past): for a KSM page, every pte at an rmap_item's address, in a vma on that rmap_item's anon_vma,
  that maps the page; for an anon page, every pte at vma_address (vm_start + page->index - vm_pgoff) in a vma of
  page->mapping.

page_referenced walks stop, as in the kernel, once their own count of mappings is used up (a concurrent
replace_page, or a pass-1 revisit, can use it up early: that makes page_referenced advisory, not wrong), so only a
walk that returns with mappings still uncounted, or an unmap walk, is held to its duty. Ptes are keyed by the mm's
generation-tagged reference, so an mm slot reused during the walk is not mistaken for the mm that was there. The
detector reads the arena raw (never through the KASAN check): a freed anon_vma is the walk's own use-after-free to
report, not the detector's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..arena import ref_slot
from ..failures import Failure
from ..mm.state import PG_KSM, PTE_PRESENT, PTE_WRITE, mk_pte
from . import mlock, windows
from .invariants import pte_text

if TYPE_CHECKING:
    from ..mm.state import K


@dataclass
class Walk:
    kind: str
    page: int
    expected: dict[tuple[int, int], tuple[int, str]]  # (mm slot, address) -> (mm ref, how it is reached)
    visited: set[tuple[int, int]] = field(default_factory=set)
    mapped: list[tuple[int, int, int, int]] = field(default_factory=list)  # (mm slot, address, pte word, mm ref)
    locked: dict[tuple[int, int], int] = field(default_factory=dict)  # of `mapped`: those a VM_LOCKED vma covers


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
    targets: list[tuple[int, int, str]] = []  # (anon_vma, address or -1 for vma_address of page->index, via)
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
        targets.append((k.pg.mapping[s], -1, f"page[{s}]->mapping"))
    for avref, item_addr, via in targets:
        for vref in _vmas_of(k, avref):
            v = ref_slot(vref)
            # an anon page sits at vma_address in each vma: vm_start + (page->index - vm_pgoff)
            addr = item_addr if item_addr >= 0 else int(k.vm.start[v]) + int(k.pg.index[s]) - int(k.vm.pgoff[v])
            if k.vm.start[v] <= addr < k.vm.end[v]:
                mref = k.vm.mm[v]
                m = ref_slot(mref)
                if _maps(k, m, addr, pref):
                    out.setdefault(
                        (m, addr),
                        (
                            mref,
                            f"vma[{v}] [{k.vm.start[v]},{k.vm.end[v]}) on anon_vma[{ref_slot(avref)}] via {via}",
                        ),
                    )
    return out


def mapping_ptes(k: K, pref: int) -> list[tuple[int, int, int, int]]:
    """(mm slot, address, pte word, mm ref) of every pte of every mm that maps the page now. The page table is
    copied first, so each pte is one load: its kind, target and write bit are of one moment."""
    words = k.st.pte.copy()
    hits = np.argwhere((words & ~PTE_WRITE) == mk_pte(PTE_PRESENT, pref, 0))
    return [(m, a, int(words[m, a]), k.mmc.ref_of(m)) for m, a in hits.tolist()]


def _own_item(k: K, m: int, addr: int) -> int:
    """The mm's rmap_item at addr on its mm_slot's rmap_list (read raw), or 0."""
    sref = k.mmc.slot[m]
    if not k.ms.is_live(sref):
        return 0
    iref, n = k.ms.rmap_list[ref_slot(sref)], 0
    while iref and k.ri.is_live(iref) and n < k.ri.capacity:
        i = ref_slot(iref)
        if k.ri.address[i] == addr:
            return iref
        iref, n = k.ri.rmap_next[i], n + 1
    return 0


def describe_miss(k: K, m: int, addr: int, pref: int) -> dict[str, object]:
    """Where a missed pte sits, so a developer sees which list it was missing from: its vma and that vma's
    anon_vma, whether the vma is on the anon_vma's list, and for a KSM page the mm's own rmap_item and the
    stable node's rmap_items at this address."""
    out: dict[str, object] = {"mm": m, "address": addr}
    vref = windows.covering_vma(k, m, addr)
    if vref:
        v = ref_slot(vref)
        avref = k.vm.anon_vma[v]
        out.update(
            vma=v,
            vm_start=k.vm.start[v],
            vm_end=k.vm.end[v],
            anon_vma=ref_slot(avref) if avref else None,
            on_anon_vma_list=vref in _vmas_of(k, avref) if avref else False,
        )
    else:
        out["vma"] = None
    if k.pg.flags[ref_slot(pref)] & PG_KSM:
        iref = _own_item(k, m, addr)
        out["rmap_item"] = ref_slot(iref) if iref else None
        out["rmap_item_flags"] = k.ri.flags[ref_slot(iref)] if iref else None
        out["stable_items_here"] = [
            ref_slot(x) for x in windows.stable_items(k, pref) if k.ri.address[ref_slot(x)] == addr
        ]
    out["stores"] = pte_text(k.st, m, addr)  # how the pte came to map the page: which window it went through
    return out


def miss_text(d: dict[str, object]) -> str:
    """One missed pte as text: where it sits and which list it was missing from (reports print one per line)."""
    t = f"mm[{d['mm']}] address {d['address']}"
    if d["vma"] is None:
        return t + " (no vma covers it)"
    t += f" in vma[{d['vma']}] [{d['vm_start']},{d['vm_end']})"
    t += f" of anon_vma[{d['anon_vma']}] ({'on' if d['on_anon_vma_list'] else 'NOT on'} its vma list)"
    if "rmap_item" in d:
        own = d["rmap_item"]
        t += "; its rmap_item: " + ("none" if own is None else f"rmap_item[{own}] flags {d['rmap_item_flags']}")
        here = ", ".join(f"rmap_item[{x}]" for x in d["stable_items_here"])  # type: ignore[attr-defined]
        t += "; stable node's rmap_items at this address: " + (here or "none")
    if d.get("stores"):
        t += f"; the pte's last stores: {d['stores']}"
    return t


class TraversalCheck:
    # which duties walks are held to: both in every run; a measurement may narrow it to see what each one catches
    DUTIES: tuple[str, ...] = ("lists", "ptes")

    def walk_begin(self, k: K, pref: int, kind: str) -> Walk:
        duties = self.DUTIES
        mapped = mapping_ptes(k, pref)
        return Walk(
            kind,
            pref,
            reachable(k, pref) if "lists" in duties else {},
            mapped=mapped if "ptes" in duties else [],
            locked=mlock.locked_at_begin(k, mapped),
        )

    def window_open(self, k: K, kind: str, mm_slot: int, address: int, page_ref: int) -> None:
        windows.window_open(k, kind, mm_slot, address, page_ref)

    def window_close(self, k: K, kind: str, mm_slot: int, address: int) -> None:
        windows.window_close(k, kind, mm_slot, address)

    def walk_visit(self, token: Walk | None, mm_slot: int, address: int) -> None:
        if token is not None:
            token.visited.add((mm_slot, address))

    def walk_end(self, k: K, token: Walk | None, uncounted: int | None = None) -> None:
        """`uncounted`: a page_referenced walk's mapcount left (0 = it stopped having counted them all);
        None for an unmap walk, which is bound to every mapping."""
        if token is None:
            return
        if uncounted is None and token.locked:
            mlock.check_unmap_locked(k, token.kind, token.page, token.locked)
        if uncounted == 0:
            return
        self._check_lists(k, token)
        self._check_ptes(k, token)
        if uncounted is None:
            self._check_unmapped(k, token)

    def _check_unmapped(self, k: K, token: Walk) -> None:
        """An unmap walk's visit must unmap: try_to_unmap_one, finding the page at the address under the pte lock,
        replaces the pte by a swap entry unless it returns SWAP_FAIL (a young pte, not modelled: deviation 11) or
        finds VM_LOCKED (the pte stays: exempt here if its vma was VM_LOCKED at the walk's start or end, as a
        munlock may clear the flag meanwhile, then wait for the page lock; `mlock` checks those), and no path maps
        the same page there again while the walker holds the page lock (a swap-in makes a new page, deviation 10).
        So a pte the walk visited that still holds the word it held when the walk began, in the same mm, was left
        mapped by the visit."""
        kept = [
            (m, addr)
            for m, addr, word, mref in token.mapped
            if (m, addr) in token.visited and int(k.st.pte[m, addr]) == word and k.mmc.is_live(mref)
            and (m, addr) not in token.locked and not mlock.is_locked(k, m, addr)
        ]
        if not kept:
            return
        step, who = k.ctl.clock()
        m, addr = kept[0]
        raise Failure(
            "traversal",
            f"{token.kind} of page[{ref_slot(token.page)}] by {who} returned at step {step} having visited "
            f"{len(kept)} pte(s) that map it without unmapping them: "
            + "; ".join(miss_text(describe_miss(k, mm, a, token.page)) for mm, a in kept[:32]),
            {
                "walk": token.kind,
                "page": ref_slot(token.page),
                "duty": "unmap",
                "mm": m,
                "address": addr,
                "step": step,
                "task": who,
                "kept": [list(x) for x in kept[:32]],
                "kept_count": len(kept),
            },
        )

    def _check_ptes(self, k: K, token: Walk) -> None:
        """The duty from the page tables: a pte that mapped the page at the start and holds the same word now, in
        the same mm, was there the whole walk (or is back as it was): the walk had to examine it."""
        missed = []
        for m, addr, word, mref in token.mapped:
            if (m, addr) in token.visited or int(k.st.pte[m, addr]) != word or not k.mmc.is_live(mref):
                continue
            if windows.exempting(k, m, addr, word, token.page) is None:
                missed.append(describe_miss(k, m, addr, token.page))
        if not missed:
            return
        step, who = k.ctl.clock()
        first = missed[0]
        raise Failure(
            "traversal",
            f"{token.kind} of page[{ref_slot(token.page)}] by {who} returned at step {step} leaving "
            f"{len(missed)} pte(s) that mapped it when the walk began unvisited (duty from the page tables): "
            + "; ".join(miss_text(d) for d in missed[:32])
            + ("; ..." if len(missed) > 32 else ""),
            {
                "walk": token.kind,
                "page": ref_slot(token.page),
                "duty": "page-tables",
                "mm": first["mm"],
                "address": first["address"],
                "step": step,
                "task": who,
                "missed": missed[:32],  # the failure buffer is bounded; the count says how many there were
                "missed_count": len(missed),
            },
        )

    def _check_lists(self, k: K, token: Walk) -> None:
        missed = sorted(
            key
            for key, (mref, _via) in token.expected.items()
            if key not in token.visited and k.mmc.is_live(mref) and _maps(k, *key, token.page)
        )
        if missed:
            m, addr = missed[0]
            step, who = k.ctl.clock()
            every = "; ".join(f"mm[{mm}] address {a} ({token.expected[(mm, a)][1]})" for mm, a in missed)
            raise Failure(
                "traversal",
                f"{token.kind} of page[{ref_slot(token.page)}] by {who} returned at step {step} without visiting "
                f"{len(missed)} pte(s) that map it: {every}",
                {
                    "walk": token.kind,
                    "page": ref_slot(token.page),
                    "mm": m,
                    "address": addr,
                    "step": step,
                    "task": who,
                    "missed": [[mm, a, token.expected[(mm, a)][1]] for mm, a in missed],  # pte and how it was due
                    "via": token.expected[(m, addr)][1],
                    "duty": "lists",
                },
            )

    def page_freeing(self, k: K, pref: int, site: str) -> None:
        """No pte may still map a page whose last reference is going. Each pte is read once, as one word: in free
        mode other tasks change ptes during the scan, and a scan of kinds then a scan of targets would pair a pte's
        old present kind with its new swap target, which can equal the page's reference."""
        words = k.st.pte
        hits = np.argwhere((words & ~PTE_WRITE) == mk_pte(PTE_PRESENT, pref, 0))
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
        mlock.check_freeing(k, pref, site, words)
