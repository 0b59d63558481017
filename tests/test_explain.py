"""From a failure to an understanding: call chains in reports (and, below, the explained replay, the trace, the
shrunk artifact). Real runs of catalogue variants; no mock of the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ksmstress import callchain
from ksmstress.failures import Failure
from ksmstress.mm import mm as mmmod
from ksmstress.verdict import failure_lines
from tests.clitools import cli
from tests.harness import make_kernel, new_program, write


def _fails() -> None:
    raise Failure("bug-on", "inner", {"step": 1})


@callchain.kfunc
def outer_fn() -> None:
    inner_fn()


@callchain.kfunc
def inner_fn() -> None:
    _fails()


def test_a_failure_carries_the_chain_where_it_was_raised_and_the_stack_unwinds() -> None:
    with pytest.raises(Failure) as e:
        outer_fn()
    assert e.value.to_dict()["details"]["chain"] == "outer_fn > inner_fn"
    assert callchain.STACK == []  # popped on the way out: a failure caught above leaves no stale frame


def test_allocations_and_frees_record_the_chain_that_made_them() -> None:
    k = make_kernel()
    mref, m = new_program(k, 2)
    write(k, m, 1, 5)  # the first fault gives the vma its anon_vma
    mmmod.sys_munmap(k, mref, 1, 3)
    av = k.st.anon_vma
    freed = [s for s in range(av.capacity) if av.freed_chain[s]]
    assert freed, "a munmap of the only vma frees its anon_vma"
    assert av.freed_chain[freed[0]].decode() == "sys_munmap > do_munmap > anon_vma_unlink > anon_vma_free"
    chain = av.alloc_info(freed[0], None)["chain"]
    assert chain == "user_write > handle_mm_fault > do_anonymous_page > anon_vma_prepare"


def _run(capsys: pytest.CaptureFixture[str], tmp_path: Path, scenario: str, bug: str) -> tuple[int, list[str]]:
    code, out, _err = cli(capsys, "run", scenario, "--bug", bug, "--runs", "50", "--artifacts", str(tmp_path))
    return code, out.splitlines()


def _detail(lines: list[str], key: str) -> str:
    return next(line.split(": ", 1)[1] for line in lines if line.startswith(f"  {key}: "))


def test_a_use_after_free_report_names_both_chains_and_the_allocation(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, lines = _run(capsys, tmp_path, "seed-unmap-race", "no-anon-vma-ref")
    assert code == 1 and lines[0].startswith("FAILURE use-after-free")
    assert _detail(lines, "chain") == "shrink_page > page_referenced > page_referenced_ksm"
    freed = _detail(lines, "freed")
    assert freed.startswith("by mm#") and "do_munmap > anon_vma_unlink" in freed
    assert "anon_vma_prepare" in _detail(lines, "allocated")
    assert not any("{" in line or "'" in line for line in lines[2:]), "values are text, never Python dicts"


def test_a_traversal_report_lists_every_missed_pte(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, lines = _run(capsys, tmp_path, "seed-fork-race", "single-pass-walk")
    assert code == 1 and lines[0].startswith("FAILURE traversal")
    art = json.loads(next(tmp_path.glob("*.json")).read_text())
    missed = art["failure"]["details"]["missed"]
    assert len(missed) > 1  # the bug leaves a whole forked region unvisited
    at = lines.index("  missed:")
    shown = lines[at + 1 : at + 1 + len(missed)]
    assert [s.strip().split(" (")[0] for s in shown] == [f"mm[{m}] address {a}" for m, a, _via in missed]
    assert all(m_[2] in s for m_, s in zip(missed, shown, strict=True))  # and how each was due


def test_history_and_event_details_render_as_text() -> None:
    lines = failure_lines(
        {
            "class": "double-free",
            "message": "m",
            "details": {
                "first_free": {
                    "step": 3,
                    "site": "drop_anon_vma",
                    "task": "ksmd#0",
                    "chain": "ksm_do_scan > drop_anon_vma",
                },
                "history": [
                    {
                        "step": 2,
                        "task": "ksmd#0",
                        "site": "hold_anon_vma",
                        "field": "ksm_refcount",
                        "value": 1,
                        "rmap_item": "rmap_item[4]",
                    }
                ],
            },
        }
    )
    assert lines[1] == "  first_free: by ksmd#0 at step 3 in ksm_do_scan > drop_anon_vma"
    assert lines[2:] == ["  history:", "    step 2 ksmd#0 hold_anon_vma: ksm_refcount = 1 (rmap_item rmap_item[4])"]
