"""Reading the arena's history rings for reports: an object's last changes, and the references a count still holds.

The rings record (step, task, site, new value) for every change of a tracked count (arena.Table.TRACKED). A report
that names a broken count prints its last changes; a leak names the references that were taken and never dropped:
for each level L of the count left over, the latest change that raised it to L (after it, the count never fell
below L again, so a reference has been held since: references are interchangeable, so that is as precise as a
count can say; the last changes show the rest).
"""

from __future__ import annotations

from typing import Any

from ..arena import Table


def last_changes(t: Table, slot: int, field: str | None = None) -> list[dict[str, Any]]:
    """The object's recorded changes, oldest first (of one column, if `field` is given)."""
    return [c for c in t.history(slot) if field is None or c["field"] == field]


def changes_text(t: Table, slot: int, field: str | None = None) -> str:
    ch = last_changes(t, slot, field)
    return t.history_text(ch) if ch else "none recorded"


def outstanding(t: Table, slot: int, field: str) -> list[dict[str, Any]]:
    """The changes that took the references column `field` still holds, lowest level first (as far as the ring
    reaches back). A change counts as taking a reference when it raised the count (or is the first one known)."""
    ch = last_changes(t, slot, field)
    if not ch:
        return []
    held = int(t.c[field][slot])
    out: list[dict[str, Any]] = []
    for level in range(1, held + 1):
        for j in range(len(ch) - 1, -1, -1):
            c = ch[j]
            if c["value"] != level:
                continue
            if j > 0 and ch[j - 1]["value"] >= level:
                continue  # a drop to this level, not a reference taken
            if all(d["value"] >= level for d in ch[j + 1 :]):
                out.append(c)
            break
    return out


def reference_text(t: Table, c: dict[str, Any]) -> str:
    extra = f", {c[t.ARG]}" if t.ARG and t.ARG in c else ""
    return f"{c['site']} by {c['task']} at step {c['step']}{extra}"
