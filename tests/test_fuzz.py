"""Fuzzing the three inputs a user hands ksmstress: scenario TOML, failure artifacts and kernel workload TOML.

The contract (issue 10): whatever the input, the reader returns a value or raises its one-line error
(ScenarioError, ArtifactError, WorkloadError: exit status 2 at the CLI), never another exception; a valid scenario
runs to a verdict; a replay exits 0, 1 or 2, never with a traceback. Every mutation is drawn from one integer
seed, so a failing example is a number to rerun. The properties use hypothesis with `derandomize=True` and a small
example budget (the same examples on every machine, a few seconds each); `-m stress` runs 1,000 cases over the
three kinds and reports tracebacks, hangs and peak memory. Each finding of the issue stays below as an explicit
regression case.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import io
import json
import random
import re
import resource
import signal
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ksmstress.bugs import VARIANTS
from ksmstress.catalog import shipped_dir
from ksmstress.cli import main
from ksmstress.kernel.compare import return_problems
from ksmstress.kernel.generate import generate_text
from ksmstress.kernel.model import run_model
from ksmstress.kernel.reader import parse as parse_workload
from ksmstress.kernel.workload import Workload, WorkloadError
from ksmstress.report import ArtifactError, artifact_name, read_artifact, write_artifact
from ksmstress.runner import RunResult, run_one
from ksmstress.scenario import NAME_RE, Scenario, ScenarioError, load, parse

from .clitools import cli

SCENARIOS = sorted(shipped_dir().glob("*.toml"))
WORKLOADS = sorted(shipped_dir("kernel").glob("*.toml"))
RUN_STEPS = 20_000  # a fuzzed scenario that parses runs with at most this many steps (its verdict is the point)
RUN_TIMEOUT = 30.0

FEW = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
RUNS = settings(FEW, max_examples=6)  # each example forks a run's processes
SEEDS = st.integers(0, 2**32 - 1)

# -- mutations ----------------------------------------------------------------------------------------------------
INTS = [
    "0", "1", "-1", "255", "4096", "65279", "65280", "2147483648", "9223372036854775807", "9223372036854775808",
    "18446744073709551616", "99999999999999999999", "9" * 5000, "0x" + "f" * 5000,
]
VALUES = [*INTS, "1e400", "-1e400", "nan", "inf", "1.5", "true", '"x"', '""', "[]", "{}", '"a\\u0000b"',
          '"../../escaped-artifact"', '"a/b"', '"\\n"', "[1, [2, [3]]]", "{a = 1}"]
CHARS = '[]{}"=.,:\n\\#\x00 az09é\u2028'


def nested(n: int, arrays: bool) -> str:
    return "[" * n + "]" * n if arrays else "{a = " * n + "1" + "}" * n


def mutate_text(rng: random.Random, text: str) -> str:
    """One random edit of TOML text: a character, a span, a line, a number made extreme, deep nesting, a new key."""
    lines = text.splitlines() or [""]
    op = rng.randrange(9)
    if op == 0 and text:
        i = rng.randrange(len(text))
        return text[:i] + rng.choice(CHARS) + text[i + 1 :]
    if op == 1 and text:
        i = rng.randrange(len(text))
        return text[:i] + text[i + rng.randint(1, 40) :]
    if op == 2:
        i = rng.randrange(len(lines))
        lines.insert(rng.randrange(len(lines) + 1), lines[i])
        return "\n".join(lines)
    if op == 3:
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    if op == 4:
        nums = list(re.finditer(r"\d+", text))
        if nums:
            m = rng.choice(nums)
            return text[: m.start()] + rng.choice(INTS) + text[m.end() :]
    if op == 5:
        n = rng.choice([10, 999, 1000, 1200, 5000])
        return f"deep = {nested(n, rng.random() < 0.5)}\n{text}"
    if op == 6:
        n = rng.choice([3, 50, 1200])
        return f"{text}\n[{'.'.join(['t'] * n)}]\nx = 1\n"
    if op == 7:
        i = rng.randrange(len(lines) + 1)
        m = re.match(r"\s*([A-Za-z_][\w-]*)\s*=", rng.choice(lines))
        key = m[1] if m else rng.choice(["name", "max_steps", "count", "regions", "do", "script"])
        lines.insert(i, f"{key} = {rng.choice(VALUES)}")
        return "\n".join(lines)
    return text[: rng.randrange(len(text) + 1)]


def random_step(rng: random.Random) -> str:
    """A script step, well-formed or nearly, with numbers from the edges of what the model can hold."""
    n = lambda: rng.choice(INTS[:12]) if rng.random() < 0.4 else str(rng.randrange(30))  # noqa: E731
    return rng.choice([
        f"fill:{n()}", f"write:{n()}:{n()}", f"wait-scans:{n()}", f"wait-scans:{n()}:{n()}", f"wait-merged:{n()}",
        f"wait-merged:{n()}:{n()}", f"sleep:{n()}", "fork", "munmap-all", "munmap-half", "unmergeable", "mergeable",
        "read-all", "exit", "fill", f"write:{n()}", f"fill:{n()}:", "write:-1:1", f"sleep:{n()}\n",
    ])


def mutate_script(rng: random.Random, text: str) -> str:
    """The issue's targeted mutation: a task's script replaced by steps with extreme numbers."""
    steps = json.dumps([random_step(rng) for _ in range(rng.randint(1, 4))])
    key = rng.choice(["script", "child_script"])
    if re.search(rf"^{key} = .*$", text, re.M):
        return re.sub(rf"^{key} = .*$", lambda _m: f"{key} = {steps}", text, count=1, flags=re.M)
    return text.replace("[[task]]", f"[[task]]\n{key} = {steps}", 1)


def mutated_scenario(seed: int) -> tuple[str, str]:
    """(file stem, text): a shipped scenario with one to three mutations, or a targeted script mutation."""
    rng = random.Random(seed)
    p = rng.choice(SCENARIOS)
    text = p.read_text()
    if rng.random() < 0.4:
        return p.stem, mutate_script(rng, text)
    for _ in range(rng.randint(1, 3)):
        text = mutate_text(rng, text)
    return p.stem, text


def random_action(rng: random.Random, procs: list[str]) -> str:
    """A workload action, well-formed or nearly, over the workload's processes, with edge numbers and names."""
    plausible = rng.random() < 0.6  # mostly actions the workload can do, so the model side runs too
    p = rng.choice(procs if plausible else [*procs, "nobody", "x" * 17, "1a"])
    nums = ["0", "1", "2", "3"] if plausible else ["0", "1", "2", "7", "64", "65536", "99999999999", "9" * 5000, ""]
    num = lambda: rng.choice(nums)  # noqa: E731
    target = rng.choice([p, f"{p}.{num()}", f"{p}.0[{num()}:{num()}]", f"{p}.0[:{num()}]", f"{p}.0[{num()}:]"])
    pats = rng.choice(["1", "z", "65279", "65280", "1,2,z", ",".join(["3"] * rng.choice([10, 4096, 4097])), "1x"])
    return rng.choice([
        f"write {target} {pats}", f"fork {p} {rng.choice(['c9', 'y' * 16, 'y' * 17, procs[0], '9c'])}",
        f"unmergeable {target}", f"mergeable {target}", f"munmap {target}", f"exit {p}",
        f"run {rng.choice(['0', '1', '2', '3', '-1'])}", "", "write", f"scribble {target}",
    ])


def mutated_workload(seed: int) -> str:
    """A shipped or generated workload with one action replaced by a random one, or one to three text edits."""
    rng = random.Random(seed)
    text = rng.choice(WORKLOADS).read_text() if rng.random() < 0.6 else generate_text(seed)
    if rng.random() < 0.5:
        procs = re.findall(r'^\[\[process\]\]\s*name = "([^"]+)"', text, re.M) or ["a"]
        dos = list(re.finditer(r"^do = \[.*\]$", text, re.M))
        if dos:
            m = rng.choice(dos)
            acts = json.loads(m[0][len("do = ") :])
            if rng.random() < 0.3:  # a hole, then madvise across it (the kernel advises the rest: -ENOMEM)
                p, a = rng.choice(procs), rng.randrange(3)
                acts += [f"munmap {p}.0[{a}:{a + 1}]", f"{rng.choice(['unmergeable', 'mergeable'])} {p}"]
            else:
                acts[rng.randrange(len(acts))] = random_action(rng, procs)
            text = text[: m.start()] + f"do = {json.dumps(acts)}" + text[m.end() :]
            return text
    for _ in range(rng.randint(1, 3)):
        text = mutate_text(rng, text)
    return text


BIG = "@@BIG@@"  # placeholders replaced in the JSON text by what json.dumps cannot write
DEEP = "@@DEEP@@"


def _paths(v: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, (*at, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, (*at, i))


def _set(root: Any, at: tuple[Any, ...], value: Any) -> None:
    for k in at[:-1]:
        root = root[k]
    root[at[-1]] = value


def _schedule(data: dict[str, Any]) -> bytes:
    return zlib.decompress(base64.b64decode(data["schedule"]))


def _encode(schedule: bytes) -> str:
    return base64.b64encode(zlib.compress(schedule)).decode()


def mutated_artifact(seed: int, base: dict[str, Any]) -> bytes:
    """A real artifact with one mutation: a field's value or type, a key gone, the schedule's bytes, a schedule
    that inflates past max_steps, the scenario text inside, deep nesting, a 5,000-digit integer, or raw bytes."""
    rng = random.Random(seed)
    d = copy.deepcopy(base)
    op = rng.randrange(10)
    if op == 0:
        at = rng.choice([p for p in _paths(d) if p])
        _set(d, at, rng.choice([None, True, -1, 0, 2**63, 2**64, 1.5, "", "x" * 300, "\ud800", "a\nb", [], {},
                                ["no-such-bug"], {"class": 5}, BIG, DEEP, "free", "pct", "controlled"]))
    elif op == 1:
        at = rng.choice([p for p in _paths(d) if p])
        parent = d
        for k in at[:-1]:
            parent = parent[k]
        del parent[at[-1]]
    elif op == 2:
        s = bytearray(_schedule(d))
        for _ in range(rng.randint(1, 3)):
            if s:
                s[rng.randrange(len(s))] = rng.randrange(256)
        if rng.random() < 0.3:
            s = s[: rng.randrange(len(s) + 1)]
        d["schedule"] = _encode(bytes(s))
    elif op == 3:
        limit = parse(d["scenario"]["text"]).max_steps + 1
        d["schedule"] = _encode(bytes(rng.choice([limit, limit + 1, 8 << 20])))
    elif op == 4:
        d["scenario"]["text"] = mutate_text(rng, d["scenario"]["text"])
    elif op == 5:
        d["scenario"]["text"] = mutate_script(rng, d["scenario"]["text"])
    elif op == 6:
        d[rng.choice(["failure", "extra", "scenario"])] = DEEP
    elif op == 7:
        d["schedule"] = rng.choice(["", "!!", base64.b64encode(b"junk").decode(), d["schedule"][:-8]])
    text = json.dumps(d).replace(f'"{BIG}"', "7" * 5000).replace(f'"{DEEP}"', nested(rng.choice([50, 5000]), True))
    raw = text.encode("utf-8", "surrogatepass")
    if op == 8:
        raw = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        raw = bytes(raw)
    elif op == 9:
        raw = raw[: rng.randrange(len(raw))]
    return raw


# -- checks -------------------------------------------------------------------------------------------------------
def one_line(e: BaseException, prefix: str) -> None:
    msg = str(e)
    assert "\n" not in msg and msg.startswith(prefix) and len(msg) < 1000, msg


def check_scenario(text: str, path: str = "fuzz.toml") -> Scenario | None:
    """parse() returns a Scenario with a safe name, or raises ScenarioError in one line naming the file."""
    try:
        sc = parse(text, path)
    except ScenarioError as e:
        one_line(e, path)
        return None
    assert NAME_RE.fullmatch(sc.name), sc.name
    return sc


def check_run(sc: Scenario, artifacts: Path) -> RunResult:
    """A valid scenario runs to a verdict; a Python exception inside a task (a `crash` with a traceback) is the
    defect this looks for. A failure's artifact is written inside the directory."""
    res = run_one(dataclasses.replace(sc, max_steps=min(sc.max_steps, RUN_STEPS)), 0, timeout=RUN_TIMEOUT)
    # "budget": the capped max_steps ran out while the programs still progressed (the scenario's size, a verdict)
    assert res.verdict in ("clean", "failure", "budget")
    if res.failure:
        assert "traceback" not in (res.failure.get("details") or {}), res.failure
        assert write_artifact(artifacts, sc, res, None).parent == artifacts
    return res


def check_artifact(path: Path) -> dict[str, Any] | None:
    try:
        data = read_artifact(path)
    except ArtifactError as e:
        one_line(e, str(path))
        return None
    assert isinstance(data["schedule_bytes"], bytes)
    return data


def check_replay(path: Path) -> int:
    """`ksmstress replay PATH` in-process: exit 0, 1 or 2, nothing escaping main()."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["replay", str(path), "--timeout", str(RUN_TIMEOUT), "--reruns", "1"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    assert code in (0, 1, 2), (code, err.getvalue())
    if code == 2:
        assert err.getvalue().count("\n") == 1 and "Traceback" not in err.getvalue(), err.getvalue()
    return code


def check_workload(text: str, path: str = "w.toml") -> Workload | None:
    """parse() returns a Workload or raises WorkloadError in one line; a valid workload (if small) runs on the
    model, and every madvise there returns what the kernel returns (-ENOMEM exactly where a span has a hole)."""
    try:
        w = parse_workload(text, path)
    except WorkloadError as e:
        one_line(e, path)
        return None
    if w.total_pages <= 2000:
        settled, _secs = run_model(w)
        for ph, r in zip(w.phases, settled, strict=True):
            assert not return_problems(ph, r), (ph.name, return_problems(ph, r))
    return w


@pytest.fixture(scope="module")
def real_artifact(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real failure artifact (seed-fork-race with single-pass-walk: a traversal), as JSON."""
    sc = load(shipped_dir() / "seed-fork-race.toml")
    d = tmp_path_factory.mktemp("artifact")
    for seed in range(200):
        res = run_one(sc, seed, bugs=["single-pass-walk"])
        if res.failure:
            return json.loads(write_artifact(d, sc, res, None).read_text())
    raise AssertionError("single-pass-walk did not fail seed-fork-race in 200 seeds")


# -- properties ---------------------------------------------------------------------------------------------------
@FEW
@given(seed=SEEDS)
def test_mutated_scenarios_parse_or_refuse_in_one_line(seed: int) -> None:
    stem, text = mutated_scenario(seed)
    check_scenario(text, f"{stem}.toml")


@settings(FEW, max_examples=40)
@given(raw=st.binary(max_size=300))
def test_any_bytes_as_a_scenario_file(raw: bytes, tmp_path: Path) -> None:
    p = tmp_path / "fuzz.toml"
    p.write_bytes(raw)
    try:
        sc = load(p)
    except ScenarioError as e:
        one_line(e, str(p))
    else:
        assert isinstance(sc, Scenario)


_steps = st.sampled_from(["fill", "fill:0", "fill:65279", "read-all", "wait-scans:1:50", "wait-merged:1:50",
                          "sleep:3", "fork", "munmap-all", "munmap-half", "unmergeable", "mergeable", "write:1:65279",
                          "write:5:0", "exit"])


@RUNS
@given(
    vpages=st.integers(6, 16), tasks=st.integers(1, 2), ops=st.integers(0, 8), script=st.lists(_steps, max_size=5),
    page_size=st.sampled_from([8, 64]), bits=st.sampled_from([2, 8, 32, 63]),
)
def test_valid_tiny_scenarios_run_to_a_verdict(
    vpages: int, tasks: int, ops: int, script: list[str], page_size: int, bits: int, tmp_path: Path
) -> None:
    text = (f"max_steps = 5000\n[arena]\nvpages = {vpages}\npage_size = {page_size}\n[ksm]\nrefcount_bits = {bits}\n"
            + f"[[task]]\nregion = 4\nops = {ops}\nchild_ops = 2\nscript = {json.dumps(script)}\n" * tasks)
    sc = check_scenario(text, "tiny.toml")
    assert sc is not None
    check_run(sc, tmp_path / "art")


@settings(FEW, max_examples=200)
@given(seed=SEEDS)
def test_mutated_artifacts_read_or_refuse_in_one_line(seed: int, real_artifact: dict[str, Any], tmp_path: Path) -> None:
    p = tmp_path / "fuzz.json"
    p.write_bytes(mutated_artifact(seed, real_artifact))
    check_artifact(p)


@settings(RUNS, max_examples=4)
@given(seed=SEEDS)
def test_mutated_artifacts_replay_to_exit_0_1_or_2(seed: int, real_artifact: dict[str, Any], tmp_path: Path) -> None:
    p = tmp_path / "fuzz.json"
    p.write_bytes(mutated_artifact(seed, real_artifact))
    check_replay(p)


@settings(FEW, max_examples=120)
@given(seed=SEEDS)
def test_mutated_workloads_parse_or_refuse_in_one_line(seed: int) -> None:
    check_workload(mutated_workload(seed))


# -- regressions: each finding of issue 10 ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("a = " + nested(1000, True), "nested less deeply"),
        ("a = " + nested(1200, False), "nested less deeply"),
        ("x = " + "1" * 5000, "4300 digits"),
        ("max_steps = 0x" + "f" * 5000, "'max_steps'"),
        ("[reclaim]\nksm_bias = " + "9" * 400, "'reclaim.ksm_bias'"),
        ('[[task]]\nscript = ["write:1:9223372036854775808"]', "'task[0].script[0]'"),
        ('[[task]]\nscript = ["fill:99999999999999999999"]', "'task[0].script[0]'"),
        ('[[task]]\nscript = ["fill:65280"]', "'task[0].script[0]'"),
        ('[[task]]\nscript = ["fill:' + "9" * 5000 + '"]', "'task[0].script[0]'"),
        ('[[task]]\nscript = ["write:0:1"]', "an address in [1, arena.vpages - 1 = 23]"),
        ('[[task]]\nscript = ["write:24:1"]', "an address in [1, arena.vpages - 1 = 23]"),
        ('[[task]]\nchild_script = ["sleep:400001"]', "'task[0].child_script[0]'"),
        ('[[task]]\nscript = ["wait-merged:1:99999999999999"]', "at most max_steps = 400000"),
        ('[[task]]\nscript = ["wait-scans:99999999999999"]', "at most max_steps"),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) else v,
)
def test_scenario_numbers_and_nesting_are_bad_input(
    text: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once an OverflowError reported as a model `crash` (exit 1), a RecursionError or a ValueError traceback."""
    p = tmp_path / "bad.toml"
    p.write_text(text)
    code, out, err = cli(capsys, "run", str(p), "--artifacts", str(tmp_path / "art"))
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert str(p) in err and key in err and "Traceback" not in err, err


@pytest.mark.parametrize("name", ["../../escaped-artifact", "a/b", "a\\u0000b", ".hidden", "x" * 65, "", "é"])
def test_a_scenario_name_is_never_a_path(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`name` became the artifact's file name: '../../x' wrote outside --artifacts, 'a/b' failed late, a NUL was a
    ValueError traceback. Now exit 2 naming the key, before anything runs."""
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    text = (shipped_dir() / "seed-fork-race.toml").read_text().replace('name = "seed-fork-race"', f'name = "{name}"')
    p = work / "named.toml"
    p.write_text(text)
    code, out, err = cli(capsys, "run", str(p), "--bug", "single-pass-walk", "--runs", "50", "--artifacts",
                         str(work / "art"))
    assert code == 2 and err.count("\n") == 1 and "key 'name'" in err and str(p) in err, err
    assert sorted(x.name for x in tmp_path.rglob("*")) == ["deep", "er", "named.toml"]


def test_a_scenario_path_with_a_nul_is_one_line() -> None:
    with pytest.raises(ScenarioError, match="without NUL"):
        load("a\x00b.toml")


def test_the_default_name_from_an_odd_file_name_is_safe() -> None:
    assert parse("", "/x/my scenario.toml").name == "my_scenario"
    assert parse("", "/x/..toml").name == "scenario"
    assert parse("", "/x/ok-name.toml").name == "ok-name"


def _result(**kw: Any) -> RunResult:
    base: dict[str, Any] = dict(scenario="s", path="s.toml", seed=3, strategy="random", bugs=[], verdict="failure",
                                failure={"class": "traversal"}, steps=1, handoffs=0, elapsed=0.1, schedule=b"\x00")
    return RunResult(**{**base, **kw})


@pytest.mark.parametrize("name", ["../../escaped-artifact", "a/b", "..", "a\x00b", "/abs"])
def test_write_artifact_builds_no_path_from_unchecked_input(name: str, tmp_path: Path) -> None:
    """A Scenario made in code (not by the parser), bug names and a class with separators: the file still lands
    in the directory, with a name of safe characters."""
    d = tmp_path / "art"
    res = _result(bugs=["../up", "x/y"], strategy="../s", failure={"class": "a/../b"})
    p = write_artifact(d, Scenario(name=name, path=str(tmp_path / "none.toml")), res, None)
    assert p.parent == d and re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\.json", p.name), p.name
    assert [x.name for x in tmp_path.iterdir()] == ["art"]


def test_an_artifact_name_with_every_variant_fits_a_file_system(tmp_path: Path) -> None:
    sc = Scenario(name="n" * 64, path="x.toml")
    name = artifact_name(sc, _result(bugs=sorted(VARIANTS), seed=2**63 - 1))
    assert len(name) <= 200 and name.endswith("-seed9223372036854775807-traversal.json")
    assert name != artifact_name(sc, _result(bugs=sorted(VARIANTS)[1:], seed=2**63 - 1))


def test_a_planted_symlink_is_not_followed_out_of_the_directory(tmp_path: Path) -> None:
    d = tmp_path / "art"
    d.mkdir()
    sc = Scenario(name="s", path="x.toml")
    res = _result()
    (d / artifact_name(sc, res)).symlink_to(tmp_path / "outside.json")
    with pytest.raises(ArtifactError, match="outside --artifacts"):
        write_artifact(d, sc, res, None)
    assert not (tmp_path / "outside.json").exists()


def _artifact(tmp_path: Path, real: dict[str, Any], text: str | None = None, **fields: Any) -> Path:
    p = tmp_path / "a.json"
    p.write_text(text if text is not None else json.dumps({**real, **fields}))
    return p


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda r: json.dumps(r)[:-1] + ', "x": ' + nested(100_000, True) + "}", "nested too deeply"),
        (lambda r: json.dumps({**r, "failure": {"details": {"d": DEEP}}}).replace(f'"{DEEP}"', nested(40, True)),
         "nested at most 32"),
        (lambda r: json.dumps({**r, "seed": BIG}).replace(f'"{BIG}"', "7" * 5000), "4300 digits"),
        (lambda r: json.dumps({**r, "seed": 2**63}), "'seed'"),
        (lambda r: json.dumps({**r, "strategy": "chaos"}), "'strategy'"),
        (lambda r: json.dumps({**r, "mode": "turbo"}), "'mode'"),
        (lambda r: json.dumps({**r, "pct_depth": 100}), "'pct_depth'"),
        (lambda r: json.dumps({**r, "failure": {"class": "\ud800"}}), "'failure.class'"),
        (lambda r: json.dumps({**r, "bugs": ["a\nb"]}), "'bugs'"),
        (lambda r: json.dumps({**r, "scenario": {**r["scenario"], "path": 5}}), "'scenario.path'"),
        (lambda r: json.dumps({**r, "scenario": {"text": "", "path": "a\x00b"}}), "'scenario.path'"),
        (lambda r: json.dumps({**r, "scenario": {**r["scenario"], "text": 'name = "../x"\n'}}), "key 'name'"),
        (lambda r: json.dumps({**r, "format": 2}), "'format'"),
        (lambda r: json.dumps({**r, "schedule": _encode(b"\x00" * (64 << 20))}), "max_steps + 1 = 200001"),
        (lambda r: json.dumps({**r, "schedule": r["schedule"][:-8]}), "'schedule'"),
    ],
    ids=["deep-json", "deep-field", "5000-digits", "seed-2**63", "strategy", "mode", "pct-depth", "surrogate",
         "bug-newline", "path-int", "path-nul", "scenario-name", "format", "inflation-bomb", "truncated-zlib"],
)
def test_malformed_artifacts_are_one_line_errors(
    make: Callable[[dict[str, Any]], str], needle: str, real_artifact: dict[str, Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """12 of 220 mutations were tracebacks (RecursionError, the int-conversion limit, ...); a 3.4 MB artifact
    inflated its schedule to 5.1 GB. Each is now one line, exit 2."""
    p = _artifact(tmp_path, real_artifact, make(real_artifact))
    with pytest.raises(ArtifactError) as e:
        read_artifact(p)
    one_line(e.value, str(p))
    assert needle in str(e.value)
    code, out, err = cli(capsys, "replay", str(p))
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, err


def test_a_schedule_inflating_to_exactly_max_steps_plus_one_is_read(real_artifact: dict[str, Any],
                                                                    tmp_path: Path) -> None:
    limit = parse(real_artifact["scenario"]["text"]).max_steps + 1
    assert len(read_artifact(_artifact(tmp_path, real_artifact, schedule=_encode(bytes(limit))))
               ["schedule_bytes"]) == limit


def test_the_real_artifact_replays(real_artifact: dict[str, Any], tmp_path: Path) -> None:
    assert check_replay(_artifact(tmp_path, real_artifact)) == 1


# -- the long run: 1,000 cases over the three kinds ---------------------------------------------------------------
class _Hang(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    def fire(*_: object) -> None:
        raise _Hang

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _scenario_case(seed: int, work: Path, _real: dict[str, Any]) -> str:
    stem, text = mutated_scenario(seed)
    sc = check_scenario(text, f"{stem}.toml")
    if sc is None:
        return "refused"
    res = check_run(sc, work / "art")
    return f"ran:{(res.failure or {}).get('class', 'clean')}"


def _artifact_case(seed: int, work: Path, real: dict[str, Any]) -> str:
    p = work / "a.json"
    p.write_bytes(mutated_artifact(seed, real))
    if check_artifact(p) is None:
        return "refused"
    return f"replayed:{check_replay(p)}"


def _workload_case(seed: int, _work: Path, _real: dict[str, Any]) -> str:
    w = check_workload(mutated_workload(seed))
    if w is None:
        return "refused"
    return "modelled" if w.total_pages <= 2000 else "parsed"


@pytest.mark.stress
@pytest.mark.timeout(3600)
def test_fuzz_1000_cases(real_artifact: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """1,000 cases (400 scenarios, every one that parses run; 300 artifacts, every one that reads replayed; 300
    workloads, every one that parses modelled): 0 tracebacks, 0 hangs (120 s per case), peak RSS under 1 GB."""
    kinds: dict[str, Callable[[int, Path, dict[str, Any]], str]] = {
        "scenario": _scenario_case, "artifact": _artifact_case, "workload": _workload_case,
    }
    plan = ["scenario"] * 400 + ["artifact"] * 300 + ["workload"] * 300
    rng = random.Random(20_261_000)
    rng.shuffle(plan)
    tracebacks: list[str] = []
    hangs: list[str] = []
    outcomes: dict[str, int] = {}
    slowest = (0.0, "")
    t0 = time.monotonic()
    for i, kind in enumerate(plan):
        seed = rng.getrandbits(32)
        work = tmp_path / str(i)
        work.mkdir()
        t = time.monotonic()
        try:
            with _deadline(120):
                out = kinds[kind](seed, work, real_artifact)
            outcomes[f"{kind}:{out}"] = outcomes.get(f"{kind}:{out}", 0) + 1
        except _Hang:
            hangs.append(f"{kind} seed {seed}")
        except Exception:  # noqa: BLE001 - every escape is the finding this run counts
            tracebacks.append(f"{kind} seed {seed}:\n{traceback.format_exc()}")
        slowest = max(slowest, (time.monotonic() - t, f"{kind} seed {seed}"))
    wall = time.monotonic() - t0
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    with capsys.disabled():
        print(f"\nfuzz: {len(plan)} cases in {wall:.0f} s; tracebacks {len(tracebacks)}, hangs {len(hangs)}, "
              f"peak RSS {peak:.0f} MB; slowest {slowest[0]:.1f} s ({slowest[1]})")
        print("  " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
        for tb in tracebacks[:5]:
            print(tb)
    assert not tracebacks and not hangs
    assert peak < 1024
