"""Cohort runs (twinrx.scale.run_cohort and `twinrx cohort run`) against independent truths:
closed-form AUCs of a one-compartment IV bolus computed here with numpy from the stored
covariates, PTAs counted here from the stored per-patient metrics, and the bytes of an
uninterrupted run for a resumed one."""

import filecmp
import os
from pathlib import Path

import dask.array
import numpy as np
import pytest

from twinrx import cohort, get_model, scale
from twinrx.cli import main
from twinrx.scenarios import load_scenario

# One-compartment IV card whose clearance scales with weight (allometric exponent 0.75) and
# that has no random effects: every patient's AUC follows from their stored weight alone.
CARD = """
[model]
name = "one_cpt_iv_wt"
description = "one-compartment IV, clearance allometric in weight, no random effects (test card)"
kind = "pk"
time_unit = "h"
amount_unit = "mg"
structure = "one_cpt_iv"
references = ["Gibaldi M, Perrier D. Pharmacokinetics, 2nd ed. 1982."]

[parameters]
CL = { value = 5.0, unit = "L/h", bounds = [0, 1e4], description = "clearance at 70 kg", source = "test" }
V = { value = 50.0, unit = "L", bounds = [0, 1e5], description = "volume", source = "test" }

[covariates]
WT = { unit = "kg", reference = 70.0, description = "body weight", source = "test" }

[[effects]]
parameter = "CL"
covariate = "WT"
form = "power"
coefficient = 0.75
reference = 70.0
source = "allometry"

[compartments]
central = { description = "plasma" }

[ode]
equations = "d/dt(central) = -CL/V*central"

[outputs.CP]
expr = "central / V"
unit = "mg/L"
description = "plasma concentration"
"""

HORIZON, LOW = 48.0, 130.0


def _scenario_text(card: Path) -> str:
    return f"""
[scenario]
name = "allometric bolus"
model = "{card}"
horizon = {HORIZON}
step = 0.1

[population.covariates]
SEX = {{ dist = "categorical", levels = ["F", "M"], probabilities = [0.5, 0.5] }}
WT = {{ dist = "lognormal", median = 70, gcv = 0.3, bounds = [35, 160], unit = "kg", by = {{ SEX = {{ F = {{ median = 62 }} }} }} }}

[[regimens]]
name = "10 mg/kg"
dose = 10
unit = "mg/kg"
cmt = "central"

[[regimens]]
name = "700 mg"
dose = 700
cmt = "central"

[[arms]]
name = "weight-based"
regimen = "10 mg/kg"

[[arms]]
name = "flat"
regimen = "700 mg"

[[targets]]
name = "AUC 0-48"
metric = "auc"
window = [0.0, {HORIZON}]
low = {LOW}

[[targets]]
name = "Cmax"
metric = "cmax"
window = [0.0, {HORIZON}]
high = 15.0
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort")
    card = d / "one_cpt_iv_wt.toml"
    card.write_text(CARD)
    sc = d / "scenario.toml"
    sc.write_text(_scenario_text(card))
    return d, sc


@pytest.fixture(scope="module")
def scenario(files):
    return load_scenario(files[1])


@pytest.fixture(scope="module")
def reference(files, scenario):
    """An uninterrupted in-process run: 230 patients in chunks of 60 (the last one short)."""
    out = files[0] / "reference.zarr"
    ds = scale.run_cohort(
        scenario, 230, out, seed=7, chunk=60, scheduler="synchronous", progress=False, trajectories=3
    )
    return out, ds


def _data_files(store: Path) -> dict[str, Path]:
    """Every chunk file of a store (not the zarr.json metadata)."""
    return {
        str(p.relative_to(store)): p
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


def _auc(wt, dose):
    """AUC over [0, HORIZON) of a bolus at 0: dose / CL (1 - exp(-k HORIZON)), by hand."""
    cl = 5.0 * (wt / 70.0) ** 0.75
    return dose / cl * (1.0 - np.exp(-cl / 50.0 * HORIZON))


def test_per_kg_doses_scale_by_each_patients_weight_closed_form(reference):
    _, ds = reference
    wt = ds["WT"].values
    assert wt.std() > 5  # patients really differ in weight
    auc = ds["metric"].sel(target="AUC 0-48").values
    np.testing.assert_allclose(auc[:, 0], _auc(wt, 10.0 * wt), rtol=2e-4)
    np.testing.assert_allclose(auc[:, 1], _auc(wt, 700.0), rtol=2e-4)
    # Cmax of a bolus is dose / V
    np.testing.assert_allclose(ds["metric"].sel(target="Cmax").values[:, 0], 10.0 * wt / 50.0, rtol=1e-9)
    np.testing.assert_allclose(ds["total_dose"].values[:, 0], 10.0 * wt, rtol=1e-12)


def test_pta_equals_the_fraction_from_stored_metrics_and_from_the_closed_form(reference):
    _, ds = reference
    metric = ds["metric"].values
    n = metric.shape[0]
    stored = np.stack([(metric[:, :, 0] >= LOW).mean(0), (metric[:, :, 1] <= 15.0).mean(0)], axis=1)
    np.testing.assert_allclose(ds["pta"].values, stored, rtol=0, atol=0)
    wt = ds["WT"].values
    closed = [np.mean(_auc(wt, 10.0 * wt) >= LOW), np.mean(_auc(wt, 700.0) >= LOW)]
    np.testing.assert_allclose(ds["pta"].sel(target="AUC 0-48").values, closed, rtol=0, atol=0)
    assert 0.05 < closed[1] < 0.95  # a PTA that could be wrong either way
    np.testing.assert_allclose(ds["median"].values, np.median(metric, axis=0))
    np.testing.assert_allclose(ds["q95"].values, np.quantile(metric, 0.95, axis=0))
    assert ds["n_failed"].values.tolist() == [0, 0] and int(ds["part_n"].sum()) == n == 230


def test_store_is_lazy_chunked_by_patient_with_provenance(reference, scenario):
    out, ds = reference
    assert isinstance(ds["metric"].data, dask.array.Array)
    assert ds["metric"].data.chunks[0] == (60, 60, 60, 50)
    assert ds.attrs["twinrx_schema"] == "cohort/1"
    card = get_model(scenario.model).card
    assert ds.attrs["model_card_hash"] == card.digest
    assert ds.attrs["scenario_hash"] == scenario.hash and ds.attrs["seed"] == "7"
    for k in ("twinrx_version", "jax_version", "zarr_version", "device", "created"):
        assert ds.attrs[k]
    assert ds["patient"].values[0] == "V000001" and ds["patient"].values[-1] == "V000230"
    assert ds["done"].values.tolist() == [1, 1, 1, 1]
    # trajectories of the first 3 patients: C(t) = dose/V exp(-k t) under the weight-based arm
    wt = ds["WT"].values[:3]
    t = ds["time"].values
    cl = 5.0 * (wt / 70.0) ** 0.75
    want = (10.0 * wt / 50.0)[:, None] * np.exp(-(cl / 50.0)[:, None] * t[None, :])
    got = ds["trajectory"].sel(arm="weight-based", output="CP").values
    np.testing.assert_allclose(got[:, 1:], want[:, 1:], rtol=1e-9)


def test_resume_after_a_kill_gives_the_same_bytes_and_writes_no_chunk_twice(
    files, scenario, reference, monkeypatch
):
    ref_out, _ = reference
    out = files[0] / "killed.zarr"
    written = []
    write = scale._write_chunk

    def counting(job, index, values):
        written.append(index)
        return write(job, index, values)

    monkeypatch.setattr(scale, "_write_chunk", counting)

    def kill(index):
        if index == 1:
            raise KeyboardInterrupt("killed after chunk 1")

    kwargs = dict(seed=7, chunk=60, scheduler="synchronous", progress=False, trajectories=3)
    with pytest.raises(KeyboardInterrupt):
        scale.run_cohort(scenario, 230, out, on_chunk=kill, **kwargs)
    assert written == [0, 1]
    before = {k: p.stat().st_mtime_ns for k, p in _data_files(out).items()}
    with pytest.raises(FileExistsError, match="resume"):
        scale.run_cohort(scenario, 230, out, **kwargs)
    with pytest.raises(ValueError, match="seed"):
        scale.run_cohort(scenario, 230, out, resume=True, **{**kwargs, "seed": 8})
    scale.run_cohort(scenario, 230, out, resume=True, **kwargs)
    assert written == [0, 1, 2, 3]  # every chunk once
    after = _data_files(out)
    for k, mtime in before.items():
        if k.startswith(("metric/", "status/", "done/", "WT/", "part_")):
            assert after[k].stat().st_mtime_ns == mtime, f"{k} was written again"
    ref = _data_files(ref_out)
    assert sorted(after) == sorted(ref)
    bad = [k for k in ref if not filecmp.cmp(ref[k], after[k], shallow=False)]
    assert not bad, bad
    # a second resume of a finished run runs nothing
    scale.run_cohort(scenario, 230, out, resume=True, **kwargs)
    assert written == [0, 1, 2, 3]


def test_a_failed_patient_is_flagged_and_the_others_are_unchanged(files, scenario, reference, monkeypatch):
    _, ref = reference
    real = cohort.individual_parameters

    def absurd(model, pop, **kw):
        p = real(model, pop, **kw)
        p["CL"] = p["CL"].copy()
        p["CL"][4] = np.nan  # patient 5 of every chunk: a clearance no solver can use
        return p

    monkeypatch.setattr(cohort, "individual_parameters", absurd)
    ds = scale.run_cohort(
        scenario, 230, files[0] / "failed.zarr", seed=7, chunk=60, scheduler="synchronous", progress=False
    )
    bad = np.arange(230) % 60 == 4
    status = ds["status"].values
    assert np.all(status[bad] == 5) and np.all(status[~bad] == 0)  # Status.NONFINITE
    assert np.all(np.isnan(ds["metric"].values[bad]))
    np.testing.assert_array_equal(ds["metric"].values[~bad], ref["metric"].values[~bad])
    assert ds["n_failed"].values.tolist() == [4, 4]
    m = ref["metric"].values[:, :, 0]
    want = ((m >= LOW) & ~bad[:, None]).mean(0)  # failed solves count as not attained
    np.testing.assert_allclose(ds["pta"].sel(target="AUC 0-48").values, want, rtol=0, atol=0)


def test_subgroup_pta_is_the_fraction_within_each_level(files, scenario):
    ds = scale.run_cohort(
        scenario,
        120,
        files[0] / "by_sex.zarr",
        seed=7,
        chunk=60,
        scheduler="synchronous",
        progress=False,
        subgroup="SEX",
    )
    sex = ds["SEX"].values
    assert ds["SEX"].attrs["levels"] == ["F", "M"]
    m = ds["metric"].values[:, :, 0]
    for i in range(2):
        np.testing.assert_allclose(ds["pta_by"].values[i, :, 0], (m[sex == i] >= LOW).mean(0), rtol=0, atol=0)
    assert ds["n_by"].values.sum() == 120
    with pytest.raises(ValueError, match="categorical"):
        scale.run_cohort(scenario, 10, files[0] / "x.zarr", seed=1, chunk=5, subgroup="WT", progress=False)


def test_local_cluster_with_two_spawn_workers_gives_the_same_bytes(files, scenario, reference):
    ref_out, _ = reference
    out = files[0] / "cluster.zarr"
    scale.run_cohort(scenario, 230, out, seed=7, chunk=60, workers=2, progress=False, trajectories=3)
    ref, got = _data_files(ref_out), _data_files(out)
    assert sorted(got) == sorted(ref)
    bad = [k for k in ref if not filecmp.cmp(ref[k], got[k], shallow=False)]
    assert not bad, bad


def test_cli_cohort_run_prints_the_arm_table(files, capsys):
    d, sc = files
    out = d / "cli.zarr"
    argv = ["cohort", "run", str(sc), "--n", "120", "--chunk", "60", "--out", str(out), "--seed", "7"]
    argv += ["--scheduler", "synchronous", "--no-progress", "--subgroup", "SEX"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "120 virtual patients x 2 arms" in text
    assert "AUC 0-48 [h*mg/L]" in text and "weight-based" in text and "PTA" in text
    assert "PTA of AUC 0-48 by SEX" in text
    assert os.path.isdir(out / "metric")
    # the same --out again without --resume: a user error
    assert main(argv) == 1
    assert "resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0


def test_cli_cohort_run_user_errors(files, tmp_path, capsys):
    d, _ = files
    no_pop = Path(__file__).resolve().parents[1] / "scenarios" / "vancomycin_auc_guided.toml"
    text = no_pop.read_text().split("# ----")[0]  # the scenario without its [population]
    f = tmp_path / "no_population.toml"
    f.write_text(text)
    assert main(["cohort", "run", str(f), "--n", "10", "--out", str(tmp_path / "a.zarr")]) == 1
    assert "[population]" in capsys.readouterr().err
    assert (
        main(["cohort", "run", str(tmp_path / "missing.toml"), "--n", "5", "--out", str(tmp_path / "b")]) == 1
    )
    bad = tmp_path / "bad.toml"
    bad.write_text((d / "scenario.toml").read_text() + '\n[[arms]]\nname = "x"\nregimen = "nope"\n')
    assert main(["cohort", "run", str(bad), "--n", "5", "--out", str(tmp_path / "c.zarr")]) == 1
    assert "nope" in capsys.readouterr().err
