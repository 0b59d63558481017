"""How a verdict is told: the failure's lines, the command that reruns a seed, a free-mode reproduction rate.

One module so the CLI (`run`, `replay`), `soak` and the pytest plugin print a failure the same way: the same detail
keys in the same order, values rendered as text (never a Python dict), and the same rerun command.
"""

from __future__ import annotations

import shlex
from typing import Any

from .runner import RunResult
from .scenario import Scenario

# the detail keys a failure report shows, in this order (the rest stay in the artifact); `chain` is the failing
# task's kernel call chain where the failure was raised, `allocated`/`freed`/`first_free` say who, when and through
# which chain, `history` is the object's last count changes (one line each), `missed`/`kept` every pte a walk missed
DETAIL_KEYS = (
    "task",
    "object",
    "site",
    "chain",
    "freed",
    "first_free",
    "allocated",
    "history",
    "mm",
    "address",
    "missed",
    "kept",
    "cycle",
    "blocked",
    "walk",
    "via",
)
EVENT_KEYS = frozenset({"freed", "first_free", "allocated"})
LIST_KEYS = frozenset({"history", "missed", "kept"})  # one line per entry


def render(value: Any) -> str:
    """A detail value as a line of text: mappings as `key=value, ...`, sequences comma-separated."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={render(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(render(v) for v in value)
    return str(value)


def event_text(e: dict[str, Any]) -> str:
    """An allocation or free as a kernel developer reads it: `by mm#2 at step 854 in do_munmap > anon_vma_unlink
    (anon_vma_unlink)`; the site alone when no chain was recorded."""
    if not e:
        return "no longer recorded (the slot was reused since)"
    where = e.get("chain") or e.get("site", "?")
    site = f" ({e['site']})" if e.get("chain") and e.get("site") and not str(where).endswith(str(e["site"])) else ""
    return f"by {e.get('task', '?')} at step {e.get('step', '?')} in {where}{site}"


def entry_text(key: str, e: Any) -> str:
    """One entry of a list detail: a count change or a missed pte, as text."""
    if key == "history" and isinstance(e, dict):
        extra = ", ".join(f"{k} {v}" for k, v in e.items() if k not in ("step", "task", "site", "field", "value"))
        return f"step {e.get('step')} {e.get('task')} {e.get('site')}: {e.get('field')} = {e.get('value')}" + (
            f" ({extra})" if extra else ""
        )
    if isinstance(e, dict) and "mm" in e and "address" in e:
        if "vma" in e:
            from .checks.traversal import miss_text

            return miss_text(e)
        return f"mm[{e['mm']}] address {e['address']}"
    if isinstance(e, list | tuple) and len(e) in (2, 3):
        return f"mm[{e[0]}] address {e[1]}" + (f" ({e[2]})" if len(e) == 3 else "")
    return render(e)


def failure_lines(failure: dict[str, Any] | None, indent: str = "  ") -> list[str]:
    """The message and the detail lines of a failure dictionary (Failure.to_dict()): every value as text."""
    f = failure or {}
    lines = [f"{indent}{f.get('message')}"]
    details = f.get("details") or {}
    for key in DETAIL_KEYS:
        if key not in details or details[key] in (None, "", []):
            continue
        v = details[key]
        if key in EVENT_KEYS and isinstance(v, dict):
            lines.append(f"{indent}{key}: {event_text(v)}")
        elif key in LIST_KEYS and isinstance(v, list):
            lines.append(f"{indent}{key}:")
            lines += [f"{indent}  {entry_text(key, e)}" for e in v]
        else:
            lines.append(f"{indent}{key}: {render(v)}")
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
