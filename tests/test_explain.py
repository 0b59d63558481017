"""From a failure to an understanding: call chains in reports (and, below, the explained replay, the trace, the
shrunk artifact). Real runs of catalogue variants; no mock of the model."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from ksmstress import callchain
from ksmstress.explain import tomlout
from ksmstress.explain.shrink import (
    PREEMPTION_BOUND,
    Candidate,
    Shrinker,
    failure_key,
    faster_scenarios,
    recoarsened,
    scenario_edits,
    smaller_scenarios,
)
from ksmstress.failures import Failure
from ksmstress.mm import mm as mmmod
from ksmstress.scenario import resolve
from ksmstress.sched.follow import default_pick
from ksmstress.verdict import failure_lines
from tests.clitools import cli, run_cli
from tests.conftest import FAILING_VARIANTS, first_failure
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


# -- replay --explain and --trace ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifacts(failing_artifacts: dict[str, Path]) -> dict[str, Path]:
    """conftest's failing artifacts: a use-after-free, a traversal and a writable KSM pte."""
    return failing_artifacts


def test_explain_lays_the_interleaving_out_in_columns_within_120(
    artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "replay", str(artifacts["use-after-free"]), "--explain")
    assert code == 1 and "reproduced the recorded use-after-free" in out
    table = out.split("\n\n", 1)[1].splitlines()
    assert all(len(line) <= 120 for line in table)
    header = [c.strip() for c in table[0].split("|")]
    failing, freer = header[1], header[2]  # the failing task first, then the one that freed the object
    assert failing.startswith("reclaim#") and freer.startswith("mm#")
    col = {name: i for i, name in enumerate(header)}

    def cell(line: str, task: str) -> str:
        parts = line.split("|")
        return parts[col[task]].strip() if len(parts) > col[task] else ""

    frees = [line for line in table if "FREE anon_vma" in cell(line, freer)]
    assert len(frees) == 1  # the free, in the freeing task's column
    assert cell(table[-1], failing) == "USE-AFTER-FREE anon_vma[1]" or "USE-AFTER-FREE" in table[-1]
    assert any("in " in cell(line, freer) and "anon_vma_unlink" in cell(line, freer) for line in table)
    assert any(line.strip().startswith("...") and " of " in line for line in table)  # other steps folded


def test_explain_json_gives_the_same_rows(artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "replay", str(artifacts["use-after-free"]), "--explain", "--json")
    d = json.loads(out)
    x = d["explain"]
    assert code == 1 and d["reproduced"] and x["object"] == "anon_vma[1]"
    events = [r for r in x["rows"] if "event" in r]
    assert events[-1]["event"] == "USE-AFTER-FREE anon_vma[1]" and events[-1]["task"] == x["tasks"][0]
    free = next(r for r in events if r["event"].startswith("FREE"))
    assert free["chain"].endswith("anon_vma_unlink > anon_vma_free") and free["task"] == x["tasks"][1]
    assert [r["step"] for r in x["rows"]] == sorted(r["step"] for r in x["rows"])


def check_chrome_trace(trace: dict[str, Any]) -> dict[str, int]:
    """A strict check of the Chrome trace-event format as Perfetto reads it: known phases, numeric pid/tid/ts,
    B/E slices nested per thread (each E closes the innermost open B of the same name), async b/e paired by id,
    flows s/f paired by id and each inside a slice of its thread, timestamps never going back per thread.
    Returns counts per phase."""
    assert set(trace) >= {"traceEvents"}
    counts: dict[str, int] = {}
    open_b: dict[int, list[tuple[str, float]]] = {}
    async_open: dict[int, str] = {}
    flows: dict[int, str] = {}
    last_ts: dict[int, float] = {}
    for ev in sorted(trace["traceEvents"], key=lambda e: e.get("ts", -1)):
        ph = ev["ph"]
        counts[ph] = counts.get(ph, 0) + 1
        assert ph in {"M", "B", "E", "b", "e", "i", "s", "f"}, ev
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int) and isinstance(ev["name"], str), ev
        if ph == "M":
            assert ev["name"] in ("process_name", "thread_name") and isinstance(ev["args"]["name"], str)
            continue
        ts, tid = ev["ts"], ev["tid"]
        assert isinstance(ts, int | float) and ts >= last_ts.get(tid, 0), ev
        last_ts[tid] = ts
        stack = open_b.setdefault(tid, [])
        if ph == "B":
            stack.append((ev["name"], ts))
        elif ph == "E":
            assert stack and stack[-1][0] == ev["name"], f"unbalanced E {ev} (open: {stack})"
            stack.pop()
        elif ph == "b":
            assert ev["id"] not in async_open
            async_open[ev["id"]] = ev["name"]
        elif ph == "e":
            assert async_open.pop(ev["id"]) == ev["name"]
        elif ph == "s":
            assert stack, f"a flow must start inside a slice: {ev}"
            flows[ev["id"]] = ev["name"]
        elif ph == "f":
            assert flows.pop(ev["id"]) == ev["name"] and ev.get("bp") == "e" and stack, ev
        elif ph == "i":
            assert ev["s"] in ("t", "p", "g")
    assert all(not s for s in open_b.values()), "every slice closed"
    assert not async_open and not flows, "every lock hold closed and every flow arrow landed"
    return counts


@pytest.mark.parametrize("cls", list(FAILING_VARIANTS))
def test_a_trace_of_each_of_three_variants_is_valid_chrome_json(
    cls: str, artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "t.json"
    code, out, _ = cli(capsys, "replay", str(artifacts[cls]), "--trace", str(out_file))
    assert code == 1 and f"trace:    {out_file}" in out
    trace = json.loads(out_file.read_text())
    counts = check_chrome_trace(trace)
    assert counts["B"] == counts["E"] > 0 and counts["b"] == counts["e"] > 0 and counts["s"] == counts["f"] > 0
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert any(n.startswith("ksmd#") for n in names) and any(n.startswith("mm#") for n in names)
    assert [e["name"] for e in trace["traceEvents"] if e.get("cat") == "failure"] == [cls]


def test_nesting_check_rejects_a_crossed_slice() -> None:
    """The checker itself: slices that cross are refused (so the tests above can fail)."""
    bad = {
        "traceEvents": [
            {"ph": "B", "name": "a", "pid": 1, "tid": 1, "ts": 0},
            {"ph": "B", "name": "b", "pid": 1, "tid": 1, "ts": 1},
            {"ph": "E", "name": "a", "pid": 1, "tid": 1, "ts": 2},
            {"ph": "E", "name": "b", "pid": 1, "tid": 1, "ts": 3},
        ]
    }
    with pytest.raises(AssertionError, match="unbalanced"):
        check_chrome_trace(bad)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("replay", "/nonexistent/a.json", "--explain"), "/nonexistent/a.json"),
        (("replay", "ART", "--trace", "/nonexistent-dir/t.json"), "--trace /nonexistent-dir/t.json"),
        (("replay", "ART", "--trace", "DIR"), "is a directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: tuple[str, ...],
    needle: str,
    artifacts: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    real = [str(artifacts["traversal"]) if x == "ART" else str(tmp_path) if x == "DIR" else x for x in args]
    code, out, err = cli(capsys, *real)
    assert code == 2 and out == "" and needle in err and len(err.strip().splitlines()) == 1


def test_run_writes_the_trace_of_its_failing_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "run-trace.json"
    code, out, _ = cli(
        capsys,
        "run",
        "seed-unmap-race",
        "--bug",
        "no-anon-vma-ref",
        "--runs",
        "50",
        "--artifacts",
        str(tmp_path),
        "--trace",
        str(out_file),
    )
    assert code == 1 and f"trace:    {out_file}" in out
    counts = check_chrome_trace(json.loads(out_file.read_text()))
    assert counts["B"] > 0 and counts["i"] > 0
    code, _, err = cli(capsys, "run", "mixed", "--mode", "free", "--trace", str(out_file))
    assert code == 2 and "--mode controlled" in err


# -- shrink -----------------------------------------------------------------------------------------------------
def test_shrink_keeps_the_failure_and_cuts_preemptions_and_steps(
    artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "small.json"
    code, out, err = cli(
        capsys, "shrink", str(artifacts["use-after-free"]), "--seconds", "20", "--json", "--out", str(out_file)
    )
    d = json.loads(out)
    assert code == 0 and d["reproduced"] and d["artifact"] == str(out_file), err
    before, after = d["before"], d["after"]

    def key(size: dict[str, int]) -> tuple[int, int]:  # what shrink minimises: preemptions past 3, then steps
        return max(0, size["preemptions"] - PREEMPTION_BOUND), size["steps"]

    assert key(after) < key(before) and after["preemptions"] < before["preemptions"]  # any budget cuts some
    assert after["ops"] <= before["ops"]
    shrunk = json.loads(out_file.read_text())
    assert shrunk["failure"]["class"] == "use-after-free" and shrunk["shrunk"]["before"] == before
    assert tomllib.loads(shrunk["scenario"]["text"])["name"] == "seed-unmap-race"
    for _ in range(3):  # a normal artifact: replay reproduces it, every time
        code, out, _ = cli(capsys, "replay", str(out_file), "--json")
        r = json.loads(out)
        assert code == 1 and r["reproduced"] and r["steps"] == after["steps"]


def _needless_preemptions(tmp_path: Path) -> tuple[Shrinker, Candidate]:
    """scan-munmap-race with ksmd-no-mmap-sem fails under the non-preemptive schedule; the same run with
    preemptions added at its first points where another task could run, more than the bound and still failing the
    same way."""
    from ksmstress.report import read_artifact
    from ksmstress.sched.follow import default_pick

    art = first_failure("scan-munmap-race", "ksmd-no-mmap-sem", tmp_path)
    s = Shrinker(read_artifact(art), art, seconds=600)
    cap = 1 << 62
    assert s.attempt([], s.text, cap) is not None  # fails with no deviation at all
    added, cand = [], None
    for cur, n, yielding, runnable in s.points([], s.text, cap):
        other = [t for t in runnable if t not in (cur, default_pick(list(runnable), cur, yielding))]
        if yielding or cur not in runnable or not other:
            continue
        trial = s.attempt([*added, (cur, n, other[0])], s.text, cap)
        if trial is not None and trial.preemptions > len(added):
            added, cand = [*added, (cur, n, other[0])], trial
        if cand is not None and cand.preemptions > PREEMPTION_BOUND + 1:
            break
    assert cand is not None and cand.preemptions > PREEMPTION_BOUND + 1
    return s, cand


def test_unpreempt_moves_needless_preemptions_to_yields_or_drops_them(tmp_path: Path) -> None:
    """The pass brings the needless preemptions back within the bound; without it the candidate keeps every one."""
    s, cand = _needless_preemptions(tmp_path)
    out = s.unpreempt(cand)
    assert out.preemptions <= PREEMPTION_BOUND < cand.preemptions
    assert failure_key(out.res.failure) == failure_key(cand.res.failure) == s.target


def test_to_yields_moves_needless_preemptions_to_yields(tmp_path: Path) -> None:
    """The chunked moves alone bring the same candidate within the bound, failing the same way."""
    s, cand = _needless_preemptions(tmp_path)
    out = s.to_yields(cand)
    assert out.preemptions <= PREEMPTION_BOUND < cand.preemptions
    assert failure_key(out.res.failure) == failure_key(cand.res.failure) == s.target


def test_follow_takes_its_deviations_and_defaults_to_no_preemption() -> None:
    assert default_pick([0, 1, 2], 1, False) == 1  # the current task goes on
    assert default_pick([0, 1, 2], 1, True) == 2  # a yield passes to the next in id order
    assert default_pick([0, 2], 2, True) == 0  # ... wrapping round
    assert default_pick([0, 2], 1, False) == 2  # a blocked task passes on too


def test_the_same_failure_is_its_class_and_code_site_whatever_the_object_numbers() -> None:
    def lockdep(site: str) -> dict[str, Any]:
        return {"class": "lockdep", "details": {"site": site}}

    a = lockdep("anon_vma[0].lock@shrink_page_list:anon_vma_lock -> page[0].page_lock@shrink_page_list:lock_page")
    b = lockdep("anon_vma[3].lock@shrink_page_list:anon_vma_lock -> page[1].page_lock@shrink_page_list:lock_page")
    c = lockdep("anon_vma[0].lock@shrink_page_list:anon_vma_lock -> page[0].page_lock@other:lock_page")
    assert failure_key(a) == failure_key(b) != failure_key(c)
    assert failure_key({"class": "use-after-free", "details": {"site": "x"}}) != failure_key(a)


def test_scenario_edits_are_smaller_and_carry_task_ids_over() -> None:
    """Every edit of seed-unmap-race parses and is no larger; switching reclaim off moves the programs' task
    ids down by one (ksmd stays 0), dropping the second program drops its id."""
    text = Path(resolve(["seed-unmap-race"], [])[0]).read_text()
    edits = smaller_scenarios(text)
    assert edits and all(load_text_ok(t) for t, _ in edits)
    assert all(_diff(tomllib.loads(text), tomllib.loads(t)) for t, _ in edits)  # each changes something
    off = next(r for t, r in edits if tomllib.loads(t)["reclaim"].get("enabled") is False)
    assert off[0] == 0 and off[2] == 1 and 1 not in off
    count = next(r for t, r in edits if tomllib.loads(t)["task"][0]["count"] == 1)
    assert count[2] == 2 and 3 not in count and count[4] == 3  # a forked child's id follows
    assert any(tomllib.loads(t).get("sched", {}).get("granularity") == "locks" for t, _ in
               smaller_scenarios(tomlout.dumps({**tomllib.loads(text), "sched": {"granularity": "shared"}})))


def test_scenario_edits_coarsen_each_task_alone_and_name_whose_anchors_moved() -> None:
    """Each system task and each [[task]] gets its own coarser granularity (`yields`, then `locks`) as a faster
    edit (kept only when the run is smaller) that keeps every task id; the tasks it coarsens (a program's forks
    with it) are the ones whose deviations are anchored on other points now, and a task already at `yields` is
    offered nothing coarser."""
    text = Path(resolve(["seed-unmap-race"], [])[0]).read_text()  # ksmd 0, reclaim 1, two programs 2 and 3
    coarse = []
    assert not any(recoarsened(text, t) for t, _ in smaller_scenarios(text))
    for t, r in faster_scenarios(text):
        moved = recoarsened(text, t)
        if moved:
            assert all(r[i] == i for i in r)
            coarse.append((moved, t))
    by_task = {min(m): [tomllib.loads(t) for mm, t in coarse if min(mm) == min(m)] for m, _t in coarse}
    assert [x["ksmd"]["granularity"] for x in by_task[0]] == ["yields", "locks"]
    assert [x["reclaim"]["granularity"] for x in by_task[1]] == ["yields", "locks"]
    assert [x["task"][0]["granularity"] for x in by_task[2]] == ["yields", "locks"]
    assert {2, 3, 4} <= next(m for m, _t in coarse if min(m) == 2)  # both programs and a fork's id
    done = tomlout.dumps({**tomllib.loads(text), "ksmd": {"granularity": "yields"}})
    assert not any(0 in recoarsened(done, t) for t, _ in faster_scenarios(done))
    assert recoarsened(text, text) == set()


def test_faster_scenario_edits_batch_ksmd_and_rest_reclaim_and_must_shrink_the_run() -> None:
    """seed-unmap-race's faster edits: ksmd's batch raised to every page of every mm twice (its two passes in one
    batch) or lowered, reclaim resting between pages; none drops a task (ids unchanged), and scenario_edits marks
    only them strict (kept only when the run is smaller, so a raise and a lower cannot undo each other)."""
    text = Path(resolve(["seed-unmap-race"], [])[0]).read_text()
    d = tomllib.loads(text)
    fast = faster_scenarios(text)
    tables = [tomllib.loads(t) for t, _ in fast]
    batches = [x["ksm"]["pages_to_scan"] for x in tables if x["ksm"].get("pages_to_scan") != d["ksm"]["pages_to_scan"]]
    assert 2 * d["arena"]["vpages"] * d["arena"]["max_mm"] in batches and min(batches) < d["ksm"]["pages_to_scan"]
    assert any(x["reclaim"].get("pause", 0) > 0 for x in tables)
    assert all(load_text_ok(t) and all(r[i] == i for i in r) for t, r in fast)
    flags = {t: strict for t, _r, strict in scenario_edits(text)}
    assert all(flags[t] for t, _ in fast) and not any(flags[t] for t, _ in smaller_scenarios(text))


def load_text_ok(text: str) -> bool:
    from ksmstress.scenario import parse

    return parse(text).initial_tasks >= 1


def _diff(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


@pytest.mark.parametrize("name", ["seed-unmap-race", "mixed", "seed-fork-race"])
def test_scenarios_survive_a_toml_round_trip(name: str) -> None:
    """The shrunk artifact's scenario is written back as TOML: what it says must be what was read."""
    text = Path(resolve([name], [])[0]).read_text()
    d = tomllib.loads(text)
    assert tomllib.loads(tomlout.dumps(d)) == d


def test_shrink_refuses_what_it_cannot_shrink(
    artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = cli(capsys, "shrink", str(tmp_path / "missing.json"))
    assert code == 2 and out == "" and "missing.json" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli(capsys, "shrink", str(artifacts["traversal"]), "--out", str(tmp_path / "no" / "x.json"))
    assert code == 2 and "--out" in err and len(err.strip().splitlines()) == 1


# -- --timeline --------------------------------------------------------------------------------------------------
def test_the_timeline_draws_lanes_holds_and_joins_the_free_to_the_access(
    artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    picture = tmp_path / "race.svg"
    code, out, _ = cli(capsys, "replay", str(artifacts["use-after-free"]), "--timeline", str(picture))
    assert code == 1 and f"timeline: {picture}" in out
    root = ElementTree.parse(picture).getroot()  # well-formed SVG
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text or "" for t in root.iter(f"{ns}text")]
    assert any(t.startswith("reclaim#") for t in texts) and any(t.startswith("mm#") for t in texts)  # lanes
    titles = [t.text or "" for t in root.iter(f"{ns}title")]
    assert any(t.startswith("free anon_vma[1]") for t in titles)
    assert any(t.startswith("use-after-free") for t in titles)
    assert any(t == "anon_vma[1].lock" for t in titles)  # a hold of the object's lock
    assert len([x for x in root.iter(f"{ns}line") if x.get("stroke-dasharray")]) == 1  # the free joined to the use
    assert picture.stat().st_size < 200_000  # small enough for a bug report


def test_verbose_replay_logs_every_event_as_a_json_line(artifacts: dict[str, Path]) -> None:
    r = run_cli("-v", "replay", str(artifacts["use-after-free"]))  # stderr a pipe, as on CI: JSON lines
    assert r.returncode == 1
    events = [json.loads(line) for line in r.stderr.splitlines() if '"replay.event"' in line]
    assert len(events) > 100
    assert all({"step", "task", "kind"} <= e.keys() for e in events)
    assert [e["step"] for e in events] == sorted(e["step"] for e in events)
    picks = [e for e in events if e["kind"] == "pick"]
    assert picks and all("next" in e and "runnable" in e for e in picks)
    last = events[-1]
    assert last["kind"] == "use" and last["obj"] == "anon_vma[1]" and last["chain"].endswith("page_referenced_ksm")
    after = run_cli("replay", str(artifacts["use-after-free"]), "-v")  # -v after the command means the same
    assert after.returncode == 1
    again = [json.loads(line) for line in after.stderr.splitlines() if '"replay.event"' in line]
    assert [{**e, "timestamp": 0} for e in again] == [{**e, "timestamp": 0} for e in events]


def test_near_the_failure_is_counted_in_lock_operations_and_accesses_too() -> None:
    """A task at `yields` granularity takes many locks and makes many accesses within one step: the explanation
    shows the last NEAR_LOCKS lock operations of the tasks that matter and the failing task's last LEAD_USES
    accesses near the failure, not every one of that step's (a shrunk run of a few steps stays readable)."""
    from ksmstress.explain.record import Event
    from ksmstress.explain.view import LEAD_USES, NEAR_LOCKS, explain

    events = [Event(0, "mm#2", "alloc", "f", obj="anon_vma[0]"), Event(0, "mm#2", "pick", "", next="ksmd#0")]
    for j in range(3 * NEAR_LOCKS):  # one coarse stretch of ksmd: many locks, many accesses, all at step 1
        events.append(Event(1, "ksmd#0", "acquired", "ksm_do_scan", lock=f"mm[{j}].mmap_sem"))
        events.append(Event(1, "ksmd#0", "use", f"ksm_do_scan > f{j}", obj=f"rmap_item[{j}]", site=f"s{j}"))
        events.append(Event(1, "ksmd#0", "released", "ksm_do_scan", lock=f"mm[{j}].mmap_sem"))
    events.append(Event(1, "ksmd#0", "use", "ksm_do_scan > g", obj="anon_vma[0]", site="g"))
    failure = {"class": "use-after-free", "details": {"object": "anon_vma[0]", "step": 1, "task": "ksmd#0"}}
    rows = explain(events, failure).rows
    locks = [r for r in rows if r.event.startswith(("lock ", "unlock "))]
    uses = [r for r in rows if r.event.startswith("touch rmap_item")]
    assert len(locks) == NEAR_LOCKS and locks[-1].event == f"unlock mm[{3 * NEAR_LOCKS - 1}].mmap_sem"
    assert 0 < len(uses) <= LEAD_USES
    assert any(r.event == "touch anon_vma[0] (g)" for r in rows)  # the failing object's rows are all kept
