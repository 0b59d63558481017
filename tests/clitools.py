"""Calling the `ksmstress` front door from tests: in-process (exit status and captured output) or in a fresh
interpreter (for what only a real process shows: signals, exit codes, stray output)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ksmstress.cli import main

ROOT = Path(__file__).resolve().parents[1]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`ksmstress ARGS` in-process: (exit status, stdout, stderr). Any exception other than SystemExit escapes."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(
    *args: str, cwd: Path = ROOT, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m ksmstress.cli ARGS` in a fresh interpreter (`env`: variables added to this process's)."""
    return subprocess.run(
        [sys.executable, "-m", "ksmstress.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
    )
