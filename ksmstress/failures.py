"""The failure classes every detector reports through, so that the runner, the CLI and the tests agree on names.

A `Failure` is raised inside the task that detects it; the task's top-level wrapper serialises it into the
shared failure buffer. Its message must be deterministic (task ids and steps, never pids or times) because
replays compare verdicts byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import callchain

#: Every failure class the framework can report, with the one-line meaning shown by `ksmstress bugs` and docs.
CLASSES: dict[str, str] = {
    "use-after-free": "an object was touched through a reference after it was freed (or its slot reused)",
    "double-free": "an object was freed twice",
    "refcount-underflow": "a reference count or mapcount went below zero",
    "refcount-overflow": "a reference count wrapped at its configured width",
    "leak": "at quiescence an object or counter was left behind",
    "traversal": "an rmap walk missed a mapping, a page was freed while still mapped, or a migration entry outlived "
    "its migration",
    "data-loss": "a task read back bytes other than the ones it wrote",
    "counters": "KSM's statistics disagree with its trees",
    "refcount-mismatch": "a count disagrees with the references that exist (ksm_refcount and the stable rmap_items, "
    "mapcount and the ptes, page_count below mapcount, swap count and swap ptes), or an object was freed while "
    "still referenced",
    "stale-pte": "a pte maps a freed page frame or swap slot",
    "writable-ksm": "a KSM page is mapped by a writable pte (a write would reach every page sharing it)",
    "unmerge-incomplete": "MADV_UNMERGEABLE or run=2 returned with a pte it had to break still mapping a KSM page",
    "unlocked-access": "data a kernel lock rule covers (ptes, vma and anon_vma lists, the mm_slot list, the trees, a "
    "stable node's rmap_items, a page becoming KSM) touched by a task not holding the lock the rule names",
    "missed-merge": "two page frames of mergeable areas still hold identical bytes after the world stood still for "
    "more full scans than KSM needs to merge them",
    "stable-tree": "the stable tree is not a search tree of distinct KSM pages in memcmp order, or a KSM page and its "
    "stable node disagree",
    "unstable-tree": "the unstable tree of this scan is not an rbtree of exactly the rmap_items inserted in this "
    "scan (a link to a freed or foreign rmap_item, a node reached twice or under the wrong rb_parent, one missing)",
    "registration": "an mm with a mergeable area is not on ksmd's mm list, or the list names an mm that is not "
    "registered (flag, slot, mm_count)",
    "mlock": "a page was freed while PageMlocked, reclaim swapped out a pte of a vma VM_LOCKED throughout its walk, "
    "or NR_MLOCK disagrees with the PageMlocked pages",
    "bad-page": "a page was freed in a state free_pages_check refuses: its page lock held, still in the swap cache, "
    "or still mapcounted",
    "deadlock": "no task can run: a wait-for cycle",
    "lockdep": "a lock order against 2.6.33's, a sleeping lock under a spinlock, a lock held at exit, or a held lock "
    "freed with the object that holds it",
    "hang": "the run made no progress (step budget or wall clock exhausted)",
    "bug-on": "a kernel BUG_ON / VM_BUG_ON condition was hit",
    "oops": "a NULL pointer was dereferenced",
    "arena-exhausted": "a table of the arena ran out of slots (scenario sizes too small)",
    "syscall": "a system call broke its contract: mmap, munmap or madvise failed (or succeeded) against what the "
    "program's own /proc/self/maps says",
    "crash": "a task process died or raised an unexpected Python exception",
    "replay-diverged": "a replay could not follow its recorded schedule",
    "budget-exhausted": "the run used up its max_steps while its programs were still making progress (raise it)",
}


@dataclass
class Failure(Exception):
    """A detected defect: class name, one-line message and structured details for the artifact."""

    cls: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(f"{self.cls}: {self.message}")
        # the raising task's kernel call chain, taken here because the stack unwinds before anyone reports it
        self.chain = callchain.text()

    def to_dict(self) -> dict[str, Any]:
        details = self.details
        if self.chain and "chain" not in details:
            details = {**details, "chain": self.chain}
        return {"class": self.cls, "message": self.message, "details": details}
