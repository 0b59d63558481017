"""The real kernel as oracle: workload files, the model against recorded kernel figures, the model against the
running kernel (marked `kernel`: skipped with the reason where the kernel's KSM cannot be used), and the sysfs
restore after a clean run, a run that raises, Ctrl-C, SIGTERM and SIGKILL.

Kernel runs are serialised across processes by the file lock every run takes (xdist workers wait for each other);
before/after snapshots of the knobs are taken under the same lock, so a concurrent run cannot be caught mid-way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from ksmstress.catalog import shipped_dir
from ksmstress.kernel import sysfs
from ksmstress.kernel.compare import compare_recorded, render, run_against_kernel
from ksmstress.kernel.generate import generate, generate_text
from ksmstress.kernel.model import run_model
from ksmstress.kernel.proctree import ProcTree
from ksmstress.kernel.reader import load, parse, resolve
from ksmstress.kernel.real import RealSide
from ksmstress.kernel.workload import WorkloadError

from .clitools import cli

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(shipped_dir("kernel").glob("*.toml"))
REQUIRED = {"ltp-ksm01", "ksm-tests-merge", "ksm-tests-unmerge", "fork-write", "unmergeable-half"}
GOOD = """
name = "t"
[[process]]
name = "a"
regions = [4]
[[phase]]
do = ["write a 1"]
"""


def knobs() -> dict[str, str]:
    """Every writable KSM value, read while no other run can be half-way (under the run lock), after putting back
    what a killed run (another session's, on a shared machine) left: the values every next run restores first."""
    with sysfs.ksm_lock():
        sysfs.recover()
        return {n: sysfs.read(n) for n in sysfs.writable()}


def kernel_or_skip() -> None:
    reason = sysfs.availability()
    if reason:
        pytest.skip(f"the kernel's KSM cannot be used: {reason}")


def on_kernel(workloads: list[Any], **kw: Any) -> list[Any]:
    kernel_or_skip()
    try:
        reports, _s = run_against_kernel(workloads, **kw)
    except sysfs.Unavailable as e:
        pytest.skip(f"the kernel's KSM cannot be used: {e}")
    return reports


def no_children_left() -> None:
    deadline = time.monotonic() + 5
    while (kids := psutil.Process().children(recursive=True)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not kids, f"processes left behind: {kids}"


# -- workload files ----------------------------------------------------------------------------------------
def test_shipped_workloads_cover_the_issue_and_record_every_phase() -> None:
    names = {p.stem for p in SHIPPED}
    assert REQUIRED <= names
    for p in SHIPPED:
        w = load(p)
        assert all(ph.expect is not None for ph in w.phases), f"{p.name}: a phase without recorded figures"
    assert [str(p) for p in resolve([])] == [str(p) for p in SHIPPED]


BAD = [
    ("name = ", "not valid TOML"),
    ("colour = 1\n" + GOOD, "key 'colour': unknown key"),
    (GOOD + "colour = 1\n", "key 'phase[0].colour': unknown key"),
    ('[[phase]]\ndo = ["run 1"]\n', "key 'process': expected one or more [[process]] tables"),
    (GOOD.replace("regions = [4]", "regions = [0]"), "key 'process[0].regions': expected a non-empty list"),
    (GOOD.replace("regions = [4]", 'regions = "4"'), "key 'process[0].regions': expected list"),
    (GOOD.replace('name = "a"', 'name = "1a"'), "key 'process[0].name': expected a name"),
    (GOOD.replace('"write a 1"', '"scribble a 1"'), "key 'phase[0].do[0]': expected an action"),
    (GOOD.replace('"write a 1"', '"write b 1"'), "key 'phase[0].do[0]': expected a live process, got unknown 'b'"),
    (GOOD.replace('"write a 1"', '"write a.1 1"'), "key 'phase[0].do[0]': expected a region of a in [0, 0]"),
    (GOOD.replace('"write a 1"', '"write a.0[3:9] 1"'), "expected pages [A:B] with 0 <= A < B <= 4"),
    (GOOD.replace('"write a 1"', '"write a 1x"'), "key 'phase[0].do[0]': expected patterns"),
    (GOOD.replace('"write a 1"', '"write a 99999"'), "expected patterns"),
    (GOOD.replace('"write a 1"', '"munmap a.0[0:2]", "write a.0[1:3] 1"'), "expected mapped pages, got page 1"),
    (GOOD.replace('"write a 1"', '"exit a", "write a 1"'), "expected a live process, got exited 'a'"),
    (GOOD.replace('"write a 1"', '"fork a a"'), "expected a new process name for the child"),
    (GOOD.replace('"write a 1"', '"fork a abcdefghijklmnopq"'), "(at most 16 characters"),
    (GOOD.replace('name = "a"', 'name = "abcdefghijklmnopq"'), "(at most 16 characters"),
    (GOOD.replace('"write a 1"', '"write a.' + "9" * 5000 + ' 1"'), "expected a target PROC"),
    (GOOD.replace('"write a 1"', '"write a ' + "9" * 5000 + '"'), "expected patterns"),
    ("a = " + "[" * 1200 + "]" * 1200, "nested less deeply"),
    ("a = " + "1" * 5000, "at most 4300 digits"),
    (GOOD.replace('"write a 1"', '"run 3"'), "expected run 0, 1 or 2"),
    (GOOD.replace('"write a 1"', '"dontneed a 1"'), "key 'phase[0].do[0]': expected an action"),
    (GOOD.replace('"write a 1"', '"thread a a"'), "expected a new name for the thread, got the existing 'a'"),
    (GOOD.replace('"write a 1"', '"thread a t", "fork t c"'), "expected a process, got the thread 't'"),
    (GOOD.replace('"write a 1"', '"thread a t", "exit t", "write t 1"'), "expected a live process, got exited 't'"),
    (GOOD.replace('"write a 1"', '"thread a t", "exit a", "write t 1"'), "expected a live process, got exited 't'"),
    (GOOD.replace('"write a 1"', '"thread a t"') + "expect = { merging = { t = 0 } }\n",
     "key 'phase[0].expect.merging.t': expected a process alive"),
    (GOOD.replace('"write a 1"', ", ".join(f'"thread a t{i}"' for i in range(17))), "expected at most 16 threads"),
    (GOOD.replace('"write a 1"', '"dontneed a.0[2:2]"'), "expected pages [A:B] with 0 <= A < B <= 4"),
    (GOOD.replace('do = ["write a 1"]', "do = []"), "key 'phase[0].do': expected a non-empty list of actions"),
    (GOOD + "expect = { shared = -1 }\n", "key 'phase[0].expect.shared': expected an integer in"),
    (GOOD + "expect = { merging = { b = 1 } }\n", "key 'phase[0].expect.merging.b': expected a process alive"),
    (GOOD + "expect = { sharred = 1 }\n", "key 'phase[0].expect.sharred': unknown key"),
]


@pytest.mark.parametrize(("text", "want"), BAD, ids=[w for _t, w in BAD])
def test_bad_workloads_are_one_line_errors_naming_file_and_key(text: str, want: str) -> None:
    with pytest.raises(WorkloadError) as e:
        parse(text, "w.toml")
    msg = str(e.value)
    assert msg.startswith("w.toml: ") and "\n" not in msg and want in msg, msg


def test_a_write_of_too_many_patterns_quotes_a_short_line() -> None:
    """4,097 patterns: the error says so in one short line, without repeating 20 KB of action text."""
    many = ",".join(["1"] * 4097)
    text = GOOD.replace("regions = [4]", "regions = [8192]").replace('"write a 1"', f'"write a {many}"')
    with pytest.raises(WorkloadError) as e:
        parse(text, "w.toml")
    msg = str(e.value)
    assert "at most 4096" in msg and len(msg) < 400, msg


HOLE = """
name = "hole"
[[process]]
name = "a"
regions = [32]
[[process]]
name = "b"
regions = [32]
[[phase]]
do = ["write a 1", "write b 1", "munmap a.0[8:16]"]
expect = { shared = 1, sharing = 55, unshared = 0, merging = { a = 24, b = 32 } }
[[phase]]
do = ["unmergeable a.0[0:32]"]
expect = { shared = 1, sharing = 31, unshared = 0, merging = { a = 0, b = 32 } }
"""


def test_madvise_over_a_hole_advises_the_mapped_parts_and_returns_enomem() -> None:
    """As the kernel: `unmergeable` over a range with an unmapped hole is no error in the workload; the mapped
    parts are unmerged (figures recorded from Linux 6.18) and madvise returns -ENOMEM, on the model as predicted."""
    w = parse(HOLE, "hole.toml")
    (act,) = w.phases[1].actions
    assert act.returns == (-12,)
    rep = compare_recorded(w)
    assert rep.verdict == "agree", render(rep)
    assert rep.rows[1].returns == (-12,) and rep.rows[0].returns == ()
    # a side that returned something else is a mismatch, named as such
    wrong = dataclasses.replace(act, returns=(0,))
    w2 = dataclasses.replace(w, phases=(w.phases[0], dataclasses.replace(w.phases[1], actions=(wrong,))))
    rep = compare_recorded(w2)
    assert rep.verdict == "mismatch" and "madvise returned [-12] on the model, expected [0]" in render(rep)


@pytest.mark.kernel
def test_madvise_over_a_hole_on_the_kernel() -> None:
    """The running kernel does the same: the mapped parts unmerged, madvise -ENOMEM, recorded and compared."""
    (rep,) = on_kernel([parse(HOLE, "hole.toml")])
    assert rep.verdict == "agree", render(rep)


def test_madvise_without_a_hole_returns_0() -> None:
    w = parse(HOLE.replace("unmergeable a.0[0:32]", "unmergeable a.0[0:8]").replace("a = 0, b", "a = 16, b")
              .replace("sharing = 31", "sharing = 47"), "nohole.toml")
    assert w.phases[1].actions[0].returns == (0,)
    rep = compare_recorded(w)
    assert rep.verdict == "agree", render(rep)
    assert rep.rows[1].returns == (0,)


DONTNEED = """
name = "dontneed-returns"
[[process]]
name = "a"
regions = [16]
[[process]]
name = "b"
regions = [16]
[[phase]]
do = ["write a 1", "write b 1"]
expect = { shared = 1, sharing = 31, unshared = 0, merging = { a = 16, b = 16 } }
[[phase]]
do = ["munmap a.0[2:4]", "dontneed a.0[0:8]", "mlock b.0[8:12]", "dontneed b.0[4:16]", "fork b c",
      "dontneed c.0[8:12]"]
expect = { shared = 1, sharing = 27, unshared = 0, merging = { a = 8, b = 12, c = 8 } }
[[phase]]
do = ["munlock b.0[8:10]", "dontneed b.0[8:10]", "dontneed a.0[8:16]"]
expect = { shared = 1, sharing = 17, unshared = 0, merging = { a = 0, b = 10, c = 8 } }
"""


def test_dontneed_returns_enomem_over_a_hole_and_einval_over_mlocked_pages() -> None:
    """madvise(MADV_DONTNEED) as predicted from the structure and done by the model: -ENOMEM over a hole (the
    mapped parts zapped), -EINVAL where a page is mlocked (the vma before the locked one zapped, the rest kept: b
    keeps 12 of 16), 0 in a forked child (dup_mmap clears VM_LOCKED) and after munlock. Figures from 6.18."""
    w = parse(DONTNEED, "dontneed.toml")
    assert [a.returns for a in w.phases[1].actions if a.kind == "dontneed"] == [(-12,), (-22,), (0,)]
    assert [a.returns for a in w.phases[2].actions if a.kind == "dontneed"] == [(0,), (0,)]
    rep = compare_recorded(w)
    assert rep.verdict == "agree", render(rep)
    assert rep.rows[1].returns == (-12, -22, 0) and rep.rows[2].returns == (0, 0)


@pytest.mark.kernel
def test_dontneed_returns_on_the_kernel() -> None:
    """The running kernel returns the same values and shows the same figures."""
    w = parse(DONTNEED, "dontneed.toml")
    (rep,) = on_kernel([w])
    assert rep.verdict == "agree", render(rep)
    for ph, row in zip(w.phases, rep.rows, strict=True):
        assert ph.expect is not None and not ph.expect.mismatches(row.other), (ph.name, row.other)


def test_a_workload_thread_is_a_task_of_its_process_doing_the_memory_commands() -> None:
    """`thread a t1` starts a real thread in workload process a: a task of its own under /proc/PID/task; the
    commands handed to it run there (a store it makes is in the process's memory: the same mm), and `endthread`
    ends it. Regions not mergeable: this needs no KSM."""
    w = parse('[[process]]\nname = "a"\nregions = [4]\nmergeable = false\n[[phase]]\ndo = ["thread a t1"]\n',
              "t.toml")
    with ProcTree(w) as tree:
        pid = tree.pids()["a"]
        tid = tree.call("a", "thread", "t1")
        assert tid != pid and os.path.isdir(f"/proc/{pid}/task/{tid}")
        assert tree.call("a", "write", [[0, 0, 4]], [7], thread="t1") is None
        assert tree.call("a", "madvise", [[0, 1, 3]], 4, thread="t1") == [0]  # MADV_DONTNEED
        tree.call("a", "endthread", "t1")
        deadline = time.monotonic() + 30
        while os.path.isdir(f"/proc/{pid}/task/{tid}") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not os.path.isdir(f"/proc/{pid}/task/{tid}")
        assert sorted(os.listdir(f"/proc/{pid}/task")) == [str(pid)]
    no_children_left()


def test_a_hole_stays_a_hole_when_the_workload_process_maps_for_itself() -> None:
    """A thread started after a munmap maps memory of its own (its stack, its malloc arena, ...): none of it may
    land in the workload's hole, or madvise over the hole would return 0 instead of -ENOMEM (generated seeds 132
    and 224 did that when regions came from mmap(NULL): here each thread adds 4-page mappings, which then filled
    five of these eight 4-page holes)."""
    w = parse('[[process]]\nname = "a"\nregions = [64]\nmergeable = false\n[[phase]]\ndo = ["thread a t1"]\n',
              "t.toml")
    with ProcTree(w) as tree:
        tree.call("a", "write", [[0, 0, 64]], [1])
        holes = [(a, a + 4) for a in range(0, 64, 8)]
        tree.call("a", "munmap", [[0, a, b] for a, b in holes])
        for i in range(8):
            tree.call("a", "thread", f"t{i}")
        assert tree.call("a", "madvise", [[0, a, b] for a, b in holes], 4) == [-12] * len(holes)
        assert tree.call("a", "madvise", [[0, 4, 8]], 4, thread="t0") == [0]
    no_children_left()


def test_threads_act_on_their_process_mm_in_the_model() -> None:
    """On the model a thread is the same mm (one more mm_users): its writes and MADV_DONTNEED change its
    process's figures, its exit none, and the process's exit ends both (figures of the shipped workload)."""
    w = load(shipped_dir("kernel") / "threads.toml")
    assert {a.thread for ph in w.phases for a in ph.actions if a.thread} == {"t1", "u1"}
    rep = compare_recorded(w)
    assert rep.verdict == "agree", render(rep)


def test_pageout_and_read_validate_and_return_as_madvise() -> None:
    text = GOOD.replace('"write a 1"', '"write a 1", "mlock a.0[2:3]", "munmap a.0[3:4]", "pageout a.0[0:2]", '
                        '"pageout a.0[0:3]", "pageout a", "read a.0[0:3]"')
    w = parse(text, "t.toml")
    assert [a.returns for a in w.phases[0].actions if a.kind == "pageout"] == [(0,), (-22,), (-22,)]
    out, _ = run_model(w)
    assert out[0].returns == (0, -22, -22)
    with pytest.raises(WorkloadError, match="expected mapped pages"):
        parse(GOOD.replace('"write a 1"', '"munmap a.0[0:1]", "read a"'), "t.toml")


@pytest.mark.kernel
def test_the_swap_file_is_gone_after_a_run_and_after_one_that_raises() -> None:
    from ksmstress.kernel import swapspace

    kernel_or_skip()
    with sysfs.ksm_lock():
        with pytest.raises(RuntimeError), swapspace.swap_area(16) as why:
            if why:
                pytest.skip(why)
            assert str(swapspace.path()) in Path("/proc/swaps").read_text()
            raise RuntimeError("mid-run")
        assert not swapspace.path().exists() and str(swapspace.path()) not in Path("/proc/swaps").read_text()
        swapspace.path().write_bytes(b"left by a killed run")
        assert swapspace.recover() and not swapspace.path().exists()


def test_bad_workload_through_the_cli_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('"write a 1"', '"write a.0[0:5] 1"'))
    code, out, err = cli(capsys, "kernel", str(bad))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and str(bad) in err and "phase[0].do[0]" in err and "Traceback" not in err
    for args in (["kernel", "no-such-workload"], ["kernel", "--min-scans", "1"], ["kernel", "--generate", "2",
                                                                                    "--recorded"]):
        code, out, err = cli(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    code, out, err = cli(capsys, "kernel", str(binary), "--recorded")
    assert code == 2 and err.count("\n") == 1 and str(binary) in err and "UTF-8" in err


def test_generated_workloads_are_valid_and_reproducible() -> None:
    for seed in range(300):
        assert generate_text(seed) == generate_text(seed)
        w = generate(seed)
        assert w.phases and w.phases[0].name == "fill"
    kinds = {a.kind for s in range(300) for ph in generate(s).phases for a in ph.actions}
    assert kinds == {"write", "fork", "unmergeable", "mergeable", "munmap", "exit", "run", "mlock", "munlock",
                     "dontneed", "thread", "mremap", "pageout", "read"}
    by_thread = {a.kind for s in range(300) for ph in generate(s).phases for a in ph.actions if a.thread}
    assert by_thread == {"write", "dontneed", "exit"}


# -- the model against recorded kernel figures ------------------------------------------------------------------
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_model_matches_the_recorded_kernel_figures(path: Path) -> None:
    rep = compare_recorded(load(path))
    assert rep.verdict == "agree", render(rep)


def test_a_wrong_recorded_figure_is_a_mismatch_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (shipped_dir("kernel") / "ksm-tests-merge.toml").read_text().replace("sharing = 63", "sharing = 62")
    p = tmp_path / "wrong.toml"
    p.write_text(text)
    code, out, _err = cli(capsys, "kernel", "--recorded", str(p))
    assert code == 1
    assert "63 ! 62" in out and "<- sharing 63 != 62" in out and "verdict: mismatch" in out
    code, out, _err = cli(capsys, "kernel", "--recorded", "--json", str(p))
    d = json.loads(out)
    assert code == 1 and d["verdict"] == "mismatch" and d["workloads"][0]["phases"][0]["recorded"]["sharing"] == 62


def test_recorded_comparison_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = cli(capsys, "kernel", "--recorded")
    assert code == 0 and out.count(": agree (model") == len(SHIPPED)


def test_model_side_is_deterministic() -> None:
    w = generate(7)
    a, _ = run_model(w)
    b, _ = run_model(w)
    assert [r.figures for r in a] == [r.figures for r in b]


# -- where the kernel cannot be used ------------------------------------------------------------------------------
def test_not_root_is_skipped_with_the_reason_exit_0() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody")
    code = textwrap.dedent("""
        import os, sys
        from ksmstress.cli import main
        os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
        sys.exit(main(["kernel", "--json"]))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    d = json.loads(r.stdout)
    assert r.returncode == 0 and d["verdict"] == "skipped" and "not root" in d["reason"]


@pytest.mark.kernel
def test_a_held_lock_means_busy_not_a_silent_pass() -> None:
    kernel_or_skip()
    w = load(SHIPPED[0])
    with sysfs.ksm_lock():
        with pytest.raises(sysfs.Unavailable, match="KSM busy: another ksmstress kernel run"):
            run_against_kernel([w], lock_timeout=0.3)


# -- the model against the running kernel ---------------------------------------------------------------------
@pytest.mark.kernel
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_model_agrees_with_the_running_kernel(path: Path) -> None:
    w = load(path)
    (rep,) = on_kernel([w])
    assert rep.verdict == "agree", render(rep)
    # and the kernel still shows the figures recorded in the file
    for ph, row in zip(w.phases, rep.rows, strict=True):
        assert ph.expect is not None and not ph.expect.mismatches(row.other), (ph.name, row.other)
    no_children_left()


@pytest.mark.kernel
def test_generated_workloads_agree_with_the_running_kernel() -> None:
    reps = on_kernel([generate(s) for s in range(1000, 1012)])
    bad = [render(r) for r in reps if r.verdict != "agree"]
    assert not bad, "\n\n".join(bad)
    no_children_left()


# -- every sysfs value back ---------------------------------------------------------------------------------------
@pytest.mark.kernel
def test_sysfs_restored_after_a_run_and_after_a_run_that_raises() -> None:
    kernel_or_skip()
    before = knobs()
    on_kernel([load(SHIPPED[0])])
    assert knobs() == before
    w = load(shipped_dir("kernel") / "ltp-ksm01.toml")
    try:
        with pytest.raises(RuntimeError, match="mid-run"):
            with sysfs.ksm_session() as s:
                assert not sysfs.present("smart_scan") or sysfs.read("smart_scan") == "0"
                with RealSide(w, s) as side:
                    for a in w.phases[0].actions:
                        side.apply(a)
                    assert side.settle().figures.shared == 2
                    raise RuntimeError("mid-run")
    except sysfs.Unavailable as e:
        pytest.skip(str(e))
    assert knobs() == before
    with sysfs.ksm_lock():
        assert sysfs.counters()["pages_sharing"] == 0
    no_children_left()


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _interrupted_run(sig: int) -> subprocess.CompletedProcess[str]:
    """`ksmstress kernel` slowed down (ksmd sleeping 50 ms, 40 scans a phase), hit by `sig` once it runs."""
    p = subprocess.Popen(
        [sys.executable, "-m", "ksmstress.cli", "kernel", "ltp-ksm01", "--sleep-millisecs", "50", "--min-scans", "40"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120  # may wait for another run's lock
        while time.monotonic() < deadline and p.poll() is None:
            if sysfs.read("sleep_millisecs") == "50" and psutil.Process(p.pid).children():
                break
            time.sleep(0.02)
        time.sleep(0.5)  # in the middle of a settle
        kids = [c.pid for c in psutil.Process(p.pid).children(recursive=True)] if p.poll() is None else []
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    deadline = time.monotonic() + 10  # after SIGKILL the workload processes die on their own (PDEATHSIG, EOF)
    for pid in kids:
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _running(pid), f"workload process {pid} outlived the run"
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


@pytest.mark.kernel
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_sysfs_restored_after_a_signal_mid_run(sig: int) -> None:
    kernel_or_skip()
    before = knobs()
    r = _interrupted_run(sig)
    if "skipped" in r.stdout:
        pytest.skip(r.stdout)
    assert r.returncode == 130 and "interrupted" in r.stderr, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert knobs() == before


@pytest.mark.kernel
def test_values_a_killed_run_left_are_restored_by_the_next() -> None:
    kernel_or_skip()
    before = knobs()
    r = _interrupted_run(signal.SIGKILL)
    if "skipped" in r.stdout:
        pytest.skip(r.stdout)
    assert r.returncode == -signal.SIGKILL  # nothing could restore: the originals wait beside the lock
    on_kernel([load(shipped_dir("kernel") / "ksm-tests-unmerge.toml")])
    assert knobs() == before and not sysfs.saved_path().exists()
