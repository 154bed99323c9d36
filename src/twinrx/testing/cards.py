"""The shared check suite of model cards (in the spirit of scikit-learn's estimator checks).

Every card in the library, and any card a user writes, can be put through the same checks::

    from twinrx.testing.cards import run_checks
    report = run_checks("models/my_model.toml")      # {check name: "ok" | "skipped: ..." }

Each ``check_*`` function raises ``AssertionError`` with a message when the card fails it.
What a check needs from the card comes from the card's ``[checks]`` table:

- ``dose = {cmt, amt, ii, addl, rate}``: the standard regimen (default: 100 amount units
  into the first compartment at t = 0);
- ``horizon``: how long to simulate (default: 72 time units);
- ``inputs = {NAME = value}``: covariates or parameters for the standard simulation;
- ``closed = {PARAM = 0, ...}`` and ``mass = [compartments]``: parameter values that close
  the system (no elimination) and the compartments whose amounts must then add up to the
  dose (PK mass balance). Pharmacokinetic cards must declare them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..events import EventTable
from ..model.card import CardModel
from ..model.library import get_model
from ..solve import simulate_arrays

__all__ = ["CHECKS", "run_checks", "standard_regimen"]


def _model(card) -> CardModel:
    m = card if isinstance(card, CardModel) else get_model(card)
    if not isinstance(m, CardModel):
        raise TypeError(f"{card!r} is not a model card")
    return m


def standard_regimen(m: CardModel):
    """(events, output times, inputs) of the card's standard regimen."""
    chk = m.card.checks
    dose = dict(chk.get("dose", {}))
    cmt = m.compartment_index(dose.get("cmt", m.compartments[0])) + 1
    amt = float(dose.get("amt", 100.0))
    ii, addl = float(dose.get("ii", 0.0)), int(dose.get("addl", 0))
    rate = float(dose.get("rate", 0.0))
    horizon = float(chk.get("horizon", 72.0))
    evid = 1 if amt > 0 else 2  # a model driven by its initial state and inputs only
    ev = EventTable.from_records(
        [0.0], [evid], [amt], [cmt], rate=[rate], ii=[ii], addl=[addl if evid == 1 else 0]
    )
    times = np.linspace(0.0, horizon, 97)
    inputs = dict(chk.get("inputs", {}))
    return ev, times, inputs


def _simulate(m, inputs, ev, times, solver=None):
    amounts, outputs, status = simulate_arrays(m, inputs, ev, times, solver=solver, rtol=1e-9, atol=1e-12)
    return np.asarray(amounts), {k: np.asarray(v) for k, v in outputs.items()}, int(status)


def check_documented(m: CardModel):
    """Every parameter has a unit and a literature source; the card has references;
    every output and covariate has a unit or is declared dimensionless/categorical."""
    c = m.card
    assert c.description, "the card has no description"
    assert c.references, "the card has no references"
    for p in c.parameters:
        assert p.unit.strip(), f'parameter {p.name} has no unit (write unit = "1" if dimensionless)'
        assert p.source.strip(), f"parameter {p.name} has no source"
        assert p.description.strip(), f"parameter {p.name} has no description"
    for o in c.outputs:
        assert o.unit.strip(), f"output {o.name} has no unit"
    for cov in c.covariates:
        assert cov.categorical or cov.unit.strip(), f"covariate {cov.name} has no unit"


def check_simulates(m: CardModel):
    """The standard regimen simulates, successfully and with finite outputs."""
    ev, times, inputs = standard_regimen(m)
    amounts, outputs, status = _simulate(m, inputs, ev, times)
    assert status == 0, f"solver status {status} on the standard regimen"
    assert np.all(np.isfinite(amounts)), "non-finite state"
    for k, v in outputs.items():
        assert np.all(np.isfinite(v)), f"non-finite output {k}"


def check_nonnegative(m: CardModel):
    """States declared non-negative stay so (to solver tolerance)."""
    ev, times, inputs = standard_regimen(m)
    amounts, _, _ = _simulate(m, inputs, ev, times)
    scale = np.max(np.abs(amounts), axis=0) + 1e-12
    for i, (name, nn) in enumerate(zip(m.compartments, m.card.nonnegative)):
        if nn:
            assert np.min(amounts[:, i]) >= -1e-7 * scale[i], (
                f"state {name} goes negative: {np.min(amounts[:, i]):g}"
            )


def check_mass_balance(m: CardModel):
    """With elimination switched off (``[checks] closed``), the amounts in the mass
    compartments add up to the dose at every time."""
    chk = m.card.checks
    if "closed" not in chk:
        if m.card.kind == "pk":
            raise AssertionError("a PK card must declare [checks] closed (and mass) for the mass balance")
        return "skipped: no [checks] closed"
    ev, times, inputs = standard_regimen(m)
    inputs = {**inputs, **chk["closed"]}
    mass = chk.get("mass", list(m.compartments))
    idx = [m.compartment_index(c) for c in mass]
    amounts, _, status = _simulate(m, inputs, ev, times)
    assert status == 0
    total = amounts[:, idx].sum(axis=1)
    dose = dict(chk.get("dose", {}))
    amt, ii, addl = float(dose.get("amt", 100.0)), float(dose.get("ii", 0.0)), int(dose.get("addl", 0))
    rate = float(dose.get("rate", 0.0))
    starts = np.arange(addl + 1) * ii
    since = times[:, None] - starts[None, :]
    given = np.clip(since * rate / amt, 0.0, 1.0) if rate > 0 else (since >= 0).astype(float)
    expected = amt * given.sum(axis=1)
    dose_total = amt * (addl + 1)
    err = np.max(np.abs(total - expected)) / max(dose_total, 1e-12)
    assert err < 1e-6, f"mass balance off by {err:.2e} of the dose"


def check_closed_form_matches_ode(m: CardModel):
    """Where a card declares a closed-form structure and ODEs, both give the same outputs."""
    if not (m.has_closed_form() and m.has_ode):
        return "skipped: not both a closed form and ODEs"
    ev, times, inputs = standard_regimen(m)
    a_cf, o_cf, _ = _simulate(m, inputs, ev, times, solver="closed_form")
    a_ode, o_ode, _ = _simulate(m, inputs, ev, times, solver="ode")
    scale = np.max(np.abs(a_cf)) + 1e-12
    err = np.max(np.abs(a_cf - a_ode)) / scale
    assert err < 1e-6, f"closed form and ODE differ by {err:.2e} (relative to the largest amount)"


def check_gradients_finite(m: CardModel):
    """Derivatives of the outputs with respect to every parameter are finite (and not all
    zero)."""
    ev, times, inputs = standard_regimen(m)
    params = {p.name: jnp.asarray(p.value) for p in m.parameters}
    fixed = {k: v for k, v in inputs.items() if k not in params}
    params.update({k: jnp.asarray(v, float) for k, v in inputs.items() if k in params})

    times = times[::4]  # 25 outputs are enough to see a NaN or a zero

    def loss(p):
        _, outputs, _ = simulate_arrays(m, {**fixed, **p}, ev, times, rtol=1e-8, atol=1e-10)
        return sum(jnp.sum(v) for v in outputs.values())

    g = jax.grad(loss)(params)
    bad = [k for k, v in g.items() if not np.isfinite(float(v))]
    assert not bad, f"non-finite gradient for {', '.join(bad)}"
    assert any(float(v) != 0.0 for v in g.values()), "every gradient is zero"


CHECKS: dict[str, Callable[[CardModel], str | None]] = {
    "documented": check_documented,
    "simulates": check_simulates,
    "nonnegative": check_nonnegative,
    "mass_balance": check_mass_balance,
    "closed_form_matches_ode": check_closed_form_matches_ode,
    "gradients_finite": check_gradients_finite,
}


def run_checks(card, *, raise_on_failure: bool = False) -> dict[str, str]:
    """Run every check on a card (a path, a library name or a compiled CardModel):
    ``{check: "ok" | "skipped: why" | "FAILED: why"}``."""
    m = _model(card)
    report = {}
    for name, fn in CHECKS.items():
        try:
            out = fn(m)
            report[name] = out if isinstance(out, str) else "ok"
        except AssertionError as err:
            if raise_on_failure:
                raise
            report[name] = f"FAILED: {err}"
    return report
