"""Later kernels' behaviours the oracle's model can take on, to tell a difference a later kernel makes from a fault.

Two differences between 2.6.33 and a later kernel have no sysfs setting that switches them off (README, "A
later-kernel difference no setting switches off"). The model knows both (mm/state.LATER_BEHAVIOURS, consulted
through `K.later` at the one place each changes). When 2.6.33's figures differ from the running kernel's, the
oracle runs the model again with the behaviours that kernel has, one at a time and then all together; a workload
whose figures the model then predicts exactly agrees *as that later kernel*, and the report names the behaviour
and keeps 2.6.33's differing figures. Anything else stays a mismatch: the model must predict every figure, no
difference is waved through.
"""

from __future__ import annotations

import re

from ..mm.state import LATER_BEHAVIOURS


def version(release: str) -> tuple[int, ...]:
    """`6.18.0-rc1-foo` -> (6, 18, 0); what does not parse is (0,): no later behaviour applies then."""
    m = re.match(r"(\d+(?:\.\d+)*)", release)
    return tuple(int(x) for x in m.group(1).split(".")) if m else (0,)


def _oldest_first(names: frozenset[str] | tuple[str, ...] | list[str]) -> list[str]:
    return sorted(names, key=lambda n: version(LATER_BEHAVIOURS[n][0]))


def applicable(release: str) -> list[str]:
    """The later behaviours a kernel of this release has, oldest first."""
    have = version(release)
    return _oldest_first([n for n, (since, _) in LATER_BEHAVIOURS.items() if version(since) <= have])


def candidates(release: str) -> list[frozenset[str]]:
    """The sets to try, in order: each behaviour alone, then all together (a report names the fewest)."""
    names = applicable(release)
    sets = [frozenset({n}) for n in names]
    if len(names) > 1:
        sets.append(frozenset(names))
    return sets


def describe(names: frozenset[str] | tuple[str, ...]) -> str:
    """`4.13 is_page_sharing_candidate: ...; 2.6.38 every mlock ...` for a report line."""
    return "; ".join(f"{LATER_BEHAVIOURS[n][0]} {LATER_BEHAVIOURS[n][1]}" for n in _oldest_first(names))
