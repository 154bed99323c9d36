"""Model cards: the compiler's errors, and its semantics against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

import twinrx
from twinrx.model.card import CardError, from_text

BASE = """
[model]
name = "acc"
description = "an accumulator driven by a covariate"
kind = "physiology"
time_unit = "h"
amount_unit = "mg"
references = ["test"]

[parameters]
K = { value = 2.0, unit = "1/h", description = "rate", source = "test" }

[covariates]
X = { unit = "mg/h", reference = 0.0, interpolation = "INTERP" }

[compartments]
A = {}

[ode]
equations = '''
d/dt(A) = X
'''

[outputs.AOUT]
expr = "A"
unit = "mg"
"""


def _acc(interp):
    return from_text(BASE.replace("INTERP", interp), "acc.toml")


def _records(times):
    t = np.asarray(times, float)
    return twinrx.EventTable.from_records(t, [2] * len(t), [0.0] * len(t), [1] * len(t))


@pytest.mark.parametrize("solver", ["ode", "stiff"])
def test_covariate_interpolation_semantics(solver):
    """d/dt(A) = X(t): A is the integral of the covariate, exact for each rule."""
    t = np.array([0.0, 1.0, 3.0, 6.0])
    x = np.array([1.0, 3.0, 2.0, 5.0])
    ev = _records(t)
    out = {}
    for interp in ("nocb", "locf", "linear"):
        ds = twinrx.simulate(_acc(interp), {"X": x}, ev, solver=solver, rtol=1e-10, atol=1e-12)
        out[interp] = np.asarray(ds.AOUT).ravel()
    dt = np.diff(t)
    np.testing.assert_allclose(out["nocb"], np.r_[0, np.cumsum(x[1:] * dt)], rtol=1e-8)  # next value back
    np.testing.assert_allclose(out["locf"], np.r_[0, np.cumsum(x[:-1] * dt)], rtol=1e-8)  # last value on
    np.testing.assert_allclose(out["linear"], np.r_[0, np.cumsum(0.5 * (x[1:] + x[:-1]) * dt)], rtol=1e-8)
    # After the last record every rule holds the last value (5) on.
    after = np.array([6.0, 8.0, 10.0])
    for interp in ("nocb", "locf", "linear"):
        ds = twinrx.simulate(_acc(interp), {"X": x}, ev, times=after, solver=solver, rtol=1e-10, atol=1e-12)
        end = out[interp][-1]
        np.testing.assert_allclose(np.asarray(ds.AOUT).ravel(), end + x[-1] * (after - 6.0), rtol=1e-8)


def test_missing_covariate_values_are_filled_by_the_rule():
    t = np.array([0.0, 1.0, 3.0, 6.0])
    ev = _records(t)
    full = twinrx.simulate(_acc("linear"), {"X": np.array([1.0, 2.0, 4.0, 7.0])}, ev, solver="ode")
    gap = twinrx.simulate(_acc("linear"), {"X": np.array([1.0, np.nan, 4.0, 7.0])}, ev, solver="ode")
    # The gap at t=1 is filled on the line from (0, 1) to (3, 4), i.e. 2: the same result.
    np.testing.assert_allclose(np.asarray(gap.AOUT), np.asarray(full.AOUT), rtol=1e-9)
    with pytest.raises(ValueError, match="covariate X: no record has a value"):
        twinrx.simulate(_acc("linear"), {"X": np.full(4, np.nan)}, ev, solver="ode")


def test_covariate_effects_and_iiv_give_the_individual_clearance():
    """Allometric weight, a categorical genotype and exp(eta) on CL, against the built-in
    closed form with the clearance computed by hand."""
    card = (
        twinrx.get_model("one_cpt_iv")
        .card.text.replace("[compartments]", "[compartments]", 1)
        .replace(
            "[variability]",
            """[covariates]
WT = { unit = "kg", reference = 70.0 }
GENO = { levels = ["EM", "PM"], reference = "EM" }

[[effects]]
parameter = "CL"
covariate = "WT"
form = "power"
coefficient = 0.75

[[effects]]
parameter = "CL"
covariate = "GENO"
form = "categorical"
values = { EM = 1.0, PM = 0.4 }

[variability]""",
            1,
        )
    )
    m = from_text(card)
    ev = twinrx.EventTable.from_records([0.0], [1], [100.0], [1])
    times = [1.0, 5.0, 12.0]
    ds = twinrx.simulate(m, {"CL": 4.0, "V": 30.0, "WT": 90.0, "GENO": "pm", "eta_CL": 0.2}, ev, times=times)
    cl = 4.0 * (90 / 70) ** 0.75 * 0.4 * math.exp(0.2)
    expect = 100 / 30 * np.exp(-cl / 30 * np.array(times))
    np.testing.assert_allclose(np.asarray(ds.CP).ravel(), expect, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown level 'XM'; levels are EM, PM"):
        twinrx.simulate(m, {"GENO": "XM"}, ev, times=times)
    # codes are 0-based level indices: 1 is PM; 2 (a 1-based habit) is refused, naming them
    by_code = twinrx.simulate(
        m, {"CL": 4.0, "V": 30.0, "WT": 90.0, "GENO": 1, "eta_CL": 0.2}, ev, times=times
    )
    np.testing.assert_allclose(np.asarray(by_code.CP).ravel(), expect, rtol=1e-12)
    with pytest.raises(
        ValueError, match=r"code 2 is not a level; codes are 0-based level indices \(0 = EM, 1 = PM\)"
    ):
        twinrx.simulate(m, {"GENO": 2.0}, ev, times=times)
    geno = next(c for c in m.card.covariates if c.name == "GENO")
    mixed = geno.encode(np.array([["em", "PM"], ["Pm", "EM"]] * 1000, dtype=object))
    assert mixed.shape == (2000, 2) and mixed[:2].tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_baseline_initial_state_and_reset():
    """A turnover response R starts at KIN/KOUT and a reset (EVID 3) returns it there."""
    text = """
[model]
name = "turn"
description = "turnover"
kind = "pd"
time_unit = "h"
amount_unit = "mg"
references = ["test"]
[parameters]
KIN = { value = 10.0, unit = "mg/h", description = "zero-order input", source = "test" }
KOUT = { value = 0.5, unit = "1/h", description = "loss rate", source = "test" }
[compartments]
R = { initial = "KIN/KOUT" }
[ode]
equations = "d/dt(R) = KIN - KOUT*R"
[outputs]
ROUT = { expr = "R", unit = "mg" }
"""
    m = from_text(text)
    ev = twinrx.EventTable.from_records([0.0, 2.0, 4.0], [1, 3, 2], [10.0, 0.0, 0.0], [1, 1, 1])
    ds = twinrx.simulate(m, {}, ev, times=[1.0, 2.5, 3.0], solver="ode", rtol=1e-10, atol=1e-12)
    r0 = 20.0
    # After a bolus of 10 on the baseline, R relaxes back: R = r0 + 10 exp(-0.5 t).
    got = np.asarray(ds.ROUT).ravel()
    assert got[0] == pytest.approx(r0 + 10 * math.exp(-0.5), rel=1e-8)
    # The reset at t=2 puts R back on its baseline, where it stays.
    assert got[1] == pytest.approx(r0, rel=1e-8) and got[2] == pytest.approx(r0, rel=1e-8)


def test_card_lag_time_matches_the_builtin_modifier():
    text = twinrx.get_model("one_cpt_oral").card.text
    text = text.replace(
        "[variability]",
        'ALAG = { value = 0.75, unit = "h", description = "lag", source = "test" }\n\n[variability]',
        1,
    ).replace("[checks]", '[dosing.depot]\nlag = "ALAG"\n\n[checks]', 1)
    m = from_text(text)
    ev = twinrx.EventTable.from_records([0.0], [1], [100.0], [1])
    times = [0.5, 1.0, 3.0, 10.0]
    got = twinrx.simulate(m, {}, ev, times=times)
    ref = twinrx.simulate(
        twinrx.LinearCompartmentModel(1, True),
        {"CL": 5.0, "V": 50.0, "KA": 1.0},
        ev,
        times=times,
        lag={"depot": 0.75},
    )
    np.testing.assert_allclose(np.asarray(got.CP), np.asarray(ref.CP), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "edit, message, symbol, line",
    [
        (("d/dt(A) = X", "d/dt(A) = Xx"), "unknown symbol 'Xx'", "Xx", True),
        (("d/dt(A) = X", "d/dt(A) = X*K"), "unit mismatch in d/dt(A)", "A", True),
        (("d/dt(A) = X", "d/dt(A) = X + exp(A)"), "the argument of exp must be dimensionless", None, True),
        (("d/dt(A) = X", "d/dt(B) = X"), "'B' is not a compartment", "B", True),
        (('unit = "1/h"', 'unit = "1/hx"'), "unit '1/hx' of parameter K", None, False),
        (
            ("[outputs.AOUT]", "[outputs.AOUT]\nerror = { model = 'gaussian' }"),
            "error model must be one of",
            None,
            False,
        ),
        (('expr = "A"', 'expr = "A*K"'), "unit mismatch in output AOUT", "AOUT", True),
    ],
)
def test_card_errors_name_file_line_and_symbol(edit, message, symbol, line):
    text = BASE.replace("INTERP", "nocb").replace(*edit)
    with pytest.raises(CardError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        from_text(text, "models/acc.toml")
    assert err.value.path == "models/acc.toml"
    assert str(err.value).startswith("models/acc.toml:")
    if symbol:
        assert err.value.symbol == symbol
    if line:  # the line of the edited text, 1-based
        want = next(i + 1 for i, t in enumerate(text.splitlines()) if edit[1].splitlines()[0] in t)
        assert err.value.line == want, str(err.value)
    else:
        assert err.value.line is not None


def test_hill_term_units_and_symbolic_powers():
    """C^n/(EC50^n + C^n) is dimensionless; C^n + EC50 is not."""
    text = BASE.replace("INTERP", "nocb").replace(
        'K = { value = 2.0, unit = "1/h", description = "rate", source = "test" }',
        'K = { value = 2.0, unit = "1/h", description = "rate", source = "test" }\n'
        'N = { value = 1.5, unit = "1", description = "hill", source = "test" }\n'
        'C50 = { value = 3.0, unit = "mg", description = "potency", source = "test" }',
    )
    from_text(text.replace("d/dt(A) = X", "d/dt(A) = X*A^N/(C50^N + A^N)"))
    with pytest.raises(CardError, match="cannot be added"):
        from_text(text.replace("d/dt(A) = X", "d/dt(A) = X*(A^N + C50)/C50"))


def test_residual_error_models_against_scipy():
    from scipy import stats

    from twinrx.model.residual import ResidualError

    y, f = np.array([1.2, 3.5, 0.4]), np.array([1.0, 3.0, 0.5])
    comb = ResidualError("combined", 0.1, 0.2)
    sd = np.sqrt(0.1**2 + (0.2 * f) ** 2)
    np.testing.assert_allclose(comb.log_prob(y, f), stats.norm.logpdf(y, f, sd), rtol=1e-12)
    expo = ResidualError("exponential", 0.3)
    np.testing.assert_allclose(expo.log_prob(y, f), stats.lognorm.logpdf(y, 0.3, scale=f), rtol=1e-12)
    import jax

    draws = np.asarray(
        ResidualError("proportional", proportional=0.1).sample(jax.random.key(0), np.full(20000, 5.0))
    )
    assert abs(draws.std() / 0.5 - 1) < 0.03 and abs(draws.mean() - 5.0) < 0.02
    with pytest.raises(ValueError, match="combined error model needs additive > 0 and proportional > 0"):
        ResidualError("combined", 0.1)


def test_readme_example_card_compiles_and_passes_the_checks():
    """The complete example of models/README.md is a working card."""
    import re
    from pathlib import Path

    from twinrx.testing.cards import run_checks

    readme = (Path(__file__).resolve().parents[1] / "models" / "README.md").read_text()
    block = re.search(r"```toml\n(.*?)```", readme, re.S).group(1)
    m = from_text(block, "README example")
    assert m.has_closed_form() and m.has_ode and m.input_names[:4] == ("CL", "V1", "Q", "V2")
    assert np.allclose(m.variability.matrix(), [[0.147, 0.05], [0.05, 0.51]])
    report = run_checks(m)
    assert all(v == "ok" for v in report.values()), report
