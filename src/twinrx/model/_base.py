"""The model abstraction: compartments, parameters, a vector field and observations.

A model is an ``equinox.Module`` with only static fields, so it is hashable and ``jit``
compiles once per model. Parameters are a separate pytree (a ``dict`` of name -> array)
so that they can be vmapped per patient and sampled by numpyro under the same names.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp

from .._types import Array, Float

__all__ = ["AbstractModel", "Parameter", "Output"]


class Parameter(eqx.Module):
    """A named model parameter with a unit, a typical value and a description."""

    name: str = eqx.field(static=True)
    unit: str = eqx.field(static=True)
    value: float = eqx.field(static=True)
    description: str = eqx.field(static=True, default="")
    source: str = eqx.field(static=True, default="")
    bounds: tuple[float, float] = eqx.field(static=True, default=(-float("inf"), float("inf")))


class Output(eqx.Module):
    """A named model output (what is observed), with its unit."""

    name: str = eqx.field(static=True)
    unit: str = eqx.field(static=True)
    description: str = eqx.field(static=True, default="")


class AbstractModel(eqx.Module):
    """Base class of every twinrx model.

    Subclasses declare ``compartments`` (state names, in NONMEM's CMT order),
    ``parameters`` and ``outputs``, and implement :meth:`vector_field` and
    :meth:`observe`. Per-compartment dosing modifiers (lag time, bioavailability,
    modelled infusion rate and duration) name parameters, e.g.
    ``lag={"depot": "ALAG"}``; simulate-time overrides take precedence.

    The vector field is written for ONE patient: ``y`` has shape ``(n_state,)`` and
    ``rate`` is the piecewise-constant infusion input (amount/time per compartment).
    """

    name: eqx.AbstractVar[str]
    compartments: eqx.AbstractVar[tuple[str, ...]]
    parameters: eqx.AbstractVar[tuple[Parameter, ...]]
    outputs: eqx.AbstractVar[tuple[Output, ...]]
    amount_unit: eqx.AbstractVar[str]
    time_unit: eqx.AbstractVar[str]

    @abc.abstractmethod
    def vector_field(
        self,
        t: Float[Array, ""],
        y: Float[Array, " n"],
        p: Mapping[str, Array],
        rate: Float[Array, " n"],
    ) -> Float[Array, " n"]:
        """dy/dt at time ``t`` for state ``y``, parameters ``p`` and infusion ``rate``."""

    @abc.abstractmethod
    def observe(self, t: Float[Array, ""], y: Float[Array, " n"], p: Mapping[str, Array]) -> dict[str, Array]:
        """Outputs (e.g. concentrations) at time ``t`` from the state and parameters."""

    # ---- individual parameters and initial state ----------------------------------------
    def prepare(self, p: Mapping[str, Array]) -> Mapping[str, Array]:
        """The parameters the vector field sees, from those the user gives (population
        values, covariates, random effects). Called once per parameter set, outside the
        solver loop; ``vector_field``, ``observe``, ``initial_state`` and the closed form
        receive its result. Default: ``p`` itself."""
        return p

    @property
    def derived_names(self) -> tuple[str, ...]:
        """Names that :meth:`prepare` adds (dosing modifiers may refer to them)."""
        return ()

    @property
    def has_initial_state(self) -> bool:
        """Whether :meth:`initial_state` may be non-zero (a baseline, e.g. a turnover
        response or a glucose level); False lets the solver skip it."""
        return False

    def initial_state(self, p: Mapping[str, Array]) -> Float[Array, " n"]:
        """State at the first record and after a reset (EVID 3/4). Default: zeros."""
        return jnp.zeros(self.n_state)

    def host_inputs(self, params: Mapping, record_times) -> dict:
        """Host-side preparation of the user's inputs before compilation (e.g. categorical
        levels to codes, interpolation helpers for time-varying covariates). ``params``
        values are scalars, ``(R,)`` per-record arrays or ``(N,)``/``(N, R)`` for a cohort;
        ``record_times`` is ``(R,)`` or ``(N, R)``. Default: unchanged."""
        return dict(params)

    @property
    def input_names(self) -> tuple[str, ...]:
        """Every name the model reads from the user's parameter dict (parameters first)."""
        return self.parameter_names

    # ---- dosing modifiers -------------------------------------------------------------
    @property
    def dosing_modifiers(self) -> dict[str, dict[str, str]]:
        """Default per-compartment modifiers: {"lag"|"bioav"|"rate"|"duration": {cmt: param}}."""
        return {}

    # ---- helpers ----------------------------------------------------------------------
    @property
    def n_state(self) -> int:
        return len(self.compartments)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def typical_params(self) -> dict[str, Array]:
        """The literature default value of every parameter."""
        return {p.name: jnp.asarray(p.value, dtype=float) for p in self.parameters}

    def compartment_index(self, cmt: str | int) -> int:
        """0-based state index from a compartment name or a NONMEM CMT number (1-based)."""
        if isinstance(cmt, str) and not cmt.lstrip("-").isdigit():
            try:
                return self.compartments.index(cmt)
            except ValueError:
                raise ValueError(
                    f"unknown compartment {cmt!r} for model {self.name!r}; "
                    f"known: {', '.join(self.compartments)}"
                ) from None
        n = int(cmt)
        if not 1 <= n <= self.n_state:
            raise ValueError(
                f"compartment number {n} is out of range for model {self.name!r}, which has "
                f"{self.n_state} compartments (1={self.compartments[0]}"
                + "".join(f", {i + 1}={c}" for i, c in enumerate(self.compartments[1:], 1))
                + ")"
            )
        return n - 1

    def has_closed_form(self) -> bool:
        return False
