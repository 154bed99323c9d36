"""Residual-error models of an output: additive, proportional, combined, exponential.

Written with :mod:`jax.numpy` only (no numpyro), so the same definition serves simulation
of noisy observations here and the likelihood of the Bayesian fit in ``twinrx.infer``.

With ``f`` the model prediction:

- ``additive``: ``y = f + eps``, ``sd = a``
- ``proportional``: ``y = f (1 + eps)``, ``sd = b |f|``
- ``combined``: ``sd = sqrt(a^2 + b^2 f^2)`` (NONMEM's usual combined error, variances add)
- ``exponential``: ``log y = log f + eps``, ``sd = a`` on the log scale
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats

__all__ = [
    "ERROR_MODELS",
    "ResidualError",
    "residual_logcdf",
    "residual_logpdf",
    "residual_noise",
    "residual_sd",
]

ERROR_MODELS = ("additive", "proportional", "combined", "exponential")
_LOG_2PI = math.log(2.0 * math.pi)


# The functions take the magnitudes as arguments (JAX values: estimated in a fit);
# ResidualError holds fixed ones (a card's values).
def residual_sd(kind: str, f, additive=0.0, proportional=0.0):
    """Standard deviation of an observation around prediction ``f`` (on the log scale for
    ``exponential``)."""
    f = jnp.asarray(f)
    if kind in ("additive", "exponential"):
        return jnp.broadcast_to(jnp.asarray(additive, f.dtype), f.shape)
    if kind == "proportional":
        return proportional * jnp.abs(f)
    return jnp.sqrt(additive**2 + (proportional * f) ** 2)


def _standardise(kind, y, f, additive, proportional):
    """``(z, log sd, log Jacobian)``: the observation on the scale where it is normal."""
    y, f = jnp.asarray(y), jnp.asarray(f)
    if kind == "exponential":
        ly = jnp.log(y)
        return (ly - jnp.log(f)) / additive, jnp.log(additive) + jnp.zeros_like(ly), -ly
    s = residual_sd(kind, f, additive, proportional)
    return (y - f) / s, jnp.log(s), jnp.zeros_like(y)


def residual_logpdf(kind: str, y, f, additive=0.0, proportional=0.0):
    """Log density of observation ``y`` given prediction ``f`` (elementwise)."""
    z, log_s, log_jac = _standardise(kind, y, f, additive, proportional)
    return -0.5 * z**2 - log_s - 0.5 * _LOG_2PI + log_jac


def residual_logcdf(kind: str, limit, f, additive=0.0, proportional=0.0, *, upper=False):
    """Log probability that the observation lies below ``limit`` (or above it with
    ``upper``): the M3 likelihood of a value censored at a quantification limit."""
    z, _, _ = _standardise(kind, limit, f, additive, proportional)
    return jax.scipy.stats.norm.logcdf(-z if upper else z)


def residual_noise(kind: str, f, eps, additive=0.0, proportional=0.0):
    """Observations around ``f`` from standard-normal ``eps``."""
    if kind == "exponential":
        return f * jnp.exp(additive * eps)
    return f + residual_sd(kind, f, additive, proportional) * eps


class ResidualError(eqx.Module):
    """The residual error of one output. ``additive`` is in the output's unit (or on the
    log scale for ``exponential``); ``proportional`` is a fraction (0.1 = 10 %)."""

    kind: str = eqx.field(static=True)
    additive: float = eqx.field(static=True, default=0.0)
    proportional: float = eqx.field(static=True, default=0.0)

    def __check_init__(self):
        if self.kind not in ERROR_MODELS:
            raise ValueError(f"error model must be one of {', '.join(ERROR_MODELS)}, not {self.kind!r}")
        if self.additive < 0 or self.proportional < 0:
            raise ValueError("residual-error magnitudes must be >= 0")
        need = {
            "additive": self.additive > 0,
            "proportional": self.proportional > 0,
            "combined": self.additive > 0 and self.proportional > 0,
            "exponential": self.additive > 0,
        }[self.kind]
        if not need:
            what = {
                "additive": "additive > 0",
                "proportional": "proportional > 0",
                "combined": "additive > 0 and proportional > 0",
                "exponential": "additive > 0 (the SD on the log scale)",
            }[self.kind]
            raise ValueError(f"a {self.kind} error model needs {what}")

    def sd(self, f):
        """Standard deviation of an observation around prediction ``f`` (log scale for
        ``exponential``)."""
        return residual_sd(self.kind, f, self.additive, self.proportional)

    def log_prob(self, y, f):
        """Log density of observation ``y`` given prediction ``f`` (elementwise)."""
        return residual_logpdf(self.kind, y, f, self.additive, self.proportional)

    def sample(self, key: jax.Array, f):
        """Noisy observations around ``f`` (same shape) using the explicit ``key``."""
        f = jnp.asarray(f)
        eps = jax.random.normal(key, f.shape)
        return residual_noise(self.kind, f, eps, self.additive, self.proportional)

    def describe(self) -> str:
        if self.kind == "additive":
            return f"additive, SD {self.additive:g}"
        if self.kind == "proportional":
            return f"proportional, {100 * self.proportional:g} %"
        if self.kind == "combined":
            return f"combined, SD {self.additive:g} + {100 * self.proportional:g} %"
        return f"exponential, SD {self.additive:g} (log scale)"
