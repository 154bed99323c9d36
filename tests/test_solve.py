"""The simulator: closed forms against textbook solutions, cohorts, failures as status."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import twinrx
from twinrx import EventTable, Status

TIMES = np.linspace(0.0, 48.0, 25)


def test_one_cpt_oral_matches_bateman_function():
    m = twinrx.get_model("one_cpt_oral")
    p = {"CL": 4.0, "V": 40.0, "KA": 1.3}
    ev = EventTable.from_records([0.0], [1], [250.0], [1])
    ds = twinrx.simulate(m, p, ev, times=TIMES)
    k, ka = 0.1, 1.3
    ref = 250.0 * ka / (40.0 * (ka - k)) * (np.exp(-k * TIMES) - np.exp(-ka * TIMES))
    np.testing.assert_allclose(ds.CP.values[0], ref, rtol=1e-12, atol=1e-14)
    assert ds.CP.attrs["units"] == "mg/L" and ds.A_central.attrs["units"] == "mg"


def test_one_cpt_iv_infusion_matches_closed_form():
    m = twinrx.get_model("one_cpt_iv")
    ev = EventTable.from_records([0.0], [1], [100.0], [1], rate=[20.0])  # 5 h infusion
    ds = twinrx.simulate(m, {"CL": 2.0, "V": 10.0}, ev, times=TIMES)
    k = 0.2
    t = TIMES
    during = 20.0 / 2.0 * (1 - np.exp(-k * t))
    after = 20.0 / 2.0 * (1 - np.exp(-k * 5.0)) * np.exp(-k * (t - 5.0))
    np.testing.assert_allclose(ds.CP.values[0], np.where(t <= 5.0, during, after), rtol=1e-12)


def test_ka_equal_to_k_degenerate_case():
    # KA == CL/V: the Bateman function's limit, A(t) = D k t exp(-k t)
    m = twinrx.get_model("one_cpt_oral")
    ev = EventTable.from_records([0.0], [1], [100.0], [1])
    ds = twinrx.simulate(m, {"CL": 5.0, "V": 50.0, "KA": 0.1}, ev, times=TIMES)
    np.testing.assert_allclose(
        ds.A_central.values[0], 100.0 * 0.1 * TIMES * np.exp(-0.1 * TIMES), rtol=2e-6, atol=1e-6
    )


@pytest.mark.parametrize("name", ["two_cpt_iv", "three_cpt_oral"])
def test_closed_form_matches_scipy(name):
    m = twinrx.get_model(name)
    p = {k: float(v) for k, v in m.typical_params().items()}
    ev = EventTable.from_records([0.0, 6.0], [1, 1], [100.0, 50.0], [1, 1], rate=[0.0, 25.0])
    ds = twinrx.simulate(m, p, ev, times=TIMES)
    a = np.asarray(m.system_matrix(p))
    n = a.shape[0]

    def rhs(t, y):
        r = np.zeros(n)
        if 6.0 <= t < 8.0:
            r[0] = 25.0
        return a @ y + r

    y0 = np.zeros(n)
    y0[0] = 100.0
    sol = solve_ivp(rhs, (0, 48), y0, t_eval=TIMES, rtol=1e-11, atol=1e-12, method="LSODA", max_step=0.05)
    ours = np.stack([ds[f"A_{c}"].values[0] for c in m.compartments])
    np.testing.assert_allclose(ours, sol.y, rtol=1e-6, atol=1e-8)


def test_cohort_with_different_event_counts_matches_single_patients():
    m = twinrx.get_model("two_cpt_oral")
    e1 = EventTable.from_records([0.0], [1], [100.0], [1], ii=[12.0], addl=[3])
    e2 = EventTable.from_records([0.0, 2.0, 30.0], [1, 0, 1], [50.0, 0.0, 80.0], [1, 2, 2], rate=[0, 0, 40.0])
    params = {"CL": np.array([4.0, 6.0]), "V1": np.array([40.0, 60.0]), "Q": 10.0, "V2": 100.0, "KA": 1.0}
    for solver in ("closed_form", "ode"):
        ds = twinrx.simulate(m, params, [e1, e2], times=TIMES, solver=solver, rtol=1e-10, atol=1e-12)
        for i, e in enumerate([e1, e2]):
            pi = {k: (v[i] if np.ndim(v) else v) for k, v in params.items()}
            single = twinrx.simulate(m, pi, e, times=TIMES, solver="closed_form")
            np.testing.assert_allclose(ds.CP.values[i], single.CP.values[0], rtol=1e-7, atol=1e-12)
        assert list(ds.status.values) == [0, 0]


def test_failure_is_status_not_nan():
    m = twinrx.get_model("one_cpt_oral")
    ev = EventTable.from_records([0.0], [1], [100.0], [1])
    bad = {"CL": np.array([5.0, 5.0]), "V": np.array([50.0, 50.0]), "KA": np.array([1.0, 1e9])}
    ds = twinrx.simulate(m, bad, [ev, ev], times=TIMES, solver="ode", max_steps=64)
    assert ds.status.values[0] == Status.SUCCESS
    assert ds.status.values[1] == Status.MAX_STEPS
    assert "max_steps" in str(ds.status_message.values[1])


def test_nonfinite_parameters_flagged():
    m = twinrx.get_model("one_cpt_iv")
    ev = EventTable.from_records([0.0], [1], [100.0], [1])
    ds = twinrx.simulate(m, {"CL": np.array([1.0, np.nan]), "V": 10.0}, [ev, ev], times=TIMES)
    assert list(ds.status.values) == [Status.SUCCESS, Status.NONFINITE]


def test_stiff_solver_agrees():
    m = twinrx.get_model("two_cpt_iv")
    ev = EventTable.from_records([0.0], [1], [100.0], [1], ii=[8.0], addl=[2])
    p = {"CL": 30.0, "V1": 1.0, "Q": 50.0, "V2": 200.0}  # fast and slow time scales
    ref = twinrx.simulate(m, p, ev, times=TIMES)
    st = twinrx.simulate(m, p, ev, times=TIMES, solver="stiff", rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(st.A_peripheral.values, ref.A_peripheral.values, rtol=1e-6, atol=1e-9)


def test_unknown_solver_unknown_param_and_defaults():
    m = twinrx.get_model("one_cpt_iv")
    ev = EventTable.from_records([0.0], [1], [100.0], [1])
    with pytest.raises(ValueError, match="solver must be"):
        twinrx.simulate(m, {"CL": 1.0, "V": 1.0}, ev, times=TIMES, solver="rk4")
    with pytest.raises(ValueError, match=r"unknown input 'Vd' .*did you mean 'V'"):
        twinrx.simulate(m, {"CL": 1.0, "Vd": 2.0}, ev, times=TIMES)
    # A parameter not given takes the model's default (V = 50 L): C(0) = 100 mg / 50 L.
    ds = twinrx.simulate(m, {"CL": 1.0}, ev, times=[0.0])
    assert float(np.asarray(ds.CP).ravel()[0]) == pytest.approx(
        100.0 / float(dict(m.typical_params())["V"]), rel=1e-12
    )
    with pytest.raises(ValueError, match="unknown compartment 'gut'"):
        twinrx.simulate(m, {"CL": 1.0, "V": 1.0}, ev, times=TIMES, lag={"gut": 1.0})


def test_cohort_split_over_cpu_devices_matches_one_device():
    """use_cpu_cores(2) in a fresh interpreter: the cohort is split over two devices and
    gives the same numbers as one device (closed form and ODE, with an odd patient count)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import numpy as np, twinrx
        assert twinrx.use_cpu_cores(2) == 2
        m = twinrx.get_model("two_cpt_oral")
        ev = twinrx.EventTable.from_records([0.0], [1], [100.0], [1], ii=[12.0], addl=[3])
        rng = np.random.default_rng(0)
        p = {k: v * np.exp(0.3 * rng.normal(size=7)) for k, v in
             {"CL": 5.0, "V1": 50.0, "Q": 10.0, "V2": 100.0, "KA": 1.0}.items()}
        for solver in ("closed_form", "ode"):
            one = twinrx.simulate_arrays(m, p, [ev] * 7, np.arange(0.0, 48.0, 3.0), solver=solver, devices=1)
            two = twinrx.simulate_arrays(m, p, [ev] * 7, np.arange(0.0, 48.0, 3.0), solver=solver)
            np.testing.assert_allclose(np.asarray(two[1]["CP"]), np.asarray(one[1]["CP"]), rtol=1e-12)
            assert np.asarray(two[1]["CP"]).shape == (7, 16)
        # The inputs travel packed: per-patient times, a per-record parameter, JAX arrays,
        # tables of different lengths; and traced inputs (under jit) unpacked.
        import jax, jax.numpy as jnp
        tables = [twinrx.EventTable.from_records([0.0, 6.0 + i, 30.0], [1, 0, 1], [100.0, 0, 50.0], [1, 2, 1])
                  for i in range(5)] + [ev, ev]
        times = np.arange(0.0, 48.0, 3.0)[None, :] + np.arange(7.0)[:, None]
        events = twinrx.stack_tables(tables)
        R = events.time.shape[1]
        q = {k: jnp.asarray(v) for k, v in p.items()} | {"CL": np.repeat(p["CL"][:, None], R, 1)}
        one = twinrx.simulate_arrays(m, q, events, times, devices=1)
        two = twinrx.simulate_arrays(m, q, events, times)
        np.testing.assert_allclose(np.asarray(two[1]["CP"]), np.asarray(one[1]["CP"]), rtol=1e-12)
        jitted = jax.jit(lambda q_: twinrx.simulate_arrays(m, q_, events, times)[1]["CP"])(q)
        np.testing.assert_allclose(np.asarray(jitted), np.asarray(one[1]["CP"]), rtol=1e-12)
        print("OK")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("OK")


def test_use_cpu_cores_after_jax_started_says_when_to_call_it():
    twinrx.simulate(
        twinrx.get_model("one_cpt_iv"),
        {"CL": 1.0, "V": 10.0},
        EventTable.from_records([0.0], [1], [1.0], [1]),
    )
    n = len(jax.devices("cpu"))
    assert twinrx.use_cpu_cores(n) == n  # nothing to change
    with pytest.raises(RuntimeError, match="before JAX runs its first computation"):
        twinrx.use_cpu_cores(n + 1)


@pytest.mark.parametrize("name", ["one_cpt_oral", "two_cpt_iv", "three_cpt_oral"])
def test_superposition_matches_the_event_loop(name, monkeypatch):
    """The superposed closed form (fitting's fast path) against the event loop, whose
    dosing semantics the NONMEM conformance suite checks: boluses, ADDL, an infusion with
    a modelled duration (RATE=-2), a lag and a bioavailability, outputs at dose times."""
    from twinrx import solve
    from twinrx.solve import simulate_arrays

    superpose = solve._superpose_one

    m = twinrx.get_model(name)
    rng = np.random.default_rng(3)
    first = m.compartments[0]
    # bolus + 3 ADDL every 12 h into the first compartment, an infusion (modelled duration)
    # into the central one at 30 h, an observation record.
    ev = EventTable.from_records(
        [0.0, 5.0, 30.0, 40.0],
        [1, 0, 1, 0],
        [100.0, 0.0, 60.0, 0.0],
        [1, 1, m.compartments.index("central") + 1, 1],
        rate=[0.0, 0.0, -2.0, 0.0],
        ii=[12.0, 0, 0, 0],
        addl=[3, 0, 0, 0],
        modelled_duration=[m.compartments.index("central")],
    )
    # 12 outputs x 5 dose instances: within what superposes (outputs x doses <= 64)
    times = np.sort(np.concatenate([[0.0, 12.0, 24.0, 30.0, 30.4, 36.0], rng.uniform(0.0, 72.0, 6)]))
    p = {k: float(v) * np.exp(0.2 * rng.standard_normal()) for k, v in m.typical_params().items()}
    mods = {"lag": {first: 0.4}, "bioav": {first: 0.7}, "duration": {"central": 3.0}}

    def run(params, superposition):
        amounts, out, status = simulate_arrays(m, params, ev, times, superposition=superposition, **mods)
        assert int(status) == 0
        return amounts, out["CP"]

    a_loop, c_loop = run(p, False)
    traced = []  # superposition is really taken
    monkeypatch.setattr(solve, "_superpose_one", lambda *a: traced.append(1) or superpose(*a))
    solve._simulate_jit.clear_cache()
    a_sup, c_sup = run(p, True)
    assert traced
    assert float(np.max(a_loop)) > 1.0  # doses arrived
    np.testing.assert_allclose(a_sup, a_loop, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c_sup, c_loop, rtol=1e-10, atol=1e-12)
    # Gradients too (what NUTS and MAP use).
    g_loop = jax.grad(lambda q: run(q, False)[1].sum())(p)
    g_sup = jax.grad(lambda q: run(q, True)[1].sum())(p)
    for k in p:
        np.testing.assert_allclose(g_sup[k], g_loop[k], rtol=1e-8, err_msg=k)


def test_superposition_is_refused_for_resets_and_steady_states():
    from twinrx.solve import simulate_arrays

    m = twinrx.get_model("one_cpt_iv")
    ss = EventTable.from_records([0.0, 1.0], [1, 0], [100.0, 0.0], [1, 1], ss=[1, 0], ii=[12.0, 0])
    with pytest.raises(ValueError, match="steady state"):
        simulate_arrays(m, {"CL": 2.0, "V": 10.0}, ss, TIMES, superposition=True)
    # Left to decide, the steady state goes through the event loop and is right:
    # C(t) = D/V e^{-kt} / (1 - e^{-k II}) within the first interval.
    _, out, _ = simulate_arrays(m, {"CL": 2.0, "V": 10.0}, ss, TIMES[TIMES < 12])
    t = TIMES[TIMES < 12]
    np.testing.assert_allclose(out["CP"], 10.0 * np.exp(-0.2 * t) / (1 - np.exp(-0.2 * 12)), rtol=1e-10)


@pytest.mark.parametrize("solver", ["closed_form", "ode"])
@pytest.mark.parametrize("infusion", [False, True])
def test_steady_state_with_lag_longer_than_the_interval(solver, infusion):
    """SS=1 with a lag time longer than the interval, NONMEM 7.6's convention (measured and
    reported by the ferx-core developers, FeRx-NLME/ferx-core PR #1125): the phase is
    clamped to 0, so the record carries the state right after an implied arrival — for a
    bolus the steady-state peak (D/V)/(1 - exp(-k II)) — and decays until the record's own
    dose arrives at t + L; an implied infusion runs on for D + L - II hours after the
    record. Written here in NumPy for one compartment."""
    from twinrx.solve import simulate_arrays

    m = twinrx.get_model("one_cpt_iv")
    cl, v, ii, lag, amt, dur = 2.0, 10.0, 6.0, 8.5, 100.0, 2.5
    ke = cl / v
    rate = amt / dur if infusion else 0.0
    ev = EventTable.from_records([0.0], [1], [amt], [1], rate=[rate], ss=[1], ii=[ii])
    times = np.linspace(0.0, 30.0, 61)
    _, out, status = simulate_arrays(m, {"CL": cl, "V": v}, ev, times, solver=solver, lag={"central": lag})
    assert int(status) == 0
    t = times
    if infusion:
        # the steady-state amount when an infusion starts, then that infusion running on
        # until D + L - II, and the record's own infusion over [L, L + D)
        a0 = rate / ke * (1 - np.exp(-ke * dur)) * np.exp(-ke * (ii - dur)) / (1 - np.exp(-ke * ii))

        def infused(start, stop):
            on = np.clip(t - start, 0.0, stop - start)
            return rate / ke * (1 - np.exp(-ke * on)) * np.exp(-ke * np.clip(t - stop, 0.0, None))

        a = a0 * np.exp(-ke * t) + infused(0.0, dur + lag - ii) + infused(lag, lag + dur)
    else:
        a = amt / (1 - np.exp(-ke * ii)) * np.exp(-ke * t) + np.where(
            t >= lag, amt * np.exp(-ke * (t - lag)), 0
        )
    tol = 1e-9 if solver == "closed_form" else 2e-5
    np.testing.assert_allclose(np.asarray(out["CP"]), a / v, rtol=tol, atol=1e-9)


def test_forward_sensitivities_match_the_closed_forms_gradient():
    """Gradients of an ODE solution by forward sensitivities (fitting's default) against the
    gradient of the closed form (another solver, differentiated analytically by JAX): with
    respect to parameters, the
    dose amounts and a dose time, through boluses, ADDL, an infusion with a modelled
    duration, a lag, a bioavailability and a steady-state record."""
    import equinox as eqx

    from twinrx.solve import simulate_arrays

    m = twinrx.get_model("two_cpt_oral")
    first = m.compartments[0]
    central = m.compartments.index("central") + 1
    ev = EventTable.from_records(
        [0.0, 5.0, 31.0, 40.0, 60.0],
        [1, 0, 1, 0, 1],
        [100.0, 0.0, 60.0, 0.0, 80.0],
        [1, 1, central, 1, 1],
        rate=[0.0, 0.0, -2.0, 0.0, 0.0],
        ii=[12.0, 0, 0, 0, 8.0],
        addl=[1, 0, 0, 0, 0],
        ss=[0, 0, 0, 0, 1],
        modelled_duration=[central - 1],
    )
    rng = np.random.default_rng(5)
    times = np.sort(np.concatenate([[0.0, 12.0, 30.0, 60.0], rng.uniform(0.0, 72.0, 16)]))
    p = {k: float(v) * np.exp(0.2 * rng.standard_normal()) for k, v in m.typical_params().items()}
    mods = {"lag": {first: 0.4}, "bioav": {first: 0.7}, "duration": {"central": 3.0}}
    weights = np.linspace(1.0, 2.0, times.size)

    def loss(q, amt, t_dose, solver, sensitivity):
        # the infusion's record and dose time (away from the output times: no kink there)
        e = eqx.tree_at(
            lambda x: (x.amt, x.time, x.dose_time),
            ev,
            (amt, ev.time.at[2].set(t_dose), ev.dose_time.at[2].set(t_dose)),
        )
        _, out, status = simulate_arrays(
            m, q, e, times, solver=solver, sensitivity=sensitivity, rtol=1e-10, atol=1e-12, **mods
        )
        return jnp.sum(out["CP"] * weights), status

    grads = {}
    for solver, sensitivity in (("closed_form", "reverse"), ("ode", "forward")):
        (value, status), g = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
            p, jnp.asarray(ev.amt), jnp.asarray(31.0), solver, sensitivity
        )
        assert int(status) == 0
        grads[solver, sensitivity] = jax.tree.leaves(g)
    exact = grads["closed_form", "reverse"]
    assert all(np.all(np.isfinite(g)) for g in exact) and np.any(np.abs(exact[-1]) > 0)
    for got, want in zip(grads["ode", "forward"], exact):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_sensitivity_is_checked():
    from twinrx.solve import simulate_arrays

    ev = EventTable.from_records([0.0], [1], [100.0], [1])
    with pytest.raises(ValueError, match="sensitivity must be"):
        simulate_arrays(twinrx.get_model("one_cpt_iv"), {}, ev, TIMES, sensitivity="adjoint")


@pytest.mark.parametrize("n_events", [7, 40, 150])  # all-pairs ranks up to 96, lexsort above
def test_event_order_is_nonmem_order(n_events):
    """Events are ordered by time, then NONMEM's key at equal times, then position: the
    order must equal numpy's lexsort, with many ties of time and of key, and infinities."""
    from twinrx.solve import _nonmem_order

    rng = np.random.default_rng(n_events)
    for _ in range(20):
        t = rng.integers(0, 5, n_events).astype(float)
        t[rng.random(n_events) < 0.05] = np.inf
        key = rng.integers(-1, 4, n_events).astype(np.int32)
        want = np.lexsort((np.arange(n_events), key, t))
        got = np.asarray(jax.jit(_nonmem_order)(jnp.asarray(t), jnp.asarray(key)))
        np.testing.assert_array_equal(got, want)


def test_closed_form_with_more_events_than_the_rank_order_takes():
    """A patient with more than 96 events (the sorted path) against the ODE, with outputs
    between, at and after the doses."""
    n_doses = 120
    ev = EventTable.from_records(
        time=list(np.arange(n_doses) * 6.0), evid=[1] * n_doses, amt=[10.0] * n_doses, cmt=[1] * n_doses
    )
    m = twinrx.get_model("two_cpt_oral")
    p = {"CL": 4.0, "V1": 30.0, "Q": 8.0, "V2": 80.0, "KA": 1.3}
    times = np.linspace(0.0, 6.0 * n_doses + 24.0, 301)
    _, closed, s1 = twinrx.simulate_arrays(m, p, ev, times, solver="closed_form")
    _, ode, s2 = twinrx.simulate_arrays(m, p, ev, times, solver="ode", rtol=1e-10, atol=1e-12)
    assert int(s1) == int(s2) == Status.SUCCESS
    np.testing.assert_allclose(np.asarray(closed["CP"]), np.asarray(ode["CP"]), rtol=1e-7, atol=1e-12)
