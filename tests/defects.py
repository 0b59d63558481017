"""Defects built in a test: a model function recompiled from its own source with one edit, then monkeypatched in.

The model stays untouched on disk; the edit is exact and visible in the test (the same shape `ksmstress mutate`
makes, without its scratch copy), and the edited function runs in the model module's namespace, so it calls the
other model functions as the original does.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest


def edited(monkeypatch: pytest.MonkeyPatch, fn: Callable[..., Any], old: str, new: str) -> None:
    """Replace `fn` in its module by a copy whose source has `old` (which must occur exactly once) replaced."""
    src = textwrap.dedent(inspect.getsource(fn))  # with its @kfunc line: the copy keeps its call-chain frame
    assert src.count(old) == 1, f"{fn.__name__}: {old!r} occurs {src.count(old)} times"
    ns: dict[str, Any] = {}
    exec(compile(src.replace(old, new), f"<{fn.__name__} with a defect>", "exec"), inspect.unwrap(fn).__globals__, ns)  # noqa: S102
    monkeypatch.setattr(sys.modules[fn.__module__], fn.__name__, ns[fn.__name__])
