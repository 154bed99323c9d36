"""Safe math expressions for model cards, compiled to JAX.

Model cards (TOML) write right-hand sides, covariate models and outputs as text such as
``ka*depot - cl/v1*central``, ``tvcl * (wt/70)^0.75 * exp(eta_cl)`` or ``if(genotype == 2, 0.5, 1.0)``.
:class:`Expr` parses such text and compiles it to a function of a mapping of named arrays that is
jit-able, vmap-able and differentiable with :mod:`jax`.

Grammar
-------
The syntax is a small subset of Python expressions, with Python's precedence:

* numbers: ``2``, ``0.5``, ``.5``, ``2.``, ``1e-3`` (all become Python floats, i.e. float64 under
  ``jax_enable_x64``); boolean, string, complex and ``None`` literals are rejected;
* names: free symbols looked up in the evaluation environment; names starting with ``__`` are
  rejected; ``pi`` is the constant pi (a reserved name, never looked up, not in :attr:`Expr.symbols`);
* arithmetic: ``+ - * /``, unary ``+ -`` and power, written ``^`` (as pharmacometricians do) or ``**``.
  A power whose exponent is not a constant integer treats a base <= 0 as 0 (see ``_power``).
  Every ``^`` is rewritten to ``**`` before parsing, so it binds tighter than unary minus and is
  right-associative: ``-2^2 == -4`` and ``2^3^2 == 512``. There is no bitwise xor;
* comparisons ``< <= > >= == !=`` (chained: ``0 < x < 1`` means ``0 < x and x < 1``), giving booleans;
* logic ``and``, ``or``, ``not``: elementwise :func:`jax.numpy.logical_and` and friends, not Python's
  short-circuit. Booleans used in arithmetic count as 0 and 1;
* functions (positional arguments only): ``exp log log10 sqrt abs sin cos tan tanh floor ceil
  expit logit`` (one argument), ``pow(x, y)``, ``min(a, b, ...)`` and ``max(a, b, ...)`` (two or more,
  elementwise) and ``if(cond, a, b)`` (alias ``where``, ``ifelse``): :func:`jax.numpy.where`, so both
  branches are evaluated. ``if`` is a Python keyword: the word ``if`` followed by ``(`` is rewritten to
  an internal name before parsing.

Safety
------
User text is never passed to ``eval``, ``exec`` or ``compile``. It is parsed with
``ast.parse(text, mode="eval")`` and every node is checked against a whitelist of node types, operators
and function names; anything else (attribute access, subscripts, lambdas, comprehensions, f-strings,
keyword arguments, dunder names, calls of unknown names) raises :class:`ExprError`. Compilation walks the
checked tree once and builds nested closures over :mod:`jax.numpy` functions, so evaluation can only ever
call those functions.

Error columns
-------------
:attr:`ExprError.col` is a 0-based character offset into the original text (the column for one-line
text), counted before the ``^`` and ``if`` rewrites.
"""

from __future__ import annotations

import ast
import difflib
import functools
import keyword
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.special as jss

__all__ = ["Expr", "ExprError", "FUNCTIONS", "parse_ode_lhs"]

_IF = "__if__"  # internal name that `if(` is rewritten to
_CONSTANTS: dict[str, float] = {"pi": math.pi}

Env = Mapping[str, Any]
Node = Callable[[Env], Any]


class ExprError(ValueError):
    """An invalid or unsafe expression.

    Attributes
    ----------
    message : str
        What is wrong, without position.
    expr : str or None
        The expression text.
    symbol : str or None
        The offending name, where there is one.
    col : int or None
        0-based character offset into ``expr`` where known.
    hint : str or None
        A suggestion, e.g. close matches among the known symbols.
    """

    def __init__(
        self,
        message: str,
        expr: str | None = None,
        symbol: str | None = None,
        col: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.expr = expr
        self.symbol = symbol
        self.col = col
        self.hint = hint
        super().__init__(self._format())

    def _format(self) -> str:
        out = self.message
        if self.col is not None:
            out += f" at column {self.col}"
        if self.expr is not None:
            out += f" in {self.expr!r}"
        if self.hint:
            out += f"; {self.hint}"
        return out

    def __str__(self) -> str:
        return self._format()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.expr, self.symbol, self.col, self.hint))


def _bool_to_float(x: Any) -> Any:
    """Booleans (from comparisons) count as 0/1 in arithmetic and functions."""
    if getattr(x, "dtype", None) == jnp.bool_:
        return x.astype(jnp.result_type(float))
    return x


def _unary(fn: Callable[[Any], Any]) -> Callable[..., Any]:
    return lambda x: fn(_bool_to_float(x))


def _binary(fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    return lambda x, y: fn(_bool_to_float(x), _bool_to_float(y))


def _nary(fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    return lambda *xs: functools.reduce(fn, [_bool_to_float(x) for x in xs])


def _power(x: Any, y: Any) -> Any:
    """``x ** y`` (exponent not a constant integer) for the Hill terms of pharmacology,
    ``C^n``: for positive ``x`` the usual power; a base at or below zero counts as zero (a
    concentration that a solver's trial step pushes below zero) and carries no derivative.
    So derivatives stay finite at ``C = 0`` (``d/dn 0^n = 0 * log 0`` would be NaN), and no
    NaN from a rejected trial step poisons a gradient."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    pos = x > 0
    safe = jnp.power(jnp.where(pos, x, 1.0), y)
    zero_pow = jnp.where(y > 0, 0.0, jnp.where(y == 0, 1.0, jnp.inf))  # 0^y, without a pow
    return jnp.where(pos, safe, jax.lax.stop_gradient(zero_pow))


def _where(cond: Any, a: Any, b: Any) -> Any:
    return jnp.where(cond, _bool_to_float(a), _bool_to_float(b))


#: name -> (implementation, minimum arity, maximum arity or None for unbounded)
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "exp": (_unary(jnp.exp), 1, 1),
    "log": (_unary(jnp.log), 1, 1),
    "log10": (_unary(jnp.log10), 1, 1),
    "sqrt": (_unary(jnp.sqrt), 1, 1),
    "abs": (_unary(jnp.abs), 1, 1),
    "sin": (_unary(jnp.sin), 1, 1),
    "cos": (_unary(jnp.cos), 1, 1),
    "tan": (_unary(jnp.tan), 1, 1),
    "tanh": (_unary(jnp.tanh), 1, 1),
    "floor": (_unary(jnp.floor), 1, 1),
    "ceil": (_unary(jnp.ceil), 1, 1),
    "expit": (_unary(jss.expit), 1, 1),
    "logit": (_unary(jss.logit), 1, 1),
    "pow": (_binary(_power), 2, 2),
    "min": (_nary(jnp.minimum), 2, None),
    "max": (_nary(jnp.maximum), 2, None),
    "if": (_where, 3, 3),
    "where": (_where, 3, 3),
    "ifelse": (_where, 3, 3),
}

_BINOPS: dict[type[ast.operator], tuple[Callable[[Any, Any], Any], str]] = {
    ast.Add: (jnp.add, "+"),
    ast.Sub: (jnp.subtract, "-"),
    ast.Mult: (jnp.multiply, "*"),
    ast.Div: (jnp.true_divide, "/"),
    ast.Pow: (_power, "^"),
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: jnp.less,
    ast.LtE: jnp.less_equal,
    ast.Gt: jnp.greater,
    ast.GtE: jnp.greater_equal,
    ast.Eq: jnp.equal,
    ast.NotEq: jnp.not_equal,
}
_DESCRIBE: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.JoinedStr: "f-strings",
    ast.IfExp: "'a if c else b' (use if(c, a, b))",
    ast.NamedExpr: "assignment expressions",
    ast.Starred: "starred arguments",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Dict: "dicts",
    ast.Set: "sets",
}
_REWRITE = re.compile(r"\^|\bif(?=\s*\()")


def _preprocess(text: str) -> tuple[str, list[int]]:
    """Rewrite ``^`` to ``**`` and ``if(`` to ``__if__(``; map each output offset to an input offset."""
    start = len(text) - len(text.lstrip())  # eval-mode parsing rejects leading indentation
    out: list[str] = []
    where: list[int] = []
    pos = start
    for m in _REWRITE.finditer(text, start):
        out.append(text[pos : m.start()])
        where.extend(range(pos, m.start()))
        new = "**" if m.group() == "^" else _IF
        out.append(new)
        where.extend([m.start()] * len(new))
        pos = m.end()
    out.append(text[pos:])
    where.extend(range(pos, len(text) + 1))
    return "".join(out), where


class _Positions:
    """Converts ``ast`` (line, UTF-8 byte column) positions to offsets in the original text."""

    def __init__(self, source: str, where: list[int]) -> None:
        self.lines = source.splitlines(keepends=True) or [""]
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))
        self.where = where

    def _offset(self, lineno: int, char_col: int) -> int | None:
        if not 1 <= lineno <= len(self.lines):
            return None
        i = min(self.starts[lineno - 1] + max(char_col, 0), len(self.where) - 1)
        return self.where[i]

    def node(self, node: ast.AST) -> int | None:
        lineno = getattr(node, "lineno", None)
        col = getattr(node, "col_offset", None)
        if lineno is None or col is None or not 1 <= lineno <= len(self.lines):
            return None
        chars = len(self.lines[lineno - 1].encode("utf-8")[:col].decode("utf-8", errors="ignore"))
        return self._offset(lineno, chars)

    def syntax(self, err: SyntaxError) -> int | None:
        if err.lineno is None or err.offset is None or not 1 <= err.lineno <= len(self.lines):
            return None
        if err.offset <= 0:  # reported at the end of input
            return self._offset(err.lineno, len(self.lines[err.lineno - 1].rstrip("\r\n")))
        return self._offset(err.lineno, err.offset - 1)


def _const_number(node: ast.AST) -> float | None:
    """The value of a (signed) numeric literal, else None."""
    sign = 1.0
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        sign = -sign if isinstance(node.op, ast.USub) else sign
        node = node.operand
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return sign * float(node.value)
    return None


class Expr:
    """A parsed, checked expression; build with :meth:`Expr.parse`.

    Attributes
    ----------
    text : str
        The original text.
    symbols : frozenset of str
        Free names used (constants such as ``pi`` and function names excluded).
    functions : frozenset of str
        Function names used, as written (``if``, ``where``, ...).
    """

    __slots__ = ("text", "symbols", "functions", "_tree", "_pos", "_occurrences", "_fn")

    def __init__(self, text: str, tree: ast.Expression, pos: _Positions) -> None:
        self.text = text
        self._tree = tree
        self._pos = pos
        self._occurrences: list[tuple[int, str]] = []  # (offset, name) of each free symbol use
        funcs: set[str] = set()
        self._validate(tree.body, funcs)
        self._occurrences.sort(key=lambda t: (t[0] is None, t[0] or 0))
        self.symbols = frozenset(name for _, name in self._occurrences)
        self.functions = frozenset(funcs)
        self._fn: Callable[[Env], jax.Array] | None = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> Expr:
        """Parse and check ``text``; raise :class:`ExprError` if it is invalid or unsafe."""
        if not isinstance(text, str):
            raise ExprError(f"expression must be a string, not {type(text).__name__}")
        source, where = _preprocess(text)
        pos = _Positions(source, where)
        if not source.strip():
            raise ExprError("empty expression", text, col=0)
        try:
            tree = ast.parse(source, mode="eval")
        except SyntaxError as err:
            raise ExprError(f"syntax error: {err.msg}", text, col=pos.syntax(err)) from None
        except (ValueError, RecursionError, MemoryError) as err:
            raise ExprError(f"cannot parse: {err}", text) from None
        try:
            return cls(text, tree, pos)
        except RecursionError:
            raise ExprError("expression is too deeply nested", text) from None

    def _error(
        self, message: str, node: ast.AST, symbol: str | None = None, hint: str | None = None
    ) -> ExprError:
        return ExprError(message, self.text, symbol=symbol, col=self._pos.node(node), hint=hint)

    def _validate(self, node: ast.AST, funcs: set[str]) -> None:
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, float):
                kind = "boolean" if isinstance(node.value, bool) else type(node.value).__name__
                hint = "use 1 or 0" if isinstance(node.value, bool) else None
                raise self._error(f"{kind} literals are not allowed", node, hint=hint)
            try:
                float(node.value)
            except OverflowError:
                raise self._error("number is too large", node) from None
        elif isinstance(node, ast.Name):
            if node.id.startswith("__"):
                raise self._error(f"name {node.id!r} is not allowed", node, symbol=node.id)
            if node.id not in _CONSTANTS:
                self._occurrences.append((self._pos.node(node), node.id))
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                raise self._error(f"operator {type(node.op).__name__} is not allowed", node)
            self._validate(node.left, funcs)
            self._validate(node.right, funcs)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub | ast.UAdd | ast.Not):
                raise self._error(f"operator {type(node.op).__name__} is not allowed", node)
            self._validate(node.operand, funcs)
        elif isinstance(node, ast.BoolOp):
            for v in node.values:
                self._validate(v, funcs)
        elif isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in _CMPOPS:
                    raise self._error(f"comparison {type(op).__name__} is not allowed", node)
            self._validate(node.left, funcs)
            for c in node.comparators:
                self._validate(c, funcs)
        elif isinstance(node, ast.Call):
            self._validate_call(node, funcs)
        else:
            what = _DESCRIBE.get(type(node), type(node).__name__)
            raise self._error(f"unsupported syntax: {what}", node)

    def _validate_call(self, node: ast.Call, funcs: set[str]) -> None:
        if not isinstance(node.func, ast.Name):
            raise self._error("only calls of whitelisted functions are allowed", node)
        name = node.func.id
        col = self._pos.node(node.func)
        if name == _IF:  # only legal where the rewrite put it
            if col is None or self.text[col : col + 2] != "if":
                raise self._error(f"name {name!r} is not allowed", node.func, symbol=name)
            name = "if"
        elif name.startswith("__"):
            raise self._error(f"name {name!r} is not allowed", node.func, symbol=name)
        if name not in FUNCTIONS:
            close = difflib.get_close_matches(name, FUNCTIONS, n=3)
            hint = "did you mean " + " or ".join(repr(c) for c in close) + "?" if close else None
            raise self._error(f"unknown function {name!r}", node.func, symbol=name, hint=hint)
        if node.keywords:
            raise self._error(f"keyword arguments are not allowed in {name}()", node.keywords[0])
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise self._error(f"starred arguments are not allowed in {name}()", a)
        _, lo, hi = FUNCTIONS[name]
        n = len(node.args)
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            plural = "" if lo == hi == 1 else "s"
            raise self._error(f"{name}() takes {want} argument{plural}, got {n}", node.func, symbol=name)
        funcs.add(name)
        for a in node.args:
            self._validate(a, funcs)

    # -- inspection ---------------------------------------------------------------------------
    @property
    def tree(self) -> ast.Expression:
        """The checked syntax tree (read-only use: e.g. a unit checker walks it)."""
        return self._tree

    def col(self, node: ast.AST) -> int | None:
        """0-based offset of ``node`` in :attr:`text` (for error messages)."""
        return self._pos.node(node)

    @staticmethod
    def function_name(node: ast.Call) -> str:
        """The function a call node names, as the user wrote it (``if`` restored)."""
        assert isinstance(node.func, ast.Name)
        return "if" if node.func.id == _IF else node.func.id

    # -- use ----------------------------------------------------------------------------------
    def check(self, known: Iterable[str]) -> None:
        """Raise :class:`ExprError` naming the first (leftmost) symbol not in ``known``."""
        known = list(known)
        known_set = set(known)
        for col, name in self._occurrences:
            if name not in known_set:
                close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
                if close:
                    hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
                elif known and len(known) <= 12:
                    hint = "known symbols: " + ", ".join(sorted(known_set))
                else:
                    hint = None
                raise ExprError(f"unknown symbol {name!r}", self.text, symbol=name, col=col, hint=hint)

    def compile(self) -> Callable[[Env], jax.Array]:
        """Return ``f(env) -> jax.Array`` evaluating the expression with :mod:`jax.numpy`.

        ``env`` maps every name in :attr:`symbols` to an array-like; integer and boolean inputs are
        promoted to the default float dtype. ``f`` is a pure function of ``env`` (a pytree), so it can
        be jit-ed, vmap-ed and differentiated.
        """
        if self._fn is None:
            body = self._build(self._tree.body)

            def f(env: Env) -> jax.Array:
                return jnp.asarray(body(env))

            self._fn = f
        return self._fn

    def __call__(self, env: Env | None = None) -> jax.Array:
        return self.compile()({} if env is None else env)

    def __repr__(self) -> str:
        return f"Expr({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expr) and other.text == self.text

    def __hash__(self) -> int:
        return hash((Expr, self.text))

    def _build(self, node: ast.AST) -> Node:
        if isinstance(node, ast.Constant):
            value = float(node.value)
            return lambda env: value
        if isinstance(node, ast.Name):
            return self._build_name(node)
        if isinstance(node, ast.BinOp):
            fn = _binary(_BINOPS[type(node.op)][0])
            left = self._build(node.left)
            p = _const_number(node.right) if isinstance(node.op, ast.Pow) else None
            if p is not None and p.is_integer() and abs(p) <= 2**31:
                n = int(p)  # integer powers: lax.integer_pow, exact for negative bases

                def ipow(env: Env) -> Any:
                    x = _bool_to_float(left(env))
                    return jnp.power(x, n)

                return ipow
            right = self._build(node.right)
            return lambda env: fn(left(env), right(env))
        if isinstance(node, ast.UnaryOp):
            operand = self._build(node.operand)
            if isinstance(node.op, ast.USub):
                return lambda env: jnp.negative(_bool_to_float(operand(env)))
            if isinstance(node.op, ast.UAdd):
                return lambda env: jnp.positive(_bool_to_float(operand(env)))
            return lambda env: jnp.logical_not(operand(env))
        if isinstance(node, ast.BoolOp):
            values = [self._build(v) for v in node.values]
            combine = jnp.logical_and if isinstance(node.op, ast.And) else jnp.logical_or
            return lambda env: functools.reduce(combine, [v(env) for v in values])
        if isinstance(node, ast.Compare):
            operands = [self._build(node.left)] + [self._build(c) for c in node.comparators]
            ops = [_CMPOPS[type(op)] for op in node.ops]

            def compare(env: Env) -> Any:
                vals = [o(env) for o in operands]  # each operand evaluated once
                results = [op(a, b) for op, a, b in zip(ops, vals[:-1], vals[1:])]
                return functools.reduce(jnp.logical_and, results)

            return compare
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            name = "if" if node.func.id == _IF else node.func.id
            impl = FUNCTIONS[name][0]
            args = [self._build(a) for a in node.args]
            return lambda env: impl(*[a(env) for a in args])
        raise AssertionError(f"unvalidated node {type(node).__name__}")  # pragma: no cover

    def _build_name(self, node: ast.Name) -> Node:
        name = node.id
        if name in _CONSTANTS:
            value = _CONSTANTS[name]
            return lambda env: value
        col = self._pos.node(node)
        text = self.text

        def lookup(env: Env) -> Any:
            try:
                x = env[name]
            except KeyError:
                close = difflib.get_close_matches(name, [str(k) for k in env], n=3)
                hint = "did you mean " + " or ".join(repr(c) for c in close) + "?" if close else None
                raise ExprError(f"symbol {name!r} missing from env", text, name, col, hint) from None
            x = jnp.asarray(x)
            if not jnp.issubdtype(x.dtype, jnp.inexact):
                x = x.astype(jnp.result_type(float))
            return x

        return lookup


_NAME = r"([^\W\d]\w*)"
_ODE_LHS = [
    re.compile(rf"d\s*/\s*dt\s*\(\s*{_NAME}\s*\)"),  # d/dt(NAME), d/dt (NAME)
    re.compile(rf"d{_NAME}\s*/\s*dt"),  # dNAME/dt
]


def parse_ode_lhs(text: str) -> str:
    """Return the state name of an ODE left-hand side ``d/dt(NAME)``, ``d/dt (NAME)`` or ``dNAME/dt``."""
    stripped = text.strip()
    for pattern in _ODE_LHS:
        m = pattern.fullmatch(stripped)
        if m:
            name = m.group(1)
            if name.startswith("__") or keyword.iskeyword(name) or name in _CONSTANTS:
                col = text.index(name, len(text) - len(text.lstrip()))
                raise ExprError(f"invalid state name {name!r}", text, symbol=name, col=col)
            return name
    raise ExprError("invalid ODE left-hand side", text, hint="expected d/dt(NAME), d/dt (NAME) or dNAME/dt")
