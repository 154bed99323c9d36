"""Simulate patients: NONMEM events, then segments solved in closed form or with diffrax.

One patient is one ``lax.scan`` over its events sorted in NONMEM order. Between two
events the state is advanced over the segment with the current piecewise-constant infusion
input, either exactly (the closed form of a linear model) or with a diffrax ODE solve; at an
event a bolus is a jump of the state, an infusion start/end a change of the input, a reset
zeroes both. Doses are never impulses inside the vector field. Steady states are fixed points
of the one-interval map found by Newton's method (exact in one step for linear systems) and
are computed once per steady-state record, outside the scan.

Cohorts are the same function under ``jax.vmap``; every shape is fixed by the padded
:class:`~twinrx.events.EventTable`, so one compilation serves a whole cohort.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import diffrax as dfx
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np

from ._types import Status
from .events import (
    EVID_DOSE,
    EVID_RESET,
    EVID_RESET_DOSE,
    DataError,
    EventTable,
    Problem,
    resets_or_steady_states,
    stack_tables,
)
from .model._base import AbstractModel

jax.config.update("jax_enable_x64", True)

__all__ = ["SolverConfig", "simulate", "simulate_arrays"]

# Event kinds inside the scan.
_NONE, _BOLUS, _INF_START, _INF_END, _RESET, _SS_RESET, _SS_ADD = range(7)
_MODIFIERS = ("lag", "bioav", "rate", "duration")
_MOD_DEFAULT = {"lag": 0.0, "bioav": 1.0, "rate": 0.0, "duration": 0.0}


class SolverConfig(eqx.Module):
    """Static solver options (part of the compilation key)."""

    method: str = eqx.field(static=True, default="closed_form")  # closed_form | ode | stiff
    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-9)
    max_steps: int = eqx.field(static=True, default=4096)
    ss_iters: int = eqx.field(static=True, default=3)
    modifiers: tuple[tuple[str, int, str], ...] = eqx.field(static=True, default=())
    at_records: bool = eqx.field(static=True, default=False)
    batch_size: int = eqx.field(static=True, default=0)  # 0: one vmap over all patients
    infusions: bool = eqx.field(static=True, default=True)  # False: no record has RATE != 0
    devices: int = eqx.field(static=True, default=1)  # local devices a cohort is split over
    superpose: bool = eqx.field(static=True, default=False)  # closed form without an event loop
    sensitivity: str = eqx.field(static=True, default="reverse")  # reverse | forward (ODE gradients)


# --------------------------------------------------------------------------------------
# Segment propagators
# --------------------------------------------------------------------------------------
def _ode_advance(model, cfg, p, x, r, t0, t1, *, forward=False):
    solver = dfx.Kvaerno5() if cfg.method == "stiff" else dfx.Tsit5()
    term = dfx.ODETerm(lambda t, y, args: model.vector_field(t, y, args[0], args[1]))
    sol = dfx.diffeqsolve(
        term,
        solver,
        t0,
        t1,
        None,
        x,
        args=(p, r),
        stepsize_controller=dfx.PIDController(rtol=cfg.rtol, atol=cfg.atol),
        max_steps=cfg.max_steps,
        saveat=dfx.SaveAt(t1=True),
        throw=False,
        adjoint=dfx.ForwardMode() if forward else dfx.RecursiveCheckpointAdjoint(),
    )
    code = jnp.where(
        sol.result == dfx.RESULTS.successful,
        Status.SUCCESS,
        jnp.where(sol.result == dfx.RESULTS.max_steps_reached, Status.MAX_STEPS, Status.SOLVER_FAILED),
    )
    return sol.ys[0], code


_TSIT5 = dfx.Tsit5.tableau  # Tsitouras (2011) 5(4) coefficients, from diffrax
_SAFETY, _FACTOR_MIN, _FACTOR_MAX = 0.9, 0.2, 10.0


def _rk_advance(model, cfg, p, x, r, t0, t1, dt, *, forward=False):
    """Advance ``x`` from ``t0`` to ``t1`` (the next stop: event or output) with Tsit5 and
    an integral step-size controller, starting with the step ``dt`` carried over from the
    previous stop, so that no step-size search is made at every stop. Returns
    ``(x1, next step, status)``.

    The seven stages are unrolled for the small systems of pharmacology (diffrax's general
    Runge-Kutta step loops over stages and handles any term structure, several times
    slower here); the last stage is ``f(t1, y1)`` and starts the next step (FSAL).
    Reverse-mode differentiable through a checkpointed loop, forward-mode with
    ``forward=True``.

    (Reading outputs from the solver's interpolant instead of stopping at them, with
    per-step output writes or per-stop interpolation, measured slower on CPU: the cost
    here is the number of XLA operations per loop iteration, not the arithmetic.)
    """
    tab = _TSIT5
    rtol, atol = cfg.rtol, cfg.atol

    def f(t, y):
        return model.vector_field(t, y, p, r)

    def cond(c):
        t, _, _, _, _, code = c
        return (t < t1) & (code == Status.SUCCESS)

    def body(c):
        t, y, k1, h, n, code = c
        rest = t1 - t
        last = h >= rest
        h_try = jnp.where(last, rest, h)
        ks = [k1]
        for ci, ai in zip(tab.c, tab.a_lower):
            yi = y + h_try * sum(float(a) * k for a, k in zip(ai, ks) if a != 0)
            ks.append(f(t + float(ci) * h_try, yi))
        y1 = yi  # the last row of a_lower is b_sol
        err = h_try * sum(float(e) * k for e, k in zip(tab.b_error, ks) if e != 0)
        scale = atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(y1))
        # The step-size control is not differentiated (derivatives are those of the steps
        # taken); sqrt at a zero error would give NaN gradients anyway.
        en = jax.lax.stop_gradient(jnp.sqrt(jnp.mean((err / scale) ** 2)))
        en = jnp.where(jnp.isfinite(en) & jnp.all(jnp.isfinite(y1)), en, jnp.inf)
        accept = en <= 1.0
        factor = jnp.clip(_SAFETY * jnp.where(en > 0, en, 1e-10) ** -0.2, _FACTOR_MIN, _FACTOR_MAX)
        factor = jnp.where(accept, factor, jnp.minimum(factor, 1.0))
        t_new = jnp.where(accept, jnp.where(last, t1, t + h_try), t)
        # A step cut short by the stop says nothing against the longer one.
        h_new = jnp.where(accept & last, jnp.maximum(h, h_try * factor), h_try * factor)
        n = n + 1
        code = jnp.where((n >= cfg.max_steps) & (t_new < t1), Status.MAX_STEPS, code)
        tiny = ~accept & (t + h_new == t)  # the step no longer moves time
        code = jnp.where(tiny, jnp.maximum(code, Status.SOLVER_FAILED), code)
        return t_new, jnp.where(accept, y1, y), jnp.where(accept, ks[-1], k1), h_new, n, code

    init = (t0, x, f(t0, x), jax.lax.stop_gradient(dt), jnp.asarray(0), jnp.asarray(Status.SUCCESS))
    kind = "lax" if forward else "checkpointed"
    _, y, _, h, _, code = eqxi.while_loop(cond, body, init, max_steps=cfg.max_steps, kind=kind)
    return y, jnp.where(t1 > t0, h, dt), code


class _Propagator:
    """advance(sys, x, rate, t0, t1) -> (x, status) for one parameter set ``sys``."""

    def __init__(self, model: AbstractModel, cfg: SolverConfig):
        self.model, self.cfg = model, cfg
        self.closed = cfg.method == "closed_form"
        self.rk = cfg.method == "ode"

    def system(self, q):
        """The per-segment system from prepared parameters ``q`` (see ``model.prepare``)."""
        return self.model.closed_form_system(q) if self.closed else q

    def advance(self, sys, x, r, t0, t1, *, forward=False):
        if self.closed:
            return sys.advance(x, r, t1 - t0), jnp.asarray(Status.SUCCESS)
        forward = forward or self.cfg.sensitivity == "forward"
        return _ode_advance(self.model, self.cfg, sys, x, r, t0, t1, forward=forward)


# --------------------------------------------------------------------------------------
# Steady state
# --------------------------------------------------------------------------------------
def _newton_fixed_point(fn, fn_fwd, x0, iters, scale):
    """Solve fn(x) = x. The Jacobian is held constant for differentiation, which gives the
    implicit-function-theorem derivative at convergence without differentiating it."""
    n = x0.shape[0]
    x, code = x0, jnp.asarray(Status.SUCCESS)
    for _ in range(iters):
        jac = jax.lax.stop_gradient(jax.jacfwd(lambda z: fn_fwd(z)[0])(jax.lax.stop_gradient(x)))
        px, c = fn(x)
        code = jnp.maximum(code, c)
        x = x - jnp.linalg.solve(jac - jnp.eye(n), px - x)
    px, c = fn(x)
    resid = jnp.max(jnp.abs(px - x) / (jnp.abs(x) + scale))
    code = jnp.maximum(code, c)
    code = jnp.where(resid > 1e-6, jnp.maximum(code, Status.STEADY_STATE_NOT_CONVERGED), code)
    return x, code


def _steady_state(prop, cfg, p, *, c, amt, rate_col, ii, t, F, L, Rm, Dm, K, n):
    """State right after a steady-state record at time ``t``, the input rate left running,
    and the end times of the earlier (implied) infusions still running then.

    Bolus or infusion of duration D every II, with lag L: x_a, the state at an implied
    arrival, is the fixed point of one period (q = floor(D/II) earlier infusions overlap,
    q+1 during the first D - q*II hours); the state at ``t`` is x_a advanced by the phase
    max(II - L, 0) from the implied arrival at t + L - II. Implied infusions still running
    at ``t`` keep running and end at t + L + D - k*II (k = 1, 2, ...).

    A lag of a whole interval or more (L >= II) clamps the phase to 0: the record carries
    the state right after an implied arrival (a bolus's steady-state peak), and the first
    implied infusion runs on to t + L + D - II. That is NONMEM 7.6's behaviour as measured
    and reported by the ferx-core developers (FeRx-NLME/ferx-core PR #1125: PRED at the
    record = (D/V)/(1 - exp(-k II)) for a one-compartment bolus); wrapping the phase into
    [0, II) would instead be a shifted pulse train, which NONMEM does not compute.
    """
    sys = prop.system(p)
    sys_fwd = prop.system(jax.lax.stop_gradient(p))
    e_c = jax.nn.one_hot(c, n)
    is_inf = rate_col != 0
    const_inf = (amt == 0) & (rate_col > 0) & (ii == 0)
    R, D = _infusion_rate_duration(rate_col, F * amt, Rm, Dm)
    R = jnp.where(is_inf, R, 0.0)
    D = jnp.where(is_inf, D, 0.0)
    b = jnp.where(is_inf, 0.0, F * amt) * e_c
    r_vec = R * e_c
    iis = jnp.where(ii > 0, ii, 1.0)
    q = jnp.floor(D / iis)
    rr = D - q * iis

    def period(x, forward=False):
        s = sys_fwd if forward else sys
        x1, c1 = prop.advance(s, x + b, (q + 1.0) * r_vec, 0.0, rr, forward=forward)
        x2, c2 = prop.advance(s, x1, q * r_vec, rr, iis, forward=forward)
        return x2, jnp.maximum(c1, c2)

    # Two Newton steps even for linear systems: the first lands on the fixed point, the
    # second makes the (Jacobian-frozen) derivative the implicit-function one at x*.
    iters = 2 if prop.closed else max(2, cfg.ss_iters)
    scale = cfg.atol + 1e-12
    xa, code = _newton_fixed_point(
        period, functools.partial(period, forward=True), jnp.zeros(n), iters, scale
    )
    # The implied arrival the record's state is advanced from: t + L - II, the phase
    # clamped at 0 when L >= II (see the docstring).
    m = 1.0
    s0 = jnp.maximum(iis - L, 0.0)
    x1, c1 = prop.advance(sys, xa + b, (q + 1.0) * r_vec, 0.0, jnp.minimum(s0, rr))
    x_t, c2 = prop.advance(sys, x1, q * r_vec, jnp.minimum(s0, rr), s0)
    code = jnp.maximum(code, jnp.maximum(c1, c2))
    # Implied infusions k = m, m+1, ... started at t + L - k*II, still running at t.
    k = m + jnp.arange(K, dtype=float)
    tail_active = is_inf & (k * iis < L + D)
    tail_end = t + L + D - k * iis
    overflow = is_inf & ((m + K) * iis < L + D)
    code = jnp.where(overflow, jnp.maximum(code, Status.STEADY_STATE_OVERLAP), code)
    tail_rate = R * jnp.sum(tail_active) * e_c

    # Steady state of a constant infusion: vector_field(x) + r = 0.
    def fixed(x, forward=False):
        pp = jax.lax.stop_gradient(p) if forward else p
        return x + prop.model.vector_field(t, x, pp, r_vec), jnp.asarray(Status.SUCCESS)

    xc, cc = _newton_fixed_point(fixed, functools.partial(fixed, forward=True), jnp.zeros(n), iters, scale)
    x_ss = jnp.where(const_inf, xc, x_t)
    # NONMEM 7 (its own output for this case): the state is set to the steady state of the
    # constant infusion, and the infusion does not continue past the record.
    rate_ss = jnp.where(const_inf, 0.0, tail_rate)
    code = jnp.where(const_inf, cc, code)
    return x_ss, rate_ss, tail_end, tail_active & ~const_inf, code


def _infusion_rate_duration(rate_col, famt, Rm, Dm):
    """NONMEM: RATE>0 keeps the rate (duration F*AMT/RATE); -1 rate from the model;
    -2 duration from the model (rate F*AMT/D)."""
    R = jnp.where(rate_col > 0, rate_col, jnp.where(rate_col == -1, Rm, famt / jnp.where(Dm > 0, Dm, 1.0)))
    Rs = jnp.where(R > 0, R, 1.0)
    D = jnp.where(rate_col == -2, Dm, famt / Rs)
    return R, D


# --------------------------------------------------------------------------------------
# One patient
# --------------------------------------------------------------------------------------
def _per_record(p: Mapping[str, Any], R: int) -> dict[str, jax.Array]:
    return {k: jnp.broadcast_to(jnp.asarray(v, float), (R,)) for k, v in p.items()}


def _dose_modifiers(cfg, q_rec, R, n):
    """Per-record, per-compartment dosing modifiers (lag, bioavailability, rate, duration)."""
    mods = {k: jnp.full((R, n), _MOD_DEFAULT[k]) for k in _MODIFIERS}
    for kind, cmt, src in cfg.modifiers:
        mods[kind] = mods[kind].at[:, cmt].set(q_rec[src])
    return mods


def _dose_instances(et: EventTable, mods):
    """Each dose instance's compartment, lag, bioavailable amount, whether it is an
    infusion, its rate and duration, and its arrival time (dose time + lag)."""
    r = et.dose_rec
    c = et.cmt[r]
    rate_col = et.rate[r]
    L = mods["lag"][r, c]
    famt = mods["bioav"][r, c] * et.amt[r]
    is_inf = rate_col != 0
    R_inf, D_inf = _infusion_rate_duration(rate_col, famt, mods["rate"][r, c], mods["duration"][r, c])
    return c, L, famt, is_inf, R_inf, D_inf, et.dose_time + L


def _superpose_one(model: AbstractModel, cfg: SolverConfig, et: EventTable, p, out_times):
    """The closed form by superposition: without resets, steady states or time-varying
    parameters a linear system's state at ``t`` is the sum of each dose's response, so the
    outputs are one elementwise (outputs x doses) array with no loop over events. A bolus
    counts at every output at or after its arrival (NONMEM: requested times come after the
    events at that time); an infusion is a step input on at its arrival and off at its end.
    Fast to differentiate (no scan to reverse), which is what fitting needs."""
    n = model.n_state
    R = et.time.shape[0]
    q0 = dict(model.prepare({k: jnp.asarray(v, float) for k, v in p.items()}))
    mods = _dose_modifiers(cfg, _per_record(q0, R), R, n)
    c, _, famt, is_inf, R_inf, D_inf, t_arr = _dose_instances(et, mods)
    sys = model.closed_form_system(q0)
    unit = jax.vmap(sys.modal)(jax.nn.one_hot(c, n))  # (M, n): a unit input into each dose's cmt
    h = out_times[:, None] - t_arr[None, :]  # (T, M)
    live = et.dose_mask[None, :]
    bolus = jnp.where(is_inf, 0.0, famt)[:, None] * unit

    def one(b, u, rate, dur, hh, on):
        hb = jnp.where(on, hh, 0.0)
        m = jnp.where(on, sys.advance_modal(b, None, hb), 0.0)
        if cfg.infusions:
            # Filled while on (for at most its duration), then free decay: no cancellation.
            filled = sys.advance_modal(jnp.zeros_like(u), rate * u, jnp.minimum(hb, dur))
            m = m + jnp.where(on, sys.advance_modal(filled, None, jnp.maximum(hb - dur, 0.0)), 0.0)
        return m

    rate = jnp.where(is_inf, R_inf, 0.0)
    dur = jnp.where(is_inf, D_inf, 0.0)
    per_dose = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0))  # over doses
    per_out = jax.vmap(per_dose, in_axes=(None, None, None, None, 0, 0))  # over outputs
    modal = jnp.sum(per_out(bolus, unit, rate, dur, h, (h >= 0) & live), axis=1)  # (T, n)
    amounts = jax.vmap(sys.unmodal)(modal)
    outputs = jax.vmap(model.observe, in_axes=(0, 0, None))(out_times, amounts, q0)
    code = jnp.where(jnp.all(jnp.isfinite(amounts)), Status.SUCCESS, Status.NONFINITE)
    return amounts, outputs, jnp.asarray(code)


# Up to this many events per patient, the event order comes from all-pairs comparisons:
# O(E^2) elementwise work, several times faster on a CPU than XLA's sort for the few events
# of a patient.
_RANK_ORDER_MAX = 96


def _nonmem_order(t, key):
    """The permutation that sorts events by time, then key (NONMEM's order at equal times),
    then position: ``jnp.lexsort((arange, key, t))``."""
    E = t.shape[0]
    i = jnp.arange(E, dtype=jnp.int32)
    if E > _RANK_ORDER_MAX:
        return jnp.lexsort((i, key, t)).astype(jnp.int32)
    t = jnp.where(jnp.isnan(t), jnp.inf, t)  # NaN (never a valid time) goes last, with infinity
    # (key, position) as one integer, in the same order; rank[i]: how many events come
    # before event i (summed over the leading axis, which vectorises along i).
    kp = key.astype(jnp.int32) * E + i
    tj, ti = t[:, None], t[None, :]
    before = (tj < ti) | ((tj == ti) & (kp[:, None] < kp[None, :]))
    rank = jnp.sum(before, axis=0, dtype=jnp.int32)
    return jnp.zeros(E, jnp.int32).at[rank].set(i, unique_indices=True)


class _EventStates(NamedTuple):
    """One patient's closed-form solution at its events (parameters constant in time):
    the state and input just after each event in NONMEM order, the event times, the status
    so far, the propagator and the parameters the outputs read. The outputs follow in
    :func:`_closed_outputs`."""

    ys: Any
    rs: Any
    ts: Any
    code: Any
    sys: Any
    q: Any


def _closed_outputs(model: AbstractModel, cfg: SolverConfig, ev: _EventStates, out_t, out_prev=None):
    """Amounts and outputs at times ``out_t`` from the states at the events: each output
    continues from the last event before it, in modal coordinates, with only exponentials
    per output. ``out_prev``: that event's index (default: requested times come after
    everything at their time)."""
    if out_prev is None:
        out_prev = _last_at_or_before(ev.ts, out_t)
    has = out_prev >= 0
    prev = jnp.maximum(out_prev, 0)
    h = jnp.where(has, out_t - ev.ts[prev], 0.0)
    sys = ev.sys

    # Planar (component, time) layout and one gather per component: the work per output
    # vectorises over time (a gather of rows under vmap is several times slower).
    def at_outputs(states):
        return [z[prev] * has for z in sys.modal_planar(list(states.T))]

    zr = at_outputs(ev.rs) if cfg.infusions else None  # None: no input between events
    amounts = jnp.stack(sys.unmodal_planar(sys.advance_modal_planar(at_outputs(ev.ys), zr, h)), -1)
    outputs = jax.vmap(model.observe, in_axes=(0, 0, None))(out_t, amounts, ev.q)
    return amounts, outputs, _finite_status(ev.code, amounts)


def _last_at_or_before(event_times, out_t):
    """For each output time, the index (in time order) of the last event at or before it,
    -1 for none: a count of events, cheaper than a search for the few events of a patient."""
    return jnp.sum(event_times[:, None] <= out_t[None, :], axis=0, dtype=jnp.int32) - 1


def _finite_status(code, amounts):
    # One sum, not a test per amount: a NaN or an infinity anywhere makes it non-finite
    # (so would amounts near 1e308, which are no more usable).
    finite = jnp.isfinite(jnp.sum(amounts))
    return jnp.where(finite, code, jnp.maximum(code, Status.NONFINITE))


def _simulate_one(model: AbstractModel, cfg: SolverConfig, et: EventTable, p, out_times):
    """One patient: ``(amounts, outputs, status)``."""
    n = model.n_state
    R = et.time.shape[0]
    M = et.dose_rec.shape[0]
    S = et.ss_rec.shape[0]
    K = et.max_ss_overlap
    T = out_times.shape[0]
    prop = _Propagator(model, cfg)
    time_varying = any(jnp.ndim(v) > 0 for v in p.values())
    # The model's own parameters (individual values, derived quantities), once per record
    # when anything varies in time, else once.
    if time_varying:
        q_rec = _per_record(jax.vmap(model.prepare)(_per_record(p, R)), R)
    else:
        q0 = dict(model.prepare({k: jnp.asarray(v, float) for k, v in p.items()}))
        q_rec = _per_record(q0, R)
    if model.has_initial_state:
        x_init_rec = jax.vmap(model.initial_state)(q_rec)
    else:
        x_init_rec = None

    mods = _dose_modifiers(cfg, q_rec, R, n)

    # ---- dose instances -> arrival and end events ----
    r = et.dose_rec
    c, L, famt, is_inf, R_inf, D_inf, t_arr = _dose_instances(et, mods)
    implied = (~et.dose_first) | (L > 0)
    arr_kind = jnp.where(et.dose_mask, jnp.where(is_inf, _INF_START, _BOLUS), _NONE)
    arr_val = jnp.where(is_inf, R_inf, famt)
    end_kind = jnp.where(et.dose_mask & is_inf, _INF_END, _NONE)

    # ---- steady-state records ----
    if S:

        def ss_one(i):
            ci = et.cmt[i]
            pi = {k: v[i] for k, v in q_rec.items()}
            return _steady_state(
                prop,
                cfg,
                pi,
                c=ci,
                amt=et.amt[i],
                rate_col=et.rate[i],
                ii=et.ii[i],
                t=et.time[i],
                F=mods["bioav"][i, ci],
                L=mods["lag"][i, ci],
                Rm=mods["rate"][i, ci],
                Dm=mods["duration"][i, ci],
                K=K,
                n=n,
            )

        ss_x, ss_rate, tail_end, tail_active, ss_code = jax.vmap(ss_one)(et.ss_rec)
        tail_active = tail_active & et.ss_mask[:, None]
        ss_code = jnp.where(et.ss_mask, ss_code, Status.SUCCESS)
        ss_slot = jnp.zeros(R, jnp.int32).at[et.ss_rec].set(jnp.arange(S, dtype=jnp.int32))
    else:
        ss_x = jnp.zeros((1, n))
        ss_rate = jnp.zeros((1, n))
        tail_end = jnp.zeros((0, K))
        tail_active = jnp.zeros((0, K), bool)
        ss_code = jnp.zeros((0,), jnp.int32)
        ss_slot = jnp.zeros(R, jnp.int32)

    # ---- record events ----
    ev = et.evid
    is_dose_rec = (ev == EVID_DOSE) | (ev == EVID_RESET_DOSE)
    rec_kind = jnp.where(
        is_dose_rec & (et.ss == 1),
        _SS_RESET,
        jnp.where(
            (ev == EVID_RESET) | (ev == EVID_RESET_DOSE),
            _RESET,
            _NONE,
        ),
    )
    # EVID 4 with SS=2 is a reset followed by the SS addition: the same as SS=1.
    rec_kind = jnp.where(is_dose_rec & (et.ss == 2) & (ev == EVID_RESET_DOSE), _SS_RESET, rec_kind)
    rec_kind = jnp.where(is_dose_rec & (et.ss == 2) & (ev == EVID_DOSE), _SS_ADD, rec_kind)
    rec_kind = jnp.where(et.mask, rec_kind, _NONE)
    rec_idx = jnp.arange(R, dtype=jnp.int32)

    tail_n = S * K
    tail_rec = jnp.repeat(et.ss_rec, K) if S else jnp.zeros((0,), jnp.int32)
    tail_val = (
        jnp.repeat(
            jax.vmap(
                lambda i: _infusion_rate_duration(
                    et.rate[i],
                    mods["bioav"][i, et.cmt[i]] * et.amt[i],
                    mods["rate"][i, et.cmt[i]],
                    mods["duration"][i, et.cmt[i]],
                )[0]
            )(et.ss_rec),
            K,
        )
        if S
        else jnp.zeros((0,))
    )
    n_out = R if cfg.at_records else T
    out_t = et.time if cfg.at_records else out_times
    out_key = 3 * rec_idx + 2 if cfg.at_records else jnp.full((T,), 3 * R + 5, jnp.int32)

    # All events: records, arrivals, ends, steady-state tails, and for the ODE the outputs
    # (stops of its loop; the closed form reaches an output from the event before it).
    # Infusion ends (none when no record of the data set is an infusion).
    Me = M if cfg.infusions else 0
    n_stop = 0 if prop.closed else n_out
    e_time = jnp.concatenate([et.time, t_arr, (t_arr + D_inf)[:Me], tail_end.reshape(-1), out_t[:n_stop]])
    e_key = jnp.concatenate(
        [
            3 * rec_idx,
            jnp.where(implied, -1, 3 * r + 1),
            jnp.full((Me,), -1, jnp.int32),
            jnp.full((tail_n,), -1, jnp.int32),
            out_key[:n_stop],
        ]
    )
    e_kind = jnp.concatenate(
        [
            rec_kind,
            arr_kind,
            end_kind[:Me],
            jnp.where(tail_active.reshape(-1), _INF_END, _NONE),
            jnp.full((n_stop,), _NONE),
        ]
    ).astype(jnp.int32)
    e_cmt = jnp.concatenate([et.cmt, c, c[:Me], et.cmt[tail_rec], jnp.zeros((n_stop,), jnp.int32)])
    e_val = jnp.concatenate([jnp.zeros(R), arr_val, R_inf[:Me], tail_val, jnp.zeros(n_stop)])
    e_origin = jnp.concatenate([rec_idx, r, r[:Me], tail_rec, jnp.full((n_stop,), R, jnp.int32)])
    e_slot = jnp.concatenate([ss_slot, jnp.zeros((M + Me + tail_n + n_stop,), jnp.int32)])
    E = e_time.shape[0]
    E_ev = E - n_stop
    if prop.closed:
        # O(times): the scan visits the events only; each output belongs to the segment
        # after the last event before it in NONMEM order.
        ev_order = _nonmem_order(e_time, e_key)
        st, sk = e_time[ev_order], e_key[ev_order]
        if cfg.at_records:  # a record's output comes after the events it follows
            before = (st[None, :] < out_t[:, None]) | (
                (st[None, :] == out_t[:, None]) & (sk[None, :] < out_key[:, None])
            )
            out_prev = jnp.sum(before, axis=1) - 1
        elif time_varying:  # requested times come after everything at that time
            out_prev = _last_at_or_before(e_time, out_t)
        else:  # the same, in _closed_outputs
            out_prev = None
        scan_order = ev_order
    else:
        # ODE: outputs are stops of the scan (the state there comes from the solver).
        order = _nonmem_order(e_time, e_key)
        inv = jnp.zeros(E, jnp.int32).at[order].set(jnp.arange(E, dtype=jnp.int32))
        scan_order = order
        out_prev = inv[E_ev:]

    # Parameters of each segment: the record at or after the segment's end (NONMEM: a
    # record's covariates govern the interval that ends at it).
    valid_times = jnp.where(et.mask, et.time, jnp.inf)
    n_valid = jnp.sum(et.mask)

    def nocb(t):
        return jnp.clip(jnp.searchsorted(valid_times, t, side="left"), 0, n_valid - 1)

    if time_varying:
        sys_rec = jax.vmap(prop.system)(q_rec)
    else:
        sys0 = prop.system(q0)

    so = scan_order
    xs = {
        "t": e_time[so],
        "kind": e_kind[so],
        "cmt": e_cmt[so],
        "val": e_val[so],
        "origin": e_origin[so],
        "slot": e_slot[so],
    }
    if time_varying:
        xs["rec"] = nocb(e_time[so])

    def apply_event(x, rate, last_reset, ev_):
        kind, cm, val, origin = ev_["kind"], ev_["cmt"], ev_["val"], ev_["origin"]
        live = origin >= last_reset
        onehot = jax.nn.one_hot(cm, n)
        x = x + jnp.where((kind == _BOLUS) & live, val, 0.0) * onehot
        is_reset = (kind == _RESET) | (kind == _SS_RESET)
        x = jnp.where(is_reset, 0.0, x)
        last_reset = jnp.where(is_reset, origin, last_reset)
        is_ss = (kind == _SS_RESET) | (kind == _SS_ADD)
        x = x + jnp.where(is_ss, ss_x[ev_["slot"]], 0.0)
        if x_init_rec is not None:
            # A reset returns to the baseline; a steady state already contains it, so an
            # SS=2 record adds only its departure from the baseline.
            x_init = x_init_rec[jnp.clip(origin, 0, R - 1)]
            x = x + jnp.where(kind == _RESET, x_init, 0.0) - jnp.where(kind == _SS_ADD, x_init, 0.0)
        if cfg.infusions:  # else every input is zero throughout
            dr = jnp.where((kind == _INF_START) & live, val, 0.0) - jnp.where(
                (kind == _INF_END) & live, val, 0.0
            )
            rate = jnp.where(is_reset, 0.0, rate + dr * onehot)
            rate = rate + jnp.where(is_ss, ss_rate[ev_["slot"]], 0.0)
            # Clean up round-off of a finished infusion so the input is exactly off.
            rate = jnp.where(jnp.abs(rate) < 1e-12 * (jnp.abs(val) + 1.0), 0.0, rate)
        return x, rate, last_reset

    def segment_params(ev_):
        return jax.tree.map(lambda a: a[ev_["rec"]], sys_rec) if time_varying else sys0

    t_first = jnp.min(jnp.where(et.mask, et.time, jnp.inf))

    def body(carry, ev_):
        x, rate, t_prev, last_reset, code, dt = carry
        t = ev_["t"]
        sys = segment_params(ev_)
        t_from = jnp.minimum(t_prev, t)
        if prop.rk:
            x, dt, c_adv = _rk_advance(
                model, cfg, sys, x, rate, t_from, t, dt, forward=cfg.sensitivity == "forward"
            )
        else:
            # A closed form without infusions has no input between events.
            r_in = rate if cfg.infusions or not prop.closed else None
            x, c_adv = prop.advance(sys, x, r_in, t_from, t)
        code = jnp.maximum(code, c_adv)
        x, rate, last_reset = apply_event(x, rate, last_reset, ev_)
        t_now = jnp.maximum(t, t_prev)
        return (x, rate, t_now, last_reset, code, dt), (x, rate, t_now)

    # The first step tries the whole first segment; the controller shrinks it from there.
    x0 = jnp.zeros(n) if x_init_rec is None else x_init_rec[0]
    init = (
        x0,
        jnp.zeros(n),
        t_first,
        jnp.asarray(-1, jnp.int32),
        jnp.asarray(Status.SUCCESS),
        jnp.asarray(jnp.inf),
    )
    (_, _, _, _, code, _), (ys, rs, ts) = jax.lax.scan(body, init, xs)
    code = jnp.maximum(code, jnp.max(ss_code, initial=0))

    if prop.closed and not time_varying:
        return _closed_outputs(model, cfg, _EventStates(ys, rs, ts, code, sys0, q0), out_t, out_prev)

    # Outputs, in input order.
    has = out_prev >= 0
    prev = jnp.maximum(out_prev, 0)
    x0 = jnp.where(has[:, None], ys[prev], 0.0)
    if prop.closed:  # parameters varying in time
        h = jnp.where(has, out_t - ts[prev], 0.0)
        r0 = jnp.where(has[:, None], rs[prev], 0.0)
        sys_out = jax.tree.map(lambda a: a[nocb(out_t)], sys_rec)
        amounts = jax.vmap(lambda s_, x_, r_, h_: s_.advance(x_, r_, h_))(sys_out, x0, r0, h)
    else:
        amounts = x0
    if not time_varying:  # the same parameters at every output
        outputs = jax.vmap(model.observe, in_axes=(0, 0, None))(out_t, amounts, q0)
    else:
        q_out = q_rec if cfg.at_records else {k: v[nocb(out_times)] for k, v in q_rec.items()}
        outputs = jax.vmap(model.observe)(out_t, amounts, q_out)
    return amounts, outputs, _finite_status(code, amounts)


def _pad_patients(args, multiple):
    """Pad the patient axis to a multiple of ``multiple`` with copies of patient 0."""
    n_pat = jax.tree.leaves(args)[0].shape[0]
    pad = -n_pat % multiple
    if not pad:
        return args
    return jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]), args)


def _vmap_chunked(fn, args, batch_size):
    """``jax.vmap(fn)(*args)`` in equal chunks of at most ``batch_size`` patients: vmap
    within a chunk, a loop across chunks. Keeps the solver's loop state in cache (a plain
    vmap over 10^4 patients is several times slower). The patient axis is padded with
    copies of patient 0 so that every chunk has the same shape (one compilation)."""
    n_pat = jax.tree.leaves(args)[0].shape[0]
    if not batch_size or n_pat <= batch_size:
        return jax.vmap(fn)(*args)
    n_chunks = -(-n_pat // batch_size)
    size = -(-n_pat // n_chunks)
    chunks = jax.tree.map(lambda x: x.reshape((n_chunks, size) + x.shape[1:]), _pad_patients(args, size))
    out = jax.lax.map(lambda a: jax.vmap(fn)(*a), chunks)
    return jax.tree.map(lambda y: y.reshape((n_chunks * size,) + y.shape[2:])[:n_pat], out)


def _forward_sensitivities(one):
    """``one(et, p, out_times) -> (amounts, outputs, status)`` whose reverse-mode derivative
    comes from forward sensitivities: the solution and its Jacobian with respect to the
    inputs being differentiated (and only those) in one forward pass, the tangents carried
    through the solver's loop (no checkpointed reverse pass). For the few parameters of a
    patient this is several times cheaper than reverse mode through an adaptive ODE solver,
    as in Stan's ODE solvers."""
    from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

    structure: dict[str, Any] = {}

    @jax.custom_vjp
    def solve(et, p, out_times):
        return one(et, p, out_times)

    def fwd(et, p, out_times):
        is_primal = lambda a: isinstance(a, CustomVJPPrimal)  # noqa: E731
        primals, structure["tree"] = jax.tree.flatten((et, p, out_times), is_leaf=is_primal)
        values = [a.value for a in primals]
        moving = [
            i for i, a in enumerate(primals) if a.perturbed and jnp.issubdtype(a.value.dtype, jnp.floating)
        ]
        structure["moving"] = [(i, values[i].shape, values[i].size) for i in moving]

        def g(x):  # x: the differentiated inputs, raveled into one vector
            leaves, at = list(values), 0
            for i, shape, size in structure["moving"]:
                leaves[i] = x[at : at + size].reshape(shape)
                at += size
            amounts, outputs, code = one(*jax.tree.unflatten(structure["tree"], leaves))
            return (amounts, outputs), (amounts, outputs, code)

        x0 = jnp.concatenate([jnp.ravel(values[i]) for i in moving]) if moving else jnp.zeros(0)
        jac, out = jax.jacfwd(g, has_aux=True)(x0)  # leaves: output shape + (len(x0),)
        return out, jac

    def bwd(jac, ct):
        is_zero = lambda c: isinstance(c, SymbolicZero)  # noqa: E731
        cts = jax.tree.leaves(ct[:2], is_leaf=is_zero)
        grad = None
        for c, j in zip(cts, jax.tree.leaves(jac)):
            if not is_zero(c):
                term = jnp.tensordot(c, j, axes=c.ndim)
                grad = term if grad is None else grad + term
        leaves: list[Any] = [None] * structure["tree"].num_leaves
        at = 0
        for i, shape, size in structure["moving"]:
            leaves[i] = None if grad is None else grad[at : at + size].reshape(shape)
            at += size
        return jax.tree.unflatten(structure["tree"], leaves)

    solve.defvjp(fwd, bwd, symbolic_zeros=True)
    return solve


@functools.partial(jax.jit, static_argnames=("model", "cfg", "layout", "times_batched"))
def _simulate_packed_jit(model, cfg, packed, out_times, *, layout, times_batched):
    """:func:`_simulate_jit` for a cohort whose per-patient inputs came packed by
    :func:`_pack_host` (and ``out_times`` too when ``times_batched``)."""
    inputs = _unpack(packed, layout)
    et, p = inputs[:2]
    if times_batched:
        out_times = inputs[2]
    return _simulate_jit(model, cfg, et, p, out_times, batched=True, times_batched=times_batched)


def _pack_host(tree, n: int):
    """Concrete per-patient host arrays (leading axis ``n``) packed into one ``(n, k)``
    array per dtype, and the (hashable) layout to unpack them: a cohort then reaches its
    devices in three transfers instead of one per field, which is most of a small call.
    ``None`` when a leaf is not a host array of ``n`` patients (e.g. a tracer)."""
    leaves, treedef = jax.tree.flatten(tree)
    groups: dict[str, list] = {}
    width: dict[str, int] = {}
    spec = []
    for x in leaves:
        if isinstance(x, jax.core.Tracer) or np.ndim(x) == 0 or np.shape(x)[0] != n:
            return None
        a = np.asarray(x).reshape(n, -1)
        key = a.dtype.str
        spec.append((key, width.get(key, 0), np.shape(x)[1:]))
        groups.setdefault(key, []).append(a)
        width[key] = width.get(key, 0) + a.shape[1]
    keys = tuple(sorted(groups))
    packed = tuple(np.concatenate(groups[k], axis=1) for k in keys)
    return packed, (treedef, keys, tuple(spec))


def _unpack(packed, layout):
    treedef, keys, spec = layout
    by_key = dict(zip(keys, packed))
    n = packed[0].shape[0]
    leaves = [
        by_key[k][:, at : at + int(np.prod(shape, dtype=int))].reshape((n, *shape)) for k, at, shape in spec
    ]
    return jax.tree.unflatten(treedef, leaves)


@functools.partial(jax.jit, static_argnames=("model", "cfg", "batched", "times_batched"))
def _simulate_jit(model, cfg, et, p, out_times, *, batched, times_batched):
    core = _superpose_one if cfg.superpose else _simulate_one
    if cfg.sensitivity == "forward" and cfg.method != "closed_form":
        solve = _forward_sensitivities(functools.partial(core, model, cfg))
        one = lambda model_, cfg_, et_, p_, t_: solve(et_, p_, t_)  # noqa: E731
    else:
        one = core
    if not batched:
        return one(model, cfg, et, p, out_times)
    n_pat = et.time.shape[0]
    args = (et, p, out_times) if times_batched else (et, p)

    def fn(e, q, t=out_times):
        return one(model, cfg, e, q, t)

    def run(*a):
        return _vmap_chunked(fn, a, cfg.batch_size)

    if cfg.devices <= 1:
        return run(*args)
    # Several devices (e.g. CPU cores made devices by twinrx.use_cpu_cores): each runs
    # its share of the patients; one compilation for all.
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()[: cfg.devices]), ("patients",))
    spec = jax.sharding.PartitionSpec("patients")
    sharded = jax.shard_map(
        run,
        mesh=mesh,
        in_specs=spec,
        out_specs=spec,
        check_vma=False,
    )
    out = sharded(*_pad_patients(args, cfg.devices))
    return jax.tree.map(lambda y: y[:n_pat], out)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------
def _resolve_method(model: AbstractModel, solver: str | None) -> str:
    if solver in (None, "auto"):
        return "closed_form" if model.has_closed_form() else "ode"
    solver = solver.replace("-", "_")
    if solver not in ("closed_form", "ode", "stiff"):
        raise ValueError(f"solver must be 'closed_form', 'ode' or 'stiff', not {solver!r}")
    if solver == "closed_form" and not model.has_closed_form():
        raise ValueError(f"model {model.name!r} has no closed form; use solver='ode' or 'stiff'")
    return solver


def _resolve_modifiers(model, params, lag, bioav, rate, duration):
    """Dosing modifiers -> ((kind, cmt index, parameter name), ...) and extra parameters.

    A modifier names a parameter (which may vary per record) or is a number.
    """
    spec: dict[tuple[str, int], Any] = {}
    for kind, mapping in model.dosing_modifiers.items():
        for cmt, src in mapping.items():
            spec[(kind, model.compartment_index(cmt))] = src
    for kind, mapping in zip(_MODIFIERS, (lag, bioav, rate, duration)):
        for cmt, src in (mapping or {}).items():
            spec[(kind, model.compartment_index(cmt))] = src
    params = dict(params)
    out = []
    for (kind, ci), src in sorted(spec.items()):
        if isinstance(src, str):
            if src not in params and src not in model.derived_names:
                known = [*params, *(d for d in model.derived_names if not d.startswith("__"))]
                raise ValueError(
                    f"{kind} of compartment {model.compartments[ci]!r} refers to {src!r}, which "
                    f"is not among the parameters ({', '.join(known)})"
                )
            name = src
        else:
            name = f"__{kind}_{ci}"
            params[name] = src
        out.append((kind, ci, name))
    return tuple(out), params


def simulate_arrays(
    model: AbstractModel,
    params: Mapping[str, Any],
    events: EventTable | Sequence[EventTable],
    times=None,
    *,
    solver: str | None = None,
    lag: Mapping | None = None,
    bioav: Mapping | None = None,
    rate: Mapping | None = None,
    duration: Mapping | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    max_steps: int = 4096,
    ss_iters: int = 3,
    batch_size: int | None = None,
    devices: int | None = None,
    superposition: bool | None = None,
    infusions: bool | None = None,
    sensitivity: str = "reverse",
):
    """Like :func:`simulate` but returns ``(amounts, outputs, status)`` as JAX arrays.

    This is the differentiable, jit-friendly core: ``params`` leaves and event arrays may be
    JAX tracers (differentiate with respect to parameters, dose amounts and dose times).

    ``superposition``: a closed form at requested ``times`` is computed as a sum of dose
    responses (no loop over events; faster for small problems, to differentiate most) when
    no record resets the system or is a steady state, no parameter varies in time, and
    outputs x doses is at most 64 per patient (beyond that the event loop is faster).
    ``None`` checks the records, which must then be concrete; ``True`` says they were
    checked (traced events); ``False`` never superposes.
    ``infusions=False`` likewise says that no record is an infusion (RATE = 0), which spares
    traced events the infusion arithmetic.

    ``sensitivity``: how reverse-mode derivatives (``jax.grad``) of an ODE solution are
    computed: ``"reverse"`` differentiates back through the solver's steps (checkpointed);
    ``"forward"`` carries forward sensitivities (one tangent per scalar being
    differentiated, per patient) through the solve, several times cheaper for the few
    parameters of a fit (its default for ODE models). Closed forms ignore it.

    A cohort is vmapped in chunks of ``batch_size`` patients (default: tuned per backend)
    and split over ``devices`` local devices (default: all of them; see
    :func:`twinrx.use_cpu_cores` to make each CPU core a device).
    """
    if isinstance(events, (list, tuple)):
        events = stack_tables(list(events))
    batched = events.time.ndim == 2
    referenced = {v for m in (lag, bioav, rate, duration) for v in (m or {}).values() if isinstance(v, str)}
    params = _with_defaults(model, params, referenced)
    params = model.host_inputs(params, events.time)
    mods, params = _resolve_modifiers(model, params, lag, bioav, rate, duration)
    found = _check_model_rate_codes(model, events, mods)  # True when the events are traced
    if infusions is False and found and not isinstance(events.rate, jax.core.Tracer):
        raise ValueError("infusions=False, but a dose record has RATE != 0")
    infusions = found and infusions is not False
    at_records = times is None
    out_times = np.zeros((0,)) if at_records else _as_float(times)
    times_batched = (not at_records) and out_times.ndim == 2
    if batched:
        N = events.time.shape[0]
        R = events.time.shape[1]
        pb = {}
        for k, v in params.items():
            v = _as_float(v)
            if v.ndim == 0:
                v = (np if isinstance(v, np.ndarray) else jnp).broadcast_to(v, (N,))
            if v.shape[0] != N:
                raise ValueError(f"parameter {k!r} has leading size {v.shape[0]}, but there are {N} patients")
            if v.ndim == 2 and v.shape[1] != R:
                v = _pad_edge(v, R)
            pb[k] = v
        params = pb
    else:
        R = events.time.shape[0]
        params = {
            k: (_pad_edge(_as_float(v), R) if jnp.ndim(v) == 1 else _as_float(v)) for k, v in params.items()
        }
    if sensitivity not in ("reverse", "forward"):
        raise ValueError(f"sensitivity must be 'reverse' or 'forward', not {sensitivity!r}")
    method = _resolve_method(model, solver)
    superpose = (
        method == "closed_form"
        and not at_records
        and not model.has_initial_state
        and all(jnp.ndim(v) == (1 if batched else 0) for v in params.values())
        and out_times.shape[-1] * events.dose_rec.shape[-1] <= _SUPERPOSE_MAX
        and _plain_doses(events, superposition)
    )
    cfg = SolverConfig(
        method=method,
        rtol=float(rtol),
        atol=float(atol),
        max_steps=int(max_steps),
        ss_iters=int(ss_iters),
        batch_size=int(batch_size) if batch_size is not None else _default_batch(method),
        modifiers=mods,
        at_records=at_records,
        infusions=infusions,
        devices=_n_devices(events.time.shape[0] if batched else 1, devices),
        superpose=superpose,
        sensitivity=sensitivity,
    )
    if batched and cfg.devices > 1:
        # Split over devices: concrete inputs go as a few packed host arrays, one transfer
        # each; arrays already on the first device would be copied again one by one.
        inputs = (events, params, out_times) if times_batched else (events, params)
        packed = _pack_host(inputs, events.time.shape[0])
        if packed is not None:
            return _simulate_packed_jit(
                model, cfg, packed[0], out_times, layout=packed[1], times_batched=times_batched
            )
    return _simulate_jit(model, cfg, events, params, out_times, batched=batched, times_batched=times_batched)


def _as_float(v):
    """A float64 array: JAX arrays and tracers as JAX arrays, anything else as a NumPy
    array, which the compiled call transfers itself (no separate copy to a device)."""
    if isinstance(v, jax.Array):
        return jnp.asarray(v, float)
    return np.asarray(v, dtype=float)


def _with_defaults(model: AbstractModel, params: Mapping[str, Any], referenced=()) -> dict[str, Any]:
    """The user's inputs, with the model's default for every parameter not given; a name
    neither the model nor a dosing modifier reads is an error (a typo would otherwise
    silently leave the default)."""
    known = set(model.input_names) | set(referenced)
    unknown = [k for k in params if k not in known and not k.startswith("__")]
    if unknown:
        import difflib

        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, sorted(known), n=1) or [
                n for n in known if n.lower() == k.lower()
            ]
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"unknown input{'s' if len(unknown) > 1 else ''} {', '.join(hints)} for model "
            f"{model.name!r}; it reads: {', '.join(model.input_names)}"
        )
    defaults = {p.name: p.value for p in model.parameters}
    return {**{k: v for k, v in defaults.items() if k not in params}, **params}


def _n_devices(n_patients: int, devices: int | None) -> int:
    """Devices a cohort is split over: all local ones by default (one per CPU core after
    :func:`twinrx.use_cpu_cores`), never more than there are patients."""
    n = len(jax.local_devices()) if devices is None else int(devices)
    return max(1, min(n, n_patients))


def _default_batch(method: str) -> int:
    """Patients per vmapped chunk on CPU (measured in benchmarks/simulate_cohort.py)."""
    if jax.default_backend() != "cpu":
        return 0
    return 250 if method == "closed_form" else 500


def _pad_edge(v, R):
    if v.shape[-1] == R:
        return v
    if v.shape[-1] > R:
        raise ValueError(f"a time-varying parameter has {v.shape[-1]} values but there are {R} records")
    pad = [(0, 0)] * (v.ndim - 1) + [(0, R - v.shape[-1])]
    return (np if isinstance(v, np.ndarray) else jnp).pad(v, pad, mode="edge")


# Superposition (a sum of dose responses, no loop over events) up to this many outputs x
# dose instances per patient; beyond it the event loop is faster, forward and for
# gradients. Measured on CPU, 50 patients, gradient of the sum of squared CP: 1 dose x 64
# outputs 62 vs 108 us (superposition vs loop), 2 x 20 49 vs 80 us, 4 x 16 87 vs 86 us,
# 3 x 20 103 vs 92 us, 5 x 10 (100 patients) 198 vs 162 us; 14 one-hour infusions x 169
# outputs (200 patients) 28.8 vs 2.2 ms.
_SUPERPOSE_MAX = 64


def _plain_doses(events: EventTable, asserted: bool | None) -> bool:
    """Whether no (unmasked) record resets the system or is a steady-state dose."""
    if asserted is False:
        return False
    try:
        plain = not resets_or_steady_states(events)
    except jax.errors.TracerArrayConversionError:
        return bool(asserted)
    if asserted and not plain:
        raise ValueError(
            "superposition=True, but a record resets the system (EVID 3/4) or is a steady state (SS)"
        )
    return plain


def _check_model_rate_codes(model, events, mods) -> bool:
    """RATE=-1/-2 need a modelled rate/duration; report every record that lacks one.

    Returns whether any record has RATE != 0 (an infusion; True when the events are traced,
    and then unchecked: the caller checked them)."""
    try:
        rate = np.atleast_2d(np.asarray(events.rate))
        cmt = np.atleast_2d(np.asarray(events.cmt))
        evid = np.atleast_2d(np.asarray(events.evid))
    except jax.errors.TracerArrayConversionError:
        return True
    infusions = bool(np.any(rate != 0))
    dose_all = np.isin(evid, (EVID_DOSE, EVID_RESET_DOSE)) & np.isin(rate, (-1, -2))
    if not dose_all.any():  # the common case: one vectorised test for the whole cohort
        return infusions
    have = {(k, c) for k, c, _ in mods}
    problems = []
    for pi in np.nonzero(dose_all.any(axis=1))[0]:
        dose = np.isin(evid[pi], (EVID_DOSE, EVID_RESET_DOSE))
        for i in np.nonzero(dose & np.isin(rate[pi], (-1, -2)))[0]:
            kind = "rate" if rate[pi, i] == -1 else "duration"
            if (kind, int(cmt[pi, i])) not in have:
                problems.append(
                    Problem(
                        str(pi + 1),
                        int(i) + 1,
                        "RATE",
                        f"RATE={rate[pi, i]:g} asks for a {kind} from the model, but none is "
                        f"defined for compartment {model.compartments[cmt[pi, i]]!r}",
                        f"pass {kind}={{{model.compartments[cmt[pi, i]]!r}: PARAM}} (CLI: "
                        f"--{kind} {int(cmt[pi, i]) + 1}=COLUMN), or give RATE > 0",
                    )
                )
    if problems:
        raise DataError(problems)
    return infusions


def simulate(
    model: AbstractModel | str,
    params: Mapping[str, Any],
    events: EventTable | Sequence[EventTable],
    times=None,
    *,
    solver: str | None = None,
    lag: Mapping | None = None,
    bioav: Mapping | None = None,
    rate: Mapping | None = None,
    duration: Mapping | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    max_steps: int = 4096,
    ss_iters: int = 3,
    batch_size: int | None = None,
    devices: int | None = None,
    ids: Sequence[str] | None = None,
):
    """Simulate one patient or a cohort and return an ``xarray.Dataset``.

    Parameters
    ----------
    model
        A model instance or a built-in name (``"two_cpt_oral"``...).
    params
        Parameter name -> value. A scalar, or one value per record (time-varying, NONMEM
        semantics: a record's value governs the interval that ends at it). For a cohort,
        a leading patient axis: ``(N,)`` or ``(N, R)``.
    events
        An :class:`~twinrx.events.EventTable`, a list of them (a cohort), or a stacked one.
    times
        Output times in hours, ``(T,)`` or ``(N, T)``. ``None``: one output per record.
    solver
        ``"closed_form"`` (default where the model has one), ``"ode"`` (Tsit5) or
        ``"stiff"`` (Kvaerno5).
    lag, bioav, rate, duration
        Per-compartment dosing modifiers ``{compartment: parameter name or number}``;
        compartments by name or NONMEM number.
    batch_size, devices
        Patients per vmapped chunk and local devices a cohort is split over (see
        :func:`simulate_arrays`); the defaults suit the backend.

    Returns
    -------
    xarray.Dataset
        Dims ``patient`` and ``time`` (or ``record`` when ``times`` is None); one variable
        ``A_<compartment>`` per compartment (amount) and one per model output, units in
        ``attrs``; ``status`` and ``status_message`` per patient.

    Examples
    --------
    >>> import twinrx
    >>> m = twinrx.get_model("one_cpt_oral")
    >>> ev = twinrx.EventTable.from_records([0.0], evid=[1], amt=[100.0], cmt=[1])
    >>> ds = twinrx.simulate(m, {"CL": 5.0, "V": 50.0, "KA": 1.0}, ev, times=[0.0, 1.0, 12.0])
    >>> float(ds.CP.sel(time=12.0).item()) > 0
    True
    """
    from .model.library import get_model
    from .results import simulation_dataset

    model = get_model(model)
    if isinstance(events, (list, tuple)):
        events = stack_tables(list(events))
    amounts, outputs, status = simulate_arrays(
        model,
        params,
        events,
        times,
        solver=solver,
        lag=lag,
        bioav=bioav,
        rate=rate,
        duration=duration,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        ss_iters=ss_iters,
        batch_size=batch_size,
        devices=devices,
    )
    return simulation_dataset(model, events, times, amounts, outputs, status, ids=ids)
