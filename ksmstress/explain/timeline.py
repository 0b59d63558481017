"""A failing run drawn as swimlanes in SVG: readable in any browser, small enough to attach to a bug report.

One lane per task (the tasks the explanation keeps: the failing one and those that touched the object or its
lock); x is the step. A bar on a lane is a lock held (the failing object's lock filled darker); a thin band shows
when the task had the CPU; the allocation, the free and the failing access are marked and the free and the access
joined by a line. Only the stretch from the object's allocation (or the last 400 steps) to the failure is drawn.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from .record import Event
from .view import explain

LANE_H = 46
LEFT = 110
WIDTH = 1100
TOP = 44
MAX_SPAN = 400


def svg(events: list[Event], failure: dict[str, Any], title: str) -> str:
    x = explain(events, failure)
    obj, tasks = x.obj, x.tasks
    d = failure.get("details") or {}
    end = int(d.get("step", events[-1].step if events else 0))
    alloc = next((e.step for e in events if e.kind == "alloc" and e.obj == obj), None)
    start = max(0, end - MAX_SPAN) if alloc is None else max(alloc, end - MAX_SPAN)
    span = max(1, end - start + 1)

    def px(step: int) -> float:
        return LEFT + (min(max(step, start), end + 1) - start) * (WIDTH - LEFT - 20) / span

    lane = {t: TOP + i * LANE_H for i, t in enumerate(tasks)}
    height = TOP + LANE_H * len(tasks) + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="monospace" '
        f'font-size="11">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="8" y="16" font-size="13">{escape(title)}: {escape(str(failure.get("class")))} of '
        f"{escape(obj or '?')}, steps {start}..{end}</text>",
    ]
    for t, y in lane.items():
        out.append(f'<text x="8" y="{y + 24}">{escape(t)}</text>')
        out.append(f'<line x1="{LEFT}" y1="{y + LANE_H - 4}" x2="{WIDTH - 20}" y2="{y + LANE_H - 4}" stroke="#ddd"/>')
    # when each task had the CPU: the decisions of the pick events
    running = ""
    since = start
    for e in events:
        if e.kind != "pick" or e.step < start:
            continue
        if running in lane and e.next != running:
            out.append(_bar(px(since), px(e.step), lane[running] + LANE_H - 10, 4, "#9bbbe0"))
        if e.next != running:
            running, since = e.next, e.step
    if running in lane:
        out.append(_bar(px(since), px(end + 1), lane[running] + LANE_H - 10, 4, "#9bbbe0"))
    # lock holds
    held: dict[tuple[str, str], int] = {}
    row: dict[str, int] = {}
    for e in events:
        if e.task not in lane:
            continue
        if e.kind == "acquired":
            held[(e.task, e.lock)] = e.step
        elif e.kind == "released" and (e.task, e.lock) in held:
            s = held.pop((e.task, e.lock))
            if e.step >= start:
                out.append(_hold(px(s), px(e.step + 1), lane[e.task], row, e.task, e.lock, obj))
    for (t, lock), s in held.items():
        out.append(_hold(px(s), px(end + 1), lane[t], row, t, lock, obj))
    # the allocation, the free and the failing access
    marks: dict[str, tuple[float, float]] = {}
    for e in events:
        if e.obj == obj and e.kind in ("alloc", "free") and e.task in lane and e.step >= start:
            marks[e.kind] = (px(e.step), lane[e.task] + 8)
            colour = "#2a7" if e.kind == "alloc" else "#c22"
            out.append(_mark(*marks[e.kind], colour, f"{e.kind} {obj} @{e.step} in {e.chain}"))
    who = str(d.get("task", ""))
    if who in lane:
        marks["fail"] = (px(end), lane[who] + 8)
        out.append(_mark(*marks["fail"], "#c22", f"{failure.get('class')} @{end} in {d.get('chain', '')}", big=True))
    if "free" in marks and "fail" in marks:
        (x1, y1), (x2, y2) = marks["free"], marks["fail"]
        out.append(f'<line x1="{x1:.1f}" y1="{y1}" x2="{x2:.1f}" y2="{y2}" stroke="#c22" stroke-dasharray="4 3"/>')
    out.append(
        f'<text x="{LEFT}" y="{height - 12}" fill="#555">bars: locks held ({escape(obj)}\'s darker); thin blue: '
        f"on the CPU; green: alloc; red: the free and the failing access, joined</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _bar(x1: float, x2: float, y: float, h: float, fill: str) -> str:
    return f'<rect x="{x1:.1f}" y="{y}" width="{max(1.0, x2 - x1):.1f}" height="{h}" fill="{fill}"/>'


def _hold(x1: float, x2: float, y: int, row: dict[str, int], task: str, lock: str, obj: str) -> str:
    """A lock-hold bar, on one of three sub-rows of the lane so overlapping holds stay visible."""
    r = row.get(task, 0)
    row[task] = (r + 1) % 3
    fill = "#b5651d" if obj and lock.startswith(obj + ".") else "#e8c07a"
    yy = y + 14 + r * 8
    return (
        f'<rect x="{x1:.1f}" y="{yy}" width="{max(1.5, x2 - x1):.1f}" height="6" fill="{fill}">'
        f"<title>{escape(lock)}</title></rect>"
    )


def _mark(x: float, y: float, colour: str, label: str, big: bool = False) -> str:
    r = 6 if big else 4
    right = x > WIDTH - 260  # near the right edge the label goes to the left of its mark
    tx, anchor = (x - 9, "end") if right else (x + 9, "start")
    short = escape(label.split(" in ")[0])
    return (
        f'<circle cx="{x:.1f}" cy="{y}" r="{r}" fill="{colour}"><title>{escape(label)}</title></circle>'
        f'<text x="{tx:.1f}" y="{y + 4}" fill="{colour}" text-anchor="{anchor}">{short}</text>'
    )


def write_svg(path: str | Path, events: list[Event], failure: dict[str, Any], title: str) -> None:
    Path(path).write_text(svg(events, failure, title))
