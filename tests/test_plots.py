"""Figures: each builds, saves a valid PNG and SVG, has units on its axes and no more than the
pseudonymous id in its title, and shows the right numbers. The numbers are read back from
the artists and compared with the one-compartment oral closed form (Bateman function,
superposed over doses), scipy's normal distribution and numpy's percentiles.

The population posterior is written down directly (a ``Fit`` of known draws, so that the
references are exact and no population fit is run); the individual fit is a real Laplace
fit under it."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import jax
import numpy as np
import pytest
from scipy.stats import norm

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from synth.scenarios import two_arm_cohort  # noqa: E402

import twinrx  # noqa: E402
from twinrx import plots  # noqa: E402
from twinrx.data.patient import Cohort, Dosing, Patient, Series  # noqa: E402
from twinrx.infer import Fit, FitData, PopulationModel, fit  # noqa: E402
from twinrx.scenarios import compare, load_scenario, twin_draws  # noqa: E402

M = twinrx.get_model("one_cpt_oral")
TYPICAL = {"CL": 5.0, "V": 50.0, "KA": 1.0}
TIMES = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0])
DOSE = 100.0
LLOQ = 0.2
N = 6


def bateman(t, cl, v, ka, dose_times=(0.0,), dose=DOSE):
    """One-compartment oral concentration, superposed over doses (Gibaldi & Perrier)."""
    t = np.asarray(t, float)
    k = cl / v
    c = 0.0
    for td in dose_times:
        s = np.maximum(t - td, 0.0)
        c = c + dose * ka / (v * (ka - k)) * (np.exp(-k * s) - np.exp(-ka * s))
    return c


@pytest.fixture(scope="module")
def cohort():
    rng = np.random.default_rng(11)
    truth = {p: tv * np.exp(0.25 * rng.standard_normal(N)) for p, tv in TYPICAL.items()}
    pats = []
    for i in range(N):
        y = bateman(TIMES, truth["CL"][i], truth["V"][i], truth["KA"][i]) + 0.05 * rng.standard_normal(7)
        cens = np.zeros(7, np.int8)
        if i == 0:  # the last level of the first patient is below the LLOQ
            y[-1], cens[-1] = LLOQ, -1
        s = Series("CP", "mg/L", TIMES, y, cens, np.full(7, LLOQ), kind="response")
        pats.append(Patient(f"P{i}", series={"CP": s}, dosing=Dosing([0.0], [DOSE], cmt=[1])))
    return Cohort(tuple(pats)), truth


def _posterior(data, truth, *, S=150, spread=0.05, omega=0.3, sigma=0.05, seed=0):
    """A population posterior of known draws around the true values (the shape a fit has)."""
    pop = PopulationModel.build(M, data, error={"CP": "additive"})
    rng = np.random.default_rng(seed)
    smp = {}
    for p, tv in TYPICAL.items():
        smp[p] = tv * np.exp(spread * rng.standard_normal(S))
        smp[f"omega_{p}"] = omega * np.exp(spread * rng.standard_normal(S))
        smp[f"eta_{p}"] = np.log(truth[p] / tv) + spread * rng.standard_normal((S, N))
        smp[f"{p}_i"] = smp[p][:, None] * np.exp(smp[f"eta_{p}"])
    smp["sigma_CP"] = sigma * np.exp(spread * rng.standard_normal(S))
    return Fit(pop, data, "laplace", {k: v[None] for k, v in smp.items()})


@pytest.fixture(scope="module")
def popfit(cohort):
    c, truth = cohort
    return _posterior(FitData.from_cohort(M, c), truth)


def _check_files(make, tmp_path, name):
    """The figure saved by ``path=``: a PNG that PIL reads, of a real size, and an SVG."""
    png, svg = tmp_path / f"{name}.png", tmp_path / f"{name}.svg"
    fig = make(png)
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 400
        assert len(set(np.asarray(im.convert("L")).ravel().tolist())) > 20  # not a blank page
    assert png.stat().st_size > 20_000
    make(svg)
    assert ET.parse(svg).getroot().tag.endswith("svg") and svg.stat().st_size > 20_000
    return fig


def _artist(ax, gid):
    found = [a for a in ax.get_children() if a.get_gid() == gid]
    assert len(found) == 1, (gid, len(found))
    return found[0]


def _titles(fig):
    out = [fig._suptitle.get_text()] if fig._suptitle is not None else []
    return " ".join(out + [ax.get_title() for ax in fig.axes])


def _obs(cohort_, i):
    s = cohort_[i].series["CP"]
    return s.time, s.value, s.censored


# ------------------------------------------------------------------------------ individual fit
def test_individual_fit_shows_levels_bands_doses_and_the_closed_form_median(cohort, popfit, tmp_path):
    c, _ = cohort
    ind = fit(M, c, method="laplace", prior=popfit, draws=200, seed=1)
    fig = _check_files(
        lambda p: plots.individual_fit(ind, "P0", key=jax.random.key(0), draws=200, path=p), tmp_path, "ind"
    )
    ax = fig.axes[0]
    t, y, cens = _obs(c, 0)
    ok = cens == 0
    obs = _artist(ax, "observed")
    assert np.allclose(obs.get_xdata(), t[ok]) and np.allclose(obs.get_ydata(), y[ok])
    below = _artist(ax, "below")
    assert below.get_xdata().tolist() == [24.0] and below.get_ydata().tolist() == [LLOQ]
    assert below.get_markerfacecolor() == "none"  # open marker at the LLOQ
    assert np.allclose(_artist(ax, "lloq").get_ydata(), LLOQ)
    assert _artist(ax, "doses").get_xdata().tolist() == [0.0]
    # The median line: all 200 draws (a permutation of them), simulated by the engine,
    # against the closed form for each draw of the patient's CL_i, V_i, KA_i.
    med = _artist(ax, "median")
    tg, yg = np.asarray(med.get_xdata()), np.asarray(med.get_ydata())
    cl, v, ka = (ind.samples[f"{p}_i"][0, :, 0][:, None] for p in ("CL", "V", "KA"))
    assert np.allclose(yg, np.median(bateman(tg, cl, v, ka), axis=0), rtol=1e-6, atol=1e-9)
    # ... and close to the closed form at the posterior median parameters (a narrow posterior)
    at_median = bateman(tg, np.median(cl), np.median(v), np.median(ka))
    big = at_median > 0.05 * at_median.max()
    assert np.allclose(yg[big], at_median[big], rtol=0.03)
    assert tg.min() == 0.0 and tg.max() >= 24.0 and len(tg) >= 400
    assert ax.get_xlabel() == "Time (h)" and ax.get_ylabel() == "CP (mg/L)"
    title = _titles(fig)
    assert "P0" in title and not any(f"P{i}" in title for i in range(1, N))
    with pytest.raises(ValueError, match="not in the fit"):
        plots.individual_fit(ind, "Q9", key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        plots.individual_fit(ind, 0, key=jax.random.key(0), path=tmp_path / "x.pdf")


# ------------------------------------------------------------------------------ goodness of fit
def test_goodness_of_fit_pred_ipred_and_npde_match_closed_forms(cohort, popfit, tmp_path):
    c, _ = cohort
    fig = _check_files(lambda p: plots.goodness_of_fit(popfit, path=p), tmp_path, "gof")
    a_pred, a_ipred, a_npde = fig.axes
    smp = {k: v[0] for k, v in popfit.samples.items()}
    t = np.concatenate([_obs(c, i)[0] for i in range(N)])
    y = np.concatenate([_obs(c, i)[1] for i in range(N)])
    cens = np.concatenate([_obs(c, i)[2] for i in range(N)])
    pat = np.repeat(np.arange(N), len(TIMES))
    ok = cens == 0
    # PRED: typical values at their posterior medians, no random effect
    pred = bateman(t, *(np.median(smp[p]) for p in ("CL", "V", "KA")))
    # IPRED: median over the 150 draws of each patient's prediction
    f = bateman(t[None], *(smp[f"{p}_i"][:, pat] for p in ("CL", "V", "KA")))  # (S, n_obs)
    ipred = np.median(f, axis=0)
    dv_pred, dv_ipred = _artist(a_pred, "dv_PRED"), _artist(a_ipred, "dv_IPRED")
    assert np.allclose(dv_pred.get_xdata(), pred[ok], rtol=1e-6) and np.allclose(dv_pred.get_ydata(), y[ok])
    assert np.allclose(dv_ipred.get_xdata(), ipred[ok], rtol=1e-6)
    cpred = _artist(a_pred, "cens_PRED")
    assert cpred.get_ydata().tolist() == [LLOQ] and np.allclose(cpred.get_xdata(), pred[~ok])
    # identity lines
    for ax in (a_pred, a_ipred):
        ident = [ln for ln in ax.get_lines() if ln.get_label() == "identity"][0]
        assert np.array_equal(ident.get_xdata(), ident.get_ydata())
    # NPDE: pd = mean over draws of P(y_rep < y) under the additive error, by scipy
    sd = smp["sigma_CP"][:, None]
    pd = norm.cdf((y[None] - f) / sd).mean(0)
    pd_cens = 0.5 * norm.cdf((LLOQ - f[:, ~ok]) / sd).mean(0)
    npde = _artist(a_npde, "npde")
    assert np.allclose(npde.get_xdata(), t[ok])
    assert np.allclose(npde.get_ydata(), norm.ppf(np.clip(pd[ok], 1e-3, 1 - 1e-3)), atol=1e-6)
    assert np.allclose(_artist(a_npde, "npde_cens").get_ydata(), norm.ppf(pd_cens), atol=1e-6)
    assert a_pred.get_xlabel() == "PRED (mg/L)" and a_pred.get_ylabel() == "DV CP (mg/L)"
    assert a_ipred.get_xlabel() == "IPRED (mg/L)" and a_npde.get_xlabel() == "Time (h)"
    assert "NPDE" in a_npde.get_ylabel() and "(" in a_npde.get_ylabel()
    assert not any(f"P{i}" in _titles(fig) for i in range(N))


# ------------------------------------------------------------------------------ VPC
def _band(ax, label):
    """(x, lower, upper) of a fill_between band, from its polygon's vertices."""
    poly = [a for a in ax.collections if a.get_label() == label][0]
    v = poly.get_paths()[0].vertices
    n = (len(v) - 3) // 2  # (x0, hi0), the lower edge, (xn, hin), the upper edge reversed, (x0, hi0)
    return v[1 : n + 1, 0], v[1 : n + 1, 1], v[n + 2 : 2 * n + 2, 1][::-1]


def test_pcvpc_observed_percentiles_and_simulated_regions(cohort, popfit, tmp_path):
    c, truth = cohort
    edges = [0.0, 1.5, 6.0, 16.0, 30.0]
    fig = _check_files(
        lambda p: plots.vpc(popfit, key=jax.random.key(2), n_sim=150, bins=edges, path=p), tmp_path, "vpc"
    )
    ax = fig.axes[0]
    t = np.concatenate([_obs(c, i)[0] for i in range(N)])
    y = np.concatenate([_obs(c, i)[1] for i in range(N)])
    ok = np.concatenate([_obs(c, i)[2] for i in range(N)]) == 0
    smp = {k: v[0] for k, v in popfit.samples.items()}
    pred = bateman(t, *(np.median(smp[p]) for p in ("CL", "V", "KA")))
    which = np.digitize(t, edges[1:-1], right=True)
    want_x, want = [], {5: [], 50: [], 95: []}
    for b in range(4):
        sel = ok & (which == b)
        pc = y[sel] * np.median(pred[sel]) / pred[sel]  # Bergstrand 2011
        want_x.append(np.median(t[sel]))
        for q in want:
            want[q].append(np.percentile(pc, q))
    for q in (5, 50, 95):
        line = _artist(ax, f"observed_p{q}")
        assert np.allclose(line.get_xdata(), want_x) and np.allclose(line.get_ydata(), want[q], rtol=1e-9)
    assert ax.get_xlabel() == "Time (h)" and ax.get_ylabel() == "prediction-corrected CP (mg/L)"
    # Without variability, every simulated value is its prediction; corrected, the bin's
    # median prediction: the simulated regions collapse onto it.
    still = _posterior(popfit.data, truth, spread=0.0, omega=1e-9, sigma=1e-9)
    fig0 = plots.vpc(still, key=jax.random.key(3), n_sim=150, bins=edges)
    pred0 = bateman(t, *TYPICAL.values())
    ref = [np.median(pred0[ok & (which == b)]) for b in range(4)]
    x, lo, hi = _band(fig0.axes[0], "simulated median, 90 % CI")
    assert np.allclose(x, want_x) and np.allclose(lo, ref, rtol=1e-6) and np.allclose(hi, ref, rtol=1e-6)


def test_pcvpc_leaves_out_levels_whose_prediction_is_zero(cohort, popfit):
    """A level at the time of an oral dose has PRED = 0: prediction correction divides by
    it, so it is left out (no warning), and the observed percentiles are those without it."""
    c, truth = cohort
    pats = []
    for p in c:
        s = p.series["CP"]
        s0 = Series(
            "CP",
            "mg/L",
            np.r_[0.0, s.time],
            np.r_[0.01, s.value],
            np.r_[0, s.censored].astype(np.int8),
            np.r_[LLOQ, s.lloq],
            kind="response",
        )
        pats.append(Patient(p.id, series={"CP": s0}, dosing=p.dosing))
    with_zero = _posterior(FitData.from_cohort(M, Cohort(tuple(pats))), truth)
    edges = [0.0, 1.5, 6.0, 16.0, 30.0]
    a = plots.vpc(with_zero, key=jax.random.key(2), n_sim=40, bins=edges).axes[0]
    b = plots.vpc(popfit, key=jax.random.key(2), n_sim=40, bins=edges).axes[0]
    for q in (5, 50, 95):
        la, lb = _artist(a, f"observed_p{q}"), _artist(b, f"observed_p{q}")
        assert np.allclose(la.get_xdata(), lb.get_xdata()) and np.allclose(la.get_ydata(), lb.get_ydata())


def test_vpc_residual_error_regions_match_a_numpy_monte_carlo(cohort, popfit):
    c, truth = cohort
    sigma = 0.1
    noisy = _posterior(popfit.data, truth, spread=0.0, omega=1e-9, sigma=sigma)
    fig = plots.vpc(noisy, key=jax.random.key(4), n_sim=150, prediction_corrected=False)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "CP (mg/L)"
    # default bins: one per distinct time; at 2 h, 6 patients of N(PRED, sigma^2) per replicate
    f2 = bateman(2.0, *TYPICAL.values())
    rng = np.random.default_rng(0)
    reps = np.percentile(f2 + sigma * rng.standard_normal((20000, N)), [5, 50, 95], axis=1)  # (3, reps)
    ref = np.quantile(reps, [0.05, 0.95], axis=1)  # (2, 3)
    x, lo, hi = _band(ax, "simulated median, 90 % CI")
    assert np.allclose(x, TIMES)
    i2 = list(TIMES).index(2.0)
    assert lo[i2] == pytest.approx(ref[0, 1], abs=0.3 * sigma)
    assert hi[i2] == pytest.approx(ref[1, 1], abs=0.3 * sigma)
    x, lo, hi = _band(ax, "simulated 5th/95th pct, 90 % CI")  # the 5th percentile's region
    assert lo[i2] == pytest.approx(ref[0, 0], abs=0.4 * sigma)
    assert hi[i2] == pytest.approx(ref[1, 0], abs=0.4 * sigma)


# ------------------------------------------------------------------------------ scenarios
SCENARIO = """
[scenario]
name = "oral regimens"
model = "one_cpt_oral"
horizon = 48.0
step = 0.1

[[regimens]]
name = "100 mg q12h"
dose = 100
cmt = "depot"
every = 12

[[regimens]]
name = "200 mg q24h"
dose = 200
cmt = "depot"
every = 24

[[regimens]]
name = "50 mg q12h"
dose = 50
cmt = "depot"
every = 12

[[targets]]
name = "trough"
metric = "trough"
window = [36.0, 48.0]
low = 0.5
high = 2.0

[[targets]]
name = "AUC24"
metric = "auc24"
window = [24.0, 48.0]
low = 30.0
high = 60.0
"""


def test_scenario_comparison_bands_include_background_doses():
    """A background dose (here 100 mg at 6 h) is in every regimen's band: with identical
    draws the median is the closed form of both doses."""
    sc = load_scenario(SCENARIO + '\n[[background]]\ndose = 100\ncmt = "depot"\nstart = 6.0\n')
    assert sc.background
    draws = {k: np.full(4, v) for k, v in TYPICAL.items()}
    res = compare(sc, draws)
    fig = plots.scenario_comparison(res, sc, draws=draws)
    med = _artist(fig.axes[0], "median|200 mg q24h")
    t = np.asarray(med.get_xdata())
    cl, v, ka = (TYPICAL[p] for p in ("CL", "V", "KA"))
    ref = bateman(t, cl, v, ka, dose_times=(0.0, 24.0), dose=200.0) + bateman(
        t, cl, v, ka, dose_times=(6.0,), dose=100.0
    )
    assert np.allclose(med.get_ydata(), ref, rtol=1e-6, atol=1e-9)
    assert "as planned" not in fig.axes[0].get_title()


def test_scenario_comparison_bands_and_attainment_bars(tmp_path):
    sc = load_scenario(SCENARIO)
    draws = twin_draws(M, key=jax.random.key(5), n=120)
    res = compare(sc, draws)
    fig = _check_files(lambda p: plots.scenario_comparison(res, sc, draws=draws, path=p), tmp_path, "scen")
    left, right = fig.axes
    # Bars: widths are the PTA, regimens top-down in rank order, labelled in percent
    for tname in res["target"].values:
        for reg in res["regimen"].values:
            bar = _artist(right, f"pta|{tname}|{reg}")
            assert bar.get_width() == float(res["pta"].sel(target=tname, regimen=reg))
    ranked = [str(r) for r in res["regimen"].values[np.argsort(res["rank"].values)]]
    labels = [tk.get_text() for tk in right.get_yticklabels()]
    assert labels == [f"{i + 1}. {r}" for i, r in enumerate(ranked)]
    assert right.yaxis_inverted()  # rank 1 on top
    texts = sorted(tx.get_text() for tx in right.texts)
    assert texts == sorted(f"{100 * p:.0f} %" for p in res["pta"].values.ravel())
    assert "%" in right.get_xlabel()
    # The trough target as a box over its window and range; the AUC target has none
    box = _artist(left, "target|trough")
    assert (box.get_x(), box.get_width(), box.get_y(), box.get_height()) == (36.0, 12.0, 0.5, 1.5)
    assert not [a for a in left.get_children() if a.get_gid() == "target|AUC24"]
    # Median band of one regimen against the superposed closed form over the 120 draws
    med = _artist(left, "median|100 mg q12h")
    tg = np.asarray(med.get_xdata())
    cl, v, ka = (TYPICAL[p] * np.exp(np.asarray(draws[f"eta_{p}"]))[:, None] for p in ("CL", "V", "KA"))
    ref = np.median(bateman(tg, cl, v, ka, dose_times=(0.0, 12.0, 24.0, 36.0, 48.0)), axis=0)
    assert np.allclose(med.get_ydata(), ref, rtol=1e-6, atol=1e-9)
    assert left.get_xlabel() == "Time (h)" and left.get_ylabel() == "CP (mg/L)"
    assert "oral regimens" in _titles(fig)
    only = plots.scenario_comparison(res, sc)  # no draws, no key: the attainment panel alone
    assert len(only.axes) == 1


# ------------------------------------------------------------------------------ pair plot
def _scatter_xy(ax):
    """The (x, y) of every point drawn as a scatter on ``ax``."""
    return np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])


def test_pair_plot_shows_the_draws(popfit, tmp_path):
    """ArviZ's pair plot of the fit's draws: every draw's pair below the diagonal, marginal
    densities (area 1) on it, units on the axes; per patient with patient=."""
    fig = _check_files(lambda p: plots.pair_plot(popfit, path=p), tmp_path, "pair")
    ax = np.asarray(fig.axes)
    labels = {a.get_xlabel() for a in ax} | {a.get_ylabel() for a in ax}
    assert {"CL (L/h)", "V (L)", "KA (1/h)"} <= labels
    cl, v, ka = (np.asarray(popfit.samples[k]).ravel() for k in ("CL", "V", "KA"))
    pairs = {(a.get_xlabel(), a.get_ylabel()): a for a in ax if a.collections}
    xy = _scatter_xy(next(a for a in ax if a.collections and _scatter_xy(a).shape[0] == cl.size))
    got = {tuple(p) for p in np.round(xy, 12)}
    assert got in (
        {tuple(p) for p in np.round(np.stack([x, y], 1), 12)} for x, y in ((cl, v), (cl, ka), (v, ka))
    )
    assert len(pairs) >= 1
    for a in ax:
        for line in a.get_lines():  # the marginal densities
            x, y = line.get_xdata(), line.get_ydata()
            if len(x) > 50 and np.all(y >= 0):
                assert abs(np.trapezoid(y, x) - 1.0) < 0.05
    ind = plots.pair_plot(popfit, patient="P2")
    xy = np.concatenate([_scatter_xy(a) for a in ind.axes if a.collections])
    want = [np.asarray(popfit.samples[k])[..., 2].ravel() for k in ("CL_i", "V_i", "KA_i")]
    pts = {tuple(p) for p in np.round(xy, 12)}
    for x, y in ((0, 1), (0, 2), (1, 2)):
        assert {tuple(p) for p in np.round(np.stack([want[x], want[y]], 1), 12)} <= pts
    assert "CL_i (L/h)" in {a.get_xlabel() for a in ind.axes} | {a.get_ylabel() for a in ind.axes}
    title = _titles(ind)
    assert "P2" in title and not any(f"P{i}" in title for i in (0, 1, 3, 4, 5))
    with pytest.raises(ValueError, match="per-patient"):
        plots.pair_plot(popfit, ["CL_i", "V_i"])
    point = Fit(popfit.pop, popfit.data, "map", {k: v[:, :1] for k, v in popfit.samples.items()})
    with pytest.raises(ValueError, match="needs posterior draws"):
        plots.pair_plot(point)


def test_matplotlib_is_imported_only_when_a_figure_is_made():
    code = (
        "import sys, twinrx, twinrx.infer, twinrx.scenarios, twinrx.plots; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------------------ cohorts
COHORT_SCENARIO = two_arm_cohort(
    "cohort figure check",
    """
[[targets]]
name = "AUC24 day 2"
output = "CP"
metric = "auc24"
window = [24.0, 48.0]
low = 30.0
""",
)
FAILED = {0: [0, 3, 7], 1: [5]}  # arm: patients whose solve is marked failed


@pytest.fixture(scope="module")
def cohort_ds(tmp_path_factory):
    from twinrx.scale import run_cohort

    path = tmp_path_factory.mktemp("cohort") / "trial.zarr"
    ds = run_cohort(
        load_scenario(COHORT_SCENARIO),
        120,
        path,
        seed=3,
        chunk=40,
        scheduler="synchronous",
        progress=False,
        trajectories=15,
        subgroup="SEX",
    ).load()
    # failed solves as the engine flags them: a status code and NaN metrics
    for a, pats in FAILED.items():
        ds["status"].values[pats, a] = 2
        ds["metric"].values[pats, a, :] = np.nan
    return ds


def _by_gid(fig, prefix):
    out = {}
    for ax in fig.axes:
        for art in [*ax.patches, *ax.lines, *ax.collections]:
            g = art.get_gid()
            if g is not None and g.startswith(prefix):
                out[g] = (ax, art)
    return out


def test_cohort_endpoints_bars_intervals_and_quantiles_match_numpy_and_scipy(cohort_ds, tmp_path):
    from scipy.stats import binomtest

    sc = load_scenario(COHORT_SCENARIO)
    fig = plots.cohort_endpoints(cohort_ds, path=tmp_path / "endpoints.png")
    with Image.open(tmp_path / "endpoints.png") as im:
        assert im.format == "PNG" and im.size[0] > 1000
    arms = [str(a) for a in cohort_ds["arm"].values]
    status = cohort_ds["status"].values
    metric = cohort_ds["metric"].values
    codes = cohort_ds["SEX"].values
    bars = _by_gid(fig, "pta|")
    bars_by = _by_gid(fig, "pta_by|")
    assert len(bars) == len(arms) * len(sc.targets) and len(bars_by) == 2 * len(bars)
    for j, tg in enumerate(sc.targets):
        ci = _by_gid(fig, f"pta_ci|{tg.name}")[f"pta_ci|{tg.name}"][1].get_segments()
        q90 = _by_gid(fig, f"q90|{tg.name}")[f"q90|{tg.name}"][1].get_segments()
        q50 = _by_gid(fig, f"q50|{tg.name}")[f"q50|{tg.name}"][1].get_segments()
        ax_m, med = _by_gid(fig, f"median|{tg.name}")[f"median|{tg.name}"]
        for a, arm in enumerate(arms):
            ok = status[:, a] == 0
            assert (~ok).sum() == len(FAILED[a])  # failed: in the denominator, not attained
            m = metric[ok, a, j]
            k = int(np.sum((m >= tg.low) & (m <= tg.high)))
            n = len(ok)
            ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
            assert bars[f"pta|{tg.name}|{arm}"][1].get_width() == pytest.approx(k / n, rel=1e-12)
            (lo, _), (hi, _) = ci[a]
            assert lo == pytest.approx(ref.low, rel=1e-9) and hi == pytest.approx(ref.high, rel=1e-9)
            assert [q90[a][0][0], q90[a][1][0]] == pytest.approx(np.quantile(m, [0.05, 0.95]), rel=1e-12)
            assert [q50[a][0][0], q50[a][1][0]] == pytest.approx(np.quantile(m, [0.25, 0.75]), rel=1e-12)
            assert med.get_xdata()[a] == pytest.approx(np.median(m), rel=1e-12)
            for lv, level in enumerate(("F", "M")):
                sel = ok & (codes == lv)
                mb = metric[sel, a, j]
                kb, nb = int(np.sum((mb >= tg.low) & (mb <= tg.high))), int((codes == lv).sum())
                bar = bars_by[f"pta_by|{tg.name}|{level}|{arm}"][1]
                assert bar.get_width() == pytest.approx(kb / nb, rel=1e-12)
                seg = _by_gid(fig, f"pta_by_ci|{tg.name}|{level}")[f"pta_by_ci|{tg.name}|{level}"][1]
                rb = binomtest(kb, nb).proportion_ci(0.95, method="wilson")
                (blo, _), (bhi, _) = seg.get_segments()[a]
                assert blo == pytest.approx(rb.low, rel=1e-9) and bhi == pytest.approx(rb.high, rel=1e-9)
        # units on the metric's axis, percent on the PTA axes; the target range shaded
        unit = str(cohort_ds["target_units"].values[j])
        assert ax_m.get_xlabel() == f"{tg.metric} ({unit})"
        assert bars[f"pta|{tg.name}|{arms[0]}"][0].get_xlabel().startswith("PTA (%)")
        span = _by_gid(fig, f"target|{tg.name}")[f"target|{tg.name}"][1]
        xs = np.array([span.get_x(), span.get_x() + span.get_width()])  # a Rectangle in data x
        lo_edge = tg.low if np.isfinite(tg.low) else ax_m.get_xlim()[0]
        hi_edge = tg.high if np.isfinite(tg.high) else ax_m.get_xlim()[1]
        assert [xs.min(), xs.max()] == pytest.approx([lo_edge, hi_edge])
    assert {"trough day 2: target attainment", "AUC24 day 2: by SEX"} <= {ax.get_title() for ax in fig.axes}
    assert "4 failed solves (not attained" in fig._suptitle.get_text()


def test_wilson_interval_matches_scipy_including_the_edges():
    from scipy.stats import binomtest

    for k, n in ((0, 10), (10, 10), (3, 7), (250, 1000), (1, 1)):
        lo, hi = plots.wilson_interval(k, n, level=0.9)
        ref = binomtest(k, n).proportion_ci(0.9, method="wilson")
        assert float(lo) == pytest.approx(ref.low, abs=1e-12) and float(hi) == pytest.approx(
            ref.high, abs=1e-12
        )
    lo, hi = plots.wilson_interval(0, 0)
    assert np.isnan(lo) and np.isnan(hi)
    # the interval holds the estimate exactly at the edges (error bars never negative)
    assert plots.wilson_interval(0, 10)[0] == 0.0 and plots.wilson_interval(10, 10)[1] == 1.0


def test_cohort_trajectories_median_per_arm_over_the_solved_patients(cohort_ds, tmp_path):
    fig = plots.cohort_trajectories(cohort_ds, path=tmp_path / "traj.svg")
    ET.parse(tmp_path / "traj.svg")
    arms = [str(a) for a in cohort_ds["arm"].values]
    K = cohort_ds.sizes["traj"]
    traj = cohort_ds["trajectory"].values[:, :, 0, :]
    t = cohort_ds["time"].values
    for a, arm in enumerate(arms):
        ax, line = _by_gid(fig, f"median|{arm}")[f"median|{arm}"]
        keep = cohort_ds["status"].values[:K, a] == 0
        assert keep.sum() == K - sum(p < K for p in FAILED[a])
        x, y = line.get_xdata(), line.get_ydata()
        fin = np.isfinite(x)
        assert x[fin] == pytest.approx(t)
        assert y[fin] == pytest.approx(np.median(traj[keep, a, :], axis=0), rel=1e-12)
        assert f"({int(keep.sum())} patients)" in ax.get_title()
    labels = {ax.get_ylabel() for ax in fig.axes} | {ax.get_xlabel() for ax in fig.axes}
    assert "CP (mg/L)" in labels and "Time (h)" in labels
    assert _by_gid(fig, "target|trough day 2")  # the concentration target, drawn as a box


def test_cohort_figures_refuse_other_stores(cohort_ds):
    with pytest.raises(ValueError, match="not a cohort store"):
        plots.cohort_endpoints(cohort_ds.assign_attrs(twinrx_schema="x"))
    with pytest.raises(ValueError, match="--trajectories"):
        plots.cohort_trajectories(cohort_ds.drop_vars("trajectory"))
