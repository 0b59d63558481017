"""The structural walk both tree detectors share: an rb_root's nodes in order, each link checked as it is taken.

Both of KSM's trees are rbtrees over an arena table (mm/tree.py); whatever their keys, every link must lead to a
live object of that table, reached once (no cycle, no node hanging twice), whose rb_parent is the node it hangs
from. What a failure is called and what else is checked is the caller's (stabletree.py, unstabletree.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..arena import Table, ref_slot

Fail = Callable[[str, str], None]  # (message, object) -> raises


def walk(t: Table, root: int, fail: Fail) -> tuple[list[tuple[int, str]], set[int]]:
    """(node ref, path from the root as L/R letters) in order, and the slots met, checking links, liveness and
    parents; `fail` raises at the first broken one."""
    left, right, parent = t.c["left"], t.c["right"], t.c["parent"]
    name = t.name
    out: list[tuple[int, str]] = []
    seen: set[int] = set()
    stack: list[tuple[int, int, str]] = []  # (node, its parent, path)
    cur, up, path = root, 0, ""
    while stack or cur:
        while cur:
            s = ref_slot(cur)
            if not t.is_live(cur):
                freed: dict[str, Any] = t._freed_info(s) if 0 <= s < t.capacity else {}
                fail(f"the tree links {name}[{s}] at {path or 'the root'}, which was freed by {freed.get('task')} "
                     f"at step {freed.get('step')} ({freed.get('site')})", f"{name}[{s}]")
            if s in seen:
                fail(f"{name}[{s}] is reached twice in the tree (again at {path})", f"{name}[{s}]")
            seen.add(s)
            if int(parent[s]) != up:
                above = f"{name}[{ref_slot(up)}]" if up else "the root"
                has = f"{name}[{ref_slot(int(parent[s]))}]" if parent[s] else "none"
                fail(f"{name}[{s}] hangs at {path or 'the root'} below {above} but its rb_parent is {has}",
                     f"{name}[{s}]")
            stack.append((cur, up, path))
            cur, up, path = int(left[s]), cur, path + "L"
        cur, _up, path = stack.pop()
        out.append((cur, path))
        cur, up, path = int(right[ref_slot(cur)]), cur, path + "R"
    return out, seen
