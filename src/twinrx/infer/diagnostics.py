"""Convergence diagnostics of MCMC draws: rank-normalised split R-hat, bulk and tail ESS
(Vehtari, Gelman, Simpson, Carpenter, Buerkner 2021, Bayesian Analysis 16(2):667-718),
built on numpyro's split R-hat and ESS (Geyer's initial monotone sequence)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from jax.scipy.special import ndtri as _ndtri
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

__all__ = ["rhat", "ess_bulk", "ess_tail", "summarize"]


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Rank-normalise draws ``(chain, draw, ...)`` pooled over chains (Blom's offset)."""
    c, n = x.shape[:2]
    flat = x.reshape(c * n, -1)
    ranks = np.empty_like(flat)
    for j in range(flat.shape[1]):
        col = flat[:, j]
        order = np.argsort(col, kind="mergesort")
        r = np.empty(col.size)
        r[order] = np.arange(1, col.size + 1)
        # average ranks of ties
        vals, inv, counts = np.unique(col, return_inverse=True, return_counts=True)
        if vals.size < col.size:
            sums = np.bincount(inv, weights=r)
            r = (sums / counts)[inv]
        ranks[:, j] = r
    z = np.asarray(_ndtri((ranks - 3.0 / 8.0) / (c * n + 0.25)))
    return z.reshape(x.shape)


def _ess(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, float)
    if x.shape[1] < 4:
        return np.full(x.shape[2:], np.nan)
    const = np.ptp(x.reshape(-1, *x.shape[2:]), axis=0) == 0
    with np.errstate(invalid="ignore", divide="ignore"):  # constant draws: NaN, set below
        out = np.asarray(effective_sample_size(x), float)
    return np.where(const, np.nan, out)


def rhat(x) -> np.ndarray:
    """Rank-normalised split R-hat: the larger of that of the rank-normalised draws and that
    of their folded version (which catches chains that differ in scale)."""
    x = np.asarray(x, float)
    if x.shape[1] < 4:
        return np.full(x.shape[2:], np.nan)
    z = _z_scale(x)
    folded = _z_scale(np.abs(x - np.median(x.reshape(-1, *x.shape[2:]), axis=0)))
    return np.maximum(np.asarray(split_gelman_rubin(z)), np.asarray(split_gelman_rubin(folded)))


def ess_bulk(x) -> np.ndarray:
    """Bulk effective sample size: the ESS of the rank-normalised split chains."""
    x = np.asarray(x, float)
    return _ess(_split(_z_scale(x)))


def ess_tail(x) -> np.ndarray:
    """Tail effective sample size: the smaller ESS of the 5 % and 95 % quantile indicators."""
    x = np.asarray(x, float)
    flat = x.reshape(-1, *x.shape[2:])
    q05, q95 = np.quantile(flat, 0.05, axis=0), np.quantile(flat, 0.95, axis=0)
    lo = _ess(_split((x <= q05).astype(float)))
    hi = _ess(_split((x <= q95).astype(float)))
    return np.minimum(lo, hi)


def _split(x: np.ndarray) -> np.ndarray:
    n = x.shape[1] // 2
    return np.concatenate([x[:, :n], x[:, x.shape[1] - n :]], axis=0)  # n = 0: both empty


def summarize(samples: Mapping[str, np.ndarray], names=None) -> dict[str, dict[str, np.ndarray]]:
    """Median, 5 % and 95 % quantiles, R-hat, bulk and tail ESS of each variable
    ``(chain, draw, ...)``."""
    out = {}
    for k in names or samples:
        x = np.asarray(samples[k], float)
        flat = x.reshape(-1, *x.shape[2:])
        out[k] = {
            "median": np.median(flat, axis=0),
            "q05": np.quantile(flat, 0.05, axis=0),
            "q95": np.quantile(flat, 0.95, axis=0),
            "r_hat": rhat(x),
            "ess_bulk": ess_bulk(x),
            "ess_tail": ess_tail(x),
        }
    return out
