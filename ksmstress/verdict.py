"""How a verdict is told: the failure's lines, the command that reruns a seed, a free-mode reproduction rate.

One module so the CLI (`run`, `replay`), `soak` and the pytest plugin print a failure the same way: the same detail
keys in the same order, values rendered as text (never a Python dict), and the same rerun command.
"""

from __future__ import annotations

import shlex
from typing import Any

from .runner import RunResult
from .scenario import Scenario

# the detail keys a failure report shows, in this order (the rest stay in the artifact)
DETAIL_KEYS = ("task", "object", "site", "freed", "mm", "address", "missed", "cycle", "blocked", "walk", "via")


def render(value: Any) -> str:
    """A detail value as a line of text: mappings as `key=value, ...`, sequences comma-separated."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={render(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(render(v) for v in value)
    return str(value)


def failure_lines(failure: dict[str, Any] | None, indent: str = "  ") -> list[str]:
    """The message and the detail lines of a failure dictionary (Failure.to_dict())."""
    f = failure or {}
    lines = [f"{indent}{f.get('message')}"]
    details = f.get("details") or {}
    lines += [f"{indent}{key}: {render(details[key])}" for key in DETAIL_KEYS if key in details]
    return lines


def where(res: RunResult) -> str:
    """`scenario (seed N, strategy[, bugs ...])`: which run a line is about."""
    bugs = f", bugs {','.join(res.bugs)}" if res.bugs else ""
    return f"{res.scenario} (seed {res.seed}, {res.strategy}{bugs})"


def reproduced_text(res: RunResult) -> str | None:
    """A free-mode failure's reproduction rate as the reports print it ("reproduced k/M"), else None."""
    return f"reproduced {res.reproduced}" if res.reproduced is not None else None


def rerun_command(
    sc: Scenario,
    seed: int,
    strategy: str,
    bugs: list[str],
    pct_depth: int | None,
    mode: str = "controlled",
    runs: int = 1,
    granularity: str | None = None,
) -> str:
    """The `ksmstress run` command that runs the same seed(s) again from scratch (`granularity` None: the
    scenario's own)."""
    parts = ["ksmstress", "run", sc.path, "--seed", str(seed)]
    if runs != 1:
        parts += ["--runs", str(runs)]
    if strategy not in ("random", "free"):
        parts += ["--strategy", strategy]
    if pct_depth is not None:
        parts += ["--pct-depth", str(pct_depth)]
    for b in bugs:
        parts += ["--bug", b]
    if mode != "controlled":
        parts += ["--mode", mode]
    if granularity is not None:
        parts += ["--granularity", granularity]
    return shlex.join(parts)


def replay_command(artifact: Any) -> str:
    return f"ksmstress replay {shlex.quote(str(artifact))}"
