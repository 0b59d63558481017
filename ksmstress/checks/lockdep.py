"""`lockdep`: the lock-class order of every acquisition in the run, checked against 2.6.33's documented order.

Order (top of mm/rmap.c): ksm_thread_mutex -> mmap_sem -> page lock -> anon_vma->lock -> page_table_lock, with
ksm_mmlist_lock a leaf. Checked at the acquire attempt, before the task can block, so an inversion is reported
the first time it is seen even if no deadlock follows (as lockdep does). Also: a sleeping lock (mutex, rwsem,
page lock) taken while a spinlock is held, the same class taken twice without a nesting annotation (a *_nested
acquire with a subclass other than the held lock's, as the kernel's lockdep keys classes by subclass), and any
lock still held when a task exits. As in Linux, a trylock adds no dependency (it never waits) and a trylock of a
sleeping lock is allowed under a spinlock. The first acquisition that established each class-to-class edge is
kept in shared memory, so a report shows both chains: the one that inverts and the one it contradicts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arena import SharedBlock
from ..failures import Failure
from ..sync import CLASS_NAMES, KSM_MMLIST_LOCK, SLEEPING, LockSpace

NCLS = len(CLASS_NAMES)
RANK = {cls: cls for cls in range(NCLS)}  # classes are numbered in the kernel's order; ksm_mmlist_lock is a leaf


class LockdepState:
    """The run's order graph: one cell per class pair, with the chain that first added the edge."""

    def __init__(self, block: SharedBlock) -> None:
        block.want("lockdep.edge_step", np.int64, (NCLS, NCLS))
        block.want("lockdep.edge_chain", "S160", (NCLS, NCLS))

    def bind(self, a: dict[str, np.ndarray]) -> None:
        self.edge_step = a["lockdep.edge_step"]
        self.edge_chain = a["lockdep.edge_chain"]
        self.edge_step[:] = -1


class Lockdep:
    """Per-process view: the running task's held stack with sites; the order graph is shared."""

    def __init__(self, state: LockdepState, space: LockSpace, clock: Any) -> None:
        self.state = state
        self.space = space
        self.clock = clock
        self.held: list[tuple[int, str, int]] = []  # (lock id, site, subclass)

    def _chain(self, extra: tuple[int, str] | None = None) -> str:
        items = [(lid, site) for lid, site, _sub in self.held] + ([extra] if extra else [])
        return " -> ".join(f"{self.space.name(lid)}@{site}" for lid, site in items)

    def _fail(self, msg: str, **details: Any) -> None:
        step, who = self.clock()
        raise Failure("lockdep", f"{who} at step {step}: {msg}", {"task": who, "step": step, **details})

    def acquiring(self, lid: int, site: str, trylock: bool, subclass: int) -> None:
        cls = self.space.cls_of(lid)
        if trylock:
            return
        for hlid, hsite, hsub in self.held:
            hcls = self.space.cls_of(hlid)
            if hcls == cls:
                if subclass != hsub:  # annotated: a second lock of the class, in an order fixed elsewhere
                    continue
                self._fail(
                    f"{CLASS_NAMES[cls]} taken at {site} while already holding {self.space.name(hlid)} "
                    f"(taken at {hsite}) without a nesting annotation",
                    chain=self._chain((lid, site)),
                )
            if hcls == KSM_MMLIST_LOCK or RANK[hcls] > RANK[cls] and cls != KSM_MMLIST_LOCK:
                first = self.state.edge_step[cls, hcls]
                other = (
                    f"; the order {CLASS_NAMES[cls]} -> {CLASS_NAMES[hcls]} was established at step {first} by "
                    f"{self.state.edge_chain[cls, hcls].decode()}"
                    if first >= 0
                    else f"; 2.6.33 orders {CLASS_NAMES[cls]} before {CLASS_NAMES[hcls]}"
                )
                self._fail(
                    f"lock order inversion: {CLASS_NAMES[hcls]} -> {CLASS_NAMES[cls]} "
                    f"({self._chain((lid, site))}){other}",
                    chain=self._chain((lid, site)),
                    established=self.state.edge_chain[cls, hcls].decode() if first >= 0 else None,
                )
        for hlid, hsite, _sub in self.held:
            if self.space.cls_of(hlid) not in SLEEPING and cls in SLEEPING:
                self._fail(
                    f"sleeping lock {self.space.name(lid)} taken at {site} while holding spinlock "
                    f"{self.space.name(hlid)} (taken at {hsite})",
                    chain=self._chain((lid, site)),
                )
        step, who = self.clock()
        for hlid, hsite, _sub in self.held:
            hcls = self.space.cls_of(hlid)
            if hcls != cls and self.state.edge_step[hcls, cls] < 0:
                self.state.edge_step[hcls, cls] = step
                self.state.edge_chain[hcls, cls] = (
                    f"{who}: {self.space.name(hlid)}@{hsite} -> {self.space.name(lid)}@{site}".encode()[:160]
                )

    def acquired(self, lid: int, site: str, subclass: int) -> None:
        self.held.append((lid, site, subclass))

    def released(self, lid: int) -> None:
        for i in range(len(self.held) - 1, -1, -1):
            if self.held[i][0] == lid:
                del self.held[i]
                return

    def freeing(self, lids: tuple[int, ...], what: str, site: str) -> None:
        """debug_check_no_locks_freed: the freeing task holds no lock inside the memory it frees ("held lock
        freed!"). Other tasks may: anon_vma's cache is SLAB_DESTROY_BY_RCU, so page_lock_anon_vma can still hold a
        freed anon_vma's lock, and lockdep checks only the current task."""
        for lid, hsite, _sub in self.held:
            if lid in lids:
                self._fail(f"held lock freed: {what} freed at {site} while this task holds its "
                           f"{self.space.name(lid)} (taken at {hsite})", chain=self._chain(), lock=self.space.name(lid))

    def might_sleep(self, site: str, schedules: bool = False) -> None:
        """__might_sleep (CONFIG_DEBUG_SPINLOCK_SLEEP) at a point that may sleep (cond_resched, a GFP_KERNEL
        allocation), and schedule_debug at one that does (a yield): the task holds no spinlock, or it would sleep
        in atomic context. Sleeping locks held are fine, as in the kernel (rcu_read_lock is not modelled as a
        lock, so it is not checked)."""
        for hlid, hsite, _sub in self.held:
            if self.space.cls_of(hlid) not in SLEEPING:
                what = "scheduling while atomic" if schedules else "sleeping function called from invalid context"
                self._fail(f"BUG: {what} at {site}: this task holds spinlock {self.space.name(hlid)} (taken at "
                           f"{hsite})", chain=self._chain(), lock=self.space.name(hlid))

    def task_exit(self) -> None:
        if self.held:
            self._fail(f"task exits holding {self._chain()}", held=[self.space.name(x) for x, _, _ in self.held])
