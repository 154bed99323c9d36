"""Virtual populations (twinrx.cohort) against independent references: scipy distributions
and closed forms for the marginals and the Gaussian copula, the CPIC frequency table read
here with the csv module and Hardy-Weinberg proportions for the genotypes, hand-computed
Cockcroft-Gault values, and the model cards' covariate models written out by hand."""

import csv
import math
import pickle
import time
import tomllib
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import special, stats

import twinrx
from twinrx import cohort
from twinrx.data import pgx

N = 100_000
KEY = jax.random.key(20240611)
FREQ_CSV = Path(__file__).resolve().parents[1] / "src" / "twinrx" / "data" / "cpic" / "frequencies.csv"

SPEC_TOML = """
[population]
[population.covariates]
SEX  = { dist = "categorical", levels = ["F", "M"], probabilities = [0.52, 0.48] }
DIAL = { dist = "categorical", levels = ["no", "yes"], probabilities = [0.85, 0.15], by = { SEX = { F = { probabilities = [0.9, 0.1] } } } }
AGE  = { dist = "uniform", low = 18, high = 90, unit = "yr" }
WT   = { dist = "lognormal", median = 80, gcv = 0.2, unit = "kg", bounds = [45, 160], by = { SEX = { F = { median = 66 } } } }
HT   = { dist = "normal", mean = 175, sd = 8, unit = "cm", by = { SEX = { F = { mean = 162, sd = 7 } } } }
SCR  = { dist = "truncnormal", mean = 1.0, sd = 0.3, bounds = [0.4, 2.5], unit = "mg/dL" }
ALB  = { dist = "normal", mean = 40, sd = 5, unit = "g/L" }
VOL  = { dist = "lognormal", meanlog = 1.5, sdlog = 0.4 }
[population.derived]
CRCL = { formula = "cockcroft_gault" }
BMI = "bmi"
"""
CORR = [["WT", "HT", 0.6], ["WT", "AGE", 0.2], ["HT", "AGE", -0.15]]


def _spec(**extra):
    d = tomllib.loads(SPEC_TOML)["population"]
    d["correlations"] = CORR
    d.update(extra)
    return d


@pytest.fixture(scope="module")
def spec():
    return cohort.PopulationSpec.from_dict(_spec())


@pytest.fixture(scope="module")
def pop(spec):
    return cohort.sample_population(spec, N, key=KEY)


def _ks_ok(x, cdf):
    # A correct marginal gives a uniform p-value; the draw is fixed by the key.
    return stats.kstest(x, cdf).pvalue > 1e-3


def _trunc(dist, lo, hi):
    a, b = dist.cdf(lo), dist.cdf(hi)
    return lambda x: (dist.cdf(x) - a) / (b - a)


# ---------------------------------------------------------------------------------------
# Marginals
# ---------------------------------------------------------------------------------------
def test_continuous_marginals_match_scipy(pop):
    c = pop.covariates
    male, female = c["SEX"] == "M", c["SEX"] == "F"
    assert _ks_ok(c["AGE"], stats.uniform(18, 72).cdf)
    assert _ks_ok(c["ALB"], stats.norm(40, 5).cdf)
    assert _ks_ok(c["VOL"], stats.lognorm(s=0.4, scale=math.exp(1.5)).cdf)
    assert _ks_ok(c["SCR"], stats.truncnorm((0.4 - 1) / 0.3, (2.5 - 1) / 0.3, loc=1, scale=0.3).cdf)
    s = math.sqrt(math.log(1 + 0.2**2))  # geometric CV 20 %
    assert _ks_ok(c["WT"][male], _trunc(stats.lognorm(s=s, scale=80), 45, 160))
    assert _ks_ok(c["WT"][female], _trunc(stats.lognorm(s=s, scale=66), 45, 160))
    assert _ks_ok(c["HT"][male], stats.norm(175, 8).cdf)
    assert _ks_ok(c["HT"][female], stats.norm(162, 7).cdf)
    # moments within Monte Carlo error
    alb = c["ALB"]
    assert abs(alb.mean() - 40) < 4 * 5 / math.sqrt(N)
    assert abs(alb.std() - 5) < 4 * 5 / math.sqrt(2 * N)
    vol = np.log(c["VOL"])
    assert abs(np.median(c["VOL"]) - math.exp(1.5)) < 0.02 * math.exp(1.5)
    assert abs(vol.std() - 0.4) < 4 * 0.4 / math.sqrt(2 * N)
    # a wrong marginal is rejected by the same check
    assert not _ks_ok(c["ALB"], stats.norm(40.1, 5).cdf)


def test_truncation_respected(pop):
    c = pop.covariates
    assert c["SCR"].min() >= 0.4 and c["SCR"].max() <= 2.5
    assert c["WT"].min() >= 45 and c["WT"].max() <= 160
    # both tails of SCR are populated near the bounds (truncated, not clipped: no atoms)
    assert np.sum(c["SCR"] == 0.4) == 0 and np.sum(c["SCR"] < 0.45) > 0


def test_categorical_proportions(pop):
    sex, dial = pop.covariates["SEX"], pop.covariates["DIAL"]
    assert pop.levels["SEX"] == ("F", "M")
    assert set(np.unique(sex)) == {"F", "M"}

    def close(x, p):
        return abs(x.mean() - p) < 4.5 * math.sqrt(p * (1 - p) / x.size)

    assert close(sex == "F", 0.52)
    assert close(dial[sex == "F"] == "yes", 0.10)
    assert close(dial[sex == "M"] == "yes", 0.15)
    assert not close(dial[sex == "F"] == "yes", 0.15)
    np.testing.assert_array_equal(pop.codes["SEX"], (sex == "M").astype(int))


def test_copula_correlations(pop):
    c = pop.covariates
    male = c["SEX"] == "M"
    s = math.sqrt(math.log(1 + 0.2**2))
    # normal scores of the (male) marginals
    z = {
        "WT": special.ndtri(_trunc(stats.lognorm(s=s, scale=80), 45, 160)(c["WT"][male])),
        "HT": special.ndtri(stats.norm(175, 8).cdf(c["HT"][male])),
        "AGE": special.ndtri(stats.uniform(18, 72).cdf(c["AGE"][male])),
    }
    m = int(male.sum())
    for a, b, r in CORR:
        got = np.corrcoef(z[a], z[b])[0, 1]
        assert abs(got - r) < 4 * (1 - r**2) / math.sqrt(m), (a, b, got)
        # Spearman's rho of a Gaussian copula: 6/pi * asin(r/2)
        rho = stats.spearmanr(c[a][male], c[b][male]).statistic
        assert abs(rho - 6 / math.pi * math.asin(r / 2)) < 0.015, (a, b, rho)
    # uncorrelated covariates stay uncorrelated
    assert abs(stats.spearmanr(c["ALB"], c["SCR"]).statistic) < 4 / math.sqrt(N)


def test_correlation_forms_agree():
    names = ["WT", "HT", "AGE"]
    R = np.eye(3)
    for a, b, r in CORR:
        i, j = names.index(a), names.index(b)
        R[i, j] = R[j, i] = r
    as_matrix = cohort.PopulationSpec.from_dict(_spec(correlations={"names": names, "matrix": R.tolist()}))
    as_pairs = cohort.PopulationSpec.from_dict(_spec())
    a = cohort.sample_population(as_matrix, 1000, key=KEY)
    b = cohort.sample_population(as_pairs, 1000, key=KEY)
    np.testing.assert_array_equal(a.covariates["WT"], b.covariates["WT"])


# ---------------------------------------------------------------------------------------
# Derived covariates
# ---------------------------------------------------------------------------------------
def test_cockcroft_gault_hand_values():
    d = {
        "covariates": {
            "SEX": {"dist": "categorical", "levels": ["male", "female"], "probabilities": [0.5, 0.5]},
            "AGE": {"dist": "fixed", "value": 60, "unit": "yr"},
            "WT": {"dist": "fixed", "value": 72, "unit": "kg"},
            "SCR": {"dist": "fixed", "value": 106.08, "unit": "umol/L"},
        },
        "derived": {
            "CRCL": {"formula": "cockcroft_gault"},
            "CRCL60": {"formula": "cockcroft_gault", "clip": [0, 60]},
        },
    }
    pop = cohort.sample_population(d, 200, key=KEY)
    scr = 106.08 * 113.12 / 10_000  # umol/L x g/mol -> mg/dL (= 1.19998)
    male = (140 - 60) * 72 / (72 * scr)  # 66.668 mL/min
    female = 0.85 * male  # 56.668 mL/min
    sex = pop.covariates["SEX"]
    assert {"male", "female"} == set(sex)
    np.testing.assert_allclose(pop.covariates["CRCL"], np.where(sex == "female", female, male), rtol=1e-12)
    np.testing.assert_allclose(pop.covariates["CRCL60"], np.where(sex == "female", female, 60.0), rtol=1e-12)
    assert pop.units["CRCL"] == "mL/min"
    assert abs(male - 66.668) < 1e-3


def test_derived_elementwise(pop):
    c = pop.covariates
    f = np.where(c["SEX"] == "F", 0.85, 1.0)
    np.testing.assert_allclose(c["CRCL"], (140 - c["AGE"]) * c["WT"] / (72 * c["SCR"]) * f, rtol=1e-12)
    np.testing.assert_allclose(c["BMI"], c["WT"] / (c["HT"] / 100) ** 2, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# Genotypes
# ---------------------------------------------------------------------------------------
def _csv_freqs():
    out: dict = {}
    with open(FREQ_CSV, encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            out.setdefault((r["gene"], r["group"]), {})[r["allele"]] = float(r["frequency"])
    return out


def _label(gene, a, b):
    if gene == "VKORC1":  # reference base first
        return "".join(sorted((a, b), key=lambda x: x != "G"))
    return "/".join(sorted((a, b), key=lambda x: int(x[1:])))


def test_frequency_table_sums_to_one():
    for (gene, group), f in _csv_freqs().items():
        assert abs(sum(f.values()) - 1) < 1e-8, (gene, group)
    f = _csv_freqs()[("CYP2C9", "European")]
    assert f["*2"] == pytest.approx(0.1273007) and f["*3"] == pytest.approx(0.07554484)
    assert cohort.allele_frequencies("cyp2c9", "european")["*1"] == pytest.approx(1 - 0.1273007 - 0.07554484)


def test_genotypes_hardy_weinberg_one_group():
    n = N
    pop = cohort.sample_population(
        {"ancestry": "European", "genes": ["CYP2C9", "CYP2C19", "VKORC1"]}, n, key=KEY
    )
    table = _csv_freqs()
    for gene in ("CYP2C9", "CYP2C19", "VKORC1"):
        p = table[(gene, "European")]
        alleles = list(p)
        expected = {}
        for i, a in enumerate(alleles):
            for b in alleles[i:]:
                expected[_label(gene, a, b)] = p[a] ** 2 if a == b else 2 * p[a] * p[b]
        dips = pop.covariates[gene]
        labels, counts = np.unique(dips, return_counts=True)
        assert set(labels) <= set(expected), set(labels) - set(expected)
        keys = list(expected)
        obs = np.array([counts[list(labels).index(k)] if k in labels else 0 for k in keys])
        exp = np.array([expected[k] * n for k in keys])
        big = exp > 5  # chi-square on the cells with enough expected counts, the rest pooled
        obs_c = np.append(obs[big], obs[~big].sum())
        exp_c = np.append(exp[big], exp[~big].sum())
        if exp_c[-1] == 0:
            obs_c, exp_c = obs_c[:-1], exp_c[:-1]
        assert stats.chisquare(obs_c, exp_c).pvalue > 1e-4, gene
        # allele frequencies from the diplotypes
        for a in alleles:
            copies = sum(
                cnt * (lab.split("/").count(a) if "/" in lab else lab.count(a))
                for lab, cnt in zip(labels, counts)
            )
            assert abs(copies / (2 * n) - p[a]) < 4.5 * math.sqrt(p[a] * (1 - p[a]) / (2 * n)), (gene, a)
    # phenotypes: CPIC's activity-score rule by hand for CYP2C9 (*1 1, *2 0.5, *3 0)
    score = {"*1": 1.0, "*2": 0.5, "*3": 0.0}
    term = {0.0: "Poor", 0.5: "Poor", 1.0: "Intermediate", 1.5: "Intermediate", 2.0: "Normal"}
    ph, sc = pop.phenotypes["CYP2C9"], pop.activity_scores["CYP2C9"]
    for lab in np.unique(pop.covariates["CYP2C9"]):
        a, b = lab.split("/")
        i = np.flatnonzero(pop.covariates["CYP2C9"] == lab)[0]
        assert sc[i] == score[a] + score[b]
        assert ph[i] == f"{term[score[a] + score[b]]} Metabolizer"
    vk = pop.covariates["VKORC1"]
    assert set(pop.phenotypes["VKORC1"][vk == "AA"]) == {"High warfarin sensitivity"}
    c19 = pop.covariates["CYP2C19"]
    assert set(pop.phenotypes["CYP2C19"][c19 == "*2/*17"]) == {"Intermediate Metabolizer"}
    assert set(pop.phenotypes["CYP2C19"][c19 == "*17/*17"]) == {"Ultrarapid Metabolizer"}


def test_ancestry_mixture_mixes():
    n = N
    pop = cohort.sample_population(
        {"ancestry": {"European": 0.5, "East Asian": 0.5}, "genes": ["VKORC1"]}, n, key=KEY
    )
    anc, vk = pop.covariates[cohort.ANCESTRY], pop.covariates["VKORC1"]
    assert abs((anc == "European").mean() - 0.5) < 4.5 * math.sqrt(0.25 / n)
    table = _csv_freqs()
    pa = {g: table[("VKORC1", g)]["A"] for g in ("European", "East Asian")}
    for g, p in pa.items():
        sub = vk[anc == g]
        a = (np.char.count(sub.astype(str), "A").sum()) / (2 * sub.size)
        assert abs(a - p) < 4.5 * math.sqrt(p * (1 - p) / (2 * sub.size)), g
    # a mixture of two HWE groups (Wahlund): AA = mean of the groups' p^2, above pbar^2
    aa = (vk == "AA").mean()
    want = 0.5 * (pa["European"] ** 2 + pa["East Asian"] ** 2)
    assert abs(aa - want) < 4.5 * math.sqrt(want * (1 - want) / n)
    pbar = 0.5 * (pa["European"] + pa["East Asian"])
    assert aa - pbar**2 > 10 * math.sqrt(want * (1 - want) / n)


# ---------------------------------------------------------------------------------------
# Per-patient parameters
# ---------------------------------------------------------------------------------------
VANCO_POP = {
    "covariates": {
        "SEX": {"dist": "categorical", "levels": ["F", "M"], "probabilities": [0.5, 0.5]},
        # levels in the opposite order to the card's ["no", "yes"]: matched by name
        "DIAL": {"dist": "categorical", "levels": ["yes", "no"], "probabilities": [0.3, 0.7]},
        "AGE": {"dist": "uniform", "low": 20, "high": 85, "unit": "yr"},
        "WT": {"dist": "lognormal", "median": 75, "gcv": 0.2, "unit": "kg"},
        "SCR": {"dist": "lognormal", "median": 1.0, "sdlog": 0.3, "unit": "mg/dL"},
    },
    "derived": {"CRCL": {"formula": "cockcroft_gault", "clip": [0, 150]}},
}


@pytest.fixture(scope="module")
def vanco():
    return twinrx.get_model("vancomycin_goti_2018")


@pytest.fixture(scope="module")
def vpop():
    return cohort.sample_population(VANCO_POP, 20_000, key=KEY)


def test_vancomycin_typical_with_covariates(vanco, vpop):
    p = cohort.individual_parameters(vanco, vpop, key=KEY, variability=False)
    assert set(p) == {"CL", "V1", "Q", "V2", "CRCL", "WT", "DIAL", "eta_CL", "eta_V1", "eta_V2"}
    iv = {k: np.asarray(v) for k, v in vanco.individual_values(p).items()}
    c = vpop.covariates
    dial = c["DIAL"] == "yes"
    # Goti 2018: CL = 4.5 (CRCL/120)^0.8 x 0.7 on dialysis; V1 = 58.4 (WT/70) x 0.5 on dialysis
    np.testing.assert_allclose(
        iv["CL"], 4.5 * (c["CRCL"] / 120) ** 0.8 * np.where(dial, 0.7, 1.0), rtol=1e-12
    )
    np.testing.assert_allclose(iv["V1"], 58.4 * (c["WT"] / 70) * np.where(dial, 0.5, 1.0), rtol=1e-12)
    np.testing.assert_allclose(iv["Q"], 6.5)
    np.testing.assert_allclose(iv["V2"], 38.4)
    np.testing.assert_array_equal(p["DIAL"], dial.astype(float))  # the card's codes: no 0, yes 1


def test_vancomycin_variability_has_card_omega(vanco, vpop):
    p0 = cohort.individual_parameters(vanco, vpop, key=KEY, variability=False)
    p1 = cohort.individual_parameters(vanco, vpop, key=KEY)
    i0, i1 = vanco.individual_values(p0), vanco.individual_values(p1)
    n = vpop.n
    for name, omega2 in (("CL", 0.147), ("V1", 0.510), ("V2", 0.282)):
        r = np.log(np.asarray(i1[name]) / np.asarray(i0[name]))
        sd = math.sqrt(omega2)
        assert abs(r.std() - sd) < 4 * sd / math.sqrt(2 * n), name
        assert abs(r.mean()) < 4 * sd / math.sqrt(n), name
    assert np.all(np.asarray(i1["Q"]) == 6.5)


def test_parameters_feed_simulate(vanco, vpop):
    small = cohort.sample_population(VANCO_POP, 6, key=KEY)
    p = cohort.individual_parameters(vanco, small, key=KEY)
    ev = twinrx.EventTable.from_records([0.0], evid=[1], amt=[1000.0], cmt=[1], rate=[1000.0])
    ds = twinrx.simulate(vanco, p, [ev] * small.n, times=[1.0, 12.0], ids=list(small.ids))
    assert list(ds.patient.values) == [f"V00000{i}" for i in range(1, 7)]
    assert np.all(ds.status.values == 0)
    # at the end of a 1 h infusion of 1000 mg nearly all drug is still in the body: CP < 1000/V1
    iv = vanco.individual_values(p)
    assert np.all(ds.CP.sel(time=1.0).values < 1000 / np.asarray(iv["V1"]))


def test_warfarin_genotype_effects(vpop):
    m = twinrx.get_model("warfarin_hamberg_2007")
    spec = {
        "ancestry": {"European": 0.6, "Central/South Asian": 0.4},
        "genes": ["CYP2C9", "VKORC1"],
        "covariates": {"AGE": {"dist": "uniform", "low": 40, "high": 90, "unit": "years"}},
    }
    pop = cohort.sample_population(spec, 5000, key=KEY)
    p = cohort.individual_parameters(m, pop, key=KEY, variability=False)
    iv = m.individual_values(p)
    cl = {"*1/*1": 1.0, "*1/*2": 0.685, "*1/*3": 0.547, "*2/*2": 0.278, "*2/*3": 0.310, "*3/*3": 0.148}
    ec50 = {"GG": 1.0, "GA": 0.6551, "AA": 0.4772}
    want_cl = 0.314 * np.array([cl[d] for d in pop.covariates["CYP2C9"]])
    want_ec = 4.61 * np.array([ec50[d] for d in pop.covariates["VKORC1"]])
    np.testing.assert_allclose(np.asarray(iv["CL"]), want_cl, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(iv["EC50"]), want_ec, rtol=1e-12)
    np.testing.assert_array_equal(p["AGE"], pop.covariates["AGE"])
    assert len(set(pop.covariates["CYP2C9"])) == 6


def _fake_fit(model, covariance, draws=400):
    from twinrx.infer import Fit, PopulationModel

    pm = PopulationModel.build(model, covariance=covariance)
    rng = np.random.default_rng(7)
    s = {
        "CL": 4.5 * np.exp(0.1 * rng.standard_normal(draws)),
        "V1": np.full(draws, 58.4),
        "Q": np.full(draws, 6.5),
        "V2": np.full(draws, 38.4),
        "omega_CL": np.full(draws, 0.3),
        "omega_V1": rng.uniform(0.4, 0.6, draws),
        "omega_V2": np.full(draws, 0.2),
        "sigma_CP_add": np.full(draws, 3.0),
        "sigma_CP_prop": np.full(draws, 0.2),
    }
    if covariance == "full":
        R = np.array([[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 1.0]])
        s["L_corr"] = np.broadcast_to(np.linalg.cholesky(R), (draws, 3, 3))
    return Fit(pop=pm, data=None, method="nuts", samples={k: np.asarray(v)[None] for k, v in s.items()})


def test_parameters_from_a_population_fit(vanco, vpop):
    fit = _fake_fit(vanco, "diagonal")
    p = cohort.individual_parameters(vanco, vpop, key=KEY, source=fit)
    n = vpop.n
    cl_draws = fit.samples["CL"][0]
    assert np.all(np.isin(p["CL"], cl_draws))  # every patient carries a posterior draw
    assert len(np.unique(p["CL"])) > 300
    ref = cohort.individual_parameters(vanco, vpop, key=KEY, variability=False)
    r = np.log(np.asarray(vanco.individual_values(p)["CL"]) / np.asarray(vanco.individual_values(ref)["CL"]))
    # parameter uncertainty and between-subject variability add up on the log scale
    want = math.sqrt(np.var(np.log(cl_draws / 4.5)) + 0.3**2)
    assert abs(r.std() - want) < 4 * want / math.sqrt(2 * n)
    assert abs(p["eta_CL"].std() - 0.3) < 4 * 0.3 / math.sqrt(2 * n)
    want_v1 = math.sqrt(np.mean(fit.samples["omega_V1"][0] ** 2))
    assert abs(p["eta_V1"].std() - want_v1) < 4 * want_v1 / math.sqrt(2 * n)
    assert abs(np.corrcoef(p["eta_CL"], p["eta_V1"])[0, 1]) < 4 / math.sqrt(n)

    full = cohort.individual_parameters(vanco, vpop, key=KEY, source=_fake_fit(vanco, "full"))
    rho = np.corrcoef(full["eta_CL"], full["eta_V1"])[0, 1]
    assert abs(rho - 0.6) < 4 * (1 - 0.36) / math.sqrt(n)

    with pytest.raises(ValueError, match="fit is of model"):
        cohort.individual_parameters(twinrx.get_model("warfarin_hamberg_2007"), vpop, key=KEY, source=fit)


def test_categorical_kind_mismatch_is_an_error(vanco):
    pop = cohort.sample_population(
        {"covariates": {"DIAL": {"dist": "normal", "mean": 0, "sd": 1}}}, 10, key=KEY
    )
    with pytest.raises(ValueError, match="DIAL"):
        cohort.individual_parameters(vanco, pop, key=KEY)
    pop = cohort.sample_population(
        {
            "covariates": {
                "DIAL": {"dist": "categorical", "levels": ["no", "maybe"], "probabilities": [0.5, 0.5]}
            }
        },
        10,
        key=KEY,
    )
    with pytest.raises(ValueError, match="maybe"):
        cohort.individual_parameters(vanco, pop, key=KEY)


# ---------------------------------------------------------------------------------------
# Determinism, round trip, dataset, speed
# ---------------------------------------------------------------------------------------
def test_same_key_same_population_different_key_differs(spec):
    a = cohort.sample_population(spec, 2000, key=jax.random.key(1))
    b = cohort.sample_population(spec, 2000, key=jax.random.key(1))
    c = cohort.sample_population(spec, 2000, key=jax.random.key(2))
    np.testing.assert_array_equal(a.ids, b.ids)
    for name in a.covariates:
        np.testing.assert_array_equal(a.covariates[name], b.covariates[name])
    for name in ("AGE", "WT", "HT", "SCR", "ALB"):
        assert not np.array_equal(a.covariates[name], c.covariates[name])
    assert not np.array_equal(a.covariates["SEX"], c.covariates["SEX"])
    # each covariate draws from its own stream: adding one leaves the others as they were
    more = _spec()
    more["covariates"]["EXTRA"] = {"dist": "normal", "mean": 0, "sd": 1}
    d = cohort.sample_population(more, 2000, key=jax.random.key(1))
    np.testing.assert_array_equal(a.covariates["WT"], d.covariates["WT"])
    np.testing.assert_array_equal(a.covariates["SEX"], d.covariates["SEX"])
    with pytest.raises(TypeError, match="key"):
        cohort.sample_population(spec, 10, key=3)


def test_spec_round_trip_and_hash(spec):
    again = cohort.PopulationSpec.from_dict(spec.to_dict())
    assert again == spec and hash(again) == hash(spec) and again.digest == spec.digest
    other = cohort.PopulationSpec.from_dict(_spec(ancestry="European", genes=["CYP2C9"]))
    assert other != spec and other.digest != spec.digest
    assert cohort.PopulationSpec.from_dict(other.to_dict()) == other
    assert {spec: 1}[again] == 1


def test_to_dataset(pop):
    small = cohort.sample_population(_spec(ancestry="East Asian", genes=["CYP2C19"]), 50, key=KEY)
    ds = small.to_dataset()
    assert ds.sizes == {"patient": 50}
    assert ds.patient.values[0] == "V000001" and ds.patient.values[-1] == "V000050"
    assert ds.WT.attrs["units"] == "kg" and ds.CRCL.attrs["units"] == "mL/min"
    assert ds.SEX.attrs["levels"] == ["F", "M"]
    assert ds.CYP2C19.attrs["levels"][0] == "*1/*1"
    np.testing.assert_array_equal(ds.CYP2C19_phenotype.values, small.phenotypes["CYP2C19"])
    assert (
        cohort.PopulationSpec.from_dict(__import__("json").loads(ds.attrs["population_spec"])) == small.spec
    )
    with pytest.raises(ValueError):
        small.covariates["WT"][0] = 1.0  # read-only


def test_a_million_patients_is_vectorised():
    spec = cohort.PopulationSpec.from_dict(
        _spec(ancestry={"European": 0.5, "Latino": 0.5}, genes=["CYP2C9", "VKORC1"])
    )
    cohort.sample_population(spec, 1000, key=KEY)
    t0 = time.perf_counter()
    big = cohort.sample_population(spec, 1_000_000, key=KEY)
    took = time.perf_counter() - t0
    assert big.n == 1_000_000 and big.ids[-1] == "V1000000"
    assert took < 15.0, f"{took:.1f} s for 10^6 patients"


# ---------------------------------------------------------------------------------------
# Bad specs
# ---------------------------------------------------------------------------------------
def _with_cov(name, table):
    d = _spec()
    d["covariates"][name] = table
    return d


BAD = [
    (
        _spec(correlations=[["WT", "HT", 0.9], ["WT", "AGE", 0.9], ["HT", "AGE", -0.9]]),
        r"population\.correlations.*not positive definite.*weaken",
    ),
    (
        _spec(correlations={"names": ["WT", "HT"], "matrix": [[1, 0.5], [0.4, 1]]}),
        r"population\.correlations.*not symmetric",
    ),
    (_spec(correlations=[["WT", "SEX", 0.3]]), r"population\.correlations.*SEX.*not a random continuous"),
    (
        _with_cov("SEX", {"dist": "categorical", "levels": ["F", "M"], "probabilities": [0.5, 0.4]}),
        r"population\.covariates\.SEX\.probabilities sum to 0\.9.*make them sum to 1",
    ),
    (_spec(ancestry="European", genes=["CYP9Z9"]), r"population\.genes.*CYP9Z9.*use one of"),
    (_spec(ancestry="European", genes=["CYP2D6"]), r"population\.genes.*CYP2D6.*no allele frequencies"),
    (_spec(ancestry="Martian", genes=["CYP2C9"]), r"population\.ancestry.*Martian.*use one of: European"),
    (
        _spec(ancestry="Oceanian", genes=["VKORC1"]),
        r"population\.ancestry.*no VKORC1 allele frequencies for Oceanian",
    ),
    (_spec(ancestry={"European": 0.6, "Latino": 0.3}), r"population\.ancestry.*sum to 0\.9"),
    (_spec(genes=["CYP2C9"]), r"population\.genes needs population\.ancestry"),
    (_with_cov("X", {"dist": "truncnormal", "mean": 0, "sd": 1}), r"covariates\.X.*truncnormal needs bounds"),
    (_with_cov("X", {"dist": "normal", "mean": 0, "sd": -1}), r"covariates\.X\.sd must be a positive number"),
    (_with_cov("X", {"dist": "normal", "mu": 0, "sd": 1}), r"covariates\.X: unknown key 'mu'; allowed keys"),
    (_with_cov("X", {"dist": "lognormal", "median": 5, "meanlog": 1}), r"covariates\.X: a lognormal needs"),
    (
        _with_cov("X", {"dist": "normal", "mean": 0, "sd": 1, "by": {"SEX": {"U": {"mean": 1}}}}),
        r"covariates\.X\.by\.SEX: 'U' is not a level of SEX",
    ),
    (
        _with_cov("X", {"dist": "normal", "mean": 0, "sd": 1, "bounds": [50, 60]}),
        r"covariates\.X\.bounds exclude .* widen them",
    ),
    (
        _spec(derived={"CRCL": {"formula": "cockcroft_gault", "scr": "CREAT"}}),
        r"derived\.CRCL.*CREAT.*add CREAT",
    ),
    (
        _spec(derived={"EGFR": {"formula": "mdrd"}}),
        r"population\.derived\.EGFR\.formula must be one of cockcroft_gault",
    ),
    (_spec(size=10), r"population: unknown key 'size'"),
]


@pytest.mark.parametrize("d, message", BAD)
def test_bad_specs_name_the_field_and_the_fix(d, message):
    with pytest.raises(ValueError, match=message):
        cohort.PopulationSpec.from_dict(d)


def test_unit_that_does_not_convert():
    d = _with_cov("SCR", {"dist": "normal", "mean": 1, "sd": 0.1, "unit": "kg"})
    with pytest.raises(ValueError, match=r"derived\.CRCL: input scr = SCR has unit 'kg'"):
        cohort.PopulationSpec.from_dict(d)


def test_pgx_phenotype_agrees_for_every_level():
    # every diplotype level the sampler can produce is a CPIC diplotype of pgx's tables
    pop = cohort.sample_population({"ancestry": "Latino", "genes": ["CYP2C19"]}, 10, key=KEY)
    for lab in pop.levels["CYP2C19"]:
        assert pgx.phenotype("CYP2C19", lab).diplotype == lab


def test_overrides_by_ancestry_fixed_values_and_spec_n():
    d = {
        "n": 4000,
        "ancestry": {"European": 0.5, "East Asian": 0.5},
        "covariates": {
            "WT": {"dist": "normal", "mean": 80, "sd": 10, "by": {"ANCESTRY": {"East Asian": {"mean": 65}}}},
            "DOSE": {"dist": "fixed", "value": 100, "by": {"ANCESTRY": {"East Asian": {"value": 75}}}},
        },
    }
    pop = cohort.sample_population(d, key=KEY)
    assert pop.n == 4000 and pop.spec.n == 4000
    east = pop.covariates[cohort.ANCESTRY] == "East Asian"
    np.testing.assert_array_equal(pop.covariates["DOSE"], np.where(east, 75.0, 100.0))
    assert _ks_ok(pop.covariates["WT"][east], stats.norm(65, 10).cdf)
    assert _ks_ok(pop.covariates["WT"][~east], stats.norm(80, 10).cdf)


def test_module_docstring_example_is_a_valid_population():
    doc = cohort.__doc__
    block = doc[doc.index("    [population]\n") : doc.index("Distributions (``dist``)")]
    text = "\n".join(line[4:] for line in block.splitlines())
    pop = cohort.sample_population(tomllib.loads(text)["population"], 500, key=KEY)
    assert set(pop.covariates) >= {
        "ANCESTRY",
        "SEX",
        "AGE",
        "WT",
        "HT",
        "SCR",
        "DIAL",
        "CRCL",
        "CYP2C9",
        "VKORC1",
    }
    assert pop.covariates["CRCL"].max() <= 150


# --------------------------------------------------------------------------------------
# In-silico trials: the chunk kernel (run_arms, simulate_chunk, chunk_partials)
# --------------------------------------------------------------------------------------
TRIAL = """
[scenario]
name = "bolus trial"
model = "one_cpt_iv"
horizon = 24.0
step = 0.1

[population.covariates]
WT = { dist = "lognormal", median = 70, gcv = 0.25, unit = "kg" }
SEX = { dist = "categorical", levels = ["F", "M"], probabilities = [0.4, 0.6] }

[[regimens]]
name = "5 mg/kg"
dose = 5
unit = "mg/kg"
cmt = "central"

[[regimens]]
name = "350 mg"
dose = 350
cmt = "central"

[[targets]]
name = "AUC"
metric = "auc"
window = [0.0, 24.0]
low = 40.0
high = 90.0

[cohort]
n = 50
subgroup = "SEX"
"""


def _bolus_auc(dose, cl, v, t=24.0):
    return dose / cl * (1.0 - np.exp(-cl / v * t))


def test_run_arms_scales_per_kg_doses_by_each_patient_and_flags_a_failed_solve():
    from twinrx.scenarios import load_scenario

    sc = load_scenario(TRIAL)
    assert [a for a, _ in sc.arm_regimens] == ["5 mg/kg", "350 mg"]  # default: one arm per regimen
    rng = np.random.default_rng(3)
    n = 12
    cl, v, wt = rng.uniform(2, 9, n), rng.uniform(30, 80, n), rng.uniform(45, 120, n)
    res = cohort.run_arms(sc, {"CL": cl, "V": v}, key=KEY, weight=wt, trajectories=2)
    np.testing.assert_allclose(res.metric[:, 0, 0], _bolus_auc(5.0 * wt, cl, v), rtol=2e-4)
    np.testing.assert_allclose(res.metric[:, 1, 0], _bolus_auc(350.0, cl, v), rtol=2e-4)
    assert res.status.tolist() == [[0, 0]] * n and res.trajectory.shape == (2, 2, 1, res.times.size)
    # patient 3's clearance is absurd: flagged under every arm, NaN metrics, the others unchanged
    bad = cl.copy()
    bad[3] = np.nan
    res2 = cohort.run_arms(sc, {"CL": bad, "V": v}, key=KEY, weight=wt)
    assert res2.status[3].tolist() == [5, 5] and np.isnan(res2.metric[3]).all()
    keep = np.arange(n) != 3
    np.testing.assert_array_equal(res2.metric[keep], res.metric[keep])
    part = cohort.chunk_partials(sc, res2, subgroup=np.arange(n) % 2, n_levels=2)
    m = res.metric[:, :, 0]
    ok = (m >= 40) & (m <= 90) & keep[:, None]
    assert part["n_attained"][:, 0].tolist() == ok.sum(0).tolist()
    assert part["n_failed"].tolist() == [1, 1] and int(part["n"]) == n
    assert part["n_attained_by"][1, :, 0].tolist() == ok[1::2].sum(0).tolist()
    assert part["n_by"].tolist() == [6, 6]


def test_a_chunk_depends_on_its_index_and_size_only():
    from twinrx.scenarios import load_scenario

    sc = load_scenario(TRIAL)
    spec = cohort.scenario_population(sc)
    pop_a, res_a = cohort.simulate_chunk(sc, spec, 1, 30, 200, key=KEY)
    pop_b, res_b = cohort.simulate_chunk(sc, spec, 1, 30, 45, key=KEY)  # the last chunk: 15 patients
    assert pop_a.n == 30 and pop_b.n == 15
    assert pop_b.ids.tolist() == [f"V{i:06d}" for i in range(31, 46)]
    np.testing.assert_array_equal(pop_b.covariates["WT"], pop_a.covariates["WT"][:15])
    np.testing.assert_array_equal(res_b.metric, res_a.metric[:15])
    pop_c, _ = cohort.simulate_chunk(sc, spec, 2, 30, 200, key=KEY)
    assert not np.array_equal(pop_c.covariates["WT"], pop_a.covariates["WT"])
    with pytest.raises(ValueError, match="starts after"):
        cohort.simulate_chunk(sc, spec, 2, 30, 60, key=KEY)


def test_scenario_arms_and_cohort_settings_are_checked():
    from twinrx.scenarios import load_scenario

    sc = load_scenario(TRIAL + '\n[[arms]]\nname = "flat"\nregimen = "350 mg"\n')
    assert [(a, r.name) for a, r in sc.arm_regimens] == [("flat", "350 mg")]
    assert dict(sc.cohort) == {"n": 50, "subgroup": "SEX"}
    assert pickle.loads(pickle.dumps(sc)) == sc  # scenarios travel to dask workers
    with pytest.raises(TypeError):
        sc.population["covariates"] = {}  # read-only
    with pytest.raises(ValueError, match=r"no regimen 'x'"):
        load_scenario(TRIAL + '\n[[arms]]\nregimen = "x"\n')
    with pytest.raises(ValueError, match="unique"):
        load_scenario(TRIAL + '\n[[arms]]\nregimen = "350 mg"\n[[arms]]\nregimen = "350 mg"\n')
    with pytest.raises(ValueError, match=r"\[cohort\] chunk"):
        load_scenario(TRIAL.replace("n = 50", "n = 50\nchunk = 0"))
    with pytest.raises(ValueError, match="unknown key"):
        load_scenario(TRIAL.replace("n = 50", "n = 50\nworkers = 3"))
    drop = ("[population", "WT =", "SEX =")
    without = "\n".join(line for line in TRIAL.splitlines() if not line.startswith(drop))
    with pytest.raises(ValueError, match=r"\[population\]"):
        cohort.scenario_population(load_scenario(without))


def test_per_kg_amounts_are_per_patient_with_an_array_of_weights():
    from twinrx.scenarios import load_scenario

    sc = load_scenario(Path(__file__).resolve().parents[1] / "scenarios" / "vancomycin_auc_guided.toml")
    m = twinrx.get_model(sc.model)
    reg = sc.regimen("25 mg/kg load, 15 mg/kg q12h")
    t, a, _, _ = reg.doses(m, sc.horizon, weight=np.array([50.0, 100.0]))
    assert a.shape == (2, t.size)
    np.testing.assert_allclose(a[:, 0], [1250.0, 2500.0])
    np.testing.assert_allclose(a[:, 1:], np.array([[750.0], [1500.0]]) * np.ones(t.size - 1))
    _, a1, _, _ = reg.doses(m, sc.horizon, weight=80.0)
    np.testing.assert_allclose(a1, [2000.0] + [1200.0] * (t.size - 1))


def test_shipped_vancomycin_population_matches_goti_2018_table_1():
    from twinrx.scenarios import load_scenario

    sc = load_scenario(Path(__file__).resolve().parents[1] / "scenarios" / "vancomycin_auc_guided.toml")
    pop = cohort.sample_population(cohort.scenario_population(sc), 20_000, key=KEY)
    c = pop.covariates
    # Goti 2018 Table 1: 53.5 % male, 18.5 % on haemodialysis, medians 57 y, 79 kg, CrCL 62 mL/min
    assert abs(np.mean(c["SEX"] == "M") - 0.535) < 0.015
    assert abs(np.mean(c["DIAL"] == "yes") - 0.185) < 0.012
    assert abs(np.median(c["AGE"]) - 57) < 1.0
    assert abs(np.median(c["WT"]) - 79) < 1.5
    assert abs(np.median(c["CRCL"]) - 62) < 2.5
    assert c["CRCL"].min() >= 4 and c["CRCL"].max() <= 150
    # the card reads these covariates as they are (units, levels)
    params = cohort.individual_parameters(twinrx.get_model(sc.model), pop, key=KEY)
    assert {"WT", "CRCL", "DIAL"} <= set(params)


def test_shipped_warfarin_and_insulin_populations_fit_their_cards():
    from twinrx.scenarios import load_scenario

    root = Path(__file__).resolve().parents[1] / "scenarios"
    for name, covs in (("warfarin_genotype_guided", {"CYP2C9", "VKORC1", "AGE"}), ("insulin_timing", {"BW"})):
        sc = load_scenario(root / f"{name}.toml")
        pop = cohort.sample_population(cohort.scenario_population(sc), 2000, key=KEY)
        params = cohort.individual_parameters(twinrx.get_model(sc.model), pop, key=KEY)
        assert covs <= set(params), name
    sc = load_scenario(root / "warfarin_genotype_guided.toml")
    pop = cohort.sample_population(cohort.scenario_population(sc), 40_000, key=KEY)
    eu = pop.covariates["ANCESTRY"] == "European"
    # VKORC1 -1639 A/A in Europeans: q^2 with the CPIC frequency read from the CSV
    with FREQ_CSV.open() as f:
        q = next(
            float(r["frequency"])
            for r in csv.DictReader(f)
            if r["gene"] == "VKORC1" and r["group"] == "European" and r["allele"] == "A"
        )
    assert abs(np.mean(pop.covariates["VKORC1"][eu] == "AA") - q * q) < 0.01


# --------------------------------------------------------------------------------------
# Per-patient algorithmic doses (dose formulas)
# --------------------------------------------------------------------------------------
_IWPC_VKORC1 = {"GG": 0.0, "GA": -0.8677, "AA": -1.6974}
_IWPC_CYP2C9 = {"*1/*1": 0.0, "*1/*2": -0.5211, "*1/*3": -0.9357, "*2/*2": -1.0616, "*2/*3": -1.9206}
_IWPC_CYP2C9["*3/*3"] = -2.3312
_IWPC_RACE = {"European": 0.0, "East Asian": -0.1092, "African American/Afro-Caribbean": -0.2760}


def _iwpc_daily(age, ht, wt, vkorc1, cyp2c9, ancestry):
    """IWPC pharmacogenetic dose (N Engl J Med 2009;360:753, supplementary appendix), mg/day,
    written here from the paper's coefficients: race 'missing or mixed' for Latino."""
    race = {**_IWPC_RACE, "Latino": -0.1032}
    sq = (
        5.6044
        - 0.2614 * np.floor(age / 10)
        + 0.0087 * ht
        + 0.0128 * wt
        + np.array([_IWPC_VKORC1[g] for g in vkorc1])
        + np.array([_IWPC_CYP2C9[g] for g in cyp2c9])
        + np.array([race[a] for a in ancestry])
    )
    return sq**2 / 7


def test_iwpc_dose_of_each_virtual_patient_in_the_shipped_warfarin_trial():
    """The shipped warfarin trial's IWPC arms dose each virtual patient by the IWPC formula
    of their own age, height, weight, ancestry and genotypes (rounded to 0.5 mg), and the
    untitrated arm's total is 28 such doses; the 5 mg arm stays 5 mg for all."""
    from twinrx.scenarios import load_scenario

    sc = load_scenario(Path(__file__).resolve().parents[1] / "scenarios" / "warfarin_genotype_guided.toml")
    spec = cohort.scenario_population(sc)
    pop, res = cohort.simulate_chunk(sc, spec, 0, 60, 60, key=KEY)
    c = pop.covariates
    want = _iwpc_daily(c["AGE"], c["HT"], c["WT"], c["VKORC1"], c["CYP2C9"], c["ANCESTRY"])
    want = np.clip(np.round(want / 0.5) * 0.5, 0.5, 15.0)
    assert len(set(want)) >= 5  # the patients' doses differ
    arms = list(res.arms)
    fixed = arms.index("IWPC dose daily, no titration")
    np.testing.assert_allclose(res.last_dose[:, fixed], want, rtol=1e-12)
    np.testing.assert_allclose(res.total_dose[:, fixed], 28 * want, rtol=1e-12)
    np.testing.assert_allclose(res.total_dose[:, arms.index("5 mg daily, no titration")], 140.0)
    assert (res.status == 0).all()
    # the file's own patient: 3.12 mg/day by hand -> 3 mg
    one = sc.regimen("IWPC dose daily + INR nomogram").blocks[0].formula
    assert one.amounts(dict(sc.patient), "test") == 3.0
    p = dict(sc.patient)
    assert _iwpc_daily(np.array(p["AGE"]), p["HT"], p["WT"], [p["VKORC1"]], [p["CYP2C9"]], [p["ANCESTRY"]])[
        0
    ] == pytest.approx(3.12, abs=0.005)


FORMULA_TRIAL = TRIAL.replace(
    """[[regimens]]
name = "350 mg"
dose = 350
cmt = "central"
""",
    """[[regimens]]
name = "by formula"
dose = { formula = "0.05 * HT * sex + 1000 * log(WT / 40)", units = { HT = "m" }, levels = { sex = { of = "SEX", F = 90.0, M = 100.0 } }, round = 5, max = 900 }
unit = "mg"
cmt = "central"

[patient]
HT = 170.0
""",
)


def test_dose_formula_units_levels_rounding_and_a_patient_out_of_its_domain():
    from twinrx.scenarios import load_scenario

    sc = load_scenario(FORMULA_TRIAL)
    assert sc.dose_covariates == ("HT", "WT", "SEX")
    f = sc.regimen("by formula").blocks[0].formula
    wt = np.array([50.0, 80.0, 30.0, 400.0])
    sex = np.array(["F", "M", "M", "F"])
    # HT given in cm, the formula reads metres: 0.05 * 1.7 * 90 = 7.65 for F
    got = f.amounts({"HT": 170.0, "WT": wt, "SEX": sex}, "test", {"HT": "cm"})
    raw = 0.05 * 1.7 * np.where(sex == "F", 90.0, 100.0) + 1000 * np.log(wt / 40)
    np.testing.assert_allclose(got, np.clip(np.round(raw / 5) * 5, 0, 900))
    assert got[2] == 0.0 and got[3] == 900.0  # clipped at min (0) and max
    # In a cohort: the formula's covariates from the population; HT (a dose-only covariate of
    # [patient]) never reaches the simulator. A patient whose formula is NaN is flagged.
    n = 6
    rng = np.random.default_rng(1)
    cl, v = rng.uniform(2, 9, n), rng.uniform(30, 80, n)
    w = rng.uniform(45, 120, n)
    w[2] = -1.0  # log of a negative weight: NaN dose
    covs = {"HT": 170.0, "WT": w, "SEX": np.array(["F", "M"] * 3)}
    res = cohort.run_arms(
        sc, {"CL": cl, "V": v, "HT": np.full(n, 170.0)}, key=KEY, weight=np.abs(w), covariates=covs
    )
    ok = np.arange(n) != 2
    dose = f.amounts({**covs, "WT": np.abs(w)}, "test")
    np.testing.assert_allclose(res.metric[ok, 1, 0], _bolus_auc(dose, cl, v)[ok], rtol=2e-4)
    assert res.status[2, 1] != 0 and np.isnan(res.metric[2, 1]) and res.status[2, 0] == 0
    assert (res.status[ok] == 0).all()


@pytest.mark.parametrize(
    "dose,covs,message",
    [
        ('{ formula = "WT *" }', {}, "dose formula"),
        ('{ formula = "x + 1", levels = { y = { of = "SEX", F = 1 } } }', {}, "'y' is not used"),
        ('{ formula = "x", levels = { x = { F = 1 } } }', {}, "must be a table"),
        ('{ formula = "2 * WT", round = 1, min = 5, max = 1 }', {}, "min <= max"),
        ('{ formula = "2 * WT", rounding = 1 }', {}, "unknown key"),
        ('{ formula = "2 * WT", units = { WT = "blorp" } }', {}, "dose units WT"),
        ('{ formula = "2 * AGE" }', {"WT": 1.0}, "reads 'AGE', which the patient does not have"),
        ('{ formula = "s", levels = { s = { of = "SEX", F = 1 } } }', {"SEX": "M"}, "no value for SEX = M"),
        ('{ formula = "2 * SEX" }', {"SEX": "M"}, "categorical"),
        ('{ formula = "log(WT - 100)" }', {"WT": 70.0}, "gives nan"),
    ],
)
def test_dose_formula_errors_name_the_regimen_and_the_fix(dose, covs, message):
    from twinrx.scenarios import load_scenario

    text = TRIAL.replace('dose = 350\ncmt = "central"', f'dose = {dose}\ncmt = "central"')
    with pytest.raises(ValueError, match=message) as err:
        sc = load_scenario(text)
        sc.regimen("350 mg").blocks[0].formula.amounts(covs, "regimen '350 mg'")
    assert "350 mg" in str(err.value)
