"""The instrumented sites of the model, read from its source: which accesses coverage could ever record.

Why: "never paired" lists sites that ran but met no other task; a site that never ran at all does not show up in
any run's log. Reading the model's source for the recording calls whose site is a string literal names those too
(a site passed down by the caller, e.g. pte_stored's, is known only when it runs, and is left out).
"""

from __future__ import annotations

import ast
from pathlib import Path

# the recording calls (checks.accesslog) and the position of their site argument
SITE_ARG = {"lock_rule": 5, "shared_access": 4, "spoint_unless": 1, "atomic_add": 3}
MODEL_DIR = Path(__file__).resolve().parent.parent / "mm"


def instrumented_sites(model_dir: Path = MODEL_DIR) -> set[str]:
    """Every literal site of a recording call in the model's source files."""
    out: set[str] = set()
    for path in sorted(model_dir.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            pos = SITE_ARG.get(node.func.attr)
            if pos is None:
                continue
            arg: ast.expr | None = node.args[pos] if len(node.args) > pos else None
            for kw in node.keywords:
                if kw.arg == "site":
                    arg = kw.value
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.add(arg.value)
    return out
