"""`registration`: a live mm with a mergeable vma is on ksmd's list (flag and slot), and every slot on the list
names a registered mm holding the slot's mm_count reference. Defects are built in the test; the faithful model's
windows (exit, __ksm_enter under mmap_sem, ksmd freeing an idle mm's slot) stay quiet."""

from __future__ import annotations

import pytest

from ksmstress.arena import ref_slot
from ksmstress.checks.registration import check_registration
from ksmstress.failures import Failure
from ksmstress.mm import ksm
from ksmstress.mm import mm as mmm
from ksmstress.mm.state import MMF_VM_MERGEABLE
from ksmstress.sync import MMAP_SEM, NOBODY

from .defects import edited
from .harness import make_kernel, new_program, scan, write


def quiescent(k) -> None:
    k.locks.lock(k.ksm_thread_mutex, "test")
    try:
        k.hooks.ksm_quiescent(k, "test")
    finally:
        k.locks.unlock(k.ksm_thread_mutex, "test")


def test_the_faithful_lifecycle_is_quiet():
    """madvise, fork, MADV_UNMERGEABLE (ksmd then frees the idle mm's slot), madvise again, exit."""
    k = make_kernel()
    aref, a = new_program(k, 2)
    write(k, a, 1, 5)
    cref = mmm.dup_mmap(k, aref)
    scan(k, 2)
    quiescent(k)
    mmm.sys_madvise(k, aref, 1, 3, ksm.MADV_UNMERGEABLE)
    scan(k, 2)
    assert not k.mmc.flags[a] & MMF_VM_MERGEABLE and not k.mmc.slot[a]  # ksmd let it go
    mmm.sys_madvise(k, aref, 1, 3, ksm.MADV_MERGEABLE)
    quiescent(k)
    mmm.mmput(k, cref)  # exit: the slot may outlive mm_users, holding its mm_count
    quiescent(k)
    scan(k, 2)
    mmm.mmput(k, aref)
    scan(k, 1)


def test_the_ksm_enter_window_is_allowed_only_under_mmap_sem(monkeypatch):
    """__ksm_enter lists the slot, then sets MMF_VM_MERGEABLE and takes mm_count: madvise holds mmap_sem for write
    meanwhile, which is what allows the window; without that writer the same state is a report."""
    k = make_kernel()
    seen = []
    point = k.spoint

    def at(site):
        if site == "__ksm_enter:set_bit":
            m = next(int(x) for x in k.mmc.live_slots())
            assert k.mmc.slot[m] and not k.mmc.flags[m] & MMF_VM_MERGEABLE  # listed, flag still clear
            check_registration(k, "test")  # madvise holds mmap_sem for write: allowed
            lid = k.st.locks.lid(MMAP_SEM, m)
            owner = int(k.st.locks.owner[lid])
            k.st.locks.owner[lid] = NOBODY
            try:
                with pytest.raises(Failure) as e:
                    check_registration(k, "test")
            finally:
                k.st.locks.owner[lid] = owner
            seen.append(e.value)
        point(site)

    monkeypatch.setattr(k, "spoint", at)
    new_program(k, 1)
    assert len(seen) == 1 and seen[0].cls == "registration" and "MMF_VM_MERGEABLE is clear" in seen[0].message


def test_a_fork_that_skips_ksm_fork_leaves_a_mergeable_mm_unregistered(monkeypatch):
    monkeypatch.setattr(ksm, "ksm_fork", lambda k, mref, oldref: None)
    k = make_kernel()
    aref, _a = new_program(k, 1)
    c = ref_slot(mmm.dup_mmap(k, aref))
    with pytest.raises(Failure) as e:
        quiescent(k)
    f = e.value
    assert f.cls == "registration" and f"mm_struct[{c}]" in f.message and "has a VM_MERGEABLE vma" in f.message


def test_a_slot_without_its_mm_count_reference(monkeypatch):
    edited(monkeypatch, ksm.__ksm_enter, 'k.atomic_add(k.mmc.mmcount, m, 1, "__ksm_enter")', "pass")
    k = make_kernel()
    _aref, a = new_program(k, 1)
    with pytest.raises(Failure) as e:
        quiescent(k)
    assert e.value.cls == "registration" and "the slot's reference is missing" in e.value.message
    assert f"mm_struct[{a}]" in e.value.message


def test_a_list_del_that_forgets_prev_breaks_the_list(monkeypatch):
    edited(monkeypatch, ksm._list_del, 'k.ms.prev[k.ms.deref(nxt, "list_del")] = prv', "pass")
    k = make_kernel()
    new_program(k, 1)
    bref, _b = new_program(k, 1)
    new_program(k, 1)
    mmm.mmput(k, bref)  # __ksm_exit: no rmap_item yet, so it frees the slot itself
    with pytest.raises(Failure) as e:
        quiescent(k)
    assert e.value.cls == "registration" and "but its prev is mm_slot[" in e.value.message


def test_ksmd_freeing_a_slot_but_keeping_the_flag(monkeypatch):
    """scan_get_next_rmap_item frees the slot of an mm with no VM_MERGEABLE area but leaves MMF_VM_MERGEABLE set:
    a later MADV_MERGEABLE would never register it again."""
    edited(
        monkeypatch,
        ksm.scan_get_next_rmap_item,
        "k.mmc.flags[mslot] &= ~MMF_VM_MERGEABLE",
        "pass",
    )
    k = make_kernel()
    aref, a = new_program(k, 2)
    new_program(k, 1)
    mmm.sys_madvise(k, aref, 1, 3, ksm.MADV_UNMERGEABLE)
    with pytest.raises(Failure) as e:
        scan(k, 2)
    assert e.value.cls == "registration" and f"mm_struct[{a}]" in e.value.message
    assert "has MMF_VM_MERGEABLE but no mm_slot" in e.value.message
