"""The oracle of an mm's vma list (2.6.33's validate_mm and browse_rb under CONFIG_DEBUG_MM_RB): wherever the
model changes the list under mmap_sem for write, its vmas are live, belong to the mm, are in address order, and
none is empty, reaches past the address space, or overlaps the next, and there are no more than the mm's
max_map_count (arena.max_vmas; browse_rb counts them). Computed from the tables, never from the
path that changed them: mmap, munmap's splits and detach, mremap's in-place resize and fork's copy are all held
to the same list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..arena import ref_slot
from ..failures import Failure

if TYPE_CHECKING:
    from ..mm.state import K


def check_vma_list(k: K, m: int, site: str) -> None:
    """BUG (a `bug-on`) unless mm slot `m`'s vma list is sorted, non-overlapping and inside the address space.
    The caller holds the mm's mmap_sem for write, so nothing else changes the list meanwhile."""
    vm, vpages = k.vm, k.st.sz.vpages
    prev_end, prev, vref, seen = 0, -1, int(k.mmc.mmap[m]), 0
    while vref:
        v = vm.deref(vref, "validate_mm")
        start, end = int(vm.start[v]), int(vm.end[v])
        why = ""
        if ref_slot(int(vm.mm[v])) != m:
            why = f"vma[{v}] on mm[{m}]'s list belongs to mm[{ref_slot(int(vm.mm[v]))}]"
        elif not 0 < start < end <= vpages:
            why = f"vma[{v}] spans [{start},{end}), not a non-empty range inside [1, {vpages}]"
        elif start < prev_end:
            why = f"vma[{v}] [{start},{end}) starts before vma[{prev}] ends at {prev_end} (out of order or overlapping)"
        seen += 1
        if not why and seen > k.st.sz.max_vmas:
            why = (f"more than arena.max_vmas = {k.st.sz.max_vmas} vmas on the list (a path passed "
                   "max_map_count without its check, or the list has a cycle)")
        if why:
            step, who = k.ctl.clock()
            raise Failure("bug-on", f"validate_mm of mm[{m}] after {site} by {who} at step {step}: {why}",
                          k.fail_details(site=site, mm=m))
        prev_end, prev, vref = end, v, int(vm.next[v])
