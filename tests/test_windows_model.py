"""Model windows the kernel has and the model must keep open, each with a test that a lookup which forgets the
kernel's check is caught there; and the syscall contract a program checks against its own /proc/self/maps."""

from __future__ import annotations

import pytest

from ksmstress.arena import ref_slot
from ksmstress.failures import CLASSES, Failure
from ksmstress.mm import ksm, memory, rmap
from ksmstress.mm import mm as mmm
from ksmstress.mm.state import PG_KSM
from ksmstress.runner import run_one
from ksmstress.scenario import load, resolve

from .harness import holding, make_kernel, merged_pair, new_program, pte_page, write


def freeing_with(k, site: str, action):
    """Run `action` once when the model reaches scheduling point `site`, as another task would there."""
    real = k.spoint

    def spoint(s: str) -> None:
        nonlocal action
        if s == site and action is not None:
            act, action = action, None
            act()
        real(s)

    k.spoint = spoint


def test_a_page_at_count_zero_is_refused_between_the_zero_count_and_the_free():
    """put_page_testzero, then free_hot_cold_page: in between, get_page_unless_zero sees a live frame at count 0."""
    k = make_kernel()
    pref = memory.alloc_page(k, "test")
    s = ref_slot(pref)
    seen: list[int] = []
    freeing_with(k, "__put_single_page", lambda: seen.append(memory.get_page_unless_zero(k, s)))
    memory.put_page(k, pref, "test")
    assert seen == [0]
    assert not k.pg.slot_live(s)


def test_a_lookup_without_the_count_test_is_a_use_after_free(monkeypatch):
    """get_page_unless_zero built without its zero test takes a reference on the page being freed: the holder's
    put_page then touches a freed frame."""
    k = make_kernel()

    def get_page_even_if_zero(k, s):
        k.pg.count[s] += 1
        return k.page_ref(s)

    pref = memory.alloc_page(k, "test")
    s = ref_slot(pref)
    got: list[int] = []
    freeing_with(k, "__put_single_page", lambda: got.append(get_page_even_if_zero(k, s)))
    memory.put_page(k, pref, "test")
    with pytest.raises(Failure) as e:
        memory.put_page(k, got[0], "putback_lru_page")
    assert e.value.cls == "use-after-free"


def test_get_ksm_page_refuses_a_ksm_page_being_freed_and_prunes_its_node():
    k = make_kernel()
    (aref, _a), (bref, _b), page = merged_pair(k)
    s = ref_slot(page)
    assert k.pg.flags[s] & PG_KSM
    nref = int(k.pg.mapping[s])
    memory.get_page(k, page, "test")  # reclaim's isolation reference outlives both mappings
    assert mmm.sys_munmap(k, aref, 1, 2) and mmm.sys_munmap(k, bref, 1, 2)
    assert k.pg.count[s] == 1 and k.sn.is_live(nref)  # the stable node is stale only once the page is freed
    got: list[int] = []

    def ksmd_get_ksm_page() -> None:  # ksmd's lookup, under ksm_thread_mutex as ksmd holds it
        k.locks.lock(k.ksm_thread_mutex, "test")
        got.append(ksm.get_ksm_page(k, nref))
        k.locks.unlock(k.ksm_thread_mutex, "test")

    freeing_with(k, "__put_single_page", ksmd_get_ksm_page)
    memory.put_page(k, page, "test")
    assert got == [0] and not k.sn.is_live(nref)


def test_a_null_page_is_an_oops_not_the_last_frame():
    k = make_kernel()
    for f in (memory.PageAnon, memory.PageKsm):
        with pytest.raises(Failure) as e:
            f(k, ref_slot(0))
        assert e.value.cls == "oops"


def test_a_referenced_walk_refused_an_anon_vma_while_mapped_is_a_traversal(monkeypatch):
    """page_lock_anon_vma may refuse only an unmapped page: a walk that trusts a wrong refusal misses ptes."""
    k = make_kernel()
    _a, a = new_program(k, 1)
    write(k, a, 1, 5)
    page = pte_page(k, a, 1)
    monkeypatch.setattr(rmap, "page_mapped", lambda k, s: False)
    with pytest.raises(Failure) as e:
        rmap.page_referenced_anon(k, page)
    assert e.value.cls == "traversal"


def test_the_faithful_referenced_walk_of_a_mapped_page_is_quiet():
    k = make_kernel()
    _a, a = new_program(k, 1)
    write(k, a, 1, 5)
    assert rmap.page_referenced_anon(k, pte_page(k, a, 1)) == 1


# -- the syscall contract ----------------------------------------------------------------------------------------
def test_syscall_class_is_documented():
    assert "syscall" in CLASSES


@pytest.mark.parametrize(
    "defect",
    [
        ("mmap_region", lambda real: lambda k, mref, start, npages, flags: 0),
        ("do_munmap", lambda real: lambda k, mref, start, end: False),
    ],
    ids=["mmap-refuses", "munmap-refuses"],
)
def test_a_syscall_failing_against_the_programs_maps_is_a_syscall_failure(monkeypatch, defect):
    name, make = defect
    monkeypatch.setattr(mmm, name, make(getattr(mmm, name)))
    sc = load(resolve(["scan-munmap-race"])[0])
    res = run_one(sc, 1, "random", ())
    assert res.failure and res.failure["class"] == "syscall", res.failure
    assert "/proc/self/maps" in res.failure["message"]


def test_madvise_over_a_hole_must_say_enomem(monkeypatch):
    real = mmm.sys_madvise
    monkeypatch.setattr(mmm, "sys_madvise", lambda *a: real(*a) and 0)
    res = run_one(load(resolve(["mixed"])[0]), 1, "random", ())
    assert res.failure and res.failure["class"] == "syscall", res.failure
    assert "not mapped" in res.failure["message"]


def test_a_ksm_page_in_the_freeing_window_may_name_its_pruned_node():
    """get_ksm_page finds the KSM page at count 0 (put_page's window), prunes its stable node as stale, and
    ksmd's quiescent check then sees the page still naming the freed node: legal until free_hot_cold_page."""
    from ksmstress.checks.stabletree import check_stable_tree

    k = make_kernel()
    (aref, _a), (bref, _b), page = merged_pair(k)
    s = ref_slot(page)
    nref = int(k.pg.mapping[s])
    memory.get_page(k, page, "test")
    assert mmm.sys_munmap(k, aref, 1, 2) and mmm.sys_munmap(k, bref, 1, 2)

    def prune_and_check():
        with holding(k, k.ksm_thread_mutex):
            assert ksm.get_ksm_page(k, nref) == 0
            check_stable_tree(k, "test")

    freeing_with(k, "__put_single_page", prune_and_check)
    memory.put_page(k, page, "test")
    assert not k.sn.is_live(nref)
