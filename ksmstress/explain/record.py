"""Per-step events of one controlled replay: scheduling decisions, lock traffic, allocations, frees, count changes
and object accesses, each stamped with the step, the task and its kernel call chain.

Why a file and instance patches: only an explained replay pays for events. `Recorder.install` (given to run_one
as `observe`) wraps the methods of that run's own objects (its strategy, its lock hooks, its tables and history
rings), never a class, so every other run is untouched. Each task process appends JSON lines to one unnamed file
inherited from the runner; the processes share its offset and exactly one task runs at a time, so the file holds
the events in the order they happened.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import callchain
from ..arena import ref_slot
from ..mm.state import K, State
from ..sched.control import STEP, Control


@dataclass
class Event:
    """One thing a task did. `kind`: pick (a scheduling decision: `next`, `runnable`, `yielding`), acquiring,
    acquired, released (`lock`), alloc, free, count (`field`, `value`), use (an access to `obj`), failure."""

    step: int
    task: str
    kind: str
    chain: str
    obj: str = ""
    lock: str = ""
    site: str = ""
    field: str = ""
    value: int = 0
    next: str = ""
    runnable: tuple[str, ...] = ()
    yielding: bool = False
    preempted: bool = False  # a pick that took the CPU from a task that could have gone on

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ("", 0, (), False) or k in ("step", "task", "kind")}


class Recorder:
    """Collects the events of one run (install it with run_one(observe=rec.install); read them with events())."""

    def __init__(self, uses: bool = True) -> None:
        self.uses = uses  # record every successful dereference (the most numerous event)
        self.fd = unnamed_file()
        self.labels: dict[int, str] = {}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the task side: writing ----------------------------------------------------------------------------
    def install(self, st: State, k: K, ctl: Control) -> None:
        fd = self.fd
        meta = ctl._meta
        label = ctl.label

        def emit(kind: str, **kw: Any) -> None:
            d = {"s": int(meta[STEP]), "t": label(ctl.me), "k": kind, "c": callchain.text(), **kw}
            os.write(fd, (json.dumps(d, separators=(",", ":")) + "\n").encode())

        self._wrap_strategy(ctl, emit, label)
        self._wrap_locks(k, st, emit)
        for t in st.tables:
            self._wrap_table(t, emit)

    @staticmethod
    def _wrap_strategy(ctl: Control, emit: Callable[..., None], label: Callable[[int], str]) -> None:
        inner = ctl.strategy
        pick = inner.pick

        def recorded(c: Control, runnable: list[int], current: int, step: int, yielding: bool) -> int:
            nxt = pick(c, runnable, current, step, yielding)
            pre = nxt != current and current in runnable and not yielding
            emit("pick", n=label(nxt), r=[label(t) for t in runnable], y=bool(yielding), p=pre, st=step)
            return nxt

        class _Recorded:
            name = getattr(inner, "name", "replay")

            def __getattr__(self, attr: str) -> Any:
                return getattr(inner, attr)

            pick = staticmethod(recorded)

        ctl.strategy = _Recorded()  # type: ignore[assignment]
        ctl._pick = recorded

    @staticmethod
    def _wrap_locks(k: K, st: State, emit: Callable[..., None]) -> None:
        hooks = k.locks.hooks
        name = st.locks.name

        class _Hooks:
            def __getattr__(self, attr: str) -> Any:
                return getattr(hooks, attr)

            def lock_acquiring(self, tid: int, lid: int, site: str, trylock: bool, subclass: int) -> None:
                emit("acquiring", l=name(lid), site=site)
                hooks.lock_acquiring(tid, lid, site, trylock, subclass)

            def lock_acquired(self, tid: int, lid: int, mode: int, site: str, subclass: int) -> None:
                hooks.lock_acquired(tid, lid, mode, site, subclass)
                emit("acquired", l=name(lid), site=site)

            def lock_released(self, tid: int, lid: int, site: str) -> None:
                hooks.lock_released(tid, lid, site)
                emit("released", l=name(lid), site=site)

        k.locks.hooks = _Hooks()  # type: ignore[assignment]

    def _wrap_table(self, t: Any, emit: Callable[..., None]) -> None:
        tname = t.name
        alloc, free, deref = t._alloc, t._free, t.deref

        def _alloc(site: str) -> int:
            ref = alloc(site)
            emit("alloc", o=f"{tname}[{ref_slot(ref)}]", site=site)
            return ref

        def _free(ref: int, site: str) -> None:
            emit("free", o=f"{tname}[{ref_slot(ref)}]", site=site)
            free(ref, site)

        def _deref(ref: int, site: str) -> int:
            emit("use", o=f"{tname}[{ref_slot(ref)}]", site=site)
            return deref(ref, site)

        t._alloc, t._free = _alloc, _free
        if self.uses:
            t.deref = _deref
        if t.hist is not None:
            ring, names = t.hist, t.TRACKED
            note = ring.note

            def _note(key: int, field: int, value: int, site: str, arg: int = 0) -> None:
                note(key, field, value, site, arg)
                f = names[field] if 0 <= field < len(names) else str(field)
                emit("count", o=f"{tname}[{key}]", f=f, v=int(value), site=site)

            ring.note = _note

    # -- the runner side: reading --------------------------------------------------------------------------
    def events(self) -> list[Event]:
        size = os.fstat(self.fd).st_size
        raw = os.pread(self.fd, size, 0).decode(errors="replace") if size else ""
        out = []
        for line in raw.splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:  # a task killed mid-write (never in a controlled run): skip it
                continue
            out.append(
                Event(
                    step=d.get("st", d["s"]),
                    task=d["t"],
                    kind=d["k"],
                    chain=d.get("c", ""),
                    obj=d.get("o", ""),
                    lock=d.get("l", ""),
                    site=d.get("site", ""),
                    field=d.get("f", ""),
                    value=d.get("v", 0),
                    next=d.get("n", ""),
                    runnable=tuple(d.get("r", ())),
                    yielding=d.get("y", False),
                    preempted=d.get("p", False),
                )
            )
        return out


def unnamed_file() -> int:
    """A file with no name anywhere (O_TMPFILE where the file system allows it), so nothing outlives the run."""
    try:
        return os.open(tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError:
        fd, name = tempfile.mkstemp(prefix="ksmstress-events-")
        os.unlink(name)
        return fd
