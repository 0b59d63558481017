"""The `ksmstress` command line: exit statuses, `--json` output, determinism, variant detection and replay, and
one-line errors (never a traceback) for every kind of bad input.

End-to-end checks run the CLI as a subprocess (a fresh interpreter, so hash randomisation and import-time state
are really different between two runs); the many bad-input cases call `ksmstress.cli.main(argv)` in-process,
where an uncaught exception fails the test with its traceback.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shlex
import zlib
from pathlib import Path
from typing import Any

import pytest

from ksmstress.catalog import shipped_dir

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # not in the [test] extra: the property tests skip, the rest of the file still runs
    st = None

from ksmstress.bugs import VARIANTS
from ksmstress.failures import CLASSES
from ksmstress.scenario import Scenario, ScenarioError, load, parse

from .clitools import cli, run_cli

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = shipped_dir()
REQUIRED_KEYS = {
    "verdict",
    "seeds",
    "runs",
    "steps",
    "schedule_digest",
    "failure",
    "steps_per_second",
    "wall_seconds",
    "scenarios",
}
TIMING = ("steps_per_second", "elapsed_seconds", "wall_seconds", "run_seconds")
EXPECTED_DETECTORS = {
    "no-anon-vma-ref": "use-after-free",
    "free-on-empty-list": "use-after-free",
    "single-pass-walk": "traversal",
}


# -- helpers ------------------------------------------------------------------------------------------------------
def one_json_object(stdout: str) -> dict[str, Any]:
    """stdout must be exactly one JSON object (one line) and nothing else."""
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one line of JSON on stdout, got {len(lines)}:\n{stdout}"
    d = json.loads(lines[0])
    assert isinstance(d, dict)
    return d


def without_timing(d: dict[str, Any]) -> dict[str, Any]:
    d = {k: v for k, v in d.items() if k not in TIMING}
    if "scenarios" in d:
        d["scenarios"] = [{k: v for k, v in s.items() if k not in TIMING} for s in d["scenarios"]]
    return d


def artifact_from_stdout(stdout: str) -> Path:
    """The path printed on the `replay:   ksmstress replay PATH` line."""
    for line in stdout.splitlines():
        if "ksmstress replay" in line:
            return Path(shlex.split(line.split("ksmstress replay", 1)[1])[0])
    raise AssertionError(f"no 'ksmstress replay PATH' line in:\n{stdout}")


def assert_usage_error(code: int, out: str, err: str, *needles: str) -> None:
    """Exit 2, nothing on stdout, exactly one line on stderr containing every needle, no traceback."""
    assert code == 2, f"exit status {code}, expected 2; stderr:\n{err}"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert out == ""
    for n in needles:
        assert n in lines[0], f"{n!r} not in the error line {lines[0]!r}"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


# -- run: clean, --json, determinism ------------------------------------------------------------------------------
def test_run_default_scenario_is_clean(tmp_path: Path) -> None:
    r = run_cli("run", cwd=tmp_path)  # outside the checkout: the shipped scenarios are found all the same
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "mixed: 1 run(s) clean" in r.stdout
    assert "ksmstress replay" not in r.stdout
    assert not list(tmp_path.iterdir()), "a clean run wrote something"


@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_run_json_is_one_object_and_deterministic(strategy: str, tmp_path: Path) -> None:
    args = ("run", "--seed", "7", "--runs", "2", "--strategy", strategy, "--json", "--artifacts", str(tmp_path))
    first, second = run_cli(*args), run_cli(*args)
    for r in (first, second):
        assert r.returncode == 0, r.stdout + r.stderr
    a, b = one_json_object(first.stdout), one_json_object(second.stdout)
    assert REQUIRED_KEYS <= a.keys(), f"missing keys: {REQUIRED_KEYS - a.keys()}"
    assert a["verdict"] == "clean"
    assert a["failure"] is None
    assert a["seeds"] == {"first": 7, "last": 8}
    assert a["runs"] == 2
    assert a["strategy"] == strategy
    assert isinstance(a["steps"], int) and a["steps"] > 0
    assert isinstance(a["schedule_digest"], str) and len(a["schedule_digest"]) == 16
    assert isinstance(a["steps_per_second"], int | float) and a["steps_per_second"] > 0
    assert without_timing(a) == without_timing(b)
    assert not list(tmp_path.iterdir()), "a clean run wrote an artifact"


def test_run_json_totals_cover_every_run_and_scenario(tmp_path: Path) -> None:
    """Over several scenarios and seeds, --json describes all of them: totals, a list per scenario, the wall time
    of the whole command; the failing run's own figures sit under 'failure'."""
    r = run_cli(
        "run", "seed-unmap-race", "scan-exit-race", "--seed", "3", "--runs", "3", "--json", "--artifacts", str(tmp_path)
    )
    assert r.returncode == 0, r.stderr
    d = one_json_object(r.stdout)
    assert [s["scenario"] for s in d["scenarios"]] == ["seed-unmap-race", "scan-exit-race"]
    assert d["runs"] == 6 and all(s["runs"] == 3 for s in d["scenarios"])
    assert d["steps"] == sum(s["steps"] for s in d["scenarios"])
    assert d["seeds"] == {"first": 3, "last": 5}
    assert d["wall_seconds"] >= d["run_seconds"] > 0
    r = run_cli(
        "run", "seed-unmap-race", "--bug", "no-anon-vma-ref", "--runs", "30", "--json", "--artifacts", str(tmp_path)
    )
    assert r.returncode == 1, r.stderr
    d = one_json_object(r.stdout)
    f = d["failure"]
    assert f["class"] == "use-after-free" and f["scenario"] == "seed-unmap-race"
    assert d["seeds"]["last"] == f["seed"] and d["runs"] == f["seed"] + 1
    assert d["steps"] >= f["steps"] and len(f["schedule_digest"]) == 16
    assert Path(f["artifact"]).is_file() and d["artifact"] == f["artifact"]


def test_every_option_has_help() -> None:
    """Every option of every command says what it does (and argparse shows its default)."""
    import argparse

    from ksmstress.cli import build_parser

    todo = [build_parser()]
    while todo:
        p = todo.pop()
        for act in p._actions:
            if isinstance(act, argparse._SubParsersAction):
                todo += list(act.choices.values())
            elif act.option_strings and act.help != argparse.SUPPRESS:
                assert act.help, f"{p.prog} {'/'.join(act.option_strings)} has no help"


def test_version_and_bare_invocation() -> None:
    from ksmstress import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"ksmstress {__version__}"
    r = run_cli()
    assert r.returncode == 0 and "COMMAND" in r.stdout
    for cmd in ("run", "replay", "soak", "bench", "bugs", "scenarios", "kernel", "mutate"):
        assert f"    {cmd} " in r.stdout


def test_different_seeds_give_different_schedules(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    digests = set()
    for seed in ("0", "1"):
        code, out, _err = cli(capsys, "run", "--seed", seed, "--json", "--artifacts", str(tmp_path))
        assert code == 0
        digests.add(one_json_object(out)["schedule_digest"])
    assert len(digests) == 2


# -- variant detection and replay ---------------------------------------------------------------------------------
def test_single_pass_walk_is_caught_and_replays(tmp_path: Path) -> None:
    r = run_cli(
        "run", "seed-fork-race", "--bug", "single-pass-walk", "--runs", "50", "--artifacts", str(tmp_path / "art")
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "FAILURE traversal" in r.stdout
    assert "ksmstress replay" in r.stdout
    artifact = artifact_from_stdout(r.stdout)
    if not artifact.is_absolute():
        artifact = ROOT / artifact
    assert artifact.is_file()
    assert artifact.parent == tmp_path / "art"
    recorded = json.loads(artifact.read_text())
    assert recorded["failure"]["class"] == "traversal"
    assert recorded["bugs"] == ["single-pass-walk"]

    # the artifact is self-contained: replay it from another directory, three times
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    verdicts = []
    for _ in range(3):
        rp = run_cli("replay", str(artifact), "--json", cwd=elsewhere)
        assert rp.returncode == 1, rp.stdout + rp.stderr
        v = one_json_object(rp.stdout)
        assert v["reproduced"] is True
        assert v["recorded_class"] == "traversal"
        assert v["failure"]["class"] == "traversal"
        assert v["verdict"] == "failure"
        verdicts.append(v)
    assert {v["schedule_digest"] for v in verdicts} == {recorded["schedule_digest"]}
    assert {v["steps"] for v in verdicts} == {recorded["steps"]}
    assert len({json.dumps(v["failure"], sort_keys=True) for v in verdicts}) == 1

    # the human-readable replay says so too
    rp = run_cli("replay", str(artifact), cwd=elsewhere)
    assert rp.returncode == 1
    assert "reproduced the recorded traversal" in rp.stdout


@pytest.mark.parametrize("bug", ["no-anon-vma-ref", "free-on-empty-list"])
def test_unmap_race_variants_are_use_after_free(bug: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(
        capsys, "run", "seed-unmap-race", "--bug", bug, "--runs", "30", "--json", "--artifacts", str(tmp_path)
    )
    assert code == 1, out + err
    d = one_json_object(out)
    assert d["verdict"] == "failure"
    assert d["failure"]["class"] == "use-after-free"
    assert d["bugs"] == [bug]
    assert Path(d["artifact"]).is_file()
    assert d["replay"] == f"ksmstress replay {d['artifact']}"
    assert 1 <= d["runs"] <= 30


def test_unmap_race_without_a_bug_is_clean(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The control for the two variants above: the same scenario and seeds with no variant switched on."""
    code, out, _err = cli(capsys, "run", "seed-unmap-race", "--runs", "3", "--json", "--artifacts", str(tmp_path))
    assert code == 0
    assert one_json_object(out)["verdict"] == "clean"


# -- bad input: exit 2, one line, no traceback ----------------------------------------------------------------------
def test_unknown_bug(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(*cli(capsys, "run", "--bug", "no-such-bug"), "no-such-bug")


def test_missing_scenario_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist.toml"
    assert_usage_error(*cli(capsys, "run", str(missing)), str(missing))


def test_scenario_is_a_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_usage_error(*cli(capsys, "run", str(tmp_path)), str(tmp_path))


def test_malformed_toml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = write(tmp_path, "broken.toml", "[arena\npage_size = 64\n")
    assert_usage_error(*cli(capsys, "run", str(p)), str(p), "TOML")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 1\n", "colour"),
        ("[arena]\nwibble = 3\n", "arena.wibble"),
        ("[[task]]\nbogus = 1\n", "task[0].bogus"),
        ("[[task]]\n[task.weights]\nteleport = 1\n", "task[0].weights.teleport"),
        ("[gpu]\nenabled = true\n", "gpu"),
    ],
)
def test_unknown_key(text: str, key: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = write(tmp_path, "unknown-key.toml", text)
    assert_usage_error(*cli(capsys, "run", str(p)), "unknown-key.toml", f"'{key}'", "unknown key")


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[arena]\npage_size = "big"\n', "arena.page_size", "expected int"),
        ("[arena]\nvpages = 1.5\n", "arena.vpages", "expected int"),
        ("[arena]\nmax_mm = true\n", "arena.max_mm", "expected int"),
        ('[reclaim]\nenabled = "yes"\n', "reclaim.enabled", "expected bool"),
        ('[reclaim]\nswap = "lots"\n', "reclaim.swap", "expected float"),
        ("name = 3\n", "name", "expected str"),
        ('[[task]]\nscript = "fill"\n', "task[0].script", "expected list"),
        ('[[task]]\nscript = ["fill", "teleport"]\n', "task[0].script", "bad step"),
        ("arena = 3\n", "arena", "expected a table"),
        ("task = 3\n", "task", "[[task]]"),
    ],
)
def test_wrong_type(text: str, key: str, expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = write(tmp_path, "wrong-type.toml", text)
    assert_usage_error(*cli(capsys, "run", str(p)), "wrong-type.toml", key, expected)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[arena]\nvpages = 8\n[[task]]\nregion = 20\n", "task[0].region"),
        ("[arena]\nvpages = 8\n[[task]]\nregion = 8\n", "task[0].region"),  # page 0 is never mapped
        ("[arena]\nmax_mm = 2\n[[task]]\ncount = 3\n", "arena.max_mm"),
        ("[arena]\npage_size = 1\n", "arena.page_size"),
        ("[arena]\nvpages = 100000\n", "arena.vpages"),
        ("max_steps = -5\n", "max_steps"),
        ("[reclaim]\nksm_bias = 1.5\n", "reclaim.ksm_bias"),
    ],
)
def test_impossible_size(text: str, key: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = write(tmp_path, "impossible.toml", text)
    assert_usage_error(*cli(capsys, "run", str(p)), "impossible.toml", key, "expected")


def test_bad_scenario_among_good_ones_runs_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = write(tmp_path, "bad.toml", "[arena]\nvpages = 2\n")
    assert_usage_error(*cli(capsys, "run", "seed-unmap-race", str(p)), "bad.toml", "arena.vpages")


@pytest.mark.parametrize("runs", ["0", "-3"])
def test_runs_must_be_positive(runs: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(*cli(capsys, "run", "--runs", runs), "--runs")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("run", "--strategy", "dfs"), "--strategy"),
        (("run", "--seed", "many"), "--seed"),
        (("run", "--seed", "-5"), "--seed"),
        (("run", "--reruns", "-1"), "--reruns"),
        (("run", "--mode", "free", "--hang-seconds", "0"), "--hang-seconds"),
        (("run", "--cpu", "4096"), "--cpu"),
        (("replay", "x.json", "--timeout", "0"), "--timeout"),
        (("bench", "--jobs", "0"), "--jobs"),
        (("bench", "--seconds", "-1"), "--seconds"),
        (("bench", "--skip-detection", "--throughput-runs", "0"), "--throughput-runs"),
        (("bench", "--only", "scheduler", "--samples", "0"), "--samples"),
        (("bench", "--only", "speed"), "--only"),
        (("bench", "--only", "detection", "--skip-detection"), "--skip-detection"),
        (("soak", "--pct-depth", "0"), "--pct-depth"),
        (("soak", "--timeout", "nan"), "--timeout"),
        (("soak", "--seed", "-1"), "--seed"),
        (("kernel", "--recorded", "--timeout", "nan"), "--timeout"),
        (("kernel", "--recorded", "--timeout", "inf"), "--timeout"),
        (("kernel", "--recorded", "--generate", "1", "--seed", "-3"), "--seed"),
        (("launch",), "launch"),
    ],
)
def test_argument_errors(args: tuple[str, ...], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(*cli(capsys, *args), needle)


def _artifact_text(**overrides: Any) -> str:
    art = {
        "format": 1,
        "scenario": {"name": "x", "path": "x.toml", "text": ""},
        "seed": 0,
        "strategy": "random",
        "bugs": [],
        "schedule": base64.b64encode(zlib.compress(b"\x00" * 10)).decode(),
        "failure": None,
    }
    art.update(overrides)
    return json.dumps(art)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"scenario": ', "invalid JSON"),
        ("", "invalid JSON"),
        (_artifact_text(seed="zero"), "'seed'"),
        (_artifact_text(bugs="single-pass-walk"), "'bugs'"),
        (json.dumps({"hello": "world"}), "'scenario'"),
        (_artifact_text(schedule="not base64!!"), "'schedule'"),
        (_artifact_text(schedule=base64.b64encode(b"not zlib").decode()), "'schedule'"),
        (_artifact_text(scenario={"name": "x"}), "scenario"),
        (_artifact_text(scenario={"text": "[arena\n", "path": "x.toml"}), "TOML"),
        (_artifact_text(scenario={"text": "", "path": "/nonexistent/x.toml"}), "/nonexistent/x.toml"),
        (_artifact_text(scenario={"text": "[[task]]\n", "path": "x.toml"}, bugs=["no-such-bug"]), "no-such-bug"),
    ],
)
def test_corrupt_artifact(content: str, needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = write(tmp_path, "corrupt.json", content)
    assert_usage_error(*cli(capsys, "replay", str(p)), needle)


def test_missing_artifact(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = tmp_path / "gone.json"
    assert_usage_error(*cli(capsys, "replay", str(p)), str(p))


def test_usage_errors_end_to_end(tmp_path: Path) -> None:
    """The same contract through a real interpreter: exit 2, one stderr line, nothing else."""
    wrong = write(tmp_path, "wrong.toml", '[arena]\npage_size = "big"\n')
    corrupt = write(tmp_path, "corrupt.json", "{")
    for args, needles in [
        (("run", "--bug", "no-such-bug"), ("no-such-bug",)),
        (("run", str(wrong)), ("wrong.toml", "arena.page_size", "expected int")),
        (("replay", str(corrupt)), ("corrupt.json",)),
    ]:
        r = run_cli(*args, cwd=tmp_path)
        assert_usage_error(r.returncode, r.stdout, r.stderr, *needles)


# -- bad input found by these tests and fixed: each stays a regression test ---------------------------------------
def test_non_utf8_scenario(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = write(tmp_path, "binary.toml", b"\xff\xfe\x00[arena]\n")
    assert_usage_error(*cli(capsys, "run", str(p)), "binary.toml")


def test_non_utf8_artifact(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = write(tmp_path, "binary.json", b"\xff\xfe{}")
    assert_usage_error(*cli(capsys, "replay", str(p)), "binary.json")


def test_artifact_that_is_not_an_object(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = write(tmp_path, "list.json", "[1, 2]")
    assert_usage_error(*cli(capsys, "replay", str(p)), "list.json")


def test_artifact_failure_not_an_object(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "failure.json",
        _artifact_text(scenario={"text": "[[task]]\n", "path": "x.toml"}, failure="use-after-free"),
    )
    code, out, err = cli(capsys, "replay", str(p))
    assert code in (0, 1, 2) and "Traceback" not in err


def test_artifact_scenario_text_not_a_string(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = write(tmp_path, "text.json", _artifact_text(scenario={"text": 5, "path": "x.toml"}))
    assert_usage_error(*cli(capsys, "replay", str(p)), "scenario")


@pytest.mark.parametrize("schedule", [b"", b"\xff" * 50], ids=["empty", "task-255"])
def test_replay_schedule_that_diverges_at_step_0(
    schedule: bytes, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A schedule that diverges at step 3 ends in a clean `replay-diverged` verdict (exit 1); one that diverges at
    step 0 must too (or be refused with exit 2), never a traceback."""
    p = write(
        tmp_path,
        "diverge.json",
        _artifact_text(
            scenario={"text": (SCENARIOS / "seed-fork-race.toml").read_text(), "path": "seed-fork-race.toml"},
            schedule=base64.b64encode(zlib.compress(schedule)).decode(),
        ),
    )
    code, out, err = cli(capsys, "replay", str(p), "--json")
    assert code in (1, 2)
    if code == 1:
        assert one_json_object(out)["failure"]["class"] == "replay-diverged"


def test_replay_schedule_that_diverges_later(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "diverge.json",
        _artifact_text(
            scenario={"text": (SCENARIOS / "seed-fork-race.toml").read_text(), "path": "seed-fork-race.toml"},
            schedule=base64.b64encode(zlib.compress(bytes([0, 1, 2]))).decode(),
            failure={"class": "traversal"},
        ),
    )
    code, out, _err = cli(capsys, "replay", str(p), "--json")
    assert code == 1
    d = one_json_object(out)
    assert d["failure"]["class"] == "replay-diverged"
    assert d["reproduced"] is False


def _failing_artifact(failing_artifacts: dict[str, Path]) -> dict[str, Any]:
    """conftest's use-after-free artifact (seed-unmap-race, no-anon-vma-ref) as a dict, to alter and write back."""
    return json.loads(failing_artifacts["use-after-free"].read_text())


def test_replay_of_an_altered_schedule_is_never_reproduced(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, failing_artifacts: dict[str, Path]
) -> None:
    """'reproduced' means the same class, step, site, object and schedule digest: an artifact whose schedule has
    one decision changed replays to something else (a divergence or a different failure) and says which."""
    art = _failing_artifact(failing_artifacts)
    sched = bytearray(zlib.decompress(base64.b64decode(art["schedule"])))
    seen = 0
    for i in range(len(sched) // 3, len(sched), max(1, len(sched) // 7)):
        sched2 = bytearray(sched)
        sched2[i] = (sched2[i] + 1) % 4
        if sched2 == sched:
            continue
        altered = dict(art, schedule=base64.b64encode(zlib.compress(bytes(sched2))).decode())
        p = write(tmp_path, f"altered{i}.json", json.dumps(altered))
        code, out, _err = cli(capsys, "replay", str(p), "--json")
        d = one_json_object(out)
        assert d["reproduced"] is False, d
        assert d["outcome"].startswith(("replay diverged at step", "different failure:", "clean replay")), d
        code, out, _err = cli(capsys, "replay", str(p))
        assert "reproduced the recorded" not in out
        seen += 1
    assert seen >= 3


def test_replay_of_an_artifact_without_a_failure_says_the_same_in_text_and_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, failing_artifacts: dict[str, Path]
) -> None:
    art = _failing_artifact(failing_artifacts)
    p = write(tmp_path, "nofailure.json", json.dumps(dict(art, failure=None)))
    code, out, _err = cli(capsys, "replay", str(p), "--json")
    d = one_json_object(out)
    assert code == 1 and d["reproduced"] is False
    assert d["outcome"].startswith("different failure: use-after-free") and "instead of a clean run" in d["outcome"]
    code, out, _err = cli(capsys, "replay", str(p))
    assert d["outcome"] in out


def test_artifacts_dir_that_cannot_be_created(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blocker = write(tmp_path, "a-file", "")
    code, out, err = cli(
        capsys,
        "run",
        "seed-fork-race",
        "--bug",
        "single-pass-walk",
        "--runs",
        "50",
        "--artifacts",
        str(blocker / "sub"),
    )
    assert_usage_error(code, "", err, "a-file")


@pytest.mark.parametrize(
    "args",
    [
        ("--timeout", "0"),
        ("--timeout", "-1"),
        ("--timeout", "nan"),
        ("--strategy", "pct", "--pct-depth", "0"),
        ("--strategy", "pct", "--pct-depth", "-1"),
    ],
    ids=["timeout-0", "timeout-neg", "timeout-nan", "pct-depth-0", "pct-depth-neg"],
)
def test_numeric_options_are_validated(
    args: tuple[str, ...], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert_usage_error(*cli(capsys, "run", *args, "--artifacts", str(tmp_path)), args[-2])


@pytest.mark.parametrize("text", ["[reclaim]\nksm_bias = nan\n", "[[task]]\n[task.weights]\nwrite = nan\n"])
def test_nan_is_out_of_range(text: str) -> None:
    with pytest.raises(ScenarioError):
        parse(text, "nan.toml")


def test_script_step_with_trailing_newline_is_refused() -> None:
    with pytest.raises(ScenarioError):
        parse('[[task]]\nscript = ["fill\\n", "exit\\n"]\n', "nl.toml")


def test_unknown_key_with_newline_stays_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = write(tmp_path, "nl.toml", '"a\\nb" = 1\n')
    assert_usage_error(*cli(capsys, "run", str(p)), "nl.toml", "unknown key")


# -- property: no input makes the scenario parser raise anything but ScenarioError ----------------------------------
def _check_parse(text: str) -> None:
    try:
        sc = parse(text, "fuzz.toml")
    except ScenarioError as e:
        assert str(e).startswith("fuzz.toml")
    else:
        assert isinstance(sc, Scenario)


_TABLES = {
    "": ["name", "description", "max_steps", "extra"],
    "arena": ["page_size", "vpages", "max_vmas", "max_mm", "extra"],
    "ksm": ["pages_to_scan", "refcount_bits"],
    "reclaim": ["enabled", "ksm_bias", "swap", "swapoff"],
    "admin": ["unmerge_every"],
    "pct": ["depth", "k"],
    "ksmd": ["enabled"],
}
_TASK_KEYS = ["count", "region", "patterns", "ops", "script", "child_script", "child_ops", "max_forks", "mergeable"]
_WEIGHT_KEYS = ["write", "read", "fork", "munmap", "mmap", "sleep", "dance"]
_STEPS = [
    "fill",
    "fill:2",
    "read-all",
    "wait-scans:1",
    "wait-merged:2",
    "sleep:3",
    "fork",
    "munmap-all",
    "munmap-half",
    "unmergeable",
    "mergeable",
    "write:1:1",
    "exit",
    "jump",
    "fill:",
    "",
]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def _toml(tables: dict[str, dict[str, Any]], tasks: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in tables.get("", {}).items()]
    for name, body in tables.items():
        if name:
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    for body, weights in tasks:
        lines.append("[[task]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
        if weights is not None:
            lines.append("[task.weights]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in weights.items()]
    return "\n".join(lines) + "\n"


if st is None:

    @pytest.mark.skip(reason="hypothesis is not installed")
    def test_scenario_parser_properties() -> None:
        pass

else:
    _FEW = settings(
        max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    _values = st.one_of(
        st.integers(-3, 70),
        st.integers(),
        st.floats(allow_nan=True),
        st.booleans(),
        st.text(max_size=8),
        st.lists(st.sampled_from(_STEPS), max_size=4),
        st.lists(st.integers(0, 3), max_size=2),
    )
    _keys = st.sampled_from(sorted({k for ks in _TABLES.values() for k in ks}))
    _tables = st.dictionaries(st.sampled_from(list(_TABLES)), st.dictionaries(_keys, _values, max_size=3), max_size=4)
    _tasks = st.lists(
        st.tuples(
            st.dictionaries(st.sampled_from(_TASK_KEYS), _values, max_size=4),
            st.none() | st.dictionaries(st.sampled_from(_WEIGHT_KEYS), _values, max_size=3),
        ),
        max_size=2,
    )

    @_FEW
    @given(text=st.text(max_size=400))
    def test_parse_arbitrary_text(text: str) -> None:
        _check_parse(text)

    @_FEW
    @given(text=st.text(max_size=200))
    def test_load_arbitrary_utf8_file(text: str, tmp_path: Path) -> None:
        p = tmp_path / "fuzz.toml"
        p.write_bytes(text.encode())
        try:
            sc = load(p)
        except ScenarioError as e:
            assert str(e).startswith(str(p))
        else:
            assert isinstance(sc, Scenario)

    @_FEW
    @given(tables=_tables, tasks=_tasks)
    def test_parse_structured_scenarios(
        tables: dict[str, dict[str, Any]], tasks: list[tuple[dict[str, Any], dict[str, Any] | None]]
    ) -> None:
        """Near-miss scenarios (real keys, random values and types) parse or fail with ScenarioError only."""
        _check_parse(_toml(tables, tasks))


def test_shipped_scenarios_parse() -> None:
    for p in sorted(SCENARIOS.glob("*.toml")):
        sc = load(p)
        assert sc.name == p.stem


# -- bugs, scenarios ------------------------------------------------------------------------------------------------
def test_bugs_lists_every_variant_with_its_detector(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "bugs")
    assert code == 0 and err == ""
    assert set(EXPECTED_DETECTORS) <= set(VARIANTS)
    listed = {name: body for name, body in re.findall(r"^(\S+)\n((?:  .*\n)+)", out, flags=re.M)}
    assert set(listed) == set(VARIANTS), "`ksmstress bugs` must list the whole catalogue"
    for name, v in VARIANTS.items():
        assert f"caught by: {v.detector} ({CLASSES[v.detector]})" in listed[name]
        assert f"scenario: {Path(v.scenario).stem} (ksmstress run {Path(v.scenario).stem} --bug {name})" in listed[name]
    for name, detector in EXPECTED_DETECTORS.items():
        assert f"caught by: {detector} " in listed[name]


def test_bugs_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = cli(capsys, "bugs", "--json")
    assert code == 0
    variants = json.loads(out)
    assert isinstance(variants, list)
    detectors = {v["name"]: v["detector"] for v in variants}
    assert set(detectors) == set(VARIANTS)
    assert EXPECTED_DETECTORS.items() <= detectors.items()
    for v in variants:
        assert v["breaks"]
        assert v["detector"] in CLASSES
        assert (SCENARIOS / v["scenario"]).is_file()


def test_scenarios_lists_the_shipped_ones() -> None:
    r = run_cli("scenarios")
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines() if line and not line.startswith(" ")]
    assert names == sorted(p.stem for p in SCENARIOS.glob("*.toml"))
    assert {"mixed", "seed-fork-race", "seed-unmap-race"} <= set(names)
    assert all("(shipped: " in line for line in r.stdout.splitlines() if line and not line.startswith(" "))


def test_a_scenarios_folder_in_the_cwd_hides_nothing(tmp_path: Path) -> None:
    """Standing in a directory that holds scenarios/mine.toml changes nothing: names resolve to the shipped files;
    user directories (--scenario-dir, $KSMSTRESS_SCENARIOS) add to the list, with their origin."""
    (tmp_path / "scenarios").mkdir()
    mine = (SCENARIOS / "seed-fork-race.toml").read_text().replace('name = "seed-fork-race"', 'name = "mine"')
    (tmp_path / "scenarios" / "mine.toml").write_text(mine)
    r = run_cli("run", "seed-fork-race", "--runs", "1", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert one_json_object(r.stdout)["scenarios"][0]["scenario"] == "seed-fork-race"
    r = run_cli("scenarios", "--scenario-dir", str(tmp_path / "scenarios"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    heads = [line for line in r.stdout.splitlines() if line and not line.startswith(" ")]
    assert heads[0].startswith(f"mine  (from {tmp_path / 'scenarios'}")
    assert sum("(shipped: " in h for h in heads) == len(list(SCENARIOS.glob("*.toml")))
    r = run_cli(
        "run", "mine", "--runs", "1", "--json", cwd=tmp_path, env={"KSMSTRESS_SCENARIOS": str(tmp_path / "scenarios")}
    )
    assert r.returncode == 0, r.stderr
    assert one_json_object(r.stdout)["scenarios"][0]["scenario"] == "mine"
    r = run_cli("run", "mine", cwd=tmp_path)
    assert r.returncode == 2 and "mine: no such scenario file or name" in r.stderr


def test_bench_reports_detection_and_throughput_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    """A small bench: the variant is caught by its own detector under every strategy, and the throughput section
    carries the raw rate and both bare-scheduler measurements (figures, not asserted speeds)."""
    code, out, _err = cli(
        capsys,
        "bench",
        "--variant",
        "inverted-lock-order",
        "--runs",
        "2",
        "--seconds",
        "30",
        "--throughput-runs",
        "1",
        "--samples",
        "1",
        "--jobs",
        "1",
        "--json",
    )
    assert code == 0
    d = json.loads(out)
    rows = d["detection"]
    assert [r["strategy"] for r in rows] == [
        "random", "pct-d1", "pct-d2", "pct-d3", "bounded-c1", "bounded-c2", "coverage"]
    assert all(r["variant"] == "inverted-lock-order" and r["class_ok"] for r in rows)
    for d_, r in enumerate(rows[1:4], 1):  # PCT rows carry the paper's bound from the n and k they ran with
        assert r["n"] >= 2 and r["k"] >= 1 and r["bound"] == pytest.approx(1 / (r["n"] * r["k"] ** (d_ - 1)))
    for r in rows[4:6]:  # one exploration each: found, with its preemption count, after some schedules
        assert r["runs"] == 1 and r["schedules"] >= 1 and r["preemptions"] <= int(r["strategy"][-1])
    assert rows[6]["runs"] == 5
    assert any(r["detections"] and r["classes"] == ["lockdep"] for r in rows)
    assert d["raw_handoffs_per_second"] > 0
    for name in ("random", "alternate"):
        b = d[f"bare_scheduler_{name}"]
        assert b["handoffs_per_second"] > 0 and b["points_per_second"] >= b["handoffs_per_second"]
    assert {(r["strategy"], r["granularity"]) for r in d["throughput"]} == {
        (s, g) for s in ("random", "pct") for g in ("locks", "shared")}
    assert all(r["seconds_per_run"] > 0 and r["cpu_seconds_per_run"] > 0 for r in d["throughput"])
    assert set(d["shared_cost"]) == set(d["shared_cost_cpu"]) == {"random", "pct"}


def test_bench_only_scheduler_gives_the_raw_and_bare_rows_and_the_bar(capsys: pytest.CaptureFixture[str]) -> None:
    """`--only scheduler`: the raw ping-pong and the bare scheduler, each ratio per sample, and issue 11's bar
    stated as the CPU-time ratio of the random row (a figure and its verdict, not an asserted speed)."""
    code, out, _err = cli(capsys, "bench", "--only", "scheduler", "--samples", "2", "--json")
    assert code == 0
    d = json.loads(out)
    assert "detection" not in d and "throughput" not in d and d["samples"] == 2
    for name in ("random", "alternate"):
        b = d[f"bare_scheduler_{name}"]
        assert len(b["cpu_ratio_samples"]) == 2 and b["cpu_ratio_to_raw"] > 0 and b["handoff_ratio_to_raw"] > 0
    bar = d["bar"]
    assert bar["what"] == "bare_scheduler_random.cpu_ratio_to_raw" and bar["at_least"] == 0.75
    assert bar["value"] == d["bare_scheduler_random"]["cpu_ratio_to_raw"] and bar["met"] == (bar["value"] >= 0.75)
    code, out, _err = cli(capsys, "bench", "--only", "scheduler", "--samples", "1")
    assert code == 0 and "bar (issue 11)" in out and "hand-offs per CPU second" in out


def test_refcount_width_figures_the_readme_quotes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The README's answer to "Is a 32-bit count sufficient?" quotes these runs: 260 references at seeds 0, 1 and 2
    (at `--granularity locks`, 260 at seed 1 and 130 at seeds 0 and 2), and an 8-bit count wraps."""
    got: dict[tuple[str, str], int] = {}
    for gran in ("shared", "locks"):
        for seed in ("0", "1", "2"):
            code, out, _err = cli(capsys, "run", "refcount-width", "--seed", seed, "--granularity", gran, "--json",
                                  "--artifacts", str(tmp_path))
            assert code == 0
            got[gran, seed] = one_json_object(out)["max_ksm_refcount"]
    assert got == {("shared", "0"): 260, ("shared", "1"): 260, ("shared", "2"): 260,
                   ("locks", "0"): 130, ("locks", "1"): 260, ("locks", "2"): 130}
    code, out, _err = cli(
        capsys, "run", "refcount-width", "--bug", "narrow-refcount", "--json", "--artifacts", str(tmp_path)
    )
    assert code == 1 and one_json_object(out)["failure"]["class"] == "refcount-overflow"


def test_an_exhausted_budget_is_not_a_livelock(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A scenario that is only too big for its max_steps is bad input naming the key to raise (exit 2); programs
    that complete nothing while the points run out are a livelock, reported as `hang` (exit 1)."""
    big = write(
        tmp_path,
        "big.toml",
        'name = "big"\nmax_steps = 3000\n[[task]]\ncount = 3\nops = 2000\n[task.weights]\nwrite = 1\nread = 1\n',
    )
    code, out, err = cli(capsys, "run", str(big), "--artifacts", str(tmp_path / "a"))
    assert code == 2 and not out
    assert f"{big}: key 'max_steps': expected more than 3000 scheduling points" in err
    assert len(err.strip().splitlines()) == 1
    spin = write(
        tmp_path,
        "spin.toml",
        'name = "spin"\nmax_steps = 3000\n[[task]]\nscript = ["sleep:2999"]\nops = 0\n'
        '[[task]]\nscript = ["sleep:2999"]\nops = 0\n',
    )
    code, out, err = cli(capsys, "run", str(spin), "--artifacts", str(tmp_path / "a"))
    assert code == 1 and "FAILURE hang" in out and "(livelock)" in out


def test_verbose_logs_events_as_json_lines(tmp_path: Path) -> None:
    """-v emits structlog events on stderr, JSON lines when stderr is not a terminal (CI logs)."""
    r = run_cli("-v", "run", "seed-fork-race", "--runs", "2", "--artifacts", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names[0] == "run.start" and names[-1] == "run.end" and names.count("run.done") == 2
    assert events[0]["scenarios"] == ["seed-fork-race"]
    r = run_cli("run", "seed-fork-race", cwd=tmp_path)
    assert not [line for line in r.stderr.splitlines() if line.startswith("{")]


def test_pct_depth_out_of_range_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    """--pct-depth 100 was an IndexError traceback (the scheduler keeps at most 15 change points)."""
    assert_usage_error(*cli(capsys, "run", "--strategy", "pct", "--pct-depth", "100"), "--pct-depth")


@pytest.mark.parametrize("args", [("bugs",), ("mutate", "--list")])
def test_reader_gone_is_quiet(args: tuple[str, ...]) -> None:
    """`ksmstress mutate --list | head -1`: a reader that leaves early gets no traceback, and the writer ends as
    a SIGPIPE'd one would (141). The read end is closed before the child writes anything, so even a short,
    fully buffered output meets the broken pipe (at its final flush)."""
    import subprocess
    import sys

    p = subprocess.Popen(
        [sys.executable, "-m", "ksmstress.entry", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    p.stdout.close()
    _, err = p.communicate(timeout=180)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert p.returncode == 141
