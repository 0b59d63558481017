"""Failure artifacts (write and read back for replay), verdict dictionaries, and structlog setup.

An artifact is self-contained JSON: the scenario's text (so a replay does not depend on the file still being the
same), seed, strategy, variants, the recorded schedule (zlib + base64) and the failure. Replaying it follows the
recorded schedule step by step.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import structlog

from . import __version__
from .runner import RunResult
from .scenario import Scenario

ARTIFACT_FORMAT = 1


class ArtifactError(ValueError):
    """An unreadable or malformed artifact (a user's mistake: exit status 2)."""


def configure_logging(verbose: bool = False) -> None:
    """structlog to stderr: key=value on a terminal, JSON lines otherwise (CI)."""
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False) if sys.stderr.isatty() else (structlog.processors.JSONRenderer())
    )
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if verbose else logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def verdict_dict(res: RunResult, runs: int, artifact: str | None = None) -> dict[str, Any]:
    """The machine-readable verdict of `run --json` / `replay --json` (timings live under their own keys)."""
    d: dict[str, Any] = {
        "verdict": res.verdict,
        "scenario": res.scenario,
        "seed": res.seed,
        "runs": runs,
        "strategy": res.strategy,
        "bugs": res.bugs,
        "steps": res.steps,
        "handoffs": res.handoffs,
        "schedule_digest": res.schedule_digest,
        "failure": None,
        "max_ksm_refcount": res.max_refcount,
        "mode": res.mode,
        "steps_per_second": round(res.steps_per_second, 1),
        "elapsed_seconds": round(res.elapsed, 4),
    }
    if res.failure:
        d["failure"] = {
            "class": res.failure.get("class"),
            "message": res.failure.get("message"),
            "details": res.failure.get("details", {}),
        }
    if res.reproduced is not None:
        d["reproduced_rate"] = res.reproduced
    if artifact:
        d["artifact"] = artifact
        d["replay"] = f"ksmstress replay {artifact}"
    return d


def write_artifact(directory: Path, sc: Scenario, res: RunResult, pct_depth: int | None) -> Path:
    cls = (res.failure or {}).get("class", "clean")
    bugs = "".join(f"-{b}" for b in res.bugs)
    path = directory / f"{sc.name}{bugs}-{res.strategy}-seed{res.seed}-{cls}.json"
    text = Path(sc.path).read_text() if Path(sc.path).exists() else ""
    data = {
        "format": ARTIFACT_FORMAT,
        "ksmstress": __version__,
        "scenario": {"name": sc.name, "path": sc.path, "text": text},
        "seed": res.seed,
        "strategy": res.strategy,
        "mode": res.mode,
        "reproduced": res.reproduced,
        "pct_depth": pct_depth,
        "bugs": res.bugs,
        "steps": res.steps,
        "schedule_digest": res.schedule_digest,
        "schedule": base64.b64encode(zlib.compress(res.schedule, 9)).decode(),
        "failure": res.failure,
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError as e:
        raise ArtifactError(
            f"{directory}: cannot write the artifact there ({e.strerror}); expected a writable "
            f"directory for --artifacts"
        ) from None
    return path


def read_artifact(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise ArtifactError(f"{p}: cannot read artifact: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ArtifactError(f"{p}: not a ksmstress artifact (expected UTF-8 JSON)") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{p}: not a ksmstress artifact (invalid JSON: {e.msg})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{p}: not a ksmstress artifact (expected a JSON object)")
    for key, kind in (("scenario", dict), ("seed", int), ("strategy", str), ("bugs", list), ("schedule", str)):
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise ArtifactError(f"{p}: key '{key}': expected {kind.__name__} in a ksmstress artifact")
    if not all(isinstance(b, str) for b in data["bugs"]):
        raise ArtifactError(f"{p}: key 'bugs': expected a list of variant names")
    text, path = data["scenario"].get("text"), data["scenario"].get("path")
    if not isinstance(text, str) or not (text or isinstance(path, str)):
        raise ArtifactError(f"{p}: key 'scenario.text': expected the scenario's TOML text")
    if data.get("failure") is not None and not isinstance(data["failure"], dict):
        raise ArtifactError(f"{p}: key 'failure': expected an object or null")
    depth = data.get("pct_depth")
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth < 1):
        raise ArtifactError(f"{p}: key 'pct_depth': expected a positive integer or null")
    try:
        data["schedule_bytes"] = zlib.decompress(base64.b64decode(data["schedule"]))
    except (ValueError, zlib.error):
        raise ArtifactError(f"{p}: key 'schedule': expected base64 zlib data") from None
    return data


def check_artifact_dir(directory: str | Path) -> Path:
    """Refuse, before any run starts, an artifacts directory that a failure could not be written to (ArtifactError:
    exit status 2, naming --artifacts), so a failure found an hour into a soak is never lost to it.

    Nothing is created: the directory, or its nearest existing ancestor (write_artifact makes the rest), must be a
    directory in which this process can create a file. The probe is an unnamed O_TMPFILE file where the file
    system allows one (so not even a SIGKILL can leave it behind), else a named one removed at once."""
    path = Path(directory)
    probe = path
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():  # a dangling symlink: mkdir would fail on it
            break
        probe = probe.parent
    what = f"--artifacts {directory}"
    if not probe.is_dir():
        raise ArtifactError(f"{what}: {probe} is not a directory; expected a writable directory for artifacts")
    try:
        try:
            os.close(os.open(probe, os.O_TMPFILE | os.O_WRONLY, 0o600))
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            fd, name = tempfile.mkstemp(prefix=".ksmstress-probe-", dir=probe)
            os.close(fd)
            os.unlink(name)
    except OSError as e:
        raise ArtifactError(
            f"{what}: cannot create files in {probe} ({e.strerror}); expected a writable directory for artifacts"
        ) from None
    return path
