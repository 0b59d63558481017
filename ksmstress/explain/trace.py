"""A replay's events as Chrome trace-event JSON, which the Perfetto UI and chrome://tracing open.

One track (thread) per task; a duration slice per kernel function on it, from the call chains the events carry
(a function that ran between two events of its task without one of its own is not shown); a lock hold is an async
slice (holds are not nested: hand-over-hand locking overlaps them); instant events mark allocations, frees, count
changes and the failure; a flow arrow joins each release of a lock to its next acquisition. Time is the event's
position in the run (1 us per event), not wall time: a controlled run has no meaningful clock, only an order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .record import Event

PID = 1
TICK = 10  # trace microseconds per event: room to order the closes, opens and instants of one event


def chrome_trace(events: list[Event], failure: dict[str, Any] | None, title: str) -> dict[str, Any]:
    tasks: dict[str, int] = {}
    out: list[dict[str, Any]] = [{"ph": "M", "name": "process_name", "pid": PID, "tid": 0, "args": {"name": title}}]

    def tid(task: str) -> int:
        if task not in tasks:
            tasks[task] = len(tasks) + 1
            out.append({"ph": "M", "name": "thread_name", "pid": PID, "tid": tasks[task], "args": {"name": task}})
        return tasks[task]

    stacks: dict[str, list[str]] = {}
    holds: dict[tuple[str, str], int] = {}  # (task, lock) -> async id of the open hold
    released: dict[str, int] = {}  # lock -> flow id of its last release, waiting for the next acquire
    dangling: set[int] = set()  # flows that never landed
    next_id = 1
    ts = 0

    def put(ph: str, name: str, cat: str, t: int, at: int, **kw: Any) -> None:
        out.append({"ph": ph, "name": name, "cat": cat, "pid": PID, "tid": t, "ts": at, **kw})

    for i, e in enumerate(events):
        if e.task == "runner":
            continue
        ts = i * TICK
        t = tid(e.task)
        # function slices: close what the chain no longer has, open what it gained
        have, want = stacks.setdefault(e.task, []), e.chain.split(" > ") if e.chain else []
        common = 0
        while common < min(len(have), len(want)) and have[common] == want[common]:
            common += 1
        for name in reversed(have[common:]):
            put("E", name, "kernel", t, ts)
        for name in want[common:]:
            put("B", name, "kernel", t, ts + 1)
        stacks[e.task] = want
        at = ts + 2
        args = {"step": e.step, "chain": e.chain}
        if e.kind == "acquired":
            holds[(e.task, e.lock)] = next_id
            put("b", e.lock, "lock", t, at, id=next_id, args=args)
            next_id += 1
            flow = released.pop(e.lock, None)
            if flow is not None and want:  # lands inside this task's slice
                put("f", "handoff", "lock", t, at, id=flow, bp="e")
            elif flow is not None:
                dangling.add(flow)
        elif e.kind == "released" and (e.task, e.lock) in holds:
            put("e", e.lock, "lock", t, at, id=holds.pop((e.task, e.lock)))
            if want:  # a flow must start inside a slice of its thread
                if e.lock in released:  # a second reader let go first: only the last release hands over
                    dangling.add(released[e.lock])
                released[e.lock] = next_id
                put("s", "handoff", "lock", t, at, id=next_id)
                next_id += 1
        elif e.kind in ("alloc", "free", "count"):
            name = {"alloc": f"alloc {e.obj}", "free": f"free {e.obj}", "count": f"{e.obj}.{e.field}={e.value}"}
            put("i", name[e.kind], e.kind, t, at, s="t", args={**args, "site": e.site})
    end = ts + TICK
    if failure:
        d = failure.get("details") or {}
        who = str(d.get("task") or (events[-1].task if events else "runner"))
        args = {"message": failure.get("message", ""), "chain": d.get("chain", "")}
        put("i", str(failure.get("class")), "failure", tid(who), end, s="g", args=args)
    for (task, lock), hid in holds.items():  # still held when the run stopped
        put("e", lock, "lock", tid(task), end + 1, id=hid)
    dangling.update(released.values())  # a release nobody acquired after: drop the arrow that went nowhere
    out = [x for x in out if not (x["ph"] == "s" and x.get("id") in dangling)]
    for task, stack in stacks.items():
        for name in reversed(stack):
            put("E", name, "kernel", tid(task), end + 2)
    return {"traceEvents": out, "displayTimeUnit": "ns", "otherData": {"clock": "event order, 1 us per event"}}


def write_trace(path: str | Path, trace: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(trace, separators=(",", ":")) + "\n")
