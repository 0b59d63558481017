"""`run --shrink` and `soak --shrink`: after a failure its artifact is shrunk within a per-failure budget, written
next to the artifact, and its replay command printed. Small budgets; the assertions are on outcomes (the shrunk
artifact replays the same failure and is no larger), never on time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ksmstress import cpus
from ksmstress.catalog import shipped_dir
from ksmstress.explain.portfolio import shrink_portfolio
from ksmstress.explain.shrink import PREEMPTION_BOUND, failure_key
from ksmstress.report import read_artifact
from tests.clitools import cli, run_cli

KEYS = ("steps", "preemptions", "tasks", "ops")


def _no_larger(shrunk: dict[str, dict[str, int]]) -> bool:
    b, a = shrunk["before"], shrunk["after"]
    return (a["preemptions"], a["steps"]) <= (b["preemptions"], b["steps"])


def _replays(capsys: pytest.CaptureFixture[str], artifact: str) -> bool:
    code, out, _ = cli(capsys, "replay", artifact, "--json")
    return code == 1 and bool(json.loads(out)["reproduced"])


def test_run_shrink_writes_the_shrunk_artifact_next_to_the_failure_and_prints_its_replay(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ("run", "seed-unmap-race", "--bug", "no-anon-vma-ref", "--runs", "50", "--artifacts", str(tmp_path),
            "--shrink", "--shrink-seconds", "4")
    code, out, err = cli(capsys, *args, "--json")
    assert code == 1, err
    f = json.loads(out)["failure"]
    sh = f["shrunk"]
    assert sh["reproduced"] and sh["class"] == "use-after-free" and _no_larger(sh)
    assert Path(sh["artifact"]).parent == Path(f["artifact"]).parent and sh["artifact"].endswith("-shrunk.json")
    assert sh["replay"] == f"ksmstress replay {sh['artifact']} --explain"
    assert _replays(capsys, sh["artifact"])
    code, out, err = cli(capsys, *args)
    shrunk_lines = [line for line in out.splitlines() if line.startswith("  shrunk:   ")]
    assert code == 1 and len(shrunk_lines) == 1, out + err
    assert shrunk_lines[0].endswith(f"ksmstress replay {sh['artifact']} --explain")


def test_soak_shrink_shrinks_each_class_once_and_prints_the_command(tmp_path: Path) -> None:
    r = run_cli("soak", str(shipped_dir() / "seed-unmap-race.toml"), "--bug", "free-on-empty-list", "--runs", "2",
                "--jobs", "1", "--artifacts", str(tmp_path / "art"), "--shrink", "--shrink-seconds", "4", "--json",
                cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    d = json.loads(r.stdout)
    sh = d["classes"]["use-after-free"]["shrunk"]
    assert sh["reproduced"] and _no_larger(sh) and Path(sh["artifact"]).is_file()
    assert Path(sh["artifact"]).parent == tmp_path / "art"
    rep = run_cli("replay", sh["artifact"], "--json", cwd=tmp_path)
    assert rep.returncode == 1 and json.loads(rep.stdout)["reproduced"]
    r = run_cli("soak", str(shipped_dir() / "seed-unmap-race.toml"), "--bug", "free-on-empty-list", "--runs", "1",
                "--jobs", "1", "--artifacts", str(tmp_path / "art2"), "--shrink", "--shrink-seconds", "2",
                cwd=tmp_path)
    line = next(x for x in r.stdout.splitlines() if x.startswith("  shrunk use-after-free: "))
    assert r.returncode == 1 and line.endswith("-shrunk.json --explain") and "steps " in line


@pytest.mark.parametrize("command", ["run", "soak"])
def test_shrink_refuses_free_mode_in_one_line(command: str, capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    code, out, err = cli(capsys, command, "seed-unmap-race", "--mode", "free", "--shrink", "--artifacts",
                         str(tmp_path))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--shrink" in err


def test_a_shrink_on_two_cpus_keeps_the_smaller_of_two_members(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With two CPUs and none chosen for it, a shrink runs a second shrinker (another variant) on the other CPU in a
    forked child and keeps the smaller result: the child's best comes back, fails the same way, and the kept one is
    never the larger."""
    if len(cpus.allowed()) < 2:
        pytest.skip("one CPU: a shrink runs alone")
    monkeypatch.delenv(cpus.ENV, raising=False)
    code, _out, err = cli(capsys, "run", "seed-unmap-race", "--bug", "no-anon-vma-ref", "--runs", "50",
                          "--artifacts", str(tmp_path))
    assert code == 1, err
    art = sorted(tmp_path.glob("*.json"))[0]
    lines: list[str] = []
    first, best, runs = shrink_portfolio(read_artifact(art), art, 4.0, 60.0, lines.append)
    second = [line for line in lines if line.startswith("the second member: ")]
    assert len(second) == 1, lines
    p, steps = (int(w) for w in second[0].split()[3:6:2])  # "the second member: P preemptions, S steps (...)"
    if second[0].endswith("(kept)"):
        assert (best.preemptions, best.res.steps) == (p, steps)
    else:
        assert best.key()[:2] <= (max(0, p - PREEMPTION_BOUND), steps)
    assert failure_key(best.res.failure) == failure_key(first.res.failure)
    assert runs > 0
