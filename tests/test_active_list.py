"""shrink_active_list's page_referenced(page, 0 /* is_locked */, ...): the reclaim step that walks a page WITHOUT
its page lock (2.6.33 mm/vmscan.c, mm/rmap.c page_referenced).

A plain anon page is walked unlocked (page_lock_anon_vma: page_mapped, then anon_vma->lock, the anon_vma only
type-stable under RCU); a KSM page is trylocked, and counted referenced unwalked when the trylock fails; a VM_LOCKED
vma stops the walk, sets VM_LOCKED in vm_flags and is not counted referenced. Each test runs the real detectors
(Recorder: KASAN-checked dereferences, traversal, lockdep, the lock rules).
"""

from __future__ import annotations

from typing import Any

import pytest

from ksmstress.arena import ref_slot
from ksmstress.failures import Failure
from ksmstress.mm import memory, mlock, rmap, vmscan
from ksmstress.mm import mm as mmm
from ksmstress.mm.state import VM_LOCKED, VM_MERGEABLE

from .harness import Recorder, holding, make_kernel, merged_pair, new_program, pte_page, write


class RaceAt(Recorder):
    """The real detectors, plus `action` run once, as another task's steps, when the model is about to take a lock
    at `site` (before lockdep sees the acquisition: the test task holds nothing the action takes)."""

    def __init__(self, site: str) -> None:
        super().__init__()
        self.site = site
        self.action: Any = None
        self.fired = False

    def lock_acquiring(self, tid: int, lid: int, site: str, trylock: bool, subclass: int) -> None:
        if site == self.site and self.action is not None:
            action, self.action = self.action, None
            action()
            self.fired = True
        super().lock_acquiring(tid, lid, site, trylock, subclass)


def _isolated_anon_page(k: Any, npages: int = 1) -> tuple[int, int, int]:
    """A program with one written, unmerged page at address 1, isolated by a reference as reclaim does:
    (mm ref, mm slot, page)."""
    aref, a = new_program(k, npages, mergeable=False)
    write(k, a, 1, 7)
    page = pte_page(k, a, 1)
    memory.get_page(k, page, "isolate_lru_page")
    return aref, a, page


def test_unlocked_anon_walk_racing_munmap_that_frees_the_anon_vma_is_a_clean_rcu_case():
    """munmap runs between page_lock_anon_vma's page_mapped() and its spin_lock: the anon_vma is freed under the
    walk, which locks and reads the freed (type-stable) anon_vma, finds no vma and returns. No detector fires: the
    page is kept by the isolation reference, the anon_vma access is SLAB_DESTROY_BY_RCU's, not a use-after-free."""
    hooks = RaceAt("page_referenced_anon")
    k = make_kernel(hooks=hooks)
    aref, a, page = _isolated_anon_page(k)
    s = ref_slot(page)
    avref = k.pg.mapping[s]
    assert k.av.is_live(avref)
    hooks.action = lambda: mmm.sys_munmap(k, aref, 1, 2)
    assert vmscan.shrink_active_page(k, page) == (0, 0)
    assert hooks.fired
    assert not k.av.is_live(avref)  # freed while the walk was between page_mapped and the lock
    assert not rmap.page_mapped(k, s) and int(k.pg.count[s]) == 1  # only the isolation reference is left
    assert not k.locks.mine  # the freed anon_vma's lock was taken and dropped
    memory.put_page(k, page, "putback_lru_page")
    assert k.st.page.state[s] != 1
    mmm.mmput(k, aref)


def test_unlocked_anon_walk_of_a_reused_anon_vma_finds_no_mapping():
    """The freed anon_vma is reused by another program before the walk locks it (no quarantine): the walk goes
    over the stranger's vma list, page_referenced_one finds its pte maps another page, and nothing fires."""
    hooks = RaceAt("page_referenced_anon")
    k = make_kernel(hooks=hooks, quarantine=0)
    aref, a, page = _isolated_anon_page(k)
    s = ref_slot(page)
    slot = ref_slot(k.pg.mapping[s])
    other: list[int] = []

    def munmap_and_reuse() -> None:
        mmm.sys_munmap(k, aref, 1, 2)
        bref, b = new_program(k, 1, mergeable=False)
        write(k, b, 1, 9)  # anon_vma_prepare: a new anon_vma, the freed one's slot
        other.extend((bref, b))

    hooks.action = munmap_and_reuse
    hooks.visits.clear()
    assert vmscan.shrink_active_page(k, page) == (0, 0)
    bref, b = other
    assert ref_slot(k.vm.anon_vma[ref_slot(mmm.vma_walk(k, b)[0])]) == slot  # the slot was reused
    assert (b, 1) in hooks.visits  # the walk went over the stranger's vma and its pte
    memory.put_page(k, page, "putback_lru_page")
    for ref in (aref, bref):
        mmm.mmput(k, ref)


def test_unlocked_anon_walk_counts_every_mapping_without_the_page_lock():
    """A plain anon page mapped by a parent and its forked child: the unlocked walk visits both ptes, counts two
    references and ors their vma flags into vm_flags, and never takes the page lock."""
    k = make_kernel()
    aref, a, page = _isolated_anon_page(k)
    cref = mmm.dup_mmap(k, aref)
    c = ref_slot(cref)
    k.hooks.visits.clear()
    referenced, vm_flags = vmscan.shrink_active_page(k, page)
    assert referenced == 2 and not vm_flags & VM_LOCKED and not vm_flags & VM_MERGEABLE
    assert {(a, 1), (c, 1)} <= set(k.hooks.visits)
    memory.put_page(k, page, "putback_lru_page")
    for ref in (aref, cref):
        mmm.mmput(k, ref)


def test_ksm_page_whose_lock_is_held_is_counted_referenced_unwalked():
    """page_referenced(page, 0): a KSM page must be trylocked (page_referenced_ksm walks the stable node's hlist,
    the page lock's); while another path holds the lock the page counts as referenced and is not walked."""
    k = make_kernel()
    (aref, a), (bref, b), page = merged_pair(k)
    s = ref_slot(page)
    memory.get_page(k, page, "isolate_lru_page")
    k.hooks.visits.clear()
    with holding(k, k.page_lock(s), "test:other path's lock_page"):
        assert vmscan.shrink_active_page(k, page) == (1, 0)
    assert not k.hooks.visits  # no walk
    referenced, _vm_flags = vmscan.shrink_active_page(k, page)  # the lock is free: trylock, walk, unlock
    assert referenced == 2 and {(a, 1), (b, 1)} <= set(k.hooks.visits)
    assert k.page_lock(s) not in k.locks.mine
    memory.put_page(k, page, "putback_lru_page")
    for ref in (aref, bref):
        mmm.mmput(k, ref)


def test_vm_locked_mapping_stops_the_walk_unreferenced_and_sets_vm_locked():
    """2.6.33's page_referenced_one: a VM_LOCKED vma sets *mapcount to 1 before the decrement (the walk breaks),
    ors VM_LOCKED into vm_flags and does not count the mapping referenced; shrink_active_list itself puts an
    mlocked page back unwalked (!page_evictable)."""
    k = make_kernel()
    aref, a, page = _isolated_anon_page(k)
    assert mlock.sys_mlock(k, aref, 1, 2, True) == 0
    k.hooks.visits.clear()
    assert vmscan.shrink_active_page(k, page) == (0, 0)  # PageMlocked: putback_lru_page, no walk
    assert not k.hooks.visits
    vm_flags = [0]
    assert rmap.page_referenced(k, page, False, vm_flags) == 0
    assert vm_flags[0] == VM_LOCKED and (a, 1) in k.hooks.visits
    memory.put_page(k, page, "putback_lru_page")
    mmm.mmput(k, aref)


def test_unlocked_anon_walk_is_held_to_its_duty(monkeypatch: Any):
    """No exemption for the unlocked walk: made to skip the child's vma (its list read cut short, as a walk that
    went past a listed vma would), it returns with a mapping uncounted and `traversal` names the pte it missed."""
    k = make_kernel()
    aref, a, page = _isolated_anon_page(k)
    cref = mmm.dup_mmap(k, aref)
    c = ref_slot(cref)
    whole = rmap.anon_vma_vmas_rcu
    monkeypatch.setattr(rmap, "anon_vma_vmas_rcu", lambda k, avref, site: whole(k, avref, site)[:1])
    with pytest.raises(Failure) as e:
        vmscan.shrink_active_page(k, page)
    assert e.value.cls == "traversal" and e.value.details["walk"] == "page_referenced_anon"
    missed = {(int(m), int(addr)) for m, addr, *_ in e.value.details["missed"]}
    assert missed & {(a, 1), (c, 1)}


def test_a_page_made_ksm_between_the_dispatch_and_the_walk_is_refused_not_walked_unlocked():
    """shrink_active_list isolates a page after ksmd's write_protect_page counted its references, and ksmd's
    try_to_merge_one_page(page, NULL) makes it KSM (set_page_stable_node under the page lock) while the unlocked
    page_referenced runs: page_referenced tests PageKsm on one load of page->mapping, so the page goes to
    page_referenced_anon, whose page_lock_anon_vma refuses the KSM mapping. A second load would send it to
    page_referenced_ksm without the page lock (its VM_BUG_ON: the stress soak's mixed found that interleaving)."""
    from ksmstress.mm import ksm

    k = make_kernel()
    _mref, m = new_program(k, 1)
    write(k, m, 1, 3)
    page = pte_page(k, m, 1)
    s = ref_slot(page)
    seen: list[str] = []
    orig = k.spoint_unless

    def spoint_unless(lid: int, site: str) -> None:
        orig(lid, site)
        seen.append(site)
        if seen.count("PageKsm") == 1 and site != "PageKsm" and "promoted" not in seen:
            seen.append("promoted")  # ksmd's steps, between page_referenced's PageKsm load and what follows it
            k.spoint_unless = orig  # type: ignore[method-assign]
            with holding(k, k.page_lock(s)):
                ksm.set_page_stable_node(k, s, 0)

    k.spoint_unless = spoint_unless  # type: ignore[method-assign]
    assert rmap.page_referenced(k, page, False) == 0
    assert "promoted" in seen and memory.PageKsm(k, s)
