"""Linear mammillary compartment models (1-3 compartments, IV or first-order absorption).

Besides the ODE vector field, each model offers an exact closed-form propagator. The system
matrix ``A`` (amounts, 1/h) is diagonalised once per parameter set,
``A = V diag(lam) W`` with ``W = V^-1``, and one segment of length ``h`` with a constant
infusion input ``r`` is

    x(h) = V [ exp(lam h) * (W x0) + phi1(lam, h) * (W r) ],   phi1 = (exp(lam h) - 1) / lam.

That is O(n^2) per segment, independent of the number of past doses, which is what makes the
closed form fast for long regimens and large cohorts. The disposition block is symmetrised
with ``diag(sqrt(V))`` so its eigenvectors come from a symmetric eigenproblem (analytic for
one and two compartments); the depot is kept apart and enters through divided differences of
exponentials, exact also when KA equals a disposition rate.
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp

from .._types import Array, Float
from ._base import AbstractModel, Output, Parameter

__all__ = ["LinearCompartmentModel", "ClosedFormSystem", "phi1"]


class ClosedFormSystem(eqx.Module):
    """Exact propagator of a linear model.

    The disposition block is diagonalised, ``B = vecs @ diag(lam) @ inv`` (well conditioned:
    it comes from a symmetric eigenproblem). An oral model's depot stays a scalar and feeds the
    central compartment through divided differences of exponentials, which stay exact when
    KA equals a disposition eigenvalue (the "flip-flop" confluent case).

    States are handled in modal form ``m = [depot, z]`` (``z = inv @ x_disposition``), in which
    one segment is elementwise: :meth:`advance_modal`.

    The ``*_planar`` methods take a state as a list with one array per component, all of one
    shape (a state at each of T output times: T-vectors), and return one the same way: the
    arithmetic is then elementwise over that shape and vectorises, with no small component
    axis in the way. The array methods (component axis first) are thin wrappers.
    """

    lam: Float[Array, " nd"]
    vecs: Float[Array, "nd nd"]
    inv: Float[Array, "nd nd"]
    ka: Float[Array, ""]
    oral: bool = eqx.field(static=True)

    def modal_planar(self, x: list) -> list:
        if not self.oral:
            return _matvec(self.inv, x)
        return [x[0], *_matvec(self.inv, x[1:])]

    def unmodal_planar(self, m: list) -> list:
        if not self.oral:
            return _matvec(self.vecs, m)
        return [m[0], *_matvec(self.vecs, m[1:])]

    def advance_modal_planar(self, m: list, mr: list | None, h) -> list:
        """Modal state after ``h`` hours with constant modal input ``mr`` (None: no input)."""
        lams = [self.lam[i] for i in range(self.lam.shape[0])]
        e_lam = [jnp.exp(lam * h) for lam in lams]
        if not self.oral:
            if mr is None:
                return [e * mi for e, mi in zip(e_lam, m)]
            return [e * mi + phi1(lam, h) * ri for lam, e, mi, ri in zip(lams, e_lam, m, mr)]
        ka = self.ka
        d0 = m[0]
        e_ka = jnp.exp(-ka * h)
        d1 = e_ka * d0
        if mr is not None:
            d1 = d1 + phi1(-ka, h) * mr[0]
        z1 = []
        for i, (lam, e) in enumerate(zip(lams, e_lam)):
            # int_0^h e^{lam (h-s)} e^{-ka s} ds = (e^{lam h} - e^{-ka h}) / (lam + ka), a
            # divided difference of exponentials: exact also as lam -> -ka (KA = a
            # disposition rate).
            i1 = exp_divided_difference(lam, -ka, e, e_ka, h)
            kw = ka * self.inv[i, 0]
            z = e * m[1 + i] + kw * d0 * i1
            if mr is not None:
                # int_0^h e^{lam (h-s)} (1 - e^{-ka s}) / ka ds  (an infusion into the depot)
                p1 = phi1(lam, h)
                i2 = (p1 - i1) / jnp.where(ka == 0, 1.0, ka)
                z = z + p1 * mr[1 + i] + kw * mr[0] * i2
            z1.append(z)
        return [d1, *z1]

    def modal(self, x):
        return jnp.stack(self.modal_planar(list(x)))

    def unmodal(self, m):
        return jnp.stack(self.unmodal_planar(list(m)))

    def advance_modal(self, m, mr, h):
        """Array form of :meth:`advance_modal_planar`: ``m`` and ``mr`` of shape ``(n, ...)``."""
        return jnp.stack(self.advance_modal_planar(list(m), None if mr is None else list(mr), h))

    def advance(self, x: Float[Array, " n"], rate: Float[Array, " n"] | None, h) -> Float[Array, " n"]:
        """The state ``x`` after ``h`` hours with a constant input ``rate`` (None: none)."""
        mr = None if rate is None else self.modal_planar(list(rate))
        return jnp.stack(self.unmodal_planar(self.advance_modal_planar(self.modal_planar(list(x)), mr, h)))


def _matvec(a, x: list) -> list:
    """``a @ x`` for a state given as a list of components, as multiply-and-add: for these
    tiny matrices under ``vmap`` it fuses with the elementwise work around it, where a
    batched ``dot`` would not."""
    return [sum(a[i, j] * x[j] for j in range(len(x))) for i in range(a.shape[0])]


# Below |a - b| h = 1e-3 the divided difference is a Taylor series: 5 terms leave a relative
# error under (1e-3)^5 / 6! ~ 1.4e-18; above it the direct quotient loses at most
# eps / 1e-3 ~ 2e-13 to cancellation (its derivative eps / 1e-6 ~ 2e-10).
_DIVDIFF_SWITCH = 1e-3
_DIVDIFF_TERMS = 5


def exp_divided_difference(a, b, ea, eb, h):
    """``(exp(a h) - exp(b h)) / (a - b)`` given ``ea = exp(a h)`` and ``eb = exp(b h)``:
    no further exponential, and exact to round-off as ``a -> b`` (where it tends to
    ``h exp(a h)``). For rates ``a``, ``b`` and many times ``h`` the only division is the
    rates' own."""
    d = a - b
    inv_d = _safe_reciprocal(d)
    dh = d * h
    near = jnp.abs(dh) < _DIVDIFF_SWITCH
    # exp(b h) (exp(d h) - 1) / d = exp(b h) h sum_{k<K} (d h)^k / (k + 1)!, in Horner form
    # 1 + x/2 (1 + x/3 (1 + ... (1 + x/K))).
    acc = jnp.ones_like(dh)
    for k in range(_DIVDIFF_TERMS, 1, -1):
        acc = 1.0 + dh * acc / k
    series = eb * h * acc
    return jnp.where(near, series, (ea - eb) * inv_d)


def _safe_reciprocal(x):
    """``1 / x``, but 1 where ``|x| < 1e-100``: there the callers take their series branch,
    and the unused reciprocal must stay finite for its derivative (``-1 / x^2``) too."""
    return 1.0 / jnp.where(jnp.abs(x) < 1e-100, 1.0, x)


def phi1(lam, h):
    """(exp(lam h) - 1) / lam, stable as lam -> 0 (where it tends to h)."""
    lh = lam * h
    small = jnp.abs(lh) < 1e-8
    inv_lam = _safe_reciprocal(lam)  # per rate, not per time
    return jnp.where(small, h * (1.0 + 0.5 * lh), jnp.expm1(lh) * inv_lam)


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

    def observe(self, t, y, p):
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
        ka = jnp.asarray(p["KA"], float) if self.oral else jnp.asarray(0.0)
        return ClosedFormSystem(lam_d, vd, wd, ka, self.oral)

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
