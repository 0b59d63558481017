"""When the world last moved: the bookkeeping behind the merge-completeness oracle (checks.completeness).

KSM promises to merge identical pages of mergeable areas, but only pages that stay still: a page written since
ksmd's last visit is volatile (its checksum changed), a page someone else holds a reference on is refused by
write_protect_page (`page_mapcount + 1 + swapped != page_count`), a page whose lock is held is skipped by
try_to_merge_one_page's trylock_page, and an unstable or stable tree search gives up for the whole page when it
meets a tree page that moved (get_mergeable_page fails: the pte changed, the vma went, its mm is exiting) or a
stale stable node (get_ksm_page prunes it and stable_tree_search returns NULL). Every such excuse is another
task's doing, or a stale node's. So the oracle asks a narrower question: has the world stood still for long enough?

The generation here is "the full scans completed (G_SEQNR) when something last moved". What moves it:
- every lock attempt by a task not holding ksm_thread_mutex (bumped at `lock_acquiring`). Everything the other
  tasks do to what ksmd reads happens under a lock they take: a store from user space or a pte store (the pte
  lock), a fault, COW, swap-in, fork, munmap, mmap and madvise (mmap_sem), exit (its pte locks, ksm_mmlist_lock),
  reclaim's isolation (it takes the page lock right after get_page_unless_zero, even when the trylock fails) and
  its unmap walk. Tasks holding ksm_thread_mutex are ksmd (or run=2) at work: their stores are the merging itself.
- at every quiescent point (`sample`), the states that delay a merge while nobody takes a lock: a lock still held
  by any task (what it does under the lock happens after its attempt), a page with references beyond its ptes
  (reclaim between isolation and putback, a fault's extra reference, a swap-in's fresh page), an mm that is
  exiting (mm_users already 0, so get_mergeable_page fails on its items before its pte locks are taken), a
  swap-in in flight, a stable node pruned since the last look (the search that met it gave up), and ksm_run
  other than 1 (run=2 also resets full_scans: `run_store` bumps after the reset).
Sampling at every quiescent point makes the acquire-time bump enough: whatever a task does under a lock held
across a quiescent point is covered by that point's sample, and anything between two points lies in the scan
in progress, which the count of complete scans after the bump already excludes (ksm_do_scan ends its batch when
a full scan completes, so every full scan ends at a quiescent point).

Controlled mode only: in free mode the other tasks run while ksmd looks, so no picture it reads is still.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..arena import NO_GUARD, SharedBlock
from ..mm.state import G_RUN, G_SEQNR, G_SWAPIN_HELD, KSM_RUN_MERGE, PG_SWAPCACHE
from ..sync import KSM_THREAD_MUTEX, NOBODY

if TYPE_CHECKING:
    from ..mm.state import K, State
    from ..sched.control import Control

# cells of the shared block
D_SEQNR, D_STEP, D_TASK, D_SITE, D_BUMPS, D_NFREED, D_CHECKS = range(7)
NCELLS = 8


class DisturbanceState:
    """The shared cells: when the world last moved (full_scans, step, task, site), bumps so far, the stable_node
    frees seen at the last sample, and how many completeness checks found the world settled."""

    def __init__(self, block: SharedBlock) -> None:
        block.want("settle.cells", np.int64, NCELLS)

    def bind(self, a: dict[str, np.ndarray]) -> None:
        self.cells = a["settle.cells"]
        self.cells[:] = 0
        self.cells[D_TASK] = -1


class Disturbance:
    """One process's handle on the shared cells (each task's copy of the detectors has one)."""

    def __init__(self, state: DisturbanceState, st: State, ctl: Control) -> None:
        self.state = state
        self.st = st
        self.ctl = ctl
        self.active = ctl.guard is NO_GUARD  # controlled mode (and solo kernels): one task runs at a time
        self._c = memoryview(state.cells)
        self._g = memoryview(st.g)
        self._owner = st.locks._owner
        self.mutex = st.locks.lid(KSM_THREAD_MUTEX)

    # -- bumps ----------------------------------------------------------------------------------------------
    def lock_acquiring(self, tid: int, lid: int, site: str) -> None:
        """A task attempts a lock: unless it is ksmd's (or run=2's) work under ksm_thread_mutex, the world moves."""
        if not self.active or lid == self.mutex or self._owner[self.mutex] == tid:
            return
        self.bump(tid, site)

    def bump(self, tid: int, site: str) -> None:
        c = self._c
        c[D_SEQNR] = self._g[G_SEQNR]
        c[D_STEP] = self.ctl.steps
        c[D_TASK] = tid
        c[D_SITE] = self.st.stamp.site_id(site)
        c[D_BUMPS] += 1

    def sample(self, k: K, where: str) -> str | None:
        """At a quiescent point (the caller holds ksm_thread_mutex): bump for every state that delays a merge
        without a lock attempt showing it; returns what is in flight (one of a few fixed phrases, so the site
        table of the history rings stays small), or None."""
        st = self.st
        nfreed = int(st.stable_node.nfreed[0])
        pruned = nfreed != self._c[D_NFREED]
        self._c[D_NFREED] = nfreed
        why = "a stale stable node pruned" if pruned else self._in_flight(k)
        if why is not None:
            self.bump(k.ctl.me, f"{where}: {why}")
        return why

    def _in_flight(self, k: K) -> str | None:
        """What another task is in the middle of, cheapest test first."""
        st = self.st
        owners = st.locks.owner
        held = (owners != NOBODY) | (st.locks.readers > 0)
        held[self.mutex] = bool(held[self.mutex]) and int(owners[self.mutex]) != k.ctl.me
        if held.any():
            return "a lock held"
        if int(st.g[G_RUN]) != KSM_RUN_MERGE:
            return "ksm_run not 1"
        if int(st.g[G_SWAPIN_HELD]):
            return "a swap-cache add or delete in flight"
        mm = st.mm
        mms = mm.live_slots()
        if (mm.c["users"][mms] == 0).any():
            return "an mm exiting"
        pg = st.page
        live = pg.live_slots()
        swapped = (pg.c["flags"][live] & PG_SWAPCACHE) != 0  # the swap cache's reference (write_protect_page's)
        if (pg.c["count"][live] != pg.c["mapcount"][live] + swapped).any():
            return "a page referenced beyond its ptes"
        return None

    # -- reading --------------------------------------------------------------------------------------------
    def settled_scans(self) -> int:
        """Full scans completed entirely after the last disturbance (the scan in progress then may have met it):
        negative when full_scans went back (run=2) since."""
        return int(self._g[G_SEQNR]) - int(self._c[D_SEQNR]) - 1

    def last(self) -> dict[str, Any]:
        """The last disturbance: full_scans then, step, task, site."""
        c = self._c
        tid = int(c[D_TASK])
        return {
            "full_scans": int(c[D_SEQNR]),
            "step": int(c[D_STEP]),
            "task": self.ctl.label(tid) if tid >= 0 else "nobody",
            "site": self.st.stamp.site(int(c[D_SITE])) if c[D_BUMPS] else "the start of the run",
        }

    def count_check(self) -> None:
        self._c[D_CHECKS] += 1

    @property
    def checks(self) -> int:
        """How many times the world was found settled and the completeness check ran."""
        return int(self._c[D_CHECKS])
