"""Bayesian fits against external truths (not against twinrx's own output).

- theophylline (``theo_sd.csv``): a NUTS population fit of ``one_cpt_oral`` against
  nlmixr2's FOCEI estimates, with convergence checked by rank-normalised R-hat;
- warfarin (``warfarin.csv``, concentrations): a NUTS population fit of ``warfarin_pk``
  against the DDMoRe model's NONMEM SAEM estimates;
- calibration: individual fits (Laplace and NUTS) of 200 patients simulated from a known
  population, under that population as the prior; their 90 % intervals must cover the true
  individual clearances about 90 % of the time.

The published estimates are read from ``../shared/data/published_estimates.csv``; the whole
module is skipped where ``../shared/data`` is absent (the data sets are GPL and not shipped).
Run times on the 2-core development machine: see ``benchmarks/results/fit_validation.md``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import jax
import numpy as np
import numpyro.distributions as dist
import pandas as pd
import pytest

import twinrx
from twinrx.infer import Fit, FitData, PopulationModel, fit

pytestmark = pytest.mark.fitting

# The path logic of tests/conftest.py (SHARED = <repo>/../shared).
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not (DATA / "published_estimates.csv").is_file():
    pytest.skip("../shared/data is not present", allow_module_level=True)


def published(dataset: str, parameter: str, method: str | None = None) -> dict[str, float]:
    """One row of published_estimates.csv as ``{name: value}`` (rows pack several
    parameters as ``"a/b/c"`` with ``"1/2/3"``)."""
    with open(DATA / "published_estimates.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if (
                row["dataset"].startswith(dataset)
                and row["parameter"] == parameter
                and (method is None or row["method_software"] == method)
            ):
                names = [s.strip() for s in row["parameter"].split("/")]
                values = [float(s) for s in row["estimate"].split("/")]
                return dict(zip(names, values, strict=True))
    raise LookupError(f"no row {dataset!r} / {parameter!r} in published_estimates.csv")


def rel_err(x: float, ref: float) -> float:
    return abs(x - ref) / abs(ref)


def pct(x: float, ref: float) -> str:
    return f"{(x - ref) / ref:+.1%}"


# ------------------------------------------------------------------ theophylline
def test_theophylline_nuts_matches_nlmixr2_focei():
    ref = published("theo_sd", "tka/tcl/tv", "nlmixr2 7.0.1 FOCEI")
    want = {"CL": math.exp(ref["tcl"]), "V": math.exp(ref["tv"]), "KA": math.exp(ref["tka"])}
    m = twinrx.get_model("one_cpt_oral")
    d = FitData.from_nonmem(m, DATA / "theo_sd.csv", covariate_units={"WT": "kg"})
    assert d.n_patients == 12 and d.obs["CP"].count == 132
    # nlmixr2's model: IIV on CL, V, KA (diagonal) and an additive error, as here.
    # 4 chains x (200 warm-up + 1000 draws): the largest R-hat over the checked sites was
    # 1.0027, 1.0038 and 1.0045 for seeds 0, 1 and 2 here. With 500 draws it was 1.004-1.008
    # here but 1.0127 on the CI machine for seed 0 (another CPU: other rounding, other
    # chains): R-hat's own Monte-Carlo noise is of the order of the threshold with 500 draws.
    pop = fit(m, d, method="nuts", error={"CP": "additive"}, chains=4, warmup=200, draws=1000, seed=0)
    s = pop.summary()
    for p, v in want.items():
        med = float(s[p]["median"])
        print(f"theophylline {p}: posterior median {med:.4g}, nlmixr2 FOCEI {v:.4g} ({pct(med, v)})")
        # 10 %: measured differences are 0.1-2.7 % (KA the largest); a posterior median and
        # a FOCEI mode need not coincide, and the posterior's own 90 % interval spans
        # -14/+18 % (CL) to -30/+48 % (KA), so 10 % is not tighter than the data allow, yet
        # it catches a wrong dose unit, covariate or error model.
        assert rel_err(med, v) <= 0.10, (p, med, v)
    checked = ["CL", "V", "KA", "omega_CL", "omega_V", "omega_KA", "sigma_CP"]
    rh = {k: float(s[k]["r_hat"]) for k in checked}
    print("theophylline R-hat:", {k: round(v, 4) for k, v in rh.items()})
    # 1.01: the threshold of Vehtari et al. 2021 (Bayesian Analysis 16:667) for the
    # rank-normalised split R-hat.
    assert max(rh.values()) <= 1.01, rh
    assert int(pop.stats["diverging"].sum()) == 0


# ------------------------------------------------------------------ warfarin
def warfarin_concentrations() -> pd.DataFrame:
    """warfarin.csv with its 4 concentrations of 0 mg/L (at 0.5 h, before the absorption
    lag) marked as censored below 0.05 mg/L (M3; CENS = 1 and DV = the limit).

    Concentrations are reported to 0.1 mg/L, so a reported 0.0 means below 0.05 mg/L. Kept
    as exact zeros they make the likelihood unbounded: before the lag the prediction is
    exactly 0, the combined error's SD there is the additive SD alone, and the density of
    y = 0 at f = 0 grows without bound as that SD goes to 0 (NUTS then collapses the
    additive SD, step sizes of 4e-4, every tree at depth 10). The PCA rows stay in the
    file and are left out with ``dvid={"pca": None}`` (the card has no PCA output).
    """
    df = pd.read_csv(DATA / "warfarin.csv")
    zero = (df["dvid"] == "cp") & (df["evid"] == 0) & (df["dv"] == 0)
    assert int(zero.sum()) == 4
    df["cens"] = zero.astype(int)
    df.loc[zero, "dv"] = 0.05
    return df


@pytest.mark.slow
def test_warfarin_nuts_matches_ddmore_nonmem():
    ref = published("warfarin_conc", "POP_CL/POP_V/POP_KA/POP_TLAG")
    m = twinrx.get_model("warfarin_pk")
    # Like with like: the published POP_CL and POP_V are per 70 kg (allometric exponents
    # 0.75 and 1 fixed on WT/70), and so are the card's typical values.
    assert {(e.parameter, e.covariate, e.coefficient, e.reference) for e in m.card.effects} == {
        ("CL", "WT", 0.75, 70.0),
        ("V", "WT", 1.0, 70.0),
    }
    d = FitData.from_nonmem(
        m, warfarin_concentrations(), dvid={"cp": "CP", "pca": None}, covariate_units={"WT": "kg"}
    )
    assert d.n_patients == 32 and d.obs["CP"].count == 251
    # Priors and starting values: the DDMoRe model's initial estimates (its $THETA, and
    # 0.1 for both residual errors), not the published results; the priors are very wide
    # (log-normal, SD 2 on the log scale: a factor of 27 either way covers 90 %), so the data decide.
    start = {"CL": 0.1, "V": 8.0, "KA": 0.362, "TLAG": 1.0}
    priors = {k: dist.LogNormal(math.log(v), 2.0) for k, v in start.items()}
    init = {**start, "sigma_CP_add": 0.1, "sigma_CP_prop": 0.1}
    # Simplified from the published model, for run time: no variability on TLAG and a
    # diagonal omega (published: IIV on TLAG, omega 0.0984 with 53 % shrinkage, and a CL-V
    # covariance, correlation 0.235). With TLAG's random effect NUTS needs trees of depth
    # 10 (1023 leapfrog steps) at every draw (stopped after 15 min); without it, 60-70 steps.
    # max_tree_depth 7 (127 steps) only bounds the worst case.
    pop = fit(
        m,
        d,
        method="nuts",
        variability=("CL", "V", "KA"),
        covariance="diagonal",
        priors=priors,
        init=init,
        chains=4,
        warmup=200,
        draws=150,
        max_tree_depth=7,
        seed=0,
    )
    s = pop.summary()
    want = {"CL": ref["POP_CL"], "V": ref["POP_V"], "KA": ref["POP_KA"]}
    for p, v in want.items():
        med = float(s[p]["median"])
        print(
            f"warfarin {p}: posterior median {med:.4g} [{float(s[p]['q05']):.4g}, {float(s[p]['q95']):.4g}], "
            f"NONMEM SAEM {v:.4g} ({pct(med, v)}), R-hat {float(s[p]['r_hat']):.3f}"
        )
        # 20 %: a simplified model (above) and a different estimator (posterior median vs
        # SAEM maximum likelihood). CL and V are measured within 2 % (posterior 90 %
        # intervals +-8 % and +-5 %). KA is poorly determined (19 of 32 patients have no
        # sample before 24 h; NONMEM's eta shrinkage 49 %; posterior 90 % interval 0.8-3.6
        # 1/h), and its medians were 8-17 % below 1.79 over seeds 0 and 1: for KA, 20 % is at
        # the edge of what the data say.
        assert rel_err(med, v) <= 0.20, (p, med, v)
        # And the published estimate lies inside the posterior's 90 % interval.
        assert float(s[p]["q05"]) <= v <= float(s[p]["q95"]), (p, v)


# ------------------------------------------------------------------ calibration
N_PATIENTS = 200
TRUE_TYPICAL = {"CL": 5.0, "V": 50.0, "KA": 1.0}


@pytest.fixture(scope="module")
def simulated():
    """200 patients of one_cpt_oral from a known population (typical values above, the
    card's IIV and combined residual error); 100 mg at 0 h and, for about half, again at
    12 h; 3-6 samples each at random times between 0.5 and 24 h. Explicit keys."""
    m = twinrx.get_model("one_cpt_oral")
    k_eta, k_n, k_t, k_dose, k_eps = jax.random.split(jax.random.key(2024), 5)
    etas = {k: np.asarray(v) for k, v in m.card.variability.sample(k_eta, N_PATIENTS).items()}
    n_obs = np.asarray(jax.random.randint(k_n, (N_PATIENTS,), 3, 7))
    n_doses = np.asarray(jax.random.randint(k_dose, (N_PATIENTS,), 1, 3))
    t = np.asarray(jax.random.uniform(k_t, (N_PATIENTS, 6), minval=0.5, maxval=24.0))
    times = np.sort(np.round(t, 2), axis=1)
    events = [
        twinrx.EventTable.from_records([0.0], [1], [100.0], [1], ii=[12.0], addl=[int(k) - 1])
        for k in n_doses
    ]
    f = np.asarray(twinrx.simulate(m, {**TRUE_TYPICAL, **etas}, events, times=times).CP)
    y = np.asarray(m.residual_errors["CP"].sample(k_eps, f))
    rows = []
    for i in range(N_PATIENTS):
        rows += [dict(ID=i + 1, TIME=12.0 * k, AMT=100.0, EVID=1, CMT=1, DV=0.0) for k in range(n_doses[i])]
        rows += [
            dict(ID=i + 1, TIME=times[i, j], AMT=0.0, EVID=0, CMT=2, DV=y[i, j]) for j in range(n_obs[i])
        ]
    # NONMEM order: by time within a patient, a dose before a sample at the same time.
    df = pd.DataFrame(rows).sort_values(["ID", "TIME", "EVID"], ascending=[True, True, False], kind="stable")
    d = FitData.from_nonmem(m, df)
    assert d.n_patients == N_PATIENTS and d.obs["CP"].count == int(n_obs.sum())
    # The true population as a prior: a Fit holding exactly these values (twinrx has no
    # constructor for "known population values"; fit(prior=...) reads .pop and
    # .conditioned, and posterior medians of .samples for anything not conditioned).
    mat = m.card.variability.matrix()
    err = m.residual_errors["CP"]
    truth = {
        **TRUE_TYPICAL,
        **{f"omega_{p}": math.sqrt(mat[i, i]) for i, p in enumerate(m.card.variability.parameters)},
        "sigma_CP_add": err.additive,
        "sigma_CP_prop": err.proportional,
    }
    pop = PopulationModel.build(m, d)
    assert set(pop.population_sites) == set(truth)
    prior = Fit(pop, d, "known", {}, conditioned={k: np.asarray(v, float) for k, v in truth.items()})
    cl_true = TRUE_TYPICAL["CL"] * np.exp(etas["eta_CL"])
    return m, d, prior, cl_true


def coverage(ind: Fit, truth: np.ndarray) -> float:
    cl = ind.flat_samples()["CL_i"]  # (draws, patients)
    lo, hi = np.quantile(cl, 0.05, axis=0), np.quantile(cl, 0.95, axis=0)
    return float(np.mean((lo <= truth) & (truth <= hi)))


# 85-95 %: with 200 patients and exact 90 % intervals the number covered is binomial
# (200, 0.9): SD 2.1 %, so 85-95 % is +-2.4 SD (a calibrated method fails 1.6 % of the time
# for a random data set; this one is fixed by its keys). An approximation that ignored the
# posterior's width or centre would fall far outside it.
COVERAGE = (0.85, 0.95)


def test_laplace_individual_intervals_are_calibrated(simulated):
    m, d, prior, cl_true = simulated
    ind = fit(m, d, method="laplace", prior=prior, draws=2000, seed=0)
    assert np.all(ind.info["converged"]) and np.all(ind.info["hessian_pd"])
    cov = coverage(ind, cl_true)
    print(f"Laplace: 90 % intervals of CL_i cover the truth in {cov:.1%} of {N_PATIENTS} patients")
    assert COVERAGE[0] <= cov <= COVERAGE[1]


def test_nuts_individual_intervals_are_calibrated(simulated):
    m, d, prior, cl_true = simulated
    # One chain of 150 + 300: the 200 patients' posteriors are independent (population
    # values held), each a 3-dimensional posterior; about 31 leapfrog steps per draw.
    ind = fit(m, d, method="nuts", prior=prior, chains=1, warmup=150, draws=300, seed=0)
    assert int(ind.stats["diverging"].sum()) == 0
    cov = coverage(ind, cl_true)
    print(f"NUTS: 90 % intervals of CL_i cover the truth in {cov:.1%} of {N_PATIENTS} patients")
    assert COVERAGE[0] <= cov <= COVERAGE[1]
