"""argparse types for every front door's numbers: a bad value is argparse's one-line usage error (exit 2), never a
traceback or a silently odd run. One place, so `run`, `soak`, `bench` and the pytest plugin agree on what a
seed, a count or a number of seconds may be."""

from __future__ import annotations

import argparse
import math
import os

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
    allowed = sorted(os.sched_getaffinity(0))
    n = _int(text)
    if n is None or n not in allowed:
        raise argparse.ArgumentTypeError(f"expected one of the CPUs this process may use {allowed}, got {text!r}")
    return n
