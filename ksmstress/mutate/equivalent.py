"""The equivalent-mutant list: mutants whose change cannot matter in this model, each with the reason.

Why a reviewed file rather than a heuristic: whether a mutant is equivalent is a claim about the model (this check
can never fail here because ...), and a claim needs a reason a reader can verify. The score is taken over the
other mutants. A survivor that is a real defect the detectors miss is NOT equivalent: it stays a survivor, a lead
for a new oracle.

Format (TOML), keyed by the mutant's name as `--list` prints it:

    ["mm/ksm.py:hold_anon_vma:104:invert-cmp:0"]
    reason = "G_MAX_REFCOUNT is a statistic for the report; no KSM decision reads it"

An entry matches its mutant by the name, or by the name without its line number (file:function:rule:index), so
an edit that only moves the function keeps the entry. Entries that match no mutant are reported as stale.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from .generate import Mutant, key_of

FILENAME = "mutants-equivalent.toml"


class EquivalentError(ValueError):
    """Bad input in the equivalent list: one line naming the file, the key and what was expected."""


@dataclass(frozen=True)
class Equivalents:
    path: Path
    reasons: dict[str, str]  # name as written -> reason

    def reason(self, m: Mutant) -> str | None:
        if m.name in self.reasons:
            return self.reasons[m.name]
        for name, why in self.reasons.items():
            if key_of(name) == m.key:
                return why
        return None

    def stale(self, mutants: list[Mutant]) -> list[str]:
        names = {m.name for m in mutants}
        keys = {m.key for m in mutants}
        return [n for n in self.reasons if n not in names and key_of(n) not in keys]


def shipped() -> Path:
    return Path(__file__).resolve().parent.parent / FILENAME


def load(path: Path | None = None) -> Equivalents:
    """Read and validate the list (the shipped one by default); a missing shipped list is an empty one."""
    p = path or shipped()
    if path is None and not p.exists():
        return Equivalents(p, {})
    try:
        data = tomllib.loads(p.read_text())
    except OSError as e:
        raise EquivalentError(f"{p}: cannot read: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EquivalentError(f"{p}: expected TOML: {e}") from None
    reasons: dict[str, str] = {}
    for name, entry in data.items():
        parts = name.split(":")
        if len(parts) != 5 or not parts[2].isdigit() or not parts[4].isdigit():
            raise EquivalentError(f"{p}: key {name!r}: expected a mutant name file:function:line:rule:index")
        if not isinstance(entry, dict):
            raise EquivalentError(f"{p}: key {name!r}: expected a table with a 'reason'")
        extra = sorted(set(entry) - {"reason"})
        if extra:
            raise EquivalentError(f"{p}: key '{name}.{extra[0]}': unknown key; expected only 'reason'")
        why = entry.get("reason")
        if not isinstance(why, str) or not why.strip():
            raise EquivalentError(f"{p}: key '{name}.reason': expected a non-empty string saying why")
        reasons[name] = why.strip()
    return Equivalents(p, reasons)
