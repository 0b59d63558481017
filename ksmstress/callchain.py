"""The running task's kernel call chain: a small stack of kernel function names, one per task process.

Why: a report that says "anon_vma[1] freed in anon_vma_unlink" leaves a kernel developer asking how the task got
there; `do_munmap > anon_vma_unlink` answers it. The model's functions that matter carry `@kfunc`, which pushes the
function's name on entry and pops it on return. Each task is its own OS process, so the stack is a plain
module-level list: no lock, no shared memory, and the cost is one append and one pop per call (measured in the
README's throughput figures). A `Failure` snapshots the chain where it is raised (failures.py); the arena stores
the chain of every allocation and free next to the task and step it already records.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

STACK: list[str] = []
SEP = " > "


def kfunc(fn: F) -> F:
    """Keep `fn`'s name on the task's call chain while it runs (popped on return and on an exception alike, so a
    Failure caught above, e.g. by a detector, never leaves a stale frame behind)."""
    name = fn.__name__
    push, pop = STACK.append, STACK.pop

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        push(name)
        try:
            return fn(*args, **kw)
        finally:
            pop()

    return wrapper  # type: ignore[return-value]


def text() -> str:
    """The chain now, outermost first (`do_munmap > anon_vma_unlink`); "" outside any kernel function."""
    return SEP.join(STACK)


def reset() -> None:
    """Empty the stack (a forked task starts with none of its parent's frames)."""
    STACK.clear()
