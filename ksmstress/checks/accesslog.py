"""The access log behind interleaving coverage: which task touched which shared object, where, how, holding what.

Why: coverage-guided search (ksmstress.explore) steers schedules toward interleavings not seen yet, and needs to
know, per run, the ordered pairs of conflicting accesses that ran without a common lock (checks.pairs). The model
already names its shared accesses for the detectors: `lock_rule` (data a kernel lock rule covers, with the lock
and object), `pte_stored`, and `shared_access` (atomics, lockless lookups, flag bits, page bytes: data no lock
serialises); `atomic_add` and `spoint_unless` (a lockless read of data a lock guards) sit in the kernel context.
A recorder wraps exactly those, on this run's hooks object and kernel context only (instance attributes set
before the task processes fork), so a run without coverage pays nothing: the same calls reach the same code.

Each access is one row of a shared int64 log in the arena: (step, task, site, object, sub, write, lockset). One
task runs at a time in controlled mode, so the append order is the run's order and needs no lock; the log is
read back by the runner after the run (checks.pairs). An object is the data one lock guards (`obj` = the lock id,
`sub` = a pte's address where the rule names one), or one cell of a table column or one page frame
(`obj` = namespace << 32 | slot, namespaces numbered from 1). A page's PG_KSM / mapping and an anon_vma's list
are the data of their lock (page lock, anon_vma->lock), whichever way they are reached, so a lockless reader
meets the locked writer. The lockset is interned in a shared table (its id per row).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..arena import SharedBlock
from ..sched.control import STEP
from ..sync import ANON_VMA_LOCK, MAX_HELD, PAGE_LOCK

if TYPE_CHECKING:
    from ..mm.state import K

# columns of a log row
C_STEP, C_TASK, C_SITE, C_OBJ, C_SUB, C_WRITE, C_LOCKSET = range(7)
NCOL = 8
DEFAULT_CAPACITY = 1 << 18  # rows (16 MiB of address space, touched only as it fills); a fuller log drops the rest
MAX_LOCKSETS = 4096
NS_SHIFT = 32
UNNAMED = (0xFFFF, -1)
# table columns that are the data of a per-object lock, not objects of their own (mm/state.py's comments)
GUARDED = {
    ("page", "flags"): PAGE_LOCK,
    ("page", "mapping"): PAGE_LOCK,
    ("anon_vma", "head"): ANON_VMA_LOCK,
    ("anon_vma", "tail"): ANON_VMA_LOCK,
}
ROWS, DROPPED, LOCKSETS = 0, 1, 2  # cells of cov.n


class AccessLogState:
    """The shared log: rows, the count of rows and of rows dropped once full, and the interned locksets."""

    def __init__(self, block: SharedBlock, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        block.want("cov.log", np.int64, (capacity, NCOL))
        block.want("cov.n", np.int64, 4)
        block.want("cov.locksets", np.int64, (MAX_LOCKSETS, MAX_HELD + 1))

    def bind(self, a: dict[str, np.ndarray]) -> None:
        self.log = a["cov.log"]
        self.n = a["cov.n"]
        self.locksets = a["cov.locksets"]
        self.n[:] = 0
        self.locksets[0, 0] = 0  # lockset 0: nothing held
        self.n[LOCKSETS] = 1

    # -- reading (the runner, after the run) --------------------------------------------------------------------
    def rows(self) -> np.ndarray:
        """The recorded rows, in the order the accesses ran (a copy)."""
        return np.array(self.log[: int(self.n[ROWS])], copy=True)

    @property
    def dropped(self) -> int:
        return int(self.n[DROPPED])

    def lockset_table(self) -> list[frozenset[int]]:
        """Every interned lockset, by id."""
        out = []
        for row in self.locksets[: int(self.n[LOCKSETS])]:
            out.append(frozenset(int(x) for x in row[1 : 1 + int(row[0])]))
        return out


def object_namespaces(k: K) -> dict[int, tuple[int, int]]:
    """id(column or array) -> (namespace, lock class base or -1): every table column, the page frames and the ksm
    globals (any other array is namespace UNNAMED: one object per index, never seen in the model today). A column
    that is the data of a per-object lock maps to that lock (namespace 0, the lock class's first id)."""
    out: dict[int, tuple[int, int]] = {}
    ns = 1
    for t in k.st.tables:
        for f in t.FIELDS:
            cls = GUARDED.get((t.name, f))
            out[id(getattr(t, f))] = (0, k.st.locks.base[cls]) if cls is not None else (ns, -1)
            ns += 1
    for arr in (k.st.frames, k.st.g):  # page bytes by frame; the ksm globals by cell (G_MM_LIVE, ...)
        out[id(arr)] = (ns, -1)
        ns += 1
    return out


class AccessRecorder:
    """Appends this process's accesses to the shared log; `install` wraps the model's access points with it."""

    def __init__(self, state: AccessLogState, k: K) -> None:
        self.state = state
        self.k = k
        self.namespaces = object_namespaces(k)
        self._lockset_ids: dict[tuple[int, ...], int] = {(): 0}

    def lockset_id(self, held: tuple[int, ...]) -> int:
        """The shared id of the lockset `held` (interned on first sight in this process: a scan of the table)."""
        lsid = self._lockset_ids.get(held)
        if lsid is not None:
            return lsid
        st = self.state
        n = int(st.n[LOCKSETS])
        row = np.zeros(MAX_HELD + 1, dtype=np.int64)
        row[0] = len(held)
        row[1 : 1 + len(held)] = held
        hits = np.flatnonzero((st.locksets[:n] == row).all(axis=1))
        if hits.size:
            lsid = int(hits[0])
        elif n < MAX_LOCKSETS:
            st.locksets[n] = row
            st.n[LOCKSETS] = n + 1
            lsid = n
        else:  # never seen in practice: a few hundred locksets per run. Treated as holding nothing (more pairs)
            lsid = 0
        self._lockset_ids[held] = lsid
        return lsid

    def make_record(self) -> Callable[[int, int, int, str], None]:
        """record(obj, sub, write, site): the hot path of a coverage run, as a closure over plain views."""
        st, k = self.state, self.k
        ctl = k.ctl
        log = memoryview(st.log.reshape(-1))
        cnt = memoryview(st.n)
        cap = st.capacity
        site_id = k.st.stamp.site_id
        locks = k.locks
        lockset_id = self.lockset_id
        ids = self._lockset_ids

        def record(obj: int, sub: int, write: int, site: str) -> None:
            n = cnt[ROWS]
            if n >= cap:
                cnt[DROPPED] += 1
                return
            cnt[ROWS] = n + 1
            b = n * NCOL
            ctl._publish()  # fastpoint keeps the step in a working copy
            held = tuple(locks.mine)
            lsid = ids.get(held)
            log[b] = ctl._meta[STEP]
            log[b + 1] = ctl.me
            log[b + 2] = site_id(site)
            log[b + 3] = obj
            log[b + 4] = sub
            log[b + 5] = 1 if write else 0
            log[b + 6] = lockset_id(held) if lsid is None else lsid

        return record

    def install(self, k: K) -> None:
        """Wrap the access points of `k` (its hooks object and context, in this process and every task forked
        from it): lock_rule, pte_stored and shared_access on the hooks, atomic_add and spoint_unless on k."""
        record = self.make_record()
        hooks = k.hooks
        nss = self.namespaces
        ptl = k.ptl
        orig_rule, orig_pte, orig_atomic, orig_unless = hooks.lock_rule, hooks.pte_stored, k.atomic_add, k.spoint_unless

        def lock_rule(k: Any, rule: str, lid: int, write: int, obj: int, site: str, sub: int = -1) -> None:
            record(lid, sub, write, site)
            orig_rule(k, rule, lid, write, obj, site, sub)

        def pte_stored(k: Any, m: int, addr: int, kind: int, ref: int, write: int, site: str) -> None:
            record(ptl(m), addr, 1, site)
            orig_pte(k, m, addr, kind, ref, write, site)

        def shared_access(k: Any, data: Any, index: int, write: int, site: str) -> None:
            ns, base = nss.get(id(data), UNNAMED)
            record(base + index if ns == 0 else ns << NS_SHIFT | index, -1, write, site)

        def atomic_add(view: Any, i: int, delta: int, site: str = "atomic_add", arg: int = 0) -> int:
            v = orig_atomic(view, i, delta, site, arg)  # its scheduling point comes first: record the access after
            ns, base = nss.get(id(view), UNNAMED)
            record(base + i if ns == 0 else ns << NS_SHIFT | i, -1, 1, site)
            return v

        def spoint_unless(lid: int, site: str) -> None:
            # a lockless read of data `lid` guards (the writes at these sites are named by lock_rule beside them)
            orig_unless(lid, site)
            record(lid, -1, 0, site)

        hooks.lock_rule = lock_rule  # instance attributes: they shadow the class's, for this run's objects only
        hooks.pte_stored = pte_stored
        hooks.shared_access = shared_access
        k.atomic_add = atomic_add  # type: ignore[method-assign]
        k.spoint_unless = spoint_unless
