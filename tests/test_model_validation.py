"""Library cards against real data and published guidance (not against twinrx's own output)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import twinrx

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_bergman_reproduces_pacini_bergman_ivgtt():
    """The Bergman card with the published MINMOD parameters, driven by the measured insulin,
    reproduces the measured glucose from 8 min on (Pacini & Bergman 1986)."""
    path = DATA / "ivgtt_pacini_bergman_1986.csv"
    if not path.exists():
        pytest.skip("../shared/data is not present")
    import pandas as pd

    d = pd.read_csv(path)
    t = d.time_min.to_numpy(float)
    m = twinrx.get_model("bergman_minimal")
    p = {k.name: k.value for k in m.parameters}
    assert (p["SG"], p["P2"], p["SI"], p["Gb"], p["Ib"]) == (0.03082, 0.02093, 5.07e-4, 92.0, 7.3)
    ev = twinrx.EventTable.from_records(t, [2] * len(t), [0.0] * len(t), [1] * len(t))
    ds = twinrx.simulate(m, {"INS": d.insulin_uUml.to_numpy(float)}, ev)
    g = np.asarray(ds.GLU).ravel()
    late = t >= 8
    rmse = float(np.sqrt(np.mean((g[late] - d.glucose_mgdl.to_numpy(float)[late]) ** 2)))
    print(f"IVGTT glucose RMSE from 8 min: {rmse:.2f} mg/dL")
    assert rmse <= 6.0
    # Insulin enters through the covariate: with insulin held at basal the fit is worse.
    flat = twinrx.simulate(m, {"INS": np.full(len(t), 7.3)}, ev)
    rmse_flat = float(
        np.sqrt(np.mean((np.asarray(flat.GLU).ravel()[late] - d.glucose_mgdl.to_numpy(float)[late]) ** 2))
    )
    assert rmse_flat > rmse + 2.0


# Warfarin label (Coumadin prescribing information, reproduced by CPIC 2011/2017): expected
# maintenance dose bands, mg/day, by VKORC1 -1639G>A and CYP2C9. 3 = 5-7, 2 = 3-4, 1 = 0.5-2.
CYP2C9 = ["*1/*1", "*1/*2", "*1/*3", "*2/*2", "*2/*3", "*3/*3"]
LABEL_BAND = {"GG": [3, 3, 2, 2, 2, 1], "GA": [3, 2, 2, 2, 1, 1], "AA": [2, 2, 1, 1, 1, 1]}


def warfarin_maintenance_doses(target_inr=2.5, days=100, age=60.0):
    """Daily racemic dose that gives the target INR at the trough after ``days`` days, for
    the typical patient of each genotype (one cohort simulation over a dose grid)."""
    m = twinrx.get_model("warfarin_hamberg_2007")
    grid = np.geomspace(0.25, 20.0, 28)
    genos = [(c, v) for v in LABEL_BAND for c in CYP2C9]
    n = len(genos) * len(grid)
    # Unit doses scaled through the S fraction (the dose enters linearly).
    ev = twinrx.EventTable.from_records([0.0], [1], [1.0], [1], ii=[24.0], addl=[days - 1])
    inputs = {
        "CYP2C9": np.repeat([g[0] for g in genos], len(grid)),
        "VKORC1": np.repeat([g[1] for g in genos], len(grid)),
        "FS": 0.5 * np.tile(grid, len(genos)),
        "AGE": np.full(n, age),
    }
    _, out, status = twinrx.simulate_arrays(m, inputs, [ev] * n, np.array([days * 24.0]))
    assert np.all(np.asarray(status) == 0)
    inr = np.asarray(out["INR"]).reshape(len(genos), len(grid))
    assert np.all(np.diff(inr, axis=1) > 0)  # more drug, higher INR
    dose = {g: float(np.exp(np.interp(target_inr, row, np.log(grid)))) for g, row in zip(genos, inr)}
    return dose


def test_warfarin_doses_rank_as_the_guideline():
    dose = warfarin_maintenance_doses()
    for (c, v), d in dose.items():
        print(f"VKORC1 {v} CYP2C9 {c}: {d:.2f} mg/day (label band {LABEL_BAND[v][CYP2C9.index(c)]})")
    # More sensitive VKORC1 genotypes need less, for every CYP2C9 genotype.
    for c in CYP2C9:
        assert dose[(c, "GG")] > dose[(c, "GA")] > dose[(c, "AA")]
    # *1/*1 needs the most and *3/*3 the least, for every VKORC1 genotype.
    for v in LABEL_BAND:
        ds = [dose[(c, v)] for c in CYP2C9]
        assert ds[0] == max(ds) and ds[-1] == min(ds)
    # Pairs the label puts in different dose bands are ordered the same way.
    keys = list(dose)
    band = {(c, v): LABEL_BAND[v][CYP2C9.index(c)] for c, v in keys}
    pairs = [(a, b) for a in keys for b in keys if band[a] > band[b]]
    concordant = sum(dose[a] > dose[b] for a, b in pairs)
    print(f"concordant pairs: {concordant}/{len(pairs)}")
    assert concordant >= 0.95 * len(pairs)
    # The highest band (5-7 mg/day) is above every genotype of the lower bands.
    top = min(dose[k] for k in keys if band[k] == 3)
    assert all(dose[k] < top for k in keys if band[k] < 3)
