"""Mutants of the model: the rules' sites turned into source texts, checked, deduplicated, named and sampled.

Why names matter: a mutant is referred to across machines and across time (the equivalent-mutant list, a sample
picked by `--sample N --seed S`, a kept diff), so its name is built only from the code: the file, the function,
the line, the rule and the mutant's index among that rule's mutants in that function. Everything here is a pure
function of the source text: no clock, no hash seed, no dict-order dependence.

The `key` is the name without its line number: the equivalent list and the sample match on it, so an edit that
only moves a function up or down its file keeps both.
"""

from __future__ import annotations

import difflib
import hashlib
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .rules import RULES, Delete, Edit, Replace, Site, Swap, sites

MODEL_DIR = "mm"  # the part of the package that is mutated
# not kernel code: the arena's tables and the context object (state.py), the detector hook interface (hooks.py)
# and the package docstring; a mutant there breaks the harness, not a KSM path
NOT_MODEL = frozenset({"state.py", "hooks.py", "__init__.py"})


@dataclass(frozen=True)
class Mutant:
    """One mutant: its stable name, where it is, what it does, and the whole mutated file."""

    file: str  # relative to the package: mm/ksm.py
    function: str
    line: int
    rule: str
    index: int
    description: str
    original: str
    source: str

    @property
    def name(self) -> str:
        return f"{self.file}:{self.function}:{self.line}:{self.rule}:{self.index}"

    @property
    def key(self) -> str:
        """The name without the line: stable across edits that only move the function within its file."""
        return f"{self.file}:{self.function}:{self.rule}:{self.index}"

    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                self.original.splitlines(keepends=True),
                self.source.splitlines(keepends=True),
                f"a/ksmstress/{self.file}",
                f"b/ksmstress/{self.file}",
                n=2,
            )
        )


def key_of(name: str) -> str:
    """A mutant name's line-free key (file:function:rule:index); a name without a line is its own key."""
    parts = name.split(":")
    if len(parts) == 5 and parts[2].isdigit():
        return ":".join(parts[:2] + parts[3:])
    return name


# -- applying edits ---------------------------------------------------------------------------------------------
def apply(source: str, edits: tuple[Edit, ...]) -> str:
    """The source with the edits made. Expression replacements work on UTF-8 bytes (ast's columns); statement
    edits move or delete whole lines; a body whose statements are all deleted keeps a `pass`."""
    lines = source.encode().split(b"\n")
    deletes = [e for e in edits if isinstance(e, Delete)]
    per_body: dict[int, list[Delete]] = defaultdict(list)
    for d in deletes:
        per_body[d.body_id].append(d)
    # a body that loses every statement keeps a `pass` where its first one was
    first_of_body = {min(ds, key=lambda d: d.line).line for ds in per_body.values() if len(ds) == ds[0].body_len}
    line_ops = [(e.a_line if isinstance(e, Swap) else e.line, e) for e in edits]
    # last edit first, so the positions of the earlier ones still hold
    for _, e in sorted(line_ops, key=lambda t: (t[0], _col(t[1])), reverse=True):
        if isinstance(e, Replace):
            head = lines[e.line - 1][: e.col]
            tail = lines[e.end_line - 1][e.end_col :]
            lines[e.line - 1 : e.end_line] = [head + e.text.encode() + tail]
        elif isinstance(e, Delete):
            keep: list[bytes] = []
            if e.line in first_of_body:
                first = lines[e.line - 1]
                keep = [first[: len(first) - len(first.lstrip())] + b"pass"]
            lines[e.line - 1 : e.end_line] = keep
        else:
            a = lines[e.a_line - 1 : e.a_end]
            mid = lines[e.a_end : e.b_line - 1]
            b = lines[e.b_line - 1 : e.b_end]
            lines[e.a_line - 1 : e.b_end] = b + mid + a
    return b"\n".join(lines).decode()


def _col(e: Edit) -> int:
    return e.col if isinstance(e, Replace) else 0


# -- generation ---------------------------------------------------------------------------------------------------
def model_files(pkg_dir: Path) -> list[Path]:
    return sorted(p for p in (pkg_dir / MODEL_DIR).glob("*.py") if p.name not in NOT_MODEL)


def function_text(source: str, text: str, site: Site) -> str:
    """The mutated function alone, dedented: every edit of a site lies inside its function, so the rest of the
    file is the original's and compiling this is the whole file's syntax check at a fraction of its cost."""
    first, last = site.span
    shift = text.count("\n") - source.count("\n")
    return textwrap.dedent("\n".join(text.split("\n")[first - 1 : last + shift]))


def mutants_of(rel: str, source: str) -> list[Mutant]:
    """Every distinct mutant of one file: valid Python, different from the original, different from each other
    (the first rule in RULES order keeps a code that two rules make). The rules' edits are exact line and
    span edits, so two that make the same program make the same text: comparing texts is enough."""
    seen = {source}
    counters: dict[tuple[str, str], int] = defaultdict(int)
    out = []
    for site in sites(source):
        text = apply(source, site.edits)
        if text in seen:
            continue
        try:
            compile(function_text(source, text, site), rel, "exec", dont_inherit=True)
        except SyntaxError:
            continue  # an edit the text could not carry: never shipped as a mutant
        seen.add(text)
        idx = counters[(site.function, site.rule)]
        counters[(site.function, site.rule)] += 1
        out.append(Mutant(rel, site.function, site.line, site.rule, idx, site.description, source, text))
    return out


def generate(pkg_dir: Path) -> list[Mutant]:
    """Every mutant of the package's model (pkg_dir/mm/*.py), ordered by file, line, rule, index."""
    out: list[Mutant] = []
    for path in model_files(pkg_dir):
        rel = path.relative_to(pkg_dir).as_posix()
        out.extend(mutants_of(rel, path.read_text()))
    order = {r: i for i, r in enumerate(RULES)}
    return sorted(out, key=lambda m: (m.file, m.line, order[m.rule], m.index))


def sample(mutants: list[Mutant], n: int | None, seed: int) -> list[Mutant]:
    """`n` mutants picked by seed: those whose sha256(seed:key) is smallest. The same on every machine and
    Python, and a mutant's membership does not depend on the others' lines."""
    if n is None or n >= len(mutants):
        return list(mutants)

    def rank(m: Mutant) -> str:
        return hashlib.sha256(f"{seed}:{m.key}".encode()).hexdigest()

    picked = {m.name for m in sorted(mutants, key=rank)[:n]}
    return [m for m in mutants if m.name in picked]


def site_count(source: str) -> dict[str, int]:
    """Sites per rule before deduplication (for diagnostics)."""
    counts: dict[str, int] = defaultdict(int)
    for s in sites(source):
        counts[s.rule] += 1
    return dict(counts)


__all__ = ["Mutant", "Site", "apply", "generate", "key_of", "model_files", "mutants_of", "sample"]
