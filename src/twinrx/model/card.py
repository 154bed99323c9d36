"""Model cards: one TOML file per model, compiled to the same JAX model as hand-written code.

The format is documented, with a complete example, in ``models/README.md``. In short::

    [model]         name, description, kind, time_unit, amount_unit, references, structure
    [parameters]    NAME = {value, unit, description, source, bounds}
    [covariates]    NAME = {unit, reference, interpolation} or {levels, reference}
    [[effects]]     parameter, covariate, form (power|linear|exponential|categorical), ...
    [variability]   NAME = {omega2 | cv | sd}; [[variability.block]] parameters, omega
    [derived]       NAME = "expression" or {expr, unit, description}
    [compartments]  NAME = {unit, initial, nonnegative, description}   (NONMEM CMT order)
    [ode]           equations = "d/dt(central) = ..."  (one per line)
    [outputs]       NAME = {expr, unit, description, error = {model, additive, proportional}}
    [dosing.CMT]    lag, bioavailability, rate, duration (expressions)
    [checks]        what the shared check suite needs (regimen, mass balance)

Expressions are parsed by :mod:`twinrx.model.expr` (never ``eval``), every symbol must
resolve, and where units are declared each ODE right-hand side, derived quantity and output
is checked for dimensional consistency with pint. A wrong card raises :class:`CardError`
naming the file, the line and the symbol.

How a card becomes a model: the user's inputs are the parameters (population values), the
covariates and the random effects ``eta_<PARAM>``. :meth:`CardModel.prepare` computes the
individual parameters once per parameter set (covariate effects times ``exp(eta)``), then
the derived quantities that depend only on them; quantities that depend on the states, on
``t`` or on a linearly interpolated covariate are evaluated inside the vector field.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..units import ureg
from ._base import AbstractModel, Output, Parameter
from .expr import FUNCTIONS, Expr, ExprError, parse_ode_lhs
from .linear import LinearCompartmentModel
from .residual import ERROR_MODELS, ResidualError

__all__ = ["CardError", "CardModel", "Covariate", "Effect", "load_card", "parse_card"]

KINDS = ("pk", "pd", "pkpd", "physiology")
INTERPOLATIONS = ("nocb", "locf", "linear")
EFFECT_FORMS = ("power", "linear", "exponential", "categorical")
STRUCTURES = {
    "one_cpt_iv": (1, False),
    "one_cpt_oral": (1, True),
    "two_cpt_iv": (2, False),
    "two_cpt_oral": (2, True),
    "three_cpt_iv": (3, False),
    "three_cpt_oral": (3, True),
}
_MODIFIER_KEYS = {
    "lag": "lag",
    "bioavailability": "bioav",
    "bioav": "bioav",
    "rate": "rate",
    "duration": "duration",
}
_RESERVED = {"t", "pi", *FUNCTIONS}


# --------------------------------------------------------------------------------------
# Errors and locations
# --------------------------------------------------------------------------------------
class CardError(ValueError):
    """A model card that cannot be compiled: where (file, line), what, and which symbol."""

    def __init__(self, message: str, *, path=None, line=None, symbol=None, hint=None):
        self.message, self.path, self.line, self.symbol, self.hint = message, path, line, symbol, hint
        where = f"{path}" if path else "model card"
        if line:
            where += f":{line}"
        text = f"{where}: {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class _Source:
    """The card's text, to find the line a key or an expression is on."""

    def __init__(self, text: str, path: str | None):
        self.lines = text.splitlines()
        self.path = path

    def _section_line(self, section: str | None) -> int:
        if not section:
            return 0
        pat = re.compile(r"^\s*\[{1,2}\s*" + re.escape(section) + r"\s*\]{1,2}")
        for i, line in enumerate(self.lines):
            if pat.match(line):
                return i
        return 0

    def line(
        self, needle: str | None = None, section: str | None = None, key: str | None = None
    ) -> int | None:
        start = self._section_line(section)
        if key is not None:
            pat = re.compile(r'^\s*"?' + re.escape(key) + r'"?\s*=')
            for i in range(start, len(self.lines)):
                if pat.match(self.lines[i]):
                    return i + 1
        if needle:
            needle = needle.strip()
            for i in range(start, len(self.lines)):
                if needle in self.lines[i]:
                    return i + 1
            for i, line in enumerate(self.lines):
                if needle in line:
                    return i + 1
        return start + 1 if section else None

    def error(self, message, *, needle=None, section=None, key=None, symbol=None, hint=None):
        return CardError(
            message, path=self.path, line=self.line(needle, section, key), symbol=symbol, hint=hint
        )


# --------------------------------------------------------------------------------------
# Units (pint, only at compile time)
# --------------------------------------------------------------------------------------
_ureg = ureg


def _parse_unit(text: str, src: _Source, what: str, section: str, key: str):
    text = str(text).strip()
    if text in ("", "1", "-", "dimensionless"):
        return _ureg().Quantity(1.0, "dimensionless")
    try:
        return _ureg().Quantity(1.0, text.replace("µ", "u"))
    except Exception as err:  # pint raises several error types for bad units
        raise src.error(
            f"unit {text!r} of {what} is not understood ({type(err).__name__})",
            section=section,
            key=key,
            hint="use pint syntax, e.g. 'L/h', 'mg/L', '1/min', 'uU/mL', 'mg/dL'",
        ) from None


def _same_unit(a, b) -> float | None:
    """The factor a/b when a and b have the same dimension, else None."""
    if a.dimensionality != b.dimensionality:
        return None
    return float((a / b).to("dimensionless").magnitude)


def _unit_str(q) -> str:
    if isinstance(q, _SymPow):
        return f"({_unit_str(q.base)})^{q.expo}"
    u = f"{q.units:~P}"
    return u if u else "1 (dimensionless)"


@dataclasses.dataclass(frozen=True)
class _SymPow:
    """A unit raised to a symbolic power, ``base ** expo`` (e.g. ``C^GAMMA`` in a Hill
    term): it can be added to the same power of the same unit, and a quotient of two of
    them with the same exponent is the power of the quotient of the bases."""

    base: Any  # a pint Quantity
    expo: str

    @staticmethod
    def make(base, expo):
        return base if base.dimensionless else _SymPow(base, expo)


class _UnitChecker:
    """Infer the unit of an expression from the units of its symbols.

    A bare number is a wildcard: it takes the unit of whatever it is added to or compared
    with, and makes a product or quotient unknown (``(WT/70)^0.75`` cannot be checked, so it
    is not). Everything else is checked: sums and comparisons need equal units (same
    dimension and scale), ``exp``/``log``/... need dimensionless arguments, a dimensional
    base needs a numeric exponent.
    """

    def __init__(self, units: Mapping[str, Any], src: _Source, context: str, section: str):
        self.units, self.src, self.context, self.section = units, src, context, section

    def infer(self, e: Expr):
        self.e = e
        return self._node(e.tree.body)

    def _fail(self, msg, node, symbol=None):
        col = self.e.col(node)
        at = f" at column {col + 1}" if col is not None else ""
        raise self.src.error(
            f"unit mismatch in {self.context}: {msg}{at} of '{self.e.text}'",
            needle=self.e.text,
            section=self.section,
            symbol=symbol,
        )

    def _sum(self, a, b, node, what="added"):
        if a is None:
            return b
        if b is None:
            return a
        if isinstance(a, _SymPow) or isinstance(b, _SymPow):
            if isinstance(a, _SymPow) and isinstance(b, _SymPow) and a.expo == b.expo:
                f = _same_unit(a.base, b.base)
                if f is not None and math.isclose(f, 1.0, rel_tol=1e-9):
                    return a
            self._fail(f"{_unit_str(a)} and {_unit_str(b)} cannot be {what}", node)
        f = _same_unit(a, b)
        if f is None or not math.isclose(f, 1.0, rel_tol=1e-9):
            msg = f"{_unit_str(a)} and {_unit_str(b)} cannot be {what}"
            if f is not None:
                msg += f" (they differ by a factor {f:g}: declare consistent units)"
            self._fail(msg, node)
        return a

    def check_equal(self, want, got, e: Expr, name: str):
        """Raise unless the inferred unit ``got`` of ``e`` is the declared ``want``."""
        f = None if isinstance(got, _SymPow) else _same_unit(want, got)
        if f is None or not math.isclose(f, 1.0, rel_tol=1e-9):
            msg = f"the expression has unit {_unit_str(got)}, expected {_unit_str(want)}"
            if f is not None:
                msg += f" (same dimension, factor {1 / f:g}: declare consistent units)"
            raise self.src.error(
                f"unit mismatch in {self.context}: {msg}: '{e.text}'",
                needle=e.text,
                section=self.section,
                symbol=name,
            )

    def _dimensionless(self, a, node, what):
        if a is not None and (isinstance(a, _SymPow) or not a.dimensionless):
            self._fail(f"the argument of {what} must be dimensionless, not {_unit_str(a)}", node)

    def _node(self, node):
        one = _ureg().Quantity(1.0, "dimensionless")
        if isinstance(node, ast.Constant):
            return None
        if isinstance(node, ast.Name):
            return one if node.id == "pi" else self.units.get(node.id)
        if isinstance(node, ast.UnaryOp):
            v = self._node(node.operand)
            return one if isinstance(node.op, ast.Not) else v
        if isinstance(node, ast.BinOp):
            a, b = self._node(node.left), self._node(node.right)
            if isinstance(node.op, (ast.Add, ast.Sub)):
                return self._sum(a, b, node)
            if isinstance(node.op, (ast.Mult, ast.Div)):
                return self._product(a, b, isinstance(node.op, ast.Div))
            if isinstance(node.op, ast.Pow):
                return self._pow(a, b, node.right, node)
            return None
        if isinstance(node, ast.BoolOp):
            for v in node.values:
                self._node(v)
            return one
        if isinstance(node, ast.Compare):
            vals = [self._node(node.left)] + [self._node(c) for c in node.comparators]
            acc = vals[0]
            for v in vals[1:]:
                acc = self._sum(acc, v, node, "compared")
            return one
        if isinstance(node, ast.Call):
            name = Expr.function_name(node)
            args = [self._node(a) for a in node.args]
            if name in ("exp", "log", "log10", "sin", "cos", "tan", "tanh", "expit", "logit"):
                self._dimensionless(args[0], node, name)
                return one
            if name == "sqrt":
                return None if args[0] is None or isinstance(args[0], _SymPow) else args[0] ** 0.5
            if name in ("abs", "floor", "ceil"):
                return args[0]
            if name == "pow":
                return self._pow(args[0], args[1], node.args[1], node)
            if name in ("min", "max"):
                acc = args[0]
                for v in args[1:]:
                    acc = self._sum(acc, v, node, f"arguments of {name}")
                return acc
            if name in ("if", "where", "ifelse"):
                return self._sum(args[1], args[2], node, "the two branches of if")
            return None
        return None

    @staticmethod
    def _product(a, b, divide):
        if a is None or b is None:
            return None
        sa, sb = isinstance(a, _SymPow), isinstance(b, _SymPow)
        if not sa and not sb:
            return a / b if divide else a * b
        if sa and sb:
            if a.expo != b.expo:
                return None
            return _SymPow.make(a.base / b.base if divide else a.base * b.base, a.expo)
        sym, other = (a, b) if sa else (b, a)
        if other.dimensionless:  # a dimensionless factor keeps the symbolic power
            return sym if (sa or not divide) else None
        return None

    def _pow(self, base, expo, expo_node, node):
        self._dimensionless(expo, node, "an exponent")
        p = _const(expo_node)
        if base is None:
            return None
        if isinstance(base, _SymPow):
            return None
        if p is not None:
            return base**p
        return _SymPow.make(base, ast.unparse(expo_node))


def _const(node) -> float | None:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _const(node.operand)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    return None


# --------------------------------------------------------------------------------------
# The parsed card
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Covariate:
    """A covariate: a data column (static or time-varying) with its unit."""

    name: str
    unit: str
    reference: float  # a code for categorical covariates
    description: str = ""
    interpolation: str = "nocb"
    levels: tuple[str, ...] | None = None
    source: str = ""

    @property
    def categorical(self) -> bool:
        return self.levels is not None

    def encode(self, value):
        """Level names (strings) to codes (0-based level index). Numbers are codes already:
        they pass through, checked to be level indices (or NaN, missing) when concrete."""
        if self.levels is None:
            return value
        try:
            numeric = np.dtype(jnp.result_type(value)).kind in "fiub"
        except TypeError:
            numeric = False
        if numeric:
            # Host values are checked; JAX arrays (traced, or on a device) pass as they are:
            # a check would copy them to the host on every call.
            if not isinstance(value, jax.Array):
                self._check_codes(np.asarray(value, float))
            return value
        arr = np.asarray(value, dtype=object)
        # One lookup per distinct value, not per element (cohorts have millions of rows).
        uniq, inv = np.unique(arr.astype(str).ravel(), return_inverse=True)
        uniq = [str(u) for u in uniq]
        norm = {_norm_level(lv): i for i, lv in enumerate(self.levels)}
        codes = np.empty(len(uniq), float)
        for j, u in enumerate(uniq):
            if _norm_level(u) in norm:
                codes[j] = norm[_norm_level(u)]
                continue
            try:
                codes[j] = float(u)
            except ValueError:
                raise ValueError(
                    f"covariate {self.name}: unknown level {u!r}; levels are {', '.join(self.levels)}"
                ) from None
        self._check_codes(codes)
        out = codes[inv].reshape(arr.shape)
        return out if out.shape else float(out)

    def _check_codes(self, a: np.ndarray) -> None:
        n = len(self.levels)
        bad = ~np.isnan(a) & ((a != np.round(a)) | (a < 0) | (a >= n))
        if np.any(bad):
            levels = ", ".join(f"{i} = {lv}" for i, lv in enumerate(self.levels))
            raise ValueError(
                f"covariate {self.name}: code {np.asarray(a)[bad].flat[0]:g} is not a level; "
                f"codes are 0-based level indices ({levels}), or give the level names"
            )


def _norm_level(s: str) -> str:
    return re.sub(r"\s+", "", str(s)).lower()


@dataclasses.dataclass(frozen=True)
class Effect:
    """A covariate effect: the typical parameter is multiplied by a factor of the covariate."""

    parameter: str
    covariate: str
    form: str
    coefficient: float = 0.0
    reference: float = 0.0
    values: tuple[float, ...] = ()  # categorical: a multiplier per level
    source: str = ""

    @property
    def key(self) -> str:
        """The name of its coefficient when estimated: ``beta_<PARAM>_<COVARIATE>``."""
        return f"beta_{self.parameter}_{self.covariate}"

    @property
    def estimable(self) -> bool:
        return self.form != "categorical"

    def factor(self, x, coefficient=None):
        b = self.coefficient if coefficient is None else coefficient
        if self.form == "power":
            return (x / self.reference) ** b
        if self.form == "linear":
            return 1.0 + b * (x - self.reference)
        if self.form == "exponential":
            return jnp.exp(b * (x - self.reference))
        table = jnp.asarray(self.values)
        return jnp.take(table, jnp.clip(jnp.round(x), 0, len(self.values) - 1).astype(jnp.int32))

    def describe(self) -> str:
        if self.form == "power":
            return f"({self.covariate}/{self.reference:g})^{self.coefficient:g}"
        if self.form == "linear":
            return f"1 + {self.coefficient:g}*({self.covariate} - {self.reference:g})"
        if self.form == "exponential":
            return f"exp({self.coefficient:g}*({self.covariate} - {self.reference:g}))"
        return f"by {self.covariate}"


@dataclasses.dataclass(frozen=True)
class Variability:
    """Log-normal inter-individual variability: ``P_i = P_typ * exp(eta_P)``,
    ``eta ~ N(0, omega)``."""

    parameters: tuple[str, ...]
    omega: tuple[tuple[float, ...], ...]

    @property
    def eta_names(self) -> tuple[str, ...]:
        return tuple(f"eta_{p}" for p in self.parameters)

    def matrix(self) -> np.ndarray:
        return np.asarray(self.omega, float).reshape(len(self.parameters), len(self.parameters))

    def sample(self, key, n: int) -> dict[str, Any]:
        """``n`` draws of the random effects, ``{eta_P: (n,)}``, from the explicit ``key``."""
        import jax

        if not self.parameters:
            return {}
        chol = jnp.linalg.cholesky(jnp.asarray(self.matrix()))
        z = jax.random.normal(key, (n, len(self.parameters)))
        etas = z @ chol.T
        return {name: etas[:, i] for i, name in enumerate(self.eta_names)}


@dataclasses.dataclass(frozen=True, eq=False)
class ModelCard:
    """Everything a card says, parsed and checked; hashed by the card's text."""

    path: str | None
    digest: str
    name: str
    description: str
    kind: str
    references: tuple[str, ...]
    time_unit: str
    amount_unit: str
    parameters: tuple[Parameter, ...]
    covariates: tuple[Covariate, ...]
    effects: tuple[Effect, ...]
    variability: Variability
    compartments: tuple[str, ...]
    compartment_units: tuple[str, ...]
    nonnegative: tuple[bool, ...]
    initial: tuple[Expr | None, ...]
    derived: tuple[tuple[str, Expr, str], ...]  # (name, expression, unit), dependency order
    ode: tuple[Expr, ...] | None
    outputs: tuple[Output, ...]
    output_exprs: tuple[Expr, ...]
    errors: tuple[ResidualError | None, ...]
    modifiers: tuple[tuple[str, str, str, Expr], ...]  # (kind, compartment, name, expr)
    structure: str | None
    structure_map: tuple[tuple[str, str], ...]  # structure parameter -> card symbol
    dynamic: frozenset[str]  # names evaluated inside the vector field
    checks: Mapping[str, Any]
    text: str = dataclasses.field(repr=False, default="")

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other) -> bool:
        return isinstance(other, ModelCard) and other.digest == self.digest


def _str(v, src, section, key, what) -> str:
    if not isinstance(v, str):
        raise src.error(f"{what} must be a string, not {type(v).__name__}", section=section, key=key)
    return v


def _number(v, src, section, key, what) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise src.error(f"{what} must be a number, not {v!r}", section=section, key=key)
    return float(v)


def _parse_expr(text, src, section, context, needle=None) -> Expr:
    try:
        return Expr.parse(text)
    except ExprError as err:
        raise src.error(
            f"{context}: {err.message}",
            needle=needle or text,
            section=section,
            symbol=err.symbol,
            hint=err.hint,
        ) from None


def _check_symbols(e: Expr, known, src, section, context):
    try:
        e.check(known)
    except ExprError as err:
        raise src.error(
            f"{context}: {err.message} in '{e.text}'",
            needle=e.text,
            section=section,
            symbol=err.symbol,
            hint=err.hint,
        ) from None


def _unknown_keys(table: Mapping, allowed, src, section, what):
    extra = [k for k in table if k not in allowed]
    if extra:
        raise src.error(
            f"unknown key {extra[0]!r} in {what}",
            section=section,
            key=extra[0],
            hint="allowed: " + ", ".join(sorted(allowed)),
        )


def parse_card(text: str, path: str | None = None) -> ModelCard:
    """Parse and check a card's TOML text (``path`` only names it in errors)."""
    src = _Source(text, path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        m = re.search(r"line (\d+)", str(err))
        raise CardError(f"not valid TOML: {err}", path=path, line=int(m.group(1)) if m else None) from None
    _unknown_keys(
        doc,
        {
            "model",
            "parameters",
            "covariates",
            "effects",
            "variability",
            "derived",
            "compartments",
            "ode",
            "outputs",
            "dosing",
            "checks",
        },
        src,
        None,
        "the card (top-level tables)",
    )
    meta = doc.get("model")
    if not isinstance(meta, dict):
        raise CardError("a card needs a [model] table with at least a name", path=path, line=1)
    _unknown_keys(
        meta,
        {"name", "description", "kind", "time_unit", "amount_unit", "references", "structure"},
        src,
        "model",
        "[model]",
    )
    name = _str(meta.get("name", ""), src, "model", "name", "model.name")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise src.error(
            f"model name {name!r} must be an identifier (letters, digits, _)", section="model", key="name"
        )
    kind = meta.get("kind", "pk")
    if kind not in KINDS:
        raise src.error(
            f"model.kind must be one of {', '.join(KINDS)}, not {kind!r}", section="model", key="kind"
        )
    time_unit = str(meta.get("time_unit", "h"))
    amount_unit = str(meta.get("amount_unit", "mg"))
    u_time = _parse_unit(time_unit, src, "time", "model", "time_unit")
    _parse_unit(amount_unit, src, "amounts", "model", "amount_unit")
    refs = meta.get("references", [])
    refs = (refs,) if isinstance(refs, str) else tuple(str(r) for r in refs)
    units: dict[str, Any] = {"t": u_time}

    # ---- parameters -------------------------------------------------------------------
    params: list[Parameter] = []
    for pname, spec in doc.get("parameters", {}).items():
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            spec = {"value": spec}
        if not isinstance(spec, dict):
            raise src.error(
                f"parameter {pname}: expected a table {{value, unit, ...}}", section="parameters", key=pname
            )
        _unknown_keys(
            spec,
            {"value", "unit", "description", "source", "bounds"},
            src,
            "parameters",
            f"parameter {pname}",
        )
        _check_name(pname, src, "parameters", "parameter")
        if "value" not in spec:
            raise src.error(f"parameter {pname} has no value", section="parameters", key=pname, symbol=pname)
        value = _number(spec["value"], src, "parameters", pname, f"parameter {pname}'s value")
        bounds = spec.get("bounds", [-math.inf, math.inf])
        if not (isinstance(bounds, list) and len(bounds) == 2):
            raise src.error(
                f"parameter {pname}: bounds must be [lower, upper]", section="parameters", key=pname
            )
        lo, hi = (float(b) for b in bounds)
        if not lo <= value <= hi:
            raise src.error(
                f"parameter {pname} = {value:g} lies outside its bounds [{lo:g}, {hi:g}]",
                section="parameters",
                key=pname,
                symbol=pname,
            )
        unit = str(spec.get("unit", ""))
        units[pname] = _parse_unit(unit, src, f"parameter {pname}", "parameters", pname)
        params.append(
            Parameter(
                pname, unit, value, str(spec.get("description", "")), str(spec.get("source", "")), (lo, hi)
            )
        )
    pnames = [p.name for p in params]

    # ---- covariates -------------------------------------------------------------------
    covs: list[Covariate] = []
    for cname, spec in doc.get("covariates", {}).items():
        if not isinstance(spec, dict):
            raise src.error(
                f"covariate {cname}: expected a table {{unit, reference, ...}}",
                section="covariates",
                key=cname,
            )
        _unknown_keys(
            spec,
            {"unit", "reference", "description", "interpolation", "levels", "source"},
            src,
            "covariates",
            f"covariate {cname}",
        )
        _check_name(cname, src, "covariates", "covariate")
        if cname in pnames:
            raise src.error(
                f"{cname} is both a parameter and a covariate", section="covariates", key=cname, symbol=cname
            )
        interp = spec.get("interpolation", "nocb")
        if interp not in INTERPOLATIONS:
            raise src.error(
                f"covariate {cname}: interpolation must be one of {', '.join(INTERPOLATIONS)}, not {interp!r}",
                section="covariates",
                key=cname,
            )
        levels = spec.get("levels")
        if levels is not None:
            levels = tuple(str(lv) for lv in levels)
            if len(set(map(_norm_level, levels))) != len(levels) or not levels:
                raise src.error(
                    f"covariate {cname}: levels must be distinct and non-empty",
                    section="covariates",
                    key=cname,
                )
            if interp == "linear":
                raise src.error(
                    f"covariate {cname} is categorical and cannot be interpolated linearly",
                    section="covariates",
                    key=cname,
                )
            ref = spec.get("reference", levels[0])
            if _norm_level(ref) not in [_norm_level(lv) for lv in levels]:
                raise src.error(
                    f"covariate {cname}: reference {ref!r} is not one of its levels",
                    section="covariates",
                    key=cname,
                )
            ref_code = float([_norm_level(lv) for lv in levels].index(_norm_level(ref)))
            unit = ""
        else:
            if "reference" not in spec:
                raise src.error(
                    f"covariate {cname} needs a reference value (the typical patient's)",
                    section="covariates",
                    key=cname,
                )
            ref_code = _number(spec["reference"], src, "covariates", cname, f"covariate {cname}'s reference")
            unit = str(spec.get("unit", ""))
        units[cname] = _parse_unit(unit, src, f"covariate {cname}", "covariates", cname)
        covs.append(
            Covariate(
                cname,
                unit,
                ref_code,
                str(spec.get("description", "")),
                interp,
                levels,
                str(spec.get("source", "")),
            )
        )
    cov_by = {c.name: c for c in covs}

    # ---- covariate effects -------------------------------------------------------------
    effects: list[Effect] = []
    for i, spec in enumerate(doc.get("effects", [])):
        where = f"effect {i + 1}"
        _unknown_keys(
            spec,
            {"parameter", "covariate", "form", "coefficient", "reference", "values", "source", "description"},
            src,
            "effects",
            where,
        )
        par, cov, form = spec.get("parameter"), spec.get("covariate"), spec.get("form", "power")
        needle = f'"{cov}"' if cov else None
        if par not in pnames:
            raise src.error(
                f"{where}: parameter {par!r} is not declared", needle=needle, section="effects", symbol=par
            )
        if cov not in cov_by:
            raise src.error(
                f"{where}: covariate {cov!r} is not declared", needle=needle, section="effects", symbol=cov
            )
        if form not in EFFECT_FORMS:
            raise src.error(
                f"{where}: form must be one of {', '.join(EFFECT_FORMS)}", needle=needle, section="effects"
            )
        c = cov_by[cov]
        if form == "categorical":
            if not c.categorical:
                raise src.error(
                    f"{where}: a categorical effect needs a categorical covariate ({cov} has no levels)",
                    needle=needle,
                    section="effects",
                )
            vals = spec.get("values", {})
            norm = {_norm_level(k): float(v) for k, v in vals.items()}
            missing = [lv for lv in c.levels if _norm_level(lv) not in norm]
            extra = [k for k in vals if _norm_level(k) not in [_norm_level(lv) for lv in c.levels]]
            if missing or extra:
                raise src.error(
                    f"{where}: values must give a multiplier for every level of {cov}"
                    + (f"; missing {missing}" if missing else "")
                    + (f"; unknown {extra}" if extra else ""),
                    needle=needle,
                    section="effects",
                )
            effects.append(
                Effect(
                    par,
                    cov,
                    form,
                    values=tuple(norm[_norm_level(lv)] for lv in c.levels),
                    source=str(spec.get("source", "")),
                )
            )
        else:
            if c.categorical:
                raise src.error(
                    f'{where}: covariate {cov} is categorical; use form = "categorical"',
                    needle=needle,
                    section="effects",
                )
            coef = _number(spec.get("coefficient", None), src, "effects", None, f"{where}'s coefficient")
            ref = float(spec.get("reference", c.reference))
            if form == "power" and ref <= 0:
                raise src.error(
                    f"{where}: a power effect needs a positive reference", needle=needle, section="effects"
                )
            effects.append(Effect(par, cov, form, coef, ref, source=str(spec.get("source", ""))))

    # ---- variability -------------------------------------------------------------------
    var_spec = dict(doc.get("variability", {}))
    blocks = var_spec.pop("block", [])
    var_names: list[str] = []
    diag: dict[str, float] = {}
    for pname, spec in var_spec.items():
        if pname not in pnames:
            raise src.error(
                f"variability on {pname!r}, which is not a parameter",
                section="variability",
                key=pname,
                symbol=pname,
            )
        if isinstance(spec, (int, float)):
            spec = {"omega2": spec}
        _unknown_keys(spec, {"omega2", "cv", "sd"}, src, "variability", f"variability of {pname}")
        if len(spec) != 1:
            raise src.error(
                f"variability of {pname}: give exactly one of omega2, cv, sd",
                section="variability",
                key=pname,
            )
        ((k, v),) = spec.items()
        v = _number(v, src, "variability", pname, f"variability of {pname}")
        if v < 0:
            raise src.error(f"variability of {pname} must be >= 0", section="variability", key=pname)
        diag[pname] = {"omega2": v, "cv": math.log1p(v * v), "sd": v * v}[k]
        var_names.append(pname)
    n_v = len(var_names)
    omega = np.diag([diag[p] for p in var_names]) if n_v else np.zeros((0, 0))
    for b in blocks:
        bp = list(b.get("parameters", []))
        mat = np.asarray(b.get("omega", []), float)
        for p in bp:
            if p not in var_names:
                raise src.error(
                    f"variability block names {p!r}, which has no variance of its own above",
                    needle="parameters",
                    section="variability.block",
                    symbol=p,
                )
        if mat.shape != (len(bp), len(bp)) or not np.allclose(mat, mat.T):
            raise src.error(
                "a variability block's omega must be a symmetric square matrix", section="variability.block"
            )
        idx = [var_names.index(p) for p in bp]
        omega[np.ix_(idx, idx)] = mat
    if n_v:
        try:
            np.linalg.cholesky(omega + 1e-300 * np.eye(n_v))
        except np.linalg.LinAlgError:
            raise src.error(
                "the variability matrix (omega) is not positive definite", section="variability"
            ) from None
    variability = Variability(tuple(var_names), tuple(tuple(float(x) for x in row) for row in omega))

    # ---- compartments ------------------------------------------------------------------
    cmt_spec = doc.get("compartments", {})
    structure = meta.get("structure")
    smap: dict[str, str] = {}
    if isinstance(structure, dict):
        smap = {k: str(v) for k, v in structure.items() if k != "name"}
        structure = structure.get("name")
    if structure is not None and structure not in STRUCTURES:
        raise src.error(
            f"unknown structure {structure!r}; closed forms: {', '.join(STRUCTURES)}",
            section="model",
            key="structure",
        )
    if not cmt_spec:
        raise src.error("a card needs [compartments]", section=None)
    cmts, cmt_units, nonneg, initial_txt = [], [], [], []
    for cname, spec in cmt_spec.items():
        spec = spec or {}
        _unknown_keys(
            spec,
            {"unit", "initial", "nonnegative", "description"},
            src,
            "compartments",
            f"compartment {cname}",
        )
        _check_name(cname, src, "compartments", "compartment")
        if cname in pnames or cname in cov_by:
            raise src.error(
                f"{cname} is both a compartment and a parameter or covariate",
                section="compartments",
                key=cname,
                symbol=cname,
            )
        unit = str(spec.get("unit", amount_unit))
        units[cname] = _parse_unit(unit, src, f"compartment {cname}", "compartments", cname)
        cmts.append(cname)
        cmt_units.append(unit)
        nonneg.append(bool(spec.get("nonnegative", True)))
        init = spec.get("initial")
        initial_txt.append(None if init is None else str(init))
    if structure is not None:
        n, oral = STRUCTURES[structure]
        lin = LinearCompartmentModel(n, oral)
        if len(cmts) != lin.n_state:
            raise src.error(
                f"structure {structure} has {lin.n_state} compartments ({', '.join(lin.compartments)}), the card {len(cmts)}",
                section="compartments",
            )
        for sp in lin.parameter_names:
            smap.setdefault(sp, sp)
        bad = set(smap) - set(lin.parameter_names)
        if bad:
            raise src.error(
                f"structure {structure} has no parameter {sorted(bad)[0]!r}", section="model", key="structure"
            )

    # ---- derived quantities --------------------------------------------------------------
    raw_derived: list[tuple[str, Expr, str]] = []
    for dname, spec in doc.get("derived", {}).items():
        _check_name(dname, src, "derived", "derived quantity")
        spec, e = _named_expr(
            spec, src, "derived", dname, {"expr", "unit", "description"}, taken=(pnames, cov_by, cmts)
        )
        raw_derived.append((dname, e, str(spec.get("unit", "")) if "unit" in spec else None))
    dnames = [d[0] for d in raw_derived]
    known_static = set(pnames) | set(cov_by) | set(dnames) | {"t"}
    known_all = known_static | set(cmts)
    for dname, e, _ in raw_derived:
        _check_symbols(e, sorted(known_all), src, "derived", f"derived {dname}")
    order = _toposort({d: e.symbols & set(dnames) for d, e, _ in raw_derived}, src)
    derived_by = {d: (d, e, u) for d, e, u in raw_derived}
    derived = [derived_by[d] for d in order]

    # ---- which names are dynamic (need t, the states or a linear covariate) ----------------
    dynamic = {"t", *cmts} | {c.name for c in covs if c.interpolation != "nocb"}
    for e in effects:
        if e.covariate in dynamic:
            dynamic.add(e.parameter)
    for d, e, _ in derived:
        if e.symbols & dynamic:
            dynamic.add(d)

    # ---- units of derived quantities -------------------------------------------------------
    for d, e, u in derived:
        inferred = _UnitChecker(units, src, f"derived {d}", "derived").infer(e)
        if u is not None:
            declared = _parse_unit(u, src, f"derived {d}", "derived", d)
            if inferred is not None:
                _UnitChecker({}, src, f"derived {d}", "derived").check_equal(declared, inferred, e, d)
            units[d] = declared
        elif inferred is not None:
            units[d] = inferred

    # ---- initial states -------------------------------------------------------------------
    initial: list[Expr | None] = []
    for cname, txt in zip(cmts, initial_txt):
        if txt is None:
            initial.append(None)
            continue
        e = _parse_expr(txt, src, "compartments", f"initial value of {cname}")
        _check_symbols(e, sorted(known_static), src, "compartments", f"initial value of {cname}")
        if e.symbols & dynamic:
            bad = sorted(e.symbols & dynamic)[0]
            raise src.error(
                f"the initial value of {cname} depends on {bad}, which varies in time or with the states",
                needle=txt,
                section="compartments",
                symbol=bad,
            )
        got = _UnitChecker(units, src, f"the initial value of {cname}", "compartments").infer(e)
        if got is not None:
            _UnitChecker({}, src, f"the initial value of {cname}", "compartments").check_equal(
                units[cname], got, e, cname
            )
        initial.append(e)

    # ---- ODEs --------------------------------------------------------------------------
    ode_spec = doc.get("ode")
    ode: tuple[Expr, ...] | None = None
    if ode_spec is not None:
        _unknown_keys(ode_spec, {"equations"}, src, "ode", "[ode]")
        eq_text = _str(ode_spec.get("equations", ""), src, "ode", "equations", "ode.equations")
        rhs: dict[str, Expr] = {}
        for raw in eq_text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if "=" not in line:
                raise src.error(
                    f"ODE line '{line}' must read d/dt(compartment) = expression", needle=line, section="ode"
                )
            lhs, rhs_text = line.split("=", 1)
            try:
                target = parse_ode_lhs(lhs)
            except ExprError as err:
                raise src.error(
                    f"left-hand side '{lhs.strip()}': {err.message}", needle=line, section="ode"
                ) from None
            if target not in cmts:
                raise src.error(
                    f"d/dt({target}): {target!r} is not a compartment",
                    needle=line,
                    section="ode",
                    symbol=target,
                    hint="compartments: " + ", ".join(cmts),
                )
            if target in rhs:
                raise src.error(
                    f"two equations for d/dt({target})", needle=line, section="ode", symbol=target
                )
            e = _parse_expr(rhs_text.strip(), src, "ode", f"d/dt({target})", needle=line)
            _check_symbols(e, sorted(known_all), src, "ode", f"d/dt({target})")
            got = _UnitChecker(units, src, f"d/dt({target})", "ode").infer(e)
            if got is not None:
                want = units[target] / u_time
                _UnitChecker({}, src, f"d/dt({target})", "ode").check_equal(want, got, e, target)
            rhs[target] = e
        missing = [c for c in cmts if c not in rhs]
        if missing:
            raise src.error(
                f"no equation for d/dt({missing[0]})",
                section="ode",
                symbol=missing[0],
                hint="write d/dt(X) = 0 for a constant state",
            )
        ode = tuple(rhs[c] for c in cmts)
    elif structure is None:
        raise src.error("a card needs [ode] equations or a closed-form model.structure", section="model")

    # ---- structure parameters -------------------------------------------------------------
    for sp, sym in smap.items():
        if sym not in known_static:
            raise src.error(
                f"structure parameter {sp} maps to {sym!r}, which is not a parameter or derived quantity",
                section="model",
                key="structure",
                symbol=sym,
            )

    # ---- outputs -----------------------------------------------------------------------
    outputs, out_exprs, errors = [], [], []
    for oname, spec in doc.get("outputs", {}).items():
        _check_name(oname, src, "outputs", "output")
        spec, e = _named_expr(
            spec, src, "outputs", oname, {"expr", "unit", "description", "error"}, taken=(pnames, cmts)
        )
        _check_symbols(e, sorted(known_all), src, "outputs", f"output {oname}")
        unit = str(spec.get("unit", ""))
        want = _parse_unit(unit, src, f"output {oname}", "outputs", oname)
        got = _UnitChecker(units, src, f"output {oname}", "outputs").infer(e)
        if got is not None and "unit" in spec:
            _UnitChecker({}, src, f"output {oname}", "outputs").check_equal(want, got, e, oname)
        err_spec = spec.get("error")
        err = None
        if err_spec is not None:
            _unknown_keys(
                err_spec,
                {"model", "additive", "proportional"},
                src,
                "outputs",
                f"the error of output {oname}",
            )
            kind_e = err_spec.get("model")
            if kind_e not in ERROR_MODELS:
                raise src.error(
                    f"output {oname}: error model must be one of {', '.join(ERROR_MODELS)}, not {kind_e!r}",
                    needle="error",
                    section="outputs",
                )
            try:
                err = ResidualError(
                    kind_e, float(err_spec.get("additive", 0.0)), float(err_spec.get("proportional", 0.0))
                )
            except ValueError as ex:
                raise src.error(f"output {oname}: {ex}", needle="error", section="outputs") from None
        outputs.append(Output(oname, unit, str(spec.get("description", ""))))
        out_exprs.append(e)
        errors.append(err)
    if not outputs:
        raise src.error("a card needs at least one output", section=None)

    # ---- dosing modifiers -------------------------------------------------------------------
    modifiers = []
    for cname, spec in doc.get("dosing", {}).items():
        if cname not in cmts:
            raise src.error(
                f"[dosing.{cname}]: {cname!r} is not a compartment", section=f"dosing.{cname}", symbol=cname
            )
        _unknown_keys(spec, set(_MODIFIER_KEYS), src, f"dosing.{cname}", f"[dosing.{cname}]")
        for key, txt in spec.items():
            kind_m = _MODIFIER_KEYS[key]
            txt = str(txt)
            e = _parse_expr(txt, src, f"dosing.{cname}", f"{key} of {cname}")
            _check_symbols(e, sorted(known_static), src, f"dosing.{cname}", f"{key} of {cname}")
            if e.symbols & dynamic:
                bad = sorted(e.symbols & dynamic)[0]
                raise src.error(
                    f"{key} of {cname} depends on {bad}, which varies within a dosing interval",
                    needle=txt,
                    section=f"dosing.{cname}",
                    symbol=bad,
                )
            modifiers.append((kind_m, cname, f"__{kind_m}_{cname}", e))

    checks = doc.get("checks", {})
    digest = hashlib.sha256(text.encode()).hexdigest()
    return ModelCard(
        path=path,
        digest=digest,
        name=name,
        description=str(meta.get("description", "")),
        kind=kind,
        references=refs,
        time_unit=time_unit,
        amount_unit=amount_unit,
        parameters=tuple(params),
        covariates=tuple(covs),
        effects=tuple(effects),
        variability=variability,
        compartments=tuple(cmts),
        compartment_units=tuple(cmt_units),
        nonnegative=tuple(nonneg),
        initial=tuple(initial),
        derived=tuple(derived),
        ode=ode,
        outputs=tuple(outputs),
        output_exprs=tuple(out_exprs),
        errors=tuple(errors),
        modifiers=tuple(modifiers),
        structure=structure,
        structure_map=tuple(sorted(smap.items())),
        dynamic=frozenset(dynamic),
        checks=checks,
        text=text,
    )


def _named_expr(spec, src, section, name, allowed, taken):
    """A ``[derived]`` or ``[outputs]`` entry: ``"text"`` or ``{expr, ...}`` -> (table, Expr);
    its name must not be one already ``taken`` (parameters, covariates, compartments)."""
    what = {"derived": "derived", "outputs": "output"}[section]
    if isinstance(spec, str):
        spec = {"expr": spec}
    _unknown_keys(spec, allowed, src, section, f"{what} {name}")
    if any(name in t for t in taken):
        raise src.error(
            f"{what} {name} has the name of a parameter, covariate or compartment",
            section=section,
            key=name,
            symbol=name,
        )
    text = _str(spec.get("expr"), src, section, name, f"{what} {name}")
    return spec, _parse_expr(text, src, section, f"{what} {name}")


def _check_name(name, src, section, what):
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name.startswith("__"):
        raise src.error(f"{what} name {name!r} must be an identifier", section=section, key=name, symbol=name)
    if name in _RESERVED or name.startswith("eta_"):
        raise src.error(
            f"{what} name {name!r} is reserved",
            section=section,
            key=name,
            symbol=name,
            hint="t, pi, function names and eta_* are reserved",
        )


def _toposort(deps: Mapping[str, set[str]], src) -> list[str]:
    order, state = [], {}

    def visit(n, stack):
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = " -> ".join([*stack[stack.index(n) :], n])
            raise src.error(
                f"derived quantities depend on each other in a cycle: {cycle}",
                section="derived",
                key=n,
                symbol=n,
            )
        state[n] = 1
        for m in sorted(deps[n]):
            visit(m, [*stack, n])
        state[n] = 2
        order.append(n)

    for n in deps:
        visit(n, [])
    return order


# --------------------------------------------------------------------------------------
# The compiled model
# --------------------------------------------------------------------------------------
def _shape_of(e: Expr) -> tuple[str, list[str]]:
    """An expression's shape (its tree with every symbol blanked) and its symbols in order."""
    names: list[str] = []

    class _Blank(ast.NodeTransformer):
        def visit_Call(self, node):  # the function's own name is not a symbol
            node.args = [self.visit(a) for a in node.args]
            return node

        def visit_Name(self, node):
            if node.id in e.symbols:
                names.append(node.id)
                return ast.Name(id="_", ctx=node.ctx)
            return node

    import copy

    return ast.dump(_Blank().visit(copy.deepcopy(e.tree))), names


@functools.lru_cache(maxsize=256)
def _ode_groups(card: ModelCard):
    """Consecutive ODE equations of one shape, e.g. ``KTR*(A[i-1] - A[i])``, grouped so that
    the vector field evaluates each group once on vectors (fewer, larger XLA operations).

    Returns ``(expr, members, names)`` per group: ``names`` pairs each symbol of ``expr`` with
    the symbol each member has in its place (empty for a lone equation).
    """
    shapes = [_shape_of(e) for e in card.ode]
    groups: list[list[int]] = []
    for i, (shape, _) in enumerate(shapes):
        if groups and shapes[groups[-1][0]][0] == shape:
            groups[-1].append(i)
        else:
            groups.append([i])
    out = []
    for g in groups:
        first = shapes[g[0]][1]
        mapping: dict[str, tuple[str, ...]] = {}
        ok = len(g) > 1
        for pos, name in enumerate(first):
            col = tuple(shapes[i][1][pos] for i in g)
            if mapping.setdefault(name, col) != col:
                ok = False  # one symbol stands for different things: evaluate one by one
        if ok:
            out.append(
                (card.ode[g[0]], tuple(g), tuple((n, c) for n, c in mapping.items() if len(set(c)) > 1))
            )
        else:
            out += [(card.ode[i], (i,), ()) for i in g]
    return tuple(out)


class CardModel(AbstractModel):
    """A model compiled from a card. Static and hashable (by the card's text)."""

    name: str = eqx.field(static=True)
    compartments: tuple[str, ...] = eqx.field(static=True)
    parameters: tuple[Parameter, ...] = eqx.field(static=True)
    outputs: tuple[Output, ...] = eqx.field(static=True)
    amount_unit: str = eqx.field(static=True)
    time_unit: str = eqx.field(static=True)
    card: ModelCard = eqx.field(static=True)

    def __init__(self, card: ModelCard):
        self.card = card
        self.name = card.name
        self.compartments = card.compartments
        self.parameters = card.parameters
        self.outputs = card.outputs
        self.amount_unit = card.amount_unit
        self.time_unit = card.time_unit

    @property
    def covariates(self) -> tuple[Covariate, ...]:
        return self.card.covariates

    @property
    def variability(self) -> Variability:
        return self.card.variability

    @property
    def residual_errors(self) -> dict[str, ResidualError]:
        return {o.name: e for o, e in zip(self.card.outputs, self.card.errors) if e is not None}

    @property
    def input_names(self) -> tuple[str, ...]:
        return (
            *self.parameter_names,
            *(c.name for c in self.card.covariates),
            *self.card.variability.eta_names,
        )

    @property
    def derived_names(self) -> tuple[str, ...]:
        static = tuple(d for d, _, _ in self.card.derived if d not in self.card.dynamic)
        return static + tuple(m[2] for m in self.card.modifiers)

    @property
    def dosing_modifiers(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for kind, cmt, name, _ in self.card.modifiers:
            out.setdefault(kind, {})[cmt] = name
        return out

    def has_closed_form(self) -> bool:
        c = self.card
        return c.structure is not None and not any(sym in c.dynamic for _, sym in c.structure_map)

    @property
    def has_ode(self) -> bool:
        return self.card.ode is not None

    @property
    def has_initial_state(self) -> bool:
        return any(e is not None for e in self.card.initial)

    @property
    def _linear(self) -> LinearCompartmentModel | None:
        if self.card.structure is None:
            return None
        n, oral = STRUCTURES[self.card.structure]
        return LinearCompartmentModel(n, oral)

    # ---- evaluation ------------------------------------------------------------------
    def _individual(self, name: str, env: Mapping, p: Mapping):
        pop = p[f"__pop_{name}"] if f"__pop_{name}" in p else p[name]
        v = jnp.asarray(pop, float)
        for e in self.card.effects:
            if e.parameter == name:
                # An estimated coefficient arrives as "__beta_<PARAM>_<COV>" (twinrx.infer).
                v = v * e.factor(env[e.covariate], p.get(f"__{e.key}"))
        if name in self.card.variability.parameters:
            v = v * jnp.exp(jnp.asarray(p.get(f"eta_{name}", 0.0), float))
        return v

    def individual_values(self, p: Mapping[str, Any]) -> dict[str, Any]:
        """Each parameter's individual value ``typical x covariate effects x exp(eta)``
        for the user's inputs ``p`` (population values, covariates, ``eta_<P>``)."""
        p = {**{par.name: par.value for par in self.card.parameters}, **p}
        env = {cov.name: jnp.asarray(p.get(cov.name, cov.reference), float) for cov in self.card.covariates}
        return {par.name: self._individual(par.name, env, p) for par in self.card.parameters}

    def prepare(self, p: Mapping[str, Any]) -> dict[str, Any]:
        c = self.card
        dyn = c.dynamic
        # Inputs the card does not define pass through: helpers, and parameters that a
        # simulate-time dosing modifier names (bioav={"depot": "F"}).
        env: dict[str, Any] = dict(p)
        for cov in c.covariates:
            env[cov.name] = jnp.asarray(p.get(cov.name, cov.reference), float)
        for par in c.parameters:
            if par.name in dyn:  # evaluated in the vector field: keep its inputs
                env[f"__pop_{par.name}"] = jnp.asarray(p[par.name], float)
                if par.name in c.variability.parameters:
                    env[f"eta_{par.name}"] = jnp.asarray(p.get(f"eta_{par.name}", 0.0), float)
            else:
                env[par.name] = self._individual(par.name, env, p)
        for d, e, _ in c.derived:
            if d not in dyn:
                env[d] = e(env)
        for _, _, mname, e in c.modifiers:
            env[mname] = e(env)
        # Keep what the solver needs: fewer arrays carried through its loops.
        inputs = set(self.input_names)
        return {k: v for k, v in env.items() if k in self._needed or k not in inputs}

    @property
    def _needed(self) -> frozenset[str]:
        """Names the vector field, outputs, initial state and closed form read from the
        prepared parameters."""
        c = self.card
        exprs = [*c.output_exprs, *(e for e in c.initial if e is not None)]
        exprs += [e for d, e, _ in c.derived if d in c.dynamic]
        exprs += list(c.ode or ())
        names = set().union(*(e.symbols for e in exprs)) if exprs else set()
        names |= {sym for _, sym in c.structure_map}
        for par in c.parameters:
            if par.name in c.dynamic:
                names |= {f"__pop_{par.name}", f"eta_{par.name}"}
                names |= {e.covariate for e in c.effects if e.parameter == par.name}
        names |= {m[2] for m in c.modifiers}
        return frozenset(names)

    def _dynamic_env(self, t, y, q):
        c = self.card
        env = dict(q)
        env["t"] = t
        for i, cm in enumerate(c.compartments):
            env[cm] = y[i]
        for cov in c.covariates:
            if cov.interpolation == "linear":
                env[cov.name] = _interp(t, q, cov.name)
            elif cov.interpolation == "locf":
                # Within (t[i-1], t[i]] the value of record i-1; after the last record, its own.
                env[cov.name] = jnp.where(t > q.get("__trec", -jnp.inf), q[cov.name], q[f"__prev_{cov.name}"])
        for par in c.parameters:
            if par.name in c.dynamic:
                env[par.name] = self._individual(par.name, env, q)
        for d, e, _ in c.derived:
            if d in c.dynamic:
                env[d] = e(env)
        return env

    def vector_field(self, t, y, p, rate):
        c = self.card
        if c.ode is None:
            return self._linear.vector_field(t, y, self._structure_params(p), rate)
        env = self._dynamic_env(t, y, p)
        parts = []
        for expr, members, names in _ode_groups(c):
            if len(members) == 1:
                parts.append(jnp.broadcast_to(expr(env), (1,)))
                continue
            # Equations with one shape (a transit chain) evaluated once, on vectors.
            genv = dict(env)
            for name, per_member in names:
                genv[name] = jnp.stack([jnp.broadcast_to(env[m], ()) for m in per_member])
            parts.append(jnp.broadcast_to(expr(genv), (len(members),)))
        return (parts[0] if len(parts) == 1 else jnp.concatenate(parts)) + rate

    def observe(self, t, y, p):
        env = self._dynamic_env(t, y, p)
        return {o.name: e(env) for o, e in zip(self.card.outputs, self.card.output_exprs)}

    def initial_state(self, p):
        return jnp.stack(
            [jnp.asarray(0.0) if e is None else jnp.broadcast_to(e(p), ()) for e in self.card.initial]
        )

    def _structure_params(self, q):
        return {sp: q[sym] for sp, sym in self.card.structure_map}

    def closed_form_system(self, q):
        return self._linear.closed_form_system(self._structure_params(q))

    def system_matrix(self, p):
        """The matrix of the closed-form structure for the user's inputs ``p``."""
        if self._linear is None:
            raise AttributeError(f"model {self.name!r} has no linear structure")
        return self._linear.system_matrix(self._structure_params(self.prepare(p)))

    # ---- host side -------------------------------------------------------------------
    def host_inputs(self, params: Mapping, record_times) -> dict:
        out = dict(params)
        covariates = self.card.covariates
        if not any(c.name in out for c in covariates) and all(c.interpolation == "nocb" for c in covariates):
            return out  # nothing to encode or interpolate
        rt = jnp.asarray(record_times, float)
        interpolated = [c for c in covariates if c.interpolation != "nocb"]
        for cov in interpolated:  # helpers: the previous record's value (and time)
            if cov.name not in out:
                out[f"__prev_{cov.name}"] = cov.reference
                out[f"__tprev_{cov.name}"] = 0.0
        any_per_record = False
        for cov in self.card.covariates:
            if cov.name not in out:
                continue
            v = cov.encode(out[cov.name])
            per_record = jnp.ndim(v) == rt.ndim and jnp.ndim(v) > 0 and jnp.shape(v)[-1] == rt.shape[-1]
            if per_record:
                any_per_record |= cov.interpolation != "nocb"
                v = _fill_missing(v, np.asarray(rt) if _concrete(rt) else None, cov)
                if cov.interpolation != "nocb":
                    out[f"__prev_{cov.name}"] = jnp.concatenate([v[..., :1], v[..., :-1]], axis=-1)
                    out[f"__tprev_{cov.name}"] = jnp.concatenate([rt[..., :1], rt[..., :-1]], axis=-1)
            elif cov.interpolation != "nocb":
                out[f"__prev_{cov.name}"] = v
                out[f"__tprev_{cov.name}"] = 0.0
            out[cov.name] = v
        if interpolated:
            # Record times only when an interpolated covariate varies; else constants keep
            # the solver on its fast path (nothing per record).
            out["__trec"] = rt if any_per_record else -np.inf
        return out


def _interp(t, q, name):
    """Linear interpolation of a covariate between the records around ``t``."""
    v, prev, tprev, trec = q[name], q[f"__prev_{name}"], q[f"__tprev_{name}"], q.get("__trec", 1.0)
    span = trec - tprev
    frac = jnp.where(span > 0, jnp.clip((t - tprev) / jnp.where(span > 0, span, 1.0), 0.0, 1.0), 1.0)
    return prev + frac * (v - prev)


def _concrete(x) -> bool:
    try:
        np.asarray(x)
        return True
    except Exception:
        return False


def _fill_missing(v, rt, cov: Covariate):
    """NaN in a per-record covariate: filled by the covariate's own interpolation rule
    from the records that have a value (host side; traced values pass unchanged)."""
    if rt is None or not _concrete(v):
        return v
    arr = np.array(v, float)
    if not np.isnan(arr).any():
        return v
    rows = arr.reshape(-1, arr.shape[-1])
    times = np.broadcast_to(rt, arr.shape).reshape(-1, arr.shape[-1])
    for i, (row, tt) in enumerate(zip(rows, times)):
        ok = ~np.isnan(row)
        if not ok.any():
            raise ValueError(
                f"covariate {cov.name}: no record has a value"
                + (f" (patient {i + 1})" if rows.shape[0] > 1 else "")
                + "; give at least one, or leave the column out to use the reference value"
            )
        idx = np.nonzero(ok)[0]
        if cov.interpolation == "linear":
            rows[i] = np.interp(tt, tt[idx], row[idx])
        elif cov.interpolation == "locf":
            pos = np.searchsorted(idx, np.arange(len(row)), side="right") - 1
            rows[i] = row[idx[np.maximum(pos, 0)]]
        else:  # nocb
            pos = np.searchsorted(idx, np.arange(len(row)), side="left")
            rows[i] = row[idx[np.minimum(pos, len(idx) - 1)]]
    return rows.reshape(arr.shape)


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _load_cached(path: str, mtime: float) -> CardModel:
    text = Path(path).read_text(encoding="utf-8")
    return CardModel(parse_card(text, path))


def load_card(path: str | Path) -> CardModel:
    """Compile the card at ``path`` (cached while the file is unchanged)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no model card at {p}")
    return _load_cached(str(p), p.stat().st_mtime)


def from_text(text: str, path: str | None = None) -> CardModel:
    """Compile a card from its TOML text."""
    return CardModel(parse_card(text, path))
