"""Fitting methods around the one population model: NUTS, MAP, Laplace and SVI; individual
fits from an earlier population fit; sequential updates.

All methods work in numpyro's unconstrained space. MAP is the mode of the posterior
density of the parameters as stated (no Jacobian); the Laplace approximation is a normal
distribution in the unconstrained space around the mode of the density there (with the
Jacobian), so that its draws, mapped back, respect the constraints.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optimistix as optx
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.infer import (
    MCMC,
    NUTS,
    SVI,
    Predictive,
    RenyiELBO,
    Trace_ELBO,
    autoguide,
    init_to_median,
    init_to_value,
)
from numpyro.infer.hmc import hmc
from numpyro.infer.util import constrain_fn, initialize_model, log_density, log_likelihood

from ..solve import _pad_patients
from .data import FitData
from .diagnostics import summarize
from .model import PopulationModel

__all__ = ["Fit", "fit", "update", "population_estimates", "METHODS"]

METHODS = ("nuts", "map", "laplace", "svi")


@dataclasses.dataclass
class Fit:
    """The result of a fit: draws ``(chain, draw, ...)`` of every site, with what made them.

    ``conditioned`` holds population values that were fixed (an individual fit under an
    earlier population fit's estimates); ``stats`` holds sampler statistics per draw.
    """

    pop: PopulationModel
    data: FitData
    method: str
    samples: dict[str, np.ndarray]
    stats: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    conditioned: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    seed: int = 0
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    cohort: Any = None  # the patients the data came from (needed by update)
    data_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_card(
        cls,
        model,
        *,
        error: Mapping[str, str] | None = None,
        values: Mapping[str, float] | None = None,
        variability: Mapping[str, float] | None = None,
    ) -> Fit:
        """A model card's population as a fit: the ``prior`` of an individual fit (the twin
        of one patient when no population fit of one's own data exists).

        Its population values are the card's typical values (held as the population
        model's ``fixed`` values), the standard deviations and correlations of its
        variability block, and its residual errors; ``values`` overrides any of them by
        name (``CL``, ``omega_CL``, ``sigma_CP``, ``sigma_CP_add``/``sigma_CP_prop`` for a
        combined error). ``error`` picks another residual-error kind per output; its
        magnitude must then be in ``values``.

        ``variability`` replaces the card's variability block by these parameters'
        standard deviations of the log (``{"Vmx": 0.4}``, uncorrelated): for a card that
        declares none (a model of one typical subject) or to estimate other parameters.

        ``twinrx.infer.fit(model, cohort, prior=Fit.from_card(model))`` then estimates
        each patient's random effects under the card's population.
        """
        from ..model.library import get_model

        model = get_model(model)
        typical = {p: float(v) for p, v in model.typical_params().items()}
        # Typical values are held as the model's fixed values, not as conditioned sites: a
        # card's value may sit on its bound (EMAX = 1 in [0, 1]), where a prior density is 0.
        given = {k: float(v) for k, v in (values or {}).items()}
        fixed = {p: given.pop(p, typical[p]) for p in model.parameter_names}
        own = {k: float(v) for k, v in (variability or {}).items()}
        bad = [k for k, v in own.items() if k not in model.parameter_names or not v > 0]
        if bad:
            raise ValueError(
                f"variability for {bad}: give parameters of {model.name!r} with a positive SD "
                f"of the log ({', '.join(model.parameter_names)})"
            )
        pop = PopulationModel.build(
            model,
            None,
            error=error,
            fixed=fixed,
            variability=tuple(own) if own else None,
            covariance="diagonal" if own else None,
        )
        vals: dict[str, float] = {}
        var = model.card.variability
        cov = var.matrix()
        sd = np.sqrt(np.diag(cov)) if cov.size else np.zeros(0)
        if own:
            vals.update({f"omega_{p}": own[p] for p in pop.iiv})
        else:
            vals.update({f"omega_{p}": float(sd[var.parameters.index(p)]) for p in pop.iiv})
        errs = model.residual_errors
        for o, spec in pop.errors:
            e = errs.get(o)
            if spec.kind == "combined":
                vals[f"sigma_{o}_add"], vals[f"sigma_{o}_prop"] = e.additive, e.proportional
            elif e is not None and e.kind == spec.kind:
                vals[f"sigma_{o}"] = e.proportional if spec.kind == "proportional" else e.additive
        unknown = [k for k in given if k not in pop.population_sites]
        if unknown:
            raise ValueError(
                f"values for {unknown}: not parameters or population sites of {model.name!r} "
                f"({', '.join((*model.parameter_names, *pop.population_sites))})"
            )
        vals.update(given)
        missing = [s for s in pop.population_sites if s != "L_corr" and s not in vals]
        if missing:
            raise ValueError(
                f"card {model.name!r} gives no value for {missing}: pass them in values= "
                "(e.g. a residual error's magnitude when error= changes its kind)"
            )
        held: dict[str, np.ndarray] = {k: np.asarray(v, float) for k, v in vals.items()}
        if pop.full_covariance:
            idx = [var.parameters.index(p) for p in pop.iiv]
            c = cov[np.ix_(idx, idx)]
            d = np.sqrt(np.diag(c))
            held["L_corr"] = np.linalg.cholesky(c / np.outer(d, d))
        return cls(pop, None, "card", {}, {}, held, 0, {"source": f"model card {model.name}"})

    @property
    def model(self):
        return self.pop.model

    @property
    def latent(self) -> tuple[str, ...]:
        """The sampled sites, population first."""
        sites = [s for s in self.pop.population_sites if s in self.samples and s not in self.conditioned]
        return (*sites, *(s for s in self.pop.patient_sites if s in self.samples))

    def flat_samples(self) -> dict[str, np.ndarray]:
        """Draws with chains pooled: ``(chain*draw, ...)``."""
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in self.samples.items()}

    def point(self, stat: str = "median") -> dict[str, np.ndarray]:
        """A point estimate of every site (median over draws)."""
        f = np.median if stat == "median" else np.mean
        return {k: f(v, axis=0) for k, v in self.flat_samples().items()}

    def summary(self, names=None) -> dict[str, dict[str, np.ndarray]]:
        """Median, 90 % interval, R-hat and ESS of the population sites and individual values."""
        if names is None:
            names = [s for s in self.pop.population_sites if s in self.samples and s != "L_corr"]
            names += [f"{p}_i" for p in self.model.parameter_names if f"{p}_i" in self.samples]
        return summarize(self.samples, names)

    def conditioned_model(self):
        return _conditioned(self.pop, self.conditioned)

    def posterior_predictive(self, *, key: jax.Array, max_draws: int | None = None) -> dict[str, np.ndarray]:
        """Simulated observations of each output for the posterior draws, ``(chain, draw, N, K)``."""
        flat = self.flat_samples()
        latent = {k: flat[k] for k in self.latent}
        pred = Predictive(
            self.conditioned_model(), posterior_samples=latent, return_sites=list(self.data.obs)
        )
        out = pred(key, self.data)
        c, d = next(iter(self.samples.values())).shape[:2]
        return {k: np.asarray(v).reshape(c, d, *v.shape[1:]) for k, v in out.items()}

    def log_likelihood(self) -> dict[str, np.ndarray]:
        """Pointwise log-likelihood of each output's observations, ``(chain, draw, N, K)``
        (0 at padding)."""
        flat = self.flat_samples()
        latent = {k: flat[k] for k in self.latent}
        ll = log_likelihood(self.conditioned_model(), latent, self.data)
        c, d = next(iter(self.samples.values())).shape[:2]
        return {k: np.asarray(ll[k]).reshape(c, d, *ll[k].shape[1:]) for k in self.data.obs}


class _HashableArray:
    """An array that hashes by value (initial values in a cache key)."""

    def __init__(self, a: np.ndarray):
        self.a = a
        self._h = hash((a.shape, a.dtype.str, a.tobytes()))

    def __hash__(self):
        return self._h

    def __eq__(self, other):
        return isinstance(other, _HashableArray) and np.array_equal(self.a, other.a)

    def __array__(self, dtype=None, copy=None):
        return self.a if dtype is None else self.a.astype(dtype)


def _init_strategy(init):
    """Start at given values (a warm start), else at the prior medians (random effects 0)."""
    return init_to_value(values=init) if init else init_to_median(num_samples=15)


def _conditioned(pop: PopulationModel, values: Mapping[str, Any]):
    return handlers.condition(pop, data=dict(values)) if values else pop


def _to_numpy(tree):
    return {k: np.asarray(v) for k, v in tree.items()}


# --------------------------------------------------------------------------------------
# NUTS
# --------------------------------------------------------------------------------------
_EXTRA_FIELDS = (
    "diverging",
    "num_steps",
    "accept_prob",
    "potential_energy",
    "energy",
    "adapt_state.step_size",
)


def _sampler(
    pop,
    chains,
    warmup,
    draws,
    progress,
    target_accept,
    max_tree_depth,
    dense_mass,
    init_items,
    *,
    one_device=False,
):
    """A NUTS sampler over the whole model (every patient in one joint posterior); the data
    and the held population values are model arguments. Chains run in parallel on
    separate devices where there are enough of them, unless ``one_device``."""
    if not one_device and jax.local_device_count() >= chains > 1:
        chain_method = "parallel"
    else:
        chain_method = "vectorized" if chains > 1 else "sequential"

    def model(data, cond):
        return handlers.condition(pop, data=cond)(data)

    init = {k: v.a for k, v in init_items} if init_items else None
    kernel = NUTS(
        model,
        target_accept_prob=target_accept,
        init_strategy=_init_strategy(init),
        max_tree_depth=max_tree_depth,
        dense_mass=dense_mass,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=warmup,
        num_samples=draws,
        num_chains=chains,
        chain_method=chain_method,
        progress_bar=progress,
        jit_model_args=True,
    )
    return mcmc, chain_method


@functools.partial(jax.jit, static_argnames=("settings",))
def _joint_nuts_compiled(key, data, cond, *, settings):
    """The whole run (warm-up and draws) as one compiled function of the key, the data and
    the held values: a repeat call with data of the same shape does not compile again
    (numpyro's MCMC object would). Without a progress bar, on one device."""
    mcmc, _ = _sampler(*settings, one_device=True)
    mcmc.run(key, data, cond, extra_fields=_EXTRA_FIELDS)
    return mcmc.get_samples(group_by_chain=True), mcmc.get_extra_fields(group_by_chain=True)


@functools.partial(jax.jit, static_argnames=("settings", "devices"))
def _joint_nuts_sharded(key, data, cond, *, settings, devices):
    """:func:`_joint_nuts_compiled` with the chains split over ``devices`` local devices
    (e.g. CPU cores made devices by :func:`twinrx.use_cpu_cores`): each device runs its
    share of the chains vectorised, in parallel with the others; one compilation."""
    chains = settings[1]
    share = (settings[0], chains // devices, *settings[2:])
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:devices]), ("chains",))
    spec, whole = jax.sharding.PartitionSpec("chains"), jax.sharding.PartitionSpec()

    def run(k, d, c):
        mcmc, _ = _sampler(*share, one_device=True)
        mcmc.run(k[0], d, c, extra_fields=_EXTRA_FIELDS)
        return mcmc.get_samples(group_by_chain=True), mcmc.get_extra_fields(group_by_chain=True)

    if share[1] == 1:  # numpyro drops the chain axis of a single chain
        run_one = run
        run = lambda k, d, c: jax.tree.map(lambda a: a[None], run_one(k, d, c))  # noqa: E731
    sharded = jax.shard_map(run, mesh=mesh, in_specs=(spec, whole, whole), out_specs=spec, check_vma=False)
    return sharded(jax.random.split(key, devices), data, cond)


def _chain_devices(chains: int) -> int:
    """Local devices the chains of one joint sampler are split over: the most that divide
    the chains evenly (1: all chains vectorised on one device)."""
    n = min(jax.local_device_count(), chains)
    return next(d for d in range(n, 0, -1) if chains % d == 0)


def _nuts(
    pop, cond, data, key, *, chains, warmup, draws, progress, target_accept, init, max_tree_depth, dense_mass
):
    init_items = tuple((k, _HashableArray(np.asarray(v))) for k, v in sorted((init or {}).items()))
    settings = (pop, chains, warmup, draws, progress, target_accept, max_tree_depth, dense_mass, init_items)
    args = (data.anonymous(), {k: jnp.asarray(v) for k, v in cond.items()})
    devices = _chain_devices(chains)
    if progress:  # numpyro's own loop, for its progress bar
        mcmc, chain_method = _sampler(*settings)
        mcmc.run(key, *args, extra_fields=_EXTRA_FIELDS)
        samples, ex = mcmc.get_samples(group_by_chain=True), mcmc.get_extra_fields(group_by_chain=True)
    elif devices > 1:
        chain_method = f"vectorized on {devices} devices" if chains > devices else "parallel"
        samples, ex = _joint_nuts_sharded(key, *args, settings=settings, devices=devices)
    else:
        chain_method = "vectorized" if chains > 1 else "sequential"
        samples, ex = _joint_nuts_compiled(key, *args, settings=settings)
    return _to_numpy(samples), _sampler_stats(_to_numpy(ex)), {"chain_method": chain_method}


def _sampler_stats(ex):
    """numpyro's extra fields under ArviZ's sample_stats names."""
    return {
        "diverging": ex["diverging"].astype(bool),
        "n_steps": ex["num_steps"],
        "tree_depth": np.floor(np.log2(np.maximum(ex["num_steps"], 1))).astype(np.int64) + 1,
        "acceptance_rate": ex["accept_prob"],
        "lp": -ex["potential_energy"],
        "energy": ex["energy"],
        "step_size": ex["adapt_state.step_size"],
    }


_PER_PATIENT_MAX = 64  # patients x chains for per-patient samplers on CPU (benchmarks/fit.py)
_NUTS_FIELDS = ("diverging", "num_steps", "accept_prob", "potential_energy", "energy")


@functools.partial(
    jax.jit,
    static_argnames=(
        "pop",
        "chains",
        "warmup",
        "draws",
        "target_accept",
        "max_tree_depth",
        "dense_mass",
        "progress",
        "devices",
    ),
)
def _individual_nuts(
    pop,
    cond,
    data,
    key,
    x0,
    *,
    chains,
    warmup,
    draws,
    target_accept,
    max_tree_depth,
    dense_mass,
    progress,
    devices=1,
):
    """Independent NUTS samplers, ``chains`` per patient, each with its own step size and
    mass matrix, all under one ``vmap`` (population values held at ``cond``: the posterior
    factorises over patients, so this is exact, and each sampler sees a problem of a few
    dimensions instead of one joint problem over every patient). With ``devices`` > 1 the
    samplers are split over that many local devices (by patient, or by chain for fewer
    patients than devices), each running its share in parallel. Compiled once per
    population model, settings, data shape and device count."""
    N = x0.shape[0]
    keys = jax.random.split(key, (N, chains))
    split = jax.tree.map(lambda a: a[:, None], data)  # N patients of one each
    run = functools.partial(
        _individual_samplers,
        pop,
        cond,
        warmup=warmup,
        draws=draws,
        target_accept=target_accept,
        max_tree_depth=max_tree_depth,
        dense_mass=dense_mass,
        progress=progress,
    )
    if devices <= 1:
        return run(split, keys, x0)
    P = jax.sharding.PartitionSpec
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:devices]), ("d",))
    if N < devices:  # chains over devices (chains % devices == 0, see _sampler_devices)
        sharded = jax.shard_map(
            run, mesh=mesh, in_specs=(P(), P(None, "d"), P(None, "d")), out_specs=P("d"), check_vma=False
        )
        return sharded(split, keys, x0)
    # Patients over devices, padded to a multiple of them with copies of the first patient
    # (their draws are dropped): out (chains, draws, N).
    padded = _pad_patients((split, keys, x0), devices)
    sharded = jax.shard_map(
        run, mesh=mesh, in_specs=(P("d"),) * 3, out_specs=P(None, None, "d"), check_vma=False
    )
    return jax.tree.map(lambda a: a[:, :, :N], sharded(*padded))


def _individual_samplers(
    pop, cond, split, keys, x0, *, warmup, draws, target_accept, max_tree_depth, dense_mass, progress
):
    """The samplers of :func:`_individual_nuts` for ``keys`` and ``x0`` of shape
    ``(patients, chains, ...)``; returns draws as ``(chains, draws, patients)``."""
    names, obj, sites = _patient_functions(pop, cond)
    init_kernel, sample_kernel = hmc(potential_fn_gen=lambda d1: functools.partial(obj, d1=d1), algo="NUTS")

    def init_one(k, x_init, d1):
        return init_kernel(
            x_init,
            warmup,
            dense_mass=dense_mass,
            target_accept_prob=target_accept,
            max_tree_depth=max_tree_depth,
            model_args=(d1,),
            rng_key=k,
        )

    def per_sampler(f):  # over patients (data batched) and their chains (data shared)
        return jax.vmap(jax.vmap(f, (0, None) if f is not init_one else (0, 0, None)))

    state = per_sampler(init_one)(keys, x0, split)
    sample = per_sampler(lambda s, d1: sample_kernel(s, model_args=(d1,)))

    def tick(i):
        if progress:
            jax.debug.callback(_progress_tick, i, warmup + draws)

    def warm(s, i):
        tick(i)
        return sample(s, split), None

    def step(s, i):
        tick(i)
        s = sample(s, split)
        return s, (s.z, s.adapt_state.step_size, *(getattr(s, f) for f in _NUTS_FIELDS))

    state, _ = jax.lax.scan(warm, state, jnp.arange(warmup))
    z, step_size, *fields = jax.lax.scan(step, state, warmup + jnp.arange(draws))[
        1
    ]  # (draws, N, chains, ...)
    out = jax.vmap(lambda zn, d1: jax.vmap(jax.vmap(lambda x: sites(x, d1)))(zn), (1, 0))(z, split)
    out = jax.tree.map(lambda a: jnp.transpose(a, (2, 1, 0)), out)  # (N, draws, chains) -> (chains, draws, N)
    by_chain = lambda a: jnp.transpose(a, (2, 0, 1))  # noqa: E731  (draws, N, chains) -> (chains, draws, N)
    return out, by_chain(step_size), {f: by_chain(v) for f, v in zip(_NUTS_FIELDS, fields)}


def _sampler_devices(n_patients: int, chains: int) -> int:
    """Local devices per-patient samplers are split over: by patient, up to one device per
    patient; for fewer patients than devices, by chain, the most that divide the chains."""
    n = jax.local_device_count()
    if n_patients >= n:
        return n
    return max((d for d in range(1, n + 1) if chains % d == 0 and d > n_patients), default=max(n_patients, 1))


_PROGRESS: dict[str, Any] = {}


def _progress_tick(i, total):
    """Host side of the per-patient sampler's progress bar (one tick per iteration)."""
    bar = _PROGRESS.get("bar")
    if bar is not None:
        bar.update(int(i) + 1 - bar.n)
        if int(i) + 1 == int(total):
            bar.close()


def _nuts_per_patient(
    pop, cond, data, key, *, chains, warmup, draws, progress, target_accept, init, max_tree_depth, dense_mass
):
    names = pop.patient_sites
    N = data.n_patients
    k_init, k_run = jax.random.split(key)
    if init and all(n in init for n in names):  # a warm start: every chain at the given values
        x0 = jnp.stack([jnp.broadcast_to(jnp.asarray(init[n], float), (N,)) for n in names], -1)
        x0 = jnp.broadcast_to(x0[:, None], (N, chains, len(names)))
    else:  # dispersed starts for R-hat: uniform on (-2, 2) in the standard normal z
        x0 = jax.random.uniform(k_init, (N, chains, len(names)), minval=-2.0, maxval=2.0)
    if progress:
        from tqdm.auto import tqdm

        _PROGRESS["bar"] = tqdm(
            total=warmup + draws, desc=f"NUTS, {N} patient(s) x {chains} chains", unit="it"
        )
    samples, step_size, ex = _individual_nuts(
        pop,
        {k: jnp.asarray(v) for k, v in cond.items()},
        data.anonymous(),
        k_run,
        x0,
        chains=chains,
        warmup=warmup,
        draws=draws,
        target_accept=float(target_accept),
        max_tree_depth=int(max_tree_depth),
        dense_mass=bool(dense_mass),
        progress=bool(progress),
        devices=_sampler_devices(N, chains),
    )
    _PROGRESS.pop("bar", None)
    stats = _sampler_stats(_to_numpy({**ex, "adapt_state.step_size": step_size}))
    return _to_numpy(samples), stats, {"chain_method": "per_patient"}


# --------------------------------------------------------------------------------------
# Optimisation in the unconstrained space (MAP, Laplace)
# --------------------------------------------------------------------------------------
def _setup(fn, data, key, init):
    strategy = _init_strategy(init)
    info = initialize_model(key, fn, model_args=(data,), init_strategy=strategy, dynamic_args=True)
    return info.param_info.z, info.postprocess_fn


def _objectives(fn, u0):
    """Flat objectives of the unconstrained parameters ``u``: minus the log density of the
    constrained parameters (MAP) and the potential energy (with the Jacobian; Laplace)."""
    _, unravel = ravel_pytree(u0)

    def neg_log_joint(x, data):
        params = constrain_fn(fn, (data,), {}, unravel(x))
        return -log_density(fn, (data,), {}, params)[0]

    def potential(x, data):
        from numpyro.infer.util import potential_energy

        return potential_energy(fn, (data,), {}, unravel(x))

    return neg_log_joint, potential, unravel


def _minimise(obj, x0, data, max_steps):
    solver = optx.BFGS(rtol=1e-8, atol=1e-8)
    sol = optx.minimise(obj, solver, x0, args=data, max_steps=max_steps, throw=False)
    return sol.value, sol.result == optx.RESULTS.successful, sol.stats["num_steps"]


def _optimise(pop, conditioned, data, key, *, laplace, draws, per_patient, init, max_iter):
    """MAP or Laplace. With ``per_patient`` (no population site is sampled: an individual
    fit), the posterior factorises over patients and each patient is optimised on its own,
    all at once under ``vmap``."""
    k_init, k_draw = jax.random.split(key)
    if per_patient:
        t0 = time.perf_counter()
        out, ok, nsteps, pd = _individual_modes(
            pop,
            {k: jnp.asarray(v) for k, v in conditioned.items()},
            data.anonymous(),
            k_draw,
            laplace=laplace,
            draws=draws,
            max_iter=max_iter,
            exact=_exact_hessian(pop),
        )
        jax.block_until_ready(out)
        info = {
            "converged": np.asarray(ok),
            "n_iterations": np.asarray(nsteps),
            "optimise_seconds": time.perf_counter() - t0,
        }
        if laplace:
            info["hessian_pd"] = np.asarray(pd)
        return {k: np.asarray(v)[None] for k, v in out.items()}, info
    fn = _conditioned(pop, conditioned)
    u0, post_gen = _setup(fn, data, k_init, init)
    x0, _ = ravel_pytree(u0)
    neg_log_joint, potential, unravel = _objectives(fn, u0)
    obj = potential if laplace else neg_log_joint
    t0 = time.perf_counter()
    x, ok, nsteps = jax.jit(lambda x0, d: _minimise(obj, x0, d, max_iter))(x0, data)
    elapsed = time.perf_counter() - t0
    info = {"converged": bool(ok), "n_iterations": int(nsteps), "optimise_seconds": elapsed}
    post = post_gen(data)
    if laplace:
        H = _hessian(obj, x, data, _exact_hessian(pop))
        info["hessian_pd"] = bool(jnp.all(jnp.linalg.eigvalsh(H) > 0))
        z = jax.random.normal(k_draw, (draws, x.shape[0]))
        xs = jax.vmap(lambda zz: _mvn_draw(x, H, zz))(z)
        out = jax.vmap(lambda xx: post(unravel(xx)))(xs)
        samples = {k: np.asarray(v)[None] for k, v in out.items()}
    else:
        samples = {k: np.asarray(v)[None, None] for k, v in post(unravel(x)).items()}
    return samples, info


def _exact_hessian(pop: PopulationModel) -> bool:
    """Second derivatives by automatic differentiation where the solution is in closed form;
    through the ODE solver's checkpointed loop, by central differences of the gradient."""
    method = pop.solver or ("closed_form" if pop.model.has_closed_form() else "ode")
    return method == "closed_form"


def _hessian(obj, x, args, exact):
    if exact:
        return jax.hessian(obj)(x, args)
    g = jax.grad(obj)
    h = 1e-4 * jnp.maximum(1.0, jnp.abs(x))
    eye = jnp.eye(x.shape[0])
    cols = jax.vmap(lambda e, hi: (g(x + hi * e, args) - g(x - hi * e, args)) / (2 * hi))(eye, h)
    return 0.5 * (cols + cols.T)


def _patient_functions(pop: PopulationModel, cond):
    """With every population site held at ``cond``, one patient's posterior over its
    random effects ``x`` (the standard normal ``z_*`` sites, unconstrained: no Jacobian):
    the site names, minus its log density given a one-patient ``FitData``, and its sites
    (random effects, individual values) at ``x``."""
    fn = handlers.condition(pop, data=cond)
    names = pop.patient_sites

    def unpack(x):
        return {n: x[j][None] for j, n in enumerate(names)}

    def obj(x, d1):
        return -log_density(fn, (d1,), {}, unpack(x))[0]

    def sites(x, d1):
        tr = handlers.trace(handlers.substitute(handlers.seed(fn, 0), data=unpack(x))).get_trace(d1)
        return {
            k: s["value"][0]
            for k, s in tr.items()
            if (s["type"] == "deterministic" or k in names) and jnp.ndim(s["value"]) == 1
        }

    return names, obj, sites


@functools.partial(jax.jit, static_argnames=("pop", "laplace", "draws", "max_iter", "exact"))
def _individual_modes(pop, cond, data, key, *, laplace, draws, max_iter, exact):
    """Each patient's posterior mode of its random effects (population values held at
    ``cond``), all patients at once under vmap; with ``laplace``, ``draws`` draws from the
    normal approximation there. The random effects are unconstrained (standard normal
    ``z_*`` sites), so the mode and the Laplace approximation need no change of variables.
    Compiled once per population model and data shape: a repeat call costs milliseconds."""
    names, obj, sites = _patient_functions(pop, cond)
    split = jax.tree.map(lambda a: a[:, None], data)  # N patients of one each
    x0 = jnp.zeros(len(names))

    def solve(d1):
        x, ok, n = _minimise(obj, x0, d1, max_iter)
        H = _hessian(obj, x, d1, exact) if laplace else jnp.eye(len(names))
        return x, ok, n, H

    xs, ok, nsteps, H = jax.vmap(solve)(split)
    pd = jnp.all(jnp.linalg.eigvalsh(0.5 * (H + jnp.swapaxes(H, -1, -2))) > 0, axis=-1)
    if laplace:
        z = jax.random.normal(key, (draws, *xs.shape))
        xd = jax.vmap(lambda zz: _mvn_draw(xs, H, zz))(z)  # (draws, N, d)
    else:
        xd = xs[None]
    out = jax.vmap(lambda xx: jax.vmap(sites)(xx, split))(xd)  # (draws, N)
    return out, ok, nsteps, pd


def _mvn_draw(x, H, z):
    """x + L^-T z with H = L L^T: a draw from N(x, H^-1) (batched over leading axes)."""
    Hs = 0.5 * (H + jnp.swapaxes(H, -1, -2))
    L = jnp.linalg.cholesky(Hs)
    return x + jax.scipy.linalg.solve_triangular(jnp.swapaxes(L, -1, -2), z[..., None], lower=False)[..., 0]


# --------------------------------------------------------------------------------------
# SVI
# --------------------------------------------------------------------------------------
def _svi(fn, data, key, *, steps, draws, guide, importance, particles, learning_rate, progress, init):
    strategy = _init_strategy(init)
    if importance and guide != "mvn":
        raise ValueError("the importance-weighted option needs the full-rank guide (guide='mvn')")
    if guide == "mvn":
        g = autoguide.AutoMultivariateNormal(fn, init_loc_fn=strategy)
    elif guide == "diagonal":
        g = autoguide.AutoNormal(fn, init_loc_fn=strategy)
    else:
        raise ValueError(f"guide must be 'mvn' or 'diagonal', not {guide!r}")
    loss = (
        RenyiELBO(alpha=0.0, num_particles=particles) if importance else Trace_ELBO(num_particles=particles)
    )
    svi = SVI(fn, g, numpyro.optim.ClippedAdam(step_size=learning_rate), loss)
    k_run, k_draw, k_is = jax.random.split(key, 3)
    t0 = time.perf_counter()
    res = svi.run(k_run, steps, data, progress_bar=progress, stable_update=True)
    elapsed = time.perf_counter() - t0
    info: dict[str, Any] = {
        # The loss trace, to check convergence (plot it); the mean of the last 100 steps
        # skips any non-finite step (stable_update keeps the parameters of such a step).
        "losses": np.asarray(res.losses),
        "elbo_loss_last": float(np.nanmean(np.where(np.isfinite(res.losses), res.losses, np.nan)[-100:])),
        "svi_seconds": elapsed,
        "objective": "iwae" if importance else "elbo",
    }
    if importance:
        # Sampling-importance-resampling of the guide's draws towards the posterior, in the
        # unconstrained space where the guide lives; the weights' effective sample size
        # says how far the guide is from the posterior.
        from numpyro.infer.util import potential_energy

        post = g.get_posterior(res.params)
        n_prop = 10 * draws
        zs = post.sample(k_draw, (n_prop,))
        log_q = post.log_prob(zs)
        pot = jax.vmap(lambda z: potential_energy(fn, (data,), {}, g._unpack_latent(z)))(zs)
        lw = jnp.where(jnp.isfinite(pot), -pot - log_q, -jnp.inf)
        w = jnp.exp(lw - jax.scipy.special.logsumexp(lw))
        info["importance_ess"] = float(1.0 / jnp.sum(w**2))
        idx = jax.random.choice(k_is, n_prop, (draws,), p=w)
        latent = jax.vmap(lambda z: g._unpack_and_constrain(z, res.params))(zs[idx])
    else:
        latent = g.sample_posterior(k_draw, res.params, sample_shape=(draws,))
    det = Predictive(fn, posterior_samples=latent)(k_draw, data)
    out = {**latent, **{k: v for k, v in det.items() if k not in data.obs and k != "solver_ok"}}
    samples = {k: np.asarray(v)[None] for k, v in out.items()}
    return samples, info


# --------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------
def fit(
    model,
    data,
    *,
    method: str = "nuts",
    prior=None,
    seed: int = 0,
    chains: int = 4,
    warmup: int = 500,
    draws: int = 500,
    progress: bool = False,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass: bool = False,
    init: Mapping[str, Any] | None = None,
    steps: int = 5000,
    guide: str = "mvn",
    importance: bool = False,
    particles: int = 1,
    learning_rate: float = 0.01,
    max_iter: int = 500,
    sampler: str = "auto",
    **options,
) -> Fit:
    """Fit ``model`` (a card) to ``data``.

    Parameters
    ----------
    method
        ``"nuts"`` (chains vectorised on one device, parallel on several), ``"map"``,
        ``"laplace"`` (normal approximation around the mode, ``draws`` draws) or ``"svi"``
        (variational; see the note below).
    prior
        An earlier population :class:`Fit`: its population values (typical values,
        variabilities, effects, residual errors; posterior medians) are held fixed and only
        the patients' random effects are estimated: the individual twin of precision dosing.
        Its model settings (error models, covariance) are used.
    seed
        The random seed (explicit; same seed, same result).
    chains, warmup, draws, target_accept, max_tree_depth, dense_mass
        NUTS settings.
    init
        Initial values by site name (e.g. a previous fit's estimates; a warm start).
    steps, guide, importance, particles, learning_rate
        SVI: optimisation steps, ``"mvn"`` (full-rank normal) or ``"diagonal"`` guide, the
        importance-weighted objective (IWAE, Renyi alpha = 0, with ``particles`` >= 2)
        followed by sampling-importance-resampling of the guide's draws.
    max_iter
        Iterations of the BFGS optimiser (MAP, Laplace).
    sampler
        NUTS for an individual fit (``prior=``), where the posterior factorises over
        patients: ``"per_patient"`` runs independent samplers (``chains`` per patient, each
        adapting its own step size and mass matrix; R-hat and divergences per patient) in
        lock-step under ``vmap``; ``"joint"`` one sampler over all patients' random effects.
        Lock-step costs the longest trajectory of all samplers at every iteration, so on CPU
        ``"auto"`` picks per-patient samplers up to 64 samplers (patients x chains) and the
        joint sampler above; on an accelerator, per-patient samplers.
    options
        Model options for :meth:`PopulationModel.build` (``error``, ``priors``, ``fixed``,
        ``variability``, ``covariance``, ``estimate_effects``, ``solver``, ``rtol``,
        ``atol``, ``max_steps``: ODE solver steps per interval between events).

    Notes
    -----
    SVI with a normal guide is known to underestimate posterior variance, the between-
    subject variabilities (``omega_*``) most: the ELBO penalises guide mass where the
    posterior has none, and the funnel between ``omega`` and the random effects is not
    normal. Use it to explore or to initialise NUTS; ``importance=True`` (IWAE plus
    resampling, ``info["importance_ess"]`` reports the weights' ESS) reduces the bias.
    """
    from ..data.patient import Cohort
    from ..model.library import get_model

    model = get_model(model)
    data_options = {k: options.pop(k) for k in ("outputs", "routes", "covariates") if k in options}
    cohort = None
    if isinstance(data, Cohort):
        cohort = data
        data = FitData.from_cohort(model, cohort, **data_options)
    elif not isinstance(data, FitData):
        raise TypeError(f"data must be a FitData or a twinrx.data.Cohort, not {type(data).__name__}")
    method = method.lower()
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    conditioned: dict[str, np.ndarray] = {}
    if prior is not None:
        # The population model is the prior fit's; only how its predictions are solved
        # may change (e.g. an ODE twin from a closed-form population fit).
        solving = {k: options.pop(k) for k in ("solver", "rtol", "atol", "max_steps") if k in options}
        if options:
            raise ValueError(
                f"{', '.join(sorted(options))}: an individual fit (prior=...) takes the population "
                "model of its prior fit; only solver, rtol, atol and max_steps may be given"
            )
        pop = PopulationModel.from_settings(model, {**prior.pop.settings(), **solving})
        pop = dataclasses.replace(pop, errors=tuple((o, s) for o, s in prior.pop.errors if o in data.obs))
        conditioned = population_estimates(prior)
    else:
        pop = PopulationModel.build(model, data, **options)
    fn = _conditioned(pop, conditioned)
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    stats: dict[str, np.ndarray] = {}
    per_patient = prior is not None and not any(s not in conditioned for s in pop.population_sites)
    if method == "nuts":
        if sampler not in ("auto", "joint", "per_patient"):
            raise ValueError(f"sampler must be 'auto', 'joint' or 'per_patient', not {sampler!r}")
        if sampler == "per_patient" and not per_patient:
            raise ValueError("sampler='per_patient' needs an individual fit (prior=POPULATION_FIT)")
        if sampler == "auto":  # see the docstring
            small = data.n_patients * chains <= _PER_PATIENT_MAX or jax.default_backend() != "cpu"
            sampler = "per_patient" if per_patient and small else "joint"
        samples, stats, info = (_nuts_per_patient if sampler == "per_patient" else _nuts)(
            pop,
            conditioned,
            data,
            key,
            chains=chains,
            warmup=warmup,
            draws=draws,
            progress=progress,
            target_accept=target_accept,
            init=init,
            max_tree_depth=max_tree_depth,
            dense_mass=dense_mass,
        )
    elif method in ("map", "laplace"):
        samples, info = _optimise(
            pop,
            conditioned,
            data,
            key,
            laplace=method == "laplace",
            draws=draws,
            per_patient=per_patient and init is None,
            init=init,
            max_iter=max_iter,
        )
    else:
        samples, info = _svi(
            fn,
            data,
            key,
            steps=steps,
            draws=draws,
            guide=guide,
            importance=importance,
            particles=max(particles, 2) if importance else particles,
            learning_rate=learning_rate,
            progress=progress,
            init=init,
        )
    samples.pop("solver_ok", None)
    info["seconds"] = time.perf_counter() - t0
    if method == "nuts":
        info.update(warmup=warmup, draws=draws, chains=chains)
    return Fit(pop, data, method, samples, stats, conditioned, seed, info, cohort, data_options)


def update(previous: Fit, new, *, seed: int | None = None, warmup: int | None = None, **kwargs) -> Fit:
    """Refit with new records (levels, doses, wearable series) added to the previous fit's
    patients: the same model, settings, method and (for an individual fit) the same
    population values; warm-started at the previous posterior medians, with a shorter
    NUTS warm-up. ``new`` is a :class:`~twinrx.data.Cohort` (e.g. from a NONMEM CSV with
    :func:`~twinrx.infer.data.nonmem_cohort`); the result is the posterior given ALL data."""
    from .data import merge_cohorts

    if previous.cohort is None:
        raise ValueError(
            "this fit does not keep its patients (it was given FitData arrays); fit a Cohort, "
            "or refit with all the data"
        )
    cohort = merge_cohorts(previous.cohort, new)
    point = previous.point()
    init = {k: point[k] for k in previous.latent if k in point}
    same = len(cohort) == len(previous.cohort) and list(cohort.ids) == list(previous.cohort.ids)
    if not same:  # new patients: their random effects start at zero
        init = {k: v for k, v in init.items() if k not in previous.pop.patient_sites}
    method = kwargs.pop("method", previous.method)
    opts = dict(
        method=method,
        seed=previous.seed + 1 if seed is None else seed,
        init=init or None,
        **kwargs,
    )
    if method == "nuts":
        chains, draws = next(iter(previous.samples.values())).shape[:2]
        opts.setdefault("chains", chains)
        opts.setdefault("draws", draws)
        opts["warmup"] = warmup if warmup is not None else max(100, previous.info.get("warmup", 500) // 2)
    if previous.conditioned:
        # Individual fits start their random effects at zero: per-patient modes are cheap,
        # and NUTS adapts in the shortened warm-up.
        opts.pop("init")
    new_pop = _Prior(previous) if previous.conditioned else None
    if new_pop is None:
        return _refit(previous, cohort, opts)
    return fit(previous.model, cohort, prior=new_pop, **previous.data_options, **opts)


class _Prior:
    """An earlier fit's population values, as the ``prior`` of an individual refit."""

    def __init__(self, previous: Fit):
        self.pop = previous.pop
        self.conditioned = dict(previous.conditioned)
        self.samples: dict[str, np.ndarray] = {}

    def flat_samples(self):
        return {}


def _refit(previous: Fit, cohort, opts) -> Fit:
    settings = previous.pop.settings()
    options = {
        "error": {o: s["kind"] for o, s in settings["errors"].items()},
        "fixed": settings["fixed"],
        "variability": tuple(settings["variability"]),
        "covariance": settings["covariance"],
        "estimate_effects": tuple(settings["estimate_effects"]),
        "priors": dict(previous.pop.priors),
        "prior_scale": settings["prior_scale"],
        "solver": settings["solver"],
        "rtol": settings["rtol"],
        "atol": settings["atol"],
    }
    return fit(previous.model, cohort, **previous.data_options, **options, **opts)


def population_estimates(prior: Fit) -> dict[str, np.ndarray]:
    """Posterior medians of an earlier fit's population sites (and the values it held
    fixed itself); a correlation Cholesky factor is rebuilt from the mean correlation."""
    out = dict(prior.conditioned)
    flat = prior.flat_samples()
    for s in prior.pop.population_sites:
        if s in out or s not in flat:
            continue
        if s == "L_corr":
            L = flat[s]
            C = np.mean(L @ np.swapaxes(L, -1, -2), axis=0)
            out[s] = np.linalg.cholesky(C)
        else:
            out[s] = np.median(flat[s], axis=0)
    return out
