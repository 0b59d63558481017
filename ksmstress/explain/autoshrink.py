"""Shrink an artifact and prove the result: what `ksmstress shrink` does, and what `run --shrink` and `soak --shrink`
do after a failure, in one place.

The shrunk artifact is written next to the original (NAME-shrunk.json) unless told otherwise, then replayed
strictly once, as `ksmstress replay` would: only an artifact that reproduces is offered as the replay command.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import argtypes
from ..report import artifact_scenario, read_artifact
from ..runner import RunResult, run_one
from ..verdict import replay_command
from .portfolio import shrink_portfolio
from .shrink import Candidate, ShrinkError, Size, shrunk_artifact, shrunk_path, site_of, size_of

DEFAULT_SECONDS = 60.0


@dataclass
class Shrunk:
    """A shrink's outcome: where the shrunk artifact went, its sizes, and its proof replay."""

    artifact: Path
    source: Path
    before: Size
    after: Size
    seconds: float
    candidates: int
    best: Candidate
    art: dict[str, Any]  # the shrunk artifact as read back (read_artifact)
    proof: RunResult  # a strict replay of it

    @property
    def reproduced(self) -> bool:
        """The proof replay failed the same way (class, step, site, object) by the same schedule."""
        rec, got = self.art.get("failure") or {}, self.proof.failure or {}
        rd, gd = rec.get("details") or {}, got.get("details") or {}
        return (rec.get("class") == got.get("class") and self.proof.schedule_digest == self.art.get("schedule_digest")
                and all(rd.get(k) == gd.get(k) for k in ("step", "site", "object") if k in rd))

    @property
    def replay(self) -> str:
        """The command that explains the shrunk failure."""
        return replay_command(self.artifact) + " --explain"

    def line(self) -> str:
        """One line for a failure report: what got smaller, and the command."""
        b, a = self.before, self.after
        if not self.reproduced:
            return f"{self.artifact} was written but did not replay the same failure (never expected; a bug)"
        return (f"steps {b.steps} -> {a.steps}, preemptions {b.preemptions} -> {a.preemptions}, ops {b.ops} -> "
                f"{a.ops} in {self.seconds:.0f} s: {self.replay}")

    def to_dict(self) -> dict[str, Any]:
        f = self.best.res.failure or {}
        return {"artifact": str(self.artifact), "from": str(self.source), "before": self.before.as_dict(),
                "after": self.after.as_dict(), "seconds": round(self.seconds, 1), "candidates": self.candidates,
                "reproduced": self.reproduced, "class": f.get("class"), "site": site_of(f),
                "replay": self.replay}


def shrink_file(
    path: Path, seconds: float, timeout: float = 60.0, out: Path | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> Shrunk:
    """Shrink the artifact at `path` within `seconds`, write the result to `out` (default: next to it) and replay
    it once. Raises ShrinkError when the artifact's failure does not reproduce, OSError when `out` is not
    writable."""
    t0 = time.monotonic()
    art = read_artifact(path)
    first, best, runs = shrink_portfolio(art, path, seconds, timeout, log)
    before, after = size_of(first), size_of(best)
    took = time.monotonic() - t0
    dest = out if out is not None else shrunk_path(path)
    dest.write_text(json.dumps(shrunk_artifact(path, best, before, after, took), indent=1, sort_keys=True) + "\n")
    shrunk = read_artifact(dest)  # the proof: a strict replay of what was written reproduces the failure
    proof = run_one(artifact_scenario(dest, shrunk), shrunk["seed"], shrunk["strategy"], sorted(shrunk["bugs"]),
                    schedule=shrunk["schedule_bytes"], pct_depth=shrunk.get("pct_depth"), timeout=timeout,
                    granularity=shrunk["granularity"])
    return Shrunk(dest, path, before, after, took, runs, best, shrunk, proof)


def try_shrink(path: Path, seconds: float, timeout: float, log: Callable[[str], None]) -> Shrunk | str:
    """shrink_file for `run --shrink` and `soak --shrink`: a failure to shrink is a line to print, not an exit."""
    try:
        return shrink_file(path, seconds, timeout, log=log)
    except (ShrinkError, OSError) as e:
        return f"{path}: not shrunk: {e}"


def add_options(p: argparse.ArgumentParser) -> None:
    """`--shrink` and `--shrink-seconds` for `run` and `soak`."""
    p.add_argument("--shrink", action="store_true",
                   help="shrink each failure's artifact (controlled mode; as `ksmstress shrink`), write "
                        "NAME-shrunk.json next to it and print its replay command")
    p.add_argument("--shrink-seconds", type=argtypes.positive_seconds, default=DEFAULT_SECONDS, metavar="S",
                   help=f"--shrink's time budget per failure (default: {DEFAULT_SECONDS:.0f})")
