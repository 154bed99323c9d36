"""The command line, through its entry point (exit codes 0 / 1)."""

import pandas as pd
import pytest

from twinrx.cli import main

CSV = "ID,TIME,EVID,AMT,CMT,RATE,WT,LAGT\n1,0,1,100,1,0,70,0.5\n1,1,0,0,2,0,70,0.5\n1,4,0,0,2,0,80,0.5\n2,0,1,50,2,10,60,0\n2,6,0,0,2,0,60,0\n"


def test_simulate_csv_one_row_per_input_row(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text(CSV)
    out = tmp_path / "o.csv"
    rc = main(
        [
            "simulate",
            "--model",
            "one_cpt_oral",
            "--data",
            str(data),
            "--out",
            str(out),
            "--param",
            "CL=2",
            "--param",
            "V=WT",
            "--lag",
            "depot=LAGT",
        ]
    )
    assert rc == 0
    df = pd.read_csv(out)
    assert list(df.columns) == ["ID", "TIME", "A_depot", "A_central", "CP", "STATUS"]
    assert df["TIME"].tolist() == [0, 1, 4, 0, 6] and df["ID"].tolist() == [1, 1, 1, 2, 2]
    # Patient 2: 50 mg infused over 5 h into central (V = WT = 60 L, k = 2/60).
    import numpy as np

    k = 2 / 60
    expect = 10 / k * (1 - np.exp(-k * 5)) * np.exp(-k * 1)
    assert abs(df["A_central"].iloc[4] - expect) < 1e-8 * expect
    # Patient 1: 0.5 h lag; at t=1 the depot holds 100 exp(-KA*0.5) with the default KA.
    assert abs(df["A_depot"].iloc[1] - 100 * np.exp(-1.0 * 0.5)) < 1e-9


def test_simulate_zarr(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text(CSV)
    rc = main(["simulate", "-m", "one_cpt_oral", "-d", str(data), "-o", str(tmp_path / "o.zarr")])
    assert rc == 0
    from twinrx.store import open_store

    ds = open_store(tmp_path / "o.zarr")
    assert ds.sizes["row"] == 5 and ds.CP.attrs["units"] == "mg/L"
    assert "jax_version" in ds.attrs


def test_validate_lists_problems_exit_1(tmp_path, capsys):
    data = tmp_path / "bad.csv"
    data.write_text("ID,TIME,EVID,AMT,CMT\n1,0,1,-1,1\n1,-3,0,0,2\n")
    assert main(["validate", str(data), "--model", "one_cpt_oral"]) == 1
    out = capsys.readouterr().out
    assert "2 problems" in out and "row 2, column AMT" in out and "row 3, column TIME" in out


def test_user_error_exit_code(tmp_path, capsys):
    assert main(["simulate", "-m", "nope", "-d", str(tmp_path / "x.csv"), "-o", str(tmp_path / "o.csv")]) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_models_list(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "two_cpt_oral" in out and "three_cpt_iv" in out


def test_models_list_and_show(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "warfarin_hamberg_2007" in out and "bergman_minimal" in out and "Hamberg AK et al. 2007" in out
    assert main(["models", "show", "vancomycin_goti_2018"]) == 0
    out = capsys.readouterr().out
    assert "CRCL" in out and "Goti" in out and "L/h" in out
    assert main(["models", "show", "vancomycin_goti"]) == 1
    assert "did you mean 'vancomycin_goti_2018'" in capsys.readouterr().err.lower()


def test_simulate_with_a_card_path_and_covariate_column(tmp_path):
    """A card given by path; its covariate CRCL comes from the data column of that name."""
    import numpy as np

    from twinrx.model.library import get_model

    card = get_model("vancomycin_goti_2018").card
    data = tmp_path / "v.csv"
    data.write_text("ID,TIME,EVID,AMT,CMT,RATE,CRCL\n1,0,1,1000,1,1000,60\n1,12,0,0,1,0,60\n")
    out = tmp_path / "o.csv"
    assert main(["simulate", "--model", card.path, "--data", str(data), "--out", str(out)]) == 0
    df = pd.read_csv(out)
    # The same patient through the Python API with CRCL = 60 mL/min.
    ev = __import__("twinrx").EventTable.from_records(
        [0.0, 12.0], [1, 0], [1000.0, 0.0], [1, 1], rate=[1000.0, 0.0]
    )
    ds = __import__("twinrx").simulate(get_model(card.path), {"CRCL": 60.0}, ev)
    np.testing.assert_allclose(df["CP"].to_numpy(), np.asarray(ds.CP).ravel(), rtol=1e-10)
    ref = __import__("twinrx").simulate(get_model(card.path), {"CRCL": 120.0}, ev)
    assert df["CP"].iloc[1] > float(np.asarray(ref.CP).ravel()[1])  # lower clearance, higher trough


SCENARIO = """
[scenario]
name = "cli check"
model = "one_cpt_iv"
horizon = 108.0
step = 0.1
[patient]
[[regimens]]
name = "100 mg q12h"
dose = 100
cmt = "central"
every = 12
[[regimens]]
name = "400 mg q12h"
dose = 400
cmt = "central"
every = 12
[[targets]]
name = "AUC tau"
metric = "auc"
window = [96.0, 108.0]
low = 15.0
high = 30.0
"""


def test_scenario_run_prints_the_comparison_and_writes_it(tmp_path, capsys):
    import numpy as np

    sc = tmp_path / "s.toml"
    sc.write_text(SCENARIO)
    rc = main(
        ["scenario", "run", str(sc), "--draws", "400", "--seed", "3", "--out", str(tmp_path / "r.zarr")]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "100 mg q12h" in out and "PTA" in out
    from twinrx.store import open_store

    ds = open_store(tmp_path / "r.zarr")
    # AUC over a steady-state interval is D / CL_i (CL 5 L/h typical): 100 mg -> 20 h*mg/L in
    # range, 400 mg -> 80, far above 30 for nearly every draw.
    med = ds["median"].sel(target="AUC tau").values
    assert abs(med[0] - 20.0) < 1.5 and abs(med[1] - 80.0) < 6.0
    assert ds["pta"].values[0, 0] > 0.6 and ds["pta"].values[0, 1] < 0.05
    assert ds["rank"].values.tolist() == [1, 2] and ds.attrs["scenario_hash"]
    assert np.all(~ds["failed"].values)


def test_scenario_optimise_prints_the_best_dose(tmp_path, capsys):
    sc = tmp_path / "s.toml"
    sc.write_text(SCENARIO)
    rc = main(
        ["scenario", "optimise", str(sc), "--regimen", "400 mg q12h", "--objective", "loss", "--draws", "300"]
    )
    assert rc == 0
    out = capsys.readouterr().out
    # the loss optimum: D = 22.5 * geometric mean of CL_i ~ 22.5 * 5 = 112.5 mg (+-10% for 300 draws)
    line = next(s for s in out.splitlines() if s.strip().startswith("400 mg q12h"))
    dose = float(line.split()[4])
    assert 100.0 < dose < 125.0


def test_scenario_errors_exit_1(tmp_path, capsys):
    sc = tmp_path / "s.toml"
    sc.write_text(SCENARIO.replace('metric = "auc"', 'metric = "mean"'))
    assert main(["scenario", "run", str(sc)]) == 1
    assert "metric must be one of" in capsys.readouterr().err


def test_json_and_quiet_output_and_the_report_command(tmp_path, capsys):
    """--json: one JSON document (tables as rows, the file written, the exit code), equal to
    what the store holds; --quiet: nothing on stdout; errors give exit code 1 in both, in
    the document too. `twinrx report` turns the result into one HTML page."""
    import json

    from twinrx.store import open_store

    sc = tmp_path / "s.toml"
    sc.write_text(SCENARIO)
    out = tmp_path / "r.zarr"
    args = ["scenario", "run", str(sc), "--draws", "200", "--seed", "3", "--out", str(out)]
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit_code"] == 0 and doc["command"] == "scenario run" and doc["written"] == str(out)
    tables = [o["table"] for o in doc["output"] if "table" in o]
    assert tables and tables[0]["columns"][:2] == ["regimen", "median"]
    ds = open_store(out)
    first_target = str(ds.target.values[0])
    for row in tables[0]["rows"]:
        med = float(ds["median"].sel(target=first_target, regimen=row[0]))
        assert float(row[1]) == pytest.approx(med, rel=1e-3)
    assert main(["--quiet", *args[:-1], str(tmp_path / "r2.zarr")]) == 0
    assert capsys.readouterr().out == "" and (tmp_path / "r2.zarr").is_dir()
    assert main(["scenario", "run", str(tmp_path / "missing.toml"), "--json"]) == 1
    bad = json.loads(capsys.readouterr().out)
    assert bad["exit_code"] == 1 and "missing.toml" in bad["error"]
    html = tmp_path / "r.html"
    assert main(["report", str(out), "--out", str(html)]) == 0
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert main(["report", str(out), "--out", str(tmp_path / "r.pdf")]) == 1


def test_version_and_usage_errors(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"twinrx {version('twinrx')}"
    # an unknown option is the user's error (exit 1 with click's message), not an internal one
    assert main(["simulate", "--bogus"]) == 1
    err = capsys.readouterr().err
    assert "No such option: --bogus" in err and "internal error" not in err


def test_fit_with_a_prior_refuses_population_options(tmp_path, capsys):
    """--error/--fixed/... belong to the population fit named by --prior: refused (exit 1,
    saying which), never silently ignored."""
    data = tmp_path / "d.csv"
    data.write_text("ID,TIME,EVID,AMT,CMT,DV\n1,0,1,100,1,0\n1,2,0,0,2,1.5\n1,8,0,0,2,0.9\n")
    rc = main(
        ["fit", "--model", "one_cpt_oral", "--data", str(data), "--out", str(tmp_path / "f.zarr")]
        + ["--prior", str(tmp_path / "pop.zarr"), "--error", "CP=additive", "--fixed", "KA=1"]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "--error, --fixed: an individual fit takes the population model of --prior" in err
    assert not (tmp_path / "f.zarr").exists()


def test_ingest_maps_a_laboratorys_own_code(tmp_path):
    import json

    from twinrx.store import read_patients

    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "https://lab.example.org/codes", "code": "SWARF"}]},
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": "2024-01-02T08:00:00Z",
        "valueQuantity": {"value": 0.5, "unit": "mg/L"},
    }
    dose = {
        "resourceType": "MedicationAdministration",
        "status": "completed",
        "medicationCodeableConcept": {"text": "warfarin"},
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": "2024-01-01T18:00:00Z",
        "dosage": {"dose": {"value": 5, "unit": "mg"}},
    }
    res = [{"resourceType": "Patient", "id": "p", "gender": "female"}, obs, dose]
    bundle = tmp_path / "b.json"
    bundle.write_text(
        json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in res]})
    )
    out = tmp_path / "p.zarr"
    code = "https://lab.example.org/codes|SWARF=s-warfarin"
    assert main(["ingest", "--fhir", str(bundle), "--code", code, "--out", str(out), "--seed", "1"]) == 0
    (patient,) = read_patients(out)
    s = patient.series["s-warfarin"]
    assert s.value.tolist() == [0.5] and s.unit == "mg/L"
