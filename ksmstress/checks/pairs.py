"""Interleaving coverage of one run: the ordered pairs of conflicting accesses that no common lock ordered.

A pair (kind A, site A, kind B, site B) says: task B (of kind B: mm, ksmd, reclaim, admin) touched at site B an
object that a different task of kind A touched at site A just before, at least one of the two writing, and no
lock held by both at their accesses. This is Krace's alias coverage (an access and the previous conflicting
access by another thread) with Razzer's lockset filter: "just before" means the most recent conflicting access
by another task (for a read, the last write; for a write, the last access), so a pair names an order that this
interleaving produced, not merely two accesses somewhere in the run, and a different schedule of the same
programs gives different pairs. Task kinds, not task ids, so a pair means the same in every run.

Deterministic: a function of the log (checks.accesslog), which the schedule fixes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .accesslog import C_LOCKSET, C_OBJ, C_SITE, C_STEP, C_SUB, C_TASK, C_WRITE

Pair = tuple[str, str, str, str]  # (kind A, site A, kind B, site B): A's access came first
Site = tuple[str, str]  # (kind, site)
Witness = tuple[int, int, int, int]  # (step of A, task of A, step of B, task of B): the pair's first occurrence
Access = tuple[int, int, int, int]  # (task, site id, lockset id, step)


@dataclass(frozen=True)
class RunCoverage:
    """What one run exercised: its pairs, every (kind, site) that accessed shared data, and the log's size."""

    pairs: frozenset[Pair]
    sites: frozenset[Site]
    accesses: int
    dropped: int = 0  # accesses past the log's capacity (not in the pairs)
    # where each pair first occurred in this run: a search reorders the two accesses from there (explore/)
    witness: dict[Pair, Witness] = field(default_factory=dict, repr=False, compare=False)


def _remember(d: dict[tuple[int, int], list[Access | None]], key: tuple[int, int], acc: Access) -> None:
    """Keep, per object, the most recent access and the most recent one by a different task than it."""
    ent = d.get(key)
    if ent is None:
        d[key] = [acc, None]
    elif ent[0][0] == acc[0]:  # type: ignore[index]
        ent[0] = acc
    else:
        ent[1] = ent[0]
        ent[0] = acc


def pairs_of(
    rows: np.ndarray,
    locksets: Sequence[frozenset[int]],
    kind_of: Callable[[int], str],
    site_of: Callable[[int], str],
    dropped: int = 0,
) -> RunCoverage:
    """The run's coverage from its log rows (in run order), its interned locksets, and how to name a task's kind
    and a site id."""
    last: dict[tuple[int, int], list[Access | None]] = {}  # any access
    last_w: dict[tuple[int, int], list[Access | None]] = {}  # writes
    disjoint: dict[tuple[int, int], bool] = {}
    found: dict[tuple[int, int, int, int], Witness] = {}  # (task A, site A, task B, site B) ids -> first witness
    seen: set[tuple[int, int]] = set()
    for row in rows[:, : C_LOCKSET + 1].tolist():
        tid, sid, key, write, ls = row[C_TASK], row[C_SITE], (row[C_OBJ], row[C_SUB]), row[C_WRITE], row[C_LOCKSET]
        step = row[C_STEP]
        seen.add((tid, sid))
        ent = (last if write else last_w).get(key)
        if ent is not None:
            a = ent[0] if ent[0][0] != tid else ent[1]  # type: ignore[index]
            if a is not None:
                pair_ls = (a[2], ls)
                ok = disjoint.get(pair_ls)
                if ok is None:
                    ok = disjoint[pair_ls] = not (locksets[a[2]] & locksets[ls])
                if ok:
                    found.setdefault((a[0], a[1], tid, sid), (a[3], a[0], step, tid))
        acc = (tid, sid, ls, step)
        _remember(last, key, acc)
        if write:
            _remember(last_w, key, acc)
    kinds: dict[int, str] = {}
    names: dict[int, str] = {}

    def kind(t: int) -> str:
        return kinds.get(t) or kinds.setdefault(t, kind_of(t))

    def name(s: int) -> str:
        return names.get(s) or names.setdefault(s, site_of(s))

    witness: dict[Pair, Witness] = {}
    for (ta, sa, tb, sb), w in found.items():
        witness.setdefault((kind(ta), name(sa), kind(tb), name(sb)), w)
    return RunCoverage(
        pairs=frozenset(witness),
        sites=frozenset((kind(t), name(s)) for t, s in seen),
        accesses=len(rows),
        dropped=dropped,
        witness=witness,
    )
