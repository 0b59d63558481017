"""The kernel's legitimate windows: the only ptes an rmap walk may leave mapping its page unvisited.

The traversal detector holds a walk to every pte that maps the page when the walk starts and still maps it,
unchanged, when it returns (the duty from the page tables). 2.6.33 has moments where such a pte cannot be found by
the walk's lists, by design: each is listed here with the kernel's reason and how the detector recognises it from
the state, without knowing any bug variant. Nothing else is exempt.

Three windows are marked by the model itself (`Hooks.window_open` / `window_close`, at the two ends of the window in
the kernel code); the mark sits in the arena (`State.window`, one record per pte: code, mm reference, the pte word
for the page marked), so the reclaim task's detector sees the mark ksmd or a forking task made. A mark holds only
while the pte maps the page it was marked for, in the same mm, and a new mark replaces the old one. A mutant that moves
code out of a window (an append after the close, a link after the copy) leaves the pte outside it, and is caught.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..arena import ref_slot
from ..mm.ksm import UNTIL_SCANNED, UNTIL_SCANNED_ANY
from ..mm.state import PG_KSM, PTE_PRESENT, PTE_WRITE, mk_pte

if TYPE_CHECKING:
    from ..mm.state import K

# the fields of a window record (State.window[m, addr])
W_CODE, W_MM, W_PTE = 0, 1, 2


@dataclass(frozen=True)
class Window:
    name: str
    code: int  # its mark in State.window; 0 for a window recognised from the state alone
    reason: str  # why 2.6.33 leaves the pte unreachable here, citing its functions
    recognised: str  # how the detector tells, from the state, that a pte is in this window
    applies: Callable[[K, int, int, int, int], bool]  # (k, mm slot, address, pte word, page ref)


def _ksm(k: K, pref: int) -> bool:
    return bool(k.pg.flags[ref_slot(pref)] & PG_KSM)


def marked(k: K, m: int, addr: int, word: int, code: int) -> bool:
    """Whether the model marked this pte with `code` for the page it maps, in this mm (a KSM pte is never writable,
    so the write bit is no part of the match)."""
    rec = k.st.window[m, addr]
    return int(rec[W_CODE]) == code and int(rec[W_PTE]) == word & ~PTE_WRITE and int(rec[W_MM]) == k.mmc.ref_of(m)


def covering_vma(k: K, m: int, addr: int) -> int:
    """The vma of mm slot m covering addr (find_vma + the vm_start check), read raw; 0 if none."""
    vm = k.vm
    vref, n = k.mmc.mmap[m], 0
    while vref and vm.is_live(vref) and n < vm.capacity:
        v = ref_slot(vref)
        if vm.start[v] <= addr < vm.end[v]:
            return vref
        vref, n = vm.next[v], n + 1
    return 0


def stable_items(k: K, pref: int) -> list[int]:
    """The rmap_items on the KSM page's stable node (its hlist), read raw."""
    out: list[int] = []
    nref = k.pg.mapping[ref_slot(pref)]
    if not k.sn.is_live(nref):
        return out
    iref = k.sn.hfirst[ref_slot(nref)]
    while iref and k.ri.is_live(iref) and len(out) < k.ri.capacity:
        out.append(iref)
        iref = k.ri.hnext[ref_slot(iref)]
    return out


def _own_item_on_node(k: K, m: int, pref: int) -> bool:
    """Whether an rmap_item of mm slot m is on the KSM page's stable node (this mm merged the page itself)."""
    mref = k.mmc.ref_of(m)
    return any(k.ri.mm[ref_slot(i)] == mref for i in stable_items(k, pref))


def family_item(k: K, m: int, addr: int, pref: int) -> int:
    """An rmap_item on the page's stable node through which pass 1 of the KSM walks reaches this pte (same address,
    the anon_vma recorded in the pte's vma), or 0. The vma's anon_vma field is read, not the anon_vma's list, so a
    vma missing from its list still counts as reachable: that is a bug to report, not a window."""
    vref = covering_vma(k, m, addr)
    if not vref:
        return 0
    av = k.vm.anon_vma[ref_slot(vref)]
    for iref in stable_items(k, pref):
        i = ref_slot(iref)
        if k.ri.address[i] == addr and k.ri.anon_vma[i] == av:
            return iref
    return 0


REPLACE_BEFORE_APPEND, FORK_BEFORE_SCAN, SWAPIN_BEFORE_SCAN, MOVE_BEFORE_SCAN, MIGRATE_BEFORE_SCAN = 1, 2, 3, 4, 5


def _until_scanned(code: int) -> Callable[[K, int, int, int, int], bool]:
    """A KSM pte marked `code` that no rmap_item on the stable node reaches yet (same address, the anon_vma of the
    covering vma): exempt until ksmd scans it (the mark is cleared then)."""
    return lambda k, m, addr, word, pref: (
        _ksm(k, pref) and marked(k, m, addr, word, code) and not family_item(k, m, addr, pref)
    )

WINDOWS: tuple[Window, ...] = (
    Window(
        "replace-before-append",
        REPLACE_BEFORE_APPEND,
        "replace_page maps kpage under the old page's lock; only after try_to_merge_with_ksm_page returns does "
        "cmp_and_merge_page take lock_page(kpage) and stable_tree_append link the rmap_item (2.6.33 mm/ksm.c).",
        "marked by replace_page once it has stored the pte; the mark is cleared by cmp_and_merge_page after the "
        "append and unlock_page(kpage); the pte still holds the word it was marked with",
        lambda k, m, addr, word, pref: _ksm(k, pref) and marked(k, m, addr, word, REPLACE_BEFORE_APPEND),
    ),
    Window(
        "fork-before-scan",
        FORK_BEFORE_SCAN,
        "a pte shared by fork (copy_page_range) has no rmap_item of its own: the KSM walks reach it only in pass 1, "
        "through a sibling's rmap_item (same address, same anon_vma); once ksmd has removed that item, nothing "
        "reaches it until ksmd scans it and stable_tree_append links its own (2.6.33 page_referenced_ksm, "
        "try_to_unmap_ksm: \"forked from the original since ksmd passed\"); the walk returns with the page mapped.",
        "marked by copy_page_range on the parent's and the child's pte of every present page it shares; cleared when "
        "ksm_do_scan has processed that address of that mm while it maps a KSM page that has a stable node (one with "
        "none yet has nothing its rmap_item could be linked to); exempt only while no rmap_item on the stable node "
        "has this address and the anon_vma of the vma covering the pte",
        _until_scanned(FORK_BEFORE_SCAN),
    ),
    Window(
        "swapin-before-scan",
        SWAPIN_BEFORE_SCAN,
        "a page found in the swap cache is mapped as it is: a KSM page (do_swap_page: page_anon_vma is NULL for a KSM "
        "page, so ksm_might_need_to_copy keeps it; unuse_pte alike), also at an address whose rmap_item ksmd removed "
        "while the pte was a swap entry (get_next_rmap_item frees the items of addresses where follow_page found no "
        "page), or an anon page that fork relatives sharing the swap entry map again (same anon_vma and index: no "
        "copy), which one relative's rmap_item may later make a KSM page: nothing but pass 1 through that item "
        "reaches the pte, and once the item is gone nothing does, until ksmd scans the pte and stable_tree_append "
        "links its own (2.6.33 mm/ksm.c, mm/memory.c, mm/swapfile.c); the walk returns with the page mapped.",
        "marked by do_swap_page and unuse_pte on the pte they map; cleared as fork-before-scan's mark is; exempt only "
        "while the page is a KSM page and no rmap_item on the stable node has this address and the anon_vma of the "
        "vma covering the pte",
        _until_scanned(SWAPIN_BEFORE_SCAN),
    ),
    Window(
        "move-before-scan",
        MOVE_BEFORE_SCAN,
        "a pte mremap moved (move_ptes) has no rmap_item at its new address: move_vma broke the range's KSM pages "
        "first, but an anon page it moved that fork shares with an unmoved sibling can become a KSM page through "
        "the sibling's rmap_item, and pass 1 of the KSM walks looks only at the sibling's address; nothing reaches "
        "the moved pte until ksmd scans it there and stable_tree_append links its own item (2.6.33 mm/mremap.c "
        "move_vma, mm/ksm.c rmap_walk_ksm).",
        "marked by move_ptes on each present pte it moves, unless its page is a KSM page with an rmap_item of this "
        "mm on its stable node (a page this mm merged itself, moved: what move_vma's unmerge exists to prevent); "
        "a KSM page without one was an anon page that move_vma's unmerge passed and the sibling's item made KSM "
        "before move_ptes came to it (ksmd holds only the sibling's mmap_sem); cleared as fork-before-scan's mark "
        "is; exempt only while no rmap_item on the stable node has this address and the anon_vma of the vma "
        "covering the pte",
        _until_scanned(MOVE_BEFORE_SCAN),
    ),
    Window(
        "migrate-before-scan",
        MIGRATE_BEFORE_SCAN,
        "remove_migration_ptes gives every pte of a migrated page a new word, the new page's: an anon page that fork "
        "relatives share at one address is shared by them again, and fork's pass-1 reachability (see "
        "fork-before-scan) holds for the new page as it did for the old; once one relative's rmap_item makes it a "
        "KSM page and that item is gone, nothing reaches the others until ksmd scans them (2.6.33 mm/migrate.c, "
        "mm/ksm.c); a migrated KSM page keeps its rmap_items (ksm_migrate_page moves the stable node).",
        "marked by remove_migration_pte on each pte it restores; cleared as fork-before-scan's mark is; exempt only "
        "while the page is a KSM page and no rmap_item on the stable node has this address and the anon_vma of the "
        "vma covering the pte",
        _until_scanned(MIGRATE_BEFORE_SCAN),
    ),
    Window(
        "exiting-mm",
        0,
        "once mm_users is 0 (ksm_test_exit), ksmd and run=2 remove the mm's rmap_items (remove_trailing_rmap_items) "
        "while exit_mmap, which takes no mmap_sem, has not zapped its ptes yet (2.6.33 scan_get_next_rmap_item).",
        "the pte's mm has mm_users == 0 and the page is a KSM page (an anon walk still reaches an exiting mm: its "
        "vmas stay on their anon_vma until after the zap)",
        lambda k, m, addr, word, pref: _ksm(k, pref) and k.mmc.users[m] == 0,
    ),
)

CODES: dict[str, int] = {w.name: w.code for w in WINDOWS if w.code}
_CLOSES: dict[str, frozenset[int]] = {
    **{name: frozenset({c}) for name, c in CODES.items()},
    UNTIL_SCANNED_ANY: frozenset(CODES[n] for n in UNTIL_SCANNED),
}


def exempting(k: K, m: int, addr: int, word: int, pref: int) -> Window | None:
    """The window that excuses a walk of `pref` for leaving pte (m, addr) holding `word` unvisited, if any."""
    for w in WINDOWS:
        if w.applies(k, m, addr, word, pref):
            return w
    return None


def window_open(k: K, name: str, m: int, addr: int, pref: int) -> None:
    """Mark pte (m, addr) as in window `name`, mapping page `pref` (the caller holds its pte lock, and marks before it
    stores the pte: a walk that snapshots the new pte then finds the mark at its end, even in free mode). The code is
    stored last, so a reader never pairs it with the previous record's page."""
    rec = k.st.window[m, addr]
    rec[W_CODE] = 0
    if name == "move-before-scan" and _ksm(k, pref) and _own_item_on_node(k, m, pref):
        return  # a KSM page this mm merged itself moved: what move_vma's unmerge exists to prevent
    rec[W_MM] = k.mmc.ref_of(m)
    rec[W_PTE] = mk_pte(PTE_PRESENT, pref, 0)
    rec[W_CODE] = CODES[name]


def window_close(k: K, name: str, m: int, addr: int) -> None:
    """The window `name` of pte (m, addr) ends: its mark, if it is still this window's (or, for
    UNTIL_SCANNED_ANY, one of UNTIL_SCANNED's), goes."""
    rec = k.st.window[m, addr]
    code = int(rec[W_CODE])
    if code and code in _CLOSES[name]:
        rec[W_CODE] = 0
