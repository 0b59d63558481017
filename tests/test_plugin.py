"""The pytest plugin: the seed in the header, per-test seeds stable across workers and reruns, the fixture's
verdicts and failure messages, the execnet gateway path, and a timed-out test leaving nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ksmstress.catalog import shipped_dir

from .procwatch import collect_descendants, wait_all_gone

pytest_plugins = ["pytester"]
SCEN = shipped_dir()

TESTS = f'''
import pytest

@pytest.mark.parametrize("i", range(4))
def test_seeds(ksm_seed, i):
    print(f"SEEDOF {{i}} {{ksm_seed}}")

def test_clean(ksm_run):
    ksm_run("{SCEN / "seed-unmap-race.toml"}").assert_clean()

@pytest.mark.stress
def test_caught(ksm_run):
    ksm_run("{SCEN / "seed-fork-race.toml"}", bugs=["single-pass-walk"], runs=20).assert_clean()
'''


def _seeds(out: str) -> dict[str, str]:
    return dict(re.findall(r"SEEDOF (\d+) (\d+)", out))


def test_header_shows_the_seed_and_seeds_are_stable(pytester: pytest.Pytester):
    pytester.makepyfile(test_it=TESTS)
    a = pytester.runpytest_subprocess("--ksm-seed=7", "-s", "-k", "seeds")
    a.stdout.fnmatch_lines(["*ksmstress: --ksm-seed=7*"])
    b = pytester.runpytest_subprocess("--ksm-seed=7", "-s", "-k", "seeds")
    c = pytester.runpytest_subprocess("--ksm-seed=8", "-s", "-k", "seeds")
    sa, sb, sc = (_seeds(str(r.stdout)) for r in (a, b, c))
    assert len(sa) == 4 and sa == sb and sa != sc and len(set(sa.values())) == 4


def test_seeds_do_not_depend_on_the_worker(pytester: pytest.Pytester):
    pytester.makepyfile(test_it=TESTS)
    one = pytester.runpytest_subprocess("--ksm-seed=7", "-s", "-k", "seeds")
    two = pytester.runpytest_subprocess("--ksm-seed=7", "-k", "seeds", "-n", "2", "-rA")
    two_out = str(two.stdout)
    for i, seed in _seeds(str(one.stdout)).items():
        assert f"SEEDOF {i} {seed}" in two_out


def test_fixture_failure_names_class_and_replay(pytester: pytest.Pytester):
    pytester.makepyfile(test_it=TESTS)
    r = pytester.runpytest_subprocess("--ksm-seed=3", "-k", "caught or clean", "-m", "stress or not stress")
    r.assert_outcomes(passed=1, failed=1)
    r.stdout.fnmatch_lines(["*traversal*", "*ksmstress replay *.json*"])


def test_a_test_may_choose_its_mode(pytester: pytest.Pytester):
    """ksm_run(mode=...) overrides --ksm-mode for a test about one mode; an unknown mode is refused."""
    pytester.makepyfile(
        test_it=f'''
import pytest

def test_free(ksm_run):
    v = ksm_run("{SCEN / "scan-exit-race.toml"}", runs=2, mode="free")
    v.assert_clean()
    assert v.result.mode == "free" and "--mode free" in v.replay

def test_bad_mode(ksm_run):
    with pytest.raises(ValueError, match="mode"):
        ksm_run("{SCEN / "scan-exit-race.toml"}", mode="fast")
'''
    )
    pytester.runpytest_subprocess("--ksm-seed=5").assert_outcomes(passed=2)


def test_gateway_path_runs_stress_tests(pytester: pytest.Pytester):
    """The multi-host path (--tx ssh=HOST//python=...) is execnet's; here two local popen gateways run it."""
    pytester.makepyfile(
        test_it=TESTS.replace('bugs=["single-pass-walk"], runs=20', "runs=2").replace(
            "seed-fork-race", "seed-unmap-race"
        )
    )
    r = pytester.runpytest_subprocess("--ksm-seed=11", "--tx", "2*popen", "--dist", "load", "-m", "stress")
    r.assert_outcomes(passed=1)


def test_timed_out_test_leaves_no_process(tmp_path: Path):
    (tmp_path / "test_slow.py").write_text(
        f'def test_slow(ksm_run):\n    ksm_run("{SCEN / "refcount-width.toml"}", runs=50)\n'
    )
    before = set(os.listdir("/dev/shm"))
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "test_slow.py"),
            "--timeout=3",
            "--timeout-method=thread",
            "-s",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: dict[int, psutil.Process] = {}
    while p.poll() is None:
        collect_descendants(p.pid, seen)
        time.sleep(0.05)
    out = p.communicate(timeout=30)[0]
    assert "Timeout" in out and "refcount-width" in out and "seed=" in out
    assert seen
    left = wait_all_gone(seen.values(), 10)
    assert not left, f"left behind: {[c.pid for c in left]}"
    assert set(os.listdir("/dev/shm")) <= before
