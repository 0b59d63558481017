"""Typed, one-line-error access to a TOML table, shared by the scenario reader and the kernel workload reader.

Every bad value becomes one line naming the file, the dotted key and what was expected (the front doors turn it
into exit status 2); keys nobody read are refused, so a typo never silently means "the default".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TableReader:
    """One table of one file; `error` is the ValueError subclass its front door catches."""

    def __init__(self, path: str, where: str, data: Any, error: type[ValueError] = ValueError) -> None:
        self.path, self.where, self.error = path, where, error
        if not isinstance(data, dict):
            raise error(f"{path}: key '{where or 'top level'}': expected a table, got {data!r}")
        self.data, self.seen = data, set[str]()

    def key(self, key: str) -> str:
        """The dotted key for messages (a quoted key may hold a newline: escaped, so the error stays one line)."""
        if not key.isprintable():
            key = repr(key)[1:-1]  # no codec lookup: the reader also runs unprivileged (the kernel oracle's skip)
        return f"{self.where}.{key}" if self.where else key

    def err(self, key: str, expected: str, got: Any) -> ValueError:
        return self.error(f"{self.path}: key '{self.key(key)}': expected {expected}, got {got!r}")

    def get(self, key: str, kind: type, default: Any, lo: float | None = None, hi: float | None = None) -> Any:
        """The value of `key` (an int is accepted where a float is wanted; a bool never counts as a number)."""
        self.seen.add(key)
        if key not in self.data:
            return default
        v = self.data[key]
        number = kind in (int, float)
        ok = isinstance(v, kind) and not (number and isinstance(v, bool))
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v, ok = float(v), True
        if not ok:
            raise self.err(key, kind.__name__, v)
        if number and not ((lo is None or v >= lo) and (hi is None or v <= hi)):  # NaN fails too
            raise self.err(key, f"{'an integer' if kind is int else 'a number'} in [{lo}, {hi}]", v)
        return v

    def table(self, key: str) -> TableReader:
        """A sub-table (absent means empty: every key takes its default)."""
        self.seen.add(key)
        return TableReader(self.path, self.key(key), self.data.get(key, {}), self.error)

    def done(self) -> None:
        extra = sorted(set(self.data) - self.seen)
        if extra:
            raise self.error(f"{self.path}: key '{self.key(extra[0])}': unknown key")


def read_file(path: Path, what: str, error: type[ValueError]) -> str:
    """A TOML file's text, or one line saying why not (unreadable, or not UTF-8): never a traceback."""
    try:
        return path.read_text()
    except OSError as e:
        raise error(f"{path}: cannot read {what}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a {what}: expected UTF-8 TOML text") from None
