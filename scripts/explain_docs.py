#!/usr/bin/env python3
"""Regenerate docs/explain-CLASS.txt and docs/timeline-CLASS.svg from shrunk artifacts.

    python scripts/explain_docs.py SHRUNK.json [SHRUNK.json ...]

Each artifact's failure class names the pair of files (use-after-free, traversal, writable-ksm, ...). The text is
what `ksmstress replay ARTIFACT --explain` prints, headed by that command (the artifact named by its file name
only), with the few report lines longer than 120 columns folded (continuations indented); the picture is what
`--timeline` draws. scripts/shrink_table.py --keep DIR leaves shrunk artifacts of every catalogue variant in DIR.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
WIDTH = 120


def fold(line: str) -> list[str]:
    if len(line) <= WIDTH:
        return [line]
    lead = line[: len(line) - len(line.lstrip())]
    return textwrap.wrap(line.strip(), WIDTH, initial_indent=lead, subsequent_indent=lead + "    ",
                         break_on_hyphens=False)


def main() -> int:
    for arg in sys.argv[1:]:
        art = Path(arg)
        cls = json.loads(art.read_text())["failure"]["class"]
        with tempfile.TemporaryDirectory() as tmp:
            svg = Path(tmp) / "t.svg"
            p = subprocess.run([sys.executable, "-m", "ksmstress.entry", "replay", str(art), "--explain",
                                "--timeline", str(svg)], capture_output=True, text=True, check=False)
            if p.returncode != 1 or not svg.is_file():
                print(f"{art}: replay exited {p.returncode}: {p.stderr.strip()}", file=sys.stderr)
                return 2
            out = [line for line in p.stdout.splitlines() if not line.startswith("  timeline: ")]
            text = [f"$ ksmstress replay {art.name} --explain", *out]
            (DOCS / f"explain-{cls}.txt").write_text("\n".join(x for line in text for x in fold(line)) + "\n")
            (DOCS / f"timeline-{cls}.svg").write_text(svg.read_text())
        print(f"docs/explain-{cls}.txt, docs/timeline-{cls}.svg <- {art}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
