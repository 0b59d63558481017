"""A progress line for long commands (`soak`, `run` over many seeds): redrawn in place on a terminal, one line every
LOG_EVERY seconds otherwise (CI logs), failures always on a line of their own.

Why its own module: `run` and `soak` show the same figures (runs, failures, steps/s, elapsed) and must not drift.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol

TTY_REFRESH = 0.5  # seconds between redraws of the progress line on a terminal
LOG_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal (CI logs)


class Counts(Protocol):
    """What the line shows: runs done, steps, failures, and the wall clock since the start."""

    runs: int
    steps: int
    failures: list[Any]

    def wall(self) -> float: ...


def fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """One redrawn line on a terminal; a line every LOG_EVERY seconds otherwise. Failures always get a line."""

    def __init__(
        self,
        total: int | None,
        duration: float | None,
        stream: Any = None,
        label: str = "soak",
        tty: bool | None = None,
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        # tty=False: log lines even on a terminal (machine-readable output on stdout must not be interleaved)
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.total, self.duration = total, duration
        self.last = 0.0 if self.tty else time.monotonic()  # a log's first line after LOG_EVERY, not at 0 runs
        self.dirty = False

    def _bar(self, frac: float, width: int = 24) -> str:
        n = int(max(0.0, min(1.0, frac)) * width)
        return "[" + "#" * n + "-" * (width - n) + "]"

    def line(self, t: Counts) -> str:
        wall = t.wall()
        nfail = len(t.failures)
        if self.total:
            head = f"{self._bar(t.runs / self.total)} {t.runs}/{self.total} runs"
        elif self.duration:
            head = (
                f"{self._bar(wall / self.duration)} {fmt_duration(wall)}/{fmt_duration(self.duration)} {t.runs} runs"
            )
        else:
            head = f"{t.runs} runs"
        rate = t.runs / wall * 60 if wall > 0 else 0.0
        sps = t.steps / wall if wall > 0 else 0.0
        return (
            f"{self.label} {head} | {rate:,.0f} runs/min | {sps:,.0f} steps/s | "
            f"{nfail} failure{'s' if nfail != 1 else ''} | {fmt_duration(wall)}"
        )

    def update(self, t: Counts, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (TTY_REFRESH if self.tty else LOG_EVERY):
            return
        self.last = now
        if self.tty:
            print("\r\033[K" + self.line(t), end="", file=self.stream, flush=True)
            self.dirty = True
        else:
            print(self.line(t), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A line of its own (a failure), without tearing the progress line."""
        if self.tty and self.dirty:
            print("\r\033[K", end="", file=self.stream)
            self.dirty = False
        print(text, file=self.stream, flush=True)
        if self.tty:
            self.last = 0.0  # redraw the progress line right after

    def clear(self) -> None:
        """Take the redrawn line away (the command prints its own summary next)."""
        if self.tty and self.dirty:
            print("\r\033[K", end="", file=self.stream, flush=True)
            self.dirty = False

    def finish(self, t: Counts) -> None:
        self.update(t, force=True)
        if self.tty:
            print(file=self.stream, flush=True)
