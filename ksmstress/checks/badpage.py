"""`bad-page`: a page frame returned to the allocator in a state 2.6.33's free_pages_check refuses.

free_hot_cold_page (mm/page_alloc.c) clears PageMlocked (free_page_mlock: the `mlock` detector's business) and an
anon page's mapping, then calls free_pages_check, which reports "BUG: Bad page state" for a page still
mapcounted (page_mapcount != 0) or carrying a flag of PAGE_FLAGS_CHECK_AT_FREE. Of those the model has PG_locked
(the page lock: whoever holds it) and PG_swapcache. A page can reach the allocator that way only through a
reference dropped too early or a lock released too late, e.g. shrink_page_list freeing before __clear_page_locked.
Exact in free mode too: a task may take a page's lock only while it holds a reference, so no lock can be taken
on a page whose count is already 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..arena import ref_slot
from ..failures import Failure
from ..mm.state import PG_SWAPCACHE

if TYPE_CHECKING:
    from ..mm.state import K


def check_page_free(k: K, pref: int, site: str) -> None:
    """free_pages_check for the page `pref`, called as its count's last reference goes (before its flags are
    cleared)."""
    s = ref_slot(pref)
    pg = k.st.page
    why: list[str] = []
    holders = k.locks.s.holders(k.page_lock(s))
    if holders:
        why.append(f"PG_locked (its page lock held by {', '.join(k.ctl.label(t) for t in holders)})")
    if int(pg.flags[s]) & PG_SWAPCACHE:
        why.append("PG_swapcache (still in the swap cache, page->private naming its entry)")
    mapcount = int(pg.mapcount[s])
    if mapcount:
        why.append(f"page_mapcount {mapcount}")
    if not why:
        return
    step, who = k.ctl.clock()
    raise Failure(
        "bad-page",
        f"page[{s}] freed by {who} at step {step} ({site}) in a state free_pages_check refuses: "
        f"{'; '.join(why)}; its last changes: {pg.changes(s)}",
        {"page": s, "site": site, "step": step, "task": who, "bad": why},
    )
