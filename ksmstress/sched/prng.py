"""A splitmix64 generator whose state lives in shared memory.

Why not `random.Random`: the scheduler's decisions are made by whichever process happens to be running, so the
generator state must be shared by all of them. splitmix64 is tiny, fast in pure Python and fully specified, so
the same seed gives the same decisions on every machine and Python version.
"""

from __future__ import annotations

import numpy as np

M64 = (1 << 64) - 1


def mix64(z: int) -> int:
    """The splitmix64 finaliser: a good 64-bit hash of an integer (also used to derive per-run seeds)."""
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class SharedPrng:
    """splitmix64 over one uint64 cell of a shared array."""

    def __init__(self, cell: np.ndarray) -> None:
        self.cell = memoryview(cell)  # shape (1,), dtype uint64: plain Python ints in and out

    def seed(self, seed: int) -> None:
        self.cell[0] = mix64(seed ^ 0x6A09E667F3BCC908)

    def next64(self) -> int:
        s = (self.cell[0] + 0x9E3779B97F4A7C15) & M64
        self.cell[0] = s
        z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """A uniform integer in [0, n) (modulo bias is < 2^-50 for the small n used here). next64 inlined: this is
        the scheduler's hot path."""
        cell = self.cell
        s = (cell[0] + 0x9E3779B97F4A7C15) & M64
        cell[0] = s
        z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return (z ^ (z >> 31)) % n
