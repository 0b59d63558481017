"""The mutation rules: where in a model source file each concurrency-shaped defect can be put, as text edits.

Why AST rules rather than random token edits: the defects that matter here have the shapes of real KSM / rmap
races (a lock or a reference missing, a recheck skipped after a lock was taken, a store moved across a point
where another task may run), and only the AST knows which call is a lock, which statement sits inside a locked
region, and which test re-reads shared state. Each rule yields `Site`s: a rule name, the function, the line, a
one-line description and the text edits that make the mutant. Edits are applied to the original text (see
`generate`), so a mutant's diff shows exactly the lines it changes.

Left alone on purpose: code that only runs with a bug variant on (the body of `if k.bug(...)`, which is dead in
an ordinary soak), expressions that consult `k.bug` (a mutant there would merely switch a catalogued variant on),
the same for `k.later` (a later kernel's behaviour, which only the kernel oracle's model takes on),
the model's own checks (an `if` whose body raises a Failure: deviation 3 of mm/__init__.py, the model naming a
count below zero), detector hooks (`k.hooks.*`) and `with k.guard` (a no-op in controlled mode, where the soak
runs).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

#: The rules, in the order they are generated: when two rules make the same code, the earlier name is kept.
RULES = ("remove-lock", "move-out-of-lock", "drop-ref", "drop-recheck", "swap-sched", "invert-cmp")

ACQUIRE = {"lock": "x", "lock_nested": "x", "down_write": "x", "down_write_nested": "x", "down_read": "r"}
RELEASE = {"unlock": "x", "up_write": "x", "up_read": "r"}
TRYLOCK = "trylock"
# calls that take or drop a reference, a mapping count or a counter (get/put, hold/drop, inc/dec)
REF_CALLS = frozenset({
    "get_page", "get_pte_page", "put_page", "hold_anon_vma", "drop_anon_vma", "page_dup_rmap", "page_add_anon_rmap",
    "page_remove_rmap", "mmdrop", "swap_free", "_inc", "_dec", "atomic_add",
})
# predicates that re-read shared state: a test calling one is a recheck wherever it stands
RECHECK_CALLS = frozenset({
    "PageKsm", "PageAnon", "page_mapped", "ksm_test_exit", "ksm_mm_list_empty", "slot_live", "is_live", "pte_get",
    "page_mapcount", "page_count",
})
PURE_CALLS = frozenset({"ref_slot", "int", "bool", "len", "min", "max", "range"})
RECHECK_NAMES = frozenset({"head", "hfirst", "PTE_PRESENT", "PTE_NONE", "PTE_SWAP", "PG_KSM", "PG_ANON"})
_INVERT: dict[type, type] = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In,
}
_BAIL = (ast.Return, ast.Raise, ast.Break, ast.Continue)
_COMPOUND = (ast.If, ast.For, ast.While, ast.With, ast.Try, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)


# -- edits -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Replace:
    """Replace the source span of an expression node (1-based lines, UTF-8 byte columns, as ast gives them)."""

    line: int
    col: int
    end_line: int
    end_col: int
    text: str


@dataclass(frozen=True)
class Delete:
    """Delete a whole statement (its lines); `body_id` / `body_len` let the editor put a `pass` in a body that
    would otherwise be empty."""

    line: int
    end_line: int
    body_id: int
    body_len: int


@dataclass(frozen=True)
class Swap:
    """Swap two adjacent statements of one body (the lines between them, comments or blanks, stay put)."""

    a_line: int
    a_end: int
    b_line: int
    b_end: int


Edit = Replace | Delete | Swap


@dataclass(frozen=True)
class Site:
    """One mutation a rule can make: where, what (one line for humans) and how (edits of the original text)."""

    rule: str
    function: str
    line: int
    description: str
    edits: tuple[Edit, ...] = field(default=())
    span: tuple[int, int] = (0, 0)  # the function's first and last line in the original text


# -- small AST helpers ---------------------------------------------------------------------------------------------
def _short(node: ast.AST, limit: int = 60) -> str:
    text = ast.unparse(node).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _callee(node: ast.AST) -> str | None:
    """The called name of a call (`f` of f(...), `attr` of x.attr(...)), else None."""
    if not isinstance(node, ast.Call):
        return None
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _lock_op(node: ast.AST) -> tuple[str, str] | None:
    """(operation, key) for a `k.locks.<op>(lid, ...)` call: the key is the lock-id expression, so a release
    pairs with the acquire of the same lock."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "locks"
        and (node.func.attr in ACQUIRE or node.func.attr in RELEASE or node.func.attr == TRYLOCK)
        and node.args
    ):
        return node.func.attr, ast.dump(node.args[0])
    return None


def _stmt_call(stmt: ast.stmt) -> ast.Call | None:
    return stmt.value if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) else None


def _is_point(stmt: ast.stmt) -> bool:
    """A statement that is a scheduling point by itself: k.point(...), k.cond_resched(...) or any lock operation."""
    call = _stmt_call(stmt)
    return call is not None and (_callee(call) in POINTS or _lock_op(call) is not None)


POINTS = frozenset({"point", "cond_resched"})
# model helpers that only call detector hooks (instrumentation): k.might_sleep is __might_sleep's check alone
HOOK_HELPERS = frozenset({"_window_close", "might_sleep"})


def _is_hook(stmt: ast.stmt) -> bool:
    call = _stmt_call(stmt)
    return call is not None and (
        (
            isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Attribute)
            and call.func.value.attr == "hooks"
        )
        or _callee(call) in HOOK_HELPERS
    )


SWITCHES = frozenset({"bug", "later"})  # k.bug(variant), k.later(behaviour): off in every soak


def _mentions_bug(node: ast.AST) -> bool:
    return any(_callee(n) in SWITCHES for n in ast.walk(node))


def _switch_gated(node: ast.AST) -> bool:
    """`x and k.bug(...)`: False in every soak (switches are off), whatever x is, so a mutant of x is equivalent
    by construction (write_protect_page's `not w and k.bug(...)` was one)."""
    return isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And) and any(
        _callee(v) in SWITCHES for v in node.values)


def _names(node: ast.AST, ctx: type) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}


def _independent(a: ast.stmt, b: ast.stmt) -> bool:
    """No local name flows between the two statements, so swapping them cannot leave a name unbound or stale."""
    sa, sb = _names(a, ast.Store), _names(b, ast.Store)
    la, lb = _names(a, ast.Load), _names(b, ast.Load)
    return not (sa & lb or sb & la or sa & sb)


def _touches_shared(s: ast.stmt) -> bool:
    """Whether a statement reads or writes anything but local names (a subscript, an attribute store, a call
    other than a pure helper): a purely local statement cannot care which side of a scheduling point it runs."""
    for n in ast.walk(s):
        if isinstance(n, ast.Subscript) or isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
            return True
        if isinstance(n, ast.Call) and _callee(n) not in PURE_CALLS:
            return True
    return isinstance(s, _BAIL)


def _is_docstring(s: ast.stmt) -> bool:
    return isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)


def _has_lock_op(node: ast.AST) -> bool:
    return any(_lock_op(n) is not None for n in ast.walk(node))


def _is_check(stmt: ast.If) -> bool:
    """The model's own sanity check (deviation 3): an `if` whose body raises."""
    return any(isinstance(s, ast.Raise) for s in stmt.body)


def _pos(node: ast.AST) -> tuple[int, int]:
    return node.lineno, node.col_offset  # type: ignore[attr-defined]


def _replace(node: ast.AST, text: str) -> Replace:
    return Replace(node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, text)  # type: ignore[attr-defined]


# -- one function ----------------------------------------------------------------------------------------------------
@dataclass
class _Stmt:
    node: ast.stmt
    body: list[ast.stmt]
    index: int


class _Function:
    """The statements of one function (nested defs excluded: they are functions of their own), with the parts
    that never run without a bug variant left out."""

    def __init__(self, fn: ast.FunctionDef, qual: str, lines: list[bytes]) -> None:
        self.fn, self.qual, self.lines = fn, qual, lines
        self.stmts: list[_Stmt] = []
        self.exprs: list[ast.AST] = []  # every expression node outside dead code, in source order
        self._walk(fn.body)
        self.exprs.sort(key=_pos)
        # lock operations anywhere in live code: (position, op, key, node)
        self.lock_ops = sorted(
            ((_pos(n), *op, n) for n in self.exprs if (op := _lock_op(n)) is not None), key=lambda t: t[0]
        )

    def _walk(self, body: list[ast.stmt]) -> None:
        for i, s in enumerate(body):
            self.stmts.append(_Stmt(s, body, i))
            if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for f, v in ast.iter_fields(s):
                if isinstance(v, list) and v and isinstance(v[0], ast.stmt):
                    if isinstance(s, ast.If) and self._dead(s, f):
                        continue
                    self._walk(v)
                elif f == "handlers":
                    for h in v:
                        self._walk(h.body)
                elif isinstance(v, ast.AST):
                    self._exprs(v)
                elif isinstance(v, list):
                    for x in v:
                        if isinstance(x, ast.AST):
                            self._exprs(x)

    def _exprs(self, node: ast.AST) -> None:
        for n in ast.walk(node):
            if isinstance(n, ast.expr):
                self.exprs.append(n)

    @staticmethod
    def _dead(s: ast.If, f: str) -> bool:
        """The body of `if k.bug(...)` and the else of `if not k.bug(...)` run only with a variant on (`k.later`:
        with a later kernel's behaviour on, which no soak has)."""
        t = s.test
        if f == "body" and _callee(t) in SWITCHES:
            return True
        neg = isinstance(t, ast.UnaryOp) and isinstance(t.op, ast.Not) and _callee(t.operand) in SWITCHES
        return f == "orelse" and neg

    def whole_lines(self, s: ast.stmt) -> bool:
        """The statement starts its line (no `if x: stmt` one-liners): line edits are then exact."""
        return not self.lines[s.lineno - 1][: s.col_offset].strip()

    # -- rules ---------------------------------------------------------------------------------------------------
    def releases_after(self, pos: tuple[int, int], key: str, mode: str) -> list[ast.stmt]:
        """Release statements of lock `key` after `pos` and before the next acquire of the same lock."""
        out = []
        for p, op, k2, _n in self.lock_ops:
            if p <= pos or k2 != key:
                continue
            if op in ACQUIRE or op == TRYLOCK:
                break
            if RELEASE.get(op) == mode:
                out.extend(st.node for st in self.stmts if _stmt_call(st.node) is _n)
        return out

    def _delete(self, s: _Stmt) -> Delete:
        return Delete(s.node.lineno, s.node.end_lineno or s.node.lineno, id(s.body), len(s.body))

    def _stmt_of(self, node: ast.stmt) -> _Stmt:
        return next(st for st in self.stmts if st.node is node)

    def remove_lock(self) -> Iterator[Site]:
        for pos, op, key, node in self.lock_ops:
            if op in ACQUIRE:
                st = next((st for st in self.stmts if _stmt_call(st.node) is node), None)
                if st is None or not self.whole_lines(st.node):
                    continue
                rel = self.releases_after(pos, key, ACQUIRE[op])
                if not rel:
                    continue
                edits: list[Edit] = [self._delete(st)]
            elif op == TRYLOCK:
                rel = self.releases_after(pos, key, "x")
                if not rel:
                    continue
                edits = [_replace(node, "True")]
            else:
                continue
            if not all(self.whole_lines(r) for r in rel):
                continue
            edits += [self._delete(self._stmt_of(r)) for r in rel]
            lines = ",".join(str(r.lineno) for r in rel)
            desc = f"no {op}({_short(node.args[0], 40)}) and its release at line {lines}"
            yield Site("remove-lock", self.qual, pos[0], desc, tuple(edits))

    def _swappable(self, a: ast.stmt, b: ast.stmt) -> bool:
        return (
            _touches_shared(a)
            and _touches_shared(b)
            and not _is_docstring(a)
            and not _is_docstring(b)
            and self.whole_lines(a)
            and self.whole_lines(b)
            and not _is_hook(a)
            and not _is_hook(b)
            and _independent(a, b)
        )

    def _swap(self, a: ast.stmt, b: ast.stmt) -> Swap:
        return Swap(a.lineno, a.end_lineno or a.lineno, b.lineno, b.end_lineno or b.lineno)

    def move_out_of_lock(self) -> Iterator[Site]:
        for st in self.stmts:
            call = _stmt_call(st.node)
            op = _lock_op(call) if call is not None else None
            if op is None:
                continue
            if op[0] in ACQUIRE and st.index + 1 < len(st.body):
                nxt = st.body[st.index + 1]
                if self._movable(nxt) and self._swappable(st.node, nxt):
                    desc = f"hoist `{_short(nxt, 50)}` above {op[0]}({_short(call.args[0], 30)})"
                    yield Site("move-out-of-lock", self.qual, nxt.lineno, desc, (self._swap(st.node, nxt),))
            if op[0] in RELEASE and st.index > 0:
                prv = st.body[st.index - 1]
                if self._movable(prv) and self._swappable(prv, st.node):
                    desc = f"sink `{_short(prv, 50)}` below {op[0]}({_short(call.args[0], 30)})"
                    yield Site("move-out-of-lock", self.qual, prv.lineno, desc, (self._swap(prv, st.node),))

    @staticmethod
    def _movable(s: ast.stmt) -> bool:
        """A simple statement doing work: not compound, not a lock operation, not control flow."""
        return not isinstance(s, (*_COMPOUND, *_BAIL, ast.Pass)) and not _has_lock_op(s)

    def drop_ref(self) -> Iterator[Site]:
        for st in self.stmts:
            s = st.node
            call = _stmt_call(s)
            if call is not None and _callee(call) in REF_CALLS and self.whole_lines(s):
                yield Site("drop-ref", self.qual, s.lineno, f"drop `{_short(s)}`", (self._delete(st),))
            elif (
                isinstance(s, ast.AugAssign)
                and isinstance(s.op, (ast.Add, ast.Sub))
                and isinstance(s.value, ast.Constant)
                and s.value.value == 1
                and isinstance(s.target, ast.Subscript)
                and self.whole_lines(s)
            ):
                yield Site("drop-ref", self.qual, s.lineno, f"drop `{_short(s)}`", (self._delete(st),))
        for n in self.exprs:
            if _callee(n) == "atomic_add" and len(n.args) >= 3:  # type: ignore[attr-defined]
                if any(_stmt_call(st.node) is n for st in self.stmts):
                    continue  # a statement of its own: dropped above
                # (view, index, delta[, site, arg]): the history ring's site and arg change nothing it computes
                view, idx, delta = (ast.unparse(a) for a in n.args[:3])  # type: ignore[attr-defined]
                text = f"int({view}[{idx}] + {delta})"
                yield Site("drop-ref", self.qual, n.lineno, f"`{_short(n, 50)}` computes without storing",
                           (_replace(n, text),))

    def _after_lock(self, node: ast.AST) -> bool:
        pos = _pos(node)
        return any(p < pos and (op in ACQUIRE or op == TRYLOCK) for p, op, _k, _n in self.lock_ops)

    @staticmethod
    def _reads_shared(node: ast.AST) -> bool:
        return any(isinstance(n, (ast.Subscript, ast.Call)) for n in ast.walk(node))

    @staticmethod
    def _recheck_shape(node: ast.AST) -> bool:
        for n in ast.walk(node):
            if _callee(n) in RECHECK_CALLS:
                return True
            name = n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else None
            if name in RECHECK_NAMES:
                return True
        return False

    def _is_recheck(self, test: ast.AST) -> bool:
        return (self._after_lock(test) and self._reads_shared(test)) or self._recheck_shape(test)

    def drop_recheck(self) -> Iterator[Site]:
        for st in self.stmts:
            s = st.node
            if isinstance(s, ast.If) and not _is_check(s) and self._is_recheck(s.test):
                test = s.test
                if isinstance(test, ast.BoolOp):
                    yield from self._drop_operands(test)
                elif not _mentions_bug(test):
                    const = "False" if s.body and isinstance(s.body[-1], _BAIL) else "True"
                    desc = f"`if {_short(test, 50)}` -> `if {const}`"
                    yield Site("drop-recheck", self.qual, test.lineno, desc, (_replace(test, const),))
            elif (
                isinstance(s, ast.Assign)
                and isinstance(s.value, ast.BoolOp)
                and any(isinstance(v, ast.Compare) for v in s.value.values)
                and self._is_recheck(s.value)
            ):
                yield from self._drop_operands(s.value, actions_too=False)

    def _drop_operands(self, test: ast.BoolOp, actions_too: bool = True) -> Iterator[Site]:
        """One mutant per operand, replaced by the value that makes it not matter. In an assignment, an operand
        that is a call other than a state predicate is an action (`err = f() or err`), not a check: kept."""
        if _switch_gated(test):
            return
        neutral = "True" if isinstance(test.op, ast.And) else "False"
        for v in test.values:
            if _mentions_bug(v):
                continue
            if not actions_too and isinstance(v, ast.Call) and _callee(v) not in RECHECK_CALLS:
                continue
            desc = f"drop `{_short(v, 40)}` from `{_short(test, 50)}`"
            yield Site("drop-recheck", self.qual, v.lineno, desc, (_replace(v, neutral),))

    def swap_sched(self) -> Iterator[Site]:
        for st in self.stmts:
            if st.index + 1 >= len(st.body):
                continue
            a, b = st.node, st.body[st.index + 1]
            if not (_is_point(a) or _is_point(b)):
                continue
            if isinstance(a, _COMPOUND) or isinstance(b, _COMPOUND) or isinstance(a, _BAIL) or isinstance(a, ast.Pass):
                continue
            if isinstance(b, _BAIL) and not self._is_release(a):
                continue  # only a release moved behind a return is a shape worth having (a path keeps the lock)
            if isinstance(b, ast.Pass) or not self._swappable(a, b) or _mentions_bug(a) or _mentions_bug(b):
                continue
            oa, ob = (_lock_op(c) if (c := _stmt_call(x)) is not None else None for x in (a, b))
            if oa and ob and oa[1] == ob[1]:
                continue  # a release before its own acquire: every run trips the model's BUG_ON at once
            desc = f"swap `{_short(a, 40)}` and `{_short(b, 40)}`"
            yield Site("swap-sched", self.qual, a.lineno, desc, (self._swap(a, b),))

    @staticmethod
    def _is_release(s: ast.stmt) -> bool:
        call = _stmt_call(s)
        op = _lock_op(call) if call is not None else None
        return op is not None and op[0] in RELEASE

    def invert_cmp(self) -> Iterator[Site]:
        skip: set[int] = set()
        for st in self.stmts:
            s = st.node
            if isinstance(s, ast.Raise) or isinstance(s, ast.If) and _is_check(s):
                part = s if isinstance(s, ast.Raise) else s.test
                skip.update(id(n) for n in ast.walk(part))
        for n in self.exprs:
            if isinstance(n, ast.JoinedStr) or _callee(n) == "Failure" or _switch_gated(n):
                skip.update(id(x) for x in ast.walk(n))
        for n in self.exprs:
            if not isinstance(n, ast.Compare) or id(n) in skip or len(n.ops) != 1 or _mentions_bug(n):
                continue
            new = ast.Compare(left=n.left, ops=[_INVERT[type(n.ops[0])]()], comparators=n.comparators)
            text = ast.unparse(new)
            desc = f"`{_short(n, 40)}` -> `{_short(new, 40)}`"
            yield Site("invert-cmp", self.qual, n.lineno, desc, (_replace(n, text),))


def _functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef]]:
    """Every function and method with its qualified name (Class.method), outermost first."""

    def walk(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, ast.FunctionDef]]:
        for s in body:
            if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + s.name, s  # type: ignore[misc]
                yield from walk(s.body, prefix + s.name + ".")
            elif isinstance(s, ast.ClassDef):
                yield from walk(s.body, prefix + s.name + ".")

    yield from walk(tree.body, "")


def sites(source: str) -> Iterator[Site]:
    """Every mutation site of one source file, rule by rule in RULES order, in source order within a rule."""
    tree = ast.parse(source)
    lines = source.encode().split(b"\n")
    funcs = [_Function(fn, qual, lines) for qual, fn in _functions(tree)]
    for rule in RULES:
        method = rule.replace("-", "_")
        for f in funcs:
            span = (f.fn.lineno, f.fn.end_lineno or f.fn.lineno)
            for site in getattr(f, method)():
                yield dataclasses.replace(site, span=span)
