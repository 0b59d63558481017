"""Quiescence invariants: after every task has exited and ksmd has cleaned up, nothing may be left.

`leak`: every table of the arena is empty (but for permanent list heads), every KSM counter is 0, no pte is
set, no lock is held.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..failures import Failure
from ..mm.state import G_PAGES_SHARED, G_PAGES_SHARING, G_PAGES_UNSHARED, G_RMAP_ITEMS, PTE_KIND_MASK

if TYPE_CHECKING:
    from ..mm.state import State

COUNTERS = {
    "pages_shared": G_PAGES_SHARED,
    "pages_sharing": G_PAGES_SHARING,
    "pages_unshared": G_PAGES_UNSHARED,
    "rmap_items": G_RMAP_ITEMS,
}


def check_quiescence(st: State) -> Failure | None:
    """Return a `leak` failure describing what is left behind, or None when the arena is clean."""
    left = []
    for t in st.tables:
        live = t.live_slots()
        if live.size:
            left.append(f"{live.size} {t.name} (first: {t.name}[{int(live[0])}])")
    for name, cell in COUNTERS.items():
        if st.g[cell]:
            left.append(f"ksm_{name} = {int(st.g[cell])}")
    ptes = int(np.count_nonzero(st.pte & PTE_KIND_MASK))
    if ptes:
        left.append(f"{ptes} ptes still set")
    held = st.locks.any_held()
    if held:
        left.append("locks held: " + ", ".join(f"{st.locks.name(lid)} by task {t}" for t, lid in held))
    if not left:
        return None
    return Failure("leak", "at quiescence: " + "; ".join(left), {"left": left})
