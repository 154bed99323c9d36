"""Linear mammillary compartment models (1-3 compartments, IV or first-order absorption).

Besides the ODE vector field, each model offers an exact closed-form propagator. The system
matrix ``A`` (amounts, 1/h) is diagonalised once per parameter set,
``A = V diag(lam) W`` with ``W = V^-1``, and one segment of length ``h`` with a constant
infusion input ``r`` is

    x(h) = V [ exp(lam h) * (W x0) + phi1(lam, h) * (W r) ],   phi1 = (exp(lam h) - 1) / lam.

That is O(n^2) per segment, independent of the number of past doses, which is what makes the
closed form fast for long regimens and large cohorts. The disposition block is symmetrised
with ``diag(sqrt(V))`` so its eigenvectors come from a symmetric eigenproblem (analytic for
one and two compartments); the depot adds the eigenvalue ``-KA``.
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp

from .._types import Array, Float
from ._base import AbstractModel, Output, Parameter

__all__ = ["LinearCompartmentModel", "ClosedFormSystem", "phi1"]

# Relative separation below which KA is nudged away from a disposition eigenvalue: the
# eigenvector basis is singular when KA equals one of them (the "flip-flop" degenerate case).
_DEGENERATE_RTOL = 1e-7


class ClosedFormSystem(eqx.Module):
    """Diagonalisation of a linear system: ``A = vecs @ diag(lam) @ inv``."""

    lam: Float[Array, " n"]
    vecs: Float[Array, "n n"]
    inv: Float[Array, "n n"]

    def advance(self, x: Float[Array, " n"], rate: Float[Array, " n"], h) -> Float[Array, " n"]:
        e = jnp.exp(self.lam * h)
        z = e * (self.inv @ x) + phi1(self.lam, h) * (self.inv @ rate)
        return self.vecs @ z


def phi1(lam, h):
    """(exp(lam h) - 1) / lam, stable as lam -> 0 (where it tends to h)."""
    lh = lam * h
    small = jnp.abs(lh) < 1e-8
    lam_safe = jnp.where(lam == 0, 1.0, lam)
    return jnp.where(small, h * (1.0 + 0.5 * lh), jnp.expm1(lh) / lam_safe)


def _sym_eig2(a, b, d):
    """Eigen-decomposition of the symmetric 2x2 matrix [[a, b], [b, d]] (Jacobi rotation)."""
    theta = 0.5 * jnp.arctan2(2.0 * b, a - d)
    c, s = jnp.cos(theta), jnp.sin(theta)
    l1 = a * c * c + 2.0 * b * s * c + d * s * s
    l2 = a * s * s - 2.0 * b * s * c + d * c * c
    lam = jnp.stack([l1, l2])
    u = jnp.array([[c, -s], [s, c]])
    return lam, u


class LinearCompartmentModel(AbstractModel):
    """A 1-, 2- or 3-compartment linear model, IV or with first-order absorption.

    Parameters (hours, litres, milligrams):

    - 1 compartment: ``CL`` (L/h), ``V`` (L)
    - 2 compartments: ``CL``, ``V1``, ``Q`` (L/h), ``V2``
    - 3 compartments: ``CL``, ``V1``, ``Q2``, ``V2``, ``Q3``, ``V3``
    - oral models add ``KA`` (1/h) and a ``depot`` compartment numbered 1, as in NONMEM's
      ADVAN2/ADVAN4/ADVAN12.

    Output ``CP`` is the central concentration (mg/L).
    """

    n_disposition: int = eqx.field(static=True)
    oral: bool = eqx.field(static=True)
    name: str = eqx.field(static=True)
    defaults: tuple[tuple[str, float], ...] = eqx.field(static=True)
    amount_unit: str = eqx.field(static=True, default="mg")
    time_unit: str = eqx.field(static=True, default="h")

    def __init__(
        self,
        n_disposition: int,
        oral: bool,
        *,
        name: str | None = None,
        defaults: Mapping[str, float] | None = None,
    ):
        if n_disposition not in (1, 2, 3):
            raise ValueError("n_disposition must be 1, 2 or 3")
        self.n_disposition = n_disposition
        self.oral = bool(oral)
        self.name = name or f"{('one', 'two', 'three')[n_disposition - 1]}_cpt_" + ("oral" if oral else "iv")
        base = _DEFAULTS[n_disposition] | ({"KA": 1.0} if oral else {})
        if defaults:
            unknown = set(defaults) - set(base)
            if unknown:
                raise ValueError(f"unknown parameters for {self.name}: {sorted(unknown)}")
            base = base | dict(defaults)
        self.defaults = tuple((k, float(v)) for k, v in base.items())
        self.amount_unit = "mg"
        self.time_unit = "h"

    # ---- declarations -----------------------------------------------------------------
    @property
    def compartments(self) -> tuple[str, ...]:
        disp = {
            1: ("central",),
            2: ("central", "peripheral"),
            3: ("central", "peripheral1", "peripheral2"),
        }[self.n_disposition]
        return (("depot",) if self.oral else ()) + disp

    @property
    def parameters(self) -> tuple[Parameter, ...]:
        return tuple(Parameter(k, _UNITS[k][0], v, _UNITS[k][1]) for k, v in self.defaults)

    @property
    def outputs(self) -> tuple[Output, ...]:
        return (Output("CP", "mg/L", "central concentration"),)

    def has_closed_form(self) -> bool:
        return True

    # ---- dynamics ---------------------------------------------------------------------
    def _rates(self, p: Mapping[str, Array]):
        """Micro-constants: (k10, [(k1j, kj1), ...], central volume)."""
        if self.n_disposition == 1:
            return p["CL"] / p["V"], [], p["V"]
        if self.n_disposition == 2:
            v1 = p["V1"]
            return p["CL"] / v1, [(p["Q"] / v1, p["Q"] / p["V2"])], v1
        v1 = p["V1"]
        return (
            p["CL"] / v1,
            [(p["Q2"] / v1, p["Q2"] / p["V2"]), (p["Q3"] / v1, p["Q3"] / p["V3"])],
            v1,
        )

    def system_matrix(self, p: Mapping[str, Array]) -> Float[Array, "n n"]:
        """The matrix A of dx/dt = A x + rate (amounts)."""
        k10, inter, _ = self._rates(p)
        nd = self.n_disposition
        b = jnp.zeros((nd, nd))
        b = b.at[0, 0].set(-(k10 + sum(k1j for k1j, _ in inter)))
        for j, (k1j, kj1) in enumerate(inter, start=1):
            b = b.at[0, j].set(kj1).at[j, 0].set(k1j).at[j, j].set(-kj1)
        if not self.oral:
            return b
        a = jnp.zeros((nd + 1, nd + 1))
        a = a.at[1:, 1:].set(b).at[0, 0].set(-p["KA"]).at[1, 0].set(p["KA"])
        return a

    def vector_field(self, t, y, p, rate):
        return self.system_matrix(p) @ y + rate

    def observe(self, y, p):
        c = y[1] if self.oral else y[0]
        _, _, v1 = self._rates(p)
        return {"CP": c / v1}

    # ---- closed form ------------------------------------------------------------------
    def closed_form_system(self, p: Mapping[str, Array]) -> ClosedFormSystem:
        """Eigen-decomposition of the system matrix for parameters ``p`` (scalars)."""
        k10, inter, _ = self._rates(p)
        vols = self._volumes(p)
        nd = self.n_disposition
        # Symmetrised disposition matrix S^-1 B S with S = diag(sqrt(V)).
        if nd == 1:
            lam_d = jnp.stack([-k10])
            u = jnp.ones((1, 1))
        else:
            b = self.system_matrix({**p, "KA": jnp.asarray(0.0)} if self.oral else p)
            b = b[1:, 1:] if self.oral else b
            sq = jnp.sqrt(vols)
            bs = b * sq[None, :] / sq[:, None]
            bs = 0.5 * (bs + bs.T)
            if nd == 2:
                lam_d, u = _sym_eig2(bs[0, 0], bs[0, 1], bs[1, 1])
            else:
                lam_d, u = jnp.linalg.eigh(bs)
        sq = jnp.sqrt(vols)
        vd = sq[:, None] * u  # B = vd diag(lam_d) wd
        wd = u.T / sq[None, :]
        if not self.oral:
            return ClosedFormSystem(lam_d, vd, wd)
        ka = p["KA"]
        # Nudge KA off a disposition eigenvalue (the eigenbasis is singular there); the
        # relative perturbation is below _DEGENERATE_RTOL.
        gap = lam_d + ka
        tol = _DEGENERATE_RTOL * (jnp.abs(lam_d) + ka)
        near = jnp.abs(gap) < tol
        shift = jnp.sum(jnp.where(near, jnp.where(gap >= 0, tol, -tol) - gap, 0.0))
        ka = ka + shift
        gap = lam_d + ka
        # Eigenvector of -KA: [1, w] with (B + KA I) w = -KA e_central.
        w = -ka * (vd @ ((wd[:, 0]) / gap))
        n = nd + 1
        vecs = jnp.zeros((n, n)).at[0, 0].set(1.0).at[1:, 0].set(w).at[1:, 1:].set(vd)
        inv = jnp.zeros((n, n)).at[0, 0].set(1.0).at[1:, 0].set(-(wd @ w)).at[1:, 1:].set(wd)
        lam = jnp.concatenate([jnp.stack([-ka]), lam_d])
        return ClosedFormSystem(lam, vecs, inv)

    def _volumes(self, p):
        if self.n_disposition == 1:
            return jnp.stack([p["V"]])
        if self.n_disposition == 2:
            return jnp.stack([p["V1"], p["V2"]])
        return jnp.stack([p["V1"], p["V2"], p["V3"]])


_DEFAULTS = {
    1: {"CL": 5.0, "V": 50.0},
    2: {"CL": 5.0, "V1": 50.0, "Q": 10.0, "V2": 100.0},
    3: {"CL": 5.0, "V1": 50.0, "Q2": 10.0, "V2": 100.0, "Q3": 2.0, "V3": 200.0},
}
_UNITS = {
    "CL": ("L/h", "clearance from the central compartment"),
    "V": ("L", "volume of distribution"),
    "V1": ("L", "central volume"),
    "V2": ("L", "peripheral volume (first)"),
    "V3": ("L", "peripheral volume (second)"),
    "Q": ("L/h", "inter-compartmental clearance"),
    "Q2": ("L/h", "inter-compartmental clearance to peripheral 1"),
    "Q3": ("L/h", "inter-compartmental clearance to peripheral 2"),
    "KA": ("1/h", "first-order absorption rate constant"),
}
