"""`ksmstress mutate --strategy bounded|coverage` and `--compare`: a known mutant killed by each search strategy
(bounded with the preemption it needs), the budget's shares, and the comparison's bookkeeping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ksmstress.mutate.generate import Mutant, generate
from ksmstress.mutate.probe import shares
from ksmstress.mutate.report import compare
from ksmstress.mutate.scratch import PREFIX, package_dir

CODE = "import sys; from ksmstress.mutate import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def mutants() -> list[Mutant]:
    return generate(package_dir())


def _unlocked_slot_walk(mutants: list[Mutant]) -> Mutant:
    """ksmd's scan takes the next mm_slot without ksm_mmlist_lock (the first lock of scan_get_next_rmap_item
    removed): only a switch to the exiting task inside that region shows it, so the non-preemptive schedule is
    clean and a schedule with one preemption is not."""
    found = [m for m in mutants if m.function == "scan_get_next_rmap_item" and m.rule == "remove-lock"
             and "ksm_mmlist_lock" in m.description]
    return min(found, key=lambda m: m.line)


def _hold_anon_vma_ref(mutants: list[Mutant]) -> Mutant:
    [m] = [x for x in mutants
           if x.function == "hold_anon_vma" and x.rule == "drop-ref" and "atomic_add" in x.description]
    return m


def _mutate(tmp_path: Path, *args: str) -> dict[str, Any]:
    empty = tmp_path / "none.toml"
    empty.write_text("")
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, "-c", CODE, *args, "--jobs", "1", "--json", "--equivalent", str(empty)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(tmp)})
    assert r.returncode == 0, r.stderr
    assert not [n for n in tmp.iterdir() if n.name.startswith(PREFIX)], "scratch copies must be removed"
    return dict(json.loads(r.stdout))


def test_bounded_kills_a_mutant_at_the_preemption_it_needs(tmp_path: Path, mutants: list[Mutant]):
    m = _unlocked_slot_walk(mutants)
    d = _mutate(tmp_path, "--mutant", m.name, "focus-exit-scan", "--strategy", "bounded", "--preemptions", "1",
                "--seconds-per-mutant", "30")
    [res] = d["results"]
    assert (res["outcome"], res["class"]) == ("killed", "unlocked-access"), res
    kill = res["kill"]
    # seed 0's tree, level by level: its non-preemptive schedule ran first and was clean
    assert (kill["strategy"], kill["seed"], kill["preemptions"]) == ("bounded", 0, 1), kill
    assert res["runs"] >= 2 and d["preemptions"] == 1 and d["strategies"] == ["bounded"]


def test_coverage_search_kills_a_known_mutant(tmp_path: Path, mutants: list[Mutant]):
    m = _hold_anon_vma_ref(mutants)
    d = _mutate(tmp_path, "--mutant", m.name, "seed-unmap-race", "--strategy", "coverage",
                "--seconds-per-mutant", "30")
    [res] = d["results"]
    assert res["outcome"] == "killed" and res["class"] in ("refcount-mismatch", "use-after-free"), res
    assert res["kill"]["strategy"] == "coverage" and d["score"] == 1.0


def test_compare_soaks_once_per_strategy(tmp_path: Path, mutants: list[Mutant]):
    m = _unlocked_slot_walk(mutants)
    d = _mutate(tmp_path, "--mutant", m.name, "focus-exit-scan", "--strategy", "random", "--strategy", "bounded",
                "--compare", "--seconds-per-mutant", "30")
    assert set(d["strategies"]) == {"random", "bounded"}
    assert d["killed_by"] == {m.name: ["random", "bounded"]} and d["only_one"] == {} and d["none"] == []
    assert all(x["killed"] == 1 and x["score"] == 1.0 for x in d["strategies"].values())


def test_the_budget_is_shared_per_strategy_family():
    assert shares(["random", "pct", "bounded", "coverage"]) == [["random", "pct"], ["bounded"], ["coverage"]]
    assert shares(["coverage", "pct"]) == [["pct"], ["coverage"]]
    assert shares(["bounded"]) == [["bounded"]]


def _summary(outcomes: dict[str, str]) -> dict[str, Any]:
    killed = sum(o == "killed" for o in outcomes.values())
    return {"seconds_per_mutant": 20.0, "sample": 3, "seed": 1, "jobs": 2, "score": killed / len(outcomes),
            "killed": killed, "survived": len(outcomes) - killed, "timeout": 0, "error": 0, "equivalent": 0,
            "median_time_to_kill": 1.0, "results": [{"name": n, "outcome": o} for n, o in outcomes.items()]}


def test_compare_names_the_mutants_only_one_strategy_kills_and_those_none_kills():
    c = compare({
        "random": _summary({"a": "killed", "b": "killed", "c": "survived"}),
        "pct": _summary({"a": "killed", "b": "survived", "c": "survived"}),
        "coverage": _summary({"a": "killed", "b": "timeout", "c": "survived"}),
    })
    assert c["only_one"] == {"b": "random"} and c["none"] == ["c"]
    assert c["killed_by"]["a"] == ["random", "pct", "coverage"]
    assert c["strategies"]["pct"]["killed"] == 1


def test_preemptions_without_bounded_is_a_one_line_error():
    r = subprocess.run([sys.executable, "-c", CODE, "--preemptions", "2", "--list"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and r.stderr.strip() == "ksmstress: error: --preemptions: only with --strategy bounded"


def test_an_interrupted_comparison_tells_apart_only_what_every_strategy_soaked():
    assert compare({"random": _summary({"a": "killed"})})["only_one"] == {}
    c = compare({"random": _summary({"a": "killed", "b": "killed"}), "pct": _summary({"a": "survived"})})
    assert c["only_one"] == {"a": "random"} and c["none"] == []
