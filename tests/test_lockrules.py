"""`unlocked-access`: each of the kernel's lock rules fires on a defect built here (a model path with its lock taken
out, or a scratch copy of a path that lets its lock go too early), names the task, the object, the site and the
lock, and stays quiet on the correct model, in controlled and in free mode."""

from __future__ import annotations

import ast
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ksmstress.arena import ref_slot
from ksmstress.catalog import shipped_dir
from ksmstress.checks import lockrules
from ksmstress.checks.content import pattern_bytes
from ksmstress.failures import CLASSES, Failure
from ksmstress.mm import ksm, memory, rmap, vmscan
from ksmstress.mm import mm as mmm
from ksmstress.mm.state import KSM_RUN_UNMERGE, K
from ksmstress.mutate import rules
from ksmstress.runner import run_one
from ksmstress.scenario import load
from ksmstress.sync import MMAP_SEM, READ, WRITE

from .harness import holding, make_kernel, merged_pair, new_program, pte_page, scan, vma_at, write

MM_DIR = Path(ksm.__file__).parent
Pred = Callable[[int, str], bool]
_OPS = (
    "lock",
    "lock_nested",
    "trylock",
    "unlock",
    "down_read",
    "up_read",
    "down_write",
    "down_write_nested",
    "up_write",
)


def without_lock(monkeypatch: pytest.MonkeyPatch, k: K, skip: Pred, downgrade: bool = False) -> None:
    """The defect: every operation on a lock `skip(lid, site)` picks is left out (a trylock "succeeds" without
    taking it), as if the path never took that lock; with `downgrade`, down_write / up_write become down_read /
    up_read instead (the path holds mmap_sem for read where it needs it for write)."""
    locks = k.locks
    real = {n: getattr(locks, n) for n in _OPS}

    def op(name: str) -> Callable[..., Any]:
        def call(lid: int, site: str, *args: Any) -> Any:
            if not skip(lid, site):
                return real[name](lid, site, *args)
            if downgrade and name in ("down_write", "up_write"):
                return real["down_read" if name == "down_write" else "up_read"](lid, site)
            return True if name == "trylock" else None

        return call

    for name in _OPS:
        monkeypatch.setattr(locks, name, op(name))


def at(*sites: str) -> Pred:
    """Lock operations at these sites, whichever lock."""
    return lambda _lid, site: site in sites


def caught(fn: Callable[[], Any], rule: str, lock: str | set[str], *words: str) -> Failure:
    """Run fn; it must fail as unlocked-access under `rule`, naming `lock` (or one of a set) and every word."""
    with pytest.raises(Failure) as e:
        fn()
    f = e.value
    assert f.cls == "unlocked-access", f
    lock = f.details["lock"] if isinstance(lock, set) and f.details["lock"] in lock else lock
    assert f.details["rule"] == rule and f.details["lock"] == lock, f.details
    assert f"without holding {lock}" in f.message and lockrules.RULES[rule].text in f.message
    for w in words:
        assert w in f.message, (w, f.message)
    return f




# -- the class and the rule table ---------------------------------------------------------------------------------
def test_the_class_is_documented_and_every_rule_the_model_names_exists():
    assert "unlocked-access" in CLASSES
    named: set[str] = set()
    for path in MM_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "lock_rule":
                arg = node.args[1]
                assert isinstance(arg, ast.Constant), f"{path.name}:{node.lineno}: the rule is a literal"
                named.add(arg.value)
    named.add("pte")  # the pte_stored hook's rule (checks/__init__.py)
    assert named <= set(lockrules.RULES), named - set(lockrules.RULES)
    assert set(lockrules.RULES) <= named, set(lockrules.RULES) - named  # no rule the model never names


def test_mutate_leaves_the_lock_rule_assertions_alone():
    """The assertions are instrumentation: no mutant deletes, moves, swaps or edits a lock_rule line."""
    for path in MM_DIR.glob("*.py"):
        src = path.read_text()
        lines = src.split("\n")
        for site in rules.sites(src):
            touched: set[int] = set()
            for e in site.edits:
                if isinstance(e, rules.Swap):
                    touched.update(range(e.a_line, e.a_end + 1), range(e.b_line, e.b_end + 1))
                elif isinstance(e, rules.Delete):
                    touched.update(range(e.line, e.end_line + 1))
                else:
                    touched.update(range(e.line, e.end_line + 1))
            assert not any("lock_rule" in lines[n - 1] for n in touched), (path.name, site)


def test_held_modes_are_kept_beside_the_held_locks():
    k = make_kernel()
    _mref, m = new_program(k, 1)
    sem = k.mmap_sem(m)
    k.locks.down_read(sem, "test")
    assert k.locks.holds(sem) and not k.locks.holds(sem, WRITE) and k.locks.modes == [READ]
    k.locks.lock(k.ptl(m), "test")
    k.locks.up_read(sem, "test")
    assert k.locks.mine == [k.ptl(m)] and k.locks.modes == [WRITE]
    k.locks.unlock(k.ptl(m), "test")
    k.locks.down_write(sem, "test")
    assert k.locks.holds(sem, WRITE) and k.st.locks.cls_of(sem) == MMAP_SEM
    k.locks.up_write(sem, "test")
    assert k.locks.mine == [] and k.locks.modes == []


# -- ptes: the page-table lock ------------------------------------------------------------------------------------
def test_a_pte_stored_without_the_page_table_lock(monkeypatch):
    """fork's copy_pte_range without the child's pte lock: the child's pte store is the unlocked access."""
    k = make_kernel()
    aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 3)
    without_lock(monkeypatch, k, lambda lid, site: site == "copy_pte_range")  # dst_ptl; the nested src stays
    f = caught(lambda: mmm.dup_mmap(k, aref), "pte", "mm[1].page_table_lock", "writes mm[1]'s pte at address 1")
    assert f.details["site"] == "copy_one_pte" and "copy_page_range" in f.details["path"]


def test_a_pte_read_without_the_page_table_lock(monkeypatch):
    """follow_page without pte_offset_map_lock: it reads the pte, then takes a reference on what it names."""
    k = make_kernel()
    _aref, a = new_program(k, 1)
    write(k, a, 1, 3)
    without_lock(monkeypatch, k, at("test:follow_page"))
    caught(lambda: memory.follow_page(k, a, 1, "test:follow_page"), "pte", f"mm[{a}].page_table_lock", "reads")


def test_a_user_store_after_the_pte_lock_is_dropped(monkeypatch):
    """A scratch user_write that lets the pte lock go between the translation and the store."""
    k = make_kernel()
    _aref, a = new_program(k, 1)
    write(k, a, 1, 3)

    def user_write_late(k: K, m: int, addr: int, data: np.ndarray) -> bool:
        k.locks.lock(k.ptl(m), "user_write")
        _kind, ref, _w = memory.pte_get(k, m, addr)
        k.locks.unlock(k.ptl(m), "user_write")
        memory.cpu_store(k, m, addr, ref, data)  # the defect: the page may be unmapped (and freed) by now
        return True

    monkeypatch.setattr(memory, "user_write", user_write_late)
    caught(lambda: write(k, a, 1, 4), "user-access", f"mm[{a}].page_table_lock", f"the page mm[{a}] maps at address 1")


def test_a_reference_taken_through_a_pte_after_its_lock_is_dropped(monkeypatch):
    """A scratch follow_page that takes its reference after pte_unmap_unlock: the page may be gone by then."""
    k = make_kernel()
    _aref, a = new_program(k, 1)
    write(k, a, 1, 3)

    def follow_page_late(k: K, m: int, addr: int, site: str) -> int:
        k.locks.lock(k.ptl(m), site)
        kind, ref, _w = memory.pte_get(k, m, addr)
        k.locks.unlock(k.ptl(m), site)
        if kind == 1:
            memory.get_pte_page(k, m, ref, site)  # the defect
            return ref
        return 0

    monkeypatch.setattr(memory, "follow_page", follow_page_late)
    page = pte_page(k, a, 1)
    f = caught(lambda: scan(k, 1), "pte_page_ref", f"mm[{a}].page_table_lock", f"writes page[{ref_slot(page)}]'s")
    assert "scan_get_next_rmap_item" in f.details["path"]


# -- the mm_slot list: ksm_mmlist_lock ---------------------------------------------------------------------------
def test_mm_slot_list_changed_without_ksm_mmlist_lock(monkeypatch):
    k = make_kernel()
    without_lock(monkeypatch, k, at("__ksm_enter"))
    f = caught(lambda: new_program(k, 1), "mm_slots_hash", "ksm_mmlist_lock", "insert_to_mm_slots_hash")
    assert "__ksm_enter" in f.details["path"]


def test_mm_slot_list_followed_without_ksm_mmlist_lock(monkeypatch):
    """scan_get_next_rmap_item's first lock: ksmd follows ksm_mm_head.mm_list.next without it."""
    k = make_kernel()
    new_program(k, 1)
    without_lock(monkeypatch, k, lambda lid, site: lid == k.ksm_mmlist_lock and site == "scan_get_next_rmap_item")
    caught(lambda: scan(k, 1), "mm_list", "ksm_mmlist_lock", "reads mm_slot[0]'s mm_list links")


def test_the_scan_cursor_assigned_without_ksm_mmlist_lock():
    """ksm_scan.mm_slot written under ksm_thread_mutex alone: __ksm_enter / __ksm_exit read it under the other."""
    k = make_kernel()
    new_program(k, 1)
    with holding(k, k.ksm_thread_mutex):
        caught(lambda: ksm.set_scan_slot(k, k.st.ksm_mm_head, "test"), "ksm_scan.mm_slot", "ksm_mmlist_lock")


def test_list_empty_peeks_stay_unlocked():
    """2.6.33's ksmd_should_run and scan_get_next_rmap_item test list_empty(&ksm_mm_head.mm_list) unlocked."""
    k = make_kernel()
    new_program(k, 1)
    assert not ksm.ksm_mm_list_empty(k) and ksm.ksmd_should_run(k)


# -- ksm_thread_mutex ---------------------------------------------------------------------------------------------
def test_ksm_run_changed_without_ksm_thread_mutex(monkeypatch):
    k = make_kernel()
    merged_pair(k)
    without_lock(monkeypatch, k, at("run_store"))
    caught(lambda: ksm.run_store(k, KSM_RUN_UNMERGE), "ksm_run", "ksm_thread_mutex", "writes ksm_run at run_store")


def test_the_scan_without_ksm_thread_mutex():
    k = make_kernel()
    new_program(k, 1)
    caught(lambda: ksm.ksm_do_scan(k, 1), "ksm_do_scan", "ksm_thread_mutex", "runs ksm_do_scan's scan")


def test_run2_unmerge_without_ksm_thread_mutex():
    k = make_kernel()
    merged_pair(k)
    caught(lambda: ksm.unmerge_and_remove_all_rmap_items(k), "unmerge_all", "ksm_thread_mutex")


# -- a stable node's rmap_items and a page becoming KSM: the page lock ----------------------------------------
def test_stable_tree_append_without_the_ksm_page_lock(monkeypatch):
    """A third equal page found in the stable tree: cmp_and_merge_page appends its rmap_item without lock_page."""
    k = make_kernel()
    _a, _b, page = merged_pair(k)
    without_lock(monkeypatch, k, at("cmp_and_merge_page:lock_page", "cmp_and_merge_page:unlock_page"))
    _cref, c = new_program(k, 1)
    write(k, c, 1, 5)
    s = ref_slot(page)
    caught(lambda: scan(k, 2), "stable_node", f"page[{s}].page_lock", "writes stable_node[", "stable_tree_append")


def test_hlist_del_without_the_ksm_page_lock(monkeypatch):
    """remove_rmap_item_from_tree's hlist_del without lock_page: b's page changes, ksmd takes its item out."""
    k = make_kernel()
    _a, (_bref, b), page = merged_pair(k)
    write(k, b, 1, 6)
    without_lock(monkeypatch, k, at("remove_rmap_item_from_tree"))
    caught(lambda: scan(k, 1), "stable_node", f"page[{ref_slot(page)}].page_lock", "hlist_del")


def test_a_page_made_ksm_without_its_lock(monkeypatch):
    """try_to_merge_one_page without trylock_page: set_page_stable_node(page, NULL) on an unlocked page."""
    k = make_kernel()
    without_lock(monkeypatch, k, at("try_to_merge_one_page:trylock_page", "try_to_merge_one_page:unlock_page"))
    _aref, a = new_program(k, 1)
    _bref, b = new_program(k, 1)
    write(k, a, 1, 5)
    write(k, b, 1, 5)
    locks = {f"page[{ref_slot(pte_page(k, x, 1))}].page_lock" for x in (a, b)}
    f = caught(lambda: scan(k, 3), "page_stable_node", locks, "PG_KSM and mapping")
    assert f.details["site"] == "set_page_stable_node"


def test_rmap_walk_of_an_unlocked_ksm_page(monkeypatch):
    """shrink_page without trylock_page: page_referenced_ksm on an unlocked page (VM_BUG_ON(!PageLocked))."""
    k = make_kernel()
    _a, _b, page = merged_pair(k)
    without_lock(monkeypatch, k, at("shrink_page_list:trylock_page", "shrink_page_list:unlock_page"))
    memory.get_page(k, page, "isolate_lru_page")
    f = caught(lambda: vmscan.shrink_page(k, page, True), "page_locked", f"page[{ref_slot(page)}].page_lock")
    assert f.details["site"] == "page_referenced_ksm" and "runs a locked-page path" in f.message


def test_try_to_unmap_of_an_unlocked_page():
    """try_to_unmap's BUG_ON(!PageLocked(page)), for an anon page as for a KSM one."""
    k = make_kernel()
    _aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 1)
    page = pte_page(k, a, 1)
    caught(lambda: rmap.try_to_unmap(k, page), "page_locked", f"page[{ref_slot(page)}].page_lock", "try_to_unmap")


def test_reuse_swap_page_on_an_unlocked_page(monkeypatch):
    """do_wp_page's reuse decision without trylock_page."""
    k = make_kernel()
    aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 1)
    cref = mmm.dup_mmap(k, aref)
    write(k, ref_slot(cref), 1, 2)  # the child copies: the parent's page is exclusive again, write-protected
    without_lock(monkeypatch, k, at("do_wp_page:trylock_page", "do_wp_page:unlock_page"))
    lock = f"page[{ref_slot(pte_page(k, a, 1))}].page_lock"
    caught(lambda: write(k, a, 1, 3), "page_locked", lock, "reuse_swap_page")


# -- an anon_vma's vma list: anon_vma->lock ------------------------------------------------------------------
def test_anon_vma_link_without_its_lock(monkeypatch):
    k = make_kernel()
    aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 1)
    without_lock(monkeypatch, k, at("anon_vma_link"))
    av = ref_slot(k.vm.anon_vma[ref_slot(vma_at(k, a, 1))])
    f = caught(lambda: mmm.dup_mmap(k, aref), "anon_vma", f"anon_vma[{av}].lock", f"writes anon_vma[{av}]'s vma list")
    assert f.details["site"] == "list_add_tail" and "anon_vma_link" in f.details["path"]


def test_anon_vma_unlink_without_its_lock(monkeypatch):
    k = make_kernel()
    aref, a = new_program(k, 1, mergeable=False)
    write(k, a, 1, 1)
    without_lock(monkeypatch, k, at("anon_vma_unlink"))
    av = ref_slot(k.vm.anon_vma[ref_slot(vma_at(k, a, 1))])
    caught(lambda: mmm.sys_munmap(k, aref, 1, 2), "anon_vma", f"anon_vma[{av}].lock", "list_del")


def test_a_ksm_rmap_walk_without_the_anon_vma_lock(monkeypatch):
    k = make_kernel()
    _a, _b, page = merged_pair(k)
    without_lock(monkeypatch, k, at("page_referenced_ksm"))
    memory.get_page(k, page, "isolate_lru_page")
    f = caught(lambda: vmscan.shrink_page(k, page, False), "anon_vma", "anon_vma[1].lock", "reads anon_vma[1]")
    assert f.details["site"] == "page_referenced_ksm"


def test_vma_anon_vma_set_without_page_table_lock(monkeypatch):
    k = make_kernel()
    _aref, a = new_program(k, 1)
    without_lock(monkeypatch, k, lambda lid, site: site == "anon_vma_prepare" and lid == k.ptl(a))
    caught(lambda: write(k, a, 1, 1), "vma_anon_vma", f"mm[{a}].page_table_lock", "->anon_vma")


# -- an mm's vmas: mmap_sem ---------------------------------------------------------------------------------------
def test_a_fault_without_mmap_sem(monkeypatch):
    k = make_kernel()
    _aref, a = new_program(k, 1)
    without_lock(monkeypatch, k, at("do_page_fault"))
    caught(lambda: write(k, a, 1, 1), "mmap_sem", f"mm[{a}].mmap_sem", "reads mm[", "at find_vma")


def test_fork_without_the_parents_mmap_sem(monkeypatch):
    k = make_kernel()
    aref, a = new_program(k, 1)
    without_lock(monkeypatch, k, lambda lid, site: site == "dup_mmap" and lid == k.mmap_sem(a))
    f = caught(lambda: mmm.dup_mmap(k, aref), "mmap_sem", f"mm[{a}].mmap_sem", "vma list")
    assert "dup_mmap" in f.details["path"]


def test_a_fork_registers_its_child_with_ksmd_before_taking_the_childs_mmap_sem(monkeypatch):
    """dup_mmap's ksm_fork before down_write_nested(&mm->mmap_sem): ksmd could scan the child's empty vma list and
    forget it (no VM_MERGEABLE vma), and the forked mm would never be merged."""
    k = make_kernel()
    aref, a = new_program(k, 1)
    without_lock(monkeypatch, k, at("dup_mmap:nested"))
    f = caught(lambda: mmm.dup_mmap(k, aref), "ksm_enter", "mm[1].mmap_sem", "registration with ksmd")
    assert f.details["path"][:3] == ["__ksm_enter", "ksm_fork", "dup_mmap"] and a == 0


def test_vm_flags_changed_under_mmap_sem_for_read_only(monkeypatch):
    """madvise with down_read: the vma's vm_flags change needs mmap_sem for write."""
    k = make_kernel()
    aref, a = new_program(k, 2)
    without_lock(monkeypatch, k, at("sys_madvise"), downgrade=True)
    f = caught(
        lambda: mmm.sys_madvise(k, aref, 1, 3, ksm.MADV_UNMERGEABLE),
        "vm_flags",
        f"mm[{a}].mmap_sem",
        "->vm_flags",
        "for write (it holds it for read)",
    )
    assert f.details["held"] == [f"mm[{a}].mmap_sem"]


def test_ksmd_without_mmap_sem_is_the_variant_and_caught_at_once():
    """The catalogue's ksmd-no-mmap-sem: find_vma without mmap_sem is the unlocked access itself."""
    k = make_kernel(bugs=("ksmd-no-mmap-sem",))
    new_program(k, 1)
    f = caught(lambda: scan(k, 1), "mmap_sem", "mm[0].mmap_sem", "ksm")
    assert "scan_get_next_rmap_item" in f.details["path"]


def test_exit_mmap_reads_the_vmas_without_mmap_sem_legitimately():
    """exit_mmap: mm_users is 0, nobody else can reach the vmas (2.6.33 takes no mmap_sem there)."""
    k = make_kernel()
    aref, a = new_program(k, 2)
    write(k, a, 1, 1)
    mmm.mmput(k, aref)
    assert not k.mmc.is_live(aref)


# -- quiet on the correct model -----------------------------------------------------------------------------------
def test_quiet_on_the_correct_model_step_by_step():
    """Merge, fork, COW, swap, unmap, run=2, exit: every rule holds."""
    k = make_kernel()
    (aref, a), (bref, b), page = merged_pair(k)
    cref = mmm.dup_mmap(k, aref)
    write(k, ref_slot(cref), 1, 9)
    memory.get_page(k, page, "isolate_lru_page")
    if not vmscan.shrink_page(k, page, True):
        memory.put_page(k, page, "putback_lru_page")
    assert memory.user_read(k, b, 1).tobytes() == pattern_bytes(5, k.st.sz.page_size).tobytes()
    mmm.sys_munmap(k, bref, 1, 2)
    ksm.run_store(k, KSM_RUN_UNMERGE)
    for ref in (aref, bref, cref):
        mmm.mmput(k, ref)
    assert not k.mmc.is_live(aref) and vma_at(k, b, 1) == 0


SCEN = str(shipped_dir())


@pytest.mark.parametrize("granularity", ["shared", "locks"])
@pytest.mark.parametrize("name", ["mixed", "seed-fork-race", "scan-munmap-race", "merge-write-race"])
def test_quiet_on_shipped_scenarios(name, granularity):
    sc = load(os.path.join(SCEN, f"{name}.toml"))
    for seed in range(4):
        for strategy in ("random", "pct"):
            r = run_one(sc, seed, strategy, granularity=granularity)
            assert r.verdict == "clean", (name, seed, strategy, r.failure)


def test_free_mode_quiet_and_catches_the_variant():
    """Free mode: the check reads only the running process's own held locks, so it is the same there."""
    sc = load(os.path.join(SCEN, "mixed.toml"))
    for seed in range(2):
        r = run_one(sc, seed, mode="free")
        assert r.verdict == "clean", r.failure
    race = load(os.path.join(SCEN, "scan-munmap-race.toml"))
    # the OS interleaves the tasks, so one run may miss the race: a few seeds, the first failure must be this one
    for seed in range(8):
        r = run_one(race, seed, bugs=["ksmd-no-mmap-sem"], mode="free")
        if r.failure:
            break
    assert r.failure and r.failure["class"] == "unlocked-access" and "find_vma" in r.failure["message"]
