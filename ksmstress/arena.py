"""The shared-memory arena: typed numpy tables over one anonymous shared mapping.

Every object slot carries a generation; every reference stores (slot, generation) packed in one int64. A
dereference whose generation no longer matches, or whose slot is free, is a KASAN-like `use-after-free` report
naming who freed the object, at which step and site, and who touched it. Freed slots wait in a quarantine of the
last `quarantine` frees before they can be reused, so a stale reference is caught even after the slot is
recycled (its generation differs). Freeing a slot that is not live is a `double-free`.

Every slot also remembers who allocated it, and a table whose counts can break (`TRACKED` columns: page _count and
_mapcount, ksm_refcount, ...) keeps a small history ring per object: the last `HIST` changes (step, task, site, new
value). The model writes it where it changes those counts, with plain memoryview stores (no scheduling point, no
lock in controlled mode), so a report can name the last changes of a broken count and the reference a leak kept.

Why one anonymous MAP_SHARED mapping rather than a /dev/shm segment: every process of a run is forked from the
runner, so inheritance is enough; the mapping can never be left behind in /dev/shm (not on SIGKILL, not on
Ctrl-C), and no resource tracker can unlink it under us (CPython bpo-39959).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import Any

import numpy as np

from . import callchain
from .failures import Failure

NULL = 0
FREE, LIVE, QUARANTINE = 0, 1, 2  # a slot's state
_SLOT_MASK = 0xFFFFFFFF

# One int64 cell per slot, read and written as plain Python ints: the type of a table's named columns.
Column = memoryview


def make_ref(slot: int, gen: int) -> int:
    """Pack (slot, generation) into one int64; 0 is NULL."""
    return (gen << 32) | (slot + 1)


def ref_slot(ref: int) -> int:
    return (ref & _SLOT_MASK) - 1


def ref_gen(ref: int) -> int:
    return ref >> 32


class SharedBlock:
    """Collects array specs, then maps them all in one anonymous shared mapping.

    Two phases because the mapping's size must be known before any array view exists.
    """

    def __init__(self) -> None:
        self._specs: list[tuple[str, np.dtype[Any], tuple[int, ...]]] = []
        self._arrays: dict[str, np.ndarray] = {}
        self._map: mmap.mmap | None = None

    def want(self, name: str, dtype: Any, shape: int | tuple[int, ...]) -> None:
        if isinstance(shape, int):
            shape = (shape,)
        self._specs.append((name, np.dtype(dtype), shape))

    def allocate(self) -> dict[str, np.ndarray]:
        size, offsets = 0, []
        for _name, dt, shape in self._specs:
            size = (size + 63) & ~63  # cache-line align every array
            offsets.append(size)
            size += dt.itemsize * int(np.prod(shape))
        self._map = mmap.mmap(-1, max(size, 64), flags=mmap.MAP_SHARED)
        for (name, dt, shape), off in zip(self._specs, offsets, strict=True):
            count = int(np.prod(shape))
            arr = np.frombuffer(self._map, dtype=dt, count=count, offset=off).reshape(shape)
            self._arrays[name] = arr
        return self._arrays


def _no_clock() -> tuple[int, str]:
    return 0, "runner"


def _no_now() -> tuple[int, int]:
    return 0, -1


class _NoRunner:
    me = -1

    @staticmethod
    def _publish() -> None:
        pass


def _no_label(tid: int) -> str:
    return "runner" if tid < 0 else f"task#{tid}"


HIST = 12  # changes kept per object in a history ring
NSITES = 1024  # distinct site strings a run can name in its history rings
SITE_LEN = 48
CHAIN_LEN = 160  # bytes of call chain kept per allocation and free (callchain.text(), cut at the front if longer)


class Stamp:
    """What a history entry is stamped with: the step and the running task (`now`, set by the model's context),
    and the site, interned in a shared table so an entry stores a small int instead of a string. One per arena,
    shared by every ring; `label` turns a task id back into its name for reports."""

    def __init__(self, block: SharedBlock) -> None:
        block.want("stamp.sites", f"S{SITE_LEN}", NSITES)
        block.want("stamp.nsites", np.int64, 1)
        self.now: Callable[[], tuple[int, int]] = _no_now
        # the hot path reads the step and the running task straight from the scheduler's cells (see use_clock)
        self.cells: Any = [0]
        self.cell = 0
        self.runner: Any = _NoRunner()
        self.label: Callable[[int], str] = _no_label
        self.guard: Any = NO_GUARD
        self._ids: dict[str, int] = {}  # this process's cache of the shared table

    def bind(self, a: dict[str, np.ndarray]) -> None:
        self.sites = a["stamp.sites"]
        self.nsites = a["stamp.nsites"]

    def use_clock(self, cells: Any, cell: int, runner: Any, label: Callable[[int], str]) -> None:
        """Stamp entries with `cells[cell]` (the step counter) and `runner.me` (the running task's id), read at
        each note: one process's view of a shared clock, no call on the hot path."""
        self.cells, self.cell, self.runner, self.label = cells, cell, runner, label
        self.now = lambda: (cells[cell], runner.me)

    def site_id(self, site: str) -> int:
        sid = self._ids.get(site)
        if sid is None:
            sid = self._intern(site)
        return sid

    def _intern(self, site: str) -> int:
        """First sight of `site` in this process: find it in the shared table, or append it (under the guard: in
        free mode another process may be appending too). A full table files every new site under its last cell."""
        raw = site.encode()[:SITE_LEN]
        with self.guard:
            n = int(self.nsites[0])
            hits = np.flatnonzero(self.sites[:n] == raw)
            if hits.size:
                sid = int(hits[0])
            elif n < NSITES - 1:
                self.sites[n] = raw
                self.nsites[0] = n + 1
                sid = n
            else:
                self.sites[NSITES - 1] = b"(more sites than the table holds)"
                sid = NSITES - 1
        self._ids[site] = sid
        return sid

    def site(self, sid: int) -> str:
        return self.sites[sid].decode(errors="replace")


class Ring:
    """A history ring per key: the last `depth` entries (step, task, site, field, value, arg), oldest overwritten.

    Stored flat in one int64 array and written through a memoryview (plain ints: the hot path). `field` says which
    count changed (an index into the owner's names), `arg` is an owner-defined detail (the rmap_item whose
    reference it is, a pte's write bit...)."""

    NCOL = 6

    def __init__(self, block: SharedBlock, name: str, nkeys: int, depth: int, stamp: Stamp) -> None:
        self.name = name
        self.depth = depth
        self.stamp = stamp
        block.want(f"{name}.pos", np.int64, nkeys)
        block.want(f"{name}.e", np.int64, (nkeys * depth, self.NCOL))

    def bind(self, a: dict[str, np.ndarray]) -> None:
        self.pos = a[f"{self.name}.pos"]
        self.e = a[f"{self.name}.e"]
        self._pos = memoryview(self.pos)
        self._e = memoryview(self.e.reshape(-1))

    def note(self, key: int, field: int, value: int, site: str, arg: int = 0) -> None:
        st = self.stamp
        pos = self._pos
        p = pos[key]
        pos[key] = p + 1
        b = (key * self.depth + p % self.depth) * 6
        e = self._e
        st.runner._publish()  # the running task may keep the step in a working copy (fastpoint): write it back
        e[b] = st.cells[st.cell]
        e[b + 1] = st.runner.me
        sid = st._ids.get(site)
        e[b + 2] = st._intern(site) if sid is None else sid
        e[b + 3] = field
        e[b + 4] = value
        e[b + 5] = arg

    def clear(self, key: int) -> None:
        self._pos[key] = 0

    def entries(self, key: int) -> list[tuple[int, int, str, int, int, int]]:
        """(step, task, site, field, value, arg), oldest first."""
        p = int(self.pos[key])
        out = []
        for j in range(max(0, p - self.depth), p):
            step, task, sid, field, value, arg = (int(x) for x in self.e[key * self.depth + j % self.depth])
            out.append((step, task, self.stamp.site(sid), field, value, arg))
        return out


def _chain_bytes() -> bytes:
    """The running task's call chain for an allocation or free record; a long one keeps its innermost end."""
    raw = callchain.text().encode()
    return raw if len(raw) <= CHAIN_LEN else b"..." + raw[-(CHAIN_LEN - 3):]


class NoGuard:
    """The guard when one task runs at a time: allocation needs no lock. Free mode puts a real mutex here."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


NO_GUARD = NoGuard()


class Table:
    """A table of one kernel object type: int64 columns plus generation/state bookkeeping.

    A subclass names its columns as class annotations of type `Column` (`mapcount: Column`); each becomes an
    attribute indexed by slot, so the model reads field by field as the kernel does (`page->_mapcount` is
    `k.pg.mapcount[s]`). A Column is a memoryview over the shared array: plain Python ints, several times cheaper
    per scalar access than numpy scalars (the model's hot path). `t.c[name]` is the same column as a numpy array,
    for vector work in detectors. The model reaches an object through `deref`, which is the KASAN check. Slots
    below `reserved` are permanent (e.g. list heads) and never allocated.
    """

    FIELDS: tuple[str, ...] = ()  # the subclass's Column annotations, in order (filled by __init_subclass__)
    TRACKED: tuple[str, ...] = ()  # columns whose changes the history ring records (counts that can break)
    ARG: str = ""  # what a history entry's arg names (a table's name: its slot + 1), if anything

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        own = cls.__dict__.get("__annotations__", {})
        cls.FIELDS = tuple(n for n, t in own.items() if t in ("Column", Column))
        clash = [n for n in cls.FIELDS if hasattr(Table, n)]
        if clash:
            raise TypeError(f"{cls.__name__}: column names {clash} shadow Table attributes")

    def __init__(
        self,
        block: SharedBlock,
        name: str,
        capacity: int,
        quarantine: int,
        reserved: int = 0,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.quarantine = quarantine
        self.reserved = reserved
        block.want(f"{name}.state", np.int8, capacity)
        block.want(f"{name}.gen", np.int64, capacity)
        block.want(f"{name}.free_order", np.int64, capacity)
        block.want(f"{name}.freed_step", np.int64, capacity)
        block.want(f"{name}.freed_site", "S40", capacity)
        block.want(f"{name}.freed_by", "S24", capacity)
        block.want(f"{name}.freed_chain", f"S{CHAIN_LEN}", capacity)
        block.want(f"{name}.nfreed", np.int64, 1)  # frees so far: the quarantine's clock
        # who allocated the object in the slot, and the object before it (a stale reference's object, once reused)
        block.want(f"{name}.alloc_step", np.int64, (capacity, 2))
        block.want(f"{name}.alloc_gen", np.int64, (capacity, 2))
        block.want(f"{name}.alloc_site", "S40", (capacity, 2))
        block.want(f"{name}.alloc_by", "S24", (capacity, 2))
        block.want(f"{name}.alloc_chain", f"S{CHAIN_LEN}", (capacity, 2))
        for f in self.FIELDS:
            block.want(f"{name}.{f}", np.int64, capacity)
        self.c: dict[str, np.ndarray] = {}
        self.clock: Callable[[], tuple[int, str]] = _no_clock
        self.guard: Any = NO_GUARD
        self.hist: Ring | None = None
        self.stamp: Stamp | None = None

    def use_stamp(self, stamp: Stamp, block: SharedBlock) -> None:
        """Give the table its history ring (if it tracks any count) and the labels its reports use."""
        self.stamp = stamp
        if self.TRACKED:
            self.hist = Ring(block, f"{self.name}.hist", self.capacity, HIST, stamp)

    def bind(self, arrays: dict[str, np.ndarray]) -> None:
        n = self.name
        self.state = arrays[f"{n}.state"]
        self.gen = arrays[f"{n}.gen"]
        self.free_order = arrays[f"{n}.free_order"]
        self.freed_step = arrays[f"{n}.freed_step"]
        self.freed_site = arrays[f"{n}.freed_site"]
        self.freed_by = arrays[f"{n}.freed_by"]
        self.freed_chain = arrays[f"{n}.freed_chain"]
        self.nfreed = arrays[f"{n}.nfreed"]
        self.alloc_step = arrays[f"{n}.alloc_step"]
        self.alloc_gen = arrays[f"{n}.alloc_gen"]
        self.alloc_site = arrays[f"{n}.alloc_site"]
        self.alloc_by = arrays[f"{n}.alloc_by"]
        self.alloc_chain = arrays[f"{n}.alloc_chain"]
        if self.hist is not None:
            self.hist.bind(arrays)
        self.c = {f: arrays[f"{n}.{f}"] for f in self.FIELDS}
        for f, a in self.c.items():
            setattr(self, f, memoryview(a))  # the named Column
        self._state = memoryview(self.state)  # deref's hot path: plain ints
        self._gen = memoryview(self.gen)
        for s in range(self.reserved):
            self.state[s] = LIVE
            self.gen[s] = 1

    # -- allocation -----------------------------------------------------------------------------------
    def alloc(self, site: str) -> int:
        """Allocate a zeroed slot and return its reference; oldest-quarantined slots ripen first."""
        with self.guard:
            return self._alloc(site)

    def _alloc(self, site: str) -> int:
        st = self.state
        nfreed = int(self.nfreed[0])
        quar = np.flatnonzero(st == QUARANTINE)
        if quar.size:
            ripe = quar[self.free_order[quar] < nfreed - self.quarantine]
            st[ripe] = FREE
        free = np.flatnonzero(st[self.reserved :] == FREE)
        if free.size:
            slot = int(free[0]) + self.reserved
        else:
            quar = np.flatnonzero(st == QUARANTINE)
            if not quar.size:
                step, who = self.clock()
                raise Failure(
                    "arena-exhausted",
                    f"table {self.name} is full ({self.capacity} slots) at {site}; raise its size in [arena]",
                    {"table": self.name, "site": site, "step": step, "task": who},
                )
            slot = int(quar[np.argmin(self.free_order[quar])])  # quarantine is best-effort under pressure
        gen = int(self.gen[slot]) + 1
        self.gen[slot] = gen
        st[slot] = LIVE
        for col in self.c.values():
            col[slot] = 0
        step, who = self.clock()
        for col in (self.alloc_step, self.alloc_gen, self.alloc_site, self.alloc_by, self.alloc_chain):
            col[slot, 1] = col[slot, 0]
        self.alloc_chain[slot, 0] = _chain_bytes()
        self.alloc_step[slot, 0] = step
        self.alloc_gen[slot, 0] = gen
        self.alloc_site[slot, 0] = site.encode()[:40]
        self.alloc_by[slot, 0] = who.encode()[:24]
        if self.hist is not None:
            self.hist.clear(slot)
        return make_ref(slot, gen)

    def free(self, ref: int, site: str) -> None:
        """Free the object `ref` names: a `double-free` if it is not live, else it enters the quarantine."""
        with self.guard:
            self._free(ref, site)

    def _free(self, ref: int, site: str) -> None:
        slot, gen = ref_slot(ref), ref_gen(ref)
        if ref == NULL:
            self.oops(site, "free")
        if not (0 <= slot < self.capacity) or self.state[slot] != LIVE or int(self.gen[slot]) != gen:
            step, who = self.clock()
            raise Failure(
                "double-free",
                f"{self.name}[{slot}] freed twice: by {who} at step {step} ({site}); "
                f"first freed by {self._freed_text(slot)}",
                {
                    "object": f"{self.name}[{slot}]",
                    "site": site,
                    "step": step,
                    "task": who,
                    "first_free": self._freed_info(slot),
                },
            )
        step, who = self.clock()
        self.state[slot] = QUARANTINE
        self.free_order[slot] = self.nfreed[0]
        self.nfreed[0] += 1
        self.freed_step[slot] = step
        self.freed_site[slot] = site.encode()[:40]
        self.freed_by[slot] = who.encode()[:24]
        self.freed_chain[slot] = _chain_bytes()

    # -- access ---------------------------------------------------------------------------------------
    def deref(self, ref: int, site: str) -> int:
        """Check that `ref` still names a live object and return its slot: the KASAN check."""
        slot = (ref & _SLOT_MASK) - 1
        if slot < 0:
            self.oops(site, "dereference")
        if self._state[slot] == LIVE and self._gen[slot] == (ref >> 32):
            return slot
        step, who = self.clock()
        reused = self.state[slot] == LIVE
        alloc = self.alloc_info(slot, ref >> 32)
        changes = [] if reused else self.history(slot)
        raise Failure(
            "use-after-free",
            f"{self.name}[{slot}] touched by {who} at step {step} in {site} after it was freed by "
            f"{self._freed_text(slot)}" + (" (slot since reused)" if reused else "")
            + f"; it was allocated {self._alloc_text(alloc)}"
            + (f"; its last changes: {self.history_text(changes)}" if changes else ""),
            {
                "object": f"{self.name}[{slot}]",
                "generation": ref >> 32,
                "site": site,
                "step": step,
                "task": who,
                "freed": self._freed_info(slot),
                "allocated": alloc,
                "history": changes,
                "reused": bool(reused),
            },
        )

    def is_live(self, ref: int) -> bool:
        """Whether `ref` names a live object; never reports (detectors and snapshots use it)."""
        slot = (ref & _SLOT_MASK) - 1
        return 0 <= slot < self.capacity and self._state[slot] == LIVE and self._gen[slot] == ref >> 32

    def live_mask(self, refs: np.ndarray) -> np.ndarray:
        """is_live over an array of references (0 is not live)."""
        slots = (refs & _SLOT_MASK) - 1
        ok = (slots >= 0) & (slots < self.capacity)
        s = np.where(ok, slots, 0)
        return ok & (self.state[s] == LIVE) & (self.gen[s] == refs >> 32)

    # -- history: the last changes of the tracked counts --------------------------------------------------
    def note(self, slot: int, field: int, value: int, site: str, arg: int = 0) -> None:
        """Record that TRACKED column `field` of the object in `slot` became `value` at `site`."""
        hist = self.hist
        if hist is not None:
            hist.note(slot, field, value, site, arg)

    def history(self, slot: int) -> list[dict[str, Any]]:
        """The object's last recorded changes, oldest first."""
        if self.hist is None or self.stamp is None:
            return []
        label = self.stamp.label
        return [
            {
                "step": step,
                "task": label(task),
                "site": site,
                "field": self.TRACKED[field] if 0 <= field < len(self.TRACKED) else str(field),
                "value": value,
                **({self.ARG: f"{self.ARG}[{arg - 1}]"} if self.ARG and arg else {}),
            }
            for step, task, site, field, value, arg in self.hist.entries(slot)
        ]

    def changes(self, slot: int) -> str:
        """The object's last changes as one line, for a report raised where a count breaks."""
        return self.history_text(self.history(slot)) or "none recorded"

    def history_text(self, changes: list[dict[str, Any]]) -> str:
        return "; ".join(
            f"step {c['step']} {c['task']} {c['site']}: {c['field']}={c['value']}"
            + (f" ({c[self.ARG]})" if self.ARG and self.ARG in c else "")
            for c in changes
        )

    def alloc_info(self, slot: int, gen: int | None = None) -> dict[str, Any]:
        """Who allocated the object of generation `gen` in `slot` (default: the current one), if still known."""
        for j in (0, 1):
            if gen is None or int(self.alloc_gen[slot, j]) == gen:
                info = {
                    "step": int(self.alloc_step[slot, j]),
                    "site": self.alloc_site[slot, j].decode(),
                    "task": self.alloc_by[slot, j].decode(),
                }
                chain = self.alloc_chain[slot, j].decode(errors="replace")
                return {**info, "chain": chain} if chain else info
        return {}

    @staticmethod
    def _alloc_text(info: dict[str, Any]) -> str:
        if not info:
            return "(no longer recorded: the slot was reused since)"
        return f"by {info['task']} at step {info['step']} ({info['site']})"

    def slot_live(self, slot: int) -> bool:
        """Whether `slot` holds a live object, whatever its generation: a raw read, for objects the kernel never
        frees (struct page: a pfn stays valid, only what it holds changes)."""
        return self._state[slot] == LIVE

    def ref_of(self, slot: int) -> int:
        return make_ref(slot, int(self.gen[slot]))

    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self.state[self.reserved :] == LIVE) + self.reserved

    # -- reporting ------------------------------------------------------------------------------------
    def _freed_info(self, slot: int) -> dict[str, Any]:
        info = {
            "step": int(self.freed_step[slot]),
            "site": self.freed_site[slot].decode(),
            "task": self.freed_by[slot].decode(),
        }
        chain = self.freed_chain[slot].decode(errors="replace")
        return {**info, "chain": chain} if chain else info

    def _freed_text(self, slot: int) -> str:
        i = self._freed_info(slot)
        return f"{i['task']} at step {i['step']} ({i['site']})"

    def oops(self, site: str, what: str) -> None:
        """A NULL dereference: the kernel would oops here."""
        step, who = self.clock()
        raise Failure(
            "oops",
            f"NULL {self.name} {what} by {who} at step {step} in {site}",
            {"table": self.name, "site": site, "step": step, "task": who},
        )
