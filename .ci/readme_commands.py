"""Run every `ksmstress ...` line of the README's fenced `sh` blocks, in order, in one empty directory, and its
`python` blocks that define tests as a user's test file under pytest.

Why: the README states only what code checks. Each command must parse and start (never exit 2, never print a
traceback); a command annotated `# exit N` must finish with that status. Long commands get a small budget: a
`--duration` becomes 5s, and a command still running after its budget gets SIGINT, which every front door answers
with exit 130 after cleaning up (that, too, is checked: 130 only when we sent it).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET = 12.0  # seconds before SIGINT, for a command without an expected exit status
BUDGET_EXPECTED = 180.0  # a command annotated `# exit N` must get there


def commands(readme: str) -> list[tuple[list[str], int | None]]:
    out = []
    for block in re.findall(r"```sh\n(.*?)```", readme, re.S):
        for line in block.splitlines():
            line = line.strip()
            if not line.startswith("ksmstress"):
                continue
            cmd, _, comment = line.partition("#")
            m = re.match(r"\s*exit (\d+)", comment)
            argv = shlex.split(cmd)
            argv = [("5s" if i and argv[i - 1] == "--duration" else a) for i, a in enumerate(argv)]
            out.append((argv, int(m.group(1)) if m else None))
    return out


def main() -> int:
    readme = Path(sys.argv[1]).read_text()
    bad = 0
    with tempfile.TemporaryDirectory(prefix="ksmstress-readme-") as d:
        for argv, expected in commands(readme):
            budget = BUDGET if expected is None else BUDGET_EXPECTED
            t0 = time.monotonic()
            p = subprocess.Popen(argv, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            interrupted = False
            try:
                out, err = p.communicate(timeout=budget)
            except subprocess.TimeoutExpired:
                interrupted = True
                os.kill(p.pid, signal.SIGINT)
                out, err = p.communicate(timeout=60)
            rc = p.returncode
            took = time.monotonic() - t0
            problems = []
            if "Traceback" in err:
                problems.append("printed a traceback")
            if interrupted and rc != 130:
                problems.append(f"SIGINT after {budget:.0f}s: expected exit 130, got {rc}")
            if not interrupted and expected is not None and rc != expected:
                problems.append(f"expected exit {expected}, got {rc}")
            if not interrupted and expected is None and rc not in (0, 1):
                problems.append(f"exit {rc}")
            if interrupted and expected is not None:
                problems.append(f"did not reach its documented exit {expected} within {budget:.0f}s")
            state = "interrupted" if interrupted else f"exit {rc}"
            print(f"{'FAIL' if problems else 'ok  '} {shlex.join(argv)}  ({state}, {took:.1f}s)")
            for pr in problems:
                print(f"     {pr}\n     stderr: {err.strip()[-600:]}")
            bad += bool(problems)
        tests = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "def test_" in b]
        if tests:  # the plugin examples, as a user's test file
            Path(d, "test_readme_examples.py").write_text("\n\n".join(tests))
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider",
                                "test_readme_examples.py"], cwd=d, capture_output=True, text=True)
            ok = r.returncode == 0
            print(f"{'ok  ' if ok else 'FAIL'} the README's pytest examples ({len(tests)} block(s))")
            if not ok:
                print(r.stdout[-2000:], r.stderr[-2000:])
            bad += not ok
    print(f"README commands: {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
