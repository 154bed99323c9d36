"""Figures of fits and scenarios with matplotlib: an individual fit, goodness of fit, a
(prediction-corrected) visual predictive check, a scenario comparison and a posterior pair
plot.

Every function returns a :class:`matplotlib.figure.Figure` (built without pyplot, so no
window opens and no global state is touched) and, with ``path=``, saves it as PNG or SVG
(by the suffix) at 150 dpi. Axes carry the units of the model card and the data; titles
name patients only by their pseudonymous id. matplotlib is the optional ``plot`` extra
(``pip install twinrx[plot]``); it is imported when a figure is made.

Predictions are computed here with :func:`twinrx.solve.simulate_arrays` from the fit's
draws exactly as the population model computes them: typical values x covariate effects x
``exp(eta)``, the patient's covariates per record, the fit's solver settings.

Examples
--------
>>> from twinrx import plots                                   # doctest: +SKIP
>>> fig = plots.individual_fit(fit, "P0", key=jax.random.key(0), path="p0.png")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from .model.library import get_model
from .model.residual import residual_logcdf, residual_noise
from .scenarios import Scenario, twin_draws
from .solve import simulate_arrays

if TYPE_CHECKING:
    import xarray as xr
    from matplotlib.figure import Figure

    from .infer.fit import Fit

__all__ = [
    "individual_fit",
    "goodness_of_fit",
    "vpc",
    "scenario_comparison",
    "pair_plot",
    "cohort_summary",
    "cohort_endpoints",
    "cohort_trajectories",
    "wilson_interval",
]

DPI = 150
#: Draws used for the individual predictions of goodness_of_fit (evenly spaced over the
#: posterior: deterministic, no key needed).
GOF_DRAWS = 200
#: NPDE: the prediction-distribution value is clipped to [PD_CLIP, 1 - PD_CLIP] so that an
#: observation far in a tail plots at about +-3.1 instead of infinity.
PD_CLIP = 1e-3
_CONC_METRICS = ("cmax", "cmin", "trough", "value", "time_in_range")


# ------------------------------------------------------------------------------ helpers
def _nanquantile(a, q, axis=0):
    """``np.nanquantile`` without the warning for an all-NaN column (every draw failed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(a, q, axis=axis)


def _figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (6.4, 4.4)):
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - the 'plot' extra
        raise ImportError("twinrx.plots needs matplotlib: pip install 'twinrx[plot]'") from None
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _check_path(path: str | Path | None) -> str | None:
    """The format of ``path`` (``png`` or ``svg``; checked before any work is done)."""
    if path is None:
        return None
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise ValueError(
            f"path {Path(path).name!r}: figures are saved as PNG or SVG; end the name in .png or .svg"
        )
    return fmt


def _save(fig: Figure, path: str | Path | None) -> Figure:
    fmt = _check_path(path)
    if fmt is not None:
        fig.savefig(Path(path), dpi=DPI, format=fmt)
    return fig


def _patient_index(fit: Fit, patient: int | str) -> int:
    ids = list(fit.data.ids)
    if isinstance(patient, str):
        if patient not in ids:
            raise ValueError(f"patient {patient!r} is not in the fit (it has {len(ids)} patients)")
        return ids.index(patient)
    j = int(patient)
    if not 0 <= j < len(ids):
        raise ValueError(f"patient index {j} is out of range: the fit has {len(ids)} patients")
    return j


def _output(fit: Fit, output: str | None) -> str:
    obs = list(fit.data.obs)
    if output is None:
        return obs[0]
    if output not in obs:
        raise ValueError(f"output {output!r} has no data in this fit; fitted outputs: {', '.join(obs)}")
    return output


def _output_unit(model, output: str, data_units=()) -> str:
    units = {o.name: o.unit for o in model.outputs}
    return dict(data_units).get(output) or units.get(output, "1")


def _time_unit(model) -> str:
    return str(getattr(model, "time_unit", "h"))


def _label(name: str, unit: str) -> str:
    return f"{name} ({unit})"


def _dose_times(events) -> np.ndarray:
    """Dose instants of one patient's events (dose records, ADDL expanded)."""
    t = np.asarray(events.dose_time)[np.asarray(events.dose_mask)]
    return np.unique(t)


def _one(tree, j: int):
    return jax.tree.map(lambda a: a[j], tree)


def _tile(tree, n: int):
    """Every leaf repeated ``n`` times along a new leading axis (``(n, ...)``)."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *jnp.shape(a))), tree)


def _flatten2(tree):
    """Leaves ``(S, N, ...)`` to ``(S*N, ...)``."""
    return jax.tree.map(lambda a: jnp.reshape(a, (a.shape[0] * a.shape[1], *a.shape[2:])), tree)


def _flat_draws(fit: Fit) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in fit.flat_samples().items()}


def _n_draws(fit: Fit) -> int:
    return next(iter(fit.samples.values())).shape[0] * next(iter(fit.samples.values())).shape[1]


def _population_values(fit: Fit, pick: np.ndarray | None) -> dict[str, np.ndarray]:
    """Population sites per draw ``(S, ...)`` (``pick``: flat draw indices), or their posterior
    medians (``pick`` None; a correlation factor from the mean correlation, as in
    :func:`twinrx.infer.population_estimates`), with the values the fit held fixed."""
    flat = _flat_draws(fit)
    out: dict[str, np.ndarray] = {}
    for s in fit.pop.population_sites:
        if s in fit.conditioned:
            v = np.asarray(fit.conditioned[s], float)
            out[s] = v if pick is None else np.broadcast_to(v, (len(pick), *v.shape))
        elif s in flat:
            v = flat[s]
            if pick is not None:
                out[s] = v[pick]
            elif s == "L_corr":
                C = np.mean(v @ np.swapaxes(v, -1, -2), axis=0)
                out[s] = np.linalg.cholesky(C)
            else:
                out[s] = np.median(v, axis=0)
    return out


def _inputs(fit: Fit, popv: Mapping[str, np.ndarray], etas: Mapping[str, np.ndarray], patients, S: int):
    """Simulation inputs ``(S*n, ...)`` for ``n`` patients under ``S`` sets of population
    values (``popv`` leaves ``(S,)``) and random effects (``etas[P]``: ``(S, n)``)."""
    patients = np.asarray(patients)
    n = patients.size
    pop = fit.pop
    inp: dict[str, Any] = {}
    for p in pop.free:
        inp[p] = np.broadcast_to(np.asarray(popv[p], float).reshape(S, 1), (S, n))
    for p, v in pop.fixed:
        inp[p] = np.full((S, n), float(v))
    for k in pop.estimated_effects:
        inp[f"__{k}"] = np.broadcast_to(np.asarray(popv[k], float).reshape(S, 1), (S, n))
    for p in pop.iiv:
        inp[f"eta_{p}"] = np.broadcast_to(np.asarray(etas[p], float), (S, n))
    for c, v in fit.data.covariates.items():
        a = np.asarray(v, float)[patients]
        inp[c] = np.broadcast_to(a, (S, *a.shape))
    return {k: np.reshape(v, (S * n, *v.shape[2:])) for k, v in inp.items()}


def _simulate(fit: Fit, inputs, events, times):
    pop = fit.pop
    _, out, status = simulate_arrays(
        fit.model,
        inputs,
        events,
        jnp.asarray(times, float),
        solver=pop.solver,
        rtol=pop.rtol,
        atol=pop.atol,
        max_steps=pop.max_steps,
        devices=1,
    )
    bad = np.asarray(status) != 0
    return {k: np.where(bad[:, None], np.nan, np.asarray(v)) for k, v in out.items()}


def _at_obs(fit: Fit, output: str, pred: np.ndarray) -> np.ndarray:
    """Predictions ``(..., N, T)`` on the output times read at the observations ``(..., N, K)``."""
    idx = np.asarray(fit.data.obs[output].index)
    return np.take_along_axis(pred, np.broadcast_to(idx, (*pred.shape[:-1], idx.shape[-1])), axis=-1)


def _population_prediction(fit: Fit, output: str) -> np.ndarray:
    """PRED ``(N, K)``: typical values at their posterior medians, random effects 0, each
    patient's covariates and doses."""
    N = fit.data.n_patients
    popv = {k: v[None] for k, v in _population_values(fit, None).items()}
    zeros = {p: np.zeros((1, N)) for p in fit.pop.iiv}
    out = _simulate(fit, _inputs(fit, popv, zeros, np.arange(N), 1), fit.data.events, fit.data.times)
    return _at_obs(fit, output, out[output])


def _individual_predictions(fit: Fit, output: str, pick: np.ndarray) -> np.ndarray:
    """Individual predictions ``(S, N, K)`` for the posterior draws ``pick``."""
    N, S = fit.data.n_patients, len(pick)
    flat = _flat_draws(fit)
    popv = _population_values(fit, pick)
    etas = {p: flat[f"eta_{p}"][pick] for p in fit.pop.iiv}
    ev = _flatten2(_tile(fit.data.events, S))
    times = np.reshape(np.broadcast_to(np.asarray(fit.data.times), (S, *fit.data.times.shape)), (S * N, -1))
    out = _simulate(fit, _inputs(fit, popv, etas, np.arange(N), S), ev, times)
    return _at_obs(fit, output, out[output].reshape(S, N, -1))


def _error_params(fit: Fit, output: str, popv: Mapping[str, np.ndarray]):
    """``(kind, additive, proportional)`` of ``output``'s residual error (per draw)."""
    spec = dict(fit.pop.errors)[output]
    s = [np.asarray(popv[name], float) for name in spec.sites(output)]
    if spec.kind == "combined":
        return spec.kind, s[0], s[1]
    if spec.kind == "proportional":
        return spec.kind, np.zeros_like(s[0]), s[0]
    return spec.kind, s[0], np.zeros_like(s[0])


def _observations(fit: Fit, output: str):
    """``(mask, time, value, cens, limit)`` ``(N, K)`` of one output (time from the grid)."""
    ob = fit.data.obs[output]
    t = np.take_along_axis(np.asarray(fit.data.times), np.asarray(ob.index), axis=1)
    return (
        np.asarray(ob.mask),
        t,
        np.asarray(ob.value, float),
        np.asarray(ob.cens),
        np.asarray(ob.limit, float),
    )


def _plot_observed(ax, t, y, cens, limit, *, color="k"):
    """Measured values as filled dots; censored ones as open markers at their limit (below
    the LLOQ: open circles, above the ULOQ: open triangles), with a dashed LLOQ line."""
    exact = cens == 0
    ax.plot(t[exact], y[exact], "o", color=color, ms=4.5, label="observed", zorder=5, gid="observed")
    below, above = cens < 0, cens > 0
    if below.any():
        ax.plot(
            t[below],
            limit[below],
            "o",
            mfc="none",
            mec=color,
            ms=6,
            label="below LLOQ",
            zorder=5,
            gid="below",
        )
        for k, lq in enumerate(np.unique(limit[below])):
            ax.axhline(lq, ls="--", lw=0.8, color="0.4", label="LLOQ" if k == 0 else None, gid="lloq")
    if above.any():
        ax.plot(
            t[above],
            limit[above],
            "^",
            mfc="none",
            mec=color,
            ms=6,
            label="above ULOQ",
            zorder=5,
            gid="above",
        )


def _zero_floor(ax, *values):
    """Start the value axis at 0 when nothing shown is negative (concentrations)."""
    lows = [np.nanmin(np.asarray(v, float), initial=np.inf) for v in values]
    if min(lows) >= 0:
        ax.set_ylim(bottom=0.0)


def _mark_doses(ax, dose_t):
    if dose_t.size:
        ax.plot(
            dose_t,
            np.zeros_like(dose_t),
            "^",
            color="tab:red",
            ms=6,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            label="dose",
            zorder=6,
            gid="doses",
        )


# ------------------------------------------------------------------------------ individual fit
def individual_fit(
    fit: Fit,
    patient: int | str,
    *,
    output: str | None = None,
    key: jax.Array,
    draws: int = 200,
    times: Sequence[float] | np.ndarray | None = None,
    path: str | Path | None = None,
) -> Figure:
    """One patient's levels and the posterior of its individual prediction.

    ``draws`` posterior draws (from :func:`twinrx.scenarios.twin_draws`: population values,
    the patient's ``eta`` draws, its covariates per record) are simulated over the patient's
    doses on ``times`` (default: 400 points from 0 to past the last level and one dosing
    interval past the last dose, plus the observation and dose times). The figure shows
    their median and 50 % and 90 % bands, the observed levels (censored ones as open
    markers at the LLOQ, with the LLOQ as a dashed line) and the doses as triangles on the
    time axis.

    Parameters
    ----------
    fit
        A population or individual :class:`twinrx.infer.Fit`.
    patient
        Index or (pseudonymous) id of the patient.
    output
        The output to show (default: the first fitted one).
    key
        Random key for the choice of draws.
    """
    _check_path(path)
    j = _patient_index(fit, patient)
    o = _output(fit, output)
    model = fit.model
    mask, t_obs, y, cens, limit = (a[j] for a in _observations(fit, o))
    t_obs, y, cens, limit = t_obs[mask], y[mask], cens[mask], limit[mask]
    ev = _one(fit.data.events, j)
    dose_t = _dose_times(ev)
    if times is None:
        # past the last level, and one dosing interval past the last dose
        tau = float(np.median(np.diff(dose_t))) if dose_t.size > 1 else 0.0
        end = max(float(np.max(t_obs, initial=0.0)), float(np.max(dose_t, initial=0.0)) + tau)
        end = end * 1.05 if end > 0 else 24.0
        grid = np.unique(np.concatenate([np.linspace(0.0, end, 400), t_obs, dose_t[dose_t <= end]]))
    else:
        grid = np.unique(np.asarray(times, float))
    if int(draws) < 1:
        raise ValueError(f"draws must be at least 1, not {draws}")
    inp = twin_draws(model, key=key, n=int(draws), fit=fit, patient=j)
    for name, v in fit.data.covariates.items():  # per record, as in the fit (twin_draws: the last)
        a = np.asarray(v, float)[j]
        if a.ndim:
            inp[name] = np.broadcast_to(a, (int(draws), a.size))
    for name, v in fit.pop.fixed:  # typical values the fit held fixed
        inp.setdefault(name, np.full(int(draws), float(v)))
    pred = _simulate(fit, inp, _tile(ev, int(draws)), grid)[o]
    q05, q25, q50, q75, q95 = _nanquantile(pred, [0.05, 0.25, 0.5, 0.75, 0.95])

    fig, axes = _figure()
    ax = axes[0, 0]
    ax.fill_between(grid, q05, q95, color="tab:blue", alpha=0.18, lw=0, label="90 % interval")
    ax.fill_between(grid, q25, q75, color="tab:blue", alpha=0.35, lw=0, label="50 % interval")
    ax.plot(grid, q50, color="tab:blue", lw=1.6, label="median prediction", gid="median")
    _plot_observed(ax, t_obs, y, cens, limit)
    _mark_doses(ax, dose_t)
    ax.set_xlabel(_label("Time", _time_unit(model)))
    ax.set_ylabel(_label(o, _output_unit(model, o, fit.data.units)))
    ax.set_xlim(grid[0], grid[-1])
    _zero_floor(ax, q05, y)
    ax.legend(fontsize="small", frameon=False)
    kind = "individual fit" if fit.conditioned else "population fit"
    ax.set_title(f"Patient {fit.data.ids[j]}: {o}, {model.name} ({kind}, {fit.method})", fontsize="medium")
    return _save(fig, path)


# ------------------------------------------------------------------------------ goodness of fit
def _npde(kind, y, cens, limit, f, a, b) -> np.ndarray:
    """NPDE of each observation from the posterior predictive distribution.

    The prediction-distribution value ``pd = P(y_rep < y)`` is averaged over the draws
    exactly (the residual error's normal CDF around each draw's prediction, rather than by
    simulating replicates), clipped to ``[PD_CLIP, 1 - PD_CLIP]`` and mapped through the
    standard normal quantile. A value censored below the LLOQ gets half the probability
    below the limit (the middle of its possible ``pd``), one above the ULOQ likewise.
    """
    S = f.shape[0]
    shape = (S,) + (1,) * (f.ndim - 1)
    a, b = np.reshape(a, shape), np.reshape(b, shape)
    pos = lambda v: np.where(np.isfinite(v) & (v > 0), v, 1.0)  # noqa: E731  (log scale: no log of <= 0)
    safe = (lambda v: pos(v)) if kind == "exponential" else (lambda v: v)
    at = np.where(cens != 0, limit, y)
    cdf = np.exp(np.asarray(residual_logcdf(kind, safe(at), safe(f), a, b)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = np.nanmean(cdf, axis=0)
    pd = np.where(cens < 0, 0.5 * p, np.where(cens > 0, 1.0 - 0.5 * (1.0 - p), p))
    pd = np.clip(pd, PD_CLIP, 1.0 - PD_CLIP)
    return np.asarray(jax.scipy.special.ndtri(jnp.asarray(pd)))


def goodness_of_fit(fit: Fit, *, output: str | None = None, path: str | Path | None = None) -> Figure:
    """Observations against population and individual predictions, and NPDE against time.

    - DV vs PRED: the population prediction (typical values at their posterior medians,
      random effects 0, the patient's covariates);
    - DV vs IPRED: the median over posterior draws (at most 200, evenly spaced) of the
      individual prediction;
    - NPDE vs time: normalised prediction distribution errors from the posterior predictive
      distribution of each observation (individual prediction + residual error, over the
      draws; see ``_npde``: the probability is computed exactly per draw rather than from
      simulated replicates, and it is not decorrelated within a patient), with 0 and
      +-1.96. Under a correct model they are close to standard normal.

    Censored observations are shown as open markers at their limit.
    """
    _check_path(path)
    o = _output(fit, output)
    model = fit.model
    mask, t, y, cens, limit = _observations(fit, o)
    total = _n_draws(fit)
    pick = np.unique(np.linspace(0, total - 1, min(total, GOF_DRAWS)).round().astype(int))
    pred = _population_prediction(fit, o)
    ipred_d = _individual_predictions(fit, o, pick)
    ipred = _nanquantile(ipred_d, 0.5)
    kind, a, b = _error_params(fit, o, _population_values(fit, pick))
    npde = _npde(kind, y, cens, limit, ipred_d, a, b)
    unit = _output_unit(model, o, fit.data.units)
    shown = np.where(cens != 0, limit, y)
    exact, censd = mask & (cens == 0), mask & (cens != 0)

    fig, axes = _figure(1, 3, size=(13.5, 4.4))
    for ax, x, name in ((axes[0, 0], pred, "PRED"), (axes[0, 1], ipred, "IPRED")):
        ax.plot(
            x[exact], shown[exact], "o", color="tab:blue", ms=4, alpha=0.8, label="observed", gid=f"dv_{name}"
        )
        if censd.any():
            ax.plot(
                x[censd],
                shown[censd],
                "o",
                mfc="none",
                mec="tab:blue",
                ms=5,
                label="censored (at limit)",
                gid=f"cens_{name}",
            )
        both = np.concatenate([x[mask], shown[mask]])
        both = both[np.isfinite(both)]
        lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8, label="identity")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel(_label(name, unit))
        ax.set_ylabel(_label(f"DV {o}", unit))
        ax.set_title(f"DV vs {name}", fontsize="medium")
        ax.legend(fontsize="small", frameon=False)
    ax = axes[0, 2]
    ax.plot(t[exact], npde[exact], "o", color="tab:blue", ms=4, alpha=0.8, label="NPDE", gid="npde")
    if censd.any():
        ax.plot(
            t[censd], npde[censd], "o", mfc="none", mec="tab:blue", ms=5, label="censored", gid="npde_cens"
        )
    ax.axhline(0.0, color="k", lw=0.8)
    for v in (-1.96, 1.96):
        ax.axhline(v, color="k", ls="--", lw=0.8)
    ax.set_xlabel(_label("Time", _time_unit(model)))
    ax.set_ylabel("NPDE (standard normal units)")
    ax.set_title("NPDE (posterior predictive) vs time", fontsize="medium")
    fig.suptitle(f"{model.name}: {o}, {fit.data.n_patients} patients ({fit.method})", fontsize="medium")
    return _save(fig, path)


# ------------------------------------------------------------------------------ VPC
def _bin_edges(t: np.ndarray, bins) -> np.ndarray:
    """Edges of the time bins: given edges, a number of quantile bins, or (None) one bin per
    distinct time when there are at most 10 of them (a fixed design), else 8 quantile bins."""
    u = np.unique(t)
    if bins is None and u.size <= 10:
        mids = 0.5 * (u[1:] + u[:-1])
        return np.concatenate([[-np.inf], mids, [np.inf]])
    if bins is None or np.ndim(bins) == 0:
        nb = 8 if bins is None else int(bins)
        if nb < 1:
            raise ValueError(f"bins must be a positive number of bins or a list of edges, not {bins!r}")
        edges = np.unique(np.quantile(t, np.linspace(0.0, 1.0, nb + 1)))
        edges[0], edges[-1] = -np.inf, np.inf
        return edges
    edges = np.asarray(bins, float)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("bins given as edges must be an increasing list of at least 2 times")
    return edges


def vpc(
    fit: Fit,
    *,
    output: str | None = None,
    key: jax.Array,
    n_sim: int = 200,
    bins: int | Sequence[float] | None = None,
    prediction_corrected: bool = True,
    path: str | Path | None = None,
) -> Figure:
    """Visual predictive check (prediction-corrected by default; Bergstrand et al., AAPS J
    2011;13:143).

    ``n_sim`` replicates of the data set are simulated: each takes one posterior draw of
    the population values (typical values, variabilities, correlations, effects, residual
    error), new random effects for every patient, and residual error, at the observed
    times with the observed doses and covariates. Observations are binned by time
    (``bins``: edges, or a number of quantile bins; default one bin per distinct time for a
    design of at most 10 times, else 8 quantile bins). With ``prediction_corrected``, each
    value (observed and simulated) is multiplied by ``PRED_bin / PRED`` (levels whose PRED
    is 0, such as one at the time of an oral dose, are left out; PRED: the
    population prediction; PRED_bin: its median in the bin). The figure shows the observed
    5th, 50th and 95th percentiles per bin against the 90 % intervals of the same
    percentiles over the replicates.

    Censored observations are left out, and simulated values below that patient's LLOQ
    likewise (both sides censored the same way).
    """
    _check_path(path)
    o = _output(fit, output)
    model = fit.model
    mask, t, y, cens, limit = _observations(fit, o)
    N, K = y.shape
    n_sim = int(n_sim)
    if n_sim < 1:
        raise ValueError(f"n_sim must be at least 1 replicate, not {n_sim}")
    k_pick, k_eta, k_eps = jax.random.split(key, 3)
    total = _n_draws(fit)
    pick = np.asarray(jax.random.choice(k_pick, total, (n_sim,), replace=True))
    popv = _population_values(fit, pick)
    d = len(fit.pop.iiv)
    z = np.asarray(jax.random.normal(k_eta, (n_sim, N, d)))
    etas = {}
    if d:
        omega = np.stack([np.asarray(popv[f"omega_{p}"], float) for p in fit.pop.iiv], -1)  # (S, d)
        L = popv.get("L_corr")
        scale = omega[:, :, None] * (np.asarray(L) if L is not None else np.eye(d))  # (S, d, d)
        eta = np.einsum("snk,sjk->snj", z, scale)
        etas = {p: eta[:, :, i] for i, p in enumerate(fit.pop.iiv)}
    ev = _flatten2(_tile(fit.data.events, n_sim))
    times = np.reshape(
        np.broadcast_to(np.asarray(fit.data.times), (n_sim, *fit.data.times.shape)), (n_sim * N, -1)
    )
    sim = _simulate(fit, _inputs(fit, popv, etas, np.arange(N), n_sim), ev, times)[o]
    f = _at_obs(fit, o, sim.reshape(n_sim, N, -1))
    kind, a, b = _error_params(fit, o, popv)
    eps = jax.random.normal(k_eps, f.shape)
    ysim = np.asarray(residual_noise(kind, jnp.asarray(f), eps, a[:, None, None], b[:, None, None]))
    lloq = np.max(np.where(mask & (cens < 0), limit, -np.inf), axis=1)  # per patient; -inf: none
    ysim = np.where(ysim < lloq[None, :, None], np.nan, ysim)

    use = mask & (cens == 0)
    if prediction_corrected:
        pred = _population_prediction(fit, o)
        # Bergstrand's correction divides by PRED: an observation whose population prediction
        # is 0 (a level taken at the dose of an oral drug) cannot be corrected and is left out
        use &= pred > 0
    if not use.any():
        raise ValueError(f"output {o} has no uncensored observations to check")
    edges = _bin_edges(t[use], bins)
    which = np.digitize(t, edges[1:-1], right=True)  # bin of each observation
    B = edges.size - 1
    if prediction_corrected:
        corr = np.ones_like(pred)
        for k in range(B):
            sel = use & (which == k)
            if sel.any():
                corr[sel] = np.median(pred[sel]) / pred[sel]
        yv, ysim = y * corr, ysim * corr[None]
    else:
        yv = y
    qs = (5, 50, 95)
    x, obs_p, sim_p = [], [], []
    for k in range(B):
        sel = use & (which == k)
        if not sel.any():
            continue
        x.append(np.median(t[sel]))
        obs_p.append(np.percentile(yv[sel], qs))
        s = ysim[:, sel]  # (n_sim, n_k)
        with np.errstate(all="ignore"):
            ok = np.isfinite(s).any(axis=1)
            per = np.full((n_sim, 3), np.nan)
            if ok.any():
                per[ok] = np.nanpercentile(s[ok], qs, axis=1).T
        sim_p.append(_nanquantile(per, [0.05, 0.5, 0.95]))  # (3 quantiles, 3 percentiles)
    x, obs_p, sim_p = np.asarray(x), np.asarray(obs_p), np.asarray(sim_p)

    fig, axes = _figure(size=(7.0, 4.6))
    ax = axes[0, 0]
    colors = {5: "tab:blue", 50: "tab:red", 95: "tab:blue"}
    ax.plot(t[use], yv[use], "o", color="0.55", ms=3, alpha=0.6, label="observed values")
    for i, q in enumerate(qs):
        lo, hi = sim_p[:, 0, i], sim_p[:, 2, i]
        band = "simulated median, 90 % CI" if q == 50 else "simulated 5th/95th pct, 90 % CI"
        line = "observed median" if q == 50 else "observed 5th/95th pct"
        first = q != 95
        ax.fill_between(x, lo, hi, color=colors[q], alpha=0.2, lw=0, label=band if first else None)
        ax.plot(
            x,
            obs_p[:, i],
            "-" if q == 50 else "--",
            color=colors[q],
            lw=1.6,
            label=line if first else None,
            gid=f"observed_p{q}",
        )
    ax.set_xlabel(_label("Time", _time_unit(model)))
    name = f"prediction-corrected {o}" if prediction_corrected else o
    ax.set_ylabel(_label(name, _output_unit(model, o, fit.data.units)))
    _zero_floor(ax, sim_p, obs_p, yv[use])
    ax.legend(fontsize="small", frameon=False)
    what = "pcVPC" if prediction_corrected else "VPC"
    ax.set_title(f"{what}: {model.name}, {N} patients, {n_sim} replicates", fontsize="medium")
    return _save(fig, path)


# ------------------------------------------------------------------------------ scenarios
def _subsample(draws: Mapping[str, Any], idx: np.ndarray, n: int) -> dict[str, Any]:
    out = {}
    for k, v in draws.items():
        if isinstance(v, str):
            out[k] = v
            continue
        a = np.asarray(v)
        out[k] = a[idx] if a.ndim and a.shape[0] == n else a
    return out


def _target_boxes(ax, targets, ylo: float, yhi: float, *, lw: float) -> None:
    """Each concentration target as a shaded box over its window and range (an open side of
    the range reaches the axis' limit)."""
    from matplotlib.patches import Rectangle

    for tg in targets:
        if tg.metric not in _CONC_METRICS:
            continue
        lo = tg.low if math.isfinite(tg.low) else ylo
        hi = tg.high if math.isfinite(tg.high) else yhi
        ax.add_patch(
            Rectangle(
                (tg.window[0], lo),
                tg.window[1] - tg.window[0],
                hi - lo,
                facecolor=(0.17, 0.63, 0.17, 0.15),
                edgecolor="tab:green",
                ls="--",
                lw=lw,
                zorder=3,
                label=f"target: {tg.name}",
                gid=f"target|{tg.name}",
            )
        )


def scenario_comparison(
    result: xr.Dataset,
    scenario: Scenario,
    *,
    draws: Mapping[str, Any] | None = None,
    key: jax.Array | None = None,
    max_draws: int = 200,
    path: str | Path | None = None,
) -> Figure:
    """Regimens of a scenario side by side: concentration bands and target attainment.

    Left: the median and 90 % band of the first target's output over time for every
    regimen, simulated for at most ``max_draws`` of the twin's ``draws`` (those given to
    :func:`twinrx.scenarios.compare`; evenly spaced), with each concentration target (a
    window and range of a concentration metric) as a shaded box. Without ``draws``, ``key``
    draws the card's population as :func:`~twinrx.scenarios.compare` does; with neither,
    only the right panel is drawn. The bands follow each regimen's planned doses
    (:meth:`~twinrx.scenarios.Regimen.events`) plus the scenario's background doses: its
    adherence patterns, feedback rules and within-patient variability enter the attainment
    panel (through ``compare``) but not the bands, and the panel's title then says "doses
    as planned".
    Right: the probability of target attainment (``result["pta"]``) per regimen and target,
    regimens in the order of ``result["rank"]`` (best on top), labelled in percent.
    """
    _check_path(path)
    for v in ("pta", "rank"):
        if v not in result:
            raise ValueError(f"result has no {v!r}: pass the Dataset that twinrx.scenarios.compare returned")
    regs = [str(r) for r in result["regimen"].values]
    targets = [str(t) for t in result["target"].values]
    model = get_model(scenario.model)
    order = np.argsort(np.asarray(result["rank"].values))
    if draws is None and key is not None:
        draws = twin_draws(model, key=key, n=max_draws, covariates=dict(scenario.patient))
    bands = draws is not None
    fig, axes = _figure(1, 2 if bands else 1, size=(13.0, 4.8) if bands else (6.8, 4.8))
    if bands:
        ax = axes[0, 0]
        tg0 = scenario.target(targets[0])
        o = tg0.output
        n = next(len(np.atleast_1d(v)) for v in draws.values() if not isinstance(v, str))
        idx = np.unique(np.linspace(0, n - 1, min(n, int(max_draws))).round().astype(int))
        sub = _subsample(draws, idx, n)
        w = sub.get("WT")
        weight = None if w is None else float(np.asarray(w).reshape(-1)[0])
        # one patient's covariates for dose formulas (a twin's draws share them)
        first = {k: (v if isinstance(v, str) else np.asarray(v).reshape(-1)[0]) for k, v in sub.items()}
        covariates = scenario.dose_inputs(first)
        step = max(scenario.step, scenario.horizon / 600.0)
        base = np.arange(0.0, scenario.horizon + 1e-9, step)
        colors = [f"C{i}" for i in range(10)]
        lows = []
        for i in order:
            reg = scenario.regimen(regs[i])
            # the scenario's background doses (a meal, a co-medication) are in every band
            background = tuple(getattr(scenario, "background", ()))
            ev = dataclasses.replace(reg, blocks=(*background, *reg.blocks)).events(
                model, scenario.horizon, weight, covariates
            )
            grid = np.unique(np.concatenate([base, np.asarray(ev.time)]))
            inputs = scenario.model_inputs(sub)
            _, out, status = simulate_arrays(model, inputs, _tile(ev, idx.size), jnp.asarray(grid), devices=1)
            c = np.where((np.asarray(status) != 0)[:, None], np.nan, np.asarray(out[o]))
            lo, med, hi = _nanquantile(c, [0.05, 0.5, 0.95])
            lows.append(lo)
            col = colors[i % 10]
            ax.fill_between(grid, lo, hi, color=col, alpha=0.12, lw=0)
            ax.plot(grid, med, color=col, lw=1.5, label=regs[i], gid=f"median|{regs[i]}")
        ax.set_xlim(0.0, scenario.horizon)
        _zero_floor(ax, *lows)
        ylo, yhi = ax.get_ylim()
        _target_boxes(ax, [t for t in scenario.targets if t.output == o], ylo, yhi, lw=1.4)
        ax.set_ylim(ylo, yhi)
        ax.set_xlabel(_label("Time", _time_unit(model)))
        ax.set_ylabel(_label(o, _output_unit(model, o)))
        planned = any(
            getattr(r, "adherence", None) is not None or getattr(r, "rules", ()) for r in scenario.regimens
        )
        planned = planned or bool(getattr(scenario, "variability", ()))
        note = ", doses as planned" if planned else ""
        ax.set_title(f"{o}: median and 90 % band ({idx.size} draws{note})", fontsize="medium")
        ax.legend(fontsize="small", frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=3)
    ax = axes[0, -1]
    from matplotlib.ticker import PercentFormatter

    pta = np.asarray(result["pta"].values, float)  # (target, regimen)
    nt = len(targets)
    h = 0.8 / nt
    for k, tname in enumerate(targets):
        y = np.arange(len(regs)) + (k - (nt - 1) / 2) * h
        vals = pta[k, order]
        bars = ax.barh(y, vals, height=h, color=f"C{k}", label=tname)
        for bar, i in zip(bars, order):
            bar.set_gid(f"pta|{tname}|{regs[i]}")
        ax.bar_label(bars, labels=[f"{100 * v:.0f} %" for v in vals], padding=2, fontsize="small")
    ax.set_yticks(np.arange(len(regs)), [f"{int(result['rank'].values[i])}. {regs[i]}" for i in order])
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.15)
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel("Probability of target attainment (%)")
    ax.set_ylabel("Regimen (by rank)")
    ax.set_title("Target attainment", fontsize="medium")
    # under the panel: inside, it would hide the bars of the lowest-ranked regimen
    ax.legend(
        fontsize="small", frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=min(nt, 4)
    )
    fig.suptitle(f"Scenario {scenario.name} ({model.name})", fontsize="medium")
    return _save(fig, path)


# ------------------------------------------------------------------------------ pair plot
def _site_unit(fit: Fit, name: str) -> str:
    units = {p.name: p.unit for p in fit.model.parameters}
    base = name[:-2] if name.endswith("_i") else name
    if base in units:
        return units[base]
    if name.startswith(("omega_", "eta_", "z_")):
        return "log scale" if not name.startswith("z_") else "1"
    for o, spec in fit.pop.errors:
        if name in spec.sites(o):
            if name.endswith("_prop") or spec.kind == "proportional":
                return "fraction"
            if spec.kind == "exponential":
                return "log scale"
            return _output_unit(fit.model, o, fit.data.units)
    return "1"


def pair_plot(
    fit: Fit,
    names: Sequence[str] | None = None,
    *,
    patient: int | str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Posterior pair plot (ArviZ's ``plot_pair``): marginal densities on the diagonal, the
    draws' pairs below it (divergent transitions marked), axes labelled with units.

    Default ``names``: the typical values of a population fit, or, with ``patient`` (or for
    an individual fit, whose typical values are held), the patient's individual values
    ``CL_i``, ``V_i``... Any site of the fit may be named (per-patient sites need
    ``patient``).
    """
    _check_path(path)
    flat = _flat_draws(fit)
    S = next(iter(flat.values())).shape[0]
    if S < 2:
        raise ValueError(
            f"a pair plot needs posterior draws; this {fit.method} fit has one point (fit with nuts, "
            "laplace or svi)"
        )
    pnames = fit.model.parameter_names
    if names is None:
        typical = [p for p in pnames if p in flat and flat[p].ndim == 1]
        if patient is None and typical:
            names = typical
        else:
            names = [f"{p}_i" for p in pnames if f"{p}_i" in flat]
    names = list(names)
    missing = [n for n in names if n not in flat]
    if missing:
        raise ValueError(f"{missing} are not sampled sites of this fit; sites: {', '.join(sorted(flat))}")
    j = None
    if any(flat[n].ndim == 2 for n in names):
        if patient is None and fit.data.n_patients > 1:
            per = [n for n in names if flat[n].ndim == 2]
            raise ValueError(f"{per} are per-patient sites: give patient= (an index or a pseudonymous id)")
        j = _patient_index(fit, 0 if patient is None else patient)
    posterior = {}
    for n in names:
        v = np.asarray(fit.samples[n], float)  # (chain, draw) or (chain, draw, patient)
        if v.ndim not in (2, 3):
            raise ValueError(f"{n!r} is not a scalar site (shape {v.shape[2:]})")
        posterior[n] = v if v.ndim == 2 else v[:, :, j]
    if not posterior:
        raise ValueError("no sites to plot: give names=")
    import arviz_plots
    from arviz_base import from_dict
    from arviz_base.labels import BaseLabeller

    units = {n: _site_unit(fit, n) for n in names}

    class _Units(BaseLabeller):
        def var_name_to_str(self, var_name):
            return _label(str(var_name), units.get(str(var_name)))

    groups = {"posterior": posterior}
    div = fit.stats.get("diverging")
    if div is not None and np.ndim(div) >= 2:
        d = np.asarray(div, bool)
        if d.ndim == 3:  # per-patient samplers: this patient's (any patient's for population sites)
            d = d[:, :, j] if j is not None else d.any(axis=2)
        groups["sample_stats"] = {"diverging": d}
    k = len(names)
    pc = arviz_plots.plot_pair(
        from_dict(groups),
        var_names=names,
        backend="matplotlib",
        marginal=True,
        labeller=_Units(),
        figure_kwargs={"figsize": (2.3 * k + 1.0, 2.3 * k + 0.6)},
    )
    fig = pc.viz["figure"].item()
    who = f"patient {fit.data.ids[j]}" if j is not None else "population"
    fig.suptitle(f"Posterior of {fit.model.name}, {who} ({fit.method}, {S} draws)", fontsize="medium")
    return _save(fig, path)


# ------------------------------------------------------------------------------ cohorts
#: Coverage of the PTA intervals of the cohort figures and report (Wilson score interval).
PTA_LEVEL = 0.95
_COHORT_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def wilson_interval(k, n, *, level: float = PTA_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion ``k / n`` (elementwise; NaN where
    ``n == 0``): the interval of the cohort PTAs. Wilson (J Am Stat Assoc 1927;22:209);
    it keeps its coverage near ``level`` for proportions near 0 or 1, unlike the Wald
    interval (Brown, Cai & DasGupta, Stat Sci 2001;16:101)."""
    from statistics import NormalDist

    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), not {level!r}")
    k, n = np.asarray(k, float), np.asarray(n, float)
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1.0 + z * z / n
        mid = (p + z * z / (2.0 * n)) / den
        half = z / den * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    bad = ~(n > 0)
    # exactly 0 at k = 0 and 1 at k = n (the formula's rounding leaves ~1e-17 there)
    lo = np.where(k <= 0, 0.0, np.clip(mid - half, 0.0, 1.0))
    hi = np.where(k >= n, 1.0, np.clip(mid + half, 0.0, 1.0))
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


def _cohort_dataset(source) -> xr.Dataset:
    """A cohort store (path, opened lazily) or an already opened one, schema checked."""
    import xarray as xr

    if isinstance(source, xr.DataTree):
        source = source.to_dataset()
    if not isinstance(source, xr.Dataset):
        from .store import open_store

        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no cohort store {path.name!r}; write one with `twinrx cohort run`")
        source = open_store(path)
    from .store import COHORT_SCHEMA

    if source.attrs.get("twinrx_schema") != COHORT_SCHEMA:
        raise ValueError(
            f"not a cohort store (schema {source.attrs.get('twinrx_schema')!r}, expected "
            f"{COHORT_SCHEMA!r}): give a store written by `twinrx cohort run --out STORE.zarr`"
        )
    return source


def _done_rows(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The ``done`` flag per chunk and, per patient, whether its chunk is done."""
    done = np.asarray(ds["done"].values).astype(bool)
    n = int(ds.sizes["patient"])
    chunk = int(ds.attrs.get("chunk", math.ceil(n / max(done.size, 1))))
    return done, done[np.arange(n) // chunk]


def _cohort_scenario(ds: xr.Dataset):
    """The store's scenario (from its text), or None when the store does not carry it."""
    from .scenarios import load_scenario

    src = ds.attrs.get("scenario_source")
    return load_scenario(str(src)) if src else None


def _target_window(tg) -> tuple[float, float]:
    """A target's range on its metric's scale (a fraction for time in range)."""
    if tg.metric == "time_in_range":
        return float(tg.min_fraction), float(tg.max_fraction)
    return float(tg.low), float(tg.high)


def cohort_summary(source: str | Path | xr.Dataset, *, level: float = PTA_LEVEL) -> xr.Dataset:
    """Endpoints of a cohort store (``twinrx cohort run``) from its finished chunks only (a
    partly finished store gives the endpoints of what is done).

    Per arm: ``n`` (patients of the finished chunks), ``n_ok`` (with ``status == 0``) and
    ``n_failed``. Per arm and target: ``n_attained`` (from the stored metrics and the
    targets' ranges in the store's scenario text; else the store's partial sums),
    ``pta = n_attained / n`` — a failed solve counts as not attained, as in the store's own
    ``pta`` and in :func:`twinrx.scenarios.compare` — with its Wilson interval ``pta_low``,
    ``pta_high`` (coverage ``level``), and the metric's ``q05``, ``q25``, ``median``,
    ``q75``, ``q95`` over the successful solves (numpy's linear quantiles). With a
    subgroup: the same PTA per level (``n_by``, ``n_attained_by``, ``pta_by``,
    ``pta_by_low``, ``pta_by_high``). The targets' ranges are in the coordinates
    ``target_low`` and ``target_high`` (NaN when the store carries no scenario text).
    """
    import xarray as xr

    ds = _cohort_dataset(source)
    done, rows = _done_rows(ds)
    arms = [str(a) for a in ds["arm"].values]
    targets = [str(t) for t in ds["target"].values]
    A, M = len(arms), len(targets)
    status = np.asarray(ds["status"].values)[rows]
    metric = np.asarray(ds["metric"].values, float)[rows]
    ok = status == 0
    n_ok = ok.sum(axis=0).astype(np.int64)
    n_failed = (~ok).sum(axis=0).astype(np.int64)
    sc = _cohort_scenario(ds)
    hit = None
    if sc is not None:  # attained, per patient, from the stored metrics and the targets' ranges
        hit = np.zeros(metric.shape, bool)
        for j, t in enumerate(targets):
            m = metric[:, :, j]
            with np.errstate(invalid="ignore"):
                hit[:, :, j] = np.asarray(sc.target(t).attained(m)) & np.isfinite(m)
        hit &= ok[:, :, None]
        att = hit.sum(axis=0).astype(np.int64)
    else:  # the store's partial sums (they count the same patients)
        att = np.asarray(ds["part_attained"].values)[done].sum(axis=0).astype(np.int64)
    q = np.full((len(_COHORT_QUANTILES), A, M), np.nan)
    for a in range(A):
        for j in range(M):
            v = metric[ok[:, a], a, j]
            v = v[np.isfinite(v)]
            if v.size:
                q[:, a, j] = np.quantile(v, _COHORT_QUANTILES)
    n_all = np.full(A, int(rows.sum()), np.int64)
    lo, hi = wilson_interval(att, n_all[:, None], level=level)
    with np.errstate(invalid="ignore", divide="ignore"):
        pta = np.where(n_all[:, None] > 0, att / np.maximum(n_all, 1)[:, None], np.nan)
    windows = [_target_window(sc.target(t)) if sc is not None else (np.nan, np.nan) for t in targets]
    units = [str(u) for u in ds["target_units"].values] if "target_units" in ds.coords else [""] * M
    metrics = [str(u) for u in ds["target_metric"].values] if "target_metric" in ds.coords else [""] * M
    at = ("arm", "target")
    data = {
        "n": ("arm", n_all),
        "n_ok": ("arm", n_ok),
        "n_failed": ("arm", n_failed),
        "n_attained": (at, att),
        "pta": (at, pta, {"units": "1"}),
        "pta_low": (at, lo, {"units": "1"}),
        "pta_high": (at, hi, {"units": "1"}),
        "q05": (at, q[0]),
        "q25": (at, q[1]),
        "median": (at, q[2]),
        "q75": (at, q[3]),
        "q95": (at, q[4]),
    }
    coords: dict[str, Any] = {
        "arm": arms,
        "target": targets,
        "target_units": ("target", units),
        "target_metric": ("target", metrics),
        "target_low": ("target", [w[0] for w in windows]),
        "target_high": ("target", [w[1] for w in windows]),
    }
    attrs = {
        "scenario": str(ds.attrs.get("scenario", sc.name if sc is not None else "")),
        "n_patients": int(ds.sizes["patient"]),
        "n_done": int(rows.sum()),
        "chunks_done": int(done.sum()),
        "n_chunks": int(done.size),
        "level": float(level),
        "subgroup": "",
    }
    if "part_attained_by" in ds and "level" in ds.coords:
        name = str(ds.attrs.get("subgroup", "")) or "subgroup"
        levels = [str(x) for x in ds["level"].values]
        by = np.asarray(ds["part_attained_by"].values)[done].sum(axis=0).astype(np.int64)
        if name in ds and ds[name].dims == ("patient",):
            codes = np.asarray(ds[name].values)[rows].astype(np.int64)
            n_lv = np.array([(codes == lv).sum() for lv in range(len(levels))], np.int64)
            if hit is not None:
                by = np.stack([hit[codes == lv].sum(axis=0) for lv in range(len(levels))]).astype(np.int64)
        else:
            n_lv = np.asarray(ds["part_n_by"].values)[done].sum(axis=0).astype(np.int64)
        n_by = np.broadcast_to(n_lv[:, None], (len(levels), A)).copy()
        blo, bhi = wilson_interval(by, n_by[:, :, None], level=level)
        with np.errstate(invalid="ignore", divide="ignore"):
            pby = np.where(n_by[:, :, None] > 0, by / np.maximum(n_by, 1)[:, :, None], np.nan)
        lat = ("level", "arm", "target")
        data.update(
            n_by=(("level", "arm"), n_by.astype(np.int64)),
            n_attained_by=(lat, by),
            pta_by=(lat, pby, {"units": "1"}),
            pta_by_low=(lat, blo, {"units": "1"}),
            pta_by_high=(lat, bhi, {"units": "1"}),
        )
        coords["level"] = levels
        attrs["subgroup"] = name
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _cohort_title(sm: xr.Dataset) -> str:
    A = sm.sizes["arm"]
    part = (
        f", partial: {sm.attrs['chunks_done']} of {sm.attrs['n_chunks']} chunks done"
        if sm.attrs["chunks_done"] < sm.attrs["n_chunks"]
        else ""
    )
    return f"Cohort {sm.attrs['scenario']}: {sm.attrs['n_done']} virtual patients x {A} arms{part}"


def _pta_bars(ax, y, pta, lo, hi, *, gid: str, color, height: float, label: str | None = None):
    """Horizontal PTA bars with their interval as error bars (NaN bars drawn empty)."""
    w = np.nan_to_num(pta, nan=0.0)
    bars = ax.barh(y, w, height=height, color=color, alpha=0.85, label=label)
    for bar, key in zip(bars, gid.split("\n")):
        bar.set_gid(key)
    keep = np.isfinite(pta)
    # Wilson's interval contains the estimate; at 0 or 1 rounding may put it a hair outside
    err = np.maximum(np.stack([pta - lo, hi - pta])[:, keep], 0.0)
    eb = ax.errorbar(pta[keep], y[keep], xerr=err, fmt="none", ecolor="0.15", elinewidth=1.1, capsize=2.5)
    return bars, eb


def cohort_endpoints(source: str | Path | xr.Dataset, *, path: str | Path | None = None) -> Figure:
    """Endpoints of a cohort store (``twinrx cohort run``), one row per target.

    Left: the probability of target attainment per arm over all patients (a failed solve
    counts as not attained), with its 95 % Wilson interval (:func:`cohort_summary`),
    labelled in percent. Middle: the distribution of the target's metric per arm over the
    patients whose solve succeeded: median
    (dot), 50 % (thick bar) and 90 % (thin bar) intervals, with the target's range shaded
    (a logarithmic axis when the 90 % intervals span more than a factor 30). Right, when the
    store has a subgroup: the PTA per level of the subgroup per arm, with its interval.
    A partly finished store shows its finished chunks, and says so in the title.

    ``source``: the store's path, or the store opened (:func:`twinrx.store.open_store`).
    The artists carry ids (``gid``) for checks: ``pta|target|arm``, ``pta_ci|target``,
    ``q90|target``, ``q50|target``, ``median|target``, ``target|target``,
    ``pta_by|target|level|arm`` and ``pta_by_ci|target|level``.
    """
    _check_path(path)
    sm = cohort_summary(source)
    arms = [str(a) for a in sm["arm"].values]
    targets = [str(t) for t in sm["target"].values]
    A, M = len(arms), len(targets)
    sub = bool(sm.attrs["subgroup"])
    ncols = 3 if sub else 2
    row_h = max(2.4, 0.34 * A + 1.5)
    fig, axes = _figure(M, ncols, size=(3.5 * ncols + 2.4, row_h * M + 0.6))
    from matplotlib.ticker import PercentFormatter

    y = np.arange(A, dtype=float)
    pct = f"{100 * sm.attrs['level']:g} %"
    for j, t in enumerate(targets):
        unit = str(sm["target_units"].values[j])
        # PTA
        ax = axes[j, 0]
        pta, lo, hi = (np.asarray(sm[v].values[:, j], float) for v in ("pta", "pta_low", "pta_high"))
        _pta_bars(ax, y, pta, lo, hi, gid="\n".join(f"pta|{t}|{a}" for a in arms), color="C0", height=0.62)
        ax.collections[-1].set_gid(f"pta_ci|{t}")
        for i in range(A):
            txt = f"{100 * pta[i]:.1f} %" if np.isfinite(pta[i]) else "no solve"
            ax.text((hi[i] if np.isfinite(hi[i]) else 0.0) + 0.02, y[i], txt, va="center", fontsize="small")
        ax.set_xlim(0.0, 1.32)
        ax.set_xticks(np.linspace(0.0, 1.0, 5))
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        ax.set_yticks(y, arms, fontsize="small")
        ax.set_ylim(A - 0.5, -0.5)
        ax.set_ylabel("Arm")
        ax.set_xlabel(f"PTA (%), {pct} interval")
        ax.set_title(f"{t}: target attainment", fontsize="medium")
        # the metric's distribution
        ax = axes[j, 1]
        q = {v: np.asarray(sm[v].values[:, j], float) for v in ("q05", "q25", "median", "q75", "q95")}
        ax.hlines(y, q["q05"], q["q95"], color="C0", lw=1.4, gid=f"q90|{t}", label="90 % interval")
        ax.hlines(y, q["q25"], q["q75"], color="C0", lw=7.0, gid=f"q50|{t}", label="50 % interval")
        ax.plot(
            q["median"], y, "o", ms=5.5, mfc="white", mec="k", ls="none", gid=f"median|{t}", label="median"
        )
        fin = np.concatenate([q["q05"], q["q95"]])
        fin = fin[np.isfinite(fin)]
        if fin.size and fin.min() > 0 and fin.max() / fin.min() > 30.0:
            ax.set_xscale("log")
        ax.set_ylim(A - 0.5, -0.5)
        ax.set_yticks(y, [])
        xlo, xhi = ax.get_xlim()
        low, high = float(sm["target_low"].values[j]), float(sm["target_high"].values[j])
        if np.isfinite(low) or np.isfinite(high):
            ax.axvspan(
                low if np.isfinite(low) else xlo,
                high if np.isfinite(high) else xhi,
                facecolor=(0.17, 0.63, 0.17, 0.15),
                edgecolor="tab:green",
                ls="--",
                lw=1.0,
                zorder=0,
                gid=f"target|{t}",
                label="target range",
            )
            ax.set_xlim(xlo, xhi)
        metric = str(sm["target_metric"].values[j]) or "metric"
        ax.set_xlabel(_label(metric, unit or "1"))
        if ax.get_xscale() == "log":
            from matplotlib.ticker import FuncFormatter, LogLocator

            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_title(f"{t}: distribution over patients", fontsize="medium")
        # by subgroup
        if sub:
            ax = axes[j, 2]
            levels = [str(x) for x in sm["level"].values]
            L = len(levels)
            h = 0.8 / L
            for k, lv in enumerate(levels):
                yy = y + (k - (L - 1) / 2) * h
                pb = np.asarray(sm["pta_by"].values[k, :, j], float)
                lb = np.asarray(sm["pta_by_low"].values[k, :, j], float)
                hb = np.asarray(sm["pta_by_high"].values[k, :, j], float)
                n_lv = int(np.max(sm["n_by"].values[k])) if sm.sizes["arm"] else 0
                _pta_bars(
                    ax,
                    yy,
                    pb,
                    lb,
                    hb,
                    gid="\n".join(f"pta_by|{t}|{lv}|{a}" for a in arms),
                    color=f"C{k + 1}",
                    height=h * 0.95,
                    label=f"{sm.attrs['subgroup']} = {lv} (n = {n_lv})",
                )
                ax.collections[-1].set_gid(f"pta_by_ci|{t}|{lv}")
            ax.set_xlim(0.0, 1.0)
            ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
            ax.set_ylim(A - 0.5, -0.5)
            ax.set_yticks(y, [])
            ax.set_xlabel(f"PTA (%) by {sm.attrs['subgroup']}, {pct} interval")
            ax.set_title(f"{t}: by {sm.attrs['subgroup']}", fontsize="medium")
    # one legend for all panels, under them (inside a panel it would hide bars)
    handles: dict[str, Any] = {}
    for ax in axes[:, 1:].ravel():
        for hd, lb in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lb, hd)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncols=len(handles),
        fontsize="small",
        frameon=False,
    )
    failed = int(np.asarray(sm["n_failed"].values).sum())
    note = f"; {failed} failed solves (not attained; not in the quantiles)" if failed else ""
    fig.suptitle(_cohort_title(sm) + note, fontsize="medium")
    return _save(fig, path)


def cohort_trajectories(
    source: str | Path | xr.Dataset, *, output: str | None = None, path: str | Path | None = None
) -> Figure:
    """The stored trajectories of a cohort store (``twinrx cohort run --trajectories K``):
    one panel per arm with the median and 90 % band over time of ``output`` (default: the
    first target's output) across the first ``K`` patients (those of finished chunks whose
    solve succeeded under the arm), and the concentration targets of that output as shaded
    boxes (window x range). The axes are shared, so the arms compare panel to panel.

    Artists carry ids: ``median|arm``, ``band|arm`` and ``target|name``.
    """
    _check_path(path)
    ds = _cohort_dataset(source)
    if "trajectory" not in ds:
        raise ValueError(
            "the store holds no trajectories: run `twinrx cohort run` with --trajectories K to keep "
            "the outputs of the first K patients"
        )
    outs = [str(o) for o in ds["output"].values]
    sc = _cohort_scenario(ds)
    if output is None:
        output = sc.targets[0].output if sc is not None and sc.targets[0].output in outs else outs[0]
    if output not in outs:
        raise ValueError(f"output {output!r} is not stored; stored outputs: {', '.join(outs)}")
    o = outs.index(output)
    unit = str(ds["output_units"].values[o]) if "output_units" in ds.coords else "1"
    t = np.asarray(ds["time"].values, float)
    t_unit = str(ds["time"].attrs.get("units", "h"))
    arms = [str(a) for a in ds["arm"].values]
    A = len(arms)
    _, rows = _done_rows(ds)
    K = int(ds.sizes["traj"])
    traj = np.asarray(ds["trajectory"].values[:, :, o, :], float)  # (traj, arm, time)
    # the grid covers the targets' windows only: no line across a gap between two windows
    dt = np.diff(t)
    gaps = np.nonzero(dt > 4.0 * np.median(dt[dt > 0]))[0] if np.any(dt > 0) else np.array([], int)
    if gaps.size:
        t = np.insert(t, gaps + 1, np.nan)
        traj = np.insert(traj, gaps + 1, np.nan, axis=2)
    status = np.asarray(ds["status"].values[:K])
    use = rows[:K, None] & (status == 0)
    ncols = min(A, 4)
    nrows = math.ceil(A / ncols)
    fig, axes = _figure(nrows, ncols, size=(3.4 * ncols + 0.6, 2.9 * nrows + 0.6))
    axes = axes.ravel()
    for ax in axes[A:]:
        ax.set_axis_off()

    shown = []
    for a, arm in enumerate(arms):
        ax = axes[a]
        c = traj[use[:, a], a, :]
        shown.append(c.shape[0])
        if c.shape[0]:
            lo, med, hi = _nanquantile(c, [0.05, 0.5, 0.95])
            ax.fill_between(t, lo, hi, color="C0", alpha=0.2, lw=0, gid=f"band|{arm}", label="90 % band")
            ax.plot(t, med, color="C0", lw=1.5, gid=f"median|{arm}", label="median")
        ax.set_title(f"{arm} ({c.shape[0]} patients)", fontsize="small")
    ax0 = axes[0]
    ylo = min(ax.get_ylim()[0] for ax in axes[:A])
    yhi = max(ax.get_ylim()[1] for ax in axes[:A])
    if not np.any(traj[np.isfinite(traj)] < 0.0):
        ylo = 0.0  # a concentration: from zero
    for a in range(A):
        ax = axes[a]
        if sc is not None:
            targets = [t for t in sc.targets if t.output == output and t.metric != "time_in_range"]
            _target_boxes(ax, targets, ylo, yhi, lw=1.0)
        ax.set_ylim(ylo, yhi)
        ax.set_xlim(float(np.nanmin(t)), float(np.nanmax(t)))
        if a % ncols == 0:
            ax.set_ylabel(_label(output, unit))
        if a + ncols >= A:
            ax.set_xlabel(_label("Time", t_unit))
    ax0.legend(fontsize="x-small", frameon=False, loc="upper left")
    fig.suptitle(
        f"Cohort {ds.attrs.get('scenario', '')}: {output}, median and 90 % band over the first {K} patients",
        fontsize="medium",
    )
    return _save(fig, path)
