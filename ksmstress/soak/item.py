"""What a soak worker does with one work item: run its (scenario, seed), measure a free-mode failure's
reproduction rate, write the artifact, and answer with one JSON row (the parent only aggregates).

A failure is never lost to its artifact: if the artifact cannot be written (the directory was removed or filled
after the up-front check), the row still carries the failure, its seed and the `ksmstress run` command that
reruns it, and says why there is no artifact.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import procs
from ..report import ArtifactError, write_artifact
from ..runner import reproduction, run_one
from ..scenario import Scenario
from ..verdict import replay_command, reproduced_text, rerun_command
from .seeds import SeedSpace


@dataclass(frozen=True)
class Plan:
    """What every worker needs, inherited through fork (nothing here is pickled)."""

    scenarios: tuple[Scenario, ...]
    space: SeedSpace
    strategy: str
    bugs: tuple[str, ...]
    pct_depth: int | None
    timeout: float
    mode: str
    artifacts: Path
    reruns: int = 5
    granularity: str | None = None  # None: each scenario's own


def run_item(plan: Plan, k: int, job: int) -> dict[str, Any]:
    """Work item k as one row: {"type": "run", scenario, seed, verdict, steps, ...; for a failure cls, message,
    replay (the replay of its artifact, else its rerun command) and artifact (None if not written)}."""
    si, seed = plan.space.item(k)
    sc = plan.scenarios[si]
    row: dict[str, Any] = {"type": "run", "k": k, "job": job, "scenario": sc.name, "seed": seed, "path": sc.path}
    extra: dict[str, Any] = {"mode": plan.mode} if plan.mode != "controlled" else {}
    if plan.granularity is not None:
        extra["granularity"] = plan.granularity
    rerun = rerun_command(sc, seed, plan.strategy, list(plan.bugs), plan.pct_depth, plan.mode,
                          granularity=plan.granularity)
    try:
        res = run_one(sc, seed, plan.strategy, list(plan.bugs), pct_depth=plan.pct_depth, timeout=plan.timeout, **extra)
    except Exception as e:  # a bug of the framework itself, not of the model: reported, never swallowed
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        row.update(
            verdict="failure",
            cls="crash",
            message=f"run_one raised {tb}",
            steps=0,
            elapsed=0.0,
            replay=rerun,
            artifact=None,
            reproduced=None,
        )
        return row
    if res.verdict == "failure" and plan.mode == "free" and plan.reruns:
        try:
            res.reproduced = reproduction(sc, res, plan.reruns, plan.timeout)  # the OS picks the interleaving
        except procs.Interrupted as e:  # stopped while measuring: the failure itself still goes to the parent
            procs.repost(e.signum)
    row.update(
        verdict=res.verdict, steps=res.steps, elapsed=res.elapsed + res.spawn_seconds, reproduced=reproduced_text(res)
    )
    if res.verdict == "failure":
        f = res.failure or {}
        row.update(cls=f.get("class"), message=f.get("message"), artifact=None, replay=rerun)
        try:
            art = write_artifact(plan.artifacts, sc, res, plan.pct_depth)
            row.update(artifact=str(art), replay=replay_command(art))
        except (ArtifactError, OSError) as e:
            row["message"] = f"{row['message']} (artifact not written: {e})"
    return row
