"""`ksmstress mutate`: deterministic, valid mutants; a stable sample; a known-killable mutant killed with the right
class; the checkout never touched; equivalents read from the list; Ctrl-C leaves nothing behind."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from ksmstress.mutate import equivalent as eqmod
from ksmstress.mutate.generate import Mutant, apply, generate, key_of, mutants_of, sample
from ksmstress.mutate.rules import RULES, Delete, sites
from ksmstress.mutate.scratch import PREFIX, package_dir

from .procwatch import collect_descendants, wait_all_gone

PKG = package_dir()


@pytest.fixture(scope="module")
def mutants() -> list[Mutant]:
    return generate(PKG)


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts or not p.is_file():
            continue
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _scratch_dirs(tmp: Path) -> list[str]:
    return [n for n in os.listdir(tmp) if n.startswith(PREFIX)]


CODE = "import sys; from ksmstress.mutate import main; sys.exit(main(sys.argv[1:]))"


def _env(tmp: Path) -> dict[str, str]:
    """The campaign's scratch copies go under the test's own TMPDIR: only what this test made is checked."""
    return {**os.environ, "TMPDIR": str(tmp)}


def _mutate(*args: str, tmp: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = _env(tmp) if tmp else None
    return subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


KILLED_BY = ("refcount-mismatch", "use-after-free")


def _terminal_sigint() -> None:
    """Ctrl-C's default disposition, as under a terminal (a suite started in the background inherits SIG_IGN)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _hold_anon_vma_ref(mutants: list[Mutant]) -> Mutant:
    """The mutant that stops hold_anon_vma taking its ksm_refcount (it still records the anon_vma)."""
    [m] = [x for x in mutants
           if x.function == "hold_anon_vma" and x.rule == "drop-ref" and "atomic_add" in x.description]
    return m


def test_generation_is_deterministic_and_every_mutant_compiles(mutants: list[Mutant]):
    again = generate(PKG)
    assert [(m.name, m.source) for m in again] == [(m.name, m.source) for m in mutants]
    assert len({m.name for m in mutants}) == len(mutants), "names must be unique"
    assert len({m.source for m in mutants}) == len(mutants), "identical code must be deduplicated"
    assert {m.rule for m in mutants} == set(RULES), "every rule finds sites in the model"
    for m in mutants:
        assert m.source != m.original
        compile(m.source, m.file, "exec", dont_inherit=True)  # valid Python, the whole file
        assert m.file.startswith("mm/") and key_of(m.name) == m.key


def test_rules_make_the_defect_they_name():
    src = (
        "def f(k, lid, a):\n"
        "    k.locks.lock(lid, 's')\n"
        "    x = k.av.refcount[a]\n"
        "    if x == 0:\n"
        "        k.locks.unlock(lid, 's')\n"
        "        return 0\n"
        "    k.atomic_add(k.av.refcount, a, 1)\n"
        "    k.locks.unlock(lid, 's')\n"
        "    return x\n"
    )
    got = {(m.rule, m.description): m.source for m in mutants_of("mm/x.py", src)}
    no_lock = next(s for (r, _d), s in got.items() if r == "remove-lock")
    assert "k.locks" not in no_lock  # the lock and both of its releases are gone
    hoisted = [s for (r, _d), s in got.items() if r == "move-out-of-lock"]
    assert any(s.index("x = k.av") < s.index("k.locks.lock") for s in hoisted)
    assert any("k.atomic_add" not in s for (r, _d), s in got.items() if r == "drop-ref")
    assert any("if x != 0" in s for (r, _d), s in got.items() if r == "invert-cmp")


def test_code_only_a_variant_or_a_later_kernel_runs_is_left_alone():
    """The body of `if k.bug(...)` and of `if k.later(...)` is dead in every soak (no variant on; the later
    kernels' behaviours are the kernel oracle's alone), so no rule touches it, nor the test itself."""
    body = (
        "    if {switch}:\n"
        "        k.locks.lock(lid, 's')\n"
        "        if k.av.refcount[a] == 0:\n"
        "            k.atomic_add(k.av.refcount, a, 1)\n"
        "        k.locks.unlock(lid, 's')\n"
        "    return 1\n"
    )
    for switch in ('k.bug("x")', 'k.later("y")'):
        src = "def f(k, lid, a):\n" + body.format(switch=switch)
        assert list(mutants_of("mm/x.py", src)) == [], switch
    assert list(mutants_of("mm/x.py", "def f(k, lid, a):\n" + body.format(switch="k.other('z')")))


def test_an_operand_anded_with_a_switch_is_left_alone():
    """`x and k.bug(...)` is False in every soak whatever x is: mutating x (drop it, invert its comparison) makes
    an equivalent mutant. `x or k.bug(...)` and `x and not k.bug(...)` are x there, so x is still mutated."""
    def got(test: str) -> set[str]:
        src = (f"def f(k, lid, w, a):\n    k.locks.lock(lid, 's')\n    if {test}:\n        k.locks.unlock(lid, 's')\n"
               "        return 0\n    k.locks.unlock(lid, 's')\n    return 1\n")
        return {m.rule for m in mutants_of("mm/x.py", src)} & {"drop-recheck", "invert-cmp"}

    assert got("k.av.refcount[a] == 0 and k.bug('v')") == set()
    assert got("not w and k.later('v')") == set()
    assert got("k.av.refcount[a] == 0 or k.bug('v')") == {"drop-recheck", "invert-cmp"}
    assert got("k.av.refcount[a] == 0 and not k.bug('v')") == {"drop-recheck", "invert-cmp"}


def test_a_body_emptied_by_deletion_keeps_a_pass():
    src = "def f(k):\n    if k:\n        k.put()\n    return 1\n"
    body_id = 7
    out = apply(src, (Delete(3, 3, body_id, 1),))
    assert out == "def f(k):\n    if k:\n        pass\n    return 1\n"
    compile(out, "x", "exec")
    assert list(sites("x = 1\n")) == []  # module-level code is never mutated


def test_sample_is_stable_and_keyed_without_lines(mutants: list[Mutant]):
    a = sample(mutants, 25, 1)
    assert len(a) == 25 and a == sample(mutants, 25, 1)
    assert {m.name for m in a} == {m.name for m in sample(list(reversed(mutants)), 25, 1)}  # not order-dependent
    assert {m.name for m in a} != {m.name for m in sample(mutants, 25, 2)}
    moved = [dataclasses.replace(m, line=m.line + 3) for m in mutants]  # an edit above every function
    assert {m.key for m in sample(moved, 25, 1)} == {m.key for m in a}
    assert sample(mutants, None, 1) == mutants


def test_equivalent_list_is_read_and_bad_entries_are_one_line_errors(tmp_path: Path, mutants: list[Mutant]):
    assert eqmod.load().stale(mutants) == [], "the shipped list names only mutants that exist"
    m = mutants[0]
    ok = tmp_path / "eq.toml"
    moved = m.name.replace(f":{m.line}:", f":{m.line + 40}:")
    ok.write_text(f'["{moved}"]\nreason = "cannot matter here"\n')
    eq = eqmod.load(ok)
    assert eq.reason(m) == "cannot matter here"  # matched on the line-free key
    r = _mutate("--list", "--json", "--equivalent", str(ok), "--mutant", m.name)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"name": m.name, "rule": m.rule, "description": m.description,
                                     "equivalent": "cannot matter here"}]
    bad = tmp_path / "bad.toml"
    bad.write_text(f'["{m.name}"]\nreason = ""\n')
    r = _mutate("--list", "--equivalent", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and str(bad) in r.stderr and "reason" in r.stderr


def test_file_selects_the_mutants_of_one_model_file_and_an_unknown_one_is_a_one_line_error(mutants: list[Mutant]):
    r = _mutate("--list", "--json", "--file", "mm/tree.py", "--file", "mm/gup.py")
    assert r.returncode == 0, r.stderr
    names = [m["name"] for m in json.loads(r.stdout)]
    assert names == [m.name for m in mutants if m.file in ("mm/tree.py", "mm/gup.py")] and names
    r = _mutate("--list", "--file", "mm/nope.py")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "--file 'mm/nope.py'" in r.stderr and "mm/swapfile.py" in r.stderr


def test_known_killable_mutant_is_killed_and_the_checkout_is_untouched(tmp_path: Path, mutants: list[Mutant]):
    m = _hold_anon_vma_ref(mutants)
    before = _tree_hash(PKG)
    keep, tmp = tmp_path / "keep", tmp_path / "tmp"
    tmp.mkdir()
    empty = tmp_path / "none.toml"
    empty.write_text("")
    r = _mutate("--mutant", m.name, "seed-unmap-race", "--strategy", "random", "--seconds-per-mutant", "20",
                "--jobs", "1", "--json", "--keep", str(keep), "--equivalent", str(empty), tmp=tmp)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    [res] = d["results"]
    # caught as the refcount invariant breaks (or, if the walk comes first, as the use-after-free that follows)
    assert (res["name"], res["outcome"]) == (m.name, "killed") and res["class"] in KILLED_BY, res
    assert res["kill"]["scenario"] == "seed-unmap-race" and res["time_to_kill"] is not None
    assert d["killed"] == 1 and d["score"] == 1.0 and d["by_class"] == {res["class"]: 1}
    kept = {p.name for p in keep.iterdir()}
    assert {"summary.json", "artifacts"} < kept and any(n.endswith(".diff") for n in kept)
    diff = next(keep.glob("*.diff")).read_text()
    assert "-    c = k.atomic_add(k.av.refcount, a, 1" in diff
    assert _tree_hash(PKG) == before, "the checkout must never be modified"
    assert _scratch_dirs(tmp) == [], "scratch copies must be removed"


# Survivors of the campaign over issue 14's paths and the focused scenario each now dies in: (file, function, rule,
# index) as `--list` keys them without the line, the scenario, the class that kills it. Most die at the first run.
FOCUSED_KILLS = [
    ("mm/gup.py", "dio_complete", "remove-lock", 0, "focus-dio-reclaim", "data-loss"),
    ("mm/migrate.py", "rmap_walk_ksm", "invert-cmp", 2, "focus-migrate-fork", "traversal"),
    ("mm/swapfile.py", "unuse_mm", "swap-sched", 0, "focus-swapoff-writers", "lockdep"),
    ("mm/swapfile.py", "free_swap_and_cache", "drop-recheck", 0, "focus-swapoff-writers", "oops"),
    # threads' peek: a sibling's load faults in the pte the owner faults (do_anonymous_page without pte_none)
    ("mm/memory.py", "do_anonymous_page", "drop-recheck", 0, "threads", "refcount-mismatch"),
    # a zap and refault between follow_page and write_protect_page: replace_page's pte_same alone (as 2.6.33)
    ("mm/ksm.py", "write_protect_page", "drop-recheck", 1, "focus-dontneed-merge", "refcount-underflow"),
]


@pytest.mark.parametrize(("file", "function", "rule", "index", "scenario", "cls"), FOCUSED_KILLS,
                         ids=[f"{f}:{r}:{i}" for _p, f, r, i, _s, _c in FOCUSED_KILLS])
def test_a_focused_scenario_kills_the_mutant_it_was_made_for(
    tmp_path: Path, mutants: list[Mutant], file: str, function: str, rule: str, index: int, scenario: str, cls: str
) -> None:
    [m] = [x for x in mutants if (x.file, x.function, x.rule, x.index) == (file, function, rule, index)]
    r = _mutate("--mutant", m.name, scenario, "--strategy", "random", "--seconds-per-mutant", "90", "--jobs", "1",
                "--json", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    [res] = json.loads(r.stdout)["results"]
    assert res["outcome"] == "killed" and res["class"] == cls, res


def _ignored_sigint() -> None:
    """Ctrl-C ignored at start, as for a background job of a non-interactive shell or a CI step: the campaign must
    still stop on SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("start", [_terminal_sigint, _ignored_sigint], ids=["terminal", "sigint-ignored"])
def test_ctrl_c_stops_every_probe_and_removes_the_scratch_copies(
    tmp_path: Path, mutants: list[Mutant], start: Callable[[], None]
):
    # a mutant no run kills (it is listed as equivalent: run it anyway, with an empty list)
    m = next(x for x in mutants if x.function == "drop_anon_vma" and x.rule == "move-out-of-lock")
    empty = tmp_path / "none.toml"
    empty.write_text("")
    p = subprocess.Popen([sys.executable, "-c", CODE, "--mutant", m.name, "--seconds-per-mutant", "120",
                          "--jobs", "1", "--equivalent", str(empty), "mixed"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True, env=_env(tmp_path),
                         preexec_fn=start)
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + 120
    # wait until the probe runs tasks (the probe and at least one run process below it)
    while time.monotonic() < deadline and len(collect_descendants(p.pid, seen)) < 3:
        time.sleep(0.1)
    if len(seen) < 3:
        p.kill()
        pytest.fail(f"the probe never started its runs: {p.communicate()}")
    os.killpg(p.pid, signal.SIGINT)
    try:
        out, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it ignored Ctrl-C: take everything it started down before failing
        for c in [p.pid, *seen]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c, signal.SIGKILL)
        p.communicate()
        pytest.fail("Ctrl-C did not stop the campaign within 60 s")
    assert p.returncode == 130, err
    assert "interrupted" in out and "ksmstress: interrupted" in err
    left = wait_all_gone(seen.values(), 10)
    assert not left, f"left behind: {[c.pid for c in left]}"
    assert _scratch_dirs(tmp_path) == []


def test_a_mutant_whose_runs_hang_counts_as_timed_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A mutant that spins where no scheduling point is reached (first touch of a page never returns) is neither
    killed nor survived: its run ends at the wall clock, and the campaign says so."""
    from ksmstress.catalog import shipped_dir
    from ksmstress.mutate.campaign import Campaign, Plan

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    rel = "mm/memory.py"
    src = (PKG / rel).read_text()
    head = 'def do_anonymous_page(k: K, m: int, vref: int, addr: int) -> int:\n'
    doc_end = src.index('"""\n', src.index(head) + len(head) + 8) + 4
    hang = src[:doc_end] + "    while True:\n        pass\n" + src[doc_end:]
    m = Mutant(rel, "do_anonymous_page", 0, "test-hang", 0, "spins forever", src, hang)
    plan = Plan([str(shipped_dir() / "seed-unmap-race.toml")], ["random"], 1.0, 0, 3.0)
    [res] = Campaign([m], plan, 1).run()
    assert (res.outcome, res.cls) == ("timeout", "hang"), res
    assert _scratch_dirs(tmp_path) == []
