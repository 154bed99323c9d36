"""The twinrx command line. Nothing imports this module.

Exit codes: 0 success, 1 a problem with the user's input (the message says what to fix),
2 an internal error.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import numpy as np
import typer

app = typer.Typer(
    add_completion=False,
    rich_markup_mode="markdown",
    no_args_is_help=True,
    help=(
        "twinrx: patient digital twins — NONMEM-faithful PK/PD simulation in JAX.\n\n"
        "Every command also takes --json (one JSON document on stdout: tables as rows, files "
        "written, exit code) and --quiet / -q (nothing on success). Exit codes: 0 ok, 1 a "
        "problem with the input (the message says what to fix), 2 an internal error."
    ),
)
models_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="The model library.")
app.add_typer(models_app, name="models")
scenario_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode="markdown", help="Compare and optimise regimens on a twin."
)
app.add_typer(scenario_app, name="scenario")
cohort_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="In-silico trials: a virtual population under every arm.",
)
app.add_typer(cohort_app, name="cohort")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"twinrx {version('twinrx')}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
):
    pass


def _model_help() -> str:
    from .model.library import list_models

    names = ", ".join(m.name for m in list_models())
    return f"Library models: {names}. See twinrx models list and twinrx models show NAME."


class UserError(Exception):
    pass


def _parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--{what} {item!r} must look like KEY=VALUE (e.g. --{what} 2=LAGT)")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _cmt_key(k: str):
    return int(k) if k.isdigit() else k


@app.command()
def simulate(
    model: str = typer.Option(
        ..., "--model", "-m", help="Library model name or the path of a model card (.toml); see below."
    ),
    data: Path = typer.Option(..., "--data", "-d", help="NONMEM-style CSV (ID, TIME, EVID, AMT, CMT, ...)."),
    out: Path = typer.Option(..., "--out", "-o", help="OUT.csv (one row per input row) or OUT.zarr."),
    param: list[str] = typer.Option(None, "--param", "-p", help="NAME=VALUE or NAME=COLUMN (time-varying)."),
    lag: list[str] = typer.Option(None, "--lag", help="CMT=COLUMN|VALUE: lag time (h) of a compartment."),
    bioav: list[str] = typer.Option(None, "--bioav", help="CMT=COLUMN|VALUE: bioavailability fraction."),
    rate: list[str] = typer.Option(None, "--rate", help="CMT=COLUMN|VALUE: modelled rate (for RATE=-1)."),
    duration: list[str] = typer.Option(
        None, "--duration", help="CMT=COLUMN|VALUE: modelled duration (RATE=-2)."
    ),
    solver: str = typer.Option(
        "auto", "--solver", help="closed-form | ode | stiff (auto: closed form if any)."
    ),
    rtol: float = typer.Option(1e-6, help="Relative tolerance of the ODE solver."),
    atol: float = typer.Option(1e-9, help="Absolute tolerance of the ODE solver."),
):
    """Simulate a NONMEM data set with a model: amounts and outputs at every record.

    CMT is a compartment name or NONMEM number. Parameters not given take the model's
    default, or a data column of the same name. Output columns: ID, TIME, one amount column
    per compartment (A_central, ...), the model outputs, STATUS (0 = ok).

    Example:

        twinrx simulate --model one_cpt_oral --data doses.csv --out pred.csv \\
            --param CL=1.1 --param V=20 --param KA=1.5 --lag 2=LAGT --bioav 2=BIOAV
    """
    from .data.nonmem import simulate_nonmem
    from .model.library import get_model

    m = get_model(model)
    df = simulate_nonmem(
        m,
        data,
        _parse_pairs(param, "param"),
        lag={_cmt_key(k): v for k, v in _parse_pairs(lag, "lag").items()},
        bioav={_cmt_key(k): v for k, v in _parse_pairs(bioav, "bioav").items()},
        rate={_cmt_key(k): v for k, v in _parse_pairs(rate, "rate").items()},
        duration={_cmt_key(k): v for k, v in _parse_pairs(duration, "duration").items()},
        solver=None if solver == "auto" else solver,
        rtol=rtol,
        atol=atol,
    )
    if out.suffix == ".zarr":
        import xarray as xr

        from .store import write_store

        ds = xr.Dataset.from_dataframe(df.rename_axis("row"))
        for c in m.compartments:
            ds[f"A_{c}"].attrs["units"] = m.amount_unit
        for o in m.outputs:
            ds[o.name].attrs["units"] = o.unit
        ds["TIME"].attrs["units"] = m.time_unit
        write_store(ds, out, model=m.name)
    else:
        df.to_csv(out, index=False, float_format="%.15g")
    bad = df.groupby("ID", sort=False)["STATUS"].max()
    bad = bad[bad != 0]
    _say(f"wrote {out}: {len(df)} rows, {df['ID'].nunique()} patients")
    _fact("written", str(out))
    if len(bad):
        from ._types import status_message

        for pid, code in bad.items():
            _warn(f"patient {pid}: {status_message(int(code))}")


simulate.__doc__ = (simulate.__doc__ or "") + "\n    " + _model_help() + "\n"


@app.command()
def validate(
    data: Path = typer.Argument(..., help="NONMEM-style CSV to check."),
    model: str = typer.Option(None, "--model", "-m", help="Check compartments against this model."),
    rate: list[str] = typer.Option(None, "--rate", help="CMT=COLUMN: a modelled rate exists (RATE=-1)."),
    duration: list[str] = typer.Option(None, "--duration", help="CMT=COLUMN: a modelled duration (RATE=-2)."),
):
    """List every problem of a data set at once (exit code 1 if there are any).

    Example: twinrx validate doses.csv --model two_cpt_oral
    """
    from .data.nonmem import validate_nonmem
    from .model.library import get_model

    m = get_model(model) if model else None
    kw = {}
    if m is not None:
        kw = {
            "rate": {_cmt_key(k): v for k, v in _parse_pairs(rate, "rate").items()},
            "duration": {_cmt_key(k): v for k, v in _parse_pairs(duration, "duration").items()},
        }
    problems = validate_nonmem(data, m, **kw)
    if not problems:
        _say(f"{data}: no problems found")
        return
    _say(f"{data}: {len(problems)} problem{'s' if len(problems) != 1 else ''}")
    _fact("problems", [str(p) for p in problems])
    for p in problems:
        _say(f"  - {p}")
    raise typer.Exit(1)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-output.zarr"), "--out", "-o", help="Zarr store to write."),
    n: int = typer.Option(200, "--n", help="Number of virtual patients."),
    seed: int = typer.Option(20261123, "--seed", help="Random seed."),
):
    """Two regimens of a two-compartment oral model for a small synthetic cohort.

    Writes a Zarr store (dims regimen, patient, time) and prints Cmax and Ctrough over the
    last dosing interval per regimen (median and 90% interval).

    Example: twinrx demo --n 500 --out demo.zarr
    """
    from ._demo import run_demo

    run_demo(out, n=n, seed=seed, echo=_say)
    _fact("written", str(out))


def _wearable_pairs(items: list[str] | None) -> list[tuple[str | None, Path]]:
    out = []
    for item in items or []:
        sid, sep, path = item.rpartition("=")
        out.append((sid.strip() if sep else None, Path(path if sep else item)))
    return out


@app.command()
def ingest(
    out: Path = typer.Option(..., "--out", "-o", help="PATIENTS.zarr to write."),
    nonmem: Path = typer.Option(None, "--nonmem", help="NONMEM CSV data set."),
    drug: str = typer.Option("DV", "--drug", help="NONMEM: name of the DV series (e.g. warfarin)."),
    dv_unit: str = typer.Option("mg/L", "--dv-unit", help="NONMEM: unit of DV."),
    dose_unit: str = typer.Option("mg", "--dose-unit", help="NONMEM: unit of AMT."),
    dvid: list[str] = typer.Option(
        None, "--dvid", help="NONMEM: DVID=NAME[:UNIT] names the series of a DVID value (cp=warfarin)."
    ),
    unit: list[str] = typer.Option(None, "--unit", help="NONMEM: COLUMN=UNIT of a covariate (e.g. WT=kg)."),
    cdisc: list[Path] = typer.Option(None, "--cdisc", help="SDTM/ADaM folder or files (.xpt, .csv)."),
    fhir: list[Path] = typer.Option(None, "--fhir", help="FHIR R4/R4B Bundle JSON or NDJSON."),
    code: list[str] = typer.Option(
        None,
        "--code",
        help="FHIR: a laboratory's own code, SYSTEM|CODE=QUANTITY (e.g. ...|SWARF=s-warfarin).",
    ),
    wearable: list[str] = typer.Option(
        None, "--wearable", help="[ID=]FILE: Apple Health, Open mHealth or Dexcom CSV, of patient ID."
    ),
    vcf: Path = typer.Option(None, "--vcf", help="VCF with CPIC-defining genotypes (samples = patient ids)."),
    genotypes: Path = typer.Option(None, "--genotypes", help="Diplotype table: patient, gene, diplotype."),
    linkage: Path = typer.Option(
        None, "--linkage", help="Write the pseudonym-to-source-id link here (keep it apart from the store)."
    ),
    seed: int = typer.Option(None, "--seed", help="Reproducible pseudonyms (tests); default: random."),
):
    """Read patient data from any mix of sources, merge it per patient, de-identify it and
    write it to a Zarr store. Times become hours after each patient's first dose; ids become
    random pseudonyms (the link is written only with --linkage).

    Example: twinrx ingest --fhir bundle.json --wearable pt-1=export.xml --vcf cohort.vcf --out patients.zarr
    """
    from .data import ingest_files
    from .store import write_patients

    cohort = ingest_files(
        nonmem=nonmem,
        nonmem_options={
            "drug": drug,
            "dv_unit": dv_unit,
            "dose_unit": dose_unit,
            "units": _parse_pairs(unit, "unit"),
            "dvid": {
                k: tuple(v.split(":", 1)) if ":" in v else v for k, v in _parse_pairs(dvid, "dvid").items()
            },
        },
        cdisc=list(cdisc or []),
        fhir=list(fhir or []),
        fhir_codes=_parse_pairs(code, "code"),
        wearables=_wearable_pairs(wearable),
        vcf=vcf,
        genotypes=genotypes,
        seed=seed,
        linkage=linkage,
    )
    write_patients(cohort, out)
    _fact("written", str(out))
    n_obs = sum(len(s) for p in cohort for s in p.series.values())
    n_dose = sum(len(p.dosing) for p in cohort)
    _say(
        f"{out}: {len(cohort)} patient{'s' if len(cohort) != 1 else ''}, {n_obs} observations, "
        f"{n_dose} dosing records, {sum(len(p.phenotypes) for p in cohort)} phenotypes"
    )
    if cohort.skipped:
        _say(f"skipped {len(cohort.skipped)}:")
        for sk in cohort.skipped[:20]:
            _say(f"  - {sk}")
        if len(cohort.skipped) > 20:
            _say(f"  ... and {len(cohort.skipped) - 20} more (see the store's 'skipped' attribute)")
    if linkage is not None:
        _say(f"linkage written to {linkage} (keep it apart from the store)")


def _load_fit_data(model, data: Path, dvid, dv_unit, unit):
    """A Cohort from a NONMEM CSV or a PATIENTS.zarr store (twinrx ingest)."""
    from .infer import nonmem_cohort

    if not data.exists():
        raise FileNotFoundError(f"no data at {data}")
    if data.suffix == ".zarr" or data.is_dir():
        from .store import read_patients

        return read_patients(data)
    dv = {k: (None if v.lower() in ("none", "-", "") else v) for k, v in _parse_pairs(dvid, "dvid").items()}
    return nonmem_cohort(model, data, dvid=dv, dv_unit=dv_unit, covariate_units=_parse_pairs(unit, "unit"))


def _print_fit(f, out: Path) -> None:
    summ = f.summary()
    rows = []
    for name, st in summ.items():
        med = np.atleast_1d(st["median"])
        if med.size > 1:
            continue  # individual values: in the store's diagnostics group
        cells = [
            name,
            _fmt(float(med[0])),
            f"{_fmt(float(np.atleast_1d(st['q05'])[0]))} - {_fmt(float(np.atleast_1d(st['q95'])[0]))}",
        ]
        for k in ("r_hat", "ess_bulk", "ess_tail"):
            v = float(np.atleast_1d(st[k])[0])
            cells.append("-" if not np.isfinite(v) else (f"{v:.3f}" if k == "r_hat" else f"{v:.0f}"))
        rows.append(cells)
    if rows:
        _say(f"{f.method} fit of {f.model.name} to {f.data.n_patients} patient(s):")
        _table(["parameter", "median", "90% interval", "R-hat", "ESS bulk", "ESS tail"], rows)
    ind = [k for k in summ if np.atleast_1d(summ[k]["median"]).size > 1]
    if ind and f.data.n_patients <= 20:
        _say("individual values (median):")
        hdr = ["patient", *ind]
        body = [[pid, *(_fmt(float(summ[k]["median"][i])) for k in ind)] for i, pid in enumerate(f.data.ids)]
        _table(hdr, body)
    if f.stats.get("diverging") is not None:
        n = int(np.sum(f.stats["diverging"]))
        _say(f"divergences: {n}" + ("  (raise --target-accept, or reparameterise)" if n else ""))
    rhat = [float(np.nanmax(st["r_hat"])) for st in summ.values() if np.size(st["r_hat"])]
    if rhat and np.nanmax(rhat) > 1.01:
        _say(f"warning: R-hat up to {np.nanmax(rhat):.3f} > 1.01: run longer chains (--warmup, --draws)")
    _say(f"written to {out} ({f.info.get('seconds', 0):.1f} s)")
    _fact("written", str(out))


@app.command()
def fit(
    model: str = typer.Option(..., "--model", "-m", help="Model card: library name or path."),
    data: Path = typer.Option(..., "--data", "-d", help="NONMEM CSV, or PATIENTS.zarr from `twinrx ingest`."),
    out: Path = typer.Option(..., "--out", "-o", help="FIT.zarr to write (ArviZ layout)."),
    method: str = typer.Option("nuts", "--method", help="nuts | map | laplace | svi"),
    prior: Path = typer.Option(
        None, "--prior", help="POPFIT.zarr: fit these patients individually under its population values."
    ),
    chains: int = typer.Option(4, "--chains"),
    warmup: int = typer.Option(500, "--warmup"),
    draws: int = typer.Option(500, "--draws"),
    seed: int = typer.Option(0, "--seed"),
    error: list[str] = typer.Option(
        None, "--error", help="OUTPUT=additive|proportional|combined|exponential."
    ),
    fixed: list[str] = typer.Option(None, "--fixed", help="PARAM=VALUE held fixed (e.g. KA=1.5)."),
    covariance: str = typer.Option(None, "--covariance", help="diagonal | full (LKJ prior)."),
    estimate_effects: bool = typer.Option(
        False, "--estimate-effects", help="Estimate the card's covariate effects."
    ),
    dvid: list[str] = typer.Option(None, "--dvid", help="CSV: DVID=OUTPUT (cp=CP), DVID=none to leave out."),
    dv_unit: str = typer.Option(None, "--dv-unit", help="CSV: unit of DV (default: the output's)."),
    unit: list[str] = typer.Option(None, "--unit", help="CSV: COLUMN=UNIT of a covariate (WT=kg)."),
    target_accept: float = typer.Option(0.8, "--target-accept"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar (NUTS, SVI)."),
):
    """Fit a model card to patients' data with numpyro and write the posterior (ArviZ groups
    in Zarr); prints median, 90% interval, R-hat and ESS per parameter.

    Example: twinrx fit --model one_cpt_oral --data theo_sd.csv --error CP=additive --out pop.zarr
    """
    from .infer import fit as run_fit
    from .infer import from_datatree, to_datatree
    from .model import get_model
    from .store import read_fit, write_fit

    m = get_model(model)
    cohort = _load_fit_data(m, data, dvid, dv_unit, unit)
    options = {}
    if prior is None:
        options = {
            "error": _parse_pairs(error, "error") or None,
            "fixed": {k: float(v) for k, v in _parse_pairs(fixed, "fixed").items()} or None,
            "covariance": covariance,
            "estimate_effects": estimate_effects,
        }
    else:
        given = [f"--{k}" for k, v in (("error", error), ("fixed", fixed), ("covariance", covariance)) if v]
        given += ["--estimate-effects"] if estimate_effects else []
        if given:
            raise ValueError(
                f"{', '.join(given)}: an individual fit takes the population model of --prior {prior}; "
                "leave these out, or fit the population again with them"
            )
        options["prior"] = from_datatree(read_fit(prior))
    f = run_fit(
        m,
        cohort,
        method=method,
        seed=seed,
        chains=chains,
        warmup=warmup,
        draws=draws,
        target_accept=target_accept,
        progress=progress and _OUT.interactive,
        **options,
    )
    write_fit(to_datatree(f), out)
    _print_fit(f, out)


@app.command()
def update(
    fit_store: Path = typer.Argument(..., help="FIT.zarr written by `twinrx fit` (or update)."),
    data: Path = typer.Option(..., "--data", "-d", help="New records: NONMEM CSV or PATIENTS.zarr."),
    out: Path = typer.Option(..., "--out", "-o", help="FIT2.zarr to write."),
    seed: int = typer.Option(None, "--seed", help="Default: the previous seed + 1."),
    warmup: int = typer.Option(None, "--warmup", help="NUTS warm-up (default: half the previous)."),
    dvid: list[str] = typer.Option(None, "--dvid", help="CSV: DVID=OUTPUT."),
    dv_unit: str = typer.Option(None, "--dv-unit", help="CSV: unit of DV."),
    unit: list[str] = typer.Option(None, "--unit", help="CSV: COLUMN=UNIT of a covariate."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Add new levels, doses or wearable data to a fit's patients and refit, warm-started at
    the previous posterior (same model, settings, method and population values).

    Example: twinrx update twin.zarr --data new_levels.csv --out twin2.zarr
    """
    from .infer import from_datatree, to_datatree
    from .infer import update as run_update
    from .store import read_fit, write_fit

    prev = from_datatree(read_fit(fit_store))
    new = _load_fit_data(prev.model, data, dvid, dv_unit, unit)
    kw = {"progress": progress and _OUT.interactive} if prev.method in ("nuts", "svi") else {}
    f = run_update(prev, new, seed=seed, warmup=warmup, **kw)
    write_fit(to_datatree(f), out)
    _print_fit(f, out)


def _twin(scenario, twin: Path | None, patient: str | None, draws: int, seed: int):
    import jax

    from .scenarios import twin_draws

    fit = None
    if twin is not None:
        from .infer import from_datatree
        from .store import read_fit

        fit = from_datatree(read_fit(twin))
        if fit.model.name != scenario.model:
            raise UserError(
                f"the twin {twin} is a fit of {fit.model.name!r}, but the scenario uses {scenario.model!r}"
            )
        if patient is None and fit.data.n_patients > 1:
            raise UserError(f"the twin has {fit.data.n_patients} patients: choose one with --patient ID")
    key = jax.random.key(seed)
    return twin_draws(
        scenario.model,
        key=key,
        n=draws,
        fit=fit,
        patient=patient if patient is not None else 0,
        covariates=dict(scenario.patient) if fit is None else None,
    )


_TWIN_OPTION = typer.Option(
    None, "--twin", help="FIT.zarr: the patient's posterior (default: the card's population)."
)


@scenario_app.command("run")
def scenario_run(
    scenario: Path = typer.Argument(..., help="SCENARIO.toml (format: scenarios/README.md)."),
    twin: Path = _TWIN_OPTION,
    patient: str = typer.Option(None, "--patient", help="Patient id in the twin (when it holds several)."),
    draws: int = typer.Option(1000, "--draws", help="Draws of the twin."),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(
        None, "--out", "-o", help="RESULT.zarr: metrics per regimen and draw, and the summary."
    ),
):
    """Every regimen on every draw of the twin: per target the median and 90% interval of its
    metric, the probability of target attainment (PTA) and the regimens' ranking.

    Example: twinrx scenario run scenarios/vancomycin_auc_guided.toml --out vanco.zarr
    """
    import jax

    from .scenarios import compare, load_scenario

    sc = load_scenario(scenario)
    # The twin's draws from one stream, what the scenario makes random (adherence,
    # within-patient variability) from another.
    ds = compare(sc, _twin(sc, twin, patient, draws, seed), key=jax.random.key(seed + 1))
    who = (
        f"twin {twin.name}" + (f", patient {patient}" if patient else "") if twin else "the card's population"
    )
    _say(f"{sc.name}: {len(sc.regimens)} regimens x {draws} draws of {who} (seed {seed})")
    for t in ds.target.values:
        unit = ds[str(t)].attrs.get("units", "")
        _say(f"\n{t} [{unit}]:")
        rows = []
        for r in np.argsort(ds["rank"].values):
            sel = {"target": t, "regimen": ds.regimen.values[r]}
            rows.append(
                [
                    str(ds.regimen.values[r]),
                    _fmt(float(ds["median"].sel(sel))),
                    f"{_fmt(float(ds['q05'].sel(sel)))} - {_fmt(float(ds['q95'].sel(sel)))}",
                    f"{float(ds['pta'].sel(sel)):.1%}",
                    str(int(ds["rank"].values[r])),
                ]
            )
        _table(["regimen", "median", "90% interval", "PTA", "rank"], rows)
    if ds.attrs["failed_draws"]:
        _say(f"warning: {ds.attrs['failed_draws']} simulations failed (NaN metrics, counted as not attained)")
    if out is not None:
        from .store import write_store

        write_store(
            ds,
            out,
            seed=str(seed),
            draws=str(draws),
            twin=twin.name if twin else "card population",
            patient=patient or "",
            scenario_source=sc.source,
        )
        _say(f"written to {out}")
        _fact("written", str(out))


@scenario_app.command("optimise")
def scenario_optimise(
    scenario: Path = typer.Argument(..., help="SCENARIO.toml."),
    twin: Path = _TWIN_OPTION,
    patient: str = typer.Option(None, "--patient", help="Patient id in the twin."),
    regimen: list[str] = typer.Option(None, "--regimen", help="Regimen(s) to optimise (default: all)."),
    target: str = typer.Option(None, "--target", help="Target name (default: the first)."),
    objective: str = typer.Option(
        "pta", "--objective", help="pta (maximise attainment) | loss (log distance)."
    ),
    draws: int = typer.Option(500, "--draws"),
    seed: int = typer.Option(0, "--seed"),
):
    """The dose of each regimen (all its doses scaled by one factor) that maximises the
    probability of target attainment over the twin's draws, found by differentiating
    through the simulator.

    Example: twinrx scenario optimise scenarios/vancomycin_auc_guided.toml --regimen "1000 mg q12h"
    """
    import jax

    from .scenarios import load_scenario, optimise

    sc = load_scenario(scenario)
    d = _twin(sc, twin, patient, draws, seed)
    names = regimen or [r.name for r in sc.regimens if not r.rules]
    skipped = [r.name for r in sc.regimens if r.rules and r.name not in names]
    rows = []
    for name in names:
        r = optimise(sc, d, regimen=name, target=target, objective=objective, key=jax.random.key(seed + 1))
        doses = np.unique(np.round(r["doses"], 6))
        rows.append(
            [
                name,
                f"x{r['scale']:.3f}",
                ", ".join(_fmt(float(x)) for x in doses),
                _fmt(r["median"]),
                f"{r['pta']:.1%}",
            ]
        )
    tg = target or sc.targets[0].name
    _say(f"{sc.name}: best dose scale per regimen for {tg!r} ({objective}, {draws} draws, seed {seed})")
    _table(["regimen", "scale", "doses (mg)", "median metric", "PTA"], rows)
    if skipped:
        _say(f"not optimised (their rules set the doses): {'; '.join(skipped)}")


@cohort_app.command("run")
def cohort_run(
    scenario: Path = typer.Argument(
        ..., help="SCENARIO.toml with a [population] (format: scenarios/README.md)."
    ),
    n: int = typer.Option(None, "--n", help="Virtual patients (default: the scenario's [cohort] n)."),
    out: Path = typer.Option(..., "--out", "-o", help="STORE.zarr to create (or to continue with --resume)."),
    chunk: int = typer.Option(None, "--chunk", help="Patients per task and per Zarr chunk (default 1000)."),
    scheduler: str = typer.Option(
        None,
        "--scheduler",
        help="'synchronous' (in-process), or a dask scheduler address tcp://host:port "
        "(default: a local cluster of one process per core; in-process on a GPU).",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run into --out."),
    seed: int = typer.Option(
        None, "--seed", help="Random seed (default: the scenario's [cohort] seed, or 0)."
    ),
    trajectories: int = typer.Option(
        None, "--trajectories", help="Keep the outputs of the first K patients (default 0)."
    ),
    workers: int = typer.Option(None, "--workers", help="Local cluster size (default: one per core)."),
    subgroup: str = typer.Option(None, "--subgroup", help="A categorical covariate to split the PTA by."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
):
    """Every virtual patient of the scenario's population under every arm (paired design):
    per arm and target the probability of target attainment (PTA), median and 90% interval
    of the metric, and the failed solves; per-patient results in the Zarr store.

    Example: twinrx cohort run scenarios/vancomycin_auc_guided.toml --n 10000 --out vanco_cohort.zarr
    """
    from .scale import run_cohort
    from .scenarios import load_scenario

    sc = load_scenario(scenario)
    settings = dict(sc.cohort)
    n = n if n is not None else settings.get("n")
    if n is None:
        raise UserError("give the number of virtual patients: --n N (or n in the scenario's [cohort])")
    seed = seed if seed is not None else settings.get("seed", 0)
    try:
        ds = run_cohort(
            sc,
            n,
            out,
            seed=seed,
            chunk=chunk if chunk is not None else settings.get("chunk", 1000),
            scheduler=scheduler,
            resume=resume,
            trajectories=trajectories if trajectories is not None else settings.get("trajectories", 0),
            progress=progress and _OUT.interactive,
            workers=workers,
            subgroup=subgroup,
        )
    except FileExistsError as e:
        raise UserError(str(e)) from None
    arms = [str(a) for a in ds.arm.values]
    _say(f"{sc.name}: {n} virtual patients x {len(arms)} arms (paired), seed {seed}")
    pta, med = ds["pta"].values, ds["median"].values
    q05, q95 = ds["q05"].values, ds["q95"].values
    failed = ds["n_failed"].values
    for j, t in enumerate(ds.target.values):
        unit = str(ds["target_units"].values[j])
        _say(f"\n{t} [{unit}]:")
        rows = []
        for a in sorted(range(len(arms)), key=lambda a: -pta[a, j]):
            rows.append(
                [
                    arms[a],
                    _fmt(float(med[a, j])),
                    f"{_fmt(float(q05[a, j]))} - {_fmt(float(q95[a, j]))}",
                    f"{float(pta[a, j]):.1%}",
                    str(int(failed[a])),
                ]
            )
        _table(["arm", "median", "90% interval", "PTA", "failed"], rows)
    if "pta_by" in ds:
        t0 = str(ds.target.values[0])
        _say(f"\nPTA of {t0} by {ds.attrs.get('subgroup')}:")
        by = ds["pta_by"].values
        levels = [str(x) for x in ds.level.values]
        rows = [[lv] + [f"{by[i, a, 0]:.1%}" for a in range(len(arms))] for i, lv in enumerate(levels)]
        _table(["level", *arms], rows)
    if int(failed.sum()):
        _say(f"warning: {int(failed.sum())} simulations failed (status != 0; counted as not attained)")
    _say(f"written to {out}")
    _fact("written", str(out))


@app.command()
def report(
    store: Path = typer.Argument(..., help="FIT.zarr (twinrx fit) or RESULT.zarr (twinrx scenario run)."),
    out: Path = typer.Option(..., "--out", "-o", help="REPORT.html to write: one self-contained page."),
    title: str = typer.Option(None, "--title", help="Title of the page (default: what the store is)."),
    twin: Path = typer.Option(
        None, "--twin", help="A scenario result on a fitted twin: the twin's FIT.zarr, for the bands."
    ),
    seed: int = typer.Option(None, "--seed", help="Seed of the figures' draws (default: the store's)."),
    patients: int = typer.Option(3, "--patients", help="Fits: individual-fit figures of this many patients."),
):
    """One static HTML page of a fit, a scenario result or a cohort store: tables,
    diagnostics, figures (embedded) and provenance. It needs no server and no network.

    Example: twinrx report pop.zarr --out pop.html
    """
    import jax

    from .report import write_report

    path = write_report(
        store,
        out,
        title=title,
        twin=twin,
        patients=patients,
        key=None if seed is None else jax.random.key(seed),
    )
    _say(f"wrote {path}: {path.stat().st_size / 1e6:.1f} MB, one self-contained HTML page")
    _fact("written", str(path))


@app.command()
def inspect(
    store: Path = typer.Argument(..., help="PATIENTS.zarr written by twinrx ingest."),
):
    """Per patient: id, covariates (value, unit), phenotypes (gene, diplotype, activity score,
    phenotype) and observation series (name, count, unit, time range in hours).

    Example: twinrx inspect patients.zarr --json
    """
    from .store import read_patients

    cohort = read_patients(store)
    summaries = [p.summary() for p in cohort]
    if _OUT.json:
        _fact("patients", summaries)
        _fact("skipped", [str(s) for s in cohort.skipped])
        return
    _say(f"{store}: {len(cohort)} patient{'s' if len(cohort) != 1 else ''}")
    for sm in summaries:
        _say(f"\npatient {sm['id']}")
        if sm["covariates"]:
            _say(" covariates:")
            _table(
                ["name", "value", "unit"],
                [[k, _fmt(c["value"]), c["unit"]] for k, c in sm["covariates"].items()],
            )
        if sm["phenotypes"]:
            _say(" phenotypes:")
            _table(
                ["gene", "diplotype", "activity score", "phenotype"],
                [
                    [
                        g,
                        f["diplotype"],
                        "-" if f["activity_score"] is None else _fmt(f["activity_score"]),
                        f["phenotype"],
                    ]
                    for g, f in sm["phenotypes"].items()
                ],
            )
        if sm["series"]:
            _say(" series:")
            _table(
                ["name", "count", "unit", "time range (h)", "censored"],
                [
                    [k, s["count"], s["unit"], _range(s["time_range_h"]), s["censored"]]
                    for k, s in sm["series"].items()
                ],
            )
        d = sm["doses"]
        if d["count"]:
            _say(
                f" doses: {d['count']} ({', '.join(d['drugs']) or 'drug not named'}), {_range(d['time_range_h'])} h"
            )
    if cohort.skipped:
        _say(f"\nskipped at ingestion: {len(cohort.skipped)} (twinrx inspect --json lists them)")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _range(r) -> str:
    return "-" if r is None else f"{r[0]:.4g} to {r[1]:.4g}"


@models_app.command("list")
def models_list():
    """Name, kind, compartments and source of every library model (cards in models/,
    then built-in closed forms that no card replaces).

    Example: twinrx models list
    """
    from .model.card import CardModel
    from .model.library import list_models

    rows = []
    for m in list_models():
        if isinstance(m, CardModel):
            kind = m.card.kind + (" (closed form)" if m.has_closed_form() else "")
            source = _short_ref(m.card.references[0]) if m.card.references else ""
        else:
            kind, source = "pk (closed form, built-in)", "twinrx"
        rows.append((m.name, kind, _clip(f"{m.n_state}: {', '.join(m.compartments)}", 56), source))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    _say(f"{'name':{w[0]}}  {'kind':{w[1]}}  {'compartments':{w[2]}}  source")
    for r in rows:
        _say(f"{r[0]:{w[0]}}  {r[1]:{w[1]}}  {r[2]:{w[2]}}  {r[3]}")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _short_ref(ref: str) -> str:
    """'Hamberg AK, Dahl ML, ... 2007;81...' -> 'Hamberg AK et al. 2007'."""
    import re

    first = ref.split(",")[0].split(".")[0].strip()
    year = re.search(r"\b(19|20)\d{2}\b", ref)
    more = " et al." if ref.count(",") >= 2 else ""
    return f"{first}{more} {year.group(0)}" if year else _clip(ref, 40)


@models_app.command("show")
def models_show(name: str = typer.Argument(..., help="Library model name or path of a card.")):
    """Everything a model card says: parameters with values, units, variability and
    sources; covariates and their effects; compartments; outputs and residual errors.

    Example: twinrx models show warfarin_hamberg_2007
    """
    import math

    from .model.card import CardModel
    from .model.library import get_model

    m = get_model(name)
    if not isinstance(m, CardModel):
        _say(f"{m.name}: built-in closed-form model; compartments {', '.join(m.compartments)}")
        for p in m.parameters:
            _say(f"  {p.name:8} {p.value:>10g} {p.unit:10} {p.description}")
        return
    c = m.card
    _say(f"{c.name} ({c.kind}; time in {c.time_unit}, amounts in {c.amount_unit})")
    _say(f"  {c.description}")
    if c.path:
        _say(f"  card: {c.path}")
    _say("\nReferences:")
    for r in c.references:
        _say(f"  - {r}")
    iiv = dict(zip(c.variability.parameters, c.variability.matrix().diagonal()))
    rows = []
    for p in c.parameters:
        if p.name in iiv:
            w = iiv[p.name]
            var = f"ω²={w:.3g} (CV {100 * math.sqrt(math.expm1(w)):.0f}%)"
        else:
            var = "-"
        rows.append((p.name, f"{p.value:.6g}", p.unit, var, p.source))
    _say("\nParameters:")
    _table(("name", "value", "unit", "variability", "source"), rows)
    if c.covariates:
        _say("\nCovariates:")
        crow = []
        for cov in c.covariates:
            ref = cov.levels[int(cov.reference)] if cov.categorical else f"{cov.reference:g}"
            kind = f"levels {', '.join(cov.levels)}" if cov.categorical else cov.unit
            crow.append((cov.name, kind, ref, cov.interpolation, cov.description))
        _table(("name", "unit / levels", "reference", "interpolation", "description"), crow)
    if c.effects:
        _say("\nCovariate effects:")
        for e in c.effects:
            if e.form == "categorical":
                cov = next(x for x in c.covariates if x.name == e.covariate)
                vals = ", ".join(f"{lv} {v:g}" for lv, v in zip(cov.levels, e.values))
                _say(f"  {e.parameter} × {e.describe()}: {vals}")
            else:
                _say(f"  {e.parameter} × {e.describe()}")
    _say("\nCompartments (NONMEM CMT):")
    for i, (cm, unit) in enumerate(zip(c.compartments, c.compartment_units)):
        init = c.initial[i].text if c.initial[i] is not None else "0"
        _say(f"  {i + 1}  {cm:12} [{unit}]  initial {init}")
    _say("\nOutputs:")
    for o, e, err in zip(c.outputs, c.output_exprs, c.errors):
        _say(f"  {o.name} = {e.text}  [{o.unit}]  error: {err.describe() if err else 'none'}")
    if c.modifiers:
        _say("\nDosing:")
        for kind, cm, _, e in c.modifiers:
            _say(f"  {kind} of {cm} = {e.text}")
    solver = "closed form" + (" and ODE" if m.has_ode else "") if m.has_closed_form() else "ODE"
    _say(f"\nSolved by: {solver}")


class _Output:
    """How the command line talks: text (default); ``--quiet``: nothing on success (errors
    still go to stderr, files are still written); ``--json``: one JSON document on stdout,
    ``{"command", "exit_code", "output": [{"text": ...} | {"table": {"columns", "rows"}}],
    ...}`` with the command's own fields (``written``, ``patients``, ...). Progress bars are
    off in both."""

    def __init__(self):
        self.reset()

    def reset(self, *, json: bool = False, quiet: bool = False, command: str = ""):
        self.json, self.quiet = json, quiet
        self.doc: dict = {"command": command, "exit_code": 0, "output": []}

    @property
    def interactive(self) -> bool:
        return not (self.json or self.quiet)


_OUT = _Output()


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _say(msg="") -> None:
    if _OUT.json:
        text = str(msg).strip("\n")
        if text.strip():
            _OUT.doc["output"].append({"text": text})
    elif not _OUT.quiet:
        typer.echo(msg)


def _warn(msg: str) -> None:
    if _OUT.json:
        _OUT.doc.setdefault("warnings", []).append(msg)
    elif not _OUT.quiet:
        typer.echo(msg, err=True)


def _fact(key: str, value) -> None:
    """A field of the JSON document (``--json``); nothing in text mode."""
    _OUT.doc[key] = value


def _table(header, rows):
    if _OUT.json:
        _OUT.doc["output"].append(
            {"table": {"columns": list(header), "rows": [[_jsonable(x) for x in r] for r in rows]}}
        )
        return
    w = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    w[-1] = 0
    _say("  " + "  ".join(f"{h:{n}}" for h, n in zip(header, w)).rstrip())
    for r in rows:
        _say("  " + "  ".join(f"{str(x):{n}}" for x, n in zip(r, w)).rstrip())


def main(argv=None) -> int:
    """Entry point with exit codes 0 (ok), 1 (user error), 2 (internal error)."""
    from ._devices import use_cpu_cores

    try:  # a cohort runs on every core (only possible before JAX's first computation)
        use_cpu_cores()
    except RuntimeError:
        pass
    args = list(sys.argv[1:] if argv is None else argv)
    # --json and --quiet (-q) are accepted anywhere before a "--"
    end = args.index("--") if "--" in args else len(args)
    flags = {a for a in args[:end] if a in ("--json", "--quiet", "-q")}
    args = [a for i, a in enumerate(args) if i >= end or a not in flags]
    command = " ".join(a for a in args[:2] if not a.startswith("-"))
    _OUT.reset(json="--json" in flags, quiet=bool(flags & {"--quiet", "-q"}), command=command)
    rc = _run(args)
    if _OUT.json:
        _OUT.doc["exit_code"] = rc
        typer.echo(json.dumps(_OUT.doc, indent=2, default=_jsonable))
    return rc


def _run(args) -> int:
    from .events import DataError

    try:
        rc = app(args=args, standalone_mode=False)
        # Without standalone mode click returns the code of a typer.Exit instead of raising.
        return rc if isinstance(rc, int) else 0
    except SystemExit as e:  # typer.Exit / --help
        return int(e.code or 0)
    except typer.Exit as e:
        return int(e.exit_code)
    except (DataError, UserError, ValueError, FileNotFoundError) as e:
        _OUT.doc["error"] = str(e)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # usage errors (typer's own click) carry their own message
        if isinstance(e, typer.Abort):
            return 1
        if isinstance(e, typer.TyperException) and hasattr(e, "show"):
            _OUT.doc["error"] = e.format_message()
            e.show()
            return 1
        _OUT.doc["error"] = f"internal error: {type(e).__name__}: {e}"
        traceback.print_exc()
        print("internal error: please report it with the traceback above", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
