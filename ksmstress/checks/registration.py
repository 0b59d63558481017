"""`registration`: an mm with mergeable areas is on ksmd's list, and ksmd's list names only registered mms.

2.6.33's contract (mm/ksm.c): ksm_madvise calls __ksm_enter before it sets VM_MERGEABLE, and ksm_fork registers
the child before dup_mmap copies its vmas, so a live mm (mm_users > 0) with a VM_MERGEABLE vma has
MMF_VM_MERGEABLE and an mm_slot on ksm_mm_head's list; MMF_VM_MERGEABLE is cleared only after the slot is gone
(__ksm_exit, or ksmd once a full pass of the mm found no VM_MERGEABLE area, holding its mmap_sem so no
MADV_MERGEABLE can slip in), so a live mm with the flag has its slot. Every mm_slot on the list names a live
mm_struct whose slot it is, and holds an mm_count reference on it (atomic_inc in __ksm_enter, mmdrop when freed),
on top of the one all its users share while mm_users > 0.

The windows 2.6.33 opens, and only those, are allowed:
- exit: once mm_users is 0 the mm's flag, slot and vmas come apart in any order (__ksm_exit frees the slot or
  leaves it to ksmd, and ksmd may free it first: "we can reach here even before __ksm_exit"); its slot, while on
  the list, still holds its mm_count reference.
- __ksm_enter lists the slot before it sets MMF_VM_MERGEABLE and takes the mm_count reference; its callers
  (madvise, dup_mmap) hold that mm's mmap_sem for write all along, so while a writer holds it the flag and
  the reference may lag the listing.
- ksmd frees the slot of an mm with no VM_MERGEABLE area and clears the flag after, both inside its own batch:
  never visible at ksmd's quiescent point, which is where this runs.
Read from the tables at ksmd's quiescent points, controlled mode only (mm tasks change the list meanwhile in
free mode).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..arena import NO_GUARD, ref_slot
from ..failures import Failure
from ..mm.state import MM_SLOT_HEAD, MMF_VM_MERGEABLE, VM_MERGEABLE
from ..sync import MMAP_SEM, NOBODY

if TYPE_CHECKING:
    from ..mm.state import K


def _fail(k: K, where: str, msg: str, obj: str, **details: Any) -> None:
    step, who = k.ctl.clock()
    raise Failure("registration", f"{msg} ({where})", {"step": step, "task": who, "object": obj, **details})


def _mm_list(k: K, where: str) -> list[int]:
    """The mm_slot refs on ksm_mm_head's list, checking each link both ways."""
    ms = k.st.mm_slot
    head = k.st.ksm_mm_head
    nxt, prv = ms.c["next"], ms.c["prev"]
    out: list[int] = []
    prev, cur = head, int(nxt[MM_SLOT_HEAD])
    while cur != head:
        if not ms.is_live(cur):
            s = ref_slot(cur)
            freed = ms._freed_info(s) if 0 <= s < ms.capacity else {}
            _fail(
                k,
                where,
                f"ksm_mm_head's list links mm_slot[{s}] after "
                f"{'ksm_mm_head' if prev == head else f'mm_slot[{ref_slot(prev)}]'}, which was freed by "
                f"{freed.get('task')} at step {freed.get('step')} ({freed.get('site')})",
                f"mm_slot[{s}]",
            )
        s = ref_slot(cur)
        if int(prv[s]) != prev:
            _fail(
                k,
                where,
                f"mm_slot[{s}] follows {'ksm_mm_head' if prev == head else f'mm_slot[{ref_slot(prev)}]'} "
                f"on ksm_mm_head's list but its prev is {_slot_name(k, int(prv[s]))}",
                f"mm_slot[{s}]",
            )
        if len(out) >= ms.capacity:
            _fail(k, where, "ksm_mm_head's list does not come back to its head", "ksm_mm_head")
        out.append(cur)
        prev, cur = cur, int(nxt[s])
    if int(prv[MM_SLOT_HEAD]) != prev:
        _fail(
            k,
            where,
            f"ksm_mm_head's prev is {_slot_name(k, int(prv[MM_SLOT_HEAD]))}, not the last slot {_slot_name(k, prev)}",
            "ksm_mm_head",
        )
    return out


def _slot_name(k: K, sref: int) -> str:
    return "ksm_mm_head" if sref == k.st.ksm_mm_head else f"mm_slot[{ref_slot(sref)}]" if sref else "none"


def _write_locked(k: K, m: int) -> bool:
    """Whether some task holds mm m's mmap_sem for write (the __ksm_enter window's lock)."""
    return int(k.st.locks.owner[k.st.locks.lid(MMAP_SEM, m)]) != NOBODY


def _has_mergeable_vma(k: K, m: int) -> bool:
    vm = k.st.vma
    vref, n = int(k.st.mm.c["mmap"][m]), 0
    while vref and vm.is_live(vref) and n <= vm.capacity:
        v = ref_slot(vref)
        if int(vm.c["flags"][v]) & VM_MERGEABLE:
            return True
        vref, n = int(vm.c["next"][v]), n + 1
    return False


def check_registration(k: K, where: str) -> None:
    if k.guard is not NO_GUARD:
        return
    st = k.st
    mm, ms = st.mm, st.mm_slot
    listed = _mm_list(k, where)
    named: dict[int, int] = {}
    for sref in listed:
        s = ref_slot(sref)
        mref = int(ms.c["mm"][s])
        if not mm.is_live(mref):
            m = ref_slot(mref)
            freed = mm._freed_info(m) if 0 <= m < mm.capacity else {}
            _fail(
                k,
                where,
                f"mm_slot[{s}] on ksm_mm_head's list names mm_struct[{m}], which was freed by "
                f"{freed.get('task')} at step {freed.get('step')} ({freed.get('site')}): the slot's mm_count "
                f"reference was dropped while it was still listed",
                f"mm_slot[{s}]",
            )
        m = ref_slot(mref)
        if m in named:
            _fail(
                k,
                where,
                f"mm_slot[{named[m]}] and mm_slot[{s}] on ksm_mm_head's list both name mm_struct[{m}]",
                f"mm_struct[{m}]",
            )
        named[m] = s
        if int(mm.c["slot"][m]) != sref:
            _fail(
                k,
                where,
                f"mm_slot[{s}] on ksm_mm_head's list names mm_struct[{m}], whose slot is "
                f"{_slot_name(k, int(mm.c['slot'][m]))}",
                f"mm_struct[{m}]",
            )
        users, count, flags = int(mm.c["users"][m]), int(mm.c["mmcount"][m]), int(mm.c["flags"][m])
        want = 1 + (users > 0)
        if (not flags & MMF_VM_MERGEABLE or count < want) and not _write_locked(k, m):
            lack = (
                "MMF_VM_MERGEABLE is clear"
                if not flags & MMF_VM_MERGEABLE
                else (f"mm_count is {count} with mm_users {users}: the slot's reference is missing")
            )
            _fail(
                k,
                where,
                f"mm_slot[{s}] on ksm_mm_head's list names mm_struct[{m}] but {lack} (and no "
                f"__ksm_enter can be under way: nobody holds its mmap_sem for write); last changes of "
                f"mm_struct[{m}]: {mm.changes(m)}",
                f"mm_struct[{m}]",
                mm_count=count,
                mm_users=users,
            )
    for m in mm.live_slots().tolist():
        if int(mm.c["users"][m]) == 0:
            continue  # exiting: flag, slot and vmas go in any order
        flagged = bool(int(mm.c["flags"][m]) & MMF_VM_MERGEABLE)
        on_list = m in named
        if _has_mergeable_vma(k, m) and not (flagged and on_list):
            _fail(
                k,
                where,
                f"mm_struct[{m}] (mm_users {int(mm.c['users'][m])}) has a VM_MERGEABLE vma but "
                f"{'no MMF_VM_MERGEABLE' if not flagged else 'no mm_slot on ksm_mm_head list'}: ksmd will never "
                f"scan it (ksm_madvise and ksm_fork register an mm before its vmas become mergeable)",
                f"mm_struct[{m}]",
            )
        if flagged and not on_list:
            _fail(
                k,
                where,
                f"mm_struct[{m}] (mm_users {int(mm.c['users'][m])}) has MMF_VM_MERGEABLE but no mm_slot "
                f"on ksm_mm_head's list (its slot is {_slot_name(k, int(mm.c['slot'][m]))}): the flag is cleared "
                f"only after the slot is freed",
                f"mm_struct[{m}]",
            )
