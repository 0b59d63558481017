"""Page contents a task writes, and the `data-loss` check of what it reads back.

Pattern p fills a page with byte (p % 255) + 1 and ends it with byte p // 255, so patterns differ in the last
byte too (LTP ksm01's "one page differs in its last byte"). -1 means never written: the page reads as zeros.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..failures import Failure


@lru_cache(maxsize=4096)
def _pattern(p: int, page_size: int) -> bytes:
    if p < 0:
        return bytes(page_size)
    b = bytearray([(p % 255) + 1]) * page_size
    b[-1] = (p // 255) % 256
    return bytes(b)


def pattern_bytes(p: int, page_size: int) -> np.ndarray:
    return np.frombuffer(_pattern(p, page_size), dtype=np.uint8)


def check_read(data: np.ndarray, expected: int, who: str, m: int, addr: int, step: int) -> None:
    """The task's own record says it wrote pattern `expected` at addr: any other bytes are data loss."""
    want = _pattern(expected, len(data))
    got = data.tobytes()
    if got != want:
        first = next(i for i in range(len(want)) if got[i] != want[i])
        raise Failure(
            "data-loss",
            f"{who} read mm[{m}] address {addr} at step {step}: byte {first} is {got[first]:#04x}, "
            f"its record says pattern {expected} ({want[first]:#04x})",
            {"task": who, "mm": m, "address": addr, "step": step, "expected_pattern": expected, "offset": first},
        )
