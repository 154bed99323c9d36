"""Bayesian fitting: likelihood pieces against scipy, diagnostics against arviz-stats, MAP
against scipy's optimiser, Laplace against the exact Gaussian posterior, the ArviZ store
against arviz_base, and sequential updating against a fit on all the data."""

import numpy as np
import pytest
import scipy.optimize
import scipy.stats as st

import twinrx
from twinrx.data.patient import Cohort, Dosing, Patient, Series
from twinrx.infer import (
    FitData,
    PopulationModel,
    ess_bulk,
    ess_tail,
    fit,
    from_datatree,
    merge_cohorts,
    rhat,
    to_datatree,
    update,
)
from twinrx.infer.model import Observation, default_prior
from twinrx.model.residual import residual_logcdf, residual_logpdf

pytestmark = pytest.mark.fitting

# ------------------------------------------------------------------ likelihood pieces


@pytest.mark.parametrize(
    "kind,a,b",
    [("additive", 0.3, 0.0), ("proportional", 0.0, 0.2), ("combined", 0.1, 0.15), ("exponential", 0.25, 0.0)],
)
def test_residual_densities_match_scipy(kind, a, b):
    y, f, lim = 1.7, 2.1, 0.5
    if kind == "exponential":
        ref = st.lognorm(s=a, scale=f)
        assert float(residual_logpdf(kind, y, f, a, b)) == pytest.approx(ref.logpdf(y), rel=1e-12)
        assert float(residual_logcdf(kind, lim, f, a, b)) == pytest.approx(ref.logcdf(lim), rel=1e-10)
        return
    sd = {"additive": a, "proportional": b * f, "combined": np.hypot(a, b * f)}[kind]
    ref = st.norm(f, sd)
    assert float(residual_logpdf(kind, y, f, a, b)) == pytest.approx(ref.logpdf(y), rel=1e-12)
    assert float(residual_logcdf(kind, lim, f, a, b)) == pytest.approx(ref.logcdf(lim), rel=1e-10)
    assert float(residual_logcdf(kind, lim, f, a, b, upper=True)) == pytest.approx(ref.logsf(lim), rel=1e-10)


def test_observation_m3_and_padding():
    f = np.array([[2.0, 1.0, 0.0]])
    d = Observation(
        "additive",
        f,
        0.5,
        0.0,
        np.array([[0, -1, 0]]),
        np.array([[0.0, 0.8, 0.0]]),
        np.array([[True, True, False]]),
    )
    lp = np.asarray(d.log_prob(np.array([[2.4, 0.8, 1.0]])))
    assert lp[0, 0] == pytest.approx(st.norm(2.0, 0.5).logpdf(2.4))
    assert lp[0, 1] == pytest.approx(st.norm(1.0, 0.5).logcdf(0.8))  # M3: P(y < LLOQ)
    assert lp[0, 2] == 0.0
    # Without censored observations (known from the data) only the densities are computed.
    exact = Observation(
        "additive",
        f,
        0.5,
        0.0,
        np.zeros((1, 3)),
        np.zeros((1, 3)),
        np.array([[True, True, False]]),
        censored=False,
    )
    lp = np.asarray(exact.log_prob(np.array([[2.4, 0.8, 1.0]])))
    np.testing.assert_allclose(lp[0, :2], st.norm([2.0, 1.0], 0.5).logpdf([2.4, 0.8]), rtol=1e-12)
    assert lp[0, 2] == 0.0


def test_fit_data_knows_which_outputs_are_censored():
    m, cohort, _ = _cohort(n=3)
    assert FitData.from_cohort(m, cohort).censored == ()
    p = cohort[1]
    s = p.series["CP"]
    blq = Series(
        "CP", "mg/L", s.time, s.value, kind="response", censored=np.r_[np.zeros(s.time.size - 1), -1]
    )
    p2 = Patient(p.id, series={"CP": blq}, dosing=p.dosing)
    data = FitData.from_cohort(m, Cohort((cohort[0], p2, cohort[2])))
    assert data.censored == ("CP",) and data.select([0]).censored == ("CP",)


def test_default_priors_follow_values_and_bounds():
    p = default_prior(5.0, (0, 1e4))
    assert float(np.exp(p.loc)) == pytest.approx(5.0)  # log-normal around the card value
    b = default_prior(0.7, (0.0, 1.0))
    draws = np.asarray(b.sample(twinrx_key(), (4000,)))
    assert draws.min() > 0 and draws.max() < 1 and np.median(draws) == pytest.approx(0.7, abs=0.05)


def twinrx_key(seed=0):
    import jax

    return jax.random.key(seed)


# ------------------------------------------------------------------ diagnostics vs arviz-stats


def test_summary_of_a_single_draw_has_no_diagnostics():
    from twinrx.infer.diagnostics import summarize

    s = summarize({"a": np.full((1, 1), 2.0), "b": np.arange(3.0).reshape(1, 1, 3)})
    assert float(s["a"]["median"]) == 2.0 and s["b"]["median"].tolist() == [0.0, 1.0, 2.0]
    assert np.isnan(s["a"]["r_hat"]) and np.all(np.isnan(s["b"]["ess_bulk"]))


def test_rhat_and_ess_agree_with_arviz_stats():
    array_stats = pytest.importorskip("arviz_stats.base").array_stats
    rng = np.random.default_rng(1)
    for shift in (0.0, 0.4):
        x = rng.standard_normal((4, 400)).cumsum(1) * 0.05 + rng.standard_normal((4, 400))
        x[0] += shift
        ref_r = array_stats.rhat(x, chain_axis=0, draw_axis=1, method="rank")
        ref_b = array_stats.ess(x, chain_axis=0, draw_axis=1, method="bulk")
        ref_t = array_stats.ess(x, chain_axis=0, draw_axis=1, method="tail", prob=(0.05, 0.95))
        assert float(rhat(x)) == pytest.approx(ref_r, rel=1e-9)
        # numpyro's and ArviZ's autocorrelation truncations differ slightly: within 5 %
        assert float(ess_bulk(x)) == pytest.approx(ref_b, rel=0.05)
        assert float(ess_tail(x)) == pytest.approx(ref_t, rel=0.05)


# ------------------------------------------------------------------ a small synthetic cohort


def _cohort(n=6, seed=3, times=(0.5, 1, 2, 4, 8, 12, 24)):
    """One-compartment oral patients simulated with known individual parameters."""
    m = twinrx.get_model("one_cpt_oral")
    rng = np.random.default_rng(seed)
    cl = 5.0 * np.exp(0.3 * rng.standard_normal(n))
    v = 50.0 * np.exp(0.2 * rng.standard_normal(n))
    ka = 1.0 * np.exp(0.3 * rng.standard_normal(n))
    t = np.asarray(times, float)
    pats = []
    for i in range(n):
        c = 100 * ka[i] / (v[i] * (ka[i] - cl[i] / v[i])) * (np.exp(-cl[i] / v[i] * t) - np.exp(-ka[i] * t))
        y = c + 0.05 * rng.standard_normal(t.size)
        pats.append(
            Patient(
                f"P{i}",
                series={"CP": Series("CP", "mg/L", t, y, kind="response")},
                dosing=Dosing([0.0], [100.0], cmt=[1]),
            )
        )
    return m, Cohort(tuple(pats)), {"CL": cl, "V": v, "KA": ka}


def test_fitdata_from_cohort_layout_and_unit_conversion():
    m, cohort, _ = _cohort(n=2)
    p = cohort[0]
    ug = Series("CP", "ug/mL", p.series["CP"].time[:3], p.series["CP"].value[:3] * 1.0, kind="response")
    mixed = Cohort((Patient("A", series={"CP": ug}, dosing=p.dosing), cohort[1]))
    d = FitData.from_cohort(m, mixed)
    assert d.times.shape == (2, 7) and d.obs["CP"].value.shape == (2, 7)
    assert np.asarray(d.obs["CP"].mask).sum(1).tolist() == [3, 7]
    # ug/mL is mg/L: values unchanged; times of patient A padded with its last time
    assert np.allclose(np.asarray(d.obs["CP"].value)[0, :3], ug.value)
    assert np.asarray(d.times)[0, 3:].tolist() == [2.0] * 4


def test_missing_covariate_is_an_error_naming_patient_and_column():
    m = twinrx.get_model("vancomycin_goti_2018")
    pat = Patient(
        "P1",
        series={"CP": Series("CP", "mg/L", [2.0], [10.0], kind="response")},
        dosing=Dosing([0.0], [1000.0], cmt=[1], rate=[1000.0]),
    )
    with pytest.raises(twinrx.DataError, match=r"patient P1.*column CRCL"):
        FitData.from_cohort(m, Cohort((pat,)))


def _exact_gaussian_posterior(pop, data, cond):
    """The individual posterior of z given fixed population values is exactly what the
    optimiser must find; scipy minimises the same negative log density independently."""
    import jax.numpy as jnp
    from numpyro import handlers
    from numpyro.infer.util import log_density

    fn = handlers.condition(pop, data=cond)

    def nll(x):
        params = {s: jnp.asarray([x[j]]) for j, s in enumerate(pop.patient_sites)}
        return float(-log_density(fn, (data,), {}, params)[0])

    return scipy.optimize.minimize(
        nll,
        np.zeros(len(pop.patient_sites)),
        method="Nelder-Mead",
        options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 20000},
    )


def _assert_map_is_the_exact_mode(m, cohort, ind, *, patients):
    """An individual MAP fit's random effects equal scipy's minimum of the same posterior."""
    assert np.all(ind.info["converged"])
    d = FitData.from_cohort(m, cohort)
    cond = {k: np.asarray(v) for k, v in ind.conditioned.items()}
    for i in range(patients):
        ref = _exact_gaussian_posterior(ind.pop, d.select([i]), cond)
        z = [float(ind.samples[s][0, 0, i]) for s in ind.pop.patient_sites]
        assert np.allclose(z, ref.x, atol=2e-4), (z, ref.x)


def test_individual_map_matches_scipy_and_laplace_brackets_it():
    m, cohort, truth = _cohort(n=4)
    popfit = fit(m, cohort, method="map", error={"CP": "additive"})
    ind = fit(m, cohort, method="map", prior=popfit)
    _assert_map_is_the_exact_mode(m, cohort, ind, patients=2)
    lap = fit(m, cohort, method="laplace", prior=popfit, draws=2000)
    cl = lap.samples["CL_i"][0]
    lo, hi = np.quantile(cl, [0.01, 0.99], axis=0)
    assert np.all((lo < ind.samples["CL_i"][0, 0]) & (ind.samples["CL_i"][0, 0] < hi))


def test_store_is_readable_by_arviz_and_round_trips(tmp_path):
    azb = pytest.importorskip("arviz_base")
    import xarray as xr

    from twinrx.store import read_fit, write_fit

    m, cohort, _ = _cohort(n=3)
    f = fit(m, cohort, method="nuts", error={"CP": "additive"}, chains=2, warmup=150, draws=100, seed=1)
    tree = to_datatree(f)
    write_fit(tree, tmp_path / "fit.zarr")
    dt = azb.convert_to_datatree(xr.open_datatree(tmp_path / "fit.zarr", engine="zarr", consolidated=False))
    for g in (
        "posterior",
        "posterior_predictive",
        "observed_data",
        "sample_stats",
        "log_likelihood",
        "constant_data",
    ):
        assert g in dt.children
    post = dt["posterior"]
    assert post["CL"].dims == ("chain", "draw") and post["CL_i"].dims == ("chain", "draw", "patient")
    assert {"omega_CL", "sigma_CP"} <= set(post.data_vars)
    n_obs = sum(len(p.series["CP"]) for p in cohort)
    assert dt["log_likelihood"]["CP"].shape == (2, 100, n_obs)
    assert np.all(np.isfinite(dt["log_likelihood"]["CP"].values))
    back = from_datatree(read_fit(tmp_path / "fit.zarr"))
    assert np.array_equal(back.samples["CL"], f.samples["CL"])
    assert back.data.ids == f.data.ids


def test_sequential_update_agrees_with_fit_on_all_data():
    m, cohort, _ = _cohort(n=5)
    popfit = fit(m, cohort, method="map", error={"CP": "additive"})
    p = cohort[0]
    s = p.series["CP"]
    early = Patient(
        p.id, series={"CP": Series("CP", "mg/L", s.time[:3], s.value[:3], kind="response")}, dosing=p.dosing
    )
    late = Patient(p.id, series={"CP": Series("CP", "mg/L", s.time[3:], s.value[3:], kind="response")})
    first = fit(m, Cohort((early,)), method="nuts", prior=popfit, chains=2, warmup=300, draws=600, seed=2)
    upd = update(first, Cohort((late,)))
    full = fit(m, Cohort((p,)), method="nuts", prior=popfit, chains=2, warmup=300, draws=600, seed=7)
    assert len(upd.data.obs["CP"].value[0]) == len(s.time)
    a, b = upd.samples["CL_i"].ravel(), full.samples["CL_i"].ravel()
    # Same posterior, different chains: medians within 4 Monte-Carlo standard errors
    se = np.hypot(
        a.std() / np.sqrt(float(ess_bulk(upd.samples["CL_i"][..., 0]))),
        b.std() / np.sqrt(float(ess_bulk(full.samples["CL_i"][..., 0]))),
    )
    assert abs(np.median(a) - np.median(b)) < 4 * se + 1e-3
    # and the posterior narrowed with the new levels
    assert a.std() < first.samples["CL_i"].std()


def test_merge_cohorts_counts_shared_records_once():
    _, cohort, _ = _cohort(n=2)
    merged = merge_cohorts(cohort, Cohort((cohort[0],)))
    assert len(merged[0].series["CP"]) == len(cohort[0].series["CP"])
    assert len(merged[0].dosing) == 1 and merged.ids == cohort.ids


def test_population_model_rejects_unknown_settings():
    m, cohort, _ = _cohort(n=2)
    d = FitData.from_cohort(m, cohort)
    with pytest.raises(ValueError, match="not parameters"):
        PopulationModel.build(m, d, fixed={"XX": 1.0})
    with pytest.raises(ValueError, match="error model"):
        PopulationModel.build(m, d, error={"CP": "poisson"})


def _importance_reference(cond, t, y, n_draws=40000, seed=0):
    """E[CL_i] and its 5/95 % quantiles for one patient by importance sampling of the exact
    posterior, written here in NumPy (Bateman function, additive normal error, standard
    normal z with CL_i = CL exp(omega_CL z), ...), with a wide Student-t proposal."""
    rng = np.random.default_rng(seed)
    theta = np.array([float(cond[p]) for p in ("CL", "V", "KA")])
    omega = np.array([float(cond[f"omega_{p}"]) for p in ("CL", "V", "KA")])
    sigma = float(cond["sigma_CP"])

    def logp(z):  # (n, 3) -> (n,)
        cl, v, ka = (theta * np.exp(omega * z)).T
        c = (
            100
            * ka[:, None]
            / (v * (ka - cl / v))[:, None]
            * (np.exp(-(cl / v)[:, None] * t) - np.exp(-ka[:, None] * t))
        )
        return -0.5 * np.sum(z**2, 1) - 0.5 * np.sum((y - c) ** 2, 1) / sigma**2

    res = scipy.optimize.minimize(lambda z: -logp(z[None])[0], np.zeros(3), method="Nelder-Mead")
    mode = scipy.optimize.minimize(lambda z: -logp(z[None])[0], res.x, method="BFGS").x
    h, eye = 1e-4, np.eye(3)
    hess = np.array(
        [
            [
                -(
                    logp((mode + h * eye[a] + h * eye[b])[None])[0]
                    - logp((mode + h * eye[a] - h * eye[b])[None])[0]
                    - logp((mode - h * eye[a] + h * eye[b])[None])[0]
                    + logp((mode - h * eye[a] - h * eye[b])[None])[0]
                )
                / (4 * h * h)
                for b in range(3)
            ]
            for a in range(3)
        ]
    )
    chol = np.linalg.cholesky(np.linalg.inv(0.5 * (hess + hess.T))) * 1.5
    u = rng.standard_t(5, (n_draws, 3))
    z = mode + u @ chol.T
    logq = np.sum(st.t(5).logpdf(u), 1)  # up to a constant (the Jacobian is constant)
    w = np.exp(logp(z) - logq - np.max(logp(z) - logq))
    w /= w.sum()
    cl = theta[0] * np.exp(omega[0] * z[:, 0])
    order = np.argsort(cl)
    cdf = np.cumsum(w[order])
    q = [cl[order][np.searchsorted(cdf, p)] for p in (0.05, 0.95)]
    return float(np.sum(w * cl)), q, 1.0 / np.sum(w**2)


@pytest.mark.parametrize("sampler", ["per_patient", "joint"])
def test_individual_nuts_matches_importance_sampling_of_the_exact_posterior(sampler):
    m, rich, _ = _cohort(n=6)
    popfit = fit(m, rich, method="map", error={"CP": "additive"})
    _, cohort, _ = _cohort(n=3, seed=8, times=(1, 4, 12))  # 3 levels: a skewed posterior
    ind = fit(
        m, cohort, method="nuts", prior=popfit, chains=2, warmup=300, draws=500, seed=4, sampler=sampler
    )
    # (a worker whose CPU cores were made devices runs the joint sampler's chains on them)
    assert ind.info["chain_method"].startswith("per_patient" if sampler == "per_patient" else "vectorized")
    if sampler == "per_patient":  # statistics per patient
        assert ind.stats["diverging"].shape == (2, 500, 3)
    _assert_matches_importance_sampling(ind, cohort)


def _assert_matches_importance_sampling(ind, cohort):
    cl = ind.samples["CL_i"]
    for i, p in enumerate(cohort):
        s = p.series["CP"]
        mean, (q05, q95), is_ess = _importance_reference(
            ind.conditioned, np.asarray(s.time), np.asarray(s.value)
        )
        assert is_ess > 2000
        draws = cl[..., i]
        se = draws.std() / np.sqrt(float(ess_bulk(draws)))
        assert abs(draws.mean() - mean) < 4 * se, (i, draws.mean(), mean, se)
        # quantiles: within 10 % of the posterior's 90 % width
        width = q95 - q05
        assert abs(np.quantile(draws, 0.05) - q05) < 0.1 * width
        assert abs(np.quantile(draws, 0.95) - q95) < 0.1 * width


def test_individual_svi_with_resampling_matches_the_exact_posterior(tmp_path):
    """SVI (full-rank guide, IWAE, sampling-importance-resampling) of one patient's random
    effects against the importance-sampling reference; its loss trace goes into the store
    and comes back."""
    from twinrx.store import read_fit, write_fit

    m, rich, _ = _cohort(n=6)
    popfit = fit(m, rich, method="map", error={"CP": "additive"})
    _, cohort, _ = _cohort(n=1, seed=8, times=(1, 4, 12))
    ind = fit(m, cohort, method="svi", prior=popfit, steps=3000, draws=2000, importance=True, seed=3)
    losses = ind.info["losses"]
    assert losses.shape == (3000,) and np.isfinite(ind.info["elbo_loss_last"])
    # converged: the last 500 steps no lower on average than the 500 before (within noise)
    assert np.nanmean(losses[-500:]) <= np.nanmean(losses[-1000:-500]) + 0.05
    assert ind.info["importance_ess"] > 1000
    s = cohort[0].series["CP"]
    mean, (q05, q95), _ = _importance_reference(ind.conditioned, np.asarray(s.time), np.asarray(s.value))
    cl = ind.samples["CL_i"][..., 0].ravel()
    # 2000 resampled draws: Monte-Carlo error of the mean ~ sd / sqrt(ESS) with ESS <= 2000
    assert abs(cl.mean() - mean) < 4 * cl.std() / np.sqrt(min(ind.info["importance_ess"], 2000))
    width = q95 - q05
    assert abs(np.quantile(cl, 0.05) - q05) < 0.1 * width
    assert abs(np.quantile(cl, 0.95) - q95) < 0.1 * width
    write_fit(to_datatree(ind), tmp_path / "svi.zarr")
    back = from_datatree(read_fit(tmp_path / "svi.zarr"))
    assert np.array_equal(back.info["losses"], losses)


def test_individual_fit_under_the_cards_population():
    """``Fit.from_card``: the card's values (read here from its TOML, cv -> log-normal SD)
    held fixed, and the individual MAP under them equal to scipy's minimum of the same
    posterior."""
    import math
    import tomllib
    from pathlib import Path

    from twinrx.infer import Fit

    m, cohort, _ = _cohort(n=2, seed=5, times=(1, 4, 12))
    card = tomllib.loads((Path(__file__).resolve().parents[1] / "models" / "one_cpt_oral.toml").read_text())
    prior = Fit.from_card(m)
    for p, spec in card["parameters"].items():
        assert dict(prior.pop.fixed)[p] == spec["value"]
    for p, spec in card["variability"].items():
        assert float(prior.conditioned[f"omega_{p}"]) == pytest.approx(math.sqrt(math.log1p(spec["cv"] ** 2)))
    err = card["outputs"]["CP"]["error"]
    assert float(prior.conditioned["sigma_CP_add"]) == err["additive"]
    assert float(prior.conditioned["sigma_CP_prop"]) == err["proportional"]
    ind = fit(m, cohort, method="map", prior=prior)
    _assert_map_is_the_exact_mode(m, cohort, ind, patients=2)
    # variability of one's own: only CL varies, with SD 0.2 of the log
    own = Fit.from_card(m, variability={"CL": 0.2})
    assert own.pop.iiv == ("CL",) and float(own.conditioned["omega_CL"]) == 0.2
    _assert_map_is_the_exact_mode(m, cohort, fit(m, cohort, method="map", prior=own), patients=1)
    with pytest.raises(ValueError, match="positive SD"):
        Fit.from_card(m, variability={"XX": 0.2})
    with pytest.raises(ValueError, match="values="):
        Fit.from_card(m, error={"CP": "additive"})
    assert (
        float(Fit.from_card(m, error={"CP": "additive"}, values={"sigma_CP": 0.2}).conditioned["sigma_CP"])
        == 0.2
    )


def test_fit_data_converts_patient_hours_to_a_minutes_card():
    """Patients' times are hours; a card in minutes (the glucose models) gets its times,
    intervals and infusion rates converted: the simulated concentration at the observation
    times equals the closed form written here in hours."""
    from twinrx.model.card import from_text
    from twinrx.solve import simulate_arrays

    text = twinrx.get_model("one_cpt_iv").card.text
    text = text.replace('time_unit = "h"', 'time_unit = "min"').replace('unit = "L/h"', 'unit = "L/min"')
    assert 'time_unit = "min"' in text and 'unit = "L/min"' in text
    m = from_text(text)
    t_obs = np.array([0.5, 1.5, 3.0, 30.0])  # h
    p = Patient(
        "P1",
        series={"CP": Series("CP", "mg/L", t_obs, np.ones(4), kind="response")},
        # a 2-h infusion of 120 mg at 1 h, then 50 mg boluses every 12 h from 6 h (ADDL 1)
        dosing=Dosing(
            [1.0, 6.0], [120.0, 50.0], cmt=[1, 1], duration=[2.0, 0.0], ii=[0.0, 12.0], addl=[0, 1]
        ),
    )
    d = FitData.from_cohort(m, Cohort((p,)))
    np.testing.assert_allclose(np.asarray(d.times)[0], 60 * t_obs)
    cl_min, v = 0.05, 20.0  # L/min, L
    _, out, status = simulate_arrays(
        m, {"CL": cl_min, "V": v}, d.select([0]).events, d.times[0], solver="closed_form"
    )
    assert int(np.asarray(status).max()) == 0
    k = 60 * cl_min / v  # 1/h

    def conc(t):
        rate = 60.0  # mg/h over [1, 3)
        on = np.clip(t - 1.0, 0.0, 2.0)
        c = rate / (k * v) * (1 - np.exp(-k * on)) * np.exp(-k * np.clip(t - 3.0, 0.0, None))
        for td in (6.0, 18.0):
            c = c + np.where(t >= td, 50.0 / v * np.exp(-k * (t - td)), 0.0)
        return c

    np.testing.assert_allclose(np.asarray(out["CP"]).ravel(), conc(t_obs), rtol=1e-10)


_DEVICES_SCRIPT = """
import sys
import twinrx
assert twinrx.use_cpu_cores(2) == 2
sys.path.insert(0, {tests!r})
import test_infer as T
m, rich, _ = T._cohort(n=6)
popfit = T.fit(m, rich, method="map", error={{"CP": "additive"}})
_, cohort, _ = T._cohort(n=3, seed=8, times=(1, 4, 12))
for sampler, n, method in (("joint", 3, "vectorized on 2 devices"), ("per_patient", 3, "per_patient"),
                           ("per_patient", 1, "per_patient")):
    c = T.Cohort(tuple(cohort)[:n])
    ind = T.fit(m, c, method="nuts", prior=popfit, chains=4, warmup=300, draws=250, seed=4, sampler=sampler)
    assert ind.info["chain_method"] == method, ind.info["chain_method"]
    assert ind.samples["CL_i"].shape == (4, 250, n)
    T._assert_matches_importance_sampling(ind, c)
    print(sampler, n, "ok")
"""


def test_nuts_on_several_cpu_devices_matches_importance_sampling():
    """With CPU cores made devices (as the CLI does): the joint sampler's chains split over
    them, per-patient samplers split by patient (3 patients padded to 2 devices) and, for
    one patient, by chain. Each posterior against the importance-sampling reference."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = _DEVICES_SCRIPT.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert run.stdout.split() == ["joint", "3", "ok", "per_patient", "3", "ok", "per_patient", "1", "ok"]


def test_individual_ode_fit_from_a_closed_form_population_fit():
    """An individual fit may solve by ODE where the population was fitted in closed form:
    the modes agree (two solvers; the ODE's gradient by forward sensitivities). Other model
    options with a prior are refused: they belong to the population fit."""
    m, cohort, _ = _cohort(n=6)
    popfit = fit(m, cohort, method="map", error={"CP": "additive"})
    closed = fit(m, cohort, method="map", prior=popfit)
    ode = fit(m, cohort, method="map", prior=popfit, solver="ode", rtol=1e-9, atol=1e-12)
    assert ode.pop.solver == "ode" and closed.pop.solver != "ode"
    for p in ("CL_i", "V_i", "KA_i"):
        np.testing.assert_allclose(ode.samples[p], closed.samples[p], rtol=1e-5)
    with pytest.raises(ValueError, match="error: an individual fit"):
        fit(m, cohort, method="map", prior=popfit, error={"CP": "proportional"})
