"""twinrx's Bayesian fitting vs Stan (PyStan 3), side by side in one run.

Same data, same priors, same chains, warmup and draws on both sides; ESS is measured by the
same estimator for both (:func:`twinrx.infer.ess_bulk`, rank-normalised bulk ESS, on
``(chain, draw)`` arrays). ESS/s = ESS / sampling wall time including warmup, excluding
compilation: twinrx runs once untimed to compile, then is timed with another seed (a
repeat call with data of the same shape does not compile again; any JAX compilation inside
the timed call is measured and reported, with ESS/s without it); Stan models are built (compiled) once,
untimed, and every timed Stan run has a new seed (and httpstan's cache of finished fits is
emptied first, so that a run is never a cache hit).

Cases
-----
1. ``population, closed form``: the population model of ``theo_sd.csv`` (12 patients,
   theophylline, 132 concentrations) with card ``one_cpt_oral`` and additive error::

       CL, V, KA   ~ LogNormal(log(card value), 1)     (twinrx's default prior)
       omega_P     ~ HalfNormal(s_P)                   (s_P from PopulationModel.build)
       sigma_CP    ~ HalfNormal(SD of the observations)
       z_P[i]      ~ Normal(0, 1);   P_i = P * exp(omega_P * z_P[i])
       CP[i, k]    ~ Normal(C(t_ik; CL_i, V_i, KA_i), sigma_CP)

   The prior scales are read from twinrx's model (``pop.prior(name)``) and passed to Stan
   as data, so both programs state exactly the same posterior. Stan: the analytic
   one-compartment oral solution. ESS: the minimum over the typical values CL, V, KA.
2. ``population, ODE``: the same posterior, predictions by an ODE solver: twinrx
   ``solver="ode"`` (Tsit5), Stan ``ode_rk45_tol`` (Dormand-Prince); rtol 1e-6, atol 1e-9
   (twinrx's defaults) and at most 256 steps per interval on both sides. Both compute
   gradients by forward sensitivities (twinrx's default for fitting; its reverse mode
   through the solver's checkpointed steps costs about 10 times more). Fewer draws than
   the other cases.
3. ``100 patients, individual NUTS``: 100 patients simulated from the case-1 posterior
   medians (320 mg oral at t = 0, 10 concentrations over 24 h), each patient's random
   effects fitted with the population values held at those medians. twinrx: one call
   ``fit(m, data100, method="nuts", prior=popfit, sampler=...)``, with one joint sampler
   over all patients, and with a sampler per patient (lock-step under vmap); Stan: a
   serial loop, one fit per patient (the usual per-patient workflow), and, for reference,
   the same 100 patients in one Stan model. Aggregate ESS/s = sum over patients of the
   minimum bulk ESS over CL_i, V_i, KA_i, divided by the wall time of the whole set.
   ``1 patient per call``: the one-patient model, the first patients one call (one fit)
   each on both sides, as a clinician's precision-dosing request would run; and the same
   with the ODE model on both sides (``..., ODE``: twinrx ``solver="ode"``, Stan
   ``ode_rk45_tol``; tolerances and steps as in case 2).
4. ``1,000 patients, MAP``: ``fit(m, data1000, method="map", prior=popfit)``, timed on the
   second call. PyStan 3 has no optimiser (httpstan exposes only NUTS and fixed-parameter
   sampling, and ``log_prob``/``grad_log_prob`` go through one HTTP request each), so the
   reference is a serial scipy BFGS loop with the analytic gradient in NumPy; the modes
   of both are compared.

Run: ``python benchmarks/fit.py [--quick]`` (the first run also compiles the three Stan
models, a few minutes; httpstan keeps them in its cache). Results:
``benchmarks/results/fit.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata as md
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.optimize

import twinrx  # noqa: I001  (enables float64 in JAX first)
from twinrx.infer import FitData, PopulationModel, ess_bulk, fit
from twinrx.infer.fit import population_estimates

# Every CPU core a JAX device, as the command line does: chains (and per-patient samplers)
# run on all cores, as PyStan runs its chains in parallel processes.
DEVICES = twinrx.use_cpu_cores()

ROOT = Path(__file__).resolve().parents[1]
THEO = ROOT.parent / "shared" / "data" / "theo_sd.csv"
RESULTS = ROOT / "benchmarks" / "results" / "fit.md"
TYPICAL = ("CL", "V", "KA")
SIM_TIMES = np.array([0.25, 0.5, 1.0, 2.0, 3.5, 5.0, 7.0, 9.0, 12.0, 24.0])
SIM_DOSE = 320.0
RTOL, ATOL, MAX_STEPS = 1e-6, 1e-9, 4096

# ------------------------------------------------------------------------------ Stan programs
_CONC = r"""
functions {
  // One-compartment oral model, bolus doses into the depot (F = 1): superposition of the
  // analytic solution.
  vector conc(vector t, vector t_dose, vector amt, int nd, real CL, real V, real KA) {
    real k = CL / V;
    vector[rows(t)] c = rep_vector(0, rows(t));
    for (j in 1:nd) {
      for (i in 1:rows(t)) {
        real dt = t[i] - t_dose[j];
        if (dt >= 0) c[i] += amt[j] * KA / (V * (KA - k)) * (exp(-k * dt) - exp(-KA * dt));
      }
    }
    return c;
  }
}
"""
_DATA = r"""
  int<lower=1> N;
  int<lower=1> K;
  array[N] int<lower=1, upper=K> n_obs;
  array[N] vector[K] t_obs;
  array[N] vector[K] y;
"""
_POP_PARAMS = r"""
parameters {
  real<lower=0> CL;
  real<lower=0> V;
  real<lower=0> KA;
  vector<lower=0>[3] omega;  // CL, V, KA
  real<lower=0> sigma;
  matrix[N, 3] z;
}
"""
_POP_PRIORS = r"""
  CL ~ lognormal(prior_loc[1], prior_sd[1]);
  V ~ lognormal(prior_loc[2], prior_sd[2]);
  KA ~ lognormal(prior_loc[3], prior_sd[3]);
  omega ~ normal(0, omega_scale);
  sigma ~ normal(0, sigma_scale);
  to_vector(z) ~ std_normal();
"""
_DOSE_DATA = r"""
  int<lower=1> D;
  array[N] int<lower=1, upper=D> n_dose;
  array[N] vector[D] t_dose;
  array[N] vector[D] amt;
"""
_PRIOR_DATA = r"""
  vector[3] prior_loc;
  vector<lower=0>[3] prior_sd;
  vector<lower=0>[3] omega_scale;
  real<lower=0> sigma_scale;
"""

STAN_POP_CLOSED = (
    _CONC
    + "data {"
    + _DATA
    + _DOSE_DATA
    + _PRIOR_DATA
    + "}\n"
    + _POP_PARAMS
    + "model {"
    + _POP_PRIORS
    + r"""
  for (i in 1:N) {
    int n = n_obs[i];
    vector[n] f = conc(t_obs[i][1:n], t_dose[i], amt[i], n_dose[i], CL * exp(omega[1] * z[i, 1]),
                       V * exp(omega[2] * z[i, 2]), KA * exp(omega[3] * z[i, 3]));
    y[i][1:n] ~ normal(f, sigma);
  }
}
"""
)

_RHS = r"""
functions {
  vector rhs(real t, vector a, real CL, real V, real KA) {
    vector[2] da;
    da[1] = -KA * a[1];
    da[2] = KA * a[1] - CL / V * a[2];
    return da;
  }
}
"""

STAN_POP_ODE = (
    _RHS
    + r"""data {"""
    + _DATA
    + r"""
  array[N] int<lower=0, upper=K> n_zero;  // leading observations at the dose time (t = 0)
  array[N] real<lower=0> amt;  // one bolus into the depot at t = 0
  real<lower=0> rtol;
  real<lower=0> atol;
  int<lower=1> max_steps;
"""
    + _PRIOR_DATA
    + "}\n"
    + _POP_PARAMS
    + "model {"
    + _POP_PRIORS
    + r"""
  for (i in 1:N) {
    int n = n_obs[i];
    int n0 = n_zero[i];
    real CLi = CL * exp(omega[1] * z[i, 1]);
    real Vi = V * exp(omega[2] * z[i, 2]);
    real KAi = KA * exp(omega[3] * z[i, 3]);
    array[n - n0] vector[2] a = ode_rk45_tol(rhs, [amt[i], 0]', 0, to_array_1d(t_obs[i][(n0 + 1):n]),
                                             rtol, atol, max_steps, CLi, Vi, KAi);
    if (n0 > 0) y[i][1:n0] ~ normal(0, sigma);  // the central compartment is empty at t = 0
    for (k in 1:(n - n0)) y[i][n0 + k] ~ normal(a[k][2] / Vi, sigma);
  }
}
"""
)

STAN_INDIVIDUAL = (
    _CONC
    + "data {"
    + _DATA
    + _DOSE_DATA
    + r"""  vector<lower=0>[3] theta;  // population values held fixed: CL, V, KA
  vector<lower=0>[3] omega;
  real<lower=0> sigma;
}
parameters {
  matrix[N, 3] z;
}
model {
  to_vector(z) ~ std_normal();
  for (i in 1:N) {
    int n = n_obs[i];
    vector[n] f = conc(t_obs[i][1:n], t_dose[i], amt[i], n_dose[i], theta[1] * exp(omega[1] * z[i, 1]),
                       theta[2] * exp(omega[2] * z[i, 2]), theta[3] * exp(omega[3] * z[i, 3]));
    y[i][1:n] ~ normal(f, sigma);
  }
}
"""
)


# ------------------------------------------------------------------------------ data
def frame_to_arrays(frame: pd.DataFrame) -> dict:
    """Per-patient doses and observations of a NONMEM frame (ID, TIME, DV, AMT, EVID), as
    padded arrays for Stan."""
    pats = []
    for _, g in frame.groupby("ID", sort=False):
        dose = g[g.EVID != 0]
        obs = g[g.EVID == 0].sort_values("TIME", kind="stable")
        pats.append((dose.TIME.to_numpy(float), dose.AMT.to_numpy(float), obs.TIME.to_numpy(float), obs.DV))
    N, K, D = len(pats), max(len(p[2]) for p in pats), max(len(p[0]) for p in pats)
    out = {
        "N": N,
        "K": K,
        "D": D,
        "n_obs": [len(p[2]) for p in pats],
        "n_dose": [len(p[0]) for p in pats],
        "t_obs": np.zeros((N, K)),
        "y": np.zeros((N, K)),
        "t_dose": np.zeros((N, D)),
        "amt": np.zeros((N, D)),
    }
    for i, (td, a, to, y) in enumerate(pats):
        out["t_dose"][i, : len(td)], out["amt"][i, : len(a)] = td, a
        out["t_obs"][i, : len(to)], out["y"][i, : len(y)] = to, y
        out["t_obs"][i, len(to) :] = to[-1]
    return out


def ode_arrays(arr: dict) -> dict:
    """The ODE program's data: one dose at t = 0 per patient (true of theo_sd), and the
    number of observations at t = 0."""
    if max(arr["n_dose"]) != 1 or np.any(arr["t_dose"][:, 0] != 0):
        raise ValueError("the Stan ODE program takes one dose at t = 0 per patient")
    keep = ("N", "K", "n_obs", "t_obs", "y")
    return {
        **{k: arr[k] for k in keep},
        "n_zero": [int(np.sum(t[:n] == 0)) for t, n in zip(arr["t_obs"], arr["n_obs"])],
        "amt": arr["amt"][:, 0],
        "rtol": RTOL,
        "atol": ATOL,
        "max_steps": MAX_STEPS,
    }


def conc(t, amt, CL, V, KA):
    """Concentration after one oral dose at t = 0 (NumPy; broadcasts)."""
    k = CL / V
    return amt * KA / (V * (KA - k)) * (np.exp(-k * t) - np.exp(-KA * t))


def simulate_patients(n: int, est: dict, seed: int) -> pd.DataFrame:
    """``n`` patients from the population values ``est`` (typical values, omega_*,
    sigma_CP): 320 mg oral at t = 0, concentrations at SIM_TIMES, additive error."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        p = {q: float(est[q]) * np.exp(float(est[f"omega_{q}"]) * rng.standard_normal()) for q in TYPICAL}
        y = conc(SIM_TIMES, SIM_DOSE, p["CL"], p["V"], p["KA"])
        y = y + float(est["sigma_CP"]) * rng.standard_normal(y.shape)
        rows.append((i + 1, 0.0, 0.0, SIM_DOSE, 1, 1))
        rows += [(i + 1, t, float(v), 0.0, 0, 2) for t, v in zip(SIM_TIMES, y)]
    return pd.DataFrame(rows, columns=["ID", "TIME", "DV", "AMT", "EVID", "CMT"])


# ------------------------------------------------------------------------------ timing
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_seconds = [0.0]


def _on_event(event, duration, **kwargs):
    if event in _COMPILE_EVENTS:
        _compile_seconds[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_event)


def timed(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, its wall time and the part of it JAX spent tracing and
    compiling."""
    c0 = _compile_seconds[0]
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    jax.block_until_ready(jax.tree.leaves(getattr(out, "samples", out)))
    return out, time.perf_counter() - t0, _compile_seconds[0] - c0


# ------------------------------------------------------------------------------ Stan
STAN_INDIVIDUAL_ODE = (
    _RHS
    + r"""data {
  int<lower=1> K;
  int<lower=1, upper=K> n_obs;
  vector[K] t_obs;
  vector[K] y;
  int<lower=0, upper=K> n_zero;  // leading observations at the dose time (t = 0)
  real<lower=0> amt;  // one bolus into the depot at t = 0
  real<lower=0> rtol;
  real<lower=0> atol;
  int<lower=1> max_steps;
  vector<lower=0>[3] theta;  // population values held fixed: CL, V, KA
  vector<lower=0>[3] omega;
  real<lower=0> sigma;
}
parameters {
  vector[3] z;
}
model {
  int n = n_obs;
  real CLi = theta[1] * exp(omega[1] * z[1]);
  real Vi = theta[2] * exp(omega[2] * z[2]);
  real KAi = theta[3] * exp(omega[3] * z[3]);
  z ~ std_normal();
  array[n - n_zero] vector[2] a = ode_rk45_tol(rhs, [amt, 0]', 0, to_array_1d(t_obs[(n_zero + 1):n]),
                                               rtol, atol, max_steps, CLi, Vi, KAi);
  if (n_zero > 0) y[1:n_zero] ~ normal(0, sigma);
  for (k in 1:(n - n_zero)) y[n_zero + k] ~ normal(a[k][2] / Vi, sigma);
}
"""
)


@contextlib.contextmanager
def _quiet():
    """PyStan 3 writes progress and Stan's messages to the console: keep them out."""
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
        yield buf


def _patch_stanc_timeout() -> None:
    """httpstan runs stanc with a 1-second timeout, which a busy machine can exceed; retry."""
    import subprocess

    import httpstan.compile

    if getattr(httpstan.compile.compile, "_retrying", False):
        return
    original = httpstan.compile.compile

    def compile_with_retry(program_code, stan_model_name):
        for attempt in range(10):
            try:
                return original(program_code, stan_model_name)
            except subprocess.TimeoutExpired:
                if attempt == 9:
                    raise
                time.sleep(1.0)

    compile_with_retry._retrying = True
    httpstan.compile.compile = compile_with_retry


def stan_prebuild(code: str) -> float:
    """Compile a Stan program into httpstan's cache without PyStan's HTTP client, whose
    5-minute timeout a C++ build on a busy 2-core machine can exceed. Returns seconds."""
    import asyncio

    import httpstan.cache
    import httpstan.models

    _patch_stanc_timeout()
    name = httpstan.models.calculate_model_name(code)
    t0 = time.perf_counter()
    try:
        httpstan.models.import_services_extension_module(name)
    except KeyError:
        httpstan.cache.delete_model_directory(name)
        _, warnings = httpstan.compile.compile(code, f"model_{name.split('/')[1]}")
        httpstan.cache.dump_stanc_warnings(warnings, name)
        out = asyncio.run(httpstan.models.build_services_extension_module(code))
        httpstan.cache.dump_services_extension_module_compiler_output(out, name)
    d = httpstan.cache.model_directory(name)
    if not (d / "stderr.log").exists():  # a build whose client timed out
        httpstan.cache.dump_services_extension_module_compiler_output("", name)
    if not (d / "stanc.log").exists():
        httpstan.cache.dump_stanc_warnings("", name)
    return time.perf_counter() - t0


def stan_build(code: str, data: dict, seed: int):
    """``stan.build`` of a program already in httpstan's cache (see :func:`stan_prebuild`)."""
    import stan

    _patch_stanc_timeout()
    with _quiet():
        return stan.build(code, data=_jsonable(data), random_seed=seed)


def _jsonable(d: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


def _purge_fit_cache(posterior) -> None:
    """httpstan stores every finished fit with a seed and returns it for the same request;
    delete them so that a timed run samples."""
    import httpstan.cache

    d = httpstan.cache.model_directory(posterior.model_name)
    for f in d.glob("**/*.jsonlines.gz") if d.exists() else ():
        f.unlink()


_GRAD_RE = re.compile(r"Gradient evaluation took ([0-9.eE+-]+) seconds")


def stan_sample(posterior, s: dict, init=None):
    """NUTS with ``s["chains"]``, ``s["warmup"]``, ``s["draws"]``; returns the fit and
    the median of Stan's own per-chain timing of one gradient (seconds)."""
    _purge_fit_cache(posterior)
    kw = {"num_chains": s["chains"], "num_warmup": s["warmup"], "num_samples": s["draws"]}
    kw.update(delta=0.8, max_depth=10)
    if init is not None:
        kw["init"] = [dict(init) for _ in range(s["chains"])]
    with _quiet() as buf:
        out = posterior.sample(**kw)
    _purge_fit_cache(posterior)
    grads = [float(g) for g in _GRAD_RE.findall(buf.getvalue())]
    return out, (float(np.median(grads)) if grads else float("nan"))


def stan_draws(stan_fit, name: str) -> np.ndarray:
    """Draws of one scalar (``"CL"``, ``"z.3.1"``) as ``(chain, draw)``."""
    names = list(stan_fit.sample_and_sampler_param_names) + list(stan_fit.constrained_param_names)
    return np.asarray(stan_fit._draws[names.index(name)]).T


def stan_z(stan_fit, N: int) -> np.ndarray:
    """The random effects ``z`` as ``(chain, draw, N, 3)``."""
    cols = [[stan_draws(stan_fit, f"z.{i + 1}.{j + 1}") for j in range(3)] for i in range(N)]
    return np.stack([np.stack(c, -1) for c in cols], -2)


# ------------------------------------------------------------------------------ cases
def _row(case, program, seconds, ess, **kw):
    row = {"case": case, "program": program, "seconds": seconds, "ess": ess, "compile": None}
    row.update(steps=None, divergent=None, notes="", med=None)
    row.update(kw)
    return row


def _min_ess(draws: dict, names=TYPICAL) -> float:
    return float(min(float(ess_bulk(draws[p])) for p in names))


def _twinrx_nuts(settings, *args, **kwargs):
    """The timed twinrx NUTS call, after an untimed one that compiles (seed 100) unless
    ``settings["warm"]`` is False."""
    if settings["warm"]:
        fit(*args, **{**kwargs, "seed": 100})
    return timed(fit, *args, **{**kwargs, "seed": 1})


def population_case(m, data, arr, pop, settings, *, solver):
    label = "population, closed form" if solver is None else "population, ODE"
    s = settings if solver is None else settings["ode"]
    kw = dict(method="nuts", error={"CP": "additive"}, chains=s["chains"], warmup=s["warmup"])
    kw.update(draws=s["draws"], solver=solver)
    if solver == "ode":
        kw.update(rtol=RTOL, atol=ATOL, max_steps=settings["ode_max_steps"])
    f, tw, tc = _twinrx_nuts(settings, m, data, **kw)
    names = (*TYPICAL, "omega_CL", "omega_V", "omega_KA", "sigma_CP")
    tw_draws = {k: f.samples[k] for k in names}
    rows = [
        _row(
            label,
            "twinrx (numpyro NUTS)",
            tw,
            _min_ess(tw_draws),
            compile=tc,
            steps=float(np.mean(f.stats["n_steps"])),
            divergent=int(np.sum(f.stats["diverging"])),
            notes=f"min ESS over all population sites {_min_ess(tw_draws, names):.0f}",
            med={k: float(np.median(v)) for k, v in tw_draws.items()},
        )
    ]
    prior = {
        "prior_loc": [float(pop.prior(p).loc) for p in TYPICAL],
        "prior_sd": [float(pop.prior(p).scale) for p in TYPICAL],
        "omega_scale": [float(pop.prior(f"omega_{p}").scale) for p in TYPICAL],
        "sigma_scale": float(pop.prior("sigma_CP").scale),
    }
    if solver is None:
        code, sdata = STAN_POP_CLOSED, {**arr, **prior}
    else:
        sdata = {**ode_arrays(arr), **prior, "max_steps": settings["ode_max_steps"]}
        code = STAN_POP_ODE
    # Inits: the prior medians (numpyro's init_to_median starts near them), z = 0.
    init = {
        **{p: float(np.exp(pop.prior(p).loc)) for p in TYPICAL},
        "omega": [0.674 * s for s in prior["omega_scale"]],
        "sigma": 0.674 * prior["sigma_scale"],
        "z": np.zeros((arr["N"], 3)).tolist(),
    }
    stan_prebuild(code)
    post = stan_build(code, sdata, seed=settings["seed"] + (7 if solver else 3))
    t0 = time.perf_counter()
    sf, grad = stan_sample(post, s, init=init)
    ts = time.perf_counter() - t0
    st_draws = {p: stan_draws(sf, p) for p in TYPICAL}
    st_draws |= {f"omega_{p}": stan_draws(sf, f"omega.{j + 1}") for j, p in enumerate(TYPICAL)}
    st_draws["sigma_CP"] = stan_draws(sf, "sigma")
    rows.append(
        _row(
            label,
            "Stan (PyStan 3)",
            ts,
            _min_ess(st_draws),
            compile=0.0,
            steps=float(np.mean(stan_draws(sf, "n_leapfrog__"))),
            divergent=int(np.sum(stan_draws(sf, "divergent__"))),
            notes=f"min ESS over all population sites {_min_ess(st_draws, names):.0f}; "
            f"Stan's gradient timing {grad * 1e6:.0f} us",
            med={k: float(np.median(v)) for k, v in st_draws.items()},
        )
    )
    return rows, f


def gradient_costs(m, data, settings) -> list[tuple[str, float]]:
    """Seconds per log-density gradient of the case-1 posterior in twinrx (jit, warm; one
    chain, and 4 chains under vmap as the vectorised sampler evaluates them), at the prior
    medians."""
    from numpyro.infer import init_to_median
    from numpyro.infer.util import initialize_model

    out = []
    variants = [("closed form", {})]
    variants += [
        (f"ODE, max_steps {k}", {"solver": "ode", "max_steps": k}) for k in settings["grad_max_steps"]
    ]
    for label, opts in variants:
        pop = PopulationModel.build(m, data, error={"CP": "additive"}, **opts)
        # at the prior medians (a random initial point can be extreme, where an ODE solve
        # takes thousands of steps)
        info = initialize_model(jax.random.key(0), pop, model_args=(data,), init_strategy=init_to_median)
        z = info.param_info.z
        vg = jax.value_and_grad(info.potential_fn)
        z4 = jax.tree.map(lambda a: jnp.stack([a] * 4), z)
        for chains, fn, arg in ((1, jax.jit(vg), z), (4, jax.jit(jax.vmap(vg)), z4)):
            jax.block_until_ready(fn(arg))
            best = np.inf
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(3):
                    jax.block_until_ready(fn(arg))
                best = min(best, (time.perf_counter() - t0) / 3)
            out.append((f"{label}, {chains} chain{'s' if chains > 1 else ''}", best))
    return out


def _held(est) -> dict:
    """The population values an individual Stan fit holds, as Stan data."""
    return {
        "theta": [float(est[p]) for p in TYPICAL],
        "omega": [float(est[f"omega_{p}"]) for p in TYPICAL],
        "sigma": float(est["sigma_CP"]),
    }


def _twinrx_serial(m, data, n1, kw, settings, label, program):
    """One twinrx ``fit`` call per patient for the first ``n1`` patients (compiled once
    beforehand unless ``settings["warm"]`` is False): the row of the serial loop."""
    if settings["warm"]:
        fit(m, data.select([0]), **{**kw, "seed": 100})
    t0, c0 = time.perf_counter(), _compile_seconds[0]
    ess_one, steps_one, div_one = [], [], 0
    for i in range(n1):
        f1 = fit(m, data.select([i]), **{**kw, "seed": 1 + i})
        ess_one.append(min(float(ess_bulk(f1.samples[f"z_{p}"][..., 0])) for p in TYPICAL))
        steps_one.append(float(np.mean(f1.stats["n_steps"])))
        div_one += int(np.sum(f1.stats["diverging"]))
    t_one = time.perf_counter() - t0
    return _row(
        label,
        program,
        t_one,
        float(np.sum(ess_one)),
        compile=_compile_seconds[0] - c0,
        steps=float(np.mean(steps_one)),
        divergent=div_one,
        notes=f"worst patient ESS {min(ess_one):.0f}; {t_one / n1:.2f} s per patient",
    )


def individual_case(m, popfit, n, settings):
    est = population_estimates(popfit)
    frame = simulate_patients(n, est, seed=settings["seed"] + 11)
    data = FitData.from_nonmem(m, frame)
    arr = frame_to_arrays(frame)
    label = f"{n} patients, individual NUTS"
    kw = dict(method="nuts", prior=popfit, chains=settings["chains"], warmup=settings["warmup"])
    kw["draws"] = settings["draws"]
    rows = []
    for sampler in ("joint", "per_patient"):
        f, tw, tc = _twinrx_nuts(settings, m, data, sampler=sampler, **kw)
        ess_tw = np.min(np.stack([ess_bulk(f.samples[f"z_{p}"]) for p in TYPICAL]), axis=0)
        what = (
            "one sampler over all patients" if sampler == "joint" else "a sampler per patient, lock-step vmap"
        )
        rows.append(
            _row(
                label,
                f"twinrx, one call, sampler='{sampler}' ({what})",
                tw,
                float(np.sum(ess_tw)),
                compile=tc,
                steps=float(np.mean(f.stats["n_steps"])),
                divergent=int(np.sum(f.stats["diverging"])),
                notes=f"worst patient ESS {np.min(ess_tw):.0f}",
            )
        )
    # One patient at a time (the precision-dosing call): a serial loop over the first
    # patients, each call compiled once beforehand (same shapes: one compilation).
    n1 = min(n, settings["n_serial"])
    one_label = f"1 patient per call ({n1} patients, serial), individual NUTS"
    program = "twinrx, serial loop (one call per patient, sampler='auto': per patient)"
    rows.append(_twinrx_serial(m, data, n1, kw, settings, one_label, program))
    fixed = _held(est)

    def patient(i):
        return {
            "N": 1,
            "K": arr["K"],
            "D": arr["D"],
            **{k: [arr[k][i]] for k in ("n_obs", "n_dose")},
            **{k: arr[k][i : i + 1] for k in ("t_obs", "y", "t_dose", "amt")},
            **fixed,
        }

    stan_prebuild(STAN_INDIVIDUAL)
    ess_st, div, steps, each = [], 0, [], []
    t0 = time.perf_counter()
    for i in range(n):
        t_i = time.perf_counter()
        post = stan_build(STAN_INDIVIDUAL, patient(i), seed=settings["seed"] + 1000 + i)
        sf, _ = stan_sample(post, settings)
        z = stan_z(sf, 1)[:, :, 0]
        ess_st.append(min(float(ess_bulk(z[..., j])) for j in range(3)))
        div += int(np.sum(stan_draws(sf, "divergent__")))
        steps.append(np.mean(stan_draws(sf, "n_leapfrog__")))
        each.append(time.perf_counter() - t_i)
    ts = time.perf_counter() - t0
    rows.append(
        _row(
            one_label,
            "Stan, serial loop (one fit per patient)",
            float(np.sum(each[:n1])),
            float(np.sum(ess_st[:n1])),
            compile=0.0,
            steps=float(np.mean(steps[:n1])),
            notes=f"worst patient ESS {min(ess_st[:n1]):.0f}; {np.mean(each[:n1]):.2f} s per patient",
        )
    )
    rows.append(
        _row(
            label,
            "Stan, serial loop (one fit per patient)",
            ts,
            float(np.sum(ess_st)),
            compile=0.0,
            steps=float(np.mean(steps)),
            divergent=div,
            notes=f"worst patient ESS {min(ess_st):.0f}; {ts / n:.2f} s per patient",
        )
    )
    # For reference: all patients in one Stan model (what twinrx does).
    post = stan_build(STAN_INDIVIDUAL, {**arr, **fixed}, seed=settings["seed"] + 5)
    t0 = time.perf_counter()
    sf, _ = stan_sample(post, settings)
    tj = time.perf_counter() - t0
    z = stan_z(sf, n)
    ess_j = np.min(np.stack([ess_bulk(z[..., j]) for j in range(3)]), axis=0)
    rows.append(
        _row(
            label,
            "Stan, one model over all patients",
            tj,
            float(np.sum(ess_j)),
            compile=0.0,
            steps=float(np.mean(stan_draws(sf, "n_leapfrog__"))),
            divergent=int(np.sum(stan_draws(sf, "divergent__"))),
            notes=f"worst patient ESS {np.min(ess_j):.0f}",
        )
    )
    rows.sort(key=lambda r: r["case"] == one_label)  # stable: the n-patient rows first
    return rows


def individual_ode_case(m, popfit, settings):
    """One patient per call with the ODE model on both sides (the first ``n_serial`` of
    case 3's patients): twinrx ``solver="ode"`` (Tsit5, gradients by forward
    sensitivities), Stan ``ode_rk45_tol`` (forward sensitivities too)."""
    est = population_estimates(popfit)
    n1 = settings["n_serial"]
    frame = simulate_patients(settings["n_ind"], est, seed=settings["seed"] + 11)
    frame = frame[frame.ID <= n1]
    data = FitData.from_nonmem(m, frame)
    arr = ode_arrays(frame_to_arrays(frame))
    label = f"1 patient per call ({n1} patients, serial), individual NUTS, ODE"
    kw = dict(method="nuts", prior=popfit, chains=settings["chains"], warmup=settings["warmup"])
    kw.update(
        draws=settings["draws"], solver="ode", rtol=RTOL, atol=ATOL, max_steps=settings["ode_max_steps"]
    )
    program = "twinrx, serial loop (one call per patient, per-patient sampler)"
    rows = [_twinrx_serial(m, data, n1, kw, settings, label, program)]
    fixed = {**_held(est), "rtol": RTOL, "atol": ATOL, "max_steps": settings["ode_max_steps"]}
    stan_prebuild(STAN_INDIVIDUAL_ODE)
    ess_st, div, steps, each = [], 0, [], []
    for i in range(n1):
        sdata = {
            "K": arr["K"],
            "n_obs": arr["n_obs"][i],
            "t_obs": arr["t_obs"][i],
            "y": arr["y"][i],
            "n_zero": arr["n_zero"][i],
            "amt": float(arr["amt"][i]),
            **fixed,
        }
        t_i = time.perf_counter()
        post = stan_build(STAN_INDIVIDUAL_ODE, sdata, seed=settings["seed"] + 2000 + i)
        sf, _ = stan_sample(post, settings)
        each.append(time.perf_counter() - t_i)
        z = np.stack([stan_draws(sf, f"z.{j + 1}") for j in range(3)], -1)
        ess_st.append(min(float(ess_bulk(z[..., j])) for j in range(3)))
        div += int(np.sum(stan_draws(sf, "divergent__")))
        steps.append(np.mean(stan_draws(sf, "n_leapfrog__")))
    rows.append(
        _row(
            label,
            "Stan, serial loop (one fit per patient)",
            float(np.sum(each)),
            float(np.sum(ess_st)),
            compile=0.0,
            steps=float(np.mean(steps)),
            divergent=div,
            notes=f"worst patient ESS {min(ess_st):.0f}; {np.mean(each):.2f} s per patient",
        )
    )
    return rows


def _neg_log_post(x, t, y, amt, theta, omega, sigma):
    """Minus the log posterior density of one patient's z (up to a constant) and its
    gradient: z ~ N(0, I), y ~ N(C(t; theta * exp(omega * z)), sigma)."""
    CL, V, KA = theta * np.exp(omega * x)
    k = CL / V
    ek, ea = np.exp(-k * t), np.exp(-KA * t)
    g = ek - ea
    A = amt / V
    c = A * KA * g / (KA - k)
    dc_dk = A * KA * (-t * ek / (KA - k) + g / (KA - k) ** 2)
    dc_dka = A * (g / (KA - k) - KA * g / (KA - k) ** 2 + KA * t * ea / (KA - k))
    dlog = np.stack([k * dc_dk, -c - k * dc_dk, KA * dc_dka])  # d c / d log(CL, V, KA)
    r = (y - c) / sigma**2
    value = 0.5 * x @ x + 0.5 * np.sum((y - c) ** 2) / sigma**2
    grad = x - omega * (dlog @ r)
    return value, grad


def map_case(m, popfit, n, settings):
    est = population_estimates(popfit)
    frame = simulate_patients(n, est, seed=settings["seed"] + 13)
    data = FitData.from_nonmem(m, frame)
    arr = frame_to_arrays(frame)
    label = f"{n:,} patients, MAP"
    _, t_first, c_first = timed(fit, m, data, method="map", prior=popfit)
    f, tw, tc = timed(fit, m, data, method="map", prior=popfit)
    z_tw = np.stack([f.samples[f"z_{p}"][0, 0] for p in TYPICAL], -1)
    theta = np.array([float(est[p]) for p in TYPICAL])
    omega = np.array([float(est[f"omega_{p}"]) for p in TYPICAL])
    sigma = float(est["sigma_CP"])
    z_sp, ok = np.zeros((n, 3)), 0
    t0 = time.perf_counter()
    for i in range(n):
        k = arr["n_obs"][i]
        r = scipy.optimize.minimize(
            _neg_log_post,
            np.zeros(3),
            args=(arr["t_obs"][i, :k], arr["y"][i, :k], arr["amt"][i, 0], theta, omega, sigma),
            jac=True,
            method="BFGS",
            options={"gtol": 1e-8},
        )
        # BFGS may stop on "precision loss" at gtol 1e-8: count a small gradient as converged.
        z_sp[i], ok = r.x, ok + bool(r.success or np.max(np.abs(r.jac)) < 1e-6)
    ts = time.perf_counter() - t0
    diff = float(np.max(np.abs(z_tw - z_sp)))
    return [
        _row(
            label,
            "twinrx (vmapped BFGS, second call)",
            tw,
            None,
            compile=tc,
            notes=f"{int(np.sum(f.info['converged']))}/{n} converged; first call {t_first:.1f} s "
            f"({c_first:.1f} s compilation)",
        ),
        _row(
            label,
            "Stan: n/a (PyStan 3 has no optimizer); scipy BFGS per patient, NumPy gradient",
            ts,
            None,
            notes=f"{ok}/{n} converged; max abs difference of the modes (z) {diff:.1e}",
        ),
    ]


# ------------------------------------------------------------------------------ report
def machine_info() -> dict:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"CPU": f"{cpu}, {os.cpu_count()} cores", "Python": platform.python_version()}
    for pkg in ("twinrx", "jax", "jaxlib", "numpyro", "pystan", "httpstan", "scipy"):
        with contextlib.suppress(md.PackageNotFoundError):
            info[pkg] = md.version(pkg)
    with contextlib.suppress(Exception):
        import httpstan

        stanc = Path(httpstan.__file__).parent / "stanc"
        info["stanc"] = subprocess.run(
            [str(stanc), "--version"], capture_output=True, text=True
        ).stdout.strip()
    cc = shutil.which("c++") or shutil.which("g++")
    if cc:
        info["C++"] = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    with contextlib.suppress(OSError):
        info["load average at the end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return info


def _f(x, fmt):
    return "" if x is None else format(x, fmt)


def table(rows) -> str:
    out = [
        "| case | program | wall s | of which compilation s | ESS | ESS/s | ESS/s without compilation "
        "| leapfrog steps/draw | divergent | notes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        rate = None if r["ess"] is None else r["ess"] / r["seconds"]
        net = None
        if r["ess"] is not None and r["compile"] is not None:
            net = r["ess"] / max(r["seconds"] - r["compile"], 1e-9)
        out.append(
            f"| {r['case']} | {r['program']} | {r['seconds']:.2f} | {_f(r['compile'], '.1f')} "
            f"| {_f(r['ess'], '.0f')} | {_f(rate, '.1f')} | {_f(net, '.1f')} | {_f(r['steps'], '.1f')} "
            f"| {_f(r['divergent'], 'd')} | {r['notes']} |"
        )
    return "\n".join(out)


def medians_table(rows) -> str:
    pops = [r for r in rows if r["med"]]
    names = list(pops[0]["med"])
    out = ["| case | program | " + " | ".join(names) + " |", "| --- | --- |" + " ---: |" * len(names)]
    for r in pops:
        out.append(
            f"| {r['case']} | {r['program']} | " + " | ".join(f"{r['med'][k]:.4g}" for k in names) + " |"
        )
    return "\n".join(out)


def grad_table(grads, rows) -> str:
    out = ["| program | log-density gradient (12 patients) | us |", "| --- | --- | ---: |"]
    out += [f"| twinrx (jit, warm) | {lab} | {sec * 1e6:.0f} |" for lab, sec in grads]
    for r in rows:
        if r["program"].startswith("Stan") and "gradient timing" in r["notes"]:
            us = r["notes"].split("gradient timing ")[1].split(" us")[0]
            out.append(f"| Stan (its own timing, 1 chain) | {r['case'].split(', ')[1]} | {us} |")
    return "\n".join(out)


QUICK = {
    "chains": 4,
    "warmup": 150,
    "draws": 150,
    "ode": {"chains": 4, "warmup": 10, "draws": 10},
    "ode_max_steps": 256,
    "grad_max_steps": (),
    "n_ind": 10,
    "n_serial": 3,
    "n_map": 200,
    "seed": 2024,
    "warm": False,
}
FULL = {
    "chains": 4,
    "warmup": 500,
    "draws": 500,
    "ode": {"chains": 4, "warmup": 150, "draws": 150},
    "ode_max_steps": 256,
    "grad_max_steps": (256, 4096),
    "n_ind": 100,
    "n_serial": 10,
    "n_map": 1000,
    "seed": 2024,
    "warm": True,
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer draws and patients (< 5 minutes)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not THEO.exists():
        sys.exit(f"{THEO} is absent (the shared data sets are needed)")
    settings = QUICK if args.quick else FULL
    started = time.perf_counter()
    built = {k: stan_prebuild(c) for k, c in (("closed", STAN_POP_CLOSED), ("ode", STAN_POP_ODE))}
    built["individual"] = stan_prebuild(STAN_INDIVIDUAL)
    print("Stan models built (s): " + ", ".join(f"{k} {v:.1f}" for k, v in built.items()), flush=True)
    m = twinrx.get_model("one_cpt_oral")
    data = FitData.from_nonmem(m, THEO, covariate_units={"WT": "kg"})
    frame = pd.read_csv(THEO)
    arr = frame_to_arrays(frame[frame.ID.isin([int(i) for i in data.ids])])
    pop = PopulationModel.build(m, data, error={"CP": "additive"})
    rows, popfit = population_case(m, data, arr, pop, settings, solver=None)
    print(table(rows), flush=True)
    rows += population_case(m, data, arr, pop, settings, solver="ode")[0]
    print(table(rows[-2:]), flush=True)
    rows += individual_case(m, popfit, settings["n_ind"], settings)
    print(table(rows[-6:]), flush=True)
    rows += individual_ode_case(m, popfit, settings)
    print(table(rows[-2:]), flush=True)
    rows += map_case(m, popfit, settings["n_map"], settings)
    print(table(rows[-2:]), flush=True)
    grads = gradient_costs(m, data, settings)
    print(grad_table(grads, rows), flush=True)
    total = time.perf_counter() - started

    cmd = "python benchmarks/fit.py" + (" --quick" if args.quick else "")
    info = machine_info()
    s, so = settings, settings["ode"]
    text = [
        "# twinrx fitting vs Stan",
        "",
        f"Command: `{cmd}`; total {total / 60:.1f} min. Date: {datetime.date.today().isoformat()}.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in info.items()) + ".",
        "",
        f"NUTS on both sides: {s['chains']} chains, {s['warmup']} warmup + {s['draws']} draws each "
        f"(ODE case: {so['chains']} chains, {so['warmup']} + {so['draws']}), target acceptance 0.8, "
        "maximum tree depth 10, diagonal mass matrix. twinrx runs in one process with every CPU "
        f"core a JAX device (twinrx.use_cpu_cores(): {DEVICES}), its chains vectorised and split "
        "over them (per-patient samplers: patients x chains, split by patient, or by chain for one "
        "patient); PyStan runs one process per chain. ESS: twinrx.infer.ess_bulk "
        "(rank-normalised bulk ESS) on (chain, draw) arrays for both; population cases: the minimum "
        "over CL, V, KA; patient cases: the sum over patients of each patient's minimum over "
        "CL_i, V_i, KA_i. Wall time: sampling including warmup"
        + (
            ", twinrx timed on a second call after an untimed one (ODE case: one call)"
            if s["warm"]
            else " (--quick: one call, no untimed compiling call first; a smoke test, the ESS of "
            "its short runs means little)"
        )
        + "; Stan models built beforehand; for Stan it includes PyStan's per-fit overhead (HTTP "
        "to httpstan, draws parsed from JSON). 'of which compilation': JAX tracing, lowering "
        "and XLA compilation inside the timed call (jax.monitoring events). ODE: rtol 1e-6, "
        f"atol 1e-9, at most {s['ode_max_steps']} steps per interval on both sides; gradients by "
        "forward sensitivities on both sides.",
        "",
        table(rows),
        "",
        "Posterior medians (the two programs state the same posterior):",
        "",
        medians_table(rows),
        "",
        "Cost of one gradient of the log density of the case-1 posterior:",
        "",
        grad_table(grads, rows),
        "",
        __doc__.split("\n\n", 1)[1].split("Run:")[0].rstrip(),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text))
    print(f"\nwritten {args.out} ({total:.0f} s)")


if __name__ == "__main__":
    main()
