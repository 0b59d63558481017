"""The shared-memory arena: typed numpy tables over one anonymous shared mapping.

Every object slot carries a generation; every reference stores (slot, generation) packed in one int64. A
dereference whose generation no longer matches, or whose slot is free, is a KASAN-like `use-after-free` report
naming who freed the object, at which step and site, and who touched it. Freed slots wait in a quarantine of the
last `quarantine` frees before they can be reused, so a stale reference is caught even after the slot is
recycled (its generation differs). Freeing a slot that is not live is a `double-free`.

Why one anonymous MAP_SHARED mapping rather than a /dev/shm segment: every process of a run is forked from the
runner, so inheritance is enough; the mapping can never be left behind in /dev/shm (not on SIGKILL, not on
Ctrl-C), and no resource tracker can unlink it under us (CPython bpo-39959).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import Any

import numpy as np

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
        block.want(f"{name}.nfreed", np.int64, 1)  # frees so far: the quarantine's clock
        for f in self.FIELDS:
            block.want(f"{name}.{f}", np.int64, capacity)
        self.c: dict[str, np.ndarray] = {}
        self.clock: Callable[[], tuple[int, str]] = _no_clock
        self.guard: Any = NO_GUARD

    def bind(self, arrays: dict[str, np.ndarray]) -> None:
        n = self.name
        self.state = arrays[f"{n}.state"]
        self.gen = arrays[f"{n}.gen"]
        self.free_order = arrays[f"{n}.free_order"]
        self.freed_step = arrays[f"{n}.freed_step"]
        self.freed_site = arrays[f"{n}.freed_site"]
        self.freed_by = arrays[f"{n}.freed_by"]
        self.nfreed = arrays[f"{n}.nfreed"]
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
        return make_ref(slot, gen)

    def free(self, ref: int, site: str) -> None:
        """Free the object `ref` names: a `double-free` if it is not live, else it enters the quarantine."""
        with self.guard:
            self._free(ref, site)

    def _free(self, ref: int, site: str) -> None:
        slot, gen = ref_slot(ref), ref_gen(ref)
        if ref == NULL:
            self._oops(site, "free")
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

    # -- access ---------------------------------------------------------------------------------------
    def deref(self, ref: int, site: str) -> int:
        """Check that `ref` still names a live object and return its slot: the KASAN check."""
        slot = (ref & _SLOT_MASK) - 1
        if slot < 0:
            self._oops(site, "dereference")
        if self._state[slot] == LIVE and self._gen[slot] == (ref >> 32):
            return slot
        step, who = self.clock()
        reused = self.state[slot] == LIVE
        raise Failure(
            "use-after-free",
            f"{self.name}[{slot}] touched by {who} at step {step} in {site} after it was freed by "
            f"{self._freed_text(slot)}" + (" (slot since reused)" if reused else ""),
            {
                "object": f"{self.name}[{slot}]",
                "generation": ref >> 32,
                "site": site,
                "step": step,
                "task": who,
                "freed": self._freed_info(slot),
                "reused": bool(reused),
            },
        )

    def is_live(self, ref: int) -> bool:
        """Whether `ref` names a live object; never reports (detectors and snapshots use it)."""
        slot = (ref & _SLOT_MASK) - 1
        return 0 <= slot < self.capacity and self.state[slot] == LIVE and int(self.gen[slot]) == ref >> 32

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
        return {
            "step": int(self.freed_step[slot]),
            "site": self.freed_site[slot].decode(),
            "task": self.freed_by[slot].decode(),
        }

    def _freed_text(self, slot: int) -> str:
        i = self._freed_info(slot)
        return f"{i['task']} at step {i['step']} ({i['site']})"

    def _oops(self, site: str, what: str) -> None:
        step, who = self.clock()
        raise Failure(
            "oops",
            f"NULL {self.name} {what} by {who} at step {step} in {site}",
            {"table": self.name, "site": site, "step": step, "task": who},
        )
