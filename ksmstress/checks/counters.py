"""`counters`: KSM's statistics agree with its trees and rmap_items whenever ksmd is quiescent.

Checked while ksmd (or a run=2 writer) holds ksm_thread_mutex between batches, so no tree or counter is
mid-change: pages_shared is the number of stable nodes with rmap_items, pages_sharing the rest of the stable
rmap_items, pages_unshared the rmap_items in the unstable tree, rmap_items every live rmap_item, and
pages_volatile (rmap_items less the other three) is never negative.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..failures import Failure
from ..mm.state import G_PAGES_SHARED, G_PAGES_SHARING, G_PAGES_UNSHARED, G_RMAP_ITEMS, STABLE_FLAG, UNSTABLE_FLAG

if TYPE_CHECKING:
    from ..mm.state import K


def check_counters(k: K, where: str) -> None:
    st = k.st
    live = st.rmap_item.live_slots()
    flags = st.rmap_item.c["flags"][live]
    stable = live[(flags & STABLE_FLAG) != 0]
    heads = np.unique(st.rmap_item.c["head"][stable])
    want = {
        "pages_shared": int(heads.size),
        "pages_sharing": int(stable.size - heads.size),
        "pages_unshared": int(np.count_nonzero(flags & UNSTABLE_FLAG)),
        "rmap_items": int(live.size),
    }
    have = {
        "pages_shared": int(k.g[G_PAGES_SHARED]),
        "pages_sharing": int(k.g[G_PAGES_SHARING]),
        "pages_unshared": int(k.g[G_PAGES_UNSHARED]),
        "rmap_items": int(k.g[G_RMAP_ITEMS]),
    }
    bad = [f"{n} is {have[n]} but the trees say {want[n]}" for n in want if have[n] != want[n]]
    volatile = have["rmap_items"] - have["pages_shared"] - have["pages_sharing"] - have["pages_unshared"]
    if volatile < 0:
        bad.append(f"pages_volatile is {volatile}")
    dead = [int(h) for h in heads if not st.stable_node.is_live(int(h))]
    if dead:
        bad.append(f"{len(dead)} stable rmap_items point at freed stable nodes")
    if bad:
        step, who = k.ctl.clock()
        raise Failure(
            "counters",
            f"at {where} (step {step}, {who}): " + "; ".join(bad),
            {"step": step, "task": who, "have": have, "want": want},
        )
