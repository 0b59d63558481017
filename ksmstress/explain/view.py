"""The interleaving of a failing run as columns, one per task that matters (Lincheck's layout), for 120 columns.

The tasks that matter are the failing task and those that touched the failing object or took, held or waited for
its lock; their rows are the object's allocation, free, count changes and accesses, every lock operation on the
object's lock, (near the failure: within NEAR steps, among their last NEAR_LOCKS) their other lock operations and
the failing task's accesses to the objects that led it there, each with the kernel call chain at that point.
Everything else in between folds into one line ("... 37 steps of mm#3"). A row that follows a switch to another
task is marked `>>`, with `(preempting X)` below it when the switch took the CPU from a task that could have gone
on.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .record import Event

WIDTH = 120
STEP_W = 6
MAX_COLUMNS = 4
NEAR = 40  # steps before the failure in which every lock operation of a task that matters is shown
# ... if it is also among their last NEAR_LOCKS lock operations: a task at `yields` granularity (a shrunk run's
# ksmd, say) takes dozens of locks within one step
NEAR_LOCKS = 40
LEAD = 2  # steps before the failure in which the failing task's accesses to any object are shown
LEAD_USES = 12  # ... if among its last LEAD_USES accesses (a coarse task makes many in one step)
MAX_ROWS = 400  # beyond this the oldest rows are folded (a report must stay readable)
OBJECT = re.compile(r"\b(anon_vma|page|rmap_item|stable_node|vma|mm_struct|mm_slot|swap)\[\d+\]")


@dataclass
class Row:
    """One line of the explanation: an event of a task that matters, or a fold of steps in between."""

    step: int
    task: str = ""
    event: str = ""
    chain: str = ""
    switch: bool = False
    preempting: str = ""
    folded: dict[str, int] = field(default_factory=dict)  # task -> steps folded into this row

    def to_dict(self) -> dict[str, Any]:
        if self.folded:
            return {"step": self.step, "folded": self.folded}
        d: dict[str, Any] = {"step": self.step, "task": self.task, "event": self.event, "chain": self.chain}
        if self.switch:
            d["switch"] = True
        if self.preempting:
            d["preempting"] = self.preempting
        return d


@dataclass
class Explanation:
    obj: str
    tasks: list[str]
    rows: list[Row]
    failure: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"object": self.obj, "tasks": self.tasks, "rows": [r.to_dict() for r in self.rows]}


def failing_object(failure: dict[str, Any]) -> str:
    """The object a failure is about (`anon_vma[1]`, `page[6]`), or "" when it names none."""
    d = failure.get("details") or {}
    if isinstance(d.get("object"), str):
        return d["object"]
    if isinstance(d.get("page"), int):
        return f"page[{d['page']}]"
    m = OBJECT.search(failure.get("message", ""))
    return m.group(0) if m else ""


def _text(e: Event) -> str:
    if e.kind == "alloc":
        return f"alloc {e.obj}"
    if e.kind == "free":
        return f"FREE {e.obj}"
    if e.kind == "count":
        return f"{e.obj}.{e.field} = {e.value}"
    if e.kind == "use":
        return f"touch {e.obj} ({e.site})"
    if e.kind == "acquiring":
        return f"wait {e.lock}"
    if e.kind == "acquired":
        return f"lock {e.lock}"
    if e.kind == "released":
        return f"unlock {e.lock}"
    return e.kind


def _owners(events: list[Event]) -> dict[int, str]:
    """step -> the task that ran after that step's decision."""
    return {e.step: e.next for e in events if e.kind == "pick"}


def explain(events: list[Event], failure: dict[str, Any]) -> Explanation:
    obj = failing_object(failure)
    details = failure.get("details") or {}
    fail_step = int(details.get("step", events[-1].step if events else 0))
    fail_task = str(details.get("task") or (events[-1].task if events else ""))
    about = (lambda e: e.obj == obj) if obj else (lambda e: False)
    its_lock = (lambda e: e.lock.startswith(obj + ".")) if obj else (lambda e: False)
    involved: Counter[str] = Counter()
    for e in events:
        if e.kind != "pick" and (about(e) or its_lock(e)) and e.task != "runner":
            involved[e.task] = max(involved[e.task], e.step + 1)
    tasks = [fail_task] if fail_task else []
    for t, _ in sorted(involved.items(), key=lambda kv: -kv[1]):
        if t not in tasks and len(tasks) < MAX_COLUMNS:
            tasks.append(t)
    if len(tasks) < 2:  # nothing else names the object: the task that ran last before the failing one
        for e in reversed(events):
            if e.kind == "pick" and e.task not in tasks and e.task != "runner" and len(tasks) < 2:
                tasks.append(e.task)
    start = min((e.step for e in events if about(e) and e.kind == "alloc"), default=0)
    picked: list[Event] = []
    last_use: dict[str, str] = {}
    lock_ops = [i for i, e in enumerate(events)
                if e.kind in ("acquired", "released") and e.task in tasks and e.step >= start]
    recent = set(lock_ops[-NEAR_LOCKS:])
    uses = [i for i, e in enumerate(events) if e.kind == "use" and e.task == fail_task and e.step >= start]
    recent |= set(uses[-LEAD_USES:])
    for i, e in enumerate(events):
        if e.step < start or e.task not in tasks or e.kind == "pick":
            continue
        keep = (
            about(e)
            or its_lock(e)
            or (e.kind in ("acquired", "released") and i in recent and e.step >= fail_step - NEAR)
            # what led the failing task there: the objects it reached the failing one through (an rmap_item...)
            or (e.kind == "use" and e.task == fail_task and e.step >= fail_step - LEAD and i in recent)
        )
        if e.kind == "acquiring":  # shown only if the task had to wait (no acquired of it right after)
            nxt = events[i + 1] if i + 1 < len(events) else None
            keep = keep and not (nxt and nxt.kind == "acquired" and nxt.lock == e.lock and nxt.task == e.task)
        if e.kind == "use":  # one row per stretch of accesses from the same place
            key = f"{e.chain}|{e.site}"
            keep = keep and last_use.get(e.task) != key
            if keep:
                last_use[e.task] = key
        elif e.task in last_use and keep:
            last_use.pop(e.task)
        if keep:
            picked.append(e)
    rows = _with_folds(picked, _owners(events), tasks, start, fail_step, events)
    rows.append(
        Row(
            fail_step,
            fail_task,
            f"{failure.get('class', 'failure').upper()} {obj}".strip(),
            str(details.get("chain", "")),
            switch=bool(rows) and rows[-1].task != fail_task,
        )
    )
    if len(rows) > MAX_ROWS:
        cut = rows[: len(rows) - MAX_ROWS]
        folded: Counter[str] = Counter()
        for r in cut:
            folded.update(r.folded or {r.task: 1})
        rows = [Row(cut[0].step, folded=dict(folded)), *rows[len(cut) :]]
    return Explanation(obj, tasks, rows, failure)


def _with_folds(
    picked: list[Event], owners: dict[int, str], tasks: list[str], start: int, end: int, events: list[Event]
) -> list[Row]:
    preempt = {e.step: e.task for e in events if e.kind == "pick" and e.preempted}
    rows: list[Row] = []
    prev_step, prev_task = start, ""
    for e in picked:
        gap = Counter(owners.get(s, "") for s in range(prev_step + 1, e.step))
        gap.pop("", None)
        if gap and rows:
            rows.append(Row(prev_step + 1, folded=dict(gap)))
        switch = bool(prev_task) and e.task != prev_task
        rows.append(
            Row(
                e.step,
                e.task,
                _text(e),
                e.chain,
                switch,
                preempt.get(e.step, "") if switch and preempt.get(e.step) != e.task else "",
            )
        )
        prev_step, prev_task = e.step, e.task
    gap = Counter(owners.get(s, "") for s in range(prev_step + 1, end))
    gap.pop("", None)
    if gap:
        rows.append(Row(prev_step + 1, folded=dict(gap)))
    return rows


def _left_cut(s: str, w: int) -> str:
    """The end of `s` in `w` characters: a call chain is read from its innermost function."""
    return s if len(s) <= w else "..." + s[-(w - 3) :]


def render(x: Explanation, width: int = WIDTH) -> list[str]:
    """The explanation as lines of at most `width` characters."""
    n = max(1, len(x.tasks))
    col = (width - STEP_W - 3 * n) // n
    lines = [f"{'step':>{STEP_W}}" + "".join(f" | {t:<{col}}" for t in x.tasks)]
    lines.append("-" * STEP_W + ("-+-" + "-" * col) * n)
    last_chain: dict[str, str] = {}
    for r in x.rows:
        if r.folded:
            byn = sorted(r.folded.items(), key=lambda kv: -kv[1])
            parts = ", ".join(
                f"{v} {'step' if v == 1 else 'steps'} of {k}" if i == 0 else f"{v} of {k}"
                for i, (k, v) in enumerate(byn)
            )
            lines.append(_left_cut(f"{'':>{STEP_W}}   ... {parts}", width))
            continue
        if r.task not in x.tasks:
            continue
        j = x.tasks.index(r.task)
        mark = ">> " if r.switch else ""
        cells = [""] * n
        cells[j] = (mark + r.event)[:col]
        lines.append(f"{r.step:>{STEP_W}}" + "".join(f" | {c:<{col}}" for c in cells).rstrip())
        if r.preempting:
            cells[j] = f"   (preempting {r.preempting})"[:col]
            lines.append(f"{'':>{STEP_W}}" + "".join(f" | {c:<{col}}" for c in cells).rstrip())
        if r.chain and last_chain.get(r.task) != r.chain:
            cells = [""] * n
            cells[j] = "  in " + _left_cut(r.chain, col - 5)
            lines.append(f"{'':>{STEP_W}}" + "".join(f" | {c:<{col}}" for c in cells).rstrip())
            last_chain[r.task] = r.chain
    return [line[:width] for line in lines]
