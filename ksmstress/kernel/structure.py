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
        # per live process and region the pages where a vma may begin (every range action's edges): mremap moves
        # only a range inside one vma (vma_to_resize), and whether two vmas merged back differs between the model
        # (no vma_merge) and a later kernel, so a range must hold no such edge on either side
        self.cuts: dict[str, list[set[int]]] = {p.name: [set() for _ in p.regions] for p in procs}

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

    def unlocked_vmas_returns(self, proc: str, spans: tuple[Span, ...]) -> tuple[int, ...]:
        """What madvise(MADV_DONTNEED) or madvise(MADV_PAGEOUT) returns for each span's call: -EINVAL when a page
        of the range is mlocked (madvise_dontneed and can_madv_lru_vma refuse a VM_LOCKED vma and madvise returns
        that error at once, the vmas before it done), else -ENOMEM over a hole, else 0."""
        out = []
        for s in spans:
            if any(self.locked[proc][s.region][s.start : s.end]):
                out.append(-EINVAL)
            else:
                out.append(-ENOMEM if self.hole(proc, s) is not None else 0)
        return tuple(out)

    # -- the actions that change the structure ---------------------------------------------------------------
    def cut(self, proc: str, spans: tuple[Span, ...]) -> None:
        """A range action over `spans`: a vma may begin at either edge of each from now on."""
        for s in spans:
            self.cuts[proc][s.region] |= {s.start, s.end}

    def cut_inside(self, proc: str, span: Span) -> int | None:
        """The first page strictly inside `span` where a vma may begin, or None (the span is inside one vma)."""
        return next((p for p in range(span.start + 1, span.end) if p in self.cuts[proc][span.region]), None)

    def exit(self, proc: str) -> None:
        del self.mapped[proc]
        del self.locked[proc]
        del self.cuts[proc]
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
        self.cuts[child] = [set(c) for c in self.cuts[parent]]
        self.ever.add(child)

    def munmap(self, proc: str, spans: tuple[Span, ...]) -> None:
        self.cut(proc, spans)
        for s in spans:
            self.mapped[proc][s.region][s.start : s.end] = [False] * (s.end - s.start)
            self.locked[proc][s.region][s.start : s.end] = [False] * (s.end - s.start)

    def mremap(self, proc: str, span: Span, dest: int) -> None:
        """The mapped span moves to page `dest` of its region (whatever was there is unmapped first), its mlock
        with it; the span's pages are unmapped."""
        n, r = span.end - span.start, span.region
        self.cut(proc, (span, Span(r, dest, dest + n)))
        locked = self.locked[proc][r][span.start : span.end]
        self.munmap(proc, (span,))
        self.mapped[proc][r][dest : dest + n] = [True] * n
        self.locked[proc][r][dest : dest + n] = locked

    def mlock(self, proc: str, spans: tuple[Span, ...], lock: bool) -> None:
        self.cut(proc, spans)
        for s in spans:
            self.locked[proc][s.region][s.start : s.end] = [lock] * (s.end - s.start)
