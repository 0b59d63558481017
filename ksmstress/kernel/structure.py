"""A workload's structure as its actions run: which processes are alive and, per region, which pages are mapped.

The reader replays a workload through this before either side runs, so an action the program could not do (write
an unmapped page, fork an exited process) is refused with one line, and so the return value the kernel gives a
madvise is known in advance. It knows nothing of TOML or of error messages: that is reader.py's job.
"""

from __future__ import annotations

from .workload import EINVAL, ENOMEM, Process, Region, Span


class Structure:
    """Live processes, every process that ever lived, and per live process the mapped bit of every page."""

    def __init__(self, procs: tuple[Process, ...]) -> None:
        self.regions: dict[str, tuple[Region, ...]] = {p.name: p.regions for p in procs}
        self.mapped: dict[str, list[list[bool]]] = {p.name: [[True] * r.pages for r in p.regions] for p in procs}
        self.ever = set(self.mapped)
        self.threads: dict[str, str] = {}  # live thread -> its process (the thread shares the process's mm)
        # per live process the mlocked bit of every page (VM_LOCKED vmas): MADV_DONTNEED refuses them (-EINVAL)
        self.locked: dict[str, list[list[bool]]] = {p.name: [[False] * r.pages for r in p.regions] for p in procs}

    def alive(self, proc: str) -> bool:
        return proc in self.mapped

    def owner(self, name: str) -> str | None:
        """The process whose memory `name` acts on: itself if a live process, its process if a live thread."""
        return name if name in self.mapped else self.threads.get(name)

    def hole(self, proc: str, span: Span) -> int | None:
        """The first unmapped page of `span`, or None."""
        row = self.mapped[proc][span.region]
        return next((p for p in range(span.start, span.end) if not row[p]), None)

    def madvise_returns(self, proc: str, spans: tuple[Span, ...]) -> tuple[int, ...]:
        """What madvise(2) returns for each span's call: 2.6.33 sys_madvise applies the advice to every vma in
        the range and returns -ENOMEM when part of it was unmapped (also when all of it was)."""
        return tuple(-ENOMEM if self.hole(proc, s) is not None else 0 for s in spans)

    def dontneed_returns(self, proc: str, spans: tuple[Span, ...]) -> tuple[int, ...]:
        """What madvise(MADV_DONTNEED) returns for each span's call: -EINVAL when a page of the range is mlocked
        (madvise_dontneed refuses a VM_LOCKED vma and madvise returns that error at once, the vmas before it
        zapped), else -ENOMEM over a hole, else 0."""
        out = []
        for s in spans:
            if any(self.locked[proc][s.region][s.start : s.end]):
                out.append(-EINVAL)
            else:
                out.append(-ENOMEM if self.hole(proc, s) is not None else 0)
        return tuple(out)

    # -- the actions that change the structure ---------------------------------------------------------------
    def exit(self, proc: str) -> None:
        del self.mapped[proc]
        del self.locked[proc]
        for t in [t for t, p in self.threads.items() if p == proc]:  # exit_group: its threads end with it
            del self.threads[t]

    def thread(self, proc: str, name: str) -> None:
        self.threads[name] = proc
        self.ever.add(name)

    def thread_exit(self, name: str) -> None:
        del self.threads[name]

    def fork(self, parent: str, child: str) -> None:
        self.regions[child] = self.regions[parent]
        self.mapped[child] = [list(m) for m in self.mapped[parent]]
        self.locked[child] = [[False] * len(m) for m in self.mapped[parent]]  # dup_mmap clears VM_LOCKED
        self.ever.add(child)

    def munmap(self, proc: str, spans: tuple[Span, ...]) -> None:
        for s in spans:
            self.mapped[proc][s.region][s.start : s.end] = [False] * (s.end - s.start)
            self.locked[proc][s.region][s.start : s.end] = [False] * (s.end - s.start)

    def mlock(self, proc: str, spans: tuple[Span, ...], lock: bool) -> None:
        for s in spans:
            self.locked[proc][s.region][s.start : s.end] = [lock] * (s.end - s.start)
