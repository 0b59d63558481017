"""Typed, one-line-error access to a TOML table, shared by the scenario reader and the kernel workload reader.

Every bad value becomes one line naming the file, the dotted key and what was expected (the front doors turn it
into exit status 2); keys nobody read are refused, so a typo never silently means "the default".
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

SHOWN = 80  # characters of a bad value an error line quotes
MAX_FILE = 4 << 20  # bytes: the largest scenario or workload is a few KB; /dev/zero must not fill the memory


def shown(v: Any) -> str:
    """A bad value as an error line quotes it: repr (so a newline stays escaped and the line stays one), cut to
    SHOWN characters, and never the int-to-str conversion Python refuses past 4,300 digits (a ValueError)."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
        return f"an integer of {v.bit_length()} bits"
    if isinstance(v, dict | list) and len(v) > 8:  # a large value's repr is as large as the file
        return f"a {'table' if isinstance(v, dict) else 'list'} of {len(v)} items"
    if isinstance(v, str):
        v = v[:SHOWN]
    try:
        text = repr(v)
    except (RecursionError, ValueError):  # deeply nested, or a huge integer inside
        return f"a {type(v).__name__}"
    return text if len(text) <= SHOWN else f"{text[: SHOWN - 3]}..."


class TableReader:
    """One table of one file; `error` is the ValueError subclass its front door catches."""

    def __init__(self, path: str, where: str, data: Any, error: type[ValueError] = ValueError) -> None:
        self.path, self.where, self.error = path, where, error
        if not isinstance(data, dict):
            raise error(f"{path}: key '{where or 'top level'}': expected a table, got {shown(data)}")
        self.data, self.seen = data, set[str]()

    def key(self, key: str) -> str:
        """The dotted key for messages (a quoted key may hold a newline: escaped, so the error stays one line)."""
        if not key.isprintable():
            key = repr(key)[1:-1]  # no codec lookup: the reader also runs unprivileged (the kernel oracle's skip)
        if len(key) > SHOWN:
            key = f"{key[: SHOWN - 3]}..."
        return f"{self.where}.{key}" if self.where else key

    def err(self, key: str, expected: str, got: Any) -> ValueError:
        return self.error(f"{self.path}: key '{self.key(key)}': expected {expected}, got {shown(got)}")

    def get(self, key: str, kind: type, default: Any, lo: float | None = None, hi: float | None = None) -> Any:
        """The value of `key` (an int is accepted where a float is wanted; a bool never counts as a number)."""
        self.seen.add(key)
        if key not in self.data:
            return default
        v = self.data[key]
        number = kind in (int, float)
        ok = isinstance(v, kind) and not (number and isinstance(v, bool))
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            if abs(v) >= 1 << 1000:  # float() of it would raise OverflowError
                raise self.err(key, f"a number in [{lo}, {hi}]" if lo is not None else "a smaller number", v)
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
    """A TOML file's text, or one line saying why not (unreadable, too large, or not UTF-8): never a traceback."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE + 1)
        if len(raw) > MAX_FILE:
            raise error(f"{path}: not a {what}: expected at most {MAX_FILE >> 20} MiB of TOML text")
        return raw.decode().replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as read_text()
    except OSError as e:
        raise error(f"{path}: cannot read {what}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a {what}: expected UTF-8 TOML text") from None
    except ValueError:  # a NUL in the path (an artifact's scenario.path is anyone's string)
        raise error(f"{shown(str(path))}: cannot read {what}: expected a path without NUL characters") from None


def loads(text: str, path: str, error: type[ValueError]) -> Any:
    """tomllib's table, or one line (tomllib also raises RecursionError on deep nesting and a plain ValueError on
    an integer past Python's int-conversion limit; its own message can quote a key thousands of times over)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        if len(msg) > 2 * SHOWN:
            at = re.search(r" \(at (line \d+, column \d+|end of document)\)$", msg)
            msg = f"{msg[:SHOWN]}...{at[0] if at else ''}"
        raise error(f"{path}: not valid TOML: {msg}") from None
    except RecursionError:
        raise error(f"{path}: not valid TOML: expected arrays and tables nested less deeply") from None
    except ValueError:
        raise error(f"{path}: not valid TOML: expected decimal integers of at most 4300 digits") from None
