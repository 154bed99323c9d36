"""Conformance against NONMEM's own outputs and Torsten's expected amounts.

``python -m twinrx.testing.conformance --shared ../shared`` prints a per-scenario table for
the closed-form and the ODE path and writes a JSON report. The references are
``shared/conformance/`` (mrgsolve/nmtests NONMEM 7 runs; Torsten's unit tests).

The nmtests model is NONMEM's ADVAN2/TRANS2 (CL 1.1, V 20, KA 1.5) with ``CP = A(2)/(V/1000)``;
``LAGT``, ``BIOAV``, ``RAT2`` and ``DUR2`` are the lag, bioavailability, modelled rate and
modelled duration of compartment 2 (central) only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["ScenarioResult", "run_nmtests", "run_time_varying", "run_torsten", "main"]

RTOL_NM = 1e-4  # NONMEM prints 5 significant digits
ATOL_NM = 1e-6
RTOL_TORSTEN = 1e-6
NM_PARAMS = {"CL": 1.1, "V": 20.0, "KA": 1.5}


@dataclasses.dataclass
class ScenarioResult:
    suite: str
    scenario: str
    description: str
    solver: str
    rows: int
    passed_rows: int
    max_abs_error: float
    max_rel_error: float

    @property
    def passed(self) -> bool:
        return self.rows == self.passed_rows

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"passed": self.passed}


def _score(pred, ref, rtol, atol):
    pred, ref = np.asarray(pred, float), np.asarray(ref, float)
    err = np.abs(pred - ref)
    ok = err <= rtol * np.abs(ref) + atol
    nz = np.abs(ref) > atol
    rel = float(np.max(err[nz] / np.abs(ref[nz]))) if nz.any() else 0.0
    return int(ok.sum()), float(err.max(initial=0.0)), rel


def run_nmtests(
    shared: Path, solver: str, *, rtol: float = 1e-10, atol: float = 1e-10
) -> list[ScenarioResult]:
    """Every scenario of nmtests/dosing against NONMEM's table output."""
    from ..data.nonmem import simulate_nonmem

    d = Path(shared) / "conformance" / "nmtests" / "dosing"
    nm = pd.read_csv(d / "1001-nm.csv")
    key = pd.read_csv(d / "1001-run-key.csv")
    descr = dict(zip(key["ID"].astype(str), key["descr"]))
    out = simulate_nonmem(
        "one_cpt_oral",
        d / "1001.csv",
        NM_PARAMS,
        lag={2: "LAGT"},
        bioav={2: "BIOAV"},
        rate={2: "RAT2"},
        duration={2: "DUR2"},
        solver=solver,
        rtol=rtol,
        atol=atol,
    )
    if len(out) != len(nm):
        raise RuntimeError(f"{len(out)} output rows for {len(nm)} reference rows")
    cp = out["A_central"].to_numpy() / (NM_PARAMS["V"] / 1000.0)
    results = []
    for sid in pd.unique(nm["ID"]):
        m = (nm["ID"] == sid).to_numpy()
        n_ok, mabs, mrel = _score(cp[m], nm["CP"].to_numpy()[m], RTOL_NM, ATOL_NM)
        results.append(
            ScenarioResult(
                "nmtests-dosing", str(sid), descr.get(str(sid), ""), solver, int(m.sum()), n_ok, mabs, mrel
            )
        )
    return results


def run_time_varying(
    shared: Path, solver: str, *, rtol: float = 1e-10, atol: float = 1e-10
) -> list[ScenarioResult]:
    """CL = 1.1 (WT/70)^0.75 with WT changing record to record."""
    from ..data.nonmem import simulate_nonmem

    d = Path(shared) / "conformance" / "nmtests" / "time-varying"
    inp = pd.read_csv(d / "2001.csv").drop(columns=["CL", "CP"])  # mrgsolve's, not inputs
    inp["CLWT"] = NM_PARAMS["CL"] * (inp["WT"] / 70.0) ** 0.75
    nm = pd.read_csv(d / "2001-nm.csv")
    out = simulate_nonmem(
        "one_cpt_oral",
        inp,
        {"CL": "CLWT", "V": NM_PARAMS["V"], "KA": NM_PARAMS["KA"]},
        solver=solver,
        rtol=rtol,
        atol=atol,
    )
    cp = out["A_central"].to_numpy() / (NM_PARAMS["V"] / 1000.0)
    n_ok, mabs, mrel = _score(cp, nm["CP"], RTOL_NM, ATOL_NM)
    return [
        ScenarioResult(
            "nmtests-time-varying", "2001", "CL with time-varying WT", solver, len(nm), n_ok, mabs, mrel
        )
    ]


_TORSTEN = {
    "onecpt multiple_bolus": ("one_cpt_oral", {"CL": 10.0, "V": 80.0, "KA": 1.2}, ["depot", "central"]),
    "twocpt multiple_bolus": (
        "two_cpt_oral",
        {"CL": 5.0, "Q": 8.0, "V1": 20.0, "V2": 70.0, "KA": 1.2},  # Torsten: V2 central, V3 peripheral
        ["depot", "central", "peripheral"],
    ),
}


def run_torsten(shared: Path, solver: str) -> list[ScenarioResult]:
    """Torsten's expected amounts (1000 mg into the depot at 0, II 12, ADDL 14)."""
    from ..events import EventTable
    from ..solve import simulate

    df = pd.read_csv(Path(shared) / "conformance" / "torsten_expected_amounts.csv")
    ev = EventTable.from_records([0.0], [1], [1000.0], [1], ii=[12.0], addl=[14])
    results = []
    for test, (model, params, cols) in _TORSTEN.items():
        ref = df[df["test"] == test]
        if ref.empty:
            continue
        ds = simulate(
            model, params, ev, times=ref["time_h"].to_numpy(), solver=solver, rtol=1e-10, atol=1e-12
        )
        pred = np.concatenate([ds[f"A_{c}"].values[0] for c in cols])
        refv = np.concatenate([ref[c].to_numpy(float) for c in cols])
        n_ok, mabs, mrel = _score(pred, refv, RTOL_TORSTEN, 1e-9)
        results.append(
            ScenarioResult("torsten", test, "expected amounts", solver, len(refv), n_ok, mabs, mrel)
        )
    return results


def run_all(shared: Path, solvers=("closed_form", "ode")) -> list[ScenarioResult]:
    res = []
    for s in solvers:
        res += run_nmtests(shared, s) + run_time_varying(shared, s) + run_torsten(shared, s)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="../shared", help="folder holding conformance/ (default ../shared)")
    ap.add_argument("--report", default="conformance-report.json", help="JSON report path")
    ap.add_argument("--solver", action="append", choices=["closed_form", "ode"], help="default: both")
    a = ap.parse_args(argv)
    shared = Path(a.shared)
    if not (shared / "conformance").is_dir():
        print(f"no conformance references under {shared}/conformance", file=sys.stderr)
        return 1
    res = run_all(shared, tuple(a.solver or ("closed_form", "ode")))
    print(
        f"{'suite':22} {'scen':>22} {'solver':12} {'rows':>5} {'pass':>5} {'max abs err':>12} {'max rel err':>12}  ok"
    )
    for r in res:
        print(
            f"{r.suite:22} {r.scenario:>22} {r.solver:12} {r.rows:5d} {r.passed_rows:5d} "
            f"{r.max_abs_error:12.3e} {r.max_rel_error:12.3e}  {'PASS' if r.passed else 'FAIL'}"
        )
    for s in sorted({r.solver for r in res}):
        sub = [r for r in res if r.solver == s]
        print(
            f"{s}: {sum(r.passed for r in sub)}/{len(sub)} scenarios, "
            f"{sum(r.passed_rows for r in sub)}/{sum(r.rows for r in sub)} rows within tolerance"
        )
    Path(a.report).write_text(json.dumps([r.as_dict() for r in res], indent=2))
    print(f"wrote {a.report}")
    return 0 if all(r.passed for r in res) else 1


if __name__ == "__main__":
    raise SystemExit(main())
