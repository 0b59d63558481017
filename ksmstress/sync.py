"""Emulated kernel locks living in shared memory: spinlocks, mutexes, the mmap_sem rwsem and the page bit-lock.

A lock is one cell of shared arrays (owner task, reader count) identified by a lock id; each lock class owns a
contiguous range of ids, one per object (mm, page frame, anon_vma) or one for a global lock. Every acquire and
release is a scheduling point. Blocking goes through a `Waiter` (the controlled scheduler parks the task until
the release wakes it); the model code only ever calls `Locks`, so a free-running waiter with real cross-process
blocking can be dropped in without touching the model.

The classes and their 2.6.33 order (top of mm/rmap.c): ksm_thread_mutex -> mmap_sem -> page lock ->
anon_vma->lock -> page_table_lock; ksm_mmlist_lock is a leaf. Where the kernel takes a second lock of a class it
already holds, in an order fixed by other means, it says so with a lockdep subclass (down_write_nested,
spin_lock_nested(lock, SINGLE_DEPTH_NESTING)); the model calls `lock_nested` / `down_write_nested` at exactly
those places, and lockdep reports any other same-class nesting.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .arena import SharedBlock
from .failures import Failure

# lock classes, in the kernel's order
KSM_THREAD_MUTEX, MMAP_SEM, PAGE_LOCK, ANON_VMA_LOCK, PAGE_TABLE_LOCK, KSM_MMLIST_LOCK = range(6)
CLASS_NAMES = ("ksm_thread_mutex", "mmap_sem", "page_lock", "anon_vma->lock", "page_table_lock", "ksm_mmlist_lock")
SLEEPING = frozenset({KSM_THREAD_MUTEX, MMAP_SEM, PAGE_LOCK})
MAX_HELD = 16
READ, WRITE = 1, 2
NOBODY = -1  # lock.owner of a lock no task holds exclusively
SINGLE_DEPTH_NESTING = 1  # lockdep subclass of a second lock of a held class (include/linux/lockdep.h)


class Waiter(Protocol):
    """What a lock needs from the scheduler."""

    me: int

    guard: Any  # a context manager: the lock words' atomicity (no-op when one task runs at a time)

    def point(self, site: str, yielding: bool = False) -> None: ...

    def prepare_block(self, lid: int) -> None:
        """Under the guard: register the running task as waiting for `lid`."""

    def block(self, lid: int, site: str) -> None:
        """Outside the guard: sleep until a release of `lid` wakes the task."""

    def wake(self, lid: int) -> None:
        """Under the guard: wake every task waiting for `lid`."""

    def wake_task(self, tid: int) -> None:
        """Under the guard: wake task `tid` alone (an rwsem hands the lock to the waiter it wakes)."""

    def clock(self) -> tuple[int, str]: ...

    def label(self, tid: int) -> str: ...


class LockHooks(Protocol):
    """What detectors (lockdep) hear about lock traffic; `subclass` is the nesting annotation (0: none)."""

    def lock_acquiring(self, tid: int, lid: int, site: str, trylock: bool, subclass: int) -> None:
        """About to take a lock (before any wait): lockdep checks the order here."""

    def lock_acquired(self, tid: int, lid: int, mode: int, site: str, subclass: int) -> None: ...

    def lock_released(self, tid: int, lid: int, site: str) -> None: ...


class NoLockHooks:
    """Lock hooks that hear nothing (the base of the model's NoHooks)."""

    def lock_acquiring(self, tid: int, lid: int, site: str, trylock: bool, subclass: int) -> None:
        pass

    def lock_acquired(self, tid: int, lid: int, mode: int, site: str, subclass: int) -> None:
        pass

    def lock_released(self, tid: int, lid: int, site: str) -> None:
        pass


class LockSpace:
    """The shared lock words for one run: per-class id ranges, owners, readers and per-task held stacks."""

    def __init__(self, block: SharedBlock, counts: dict[int, int], ntasks: int) -> None:
        self.base: dict[int, int] = {}
        self.counts = counts
        n = 0
        for cls in range(len(CLASS_NAMES)):
            self.base[cls] = n
            n += counts.get(cls, 1)
        self.n = n
        self.ntasks = ntasks
        block.want("lock.owner", np.int64, n)
        block.want("lock.readers", np.int64, n)
        block.want("lock.held", np.int64, (ntasks, MAX_HELD))
        block.want("lock.nheld", np.int64, ntasks)
        # the rwsem wait queue (struct rwsem_waiter on sem->wait_list), kept per task: the rwsem a task is queued
        # on (-1: none), the mode it wants, its place in the queue (a run-wide ticket: FIFO) and whether a wake-up
        # granted it the lock; per rwsem, how many are queued (list_empty(&sem->wait_list))
        block.want("lock.q_lid", np.int64, ntasks)
        block.want("lock.q_mode", np.int64, ntasks)
        block.want("lock.q_ticket", np.int64, ntasks)
        block.want("lock.q_granted", np.int64, ntasks)
        block.want("lock.q_len", np.int64, n)
        block.want("lock.q_next", np.int64, 1)
        self._cls_of = np.zeros(n, dtype=np.int8)
        for cls, b in self.base.items():
            self._cls_of[b : b + counts.get(cls, 1)] = cls

    def bind(self, a: dict[str, np.ndarray]) -> None:
        self.owner = a["lock.owner"]
        self.readers = a["lock.readers"]
        self.held = a["lock.held"]
        self.nheld = a["lock.nheld"]
        self.owner[:] = NOBODY
        self.q_lid = a["lock.q_lid"]
        self.q_mode = a["lock.q_mode"]
        self.q_ticket = a["lock.q_ticket"]
        self.q_granted = a["lock.q_granted"]
        self.q_len = a["lock.q_len"]
        self.q_next = a["lock.q_next"]
        self.q_lid[:] = -1
        self._owner = memoryview(self.owner)  # hot path: plain ints
        self._readers = memoryview(self.readers)
        self._held = memoryview(self.held.reshape(-1))
        self._nheld = memoryview(self.nheld)

    def lid(self, cls: int, slot: int = 0) -> int:
        return self.base[cls] + slot

    def cls_of(self, lid: int) -> int:
        return int(self._cls_of[lid])

    def name(self, lid: int) -> str:
        cls = self.cls_of(lid)
        if self.counts.get(cls, 1) == 1:
            return CLASS_NAMES[cls]
        obj = {MMAP_SEM: "mm", PAGE_LOCK: "page", ANON_VMA_LOCK: "anon_vma", PAGE_TABLE_LOCK: "mm"}[cls]
        return f"{obj}[{lid - self.base[cls]}].{CLASS_NAMES[cls].split('->')[-1]}"

    def holders(self, lid: int) -> list[int]:
        return [t for t in range(self.ntasks) if lid in self.held[t, : int(self.nheld[t])].tolist()]

    def queue(self, lid: int) -> list[int]:
        """The tasks queued on rwsem `lid` and not yet granted it, first in line first."""
        if not int(self.q_len[lid]):
            return []
        waiting = [t for t in range(self.ntasks) if int(self.q_lid[t]) == lid and not int(self.q_granted[t])]
        return sorted(waiting, key=lambda t: int(self.q_ticket[t]))

    def held_by(self, tid: int) -> list[int]:
        return self.held[tid, : int(self.nheld[tid])].tolist()

    def any_held(self) -> list[tuple[int, int]]:
        return [(t, lid) for t in range(self.ntasks) for lid in self.held_by(t)]

    def explain(self, blocked: list[int], wait_of: np.ndarray, label: Any) -> tuple[str, dict[str, Any]]:
        """Build the wait-for graph of blocked tasks and name its cycle, with every blocked task's held locks."""
        edges: dict[int, list[int]] = {}
        for t in blocked:
            lid = int(wait_of[t])
            # a task waits for the lock's holders and, on an rwsem's FIFO queue, for every waiter ahead of it
            ahead = self.queue(lid) if lid >= 0 else []
            ahead = ahead[: ahead.index(t)] if t in ahead else []
            edges[t] = [h for h in self.holders(lid) + ahead if h != t] if lid >= 0 else []
        cycle: list[int] = []
        for start in blocked:
            path, seen, t = [start], {start}, start
            while edges.get(t):
                t = edges[t][0]
                if t in seen:
                    cycle = path[path.index(t) :] + [t]
                    break
                seen.add(t)
                path.append(t)
            if cycle:
                break
        parts = []
        for t in cycle[:-1] or blocked:
            lid = int(wait_of[t])
            held = ", ".join(self.name(x) for x in self.held_by(t)) or "nothing"
            ahead = self.queue(lid) if lid >= 0 else []
            queued = (f" ({'down_write' if int(self.q_mode[t]) == WRITE else 'down_read'} queued behind "
                      + (", ".join(f"{label(x)} ({'writer' if int(self.q_mode[x]) == WRITE else 'reader'})"
                                   for x in ahead[: ahead.index(t)]) or "no waiter")
                      + "; rwsem holders: " + (", ".join(label(h) for h in self.holders(lid)) or "none") + ")"
                      if t in ahead else "")
            parts.append(f"{label(t)} waits for {self.name(lid) if lid >= 0 else '?'}{queued} holding {held}")
        msg = ("wait-for cycle " + " -> ".join(label(t) for t in cycle) + ": " if cycle else "") + "; ".join(parts)
        details = {
            "cycle": [label(t) for t in cycle],
            "blocked": {
                label(t): {
                    "waits_for": self.name(int(wait_of[t])) if int(wait_of[t]) >= 0 else None,
                    "holds": [self.name(x) for x in self.held_by(t)],
                    "queued_behind": [label(x) for x in self._ahead(int(wait_of[t]), t)],
                }
                for t in blocked
            },
        }
        return msg, details


    def _ahead(self, lid: int, t: int) -> list[int]:
        q = self.queue(lid) if lid >= 0 else []
        return q[: q.index(t)] if t in q else []


class Locks:
    """The lock API the model calls. Each process has one, bound to its scheduler handle.

    The running task's held-lock stack is kept in a process-local list (only that task changes it) and mirrored
    into shared memory, where deadlock reports and the quiescence check read it. Beside it, `modes` keeps the
    mode each entry was taken in (READ for down_read, WRITE otherwise), so a lock rule that wants mmap_sem for
    write can tell a reader from a writer without touching shared memory.
    """

    def __init__(self, space: LockSpace, waiter: Waiter, hooks: LockHooks | None = None) -> None:
        self.s = space
        self.w = waiter
        self.hooks: LockHooks = hooks or NoLockHooks()
        self.mine: list[int] = []
        self.modes: list[int] = []  # modes[i]: the mode mine[i] was taken in (READ or WRITE)

    # -- bookkeeping --------------------------------------------------------------------------------------
    def _push(self, lid: int, mode: int, site: str, subclass: int) -> None:
        me = self.w.me
        mine = self.mine
        n = len(mine)
        if n >= MAX_HELD:
            raise Failure("bug-on", f"{self.w.label(me)} holds more than {MAX_HELD} locks at {site}")
        mine.append(lid)
        self.modes.append(mode)
        self.s._held[me * MAX_HELD + n] = lid
        self.s._nheld[me] = n + 1
        self.hooks.lock_acquired(me, lid, mode, site, subclass)

    def _pop(self, lid: int, site: str) -> None:
        me = self.w.me
        mine = self.mine
        if lid not in mine:
            step, who = self.w.clock()
            raise Failure(
                "bug-on",
                f"{who} releases {self.s.name(lid)} that it does not hold at {site} (step {step})",
                {"lock": self.s.name(lid), "site": site},
            )
        i = len(mine) - 1 - mine[::-1].index(lid)
        del mine[i]
        del self.modes[i]
        held, base = self.s._held, me * MAX_HELD
        for j in range(i, len(mine)):
            held[base + j] = mine[j]
        self.s._nheld[me] = len(mine)
        self.hooks.lock_released(me, lid, site)

    def holds(self, lid: int, mode: int = READ) -> bool:
        """Whether the running task holds `lid`; with mode WRITE, exclusively (an rwsem taken by down_read does
        not count). Process-local: no shared memory, no scheduling point."""
        mine = self.mine
        if lid not in mine:
            return False
        return mode != WRITE or self.modes[len(mine) - 1 - mine[::-1].index(lid)] == WRITE

    def _self_deadlock(self, lid: int, site: str) -> None:
        step, who = self.w.clock()
        raise Failure(
            "deadlock",
            f"{who} takes {self.s.name(lid)} which it already holds, at {site} (step {step}): AA deadlock",
            {"cycle": [who, who], "lock": self.s.name(lid), "site": site},
        )

    # -- exclusive: spinlocks, mutexes, page lock, down_write ------------------------------------------------
    # The check-and-take runs under the waiter's guard (a no-op when one task runs at a time, a real cross-process
    # mutex in free mode); a task that must wait registers under the guard and sleeps outside it, so a release
    # between the two cannot be lost.
    def _acquire(self, lid: int, site: str, shared: bool, subclass: int = 0) -> None:
        w = self.w
        w.point(site)
        self.hooks.lock_acquiring(w.me, lid, site, False, subclass)
        owner, readers = self.s._owner, self.s._readers
        while True:
            with w.guard:
                free = owner[lid] == NOBODY and (shared or readers[lid] == 0)
                if free:
                    if shared:
                        readers[lid] += 1
                    else:
                        owner[lid] = w.me
                elif owner[lid] != w.me:
                    w.prepare_block(lid)
            if free:
                self._push(lid, READ if shared else WRITE, site, subclass)
                return
            if owner[lid] == w.me:
                self._self_deadlock(lid, site)
            w.block(lid, site)

    def lock(self, lid: int, site: str) -> None:
        self._acquire(lid, site, False)

    def lock_nested(self, lid: int, site: str, subclass: int = SINGLE_DEPTH_NESTING) -> None:
        """spin_lock_nested / mutex_lock_nested: take a second lock of a class this task already holds, in an
        order the caller guarantees (lockdep then accepts the same-class nesting). The same lock traffic and
        scheduling points as `lock`."""
        self._acquire(lid, site, False, subclass)

    def trylock(self, lid: int, site: str) -> bool:
        w = self.w
        w.point(site)
        self.hooks.lock_acquiring(w.me, lid, site, True, 0)
        with w.guard:
            free = self.s._owner[lid] == NOBODY and self.s._readers[lid] == 0
            if free:
                self.s._owner[lid] = w.me
        if free:
            self._push(lid, WRITE, site, 0)
        return free

    def _check_owner(self, lid: int, site: str, verb: str) -> None:
        """A release by a task that does not own the lock exclusively is a BUG (the kernel's debug checks)."""
        w = self.w
        if self.s._owner[lid] != w.me:
            step, who = w.clock()
            raise Failure(
                "bug-on",
                f"{who} {verb} {self.s.name(lid)} owned by {w.label(int(self.s.owner[lid]))} at {site} (step {step})",
                {"lock": self.s.name(lid), "site": site},
            )

    def unlock(self, lid: int, site: str) -> None:
        w = self.w
        self._check_owner(lid, site, "unlocks")
        self._pop(lid, site)
        with w.guard:
            self.s._owner[lid] = NOBODY
            w.wake(lid)
        w.point(site)

    # -- the rwsem (mmap_sem): down_read / down_write / up_read / up_write -----------------------------------
    # 2.6.33's rwsem (lib/rwsem-spinlock.c; lib/rwsem.c gives x86 the same order): a down_read is granted at once
    # only when no writer holds the sem and nobody is queued, so a reader that finds a writer waiting queues
    # behind it; down_write only when the sem is free and nobody is queued. Waiters queue FIFO; a release hands
    # the sem on (__rwsem_do_wake): a writer at the head is granted and woken alone, else the run of readers at
    # the head is granted and woken together. The waker grants (owner / readers change at the wake, as
    # sem->activity does), so no later arrival can overtake a woken waiter.
    def _rwsem_acquire(self, lid: int, site: str, mode: int, subclass: int = 0) -> None:
        w = self.w
        s = self.s
        w.point(site)
        self.hooks.lock_acquiring(w.me, lid, site, False, subclass)
        owner, readers = s._owner, s._readers
        me = w.me
        with w.guard:
            free = owner[lid] == NOBODY and int(s.q_len[lid]) == 0 and (mode == READ or readers[lid] == 0)
            mine = owner[lid] == me  # decided under the guard: once queued, a releaser may grant it to us
            if free:
                if mode == READ:
                    readers[lid] += 1
                else:
                    owner[lid] = me
            elif not mine:
                s.q_lid[me] = lid
                s.q_mode[me] = mode
                s.q_granted[me] = 0
                s.q_ticket[me] = int(s.q_next[0])
                s.q_next[0] += 1
                s.q_len[lid] += 1
                w.prepare_block(lid)
        if not free:
            if mine:
                self._self_deadlock(lid, site)
            while not int(s.q_granted[me]):
                w.block(lid, site)
            with w.guard:
                s.q_lid[me] = -1
                s.q_granted[me] = 0
        self._push(lid, mode, site, subclass)

    def _rwsem_wake(self, lid: int) -> None:
        """__rwsem_do_wake, under the guard, with the sem released by the caller: hand it to the head waiter (a
        writer, alone, once no reader is active) or to the run of readers at the head (all together)."""
        s = self.s
        if not int(s.q_len[lid]):
            return
        q = s.queue(lid)
        if int(s.q_mode[q[0]]) == WRITE:
            if s._readers[lid] == 0 and s._owner[lid] == NOBODY:
                t = q[0]
                s._owner[lid] = t
                s.q_granted[t] = 1
                s.q_len[lid] -= 1
                self.w.wake_task(t)
            return
        if s._owner[lid] != NOBODY:
            return
        for t in q:
            if int(s.q_mode[t]) == WRITE:
                break
            s._readers[lid] += 1
            s.q_granted[t] = 1
            s.q_len[lid] -= 1
            self.w.wake_task(t)

    def down_read(self, lid: int, site: str) -> None:
        self._rwsem_acquire(lid, site, READ)

    def down_write(self, lid: int, site: str) -> None:
        self._rwsem_acquire(lid, site, WRITE)

    def down_read_trylock(self, lid: int, site: str) -> bool:
        """__down_read_trylock: granted only when no writer holds the sem and nobody is queued (a queued writer
        makes it fail, as it would make down_read wait); never queues."""
        w = self.w
        s = self.s
        w.point(site)
        self.hooks.lock_acquiring(w.me, lid, site, True, 0)
        with w.guard:
            free = s._owner[lid] == NOBODY and int(s.q_len[lid]) == 0
            if free:
                s._readers[lid] += 1
        if free:
            self._push(lid, READ, site, 0)
        return free

    def down_write_nested(self, lid: int, site: str, subclass: int = SINGLE_DEPTH_NESTING) -> None:
        """down_write_nested: a second rwsem of the class, in an order the caller guarantees (dup_mmap's child)."""
        self._rwsem_acquire(lid, site, WRITE, subclass)

    def up_read(self, lid: int, site: str) -> None:
        w = self.w
        readers = self.s._readers
        if readers[lid] <= 0:
            raise Failure("bug-on", f"up_read of {self.s.name(lid)} with no readers at {site}")
        self._pop(lid, site)
        with w.guard:
            readers[lid] -= 1
            if readers[lid] == 0:
                self._rwsem_wake(lid)
        w.point(site)

    def up_write(self, lid: int, site: str) -> None:
        w = self.w
        self._check_owner(lid, site, "up_writes")
        self._pop(lid, site)
        with w.guard:
            self.s._owner[lid] = NOBODY
            self._rwsem_wake(lid)
        w.point(site)
