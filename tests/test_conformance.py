"""Every row of NONMEM's nmtests outputs and Torsten's amounts, through both solver paths."""

import pytest

from twinrx.testing import conformance as cf


@pytest.mark.parametrize("solver", ["closed_form", "ode"])
def test_nmtests_dosing_every_row(shared, solver):
    results = cf.run_nmtests(shared, solver)
    assert len(results) == 29
    failed = [(r.scenario, r.rows - r.passed_rows, r.max_rel_error) for r in results if not r.passed]
    assert not failed, f"scenarios with rows outside |pred-nm| <= 1e-4|nm| + 1e-6: {failed}"
    assert sum(r.rows for r in results) == 3837


@pytest.mark.parametrize("solver", ["closed_form", "ode"])
def test_nmtests_time_varying_covariate(shared, solver):
    (r,) = cf.run_time_varying(shared, solver)
    assert r.rows == 34
    assert r.passed, f"{r.rows - r.passed_rows} rows outside tolerance, max rel err {r.max_rel_error:.2e}"


@pytest.mark.parametrize("solver", ["closed_form", "ode"])
def test_torsten_expected_amounts(shared, solver):
    results = cf.run_torsten(shared, solver)
    assert {r.scenario for r in results} == {"onecpt multiple_bolus", "twocpt multiple_bolus"}
    for r in results:
        assert r.passed and r.max_rel_error <= 1e-6, r


def test_conformance_cli_writes_report(shared, tmp_path, capsys):
    report = tmp_path / "report.json"
    rc = cf.main(["--shared", str(shared), "--report", str(report), "--solver", "closed_form"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "32/32 scenarios" in out
    import json

    rows = json.loads(report.read_text())
    assert len(rows) == 32 and all(r["passed"] for r in rows)
    assert {"max_abs_error", "max_rel_error", "passed"} <= set(rows[0])
