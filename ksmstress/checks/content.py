"""Page contents a task writes, and the `data-loss` check of what it reads back.

Pattern p fills a page with byte (p % 255) + 1 and ends it with byte p // 255, so patterns differ in the last
byte too (LTP ksm01's "one page differs in its last byte"). -1 means never written: the page reads as zeros.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from ..arena import ref_slot
from ..failures import Failure
from ..mm.state import PG_KSM, PTE_PRESENT, pte_decode
from .history import changes_text

if TYPE_CHECKING:
    from ..mm.state import K

# the pte stores that change what a mapping's bytes are: a merge (replace_page), a COW, a swap-in or fork's copy
CHANGES_CONTENT = ("replace_page", "do_wp_page", "do_swap_page", "do_anonymous_page", "copy_one_pte")


@lru_cache(maxsize=4096)
def _pattern(p: int, page_size: int) -> bytes:
    if p < 0:
        return bytes(page_size)
    b = bytearray([(p % 255) + 1]) * page_size
    b[-1] = (p // 255) % 256
    return bytes(b)


def pattern_bytes(p: int, page_size: int) -> np.ndarray:
    return np.frombuffer(_pattern(p, page_size), dtype=np.uint8)


def mapping_text(k: K, m: int, addr: int) -> tuple[str, dict[str, Any]]:
    """What mm m's pte at addr maps now (page and frame, KSM or not, counts), the last store that changed the
    mapping's content (merge, COW, replace) and the pte's last stores, from its history ring."""
    st = k.st
    kind, ref, _write = pte_decode(int(st.pte[m, addr]))
    info: dict[str, Any] = {}
    if kind == PTE_PRESENT and st.page.is_live(ref):
        s = ref_slot(ref)
        ksm = bool(st.page.flags[s] & PG_KSM)
        now = (f"maps {'KSM ' if ksm else ''}page[{s}] (frame {s}, mapcount {st.page.mapcount[s]}, "
               f"count {st.page.count[s]}; its last changes: {changes_text(st.page, s)})")
        info.update(page=s, frame=s, ksm=ksm)
    else:
        now = "maps no live page now"
    hist = st.pte_hist.entries(m * st.sz.vpages + addr)
    last = next((e for e in reversed(hist) if e[2].startswith(CHANGES_CONTENT)), None)
    label = st.stamp.label
    lc = (f"last merge/COW/replace: {last[2]} by {label(last[1])} at step {last[0]} -> page[{ref_slot(last[4])}]"
          if last else "no merge, COW or replace recorded")
    stores = "; ".join(f"step {e[0]} {label(e[1])} {e[2]}" for e in hist) or "none recorded"
    info["last_change"] = {"site": last[2], "task": label(last[1]), "step": last[0]} if last else None
    info["pte_stores"] = [{"step": e[0], "task": label(e[1]), "site": e[2]} for e in hist]
    return f"the pte {now}; {lc}; its last stores: {stores}", info


def check_read(data: np.ndarray, expected: int, who: str, m: int, addr: int, step: int, k: K | None = None) -> None:
    """The task's own record says it wrote pattern `expected` at addr: any other bytes are data loss. With the
    kernel `k`, the report names the page and frame the pte maps and the last merge, COW or replace of it."""
    want = _pattern(expected, len(data))
    got = data.tobytes()
    if got != want:
        first = next(i for i in range(len(want)) if got[i] != want[i])
        where, info = mapping_text(k, m, addr) if k is not None else ("", {})
        raise Failure(
            "data-loss",
            f"{who} read mm[{m}] address {addr} at step {step}: byte {first} is {got[first]:#04x}, "
            f"its record says pattern {expected} ({want[first]:#04x})" + (f"; {where}" if where else ""),
            {"task": who, "mm": m, "address": addr, "step": step, "expected_pattern": expected, "offset": first,
             **info},
        )
