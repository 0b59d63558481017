"""argparse types for every front door's numbers: a bad value is argparse's one-line usage error (exit 2), never a
traceback or a silently odd run. One place, so `run`, `soak`, `bench` and the pytest plugin agree on what a
seed, a count or a number of seconds may be."""

from __future__ import annotations

import argparse
import math
import re

from . import cpus

SEED_BITS = 63  # seeds are stored and hashed as non-negative int64


def _int(text: str) -> int | None:
    """A decimal integer (leading zeros allowed, as `type=int` did), or 0x/0o/0b-prefixed."""
    for base in (10, 0):
        try:
            return int(text, base)
        except ValueError:
            pass
    return None


def positive_int(text: str) -> int:
    n = _int(text)
    if n is None or n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def non_negative_int(text: str) -> int:
    n = _int(text)
    if n is None or n < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return n


def seed(text: str) -> int:
    n = _int(text)
    if n is None or not 0 <= n < 1 << SEED_BITS:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**{SEED_BITS}), got {text!r}")
    return n


def positive_seconds(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not (x > 0 and math.isfinite(x)):  # also refuses NaN
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return x


def cpu(text: str) -> int:
    """A CPU this process may run on (a controlled run pins all its processes to it)."""
    allowed = cpus.allowed()
    n = _int(text)
    if n is None or n not in allowed:
        raise argparse.ArgumentTypeError(f"expected one of the CPUs this process may use {allowed}, got {text!r}")
    return n


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*$")


def duration(text: str) -> float:
    """'90s', '10m', '1h', '1.5m' or plain seconds, as seconds > 0."""
    m = _DURATION_RE.match(text)
    seconds = float(m.group(1)) * _UNITS[m.group(2)] if m else 0.0
    if not m or not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"expected a positive duration such as 90s, 10m or 1h, got {text!r}")
    return seconds


def shard(text: str) -> tuple[int, int]:
    """'I/N' with 1 <= I <= N: this machine's share of the seed space."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N (e.g. 2/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def pct_depth(text: str) -> int:
    """PCT's depth d: 1..MAX_DEPTH (the scheduler keeps d-1 change points)."""
    from .sched.pct import MAX_DEPTH

    n = _int(text)
    if n is None or not 1 <= n <= MAX_DEPTH:
        raise argparse.ArgumentTypeError(f"expected a PCT depth in [1, {MAX_DEPTH}], got {text!r}")
    return n
