"""Equivalences and properties of the simulator (issue acceptance point 7).

Every test states one thing two independent ways and checks that twinrx agrees with itself
across code paths (ADDL vs explicit records, SS vs many doses, closed form vs ODE) or with a
reference that does not use twinrx (scipy's solve_ivp of the hand-written ODE, mass
balance, central finite differences).

Compile time dominates: each distinct array shape recompiles the solver. Regimens are
therefore padded to a few fixed shapes (``EventTable.pad``) and outputs use fixed grids, so
that all hypothesis examples of a test share one compilation.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import twinrx
from twinrx import EventTable

MODELS = ["one_cpt_iv", "one_cpt_oral", "two_cpt_iv", "two_cpt_oral", "three_cpt_iv", "three_cpt_oral"]
SOLVERS = ["closed_form", "ode"]
# A tight ODE: differences from the closed form are then the closed form's own error.
ODE = {"rtol": 1e-10, "atol": 1e-12, "max_steps": 100_000}
ODE_ATOL = 1e-10  # absolute amount (mg) added to bounds wherever an ODE solution is compared
# Fixed padded shape of random regimens: records, dose instances, steady-state records.
R_PAD, M_PAD = 6, 6
GRID = np.linspace(0.0, 96.0, 65)
TYPICAL_2CPT_ORAL = {"CL": 5.0, "V1": 50.0, "Q": 10.0, "V2": 100.0, "KA": 1.0}

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_RANGES = {
    "CL": (0.1, 50.0),
    "V": (1.0, 500.0),
    "V1": (1.0, 500.0),
    "V2": (1.0, 500.0),
    "V3": (1.0, 500.0),
    "Q": (0.1, 50.0),
    "Q2": (0.1, 50.0),
    "Q3": (0.1, 50.0),
    "KA": (0.05, 10.0),
}


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log(lo), math.log(hi)).map(math.exp)


def nonneg(hi: float) -> st.SearchStrategy[float]:
    # No subnormals: XLA on CPU flushes them to zero, so a dose at 1e-310 h is at 0 h.
    return st.floats(0.0, hi, allow_subnormal=False)


def params_for(model, ranges=None) -> st.SearchStrategy[dict[str, float]]:
    ranges = {**_RANGES, **(ranges or {})}
    return st.fixed_dictionaries({k: log_uniform(*ranges[k]) for k in model.parameter_names})


def table(recs, *, R=R_PAD, M=M_PAD, S=0, max_ss_overlap=None) -> EventTable:
    """Records ``(time, evid, amt, cmt, rate, ss, ii, addl)`` -> a table padded to (R, M, S)."""
    cols = np.array(recs, dtype=float).reshape(-1, 8).T
    t, evid, amt, cmt, rate, ss, ii, addl = cols
    ev = EventTable.from_records(
        t, evid, amt, cmt, rate=rate, ss=ss, ii=ii, addl=addl, max_ss_overlap=max_ss_overlap
    )
    return ev.pad(R, M, S)


def dose(t, amt, cmt, rate=0.0, *, ss=0, ii=0.0, addl=0, evid=1):
    return (t, evid, amt, cmt, rate, ss, ii, addl)


@st.composite
def regimens(draw, n_cmt: int, n_max: int = 4, t_step: float | None = None):
    """A few bolus or infusion doses into any compartment at increasing (maybe equal) times.

    With ``t_step``, times and infusion durations are multiples of it.
    """
    n = draw(st.integers(1, n_max))
    if t_step is None:
        t = draw(nonneg(6.0))
        gaps = st.one_of(st.just(0.0), st.floats(0.1, 24.0))
        durations = st.floats(0.1, 24.0)
    else:
        t = t_step * draw(st.integers(0, int(6 / t_step)))
        gaps = st.integers(0, int(6 / t_step)).map(lambda k: k * t_step)
        durations = st.integers(1, int(12 / t_step)).map(lambda k: k * t_step)
    recs = []
    for _ in range(n):
        amt = draw(log_uniform(1.0, 1000.0))
        cmt = draw(st.integers(1, n_cmt))
        rate = amt / draw(durations) if draw(st.booleans()) else 0.0
        recs.append(dose(t, amt, cmt, rate))
        t += draw(gaps)
    return recs


def run(model, p, ev, times, solver, **kw):
    """(amounts, CP) as numpy arrays; the status must be success."""
    tol = ODE if solver == "ode" else {}
    amounts, outputs, status = twinrx.simulate_arrays(model, p, ev, times, solver=solver, **(tol | kw))
    assert int(status) == 0, twinrx.status_message(int(status))
    return np.asarray(amounts), np.asarray(outputs["CP"])


def assert_states_close(actual, desired, rtol, floor=1e-4, atol=0.0):
    """Elementwise relative ``rtol``; amounts far below the peak of all of them (by the factor
    ``floor``) are compared absolutely, to ``rtol * floor * peak``, and ``atol`` is added to
    the bound: an ODE solver's absolute tolerance makes relative errors of tiny amounts
    meaningless (doses are >= 1 mg here, so ODE_ATOL is at most 1e-10 of any dose)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert np.all(np.isfinite(actual))
    peak = np.max(np.abs(desired))
    err = np.abs(actual - desired)
    bound = rtol * np.maximum(np.abs(desired), floor * peak) + atol + 1e-300
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), (
        f"max error/bound {np.max(err / bound):.3g} at {worst}: {actual[worst]!r} vs {desired[worst]!r}"
    )


# --------------------------------------------------------------------------------------
# 1. ADDL = explicit dose records
# --------------------------------------------------------------------------------------
@pytest.mark.slow
@FEW
@given(
    n_addl=st.integers(1, 4),
    ii=st.floats(0.5, 24.0),
    t0=nonneg(6.0),
    amt=log_uniform(1.0, 1000.0),
    infusion_duration=st.one_of(st.just(0.0), st.floats(0.1, 2.5)),  # in units of II: overlaps
    cmt=st.integers(1, 3),
    other=st.tuples(nonneg(100.0), log_uniform(1.0, 1000.0), st.integers(1, 3)),
)
def test_addl_equals_explicit_doses(n_addl, ii, t0, amt, infusion_duration, cmt, other):
    m = twinrx.get_model("two_cpt_oral")
    rate = amt / (infusion_duration * ii) if infusion_duration else 0.0
    # Another, explicit dose somewhere in (or after) the ADDL span, on another compartment.
    t_other, amt_other, cmt_other = t0 + other[0], other[1], other[2]
    addl = [dose(t0, amt, cmt, rate, ii=ii, addl=n_addl), dose(t_other, amt_other, cmt_other)]
    explicit = [dose(t0 + k * ii, amt, cmt, rate) for k in range(n_addl + 1)]
    explicit = sorted([*explicit, dose(t_other, amt_other, cmt_other)], key=lambda r: r[0])
    times = t0 + np.linspace(0.0, 120.0, 49)
    for solver in SOLVERS:
        a_addl, cp_addl = run(m, TYPICAL_2CPT_ORAL, table(addl), times, solver)
        a_expl, cp_expl = run(m, TYPICAL_2CPT_ORAL, table(explicit), times, solver)
        tol = {"rtol": 1e-10} if solver == "closed_form" else {"rtol": 1e-7, "atol": ODE_ATOL}
        assert_states_close(a_addl, a_expl, **tol)
        assert_states_close(cp_addl[:, None], cp_expl[:, None], **tol)


# --------------------------------------------------------------------------------------
# 2. Back-to-back infusions = one long infusion
# --------------------------------------------------------------------------------------
@pytest.mark.slow
@FEW
@given(
    t0=nonneg(6.0),
    rate=log_uniform(0.5, 200.0),
    d=st.lists(st.floats(0.05, 30.0), min_size=2, max_size=3),
    cmt=st.integers(1, 3),
)
def test_consecutive_infusions_equal_one_long_infusion(t0, rate, d, cmt):
    m = twinrx.get_model("two_cpt_oral")
    starts = t0 + np.concatenate([[0.0], np.cumsum(d)[:-1]])
    pieces = [dose(s, rate * di, cmt, rate) for s, di in zip(starts, d)]
    one = [dose(t0, rate * sum(d), cmt, rate)]
    times = t0 + np.linspace(0.0, 120.0, 49)
    for solver in SOLVERS:
        a_pieces, _ = run(m, TYPICAL_2CPT_ORAL, table(pieces), times, solver)
        a_one, _ = run(m, TYPICAL_2CPT_ORAL, table(one), times, solver)
        tol = {"rtol": 1e-10} if solver == "closed_form" else {"rtol": 1e-7, "atol": ODE_ATOL}
        assert_states_close(a_pieces, a_one, **tol)


# --------------------------------------------------------------------------------------
# 3. Steady state = the limit of many repeated doses
# --------------------------------------------------------------------------------------
SS_N = 301  # doses in the reference; II >= 6 h, so >= 1800 h >> 1 / (terminal rate 0.027/h)
SS_GRID = np.linspace(0.0, 2.0, 17)  # in units of II after the steady-state record
SS_TOL = {"closed_form": {"rtol": 1e-8}, "ode": {"rtol": 1e-6, "atol": ODE_ATOL}}


def ss_table(recs) -> EventTable:
    """All tables with steady-state records share one shape (and so one compilation)."""
    return table(recs, R=3, M=3, S=1, max_ss_overlap=8)


def run_ss(ev, times, solver, lag=0.0, params=TYPICAL_2CPT_ORAL):
    """two_cpt_oral with a lag time on depot and central (0 or not: one compilation)."""
    m = twinrx.get_model("two_cpt_oral")
    return run(m, params, ev, times, solver, lag={"depot": lag, "central": lag})


@pytest.mark.slow
@pytest.mark.parametrize("solver", SOLVERS)
@FEW
@given(
    ii=st.floats(6.0, 24.0),
    amt=log_uniform(1.0, 1000.0),
    infusion_duration=st.one_of(st.just(0.0), st.floats(0.05, 3.0)),  # in units of II
    cmt=st.integers(1, 2),
    lag=st.one_of(st.just(0.0), st.floats(0.01, 0.95)),  # in units of II
)
def test_ss1_equals_limit_of_repeated_doses(solver, ii, amt, infusion_duration, cmt, lag):
    """SS=1 at t_ss with II = doses every II from long ago to t_ss; infusions may last longer
    than II (overlapping), a lagged one may still run at t_ss. Lag times below II only: with
    ALAG > II, doses given before t_ss arrive after it, and whether SS=1 should include those
    (NONMEM's own answer there is not this limit) is another question; ALAG = II puts an
    arrival at t_ss, where the reference's (299 II + II) may differ from 300 II by an ulp."""
    rate = amt / (infusion_duration * ii) if infusion_duration else 0.0
    t_ss = (SS_N - 1) * ii
    times = t_ss + ii * SS_GRID
    ss = ss_table([dose(t_ss, amt, cmt, rate, ss=1, ii=ii)])
    ref = table([dose(0.0, amt, cmt, rate, ii=ii, addl=SS_N - 1)], R=1, M=SS_N)
    a_ss, _ = run_ss(ss, times, solver, lag * ii)
    a_ref, _ = run_ss(ref, times, "closed_form", lag * ii)
    assert_states_close(a_ss, a_ref, **SS_TOL[solver])


@pytest.mark.parametrize("solver", SOLVERS)
def test_ss1_constant_infusion_equals_long_infusion(solver):
    """AMT=0, RATE>0, II=0, SS=1 sets the steady state of the constant infusion (which, as in
    NONMEM 7, stops there): the same as infusing at that rate for a very long time."""
    t_ss, rate = 3000.0, 7.5
    times = t_ss + np.linspace(0.0, 48.0, SS_GRID.size)
    for cmt in (1, 2, 3):
        ss = ss_table([dose(t_ss, 0.0, cmt, rate, ss=1)])
        ref = table([dose(0.0, rate * t_ss, cmt, rate)], R=1, M=1)
        a_ss, _ = run_ss(ss, times, solver)
        a_ref, _ = run_ss(ref, times, "closed_form")
        assert_states_close(a_ss, a_ref, **SS_TOL[solver])


@pytest.mark.parametrize("solver", SOLVERS)
def test_ss2_adds_the_steady_state_to_the_current_state(solver):
    """SS=2 = superposition of the earlier regimen (its infusion still running) and SS=1."""
    t_ss, ii = 10.0, 12.0
    before = [dose(0.0, 300.0, 2, 20.0), dose(8.0, 50.0, 1)]  # infusion into central until 15 h
    ss_dose = {"amt": 100.0, "cmt": 1, "rate": 0.0, "ii": ii}
    times = t_ss + np.linspace(0.0, 36.0, SS_GRID.size)
    a_both, _ = run_ss(ss_table([*before, dose(t_ss, **ss_dose, ss=2)]), times, solver)
    a_before, _ = run_ss(ss_table(before), times, solver)
    a_ss1, _ = run_ss(ss_table([dose(t_ss, **ss_dose, ss=1)]), times, solver)
    tol = {"rtol": 1e-10} if solver == "closed_form" else {"rtol": 1e-7, "atol": ODE_ATOL}
    assert_states_close(a_both, a_before + a_ss1, **tol)


# --------------------------------------------------------------------------------------
# 4. Closed form = ODE
# --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@PROPERTY
@given(data=st.data())
def test_closed_form_equals_ode(name, data):
    m = twinrx.get_model(name)
    p = data.draw(params_for(m), label="params")
    recs = data.draw(regimens(m.n_state), label="regimen")
    ev = table(recs)
    a_cf, cp_cf = run(m, p, ev, GRID, "closed_form")
    a_ode, cp_ode = run(m, p, ev, GRID, "ode")
    assert_states_close(a_cf, a_ode, 1e-6, atol=ODE_ATOL)
    assert_states_close(cp_cf[:, None], cp_ode[:, None], 1e-6, atol=ODE_ATOL)


@pytest.mark.parametrize("name", ["one_cpt_oral", "two_cpt_oral"])
def test_closed_form_when_ka_equals_a_disposition_rate(name):
    """KA equal to a disposition eigenvalue (e.g. KA = CL/V) makes the eigenbasis singular; the
    closed form must still be accurate there. Reference: the matrix exponential (scipy)."""
    m = twinrx.get_model(name)
    if name == "one_cpt_oral":
        p = {"CL": 1.0, "V": 1.0, "KA": 1.0}
        a = np.array([[-1.0, 0.0], [1.0, -1.0]])
    else:
        p = dict(TYPICAL_2CPT_ORAL)
        k10, k12, k21 = p["CL"] / p["V1"], p["Q"] / p["V1"], p["Q"] / p["V2"]
        b = np.array([[-(k10 + k12), k21], [k12, -k21]])
        p["KA"] = -max(np.linalg.eigvals(b).real)  # the slow (terminal) rate, 0.0268/h
        a = np.zeros((3, 3))
        a[0, 0], a[1, 0], a[1:, 1:] = -p["KA"], p["KA"], b
    times = np.linspace(0.0, 96.0, 49) / p["KA"] * (1.0 if name == "one_cpt_oral" else 0.05)
    ev = table([dose(0.0, 100.0, 1)])
    x0 = np.zeros(a.shape[0])
    x0[0] = 100.0
    ref = np.array([expm(a * t) @ x0 for t in times])
    amounts, _ = run(m, p, ev, times, "closed_form")
    assert_states_close(amounts, ref, 1e-7)


# --------------------------------------------------------------------------------------
# Closed form = scipy's solve_ivp of the hand-written two-compartment oral ODE
# --------------------------------------------------------------------------------------
def reference_two_cpt_oral(p, recs, times):
    """Amounts (depot, central, peripheral) by solve_ivp, piecewise between dose events."""
    ka, cl, v1, q, v2 = p["KA"], p["CL"], p["V1"], p["Q"], p["V2"]

    def rhs(t, y, r):
        depot, central, periph = y
        return [
            -ka * depot + r[0],
            ka * depot - (cl + q) / v1 * central + q / v2 * periph + r[1],
            q / v1 * central - q / v2 * periph + r[2],
        ]

    jac = np.array([[-ka, 0, 0], [ka, -(cl + q) / v1, q / v2], [0, q / v1, -q / v2]])
    infusions = [(t, t + amt / rate, rate, int(c) - 1) for t, _, amt, c, rate, *_ in recs if rate > 0]
    boluses = [(t, amt, int(c) - 1) for t, _, amt, c, rate, *_ in recs if rate == 0]
    breaks = sorted({t for t, *_ in recs} | {end for _, end, *_ in infusions} | {times[-1] + 1.0})
    y = np.zeros(3)
    out = np.zeros((len(times), 3))
    for a, b in zip(breaks[:-1], breaks[1:]):
        for t, amt, c in boluses:
            if t == a:
                y[c] += amt
        r = np.zeros(3)
        for start, end, rate, c in infusions:
            if start <= a < end:
                r[c] += rate
        sel = (times >= a) & (times < b)
        t_eval = np.append(times[sel], b)
        sol = solve_ivp(rhs, (a, b), y, "Radau", t_eval, args=(r,), jac=jac, rtol=1e-11, atol=1e-13)
        assert sol.success, sol.message
        out[sel] = sol.y[:, :-1].T
        y = sol.y[:, -1]
    return out


@pytest.mark.slow
@FEW
@given(data=st.data())
def test_closed_form_matches_scipy_reference(data):
    m = twinrx.get_model("two_cpt_oral")
    p = data.draw(params_for(m), label="params")
    recs = data.draw(regimens(m.n_state), label="regimen")
    a_cf, cp_cf = run(m, p, table(recs), GRID, "closed_form")
    ref = reference_two_cpt_oral(p, recs, GRID)
    assert_states_close(a_cf, ref, 1e-6, atol=ODE_ATOL)
    assert_states_close(cp_cf[:, None], ref[:, 1:2] / p["V1"], 1e-6, atol=ODE_ATOL)


# --------------------------------------------------------------------------------------
# 5. Mass balance: dosed = in the body + CL * AUC
# --------------------------------------------------------------------------------------
_SUB, _NODES, _T_END = 0.5, 16, 48.0
_x, _w = np.polynomial.legendre.leggauss(_NODES)
_edges = np.arange(0.0, _T_END, _SUB)
QUAD_T = (_edges[:, None] + 0.5 * _SUB * (_x + 1.0)).ravel()
QUAD_W = np.tile(0.5 * _SUB * _w, _edges.size)
MASS_TIMES = np.concatenate([QUAD_T, [_T_END]])


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@FEW
@given(data=st.data())
def test_mass_balance(name, data):
    """Everything dosed (times F) is either still in a compartment or was cleared, CL * AUC.

    The AUC is composite Gauss-Legendre quadrature over half-hour pieces whose edges include
    every dose time and infusion end (doses and durations are on the half-hour grid), so CP is
    smooth inside each piece and the quadrature error is far below the tolerance.
    """
    m = twinrx.get_model(name)
    # Eigenvalues up to about 26/h: exp(-26 t) is resolved by 16 nodes on half an hour.
    p = data.draw(
        params_for(
            m,
            {
                "V": (5.0, 500.0),
                "V1": (5.0, 500.0),
                "V2": (5.0, 500.0),
                "V3": (5.0, 500.0),
                "Q": (0.1, 20.0),
                "Q2": (0.1, 20.0),
                "Q3": (0.1, 20.0),
            },
        ),
        label="params",
    )
    recs = data.draw(regimens(m.n_state, t_step=_SUB), label="regimen")
    f = data.draw(st.floats(0.1, 1.0), label="F")
    # F acts on compartment 1 (the depot of oral models, the central one of IV models). An
    # infusion there lasts F*AMT/RATE: scale its rate by F to keep its end on the grid.
    recs = [(t, e, amt, c, rate * f if c == 1 else rate, *rest) for t, e, amt, c, rate, *rest in recs]
    a, cp = run(m, p, table(recs), MASS_TIMES, "closed_form", bioav={m.compartments[0]: f})
    dosed = sum((f if int(c) == 1 else 1.0) * amt for _, _, amt, c, *_ in recs)
    cleared = p["CL"] * np.sum(QUAD_W * cp[:-1])
    in_body = np.sum(a[-1])
    assert in_body + cleared == pytest.approx(dosed, rel=1e-9)
    assert np.all(a >= -1e-9 * dosed)


def test_mass_balance_ode():
    m = twinrx.get_model("three_cpt_oral")
    p = {"CL": 3.0, "V1": 20.0, "Q2": 8.0, "V2": 60.0, "Q3": 1.5, "V3": 150.0, "KA": 1.7}
    recs = [dose(0.0, 200.0, 1), dose(2.5, 120.0, 2, 40.0), dose(6.0, 80.0, 3), dose(6.0, 90.0, 1, 9.0)]
    a, cp = run(m, p, table(recs, R=4, M=4), MASS_TIMES, "ode", bioav={"depot": 0.6})
    dosed = 0.6 * (200.0 + 90.0) + 120.0 + 80.0
    assert np.sum(a[-1]) + p["CL"] * np.sum(QUAD_W * cp[:-1]) == pytest.approx(dosed, rel=1e-8)


# --------------------------------------------------------------------------------------
# 6. Gradients = central finite differences
# --------------------------------------------------------------------------------------
GRAD_TIMES = np.arange(0.0, 48.1, 2.0)  # no output at a dose's arrival or an infusion's end
GRAD_EVENTS = table(
    [dose(0.0, 100.0, 1, ii=24.0, addl=1), dose(5.3, 200.0, 2, 50.0), dose(13.7, 80.0, 2)], R=3, M=4
)
# Parameters (ALAG and F of the depot too), the three doses' AMT, and the times of the
# infusion (start and end move) and of the last bolus.
GRAD_NAMES = ["CL", "V1", "Q", "V2", "KA", "ALAG", "F", "amt0", "amt1", "amt2", "time1", "time2"]
GRAD_THETA = np.array([5.0, 50.0, 10.0, 100.0, 1.0, 0.7, 0.8, 100.0, 200.0, 80.0, 5.3, 13.7])


def _grad_objective(theta, solver):
    ev = GRAD_EVENTS
    p = dict(zip(GRAD_NAMES[:7], theta[:7]))
    # Dose instances 2 and 3 are the (only) doses of records 1 and 2.
    new = (
        ev.amt.at[:3].set(theta[7:10]),
        ev.time.at[1].set(theta[10]).at[2].set(theta[11]),
        ev.dose_time.at[2].set(theta[10]).at[3].set(theta[11]),
    )
    ev = eqx.tree_at(lambda e: (e.amt, e.time, e.dose_time), ev, new)
    m = twinrx.get_model("two_cpt_oral")
    tol = ODE if solver == "ode" else {}
    _, out, _ = twinrx.simulate_arrays(
        m, p, ev, GRAD_TIMES, solver=solver, lag={"depot": "ALAG"}, bioav={"depot": "F"}, **tol
    )
    return jnp.sum(out["CP"])


def central_differences(f, theta, rel=1e-5):
    fd = np.zeros_like(theta)
    for i in range(theta.size):
        h = rel * abs(theta[i])
        e = np.zeros_like(theta)
        e[i] = h
        fd[i] = (float(f(theta + e)) - float(f(theta - e))) / (2.0 * h)
    return fd


@pytest.mark.parametrize("solver", SOLVERS)
def test_gradients_match_finite_differences(solver):
    """d sum(CP) / d (CL, V1, Q, V2, KA, ALAG, F, dose amounts, an infusion's and a bolus's time)."""
    theta = jnp.asarray(GRAD_THETA)
    np.testing.assert_array_equal(np.asarray(GRAD_EVENTS.dose_rec), [0, 0, 1, 2])
    g = np.asarray(jax.grad(_grad_objective)(theta, solver))
    fd = central_differences(lambda th: _grad_objective(jnp.asarray(th), solver), GRAD_THETA)
    f0 = float(_grad_objective(theta, solver))
    # Sensitivities theta_i * df/dtheta_i, relative to themselves and to f.
    s, s_fd = g * GRAD_THETA, fd * GRAD_THETA
    assert np.all(np.abs(s_fd) > 1e-3 * f0), dict(zip(GRAD_NAMES, s_fd))  # all of them matter
    for name, a, b in zip(GRAD_NAMES, s, s_fd):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9 * f0), name


SS_GRAD_CASES = {
    "bolus_depot": dose(0.0, 100.0, 1, ss=1, ii=12.0),
    "infusion_overlapping": dose(0.0, 100.0, 2, 5.0, ss=1, ii=12.0),  # 20 h infusion every 12 h
    "constant_infusion": dose(0.0, 0.0, 2, 10.0, ss=1),
}
# Not at an infusion's end (8 h and 20 h above), where the state is not differentiable.
SS_GRAD_TIMES = np.linspace(0.25, 24.25, SS_GRID.size)


# Closed form only: the ODE steady state (Newton on ODE solves, differentiated) takes about a
# minute to compile for reverse mode, too long for this suite.
@pytest.mark.parametrize("case", list(SS_GRAD_CASES))
@pytest.mark.parametrize("solver", ["closed_form"])
def test_steady_state_gradients_match_finite_differences(solver, case):
    """d sum(CP) / d (parameters, and the SS record's AMT, RATE and II where they are > 0)."""
    rec = SS_GRAD_CASES[case]
    ev0 = ss_table([rec])
    names = [*TYPICAL_2CPT_ORAL, "AMT", "RATE", "II"]
    theta0 = np.array([*TYPICAL_2CPT_ORAL.values(), rec[2], rec[4], rec[6]])
    free = np.nonzero(theta0 > 0)[0]  # AMT, RATE or II at 0 mean another kind of dose

    def f(theta):
        p = dict(zip(TYPICAL_2CPT_ORAL, theta[:5]))
        new = (ev0.amt.at[0].set(theta[5]), ev0.rate.at[0].set(theta[6]), ev0.ii.at[0].set(theta[7]))
        ev = eqx.tree_at(lambda e: (e.amt, e.rate, e.ii), ev0, new)
        m = twinrx.get_model("two_cpt_oral")
        tol = ODE if solver == "ode" else {}
        lag = {"depot": 0.0, "central": 0.0}
        _, out, _ = twinrx.simulate_arrays(m, p, ev, SS_GRAD_TIMES, solver=solver, lag=lag, **tol)
        return jnp.sum(out["CP"])

    g = np.asarray(jax.grad(f)(jnp.asarray(theta0)))[free]

    def f_free(th):
        theta = theta0.copy()
        theta[free] = th
        return f(jnp.asarray(theta))

    fd = central_differences(f_free, theta0[free])
    f0 = float(f(jnp.asarray(theta0)))
    got = dict(zip([names[i] for i in free], g * theta0[free]))
    want = dict(zip([names[i] for i in free], fd * theta0[free]))
    assert all(abs(v) > 1e-3 * f0 for k, v in want.items() if k != "KA"), want
    for k in got:
        assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-9 * f0), (k, got, want)


# --------------------------------------------------------------------------------------
# Resets
# --------------------------------------------------------------------------------------
@pytest.mark.slow
@FEW
@given(data=st.data(), evid4=st.booleans())
def test_reset_equals_a_fresh_start(data, evid4):
    """After EVID=3 (or 4) at t_r the system is as if nothing happened before t_r: earlier
    infusions still running and ADDL doses still to come are cancelled."""
    m = twinrx.get_model("two_cpt_oral")
    t0, _, amt, cmt, rate, *_ = data.draw(regimens(3, n_max=1), label="first")[0]
    n_addl = data.draw(st.integers(0, 2), label="ADDL")
    ii = data.draw(st.floats(1.0, 24.0), label="II")
    t_r = t0 + data.draw(nonneg(48.0), label="reset after")
    after = [(t_r + r[0], *r[1:]) for r in data.draw(regimens(3, n_max=2), label="after")]
    dose_at_reset = dose(t_r, 50.0, 2)
    reset = (t_r, 4, *dose_at_reset[2:]) if evid4 else (t_r, 3, 0.0, 1, 0.0, 0, 0.0, 0)
    full = [dose(t0, amt, cmt, rate, ii=ii if n_addl else 0.0, addl=n_addl), reset, *after]
    fresh = [dose_at_reset, *after] if evid4 else after
    a_full, _ = run(m, TYPICAL_2CPT_ORAL, table(full), GRID, "closed_form")
    a_fresh, _ = run(m, TYPICAL_2CPT_ORAL, table(fresh), GRID, "closed_form")
    later = GRID >= t_r
    assert_states_close(a_full[later], a_fresh[later], 1e-10)


# --------------------------------------------------------------------------------------
# Dosing modifiers: a lag time shifts, bioavailability scales
# --------------------------------------------------------------------------------------
@pytest.mark.slow
@FEW
@given(data=st.data(), lag=st.floats(0.01, 20.0), f=st.floats(0.05, 1.0))
def test_lag_shifts_and_bioavailability_scales_doses(data, lag, f):
    """lag L on a compartment = its doses given L later; F on a compartment = its boluses
    times F, its infusions F times the amount at the same rate (NONMEM: duration F*AMT/RATE)."""
    m = twinrx.get_model("two_cpt_oral")
    recs = data.draw(regimens(m.n_state), label="regimen")
    target = 1  # the depot
    shifted = [
        dose(t + (lag if c == target else 0.0), amt * (f if c == target else 1.0), c, rate)
        for t, _, amt, c, rate, *_ in recs
    ]
    shifted.sort(key=lambda r: r[0])
    a_mod, _ = run(
        m, TYPICAL_2CPT_ORAL, table(recs), GRID, "closed_form", lag={"depot": lag}, bioav={"depot": f}
    )
    a_ref, _ = run(m, TYPICAL_2CPT_ORAL, table(shifted), GRID, "closed_form")
    assert_states_close(a_mod, a_ref, 1e-9)
