"""From a failure to an understanding: replay an artifact with per-step events (record), lay the interleaving out
as columns (view), export it as a Chrome trace (trace), and minimise it (shrink). Sits above the runner: it
drives controlled replays and reads their events, the model never knows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..report import artifact_scenario
from ..runner import RunResult, run_one
from ..scenario import Scenario
from . import timeline, trace, view
from .record import Event, Recorder

__all__ = ["Event", "Recorder", "recorded_replay", "timeline", "trace", "view"]


def recorded_replay(
    art: dict[str, Any],
    path: str | Path,
    timeout: float = 120.0,
    sc: Scenario | None = None,
    schedule: bytes | None = None,
) -> tuple[RunResult, list[Event]]:
    """Replay artifact `art` (read_artifact's dict) under the controlled scheduler, following its recorded
    schedule, and return the verdict with the run's events."""
    scenario = sc if sc is not None else artifact_scenario(Path(path), art)
    with Recorder() as rec:
        res = run_one(
            scenario,
            art["seed"],
            art["strategy"],
            sorted(art["bugs"]),
            schedule=art["schedule_bytes"] if schedule is None else schedule,
            pct_depth=art.get("pct_depth"),
            timeout=timeout,
            granularity=art["granularity"],
            observe=rec.install,
        )
        return res, rec.events()
