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
    def observe(self, y: Float[Array, " n"], p: Mapping[str, Array]) -> dict[str, Array]:
        """Outputs (e.g. concentrations) from the state and parameters."""

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
