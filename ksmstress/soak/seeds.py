"""Which (scenario, seed) a soak's work item k is, so that any prefix of the items covers the scenarios evenly and
`--shard I/N` machines given the same `--seed` cover disjoint seeds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SeedSpace:
    """Work item k -> (scenario index, seed). Items are numbered so that any prefix covers the scenarios evenly,
    and seeds are this shard's: base <= s, s % shards == shard - 1, in increasing order."""

    base: int
    nscenarios: int
    shard: int = 1
    shards: int = 1

    @property
    def first(self) -> int:
        return self.base + (self.shard - 1 - self.base) % self.shards

    def seed(self, m: int) -> int:
        """The m-th seed (0-based) of this shard."""
        return self.first + m * self.shards

    def item(self, k: int) -> tuple[int, int]:
        return k % self.nscenarios, self.seed(k // self.nscenarios)
