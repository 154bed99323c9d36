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

__all__ = ["ResidualError", "ERROR_MODELS"]

ERROR_MODELS = ("additive", "proportional", "combined", "exponential")
_LOG_2PI = math.log(2.0 * math.pi)


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
        f = jnp.asarray(f)
        if self.kind == "additive" or self.kind == "exponential":
            return jnp.full_like(f, self.additive)
        if self.kind == "proportional":
            return self.proportional * jnp.abs(f)
        return jnp.sqrt(self.additive**2 + (self.proportional * f) ** 2)

    def log_prob(self, y, f):
        """Log density of observation ``y`` given prediction ``f`` (elementwise)."""
        y, f = jnp.asarray(y), jnp.asarray(f)
        if self.kind == "exponential":
            ly = jnp.log(y)
            z = (ly - jnp.log(f)) / self.additive
            return -0.5 * z**2 - math.log(self.additive) - 0.5 * _LOG_2PI - ly
        s = self.sd(f)
        z = (y - f) / s
        return -0.5 * z**2 - jnp.log(s) - 0.5 * _LOG_2PI

    def sample(self, key: jax.Array, f):
        """Noisy observations around ``f`` (same shape) using the explicit ``key``."""
        f = jnp.asarray(f)
        eps = jax.random.normal(key, f.shape)
        if self.kind == "exponential":
            return f * jnp.exp(self.additive * eps)
        return f + self.sd(f) * eps

    def describe(self) -> str:
        if self.kind == "additive":
            return f"additive, SD {self.additive:g}"
        if self.kind == "proportional":
            return f"proportional, {100 * self.proportional:g} %"
        if self.kind == "combined":
            return f"combined, SD {self.additive:g} + {100 * self.proportional:g} %"
        return f"exponential, SD {self.additive:g} (log scale)"
