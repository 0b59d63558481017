"""A scratch copy of the package with one mutant in it, and the process that soaks it.

Why a copy and a subprocess: the checkout (or installed package) must never change, even for a moment (other
runs, editors and tests read it), and a mutant must not leak into this process's own imports. So each mutant gets
its own temporary directory holding a copy of the package with the one mutated file, and a fresh Python whose
PYTHONPATH puts that copy first; the probe there checks that it really imported the copy.

Hygiene: the probe runs in a session of its own (its own process group), with TMPDIR inside the scratch
directory, so ending a mutant is one `killpg` by the group id this process created, and removing the directory
removes every file the probe or its runs made. Nothing is looked up or killed by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .generate import Mutant

PREFIX = "ksmstress-mutant-"


def package_dir() -> Path:
    """The directory of the running ksmstress package (the checkout in an editable install)."""
    return Path(__file__).resolve().parent.parent


class Scratch:
    """A temporary directory: pkg/ksmstress (the copy, one file mutated), tmp/ (TMPDIR), and the probe's files."""

    def __init__(self, mutant: Mutant, source_pkg: Path | None = None) -> None:
        self.mutant = mutant
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX))
        try:
            self.pkg = self.root / "pkg" / "ksmstress"
            shutil.copytree(source_pkg or package_dir(), self.pkg, ignore=shutil.ignore_patterns("__pycache__"))
            self.target = self.pkg / mutant.file
            self.target.write_text(mutant.source)
            (self.root / "tmp").mkdir()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.config = self.root / "config.json"
        self.results = self.root / "results.jsonl"
        self.stdout = self.root / "probe.out"
        self.stderr = self.root / "probe.err"

    def env(self, cpu: int | None) -> dict[str, str]:
        env = dict(os.environ)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(self.root / "pkg") + (os.pathsep + old if old else "")  # the copy first
        env["TMPDIR"] = str(self.root / "tmp")
        env.pop("PYTHONSTARTUP", None)
        if cpu is not None:
            env["KSMSTRESS_CPU"] = str(cpu)
        return env

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class Probe:
    """The subprocess soaking one mutant (ksmstress.mutate.probe, imported from the scratch copy)."""

    def __init__(self, scratch: Scratch, config: dict[str, Any], cpu: int | None) -> None:
        self.scratch = scratch
        self.cpu = cpu
        scratch.config.write_text(json.dumps({**config, "root": str(scratch.root), "results": str(scratch.results)}))
        self.started = time.monotonic()
        with open(scratch.stdout, "wb") as out, open(scratch.stderr, "wb") as err:
            # the group id is the pid: a new session makes the probe the leader of its own process group
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ksmstress.mutate.probe", str(scratch.config)],
                cwd=scratch.root,
                env=scratch.env(cpu),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.pgid = self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stop(self, grace: float = 2.0) -> None:
        """End the probe and every process of its group: SIGTERM (its runs unwind and kill their tasks), then
        SIGKILL; then wait until the group is empty (the run's tasks also die by PR_SET_PDEATHSIG)."""
        if self.proc.poll() is None:
            _killpg(self.pgid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        _killpg(self.pgid, signal.SIGKILL)
        self.proc.wait()
        self.reap_group()

    def reap_group(self, limit: float = 10.0) -> None:
        """Wait (bounded) until no process of the probe's group is left: they are the probe's children, not ours,
        so they are watched through the group, which exists as long as one of them does."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not _killpg(self.pgid, signal.SIGKILL):
                return
            time.sleep(0.02)

    def rows(self) -> list[dict[str, Any]]:
        """The JSON lines the probe wrote (a line cut by a kill is dropped)."""
        out = []
        try:
            text = self.scratch.results.read_text()
        except OSError:
            return out
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stderr_tail(self, lines: int = 8) -> str:
        try:
            text = self.scratch.stderr.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def _killpg(pgid: int, sig: int) -> bool:
    """Signal a process group we created; False once it is empty."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a zombie leader with no other member on some kernels: nothing left to signal
        return False
