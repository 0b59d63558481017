"""A splitmix64 generator whose state lives in shared memory, drawn from a buffered block.

Why not `random.Random`: the scheduler's decisions are made by whichever process happens to be running, so the
generator state must be shared by all of them. splitmix64 is tiny and fully specified, so the same seed gives the
same decisions on every machine and Python version. Its i-th output depends only on (seed, i), so a block of
outputs is computed at once in numpy (uint64 arithmetic wraps exactly as the algorithm does) and the hot path is
one shared index read and write: a scheduling point costs about half as much as computing the mix in Python ints.
"""

from __future__ import annotations

import numpy as np

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
BLOCK = 4096  # outputs per buffered block
_SEED_SALT = 0x6A09E667F3BCC908
_STATE, _USED = 0, 1  # the shared cells: the state after the buffered block, draws used from the block


def mix64(z: int) -> int:
    """The splitmix64 finaliser: a good 64-bit hash of an integer (also used to derive per-run seeds)."""
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def splitmix_block(state: int, n: int) -> np.ndarray:
    """The next `n` splitmix64 outputs after `state` (state + k*GOLDEN, k = 1..n, each mixed), vectorised."""
    z = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GOLDEN) + np.uint64(state)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class SharedPrng:
    """splitmix64 over shared cells: `cell` is uint64 (2,) = [state after the buffered block, draws used from it];
    `buf` is the uint64 (BLOCK,) block itself."""

    def __init__(self, cell: np.ndarray, buf: np.ndarray) -> None:
        self.buf = buf
        self.cell = memoryview(cell)  # plain Python ints in and out
        self.vbuf = memoryview(buf)

    def seed(self, seed: int) -> None:
        self.cell[_STATE] = mix64(seed ^ _SEED_SALT)
        self._refill()

    def _refill(self) -> None:
        state = self.cell[_STATE]
        self.buf[:] = splitmix_block(state, BLOCK)
        self.cell[_STATE] = (state + BLOCK * GOLDEN) & M64
        self.cell[_USED] = 0

    def next64(self) -> int:
        cell = self.cell
        i = cell[_USED]
        if i == BLOCK:
            self._refill()
            i = 0
        cell[_USED] = i + 1
        return self.vbuf[i]

    def below(self, n: int) -> int:
        """A uniform integer in [0, n) (modulo bias is < 2^-50 for the small n used here); the scheduler's hot
        path, so next64 is inlined."""
        cell = self.cell
        i = cell[_USED]
        if i == BLOCK:
            self._refill()
            i = 0
        cell[_USED] = i + 1
        return self.vbuf[i] % n
