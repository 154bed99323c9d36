"""twinrx.model.expr: safe parsing of model-card expressions and their compilation to JAX."""

from __future__ import annotations

import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

import twinrx  # noqa: F401  (enables x64)
from twinrx.model.expr import FUNCTIONS, Expr, ExprError, parse_ode_lhs


def ev(text: str, **env: float) -> float:
    return float(Expr.parse(text)(env))


# -- arithmetic and precedence ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-2^2", -(2.0**2)),
        ("-2**2", -4.0),
        ("2^3^2", 2.0 ** (3.0**2)),
        ("(2^3)^2", 64.0),
        ("1 + 2*3", 7.0),
        ("(1 + 2)*3", 9.0),
        ("7/2", 3.5),
        ("1 - 2 - 3", -4.0),
        ("8/4/2", 1.0),
        ("2^-1", 0.5),
        ("+3 - -2", 5.0),
        ("1e-3 + .5 + 2.", 2.501),
        ("2*pi", 2 * math.pi),
        ("(-2)^3", -8.0),
        ("(-8)^(1/3)", 0.0),  # a base <= 0 counts as zero in a non-integer power (Hill terms)
    ],
)
def test_arithmetic_constants(text: str, expected: float) -> None:
    got = ev(text)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, rel=1e-15)


def test_numbers_are_float64() -> None:
    assert Expr.parse("1")({}).dtype == jnp.float64
    assert Expr.parse("x + 1")({"x": np.int32(2)}).dtype == jnp.float64
    assert Expr.parse("7/2")().dtype == jnp.float64


def test_model_card_expressions() -> None:
    env = {"ka": 1.3, "depot": 10.0, "cl": 2.5, "v1": 30.0, "central": 4.0}
    assert ev("ka*depot - cl/v1*central", **env) == pytest.approx(1.3 * 10.0 - 2.5 / 30.0 * 4.0, rel=1e-15)
    env = {"emax": 100.0, "c": 3.0, "gamma": 1.7, "ec50": 5.0}
    expected = 100.0 * 3.0**1.7 / (5.0**1.7 + 3.0**1.7)
    assert ev("emax*c^gamma/(ec50^gamma + c^gamma)", **env) == pytest.approx(expected, rel=1e-14)


def test_negative_base_integer_power_and_gradient() -> None:
    f = Expr.parse("(x - 1)^2 + (x - 1)^-1").compile()
    x = -0.5
    assert float(f({"x": x})) == pytest.approx((x - 1) ** 2 + 1 / (x - 1), rel=1e-15)
    g = jax.grad(lambda x: f({"x": x}))(x)
    assert float(g) == pytest.approx(2 * (x - 1) - 1 / (x - 1) ** 2, rel=1e-14)


def test_division_by_zero_is_ieee() -> None:
    assert ev("1/x", x=0.0) == math.inf
    assert math.isnan(ev("x/x", x=0.0))


# -- functions ----------------------------------------------------------------------------------

UNARY = {
    "exp": np.exp,
    "log": np.log,
    "log10": np.log10,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "tanh": np.tanh,
    "floor": np.floor,
    "ceil": np.ceil,
    "expit": scipy.special.expit,
    "logit": scipy.special.logit,
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_functions(name: str) -> None:
    x = np.array([0.05, 0.3, 0.5, 0.77, 0.999])
    if name not in {"log", "log10", "sqrt", "logit"}:
        x = np.concatenate([x, -x, [0.0, 2.5, -3.7]])
    got = np.asarray(Expr.parse(f"{name}(x)")({"x": x}))
    np.testing.assert_allclose(got, UNARY[name](x), rtol=1e-14, atol=0)


def test_every_function_is_tested() -> None:
    assert set(FUNCTIONS) == set(UNARY) | {"pow", "min", "max", "if", "where", "ifelse"}


def test_pow_min_max() -> None:
    a = np.array([0.5, 2.0, 3.0, -1.0])
    b = np.array([1.5, 1.0, 3.0, 4.0])
    c = np.array([1.0, 0.0, 5.0, -2.0])
    env = {"a": a, "b": b, "c": c}
    np.testing.assert_allclose(Expr.parse("pow(b, a)")(env), np.power(b, a), rtol=1e-15)
    np.testing.assert_array_equal(Expr.parse("min(a, b)")(env), np.minimum(a, b))
    np.testing.assert_array_equal(Expr.parse("max(a, b)")(env), np.maximum(a, b))
    np.testing.assert_array_equal(Expr.parse("min(a, b, c)")(env), np.minimum(np.minimum(a, b), c))
    np.testing.assert_array_equal(Expr.parse("max(a, b, c, 0)")(env), np.max([a, b, c, 0 * a], axis=0))


@pytest.mark.parametrize("fn", ["if", "where", "ifelse"])
def test_conditionals(fn: str) -> None:
    g = np.array([1.0, 2.0, 3.0, 2.0])
    got = Expr.parse(f"{fn}(genotype == 2, 0.5, 1.0)")({"genotype": g})
    np.testing.assert_array_equal(got, np.where(g == 2, 0.5, 1.0))
    # integer env values work too, and a space before the parenthesis is allowed
    got = Expr.parse(f"{fn} (genotype == 2, x, -x)")({"genotype": np.array([2, 3]), "x": 4.0})
    np.testing.assert_array_equal(got, [4.0, -4.0])


def test_if_rewrite_is_whole_word_only() -> None:
    e = Expr.parse("elif_ + if(x > 0, 1, 2) + diff")
    assert e.symbols == {"elif_", "x", "diff"}
    assert e.functions == {"if"}
    assert float(e({"elif_": 10.0, "x": 1.0, "diff": 100.0})) == 111.0


def test_nested_if() -> None:
    e = Expr.parse("if(x < 0, -1, if(x == 0, 0, 1))")
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(e({"x": x}), np.sign(x))


# -- comparisons and booleans -------------------------------------------------------------------


@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "==", "!="])
def test_comparisons(op: str) -> None:
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([2.0, 2.0, 2.0])
    expected = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b, "!=": a != b}[op]
    got = Expr.parse(f"a {op} b")({"a": a, "b": b})
    assert got.dtype == jnp.bool_
    np.testing.assert_array_equal(got, expected)


def test_chained_comparison() -> None:
    x = np.array([-1.0, 0.0, 0.5, 1.0, 2.0])
    np.testing.assert_array_equal(Expr.parse("0 < x < 1")({"x": x}), (0 < x) & (x < 1))
    np.testing.assert_array_equal(Expr.parse("0 <= x <= 1 != x")({"x": x}), (0 <= x) & (x <= 1) & (x != 1))


def test_boolean_operators() -> None:
    a = np.array([True, True, False, False])
    b = np.array([True, False, True, False])
    env = {"a": a.astype(float), "b": b.astype(float)}
    np.testing.assert_array_equal(Expr.parse("a > 0 and b > 0")(env), a & b)
    np.testing.assert_array_equal(Expr.parse("a > 0 or b > 0")(env), a | b)
    np.testing.assert_array_equal(Expr.parse("not a > 0")(env), ~a)
    np.testing.assert_array_equal(Expr.parse("a > 0 and b > 0 or not a > 0")(env), (a & b) | ~a)


def test_booleans_in_arithmetic_count_as_0_1() -> None:
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(Expr.parse("(x > 0) - (x < 0)")({"x": x}), np.sign(x))
    np.testing.assert_array_equal(Expr.parse("-(x > 0)")({"x": x}), -(x > 0).astype(float))


# -- symbols, functions, check ------------------------------------------------------------------


def test_symbols_and_functions() -> None:
    e = Expr.parse("tvcl * (wt/70)^0.75 * exp(eta_cl) + if(g == 2, max(a, pi), 0)")
    assert e.text == "tvcl * (wt/70)^0.75 * exp(eta_cl) + if(g == 2, max(a, pi), 0)"
    assert e.symbols == frozenset({"tvcl", "wt", "eta_cl", "g", "a"})
    assert e.functions == frozenset({"exp", "if", "max"})
    assert isinstance(e.symbols, frozenset) and isinstance(e.functions, frozenset)


def test_check_names_first_unknown_symbol_with_column_and_hint() -> None:
    e = Expr.parse("ka*kk")
    e.check(["ka", "kk"])
    with pytest.raises(ExprError) as info:
        e.check(["ka", "ke", "cl"])
    err = info.value
    assert err.symbol == "kk"
    assert err.col == 3 == "ka*kk".index("kk")
    assert err.expr == "ka*kk"
    assert "unknown symbol 'kk' at column 3 in 'ka*kk'" in str(err)
    assert "'ke'" in str(err) and "did you mean" in str(err)
    assert "\n" not in str(err)


def test_check_column_counts_original_text() -> None:
    text = "  x^2^y + if(a, b, zz)"  # `^` -> `**` and `if` -> `__if__` shift the parsed text
    with pytest.raises(ExprError) as info:
        Expr.parse(text).check(["x", "y", "a", "b"])
    assert info.value.symbol == "zz"
    assert info.value.col == text.index("zz")
    with pytest.raises(ExprError) as info:
        Expr.parse("θ + ω").check(["θ"])  # non-ASCII: ast columns are UTF-8 bytes
    assert info.value.col == 4


def test_check_leftmost_first() -> None:
    with pytest.raises(ExprError) as info:
        Expr.parse("exp(b) + a * c").check(["a"])
    assert info.value.symbol == "b"
    assert info.value.col == 4


def test_missing_env_symbol() -> None:
    with pytest.raises(ExprError, match="'cll' missing from env"):
        Expr.parse("cll/v")({"cl": 1.0, "v": 2.0})


def test_error_pickles() -> None:
    err = ExprError("unknown symbol 'q'", "a+q", symbol="q", col=2, hint="did you mean 'a'?")
    back = pickle.loads(pickle.dumps(err))
    assert (back.expr, back.symbol, back.col, str(back)) == ("a+q", "q", 2, str(err))


# -- rejection of unsafe or invalid input -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "col"),
    [
        ("__import__('os')", 0),
        ("__import__('os').system('true')", 0),
        ("a.b", 0),
        ("exp(x).real", 0),
        ("a[0]", 0),
        ("lambda x: x", 0),
        ("[x for x in y]", 0),
        ("(x for x in y)", 0),
        ("f'{x}'", 0),
        ("exp(x=1)", 4),
        ("max(*xs)", 4),
        ('"str"', 0),
        ("1 + 'str'", 4),
        ("foo(x)", 0),
        ("eval('1')", 0),
        ("x + __class__", 4),
        ("__if__(1, 2, 3)", 0),
        ("(a)(b)", 1),
        ("a if b else c", 0),
        ("(a := 1)", 1),
        ("a in b", 0),
        ("a is b", 0),
        ("a // b", 0),
        ("a % b", 0),
        ("a & b", 0),
        ("~a", 0),
        ("True + 1", 0),
        ("None", 0),
        ("1j", 0),
        ("[1, 2]", 0),
        ("{'a': 1}", 0),
        ("exp(1, 2)", 0),
        ("pow(1)", 0),
        ("min(x)", 0),
        ("if(a, b)", 0),
    ],
)
def test_rejects_unsafe_or_unsupported(text: str, col: int) -> None:
    with pytest.raises(ExprError) as info:
        Expr.parse(text)
    assert info.value.col == col
    assert info.value.expr == text


def test_unknown_function_hint() -> None:
    with pytest.raises(ExprError, match="unknown function 'expp'.*did you mean 'exp'") as info:
        Expr.parse("1 + expp(x)")
    assert info.value.symbol == "expp"
    assert info.value.col == 4


@pytest.mark.parametrize(
    ("text", "col"),
    [("a +", 3), ("a b", 2), ("(a + b", 0), ("a + )", 4), ("exp(", 3), ("a = 1", None), ("2^^3", None)],
)
def test_syntax_errors_have_a_column(text: str, col: int | None) -> None:
    with pytest.raises(ExprError, match="syntax error") as info:
        Expr.parse(text)
    assert info.value.col is not None
    assert 0 <= info.value.col <= len(text)
    if col is not None:
        assert info.value.col == col


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty(text: str) -> None:
    with pytest.raises(ExprError, match="empty"):
        Expr.parse(text)


def test_non_string_and_pathological_input() -> None:
    with pytest.raises(ExprError):
        Expr.parse(3)  # type: ignore[arg-type]
    with pytest.raises(ExprError):
        Expr.parse("a\x00b")
    with pytest.raises(ExprError):
        Expr.parse("-" * 100_000 + "x")
    assert ev("-" * 50 + "x", x=2.0) == 2.0


def test_multiline_text_inside_parentheses() -> None:
    e = Expr.parse("(a +\n b)")
    assert float(e({"a": 1.0, "b": 2.0})) == 3.0


def test_error_is_value_error() -> None:
    assert issubclass(ExprError, ValueError)


# -- JAX transformations ------------------------------------------------------------------------


def test_jit_and_vmap() -> None:
    f = Expr.parse("tvcl * (wt/70)^0.75 * exp(eta) + if(wt > 80, 1, 0)").compile()
    wt = np.array([50.0, 70.0, 90.0, 120.0])
    eta = np.array([-0.2, 0.0, 0.1, 0.3])
    expected = 2.0 * (wt / 70) ** 0.75 * np.exp(eta) + (wt > 80)
    env = {"tvcl": 2.0, "wt": wt, "eta": eta}
    np.testing.assert_allclose(jax.jit(f)(env), expected, rtol=1e-14)
    vm = jax.vmap(f, in_axes=({"tvcl": None, "wt": 0, "eta": 0},))
    np.testing.assert_allclose(vm(env), expected, rtol=1e-14)
    per_patient = jax.jit(jax.vmap(lambda w, e: f({"tvcl": 2.0, "wt": w, "eta": e})))
    np.testing.assert_allclose(per_patient(wt, eta), expected, rtol=1e-14)


def test_grad_matches_analytic() -> None:
    f = Expr.parse("tvcl*(wt/70)^0.75*exp(eta)").compile()
    tvcl, wt, eta = 3.1, 82.0, 0.25
    grads = jax.grad(lambda env: f(env))({"tvcl": tvcl, "wt": wt, "eta": eta})
    value = tvcl * (wt / 70) ** 0.75 * math.exp(eta)
    assert float(grads["tvcl"]) == pytest.approx(value / tvcl, rel=1e-14)
    assert float(grads["wt"]) == pytest.approx(0.75 * value / wt, rel=1e-14)
    assert float(grads["eta"]) == pytest.approx(value, rel=1e-14)


def test_grad_through_division_power_and_where() -> None:
    f = Expr.parse("emax*c^gamma/(ec50^gamma + c^gamma) + if(c > 10, c, 0)").compile()
    emax, c, gamma, ec50 = 100.0, 3.0, 1.7, 5.0

    def g(c: float) -> jax.Array:
        return f({"emax": emax, "c": c, "gamma": gamma, "ec50": ec50})

    expected = emax * gamma * c ** (gamma - 1) * ec50**gamma / (ec50**gamma + c**gamma) ** 2
    assert float(jax.grad(g)(c)) == pytest.approx(expected, rel=1e-13)
    assert float(jax.grad(g)(12.0)) == pytest.approx(
        emax * gamma * 12.0 ** (gamma - 1) * ec50**gamma / (ec50**gamma + 12.0**gamma) ** 2 + 1.0, rel=1e-13
    )


def test_compile_is_cached_and_call_matches() -> None:
    e = Expr.parse("a + 1")
    assert e.compile() is e.compile()
    assert float(e({"a": 1.0})) == float(e.compile()({"a": 1.0})) == 2.0
    assert e == Expr.parse("a + 1") and hash(e) == hash(Expr.parse("a + 1"))
    assert repr(e) == "Expr('a + 1')"


# -- randomized property ------------------------------------------------------------------------

positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(a=positive, b=positive, p=st.floats(min_value=-3.0, max_value=3.0))
def test_power_exp_log_property(a: float, b: float, p: float) -> None:
    got = float(Expr.parse("a^p * exp(-b/100) + log(a*b) - sqrt(b)/a")({"a": a, "b": b, "p": p}))
    expected = np.power(a, p) * np.exp(-b / 100) + np.log(a * b) - np.sqrt(b) / a
    scale = np.power(a, p) * np.exp(-b / 100) + abs(np.log(a * b)) + np.sqrt(b) / a
    assert abs(got - expected) <= 1e-12 * scale


@settings(max_examples=100, deadline=None)
@given(
    x=st.floats(-50, 50, allow_subnormal=False),  # XLA on CPU flushes subnormals to zero
    lo=st.floats(-10, 0, allow_subnormal=False),
    hi=st.floats(0, 10, allow_subnormal=False),
)
def test_clamp_property(x: float, lo: float, hi: float) -> None:
    got = float(Expr.parse("min(max(x, lo), hi)")({"x": x, "lo": lo, "hi": hi}))
    assert got == min(max(x, lo), hi)
    inside = bool(Expr.parse("lo <= x <= hi")({"x": x, "lo": lo, "hi": hi}))
    assert inside == (lo <= x <= hi)


# -- ODE left-hand sides ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("d/dt(depot)", "depot"),
        ("d/dt (central)", "central"),
        ("  d/dt( c_1 ) ", "c_1"),
        ("d / dt(x)", "x"),
        ("dcentral/dt", "central"),
        ("ddepot/dt", "depot"),
        ("dA1 / dt", "A1"),
    ],
)
def test_parse_ode_lhs(text: str, name: str) -> None:
    assert parse_ode_lhs(text) == name


@pytest.mark.parametrize(
    "text", ["d/dt", "d/dt()", "depot", "d/dx(depot)", "d/dt(a+b)", "d/dt(__x__)", "d/dt(if)", "d/dt depot"]
)
def test_parse_ode_lhs_invalid(text: str) -> None:
    with pytest.raises(ExprError):
        parse_ode_lhs(text)
