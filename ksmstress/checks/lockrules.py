"""`unlocked-access`: data that one of the kernel's lock rules covers, touched by a task that does not hold the lock.

Why: remove a lock/unlock pair, or move a statement out of a locked region, and the race it opens is rarely
reached; when it is, nothing may observe it. The kernel states which lock protects which data (the comments of
include/linux/rmap.h and mm_types.h, the BUG_ONs of try_to_unmap and reuse_swap_page, later kernels'
lockdep_assert_held and mmap_assert_locked), so the model says, at each access a rule covers, which lock the rule
names (`k.hooks.lock_rule(k, RULE, lock id, write, object, site)`, in the helper that makes the access, so every
caller is covered), and this detector checks that the running task holds it, as lockdep_assert_held does: the
rule is broken the moment the access is made without the lock, whether or not another task races it.

Cheap on purpose: one membership test of the running task's own held-lock list (`Locks.mine`, process-local, with
`Locks.modes` beside it for the rwsem rules that need mmap_sem for write): no shared memory, no scheduling point, the
same in controlled and free mode.

Each rule is checked against 2.6.33 (mm/ksm.c, mm/rmap.c, mm/memory.c, mm/mmap.c, kernel/fork.c, include/linux/
rmap.h and mm_types.h). The kernel's exemptions are not rules here: they are the places where the model makes the
access without the asserting helper, each with a one-line reason at the place (exit_mmap with mm_users 0, the rmap
walks reading vm_start / vm_end under anon_vma->lock, remove_node_from_stable_tree's walk of a node whose KSM page
is gone, the unlocked list_empty(&ksm_mm_head.mm_list) peeks). No rule asks for the page lock on
shrink_active_list's page_referenced(page, 0) of a plain anon page: 2.6.33 walks it unlocked, relying on
page_lock_anon_vma (page_mapped, then anon_vma->lock, the anon_vma type-stable under RCU) and on each pte's
page_check_address; a KSM page is trylocked there, and page_referenced_ksm's `page_locked` rule holds it to that.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..failures import Failure
from ..sync import WRITE

if TYPE_CHECKING:
    from ..mm.state import K

# -- the kernel's rules, one line each ----------------------------------------------------------------------------
PTE = (
    "ptes are stored, and read before acting on them, under the mm's page-table lock: pte_offset_map_lock or "
    "page_check_address in zap_pte_range, copy_pte_range (both mms), do_anonymous_page, do_wp_page, do_swap_page, "
    "follow_page, write_protect_page, replace_page, try_to_unmap_one, page_referenced_one (a fault's first, lockless "
    "read is rechecked under the lock with pte_same: the model folds the two into one locked read)"
)
PTE_PAGE_REF = (
    "a reference on a page found through a pte is taken before that pte lock is released (follow_page's get_page, "
    "do_wp_page's page_cache_get(old_page) before pte_unmap_unlock, copy_one_pte's get_page): until then only the "
    "pte's own reference keeps the page, and an unmap or swap-out may drop it the moment the lock goes"
)
USER_ACCESS = (
    "a user load or store reaches a page only through a pte that maps it at that moment: ptep_clear_flush flushes "
    "the TLB before any pte change, and the model stands for that by making the access under the pte lock "
    "(deviation 16)"
)
MM_LIST = (
    "the mm_slot list and mm_slots_hash are changed and followed only under ksm_mmlist_lock (mm/ksm.c: every "
    "list_add_tail, list_del, hlist_del, ->mm_list.next and get_mm_slot is inside spin_lock(&ksm_mmlist_lock); only "
    "list_empty(&ksm_mm_head.mm_list) peeks without it)"
)
SCAN_SLOT = (
    "ksm_scan.mm_slot is assigned only under ksm_mmlist_lock (mm/ksm.c, every assignment, besides "
    "ksm_thread_mutex): __ksm_enter and __ksm_exit read the cursor holding ksm_mmlist_lock alone"
)
KSM_THREAD_MUTEX = (
    "ksm_run is changed, and ksm_do_scan (the ksm_scan cursor, the rmap_lists, the stable and unstable trees, the "
    "ksm_pages_* counters) and unmerge_and_remove_all_rmap_items run, only under ksm_thread_mutex (mm/ksm.c: "
    "ksm_scan_thread and run_store hold it around them)"
)
KSM_ENTER = (
    "an mm is registered with ksmd (__ksm_enter: MMF_VM_MERGEABLE, its mm_slot) with its mmap_sem held for write: "
    "ksm_madvise under madvise's down_write, ksm_fork under dup_mmap's down_write of the new mm; ksmd relies on it "
    "when it forgets an mm with no VM_MERGEABLE vma (scan_get_next_rmap_item: 'mmap_sem then protects against race "
    "with MADV_MERGEABLE')"
)
STABLE_HLIST = (
    "a stable node's hlist of rmap_items is changed (stable_tree_append, remove_rmap_item_from_tree's hlist_del) "
    "and walked (page_referenced_ksm, try_to_unmap_ksm) only with its KSM page locked (mm/ksm.c: lock_page(kpage) "
    "around each change; VM_BUG_ON(!PageLocked(page)) in each walk)"
)
PAGE_STABLE_NODE = (
    "a page becomes a KSM page (PG_KSM and page->mapping: set_page_stable_node) only under its page lock "
    "(try_to_merge_one_page: 'While we hold page lock, upgrade page from PageAnon+anon_vma to PageKsm+NULL "
    "stable_node'; stable_tree_insert under cmp_and_merge_page's lock_page(kpage))"
)
PAGE_LOCKED = (
    "try_to_unmap (BUG_ON(!PageLocked(page))), try_to_unmap_ksm and page_referenced_ksm "
    "(VM_BUG_ON(!PageLocked(page))) and reuse_swap_page (VM_BUG_ON(!PageLocked(page))) run with the page locked"
)
ANON_VMA_LIST = (
    "an anon_vma's vma list is read and changed only under anon_vma->lock (include/linux/rmap.h: 'spinlock_t lock; "
    "/* Serialize access to vma list */ ... the head must only be read/written after taking the above lock'; "
    "mm_types.h: anon_vma_node /* Serialized by anon_vma->lock */)"
)
VMA_ANON_VMA = (
    "vma->anon_vma is set under the mm's page_table_lock, mmap_sem held (mm_types.h: 'struct anon_vma *anon_vma; "
    "/* Serialized by page_table_lock */'; anon_vma_prepare: 'page_table_lock to protect against threads')"
)
MMAP_SEM = (
    "an mm's vma list and its vmas are read under mmap_sem (read or write) and changed under mmap_sem for write "
    "(find_vma's callers hold it, as later kernels assert: mmap_assert_locked; mmap_region, do_munmap, split_vma, "
    "madvise's vm_flags and dup_mmap, for both mms, under down_write)"
)


@dataclass(frozen=True)
class Rule:
    """What a rule covers (a template formatted with the object and sub numbers) and the kernel's rule."""

    what: str
    text: str


#: Every rule the model names in `k.hooks.lock_rule`, by key.
RULES: dict[str, Rule] = {
    "pte": Rule("mm[{0}]'s pte at address {1}", PTE),
    "pte_page_ref": Rule("page[{0}]'s _count (a reference taken through a pte)", PTE_PAGE_REF),
    "user-access": Rule("the page mm[{0}] maps at address {1}", USER_ACCESS),
    "mm_list": Rule("mm_slot[{0}]'s mm_list links", MM_LIST),
    "mm_slots_hash": Rule("mm_struct[{0}]'s mm_slot (mm_slots_hash)", MM_LIST),
    "ksm_scan.mm_slot": Rule("ksm_scan.mm_slot", SCAN_SLOT),
    "ksm_enter": Rule("mm[{0}]'s registration with ksmd (MMF_VM_MERGEABLE, mm_slot)", KSM_ENTER),
    "ksm_run": Rule("ksm_run", KSM_THREAD_MUTEX),
    "ksm_do_scan": Rule("ksm_do_scan's scan", KSM_THREAD_MUTEX),
    "unmerge_all": Rule("unmerge_and_remove_all_rmap_items", KSM_THREAD_MUTEX),
    "rmap_list": Rule("an rmap_list link", KSM_THREAD_MUTEX),
    "stable_tree": Rule("the stable tree", KSM_THREAD_MUTEX),
    "unstable_tree": Rule("the unstable tree", KSM_THREAD_MUTEX),
    "ksm_counters": Rule("a ksm_pages_* / ksm_rmap_items counter", KSM_THREAD_MUTEX),
    "stable_node": Rule("stable_node[{0}]'s hlist of rmap_items", STABLE_HLIST),
    "page_stable_node": Rule("page[{0}]'s PG_KSM and mapping (set_page_stable_node)", PAGE_STABLE_NODE),
    "page_locked": Rule("a locked-page path of page[{0}]", PAGE_LOCKED),
    "anon_vma": Rule("anon_vma[{0}]'s vma list", ANON_VMA_LIST),
    "vma_anon_vma": Rule("vma[{0}]->anon_vma", VMA_ANON_VMA),
    "mmap_sem": Rule("mm[{0}]'s vma list", MMAP_SEM),
    "vm_flags": Rule("vma[{0}]->vm_flags", MMAP_SEM),
}
#: Rules whose changes need an rwsem held for write (a reader's down_read covers only reads).
FOR_WRITE = frozenset({"mmap_sem", "vm_flags", "ksm_enter"})
VERBS = ("reads", "writes", "runs")  # write: 0 a read, 1 a change, 2 a whole path the rule covers


def check(k: K, rule: str, lid: int, write: int, obj: int, site: str, sub: int = -1) -> None:
    """Raise `unlocked-access` unless the running task holds `lid` (for write, when the rule needs it)."""
    locks = k.locks
    if lid in locks.mine and (write != 1 or rule not in FOR_WRITE or locks.holds(lid, WRITE)):
        return
    raise unlocked_access(k, rule, lid, write, obj, site, sub)


_MODEL_DIR = os.path.join("ksmstress", "mm") + os.sep


def model_chain(depth: int = 6) -> list[str]:
    """The model functions on the running task's stack, innermost first (pte_get < follow_page < break_ksm ...):
    which path made the access. Names only, so a report stays the same on every replay."""
    out: list[str] = []
    f = sys._getframe(1)
    while f is not None and len(out) < depth:
        if _MODEL_DIR in f.f_code.co_filename:
            out.append(f.f_code.co_name)
        f = f.f_back
    return out


def unlocked_access(k: K, rule: str, lid: int, write: int, obj: int, site: str, sub: int = -1) -> Failure:
    """The report: "<task> <reads|writes|runs> <object> at <site> (step N) without holding <lock>; the kernel's
    rule: <one line>", with the path that made the access and the locks the task does hold."""
    r = RULES[rule]
    step, who = k.ctl.clock()
    space = k.locks.s
    name = space.name(lid)
    held = [space.name(x) for x in k.locks.mine]
    missing = f"{name} for write (it holds it for read)" if lid in k.locks.mine else name
    what = r.what.format(obj, sub)
    chain = model_chain()
    return Failure(
        "unlocked-access",
        f"{who} {VERBS[write]} {what} at {site} (step {step}) without holding {missing}; the kernel's rule: "
        f"{r.text}. Path: {' < '.join(chain) or site}; held: {', '.join(held) or 'nothing'}",
        {
            "task": who,
            "step": step,
            "site": site,
            "object": what,
            "lock": name,
            "rule": rule,
            "held": held,
            "path": chain,
        },
    )
