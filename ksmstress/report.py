"""Failure artifacts (write and read back for replay), verdict dictionaries, and structlog setup.

An artifact is self-contained JSON: the scenario's text (so a replay does not depend on the file still being the
same), seed, strategy, variants, the recorded schedule (zlib + base64) and the failure. Replaying it follows the
recorded schedule step by step.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import structlog

from . import __version__
from .argtypes import SEED_BITS
from .runner import MODES, RunResult
from .scenario import Scenario, ScenarioError, load, parse
from .sched import GRANULARITIES, SEARCH_STRATEGIES, STRATEGIES
from .sched.pct import MAX_DEPTH
from .tomltable import shown

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
        logger_factory=lambda *_args: _StderrLogger(),
        cache_logger_on_first_use=False,  # events are rare (per run, not per step); stderr may be swapped (tests)
    )


class _StderrLogger:
    """structlog's output: whatever sys.stderr is at the time of the event, flushed at once (CI logs)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = error = critical = msg


SAFE_PART = re.compile(r"[^A-Za-z0-9._-]")
MAX_FILE_NAME = 200  # bytes; most file systems allow 255
MAX_ARTIFACT = 256 << 20  # bytes of JSON: a 250M-step schedule compresses to well under this
MAX_NESTING = 32  # JSON depth: an artifact is 4 levels deep; deeper is not ours (and json recurses on it)


def _part(text: str) -> str:
    """One piece of an artifact's file name: only [A-Za-z0-9._-], so no piece can be a separator or '..'."""
    return SAFE_PART.sub("_", text).lstrip(".") or "_"


def artifact_name(sc: Scenario, res: RunResult) -> str:
    """NAME[-BUG...]-STRATEGY-seedN-CLASS.json from checked pieces, cut to a length every file system takes (many
    variants at once name themselves by count and a hash of the set instead)."""
    cls = str((res.failure or {}).get("class", "clean"))
    bugs = "".join(f"-{_part(b)}" for b in res.bugs)
    tail = f"-{_part(res.strategy)}-seed{int(res.seed)}-{_part(cls)}.json"
    name = _part(sc.name)[:64]
    if len(name + bugs + tail) > MAX_FILE_NAME:
        digest = hashlib.sha256(",".join(sorted(res.bugs)).encode()).hexdigest()[:8]
        bugs = f"-{len(res.bugs)}bugs-{digest}"
    return (name + bugs + tail)[-MAX_FILE_NAME:]


def write_artifact(directory: Path, sc: Scenario, res: RunResult, pct_depth: int | None) -> Path:
    path = directory / artifact_name(sc, res)
    if path.parent != directory or path.resolve().parent != directory.resolve():  # e.g. a planted symlink
        raise ArtifactError(f"{directory}: the artifact {path.name!r} would be written outside --artifacts")
    try:
        text = Path(sc.path).read_text()
    except (OSError, ValueError):  # gone, unreadable, a NUL in a path made in code: replay then needs the path
        text = ""
    data = {
        "format": ARTIFACT_FORMAT,
        "ksmstress": __version__,
        "scenario": {"name": sc.name, "path": sc.path, "text": text},
        "seed": res.seed,
        "strategy": res.strategy,
        "mode": res.mode,
        "reproduced": res.reproduced,
        "pct_depth": pct_depth,
        "pct_k": res.pct_k or None,  # informative: replay follows the schedule, a rerun estimates the same k
        "granularity": res.granularity,
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


def _nesting(v: Any) -> int:
    """How deeply lists and objects nest in `v` (iterative: the point is not to recurse on untrusted depth)."""
    deepest, stack = 0, [(v, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, dict | list):
            deepest = max(deepest, d)
            if d <= MAX_NESTING:
                stack += [(y, d + 1) for y in (x.values() if isinstance(x, dict) else x)]
    return deepest


def _printable(v: Any, limit: int = 200) -> bool:
    """A string the front door may print as it is: one line, encodable (no lone surrogate from a JSON escape)."""
    return isinstance(v, str) and len(v) <= limit and v.isprintable()


def _read_json(p: Path) -> Any:
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_ARTIFACT + 1)
    except OSError as e:
        raise ArtifactError(f"{p}: cannot read artifact: {e.strerror}") from None
    if len(raw) > MAX_ARTIFACT:
        raise ArtifactError(f"{p}: not a ksmstress artifact (expected at most {MAX_ARTIFACT >> 20} MiB of JSON)")
    try:
        return json.loads(raw.decode())
    except UnicodeDecodeError:
        raise ArtifactError(f"{p}: not a ksmstress artifact (expected UTF-8 JSON)") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{p}: not a ksmstress artifact (invalid JSON: {e.msg})") from None
    except RecursionError:
        raise ArtifactError(f"{p}: not a ksmstress artifact (JSON nested too deeply)") from None
    except ValueError:  # Python's int-conversion limit (4300 digits)
        raise ArtifactError(f"{p}: not a ksmstress artifact (an integer of more than 4300 digits)") from None


def _check_fields(p: Path, data: dict[str, Any]) -> None:
    """Every field replay reads, with the type and range it can use: what passes here cannot crash a replay."""
    for key, kind in (("scenario", dict), ("seed", int), ("strategy", str), ("bugs", list), ("schedule", str)):
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise ArtifactError(f"{p}: key '{key}': expected {kind.__name__} in a ksmstress artifact")
    if data.get("format", ARTIFACT_FORMAT) != ARTIFACT_FORMAT:
        raise ArtifactError(f"{p}: key 'format': expected {ARTIFACT_FORMAT}, got {shown(data['format'])}")
    if not 0 <= data["seed"] < 1 << SEED_BITS:
        raise ArtifactError(f"{p}: key 'seed': expected a seed in [0, 2**{SEED_BITS}), got {shown(data['seed'])}")
    if data["strategy"] not in STRATEGIES + SEARCH_STRATEGIES:
        raise ArtifactError(f"{p}: key 'strategy': expected one of {', '.join(STRATEGIES + SEARCH_STRATEGIES)}")
    if data.get("mode") not in (None, *MODES):
        raise ArtifactError(f"{p}: key 'mode': expected one of {', '.join(MODES)} or null")
    if not all(_printable(b, 64) for b in data["bugs"]):
        raise ArtifactError(f"{p}: key 'bugs': expected a list of variant names")
    text, path = data["scenario"].get("text"), data["scenario"].get("path", "")
    if not isinstance(text, str) or not (text or path):
        raise ArtifactError(f"{p}: key 'scenario.text': expected the scenario's TOML text")
    if not _printable(path, 4096):
        raise ArtifactError(f"{p}: key 'scenario.path': expected the scenario's path (printable, one line)")
    failure = data.get("failure")
    if failure is not None and not isinstance(failure, dict):
        raise ArtifactError(f"{p}: key 'failure': expected an object or null")
    if failure is not None and not _printable(failure.get("class", ""), 64):
        raise ArtifactError(f"{p}: key 'failure.class': expected a failure class name")
    if not _printable(data.get("schedule_digest", ""), 64):
        raise ArtifactError(f"{p}: key 'schedule_digest': expected a hex digest")
    steps = data.get("steps", 0)
    if not isinstance(steps, int) or isinstance(steps, bool) or not 0 <= steps < 1 << 63:
        raise ArtifactError(f"{p}: key 'steps': expected a non-negative integer")
    if data.get("granularity") not in (None, *GRANULARITIES):
        raise ArtifactError(f"{p}: key 'granularity': expected one of {', '.join(GRANULARITIES)} or null")
    depth = data.get("pct_depth")
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= MAX_DEPTH):
        raise ArtifactError(f"{p}: key 'pct_depth': expected an integer in [1, {MAX_DEPTH}] or null")


def _decode(p: Path, encoded: str) -> bytes:
    """The schedule's zlib bytes, with the stream's header checked (before the scenario: a corrupt schedule is
    named as such whatever the scenario says)."""
    try:
        raw = base64.b64decode(encoded)
        zlib.decompressobj().decompress(raw, 1)
    except (ValueError, zlib.error):
        raise ArtifactError(f"{p}: key 'schedule': expected base64 zlib data") from None
    return raw


def _inflate(p: Path, raw: bytes, limit: int) -> bytes:
    """The recorded schedule, one byte per step, refused past `limit` bytes before it is inflated any further (a
    small artifact can otherwise inflate to gigabytes)."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(raw, limit + 1)
    except zlib.error:
        raise ArtifactError(f"{p}: key 'schedule': expected base64 zlib data") from None
    if len(out) > limit:
        raise ArtifactError(
            f"{p}: key 'schedule': expected at most max_steps + 1 = {limit} steps (one byte each), got more"
        )
    if not d.eof:
        raise ArtifactError(f"{p}: key 'schedule': expected base64 zlib data (the stream is truncated)")
    return out


def artifact_scenario(p: Path, data: dict[str, Any]) -> Scenario:
    """The scenario an artifact replays: its recorded text, or (no text) the file at its recorded path."""
    scd = data["scenario"]
    path = scd.get("path", str(p))
    try:
        return parse(scd["text"], path) if scd["text"] else load(path)
    except ScenarioError as e:
        raise ArtifactError(f"{p}: key 'scenario': {e}") from None


def read_artifact(path: str | Path) -> dict[str, Any]:
    """An artifact as replay uses it, with `schedule_bytes` inflated; ArtifactError for anything replay could not
    use (its scenario's own error included), never another exception."""
    p = Path(path)
    data = _read_json(p)
    if not isinstance(data, dict):
        raise ArtifactError(f"{p}: not a ksmstress artifact (expected a JSON object)")
    if _nesting(data) > MAX_NESTING:
        raise ArtifactError(f"{p}: not a ksmstress artifact (expected JSON nested at most {MAX_NESTING} deep)")
    _check_fields(p, data)
    raw = _decode(p, data["schedule"])
    sc = artifact_scenario(p, data)
    data["schedule_bytes"] = _inflate(p, raw, sc.max_steps + 1)
    if data.get("granularity") is None:  # recorded before artifacts said: control changed hands at locks only
        data["granularity"] = "locks"
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
