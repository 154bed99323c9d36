"""Array aliases and the solver-status enumeration shared by every layer."""

from __future__ import annotations

import enum

from jaxtyping import Array, Bool, Float, Int

__all__ = ["Array", "Bool", "Float", "Int", "Status", "status_message"]


class Status(enum.IntEnum):
    """Per-patient outcome of a simulation. Failures are data, never silent NaN."""

    SUCCESS = 0
    MAX_STEPS = 1
    SOLVER_FAILED = 2
    STEADY_STATE_NOT_CONVERGED = 3
    STEADY_STATE_OVERLAP = 4
    NONFINITE = 5


_MESSAGES = {
    Status.SUCCESS: "ok",
    Status.MAX_STEPS: (
        "the ODE solver reached max_steps inside one segment; pass a larger `max_steps`, "
        "or `solver='stiff'` if the model is stiff"
    ),
    Status.SOLVER_FAILED: (
        "the ODE solver failed (step size collapsed or non-finite derivatives); check the "
        "parameters, or try `solver='stiff'`"
    ),
    Status.STEADY_STATE_NOT_CONVERGED: (
        "the steady-state (SS) Newton iteration did not converge; pass a larger `ss_iters` "
        "or check that the model has a periodic steady state for this regimen"
    ),
    Status.STEADY_STATE_OVERLAP: (
        "a steady-state infusion overlaps more earlier infusions than `max_ss_overlap` "
        "allows (duration much longer than II); pass a larger `max_ss_overlap`"
    ),
    Status.NONFINITE: (
        "the solution contains NaN or infinite values; check parameters for zeros or "
        "negative volumes/clearances"
    ),
}


def status_message(code: int) -> str:
    """Actionable message for a status code."""
    return _MESSAGES[Status(int(code))]
