"""Warfarin PK/PD population fit (card ``warfarin_pkpd``), SVI or NUTS, against nlmixr's FOCEI.

Data: nlmixr2data's ``warfarin`` (``../shared/data/warfarin.csv``; 32 subjects, 251
concentrations ``cp`` and 232 prothrombin complex activities ``pca``), both outputs fitted
jointly. Reference: the nlmixr FOCEI estimates of nlmixr2's multiple-endpoint example
(rows ``warfarin`` of ``../shared/data/published_estimates.csv``; the card's header says
where they come from).

Population model (twinrx's ``PopulationModel`` of the card)::

    P in KTR KA CL V EMAX_ODDS EC50 KOUT E0:   P ~ LogNormal(log(start_P), 2)
    omega_P ~ HalfNormal(1)      (SD of eta; diagonal, IIV on all eight, as nlmixr)
    z_P[i] ~ Normal(0, 1);  P_i = P * exp(omega_P * z_P[i])
    CP  ~ combined error (sigma_CP_add, sigma_CP_prop; variances add), PCA ~ additive

``start_P`` are the initial estimates of the nlmixr2 vignette (its ``ini`` block: ktr 1,
ka 1, cl 0.1, v 10, emax 0.8, ec50 0.5, kout 0.05, e0 100), not the published results, and
the fit starts there; the priors are wide (a factor of 27 either way covers 90 %), so the
data decide. EMAX is logit-normal as in nlmixr, through the odds EMAX_ODDS = EMAX/(1-EMAX).

Method: by default SVI with a full-rank normal guide (8000 steps, learning rate 0.005), run
from two seeds; ``--method nuts`` runs NUTS (4 chains), which was tried first and takes far
longer than 20 minutes on the 2-core development machine (measured; see ``NUTS_NOTE`` and
the results file).

Then the visual check ``benchmarks/results/warfarin_pkpd.png``: 8 of the 32 patients,
observed CP and PCA with the individual posterior median prediction and its 90 % band
(from posterior draws), and observed vs individual predicted for both outputs.

Run: ``.venv/bin/python benchmarks/fit_warfarin_pkpd.py`` (SVI, about 10-15 minutes on 2 cores),
or ``... --method nuts --chains 4 --warmup W --draws D`` (hours).
Results: ``benchmarks/results/warfarin_pkpd.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata as md
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import twinrx  # noqa: I001  (enables float64 in JAX first)
from twinrx.infer import FitData, PopulationModel, fit
from twinrx.solve import simulate_arrays

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
TYPICAL = ("KTR", "KA", "CL", "V", "EMAX_ODDS", "EC50", "KOUT", "E0")
# The nlmixr2 vignette's initial estimates (ini block of pk.turnover.emax3).
START = {
    "KTR": 1.0,
    "KA": 1.0,
    "CL": 0.1,
    "V": 10.0,
    "EMAX_ODDS": 0.8 / 0.2,
    "EC50": 0.5,
    "KOUT": 0.05,
    "E0": 100.0,
}
CONTEXT_NOTE = [
    "Context for the residual errors and EMAX: a NONMEM fit of the same nlmixr2 model to the same data "
    "(translated by babelmixr2; its final estimates are printed in the nonmem2rx article 'Reading rounding "
    "from NONMEM') has pkadd.err 0.512 mg/L, prop.err 0.0986, pdadd.err 3.72, temax 6.42 (EMAX 0.998), "
    "CL 0.135 L/h, V 7.78 L, EC50 1.15 mg/L, KOUT 0.0522 /h, E0 96.6: where this fit differs from nlmixr's "
    "FOCEI (CP additive/proportional split, EMAX near 1), it agrees with that NONMEM fit. EMAX near 1 is "
    "weakly identified (flat likelihood on the logit scale).",
]
NUTS_NOTE = [
    "NUTS was tried first, with the same model, priors and starting point (`--method nuts`). One chain of "
    "150 warm-up + 50 draws, maximum tree depth 8, took 1045 s (17.4 min; measured 2026-11-23 on this "
    "2-core machine while other jobs ran, load average 3-5): after adaptation the step size was 0.059 and "
    "most draws needed trees of 127 leapfrog steps (median 127; acceptance 0.93), the typical non-centred "
    "geometry of random effects that the data identify well (CL, V, E0 with 7-10 observations per "
    "patient). Four chains of 300 warm-up + 200 draws at ~100 steps per draw need about 200,000 gradient "
    "evaluations, i.e. 4,400 s at the measured 22 ms (1 chain) or 3,600 s at 72 ms per 4-chain gradient, "
    "on an idle machine: NUTS cannot reach a converged 4-chain posterior within 20 minutes here. The "
    "benchmark therefore uses SVI with a full-rank normal guide (it keeps the posterior correlations "
    "between typical values, omegas and random effects, which a diagonal guide drops), run from two seeds "
    "to check the optimum; the population Laplace/MAP of twinrx is a joint mode over typical values and "
    "random effects, which collapses some omegas to zero (measured: omega_KTR 7e-5, omega_E0 1e-4 after "
    "1000 BFGS iterations), so it is not used.",
]
SOLVER = dict(solver="ode", rtol=1e-6, atol=1e-8, max_steps=256)


def published() -> dict[str, float]:
    """The nlmixr FOCEI estimates (typical values on their natural scale, residual errors)
    from published_estimates.csv."""
    out: dict[str, float] = {}
    with open(DATA / "published_estimates.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if not row["dataset"].startswith("warfarin") or row["dataset"].startswith("warfarin_"):
                continue
            names = [s.split("(")[0].strip() for s in row["parameter"].split("/")]
            values = [float(s) for s in row["estimate"].split("/")]
            out.update(zip(names, values, strict=True))
            for k, v in re.findall(r"(prop\.err|pkadd\.err|pdadd\.err) ([0-9.]+)", row["source"]):
                out[k] = float(v)
    want = {
        "tktr",
        "tka",
        "tcl",
        "tv",
        "temax",
        "tec50",
        "tkout",
        "te0",
        "prop.err",
        "pkadd.err",
        "pdadd.err",
    }
    assert want <= set(out), sorted(want - set(out))
    ref = {
        "KTR": math.exp(out["tktr"]),
        "KA": math.exp(out["tka"]),
        "CL": math.exp(out["tcl"]),
        "V": math.exp(out["tv"]),
        "EMAX": 1.0 / (1.0 + math.exp(-out["temax"])),
        "EC50": math.exp(out["tec50"]),
        "KOUT": math.exp(out["tkout"]),
        "E0": math.exp(out["te0"]),
        "sigma_CP_add": out["pkadd.err"],
        "sigma_CP_prop": out["prop.err"],
        "sigma_PCA": out["pdadd.err"],
    }
    return ref


def load(m) -> FitData:
    d = FitData.from_nonmem(m, DATA / "warfarin.csv", dvid={"cp": "CP", "pca": "PCA"})
    assert d.n_patients == 32 and d.obs["CP"].count == 251 and d.obs["PCA"].count == 232
    return d


def population_options(m) -> dict:
    priors = {k: dist.LogNormal(math.log(v), 2.0) for k, v in START.items()}
    priors.update({f"omega_{p}": dist.HalfNormal(1.0) for p in TYPICAL})
    return dict(error={"CP": "combined", "PCA": "additive"}, covariance="diagonal", priors=priors, **SOLVER)


def gradient_cost(m, d, reps: int = 20) -> dict[str, float]:
    """Wall time of one value-and-gradient of the log posterior density (32 patients,
    jit, warm), for one parameter vector and for four at once (vmap: four chains)."""
    from numpyro.infer import init_to_median
    from numpyro.infer.util import initialize_model

    pop = PopulationModel.build(m, d, **population_options(m))
    info = initialize_model(
        jax.random.key(0),
        pop,
        model_args=(d,),
        init_strategy=init_to_median(num_samples=15),
        dynamic_args=True,
    )
    pe = info.potential_fn
    u = info.param_info.z
    f1 = jax.jit(jax.value_and_grad(lambda u, d: pe(d)(u)))
    u4 = jax.tree.map(lambda a: jnp.stack([a * (1 + 0.01 * k) for k in range(4)]), u)
    f4 = jax.jit(jax.vmap(jax.value_and_grad(lambda u, d: pe(d)(u)), (0, None)))
    t_all = time.perf_counter()
    out = {"n_latent": int(sum(np.size(v) for v in jax.tree.leaves(u)))}
    for name, f, x in (("1 chain", f1, u), ("4 chains", f4, u4)):
        t = time.perf_counter()
        jax.block_until_ready(f(x, d))
        out[f"compile_s ({name})"] = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(reps):
            jax.block_until_ready(f(x, d))
        out[f"ms ({name})"] = (time.perf_counter() - t) / reps * 1e3
    out["wall_s"] = time.perf_counter() - t_all
    return out


# --------------------------------------------------------------------------------------
# Individual predictions from posterior draws
# --------------------------------------------------------------------------------------
def individual_predictions(m, d, pop_fit, patients, times, n_draws: int, seed: int = 1):
    """Predicted CP and PCA ``(draw, patient, time)`` for ``patients`` at ``times`` from
    ``n_draws`` posterior draws of the individual parameters (one cohort simulation of
    draws x patients)."""
    flat = pop_fit.flat_samples()
    total = flat["CL_i"].shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.choice(total, size=min(n_draws, total), replace=False)
    patients = np.asarray(patients)
    S, P = idx.size, patients.size
    params = {p: flat[f"{p}_i"][idx][:, patients].reshape(-1) for p in TYPICAL}  # (S*P,)
    sub = d.select(patients)
    events = jax.tree.map(lambda a: jnp.tile(a, (S,) + (1,) * (a.ndim - 1)), sub.events)
    _, outputs, status = simulate_arrays(m, params, events, np.asarray(times, float), **SOLVER)
    assert int(np.max(np.asarray(status))) == 0
    return {k: np.asarray(v).reshape(S, P, -1) for k, v in outputs.items() if k in ("CP", "PCA")}


def observed(d, o: str, i: int):
    ob = d.obs[o]
    mask = np.asarray(ob.mask[i])
    t = np.asarray(d.times[i])[np.asarray(ob.index[i])[mask]]
    return t, np.asarray(ob.value[i])[mask]


def plot(m, d, pop_fit, path: Path, n_draws: int, how: str) -> dict[str, float]:
    """The visual check; returns summary numbers of the individual fit (for the report)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    N = d.n_patients
    obs_times = np.unique(np.concatenate([np.asarray(d.times[i]) for i in range(N)]))
    grid = np.unique(np.concatenate([np.linspace(0.0, 150.0, 301), obs_times]))
    pred = individual_predictions(m, d, pop_fit, np.arange(N), grid, n_draws)
    med = {o: np.median(v, axis=0) for o, v in pred.items()}
    lo = {o: np.quantile(v, 0.05, axis=0) for o, v in pred.items()}
    hi = {o: np.quantile(v, 0.95, axis=0) for o, v in pred.items()}

    shown = np.linspace(0, N - 1, 8).round().astype(int)
    fig = plt.figure(figsize=(16, 17))
    gs = fig.add_gridspec(5, 4, height_ratios=[1, 1, 1, 1, 1.25], hspace=0.45, wspace=0.28, top=0.94)
    colours = {"CP": "tab:blue", "PCA": "tab:red"}
    for k, i in enumerate(shown):
        for j, o in enumerate(("CP", "PCA")):
            ax = fig.add_subplot(gs[(k // 4) * 2 + j, k % 4])
            ax.fill_between(grid, lo[o][i], hi[o][i], color=colours[o], alpha=0.25, lw=0, label="90 % band")
            ax.plot(grid, med[o][i], color=colours[o], lw=1.5, label="posterior median")
            t, y = observed(d, o, i)
            ax.plot(t, y, "o", ms=4, color="black", label="observed")
            ax.set_title(f"patient {d.ids[i]}: {o}", fontsize=10)
            ax.set_xlim(-2, 150)
            ax.set_ylabel("CP (mg/L)" if o == "CP" else "PCA (%)", fontsize=9)
            if (k // 4) * 2 + j == 3:
                ax.set_xlabel("time (h)")
            if k == 0 and j == 0:
                ax.legend(fontsize=8)
    numbers: dict[str, float] = {}
    for j, o in enumerate(("CP", "PCA")):
        ax = fig.add_subplot(gs[4, 2 * j : 2 * j + 2])
        ys, fs = [], []
        for i in range(N):
            t, y = observed(d, o, i)
            f = np.interp(t, grid, med[o][i])  # t lies on the grid: exact
            ys.append(y)
            fs.append(f)
        y, f = np.concatenate(ys), np.concatenate(fs)
        ax.plot(f, y, "o", ms=3, alpha=0.6, color=colours[o])
        top = max(y.max(), f.max()) * 1.05
        ax.plot([0, top], [0, top], "k-", lw=1)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_aspect("equal")
        ax.set_xlabel(f"individual prediction (posterior median), {o}")
        ax.set_ylabel(f"observed {o}")
        r = y - f
        numbers[f"{o} median abs(obs - ipred)"] = float(np.median(np.abs(r)))
        numbers[f"{o} mean (obs - ipred)"] = float(np.mean(r))
        numbers[f"{o} corr(obs, ipred)"] = float(np.corrcoef(y, f)[0, 1])
        ax.set_title(
            f"{o}: observed vs individual predicted (all 32 patients, {y.size} values); "
            f"median |residual| {numbers[f'{o} median abs(obs - ipred)']:.3g}",
            fontsize=10,
        )
    fig.suptitle(
        f"warfarin_pkpd: {how} population fit, individual posterior predictions (8 of 32 patients; "
        f"band: 5-95 % of {min(n_draws, pop_fit.flat_samples()['CL_i'].shape[0])} posterior draws)",
        fontsize=12,
    )
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    numbers["patients shown"] = ", ".join(d.ids[i] for i in shown)  # type: ignore[assignment]
    return numbers


# --------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
            cpu = names[0] if names else cpu
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), load average at start {load:.2f}"


def versions() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        ).stdout
        commit += " (working tree with uncommitted changes)" if dirty.strip() else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    pk = ("jax", "numpyro", "diffrax", "numpy", "matplotlib")
    return f"Python {platform.python_version()}, twinrx {twinrx.__version__} at {commit}, " + ", ".join(
        f"{p} {md.version(p)}" for p in pk
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", choices=("svi", "nuts"), default="svi")
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1], help="one fit per seed; the first is reported"
    )
    ap.add_argument("--steps", type=int, default=8000, help="SVI optimisation steps")
    ap.add_argument("--learning-rate", type=float, default=0.005, help="SVI (clipped Adam)")
    ap.add_argument("--svi-draws", type=int, default=1000, help="draws from the SVI guide")
    ap.add_argument("--chains", type=int, default=4, help="NUTS")
    ap.add_argument("--warmup", type=int, default=300, help="NUTS")
    ap.add_argument("--draws", type=int, default=200, help="NUTS")
    ap.add_argument("--max-tree-depth", type=int, default=8, help="NUTS")
    ap.add_argument("--target-accept", type=float, default=0.8, help="NUTS")
    ap.add_argument("--plot-draws", type=int, default=200)
    ap.add_argument("--no-gradient-cost", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "warfarin_pkpd"))
    args = ap.parse_args(argv)
    if not (DATA / "warfarin.csv").is_file():
        print("../shared/data/warfarin.csv is absent", file=sys.stderr)
        return 1
    command = "python benchmarks/fit_warfarin_pkpd.py " + " ".join(argv if argv is not None else sys.argv[1:])
    mach, vers = machine(), versions()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    t_all = time.perf_counter()
    m = twinrx.get_model("warfarin_pkpd")
    d = load(m)
    ref = published()

    grad = {} if args.no_gradient_cost else gradient_cost(m, d)
    if grad:
        print("gradient cost:", {k: round(v, 2) for k, v in grad.items()}, flush=True)

    init = {**START, "sigma_CP_add": 0.1, "sigma_CP_prop": 0.1, "sigma_PCA": 10.0}  # the vignette's
    fits, t_fit = [], []
    for seed in args.seeds:
        t0 = time.perf_counter()
        if args.method == "nuts":
            f = fit(
                m,
                d,
                method="nuts",
                chains=args.chains,
                warmup=args.warmup,
                draws=args.draws,
                max_tree_depth=args.max_tree_depth,
                target_accept=args.target_accept,
                seed=seed,
                init=init,
                **population_options(m),
            )
        else:
            f = fit(
                m,
                d,
                method="svi",
                guide="mvn",
                steps=args.steps,
                learning_rate=args.learning_rate,
                draws=args.svi_draws,
                seed=seed,
                init=init,
                **population_options(m),
            )
        t_fit.append(time.perf_counter() - t0)
        fits.append(f)
        print(f"{args.method} seed {seed}: {t_fit[-1]:.0f} s", flush=True)
    pop = fits[0]

    from twinrx.infer.diagnostics import summarize

    def table(f):
        """Summary with EMAX from the odds (a monotone map: medians, quantiles, R-hat and
        ESS carry over)."""
        s = f.summary()
        odds = f.samples["EMAX_ODDS"]
        s.update(summarize({"EMAX": odds / (1 + odds)}, ["EMAX"]))
        return s

    s = table(pop)
    others = [table(f) for f in fits[1:]]
    nuts = args.method == "nuts"
    rows = []
    units = {p.name: p.unit for p in m.parameters}
    units.update(EMAX="1", sigma_CP_add="mg/L", sigma_CP_prop="1", sigma_PCA="percent")
    for p in (
        "KTR",
        "KA",
        "CL",
        "V",
        "EMAX",
        "EC50",
        "KOUT",
        "E0",
        "sigma_CP_add",
        "sigma_CP_prop",
        "sigma_PCA",
    ):
        q = s[p]
        med = float(q["median"])
        row = [
            p,
            units[p],
            f"{med:.4g} ({float(q['q05']):.4g}, {float(q['q95']):.4g})",
            f"{ref[p]:.4g}",
            f"{(med - ref[p]) / ref[p]:+.1%}",
            "yes" if float(q["q05"]) <= ref[p] <= float(q["q95"]) else "no",
        ]
        if nuts:
            row += [f"{float(q['r_hat']):.3f}", f"{float(q['ess_bulk']):.0f}", f"{float(q['ess_tail']):.0f}"]
        else:
            row += [
                ", ".join(
                    f"{float(o[p]['median']):.4g} ({(float(o[p]['median']) - med) / med:+.1%})"
                    for o in others
                )
                or "-"
            ]
        rows.append(tuple(row))
    var = m.card.variability
    mat = var.matrix()
    card_sd = {p: math.sqrt(mat[i, i]) for i, p in enumerate(var.parameters)}
    orows = []
    for p in TYPICAL:
        q = s[f"omega_{p}"]
        row = [
            f"omega_{p}",
            f"{float(q['median']):.3g} ({float(q['q05']):.3g}, {float(q['q95']):.3g})",
            f"{card_sd[p]:.3g}",
        ]
        if nuts:
            row += [f"{float(q['r_hat']):.3f}", f"{float(q['ess_bulk']):.0f}"]
        else:
            row += [", ".join(f"{float(o[f'omega_{p}']['median']):.3g}" for o in others) or "-"]
        orows.append(tuple(row))
    sampler: list[str] = []
    if nuts:
        rhat_all = {k: float(v["r_hat"]) for k, v in s.items() if not k.endswith("_i")}
        rhat_ind = {k: float(np.max(v["r_hat"])) for k, v in s.items() if k.endswith("_i")}
        steps = pop.stats["n_steps"]
        depth = pop.stats["tree_depth"]
        step_size = np.asarray(pop.stats["step_size"])[:, -1]
        sampler = [
            f"- divergences: {int(pop.stats['diverging'].sum())} of {steps.size} draws",
            f"- leapfrog steps per draw: median {np.median(steps):.0f}, max {np.max(steps)}; tree depth max "
            f"{np.max(depth)} (limit {args.max_tree_depth}; {int(np.sum(depth >= args.max_tree_depth))} draws at it)",
            f"- final step size per chain: {', '.join(f'{x:.3g}' for x in step_size)}",
            f"- largest R-hat over population sites: {max(rhat_all.values()):.3f} "
            f"({max(rhat_all, key=rhat_all.get)}); over individual values (all patients): "
            f"{max(rhat_ind.values()):.3f} ({max(rhat_ind, key=rhat_ind.get)})",
        ]
    else:
        for f, seed in zip(fits, args.seeds, strict=True):
            sampler.append(
                f"- seed {seed}: {t_fit[args.seeds.index(seed)]:.0f} s; mean ELBO loss over the last 100 steps "
                f"{f.info.get('elbo_loss_last', float('nan')):.1f} (NaN: some of those steps had a non-finite "
                "loss; numpyro's stable update skips them)"
            )

    png = Path(args.out).with_suffix(".png")
    t0 = time.perf_counter()
    numbers = plot(
        m, d, pop, png, args.plot_draws, "NUTS" if args.method == "nuts" else "SVI (full-rank normal)"
    )
    t_plot = time.perf_counter() - t0
    wall = time.perf_counter() - t_all

    nuts_cols = ("R-hat", "ESS bulk", "ESS tail")
    extra = (
        nuts_cols if nuts else (f"median with seed(s) {', '.join(map(str, args.seeds[1:]))} (difference)",)
    )
    if args.method == "nuts":
        how = (
            f"NUTS: {args.chains} chains x ({args.warmup} warm-up + {args.draws} draws), max tree depth "
            f"{args.max_tree_depth}, target acceptance {args.target_accept}, seeds {args.seeds}."
        )
    else:
        how = (
            f"SVI (twinrx `fit(method='svi', guide='mvn')`: a full-rank normal guide over all "
            f"{sum(np.size(v[0, 0]) for k, v in pop.samples.items() if k in pop.latent)} latent dimensions in "
            f"numpyro's unconstrained space, Trace_ELBO with 1 particle, clipped Adam, learning rate "
            f"{args.learning_rate}, {args.steps} steps, {args.svi_draws} draws from the guide), once per seed "
            f"{args.seeds}; the first seed is reported, the others check that the optimum is reproducible. "
            "SVI's intervals are those of the normal guide: narrower than the posterior's, the omegas most "
            "(see the fit docstring). Why not NUTS: see the last section."
        )
    lines = [
        "# Warfarin PK/PD population fit (`benchmarks/fit_warfarin_pkpd.py`)",
        "",
        f"Command: `{command}` (started {started}).",
        f"Machine: {mach}.",
        f"Versions: {vers}.",
        f"Wall time: {wall:.0f} s in all; fits {' + '.join(f'{x:.0f}' for x in t_fit)} s (including JAX "
        f"compilation); plot {t_plot:.0f} s"
        + (f"; gradient timing {grad['wall_s']:.0f} s" if grad else "")
        + ".",
        "",
        "Data: nlmixr2data `warfarin` (32 subjects, 251 CP + 232 PCA observations), both outputs fitted jointly; "
        "the 4 CP values of 0 mg/L at 0.5 h kept as observations (as nlmixr did; the transit model predicts a "
        "positive concentration there). Model: card `warfarin_pkpd` (depot -> gut -> central, turnover of PCA "
        "with inhibitory Emax on production), IIV on all eight parameters (diagonal), combined CP error, "
        f"additive PCA error; ODE solver Tsit5, rtol {SOLVER['rtol']}, atol {SOLVER['atol']}, max_steps "
        f"{SOLVER['max_steps']}. Priors: log-normal (SD 2 on the log scale) around the nlmixr2 vignette's "
        "initial estimates (ktr 1, ka 1, cl 0.1, v 10, emax 0.8, ec50 0.5, kout 0.05, e0 100), where the fit "
        "also starts; HalfNormal(1) on the omegas; twinrx's defaults on the residual SDs.",
        "",
        how,
        "",
    ]
    if grad:
        lines += [
            "## Cost of one log-density gradient (jit, warm)",
            "",
            f"{grad['n_latent']} latent dimensions (19 population + 8 x 32 random effects).",
            "",
            "| evaluation | ms | compile s |",
            "|---|---|---|",
            f"| value and gradient, 1 parameter vector | {grad['ms (1 chain)']:.1f} | "
            f"{grad['compile_s (1 chain)']:.1f} |",
            f"| value and gradient, 4 at once (vmap, as 4 vectorised chains) | {grad['ms (4 chains)']:.1f} | "
            f"{grad['compile_s (4 chains)']:.1f} |",
            "",
        ]
    lines += [
        "## Typical values and residual errors vs nlmixr FOCEI",
        "",
        "| parameter | unit | posterior median (90 % interval) | nlmixr FOCEI | difference | FOCEI in 90 % interval | "
        + " | ".join(extra)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(extra),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        "EMAX is reported from EMAX_ODDS (EMAX = odds/(1+odds)). The FOCEI column is exp (or expit) of the "
        "published log (logit) estimates.",
        "",
        "## Between-subject variability (SD of eta, log scale; logit scale for EMAX)",
        "",
        "| site | posterior median (90 % interval) | card (nlmixr BSV as read, see the card) | "
        + " | ".join(extra[:2] if nuts else extra)
        + " |",
        "|---|---|---|" + "---|" * len(extra[:2] if nuts else extra),
        *("| " + " | ".join(r) + " |" for r in orows),
        "",
        "## Sampler / optimiser" if nuts else "## Optimiser",
        "",
        *sampler,
        "",
        "## Visual check (`warfarin_pkpd.png`)",
        "",
        f"Patients shown: {numbers.pop('patients shown')}. Individual predictions (posterior median of the "
        "prediction over draws) at the observation times, all 32 patients:",
        "",
        "| quantity | value |",
        "|---|---|",
        *(f"| {k} | {v:.3g} |" for k, v in numbers.items()),
        "",
    ]
    lines += ["## Context", "", *CONTEXT_NOTE, ""]
    if not nuts:
        lines += ["## Why not NUTS", "", *NUTS_NOTE, ""]
    text = "\n".join(lines)
    Path(args.out).with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
