"""Cohort simulation benchmark: twinrx (closed form, ODE) vs libroadrunner vs scipy LSODA.

Problem (the same for every engine, on the same parameter sets)
---------------------------------------------------------------
Two-compartment model with first-order absorption (``two_cpt_oral``: depot, central,
peripheral), typical values KA 1 1/h, CL 5 L/h, V1 50 L, Q 10 L/h, V2 100 L, log-normal
inter-individual variability ``param = typical * exp(eta)``, ``eta ~ N(0, omega^2)`` with
omega 0.3 on KA, CL, V1 and 0.2 on Q, V2 (numpy ``default_rng(--seed)``; row ``i`` of the
eta matrix is patient ``i`` whatever N, so the N = 1,000 cohort is the first 1,000 patients
of the N = 10,000 one). 100 mg every 12 h, 14 doses, into the depot; CP = central / V1
(mg/L) every hour from 0 to 168 h (169 times). N = 1,000 and 10,000 patients.

Engines
-------
``twinrx_closed_form``
    ``twinrx.simulate_arrays(..., solver="closed_form")``: the exact eigen-decomposition
    propagator. It is also the reference for the accuracy check.
``twinrx_ode``
    ``solver="ode"`` (Tsit5 with an integral step-size controller; RMS error norm) with
    ``rtol=1e-6, atol=1e-9`` (mg). Amounts are 1-300 mg once dosing starts, so atol is far
    below rtol*|x| and the error control is effectively relative.

Both twinrx engines split the cohort over all CPU cores (``twinrx.use_cpu_cores()``, i.e.
one JAX CPU device per core; ``--cores N`` to change). libroadrunner and scipy run
single-threaded, as they come.
``libroadrunner``
    CVODE, ``rtol=1e-6, atol=1e-9``. The model is written in Antimony (species in a
    compartment of volume 1, so species values are amounts in mg); the first dose is the
    initial amount of the depot and the 13 further doses are Antimony events
    ``at (time >= 12 k): depot = depot + 100``, so each subject is ONE ``simulate(0, 168,
    169)`` call (CVODE locates the events by root finding and restarts there). Per
    subject: ``resetAll()`` (time, species, parameters and event state back to their
    initial values), set the five parameters, simulate, CP = central / V1. The model is
    loaded (and LLVM-compiled) once, outside the timing. Chosen as the fastest correct
    set-up after trying, on 300 subjects: events vs. piecewise ``simulate`` between doses
    (events ~20-25 % faster: one call instead of 14), and CVODE's BDF (roadrunner's
    default ``stiff=True``) vs. Adams (``stiff=False``). Adams is ~20-30 % faster here and
    more accurate: max relative error 2e-6 (N = 1,000) to 7e-6 (N = 10,000), vs 1.1e-5 for
    BDF at the same tolerances on N = 1,000, which misses the 1e-5 accuracy bar. The problem
    is not stiff (eigenvalues -0.009 to -3.0 1/h in this cohort, over 168 h).
    ``--roadrunner-stiff`` switches to BDF.
``scipy_lsoda``
    ``scipy.integrate.solve_ivp(method="LSODA", rtol=1e-6, atol=1e-9)`` segment by segment
    between doses (dose = +100 mg on the depot between segments), ``t_eval`` hourly, the
    constant Jacobian given as a callable (scipy 1.17's LSODA rejects a constant array
    ``jac``: "truth value of an array ... is ambiguous").
``--twinrx-batch-size B`` passes ``batch_size=B`` to ``simulate_arrays`` (patients per vmapped
chunk; 0 = one vmap over all). By default twinrx's own default is used.

Timing
------
twinrx engines: the first call (tracing + XLA compilation + run) is timed on its own, then
``--repeats`` (10) warm calls; ``seconds`` is the best warm call and ``compile_seconds`` =
first call - best warm call. Calls are ``simulate_arrays`` from Python (argument checks
included) with ``jax.block_until_ready`` on the outputs. The stacked event table
(``twinrx.stack_tables([ev] * N)``) is built once per N, outside the engine timings; its time
is recorded as ``stack_tables_seconds``. libroadrunner and scipy loop over subjects
in Python, single-threaded; their per-subject cost does not depend on N, so for N larger than
``--roadrunner-max`` / ``--scipy-max`` they are timed on the first that many subjects and
subjects/second is extrapolated (``extrapolated_from`` in the JSON, ``*`` in the table);
their accuracy is then checked on that subset. libroadrunner makes ``--roadrunner-repeats``
(3) passes over its subjects after one warm-up ``simulate`` and reports the best, like twinrx;
scipy makes one pass. ``ratio_vs_libroadrunner`` = subjects/second of the engine /
subjects/second of libroadrunner at the same N. The machine is shared and small (2 cores
here): repeated runs vary by 10-30 %, most for the fastest engines.

Accuracy
--------
``max_rel_error`` = max over subjects and times of ``|CP - CP_closed| / max(|CP_closed|,
1e-6 mg/L)``. CP is 0 only at t = 0, before any drug reaches the central compartment (the
peers give exactly 0 there, the closed form round-off of at most ~4e-13 mg/L, i.e. a
"relative error" below 1e-6 at the floor); at every later output time of this cohort CP is
above 0.06 mg/L (with seed 20240917), so the floor only guards the division at t = 0 and
never masks an error. An engine passes at ``max_rel_error <= 1e-5``.

Usage
-----
    python benchmarks/simulate_cohort.py                      # N = 1,000 and 10,000, all engines
    python benchmarks/simulate_cohort.py --n 1000 --engines twinrx_closed_form,twinrx_ode
Results: a table on stdout and ``benchmarks/results/simulate_cohort.json`` (a list of
records, one per engine and N; each carries the machine and library versions).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

import twinrx

# ----------------------------------------------------------------------------------------
# Problem definition
# ----------------------------------------------------------------------------------------
TYPICAL = {"KA": 1.0, "CL": 5.0, "V1": 50.0, "Q": 10.0, "V2": 100.0}
OMEGA = {"KA": 0.3, "CL": 0.3, "V1": 0.3, "Q": 0.2, "V2": 0.2}
DOSE = 100.0  # mg
II = 12.0  # h
N_DOSES = 14
TIMES = np.arange(169.0)  # 0, 1, ..., 168 h
RTOL = 1e-6
ATOL = 1e-9  # mg
REL_FLOOR = 1e-6  # mg/L, denominator floor of the relative error
ACCURACY_BAR = 1e-5
DEFAULT_SIZES = (1000, 10000)

ENGINES = ("twinrx_closed_form", "twinrx_ode", "libroadrunner", "scipy_lsoda")
ALIASES = {
    "closed_form": "twinrx_closed_form",
    "closed": "twinrx_closed_form",
    "ode": "twinrx_ode",
    "roadrunner": "libroadrunner",
    "rr": "libroadrunner",
    "scipy": "scipy_lsoda",
    "lsoda": "scipy_lsoda",
}
REFERENCE = "twinrx_closed_form"


def cohort_parameters(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` patients' parameters; patient ``i`` is the same for every ``n`` (row-major draw)."""
    eta = np.random.default_rng(seed).normal(size=(n, len(TYPICAL)))
    return {k: TYPICAL[k] * np.exp(OMEGA[k] * eta[:, j]) for j, k in enumerate(TYPICAL)}


def dosing_table() -> twinrx.EventTable:
    return twinrx.EventTable.from_records(
        time=[0.0], evid=[1], amt=[DOSE], cmt=[1], ii=[II], addl=[N_DOSES - 1]
    )


def stacked_events(ev: twinrx.EventTable, n: int) -> tuple[twinrx.EventTable, float]:
    """``twinrx.stack_tables([ev] * n)`` and the seconds it took."""
    t0 = time.perf_counter()
    events = jax.block_until_ready(twinrx.stack_tables([ev] * n))
    return events, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------
# Engines. Each returns a Run (CP of the timed subjects, timings, settings).
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    engine: str
    n: int
    seconds: float  # for all n subjects (extrapolated where timed on a subset)
    cp: np.ndarray  # (n_timed, T)
    timed_subjects: int
    compile_seconds: float | None = None
    first_call_seconds: float | None = None
    warm_seconds: list[float] | None = None
    setup_seconds: float | None = None
    status_ok: bool | None = None
    settings: dict | None = None
    stack_tables_seconds: float | None = None


def _time_twinrx(call, repeats: int):
    t0 = time.perf_counter()
    out = call()
    jax.block_until_ready(out)
    first = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call()
        jax.block_until_ready(out)
        warm.append(time.perf_counter() - t0)
    return out, first, warm


def run_twinrx(engine: str, n: int, params, events, repeats: int, batch_size: int | None) -> Run:
    model = twinrx.get_model("two_cpt_oral")
    solver = "closed_form" if engine == "twinrx_closed_form" else "ode"
    kw = {"solver": solver, "rtol": RTOL, "atol": ATOL}
    if batch_size is not None:
        kw["batch_size"] = batch_size

    def call():
        return twinrx.simulate_arrays(model, params, events, TIMES, **kw)

    (_, outputs, status), first, warm = _time_twinrx(call, repeats)
    cp = np.asarray(outputs["CP"])
    status = np.asarray(status)
    settings = {"solver": solver, "batch_size": "twinrx default" if batch_size is None else batch_size}
    if solver == "ode":
        settings |= {"method": "Tsit5", "rtol": RTOL, "atol": ATOL}
    best = min(warm)
    return Run(
        engine,
        n,
        best,
        cp,
        n,
        compile_seconds=max(first - best, 0.0),
        first_call_seconds=first,
        warm_seconds=warm,
        status_ok=bool(np.all(status == 0)),
        settings=settings,
    )


def roadrunner_model(stiff: bool):
    import antimony
    import roadrunner

    events = "\n".join(
        f"  dose{k}: at (time >= {k * II:g}): depot = depot + {DOSE:g};" for k in range(1, N_DOSES)
    )
    ant = f"""
model two_cpt_oral
  compartment body = 1;
  species depot in body, central in body, peripheral in body;
  depot = {DOSE:g}; central = 0; peripheral = 0;
  KA = {TYPICAL["KA"]}; CL = {TYPICAL["CL"]}; V1 = {TYPICAL["V1"]}; Q = {TYPICAL["Q"]}; V2 = {TYPICAL["V2"]};
  absorption: depot -> central; KA * depot;
  elimination: central -> ; CL / V1 * central;
  distribution: central -> peripheral; Q / V1 * central;
  redistribution: peripheral -> central; Q / V2 * peripheral;
{events}
end
"""
    antimony.clearPreviousLoads()
    if antimony.loadAntimonyString(ant) < 0:
        raise RuntimeError(antimony.getLastError())
    r = roadrunner.RoadRunner(antimony.getSBMLString("two_cpt_oral"))
    r.setIntegrator("cvode")
    r.integrator.relative_tolerance = RTOL
    r.integrator.absolute_tolerance = ATOL
    r.integrator.stiff = stiff
    r.timeCourseSelections = ["central"]
    return r


def run_roadrunner(n: int, params, max_subjects: int, stiff: bool, repeats: int) -> Run:
    t0 = time.perf_counter()
    r = roadrunner_model(stiff)
    setup = time.perf_counter() - t0
    m = n if max_subjects <= 0 else min(n, max_subjects)
    names = list(TYPICAL)
    vals = np.column_stack([params[k][:m] for k in names]).tolist()
    t_end, n_pts = float(TIMES[-1]), len(TIMES)
    central = np.empty((m, n_pts))
    # Warm-up (first simulate after loading) outside the timing.
    r.resetAll()
    r.simulate(0.0, t_end, n_pts)
    passes = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        for i in range(m):
            r.resetAll()
            for name, v in zip(names, vals[i]):
                r[name] = v
            central[i] = r.simulate(0.0, t_end, n_pts)[:, 0]
        passes.append(time.perf_counter() - t0)
    dt = min(passes)
    cp = central / params["V1"][:m, None]
    settings = {
        "integrator": "cvode",
        "method": "BDF" if stiff else "Adams",
        "rtol": RTOL,
        "atol": ATOL,
        "doses": "antimony events",
    }
    return Run(
        "libroadrunner",
        n,
        dt * n / m,
        cp,
        m,
        setup_seconds=setup,
        settings=settings,
        warm_seconds=passes,
    )


def run_scipy(n: int, params, max_subjects: int) -> Run:
    from scipy.integrate import solve_ivp

    m = n if max_subjects <= 0 else min(n, max_subjects)
    out = np.empty((m, len(TIMES)))
    t0 = time.perf_counter()
    for i in range(m):
        ka, cl, v1, q, v2 = (float(params[k][i]) for k in TYPICAL)
        k10, k12, k21 = cl / v1, q / v1, q / v2
        a = np.array([[-ka, 0.0, 0.0], [ka, -(k10 + k12), k21], [0.0, k12, -k21]])

        def rhs(t, y, a=a):
            return a @ y

        def jac(t, y, a=a):
            return a

        y = np.zeros(3)
        for d in range(N_DOSES):
            y = y.copy()
            y[0] += DOSE
            t_a = d * II
            t_b = float(TIMES[-1]) if d == N_DOSES - 1 else t_a + II
            lo, hi = np.searchsorted(TIMES, [t_a, t_b])
            sol = solve_ivp(
                rhs,
                (t_a, t_b),
                y,
                method="LSODA",
                t_eval=TIMES[lo : hi + 1],
                rtol=RTOL,
                atol=ATOL,
                jac=jac,
            )
            if not sol.success:
                raise RuntimeError(f"scipy LSODA failed for subject {i}: {sol.message}")
            out[i, lo : hi + 1] = sol.y[1] / v1
            y = sol.y[:, -1]
    dt = time.perf_counter() - t0
    settings = {"method": "LSODA", "rtol": RTOL, "atol": ATOL, "segments": "between doses", "jac": "callable"}
    return Run("scipy_lsoda", n, dt * n / m, out, m, settings=settings)


# ----------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------
def max_rel_error(cp: np.ndarray, ref: np.ndarray) -> float:
    ref = ref[: cp.shape[0]]
    return float(np.max(np.abs(cp - ref) / np.maximum(np.abs(ref), REL_FLOOR)))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_revision() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes under src/), if git is there."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")


def environment() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    machine = {
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
    }
    versions = {
        "twinrx": twinrx.__version__,
        "twinrx_git": _git_revision(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "diffrax": _version("diffrax"),
        "equinox": _version("equinox"),
        "libroadrunner": _version("libroadrunner"),
        "antimony": _version("antimony"),
        "scipy": _version("scipy"),
        "numpy": np.__version__,
    }
    return {"machine": machine, "versions": versions}


def parse_engines(text: str) -> list[str]:
    out = []
    for raw in text.split(","):
        name = raw.strip().lower().replace("-", "_")
        if not name:
            continue
        name = ALIASES.get(name, name)
        if name not in ENGINES:
            raise SystemExit(f"unknown engine {raw!r}; choose from {', '.join(ENGINES)}")
        if name not in out:
            out.append(name)
    # The closed form is the accuracy reference: always run it, first.
    return [REFERENCE] + [e for e in out if e != REFERENCE]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--n", type=int, default=None, help="one cohort size only (default: 1000 and 10000)")
    ap.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help=f"comma list from {', '.join(ENGINES)} (twinrx_closed_form always runs: "
        "it is the accuracy reference)",
    )
    ap.add_argument("--seed", type=int, default=20240917)
    ap.add_argument("--repeats", type=int, default=10, help="warm twinrx calls; the best is reported")
    ap.add_argument(
        "--roadrunner-max",
        type=int,
        default=0,
        help="time libroadrunner on at most this many subjects and extrapolate (0: all)",
    )
    ap.add_argument(
        "--scipy-max",
        type=int,
        default=2000,
        help="time scipy LSODA on at most this many subjects and extrapolate (0: all)",
    )
    ap.add_argument(
        "--roadrunner-repeats",
        type=int,
        default=3,
        help="passes over the subjects for libroadrunner; the best is reported (as for twinrx)",
    )
    ap.add_argument("--roadrunner-stiff", action="store_true", help="CVODE BDF instead of Adams")
    ap.add_argument(
        "--cores",
        type=int,
        default=0,
        help="CPU cores twinrx splits a cohort over (twinrx.use_cpu_cores; default 0 = all)",
    )
    ap.add_argument(
        "--twinrx-batch-size",
        type=int,
        default=None,
        help="batch_size for simulate_arrays (patients per vmapped chunk, 0: all; default: twinrx's)",
    )
    ap.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "simulate_cohort.json",
    )
    args = ap.parse_args(argv)
    cores = twinrx.use_cpu_cores(args.cores or None)
    print(f"twinrx splits each cohort over {cores} CPU device(s) (twinrx.use_cpu_cores)")

    sizes = (args.n,) if args.n else DEFAULT_SIZES
    engines = parse_engines(args.engines)
    env = environment()
    print(
        f"twinrx cohort benchmark: {env['machine']['cpu_count']} CPUs ({env['machine']['cpu']}), "
        f"jax {env['versions']['jax']} on {env['machine']['jax_backend']}; "
        f"sizes {', '.join(map(str, sizes))}; engines {', '.join(engines)}",
        flush=True,
    )

    ev = dosing_table()
    all_params = cohort_parameters(max(sizes), args.seed)
    runs: list[Run] = []
    for n in sizes:
        params = {k: v[:n] for k, v in all_params.items()}
        events, stack_seconds = stacked_events(ev, n)
        print(
            f"  N={n:>6} twinrx.stack_tables (not timed with the engines): {stack_seconds:.2f} s", flush=True
        )
        for engine in engines:
            print(f"  N={n:>6} {engine} ...", end="", flush=True)
            if engine.startswith("twinrx"):
                run = run_twinrx(engine, n, params, events, args.repeats, args.twinrx_batch_size)
            elif engine == "libroadrunner":
                run = run_roadrunner(
                    n, params, args.roadrunner_max, args.roadrunner_stiff, args.roadrunner_repeats
                )
            else:
                run = run_scipy(n, params, args.scipy_max)
            run.stack_tables_seconds = stack_seconds
            runs.append(run)
            print(f" {run.seconds:.3f} s", flush=True)

    # Accuracy and ratios.
    records = []
    for n in sizes:
        at_n = {r.engine: r for r in runs if r.n == n}
        ref = at_n[REFERENCE].cp
        rr = at_n.get("libroadrunner")
        for run in at_n.values():
            sps = run.n / run.seconds
            rec = {
                "engine": run.engine,
                "n": run.n,
                "seconds": run.seconds,
                "subjects_per_second": sps,
                "max_rel_error": max_rel_error(run.cp, ref),
                "ratio_vs_libroadrunner": (sps / (rr.n / rr.seconds)) if rr else None,
            }
            rec["accuracy_ok"] = rec["max_rel_error"] <= ACCURACY_BAR
            if run.compile_seconds is not None:
                rec["compile_seconds"] = run.compile_seconds
                rec["first_call_seconds"] = run.first_call_seconds
            if run.warm_seconds is not None:
                rec["repeat_seconds"] = run.warm_seconds
            if run.status_ok is not None:
                rec["status_ok"] = run.status_ok
            if run.timed_subjects != run.n:
                rec["extrapolated_from"] = run.timed_subjects
            if run.setup_seconds is not None:
                rec["setup_seconds"] = run.setup_seconds
            rec["settings"] = run.settings
            rec["rel_error_floor_mg_per_L"] = REL_FLOOR
            rec |= env
            rec["stack_tables_seconds"] = run.stack_tables_seconds
            records.append(rec)

    # Table.
    print()
    head = f"{'engine':<20} {'n':>6} {'seconds':>10} {'subjects/s':>12} {'max_rel_error':>14} {'vs roadrunner':>14}"
    print(head)
    print("-" * len(head))
    for rec in records:
        ratio = rec["ratio_vs_libroadrunner"]
        star = "*" if "extrapolated_from" in rec else " "
        flag = "" if rec["accuracy_ok"] else "  FAILS 1e-5"
        if rec.get("status_ok") is False:
            flag += "  BAD STATUS"
        print(
            f"{rec['engine']:<20} {rec['n']:>6} {rec['seconds']:>9.3f}{star} {rec['subjects_per_second']:>12.0f} "
            f"{rec['max_rel_error']:>14.2e} {('-' if ratio is None else f'{ratio:.1f}x'):>14}{flag}"
        )
    notes = [r for r in records if "extrapolated_from" in r]
    if notes:
        print(
            "* timed on the first "
            + ", ".join(f"{r['extrapolated_from']} ({r['engine']}, N={r['n']})" for r in notes)
            + " subjects; seconds extrapolated to N at the same subjects/second "
            "(accuracy checked on that subset)"
        )
    print()
    print("twinrx compile (first call - best warm call), best of", args.repeats, "warm calls:")
    for rec in records:
        if "compile_seconds" in rec:
            print(
                f"  {rec['engine']:<20} N={rec['n']:>6}: compile {rec['compile_seconds']:.2f} s "
                f"(first call {rec['first_call_seconds']:.2f} s, warm "
                + ", ".join(f"{s:.3f}" for s in rec["repeat_seconds"])
                + " s)"
            )
    print(
        f"accuracy: |CP - CP_closed_form| / max(|CP_closed_form|, {REL_FLOOR:g} mg/L), bar {ACCURACY_BAR:g}; "
        f"tolerances rtol {RTOL:g}, atol {ATOL:g} mg"
    )

    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    tmp.replace(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
