"""Where scenarios and kernel workloads are found: an explicit path, then the user's directories, then the shipped.

Why one module: `run`, `soak`, `bench`, `scenarios`, `kernel` and the pytest plugin must agree on what a name
means, and a normal (non-editable) install must find the files that ship inside the package. The shipped files live
in `ksmstress/scenarios/` (one copy in git, carried by the wheel as package data) and are found through
`importlib.resources`, never through the current directory: a `./scenarios` folder where the user happens to stand
neither hides nor replaces them. User directories (`--scenario-dir`, repeatable, and `$KSMSTRESS_SCENARIOS`, a
`os.pathsep`-separated list) add to the shipped set; a user file whose name equals a shipped one is the one a bare
name picks (the user asked for it), and `ksmstress scenarios` shows both with their origin.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

ENV_DIRS = "KSMSTRESS_SCENARIOS"
SHIPPED = "shipped"


@dataclass(frozen=True)
class Entry:
    """One scenario (or workload) file a name can resolve to, and where it came from."""

    name: str
    path: Path
    origin: str  # "shipped", or the user directory it was found in


# Looked up once, at import: importlib.resources imports its readers lazily, and a process that has since dropped
# privileges (the kernel oracle's not-root check) may no longer read the interpreter's own library.
_SHIPPED_ROOT = Path(str(files("ksmstress").joinpath("scenarios")))


def shipped_dir(sub: str = "") -> Path:
    """The directory of shipped files inside the installed package (a real directory: wheels install unzipped)."""
    return _SHIPPED_ROOT / sub if sub else _SHIPPED_ROOT


def user_dirs(extra: Iterable[str | Path] = ()) -> list[Path]:
    """--scenario-dir directories (in the order given), then $KSMSTRESS_SCENARIOS's."""
    env = [p for p in os.environ.get(ENV_DIRS, "").split(os.pathsep) if p]
    return [Path(p) for p in [*extra, *env]]


def _by_name(p: Path) -> str:
    """Files in the order of their names (focus-swapoff before focus-swapoff-writers, which sorts first by file
    name: '-' < '.')."""
    return p.stem


def entries(extra: Iterable[str | Path] = (), sub: str = "") -> list[Entry]:
    """Every file a name can resolve to, in resolution order (user directories first, then shipped); names may
    repeat across origins (the first one wins for a bare name)."""
    out: list[Entry] = []
    for d in user_dirs(extra):
        dd = d / sub if sub else d
        out += [Entry(p.stem, p, str(d)) for p in sorted(dd.glob("*.toml"), key=_by_name) if p.is_file()]
    out += [Entry(p.stem, p, SHIPPED) for p in sorted(shipped_dir(sub).glob("*.toml"), key=_by_name)]
    return out


def visible(extra: Iterable[str | Path] = (), sub: str = "") -> list[Entry]:
    """One entry per name: what a bare name resolves to (user directories before shipped)."""
    seen: dict[str, Entry] = {}
    for e in entries(extra, sub):
        seen.setdefault(e.name, e)
    return sorted(seen.values(), key=lambda e: e.name)


def find(name: str, extra: Iterable[str | Path] = (), sub: str = "") -> Path | None:
    """A scenario argument as a path: an existing file as given, else `name` or `name.toml` in the user
    directories, else in the shipped set; None when nothing matches."""
    p = Path(name)
    if p.is_file():
        return p
    for d in [*user_dirs(extra), None]:
        base = shipped_dir(sub) if d is None else (d / sub if sub else d)
        for cand in (base / name, base / f"{name}.toml"):
            if cand.is_file():
                return cand
    return None


def names(extra: Iterable[str | Path] = (), sub: str = "") -> str:
    """The known names, for an error message."""
    return ", ".join(e.name for e in visible(extra, sub)) or "none"
