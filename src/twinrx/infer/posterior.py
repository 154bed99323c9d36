"""A fit as an ArviZ-layout :class:`xarray.DataTree`: groups ``posterior``,
``posterior_predictive``, ``observed_data``, ``log_likelihood``, ``sample_stats``,
``constant_data`` (and ``diagnostics``), readable by ``arviz_base`` as it is.

Names: typical values under the card's parameter names (``CL``: chain, draw), individual
values ``CL_i`` and random effects ``eta_CL`` (chain, draw, patient), variabilities
``omega_CL`` (SD of eta, log scale), residual parameters ``sigma_<output>``
(``sigma_<output>_add``/``_prop`` for a combined error). Observations of each output are
flattened over patients along ``obs_<output>`` with coordinates ``<output>_patient`` and
``<output>_time`` (the ragged layout ArviZ uses for grouped data), so ``log_likelihood``
has no padding.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import xarray as xr

from .. import __version__
from .fit import Fit

__all__ = ["to_datatree", "from_datatree", "FIT_SCHEMA"]

FIT_SCHEMA = "twinrx.fit/1"


def _flat_obs(fit: Fit, o: str):
    ob = fit.data.obs[o]
    mask = np.asarray(ob.mask)
    return mask, np.nonzero(mask)


def to_datatree(fit: Fit, *, seed: int | None = None, predictive: bool = True) -> xr.DataTree:
    """The fit as an ArviZ DataTree (see the module docstring for the layout)."""
    data = fit.data
    ids = list(data.ids)
    chains, draws = next(iter(fit.samples.values())).shape[:2]
    coords = {"chain": np.arange(chains), "draw": np.arange(draws)}
    N = data.n_patients
    post = {}
    for k, v in fit.samples.items():
        v = np.asarray(v)
        if v.ndim == 3 and v.shape[2] == N and not k.startswith("L_"):
            post[k] = xr.DataArray(v, dims=("chain", "draw", "patient"), coords={**coords, "patient": ids})
        elif k == "L_corr":
            names = list(fit.pop.iiv)
            post[k] = xr.DataArray(
                v, dims=("chain", "draw", "iiv", "iiv_"), coords={**coords, "iiv": names, "iiv_": names}
            )
        elif v.ndim == 2:
            post[k] = xr.DataArray(v, dims=("chain", "draw"), coords=coords)
    units = {p.name: p.unit for p in fit.model.parameters}
    for k, da in post.items():
        base = k[:-2] if k.endswith("_i") else k
        if base in units:
            da.attrs["units"] = units[base]
    posterior = xr.Dataset(post)
    groups: dict[str, xr.Dataset] = {"posterior": posterior}

    obs_ds, const = {}, {}
    flat_index = {}
    out_units = dict(data.units)
    for o in data.obs:
        mask, (pi, ki) = _flat_obs(fit, o)
        flat_index[o] = (pi, ki)
        ob = data.obs[o]
        t = np.asarray(data.times)[pi, np.asarray(ob.index)[pi, ki]]
        dim = f"obs_{o}"
        c = {dim: np.arange(pi.size), f"{o}_patient": (dim, np.asarray(ids)[pi]), f"{o}_time": (dim, t)}
        obs_ds[o] = xr.DataArray(
            np.asarray(ob.value)[pi, ki], dims=(dim,), coords=c, attrs={"units": out_units[o]}
        )
        const[f"{o}_censored"] = xr.DataArray(
            np.asarray(ob.cens)[pi, ki].astype(np.int8), dims=(dim,), coords=c
        )
        const[f"{o}_limit"] = xr.DataArray(np.asarray(ob.limit)[pi, ki], dims=(dim,), coords=c)
    groups["observed_data"] = xr.Dataset(obs_ds)
    for k, v in data.covariates.items():
        v = np.asarray(v)
        const[f"cov_{k}"] = xr.DataArray(
            v if v.ndim == 1 else v[:, 0], dims=("patient",), coords={"patient": ids}
        )
    for k, v in fit.conditioned.items():
        v = np.asarray(v)
        const[f"fixed_{k}"] = xr.DataArray(v, dims=tuple(f"fixed_{k}_{i}" for i in range(v.ndim)))
    groups["constant_data"] = xr.Dataset(const)

    ll = fit.log_likelihood()
    groups["log_likelihood"] = xr.Dataset(
        {
            o: xr.DataArray(
                ll[o][:, :, pi, ki],
                dims=("chain", "draw", f"obs_{o}"),
                coords={**coords, f"obs_{o}": np.arange(pi.size)},
            )
            for o, (pi, ki) in flat_index.items()
        }
    )
    if predictive:
        pp = fit.posterior_predictive(key=jax.random.key(fit.seed + 1 if seed is None else seed))
        groups["posterior_predictive"] = xr.Dataset(
            {
                o: xr.DataArray(
                    pp[o][:, :, pi, ki],
                    dims=("chain", "draw", f"obs_{o}"),
                    coords={**coords, f"obs_{o}": np.arange(pi.size)},
                    attrs={"units": out_units[o]},
                )
                for o, (pi, ki) in flat_index.items()
            }
        )
    if fit.stats:
        groups["sample_stats"] = xr.Dataset(
            {
                # Individual fits run one sampler per patient: statistics per patient too.
                k: xr.DataArray(np.asarray(v), dims=("chain", "draw"), coords=coords)
                if np.ndim(v) == 2
                else xr.DataArray(
                    np.asarray(v), dims=("chain", "draw", "patient"), coords={**coords, "patient": ids}
                )
                for k, v in fit.stats.items()
            }
        )
    summ = fit.summary() if chains * draws > 1 else {}
    diag = {}
    rows = []
    for name, st in summ.items():
        vals = {k: np.atleast_1d(np.asarray(v, float)) for k, v in st.items()}
        n = vals["median"].size
        labels = [name] if n == 1 else [f"{name}[{ids[i]}]" for i in range(n)]
        rows += [(lab, {k: vals[k][i] for k in vals}) for i, lab in enumerate(labels)]
    if rows:
        for stat in ("median", "q05", "q95", "r_hat", "ess_bulk", "ess_tail"):
            diag[stat] = xr.DataArray(
                [r[1][stat] for r in rows], dims=("parameter",), coords={"parameter": [r[0] for r in rows]}
            )
        groups["diagnostics"] = xr.Dataset(diag)
    if fit.cohort is not None:  # the patients themselves, for `twinrx update`
        groups["patients"] = fit.cohort.to_dataset()
    n_div = int(np.sum(fit.stats["diverging"])) if "diverging" in fit.stats else 0
    if "losses" in fit.info:  # SVI's loss per step: a variable, not a long attribute
        groups["loss_trace"] = xr.Dataset({"loss": ("step", np.asarray(fit.info["losses"], float))})
    info = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in fit.info.items() if k != "losses"}
    attrs = {
        "schema": FIT_SCHEMA,
        "created_by": f"twinrx {__version__}",
        "inference_library": "numpyro",
        "method": fit.method,
        "seed": int(fit.seed),
        "model": fit.model.name,
        "model_card_digest": getattr(getattr(fit.model, "card", None), "digest", ""),
        "model_card": getattr(getattr(fit.model, "card", None), "text", ""),
        "settings": json.dumps(fit.pop.settings()),
        "individual": bool(fit.conditioned),
        "num_divergences": n_div,
        "info": json.dumps(info, default=float),
        "data_options": json.dumps(fit.data_options),
    }
    for g in groups.values():
        g.attrs.update({"created_by": attrs["created_by"], "inference_library": "numpyro"})
    tree = xr.DataTree.from_dict(groups)
    tree.attrs.update(attrs)
    return tree


def from_datatree(tree: xr.DataTree) -> Fit:
    """A stored fit back as a :class:`Fit` (its model card, settings, draws, held population
    values and, when stored, its patients): the ``prior`` of an individual fit, or the start
    of :func:`twinrx.infer.update`."""
    from ..data.patient import Cohort
    from ..model.card import from_text
    from .data import FitData
    from .model import PopulationModel

    attrs = tree.attrs
    if attrs.get("schema") != FIT_SCHEMA:
        raise ValueError(f"not a twinrx fit (schema {attrs.get('schema')!r}, expected {FIT_SCHEMA!r})")
    model = from_text(attrs["model_card"])
    pop = PopulationModel.from_settings(model, attrs["settings"])
    post = tree["posterior"].to_dataset()
    samples = {k: np.asarray(v.values) for k, v in post.data_vars.items()}
    conditioned = {}
    if "constant_data" in tree.children:
        const = tree["constant_data"].to_dataset()
        conditioned = {
            k[6:]: np.asarray(v.values) for k, v in const.data_vars.items() if k.startswith("fixed_")
        }
    stats = {}
    if "sample_stats" in tree.children:
        stats = {k: np.asarray(v.values) for k, v in tree["sample_stats"].to_dataset().data_vars.items()}
    info = json.loads(attrs.get("info", "{}"))
    if "loss_trace" in tree.children:
        info["losses"] = np.asarray(tree["loss_trace"]["loss"].values)
    options = json.loads(attrs.get("data_options", "{}"))
    cohort = data = None
    if "patients" in tree.children:
        cohort = Cohort.from_dataset(tree["patients"].to_dataset())
        data = FitData.from_cohort(model, cohort, **options)
    return Fit(
        pop,
        data,
        attrs["method"],
        samples,
        stats,
        conditioned,
        int(attrs["seed"]),
        info,
        cohort,
        options,
    )
