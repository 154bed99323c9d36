"""Scenarios: named regimens and targets, compared on a twin with its full uncertainty.

A :class:`Scenario` (``scenarios/*.toml``, format in ``scenarios/README.md``) names a model
card, dosing regimens, targets and a horizon. :func:`compare` simulates every regimen for
every draw of a twin (a fitted patient's posterior, or the card's population distribution
until a fit exists), computes each target's exposure metric per draw, and summarises it
per regimen: median and 90% interval, the probability of target attainment (PTA), and a
ranking. :func:`optimise` finds the dose that maximises the PTA (or minimises an expected
loss) by differentiating through the simulator.

Every regimen is expanded into one record per dose (no ADDL), so that each dose's amount
and time are ordinary arrays: traced for optimisation, perturbed per draw for adherence
(:class:`Adherence`: missed doses are amounts of 0, late doses shifted times), and changed
per draw by feedback rules (:class:`Rule`: measure the simulated patient at decision times,
then scale, set, hold or add doses). Every draw keeps the same fixed-shape events, so one
compiled simulation serves all draws and all decisions.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .events import EventTable
from .model.library import get_model
from .solve import simulate_arrays
from .units import conversion

__all__ = [
    "DoseBlock",
    "Adherence",
    "Condition",
    "Rule",
    "Regimen",
    "Target",
    "Scenario",
    "load_scenario",
    "twin_draws",
    "compare",
    "optimise",
    "with_amounts",
    "METRICS",
    "RULE_METRICS",
]

METRICS = ("auc", "auc24", "cmax", "cmin", "trough", "value", "time_in_range")
RULE_METRICS = ("value", "trough", "auc", "auc24", "cmax", "cmin")
_EPS = 1e-6  # h: a trough is read this long before the dose that ends its window


# ------------------------------------------------------------------------------ regimens
@functools.lru_cache(maxsize=64)
def _parsed(text: str):
    """A dose formula's parsed expression (parsed once per text, not per chunk and arm)."""
    from .model.expr import Expr

    return Expr.parse(text)


@dataclasses.dataclass(frozen=True)
class DoseFormula:
    """A dose computed for each patient from covariates: a dosing algorithm (IWPC's
    pharmacogenetic warfarin dose, a renal-function nomogram) written as a card expression
    (:mod:`twinrx.model.expr`).

    ``text`` reads continuous covariates by name (``AGE``, ``HT``, ``WT``, ``CRCL``, in
    ``units`` where given: a cohort's covariates are converted to them) and categorical
    ones through ``levels``: ``(symbol, covariate, ((level, value), ...))`` gives ``symbol``
    the value of the patient's level (every level the patients have must be listed). The
    result, times ``scale`` (the dose unit's conversion to the compartment's), is rounded to
    a multiple of ``round_to`` (when > 0: tablet strengths) and kept within ``[min_dose,
    max_dose]``. A patient whose formula is not finite (a covariate out of its domain) gets
    NaN: that patient's solve fails and is flagged, the others complete."""

    text: str
    levels: tuple[tuple[str, str, tuple[tuple[str, float], ...]], ...] = ()
    units: tuple[tuple[str, str], ...] = ()
    round_to: float = 0.0
    min_dose: float = 0.0
    max_dose: float = math.inf
    scale: float = 1.0

    @property
    def direct(self) -> tuple[str, ...]:
        """The covariates the formula reads by name (not through ``levels``)."""
        symbols = {sym for sym, _, _ in self.levels}
        return tuple(n for n in sorted(_parsed(self.text).symbols) if n not in symbols)

    @property
    def covariates(self) -> tuple[str, ...]:
        """The covariates the formula reads (directly or through ``levels``)."""
        return tuple(dict.fromkeys([*self.direct, *(cov for _, cov, _ in self.levels)]))

    def amounts(self, values: Mapping[str, Any], who: str, units: Mapping[str, str] | None = None):
        """The dose for each patient: a number for scalar ``values`` (one patient), else an
        array ``(n,)``. ``units``: the units ``values`` are in (a cohort's), converted to
        the formula's ``units``."""

        def get(name):
            if name not in values:
                raise ValueError(
                    f"{who}: the dose formula reads {name!r}, which the patient does not have; give it in "
                    "[patient] (or the cohort's [population.covariates])"
                )
            return values[name]

        env = {}
        want = dict(self.units)
        for sym, cov, table in self.levels:
            lookup = dict(table)
            got = np.asarray(get(cov), dtype=object)
            unknown = sorted({str(v) for v in np.atleast_1d(got)} - set(lookup))
            if unknown:
                raise ValueError(
                    f"{who}: the dose formula's {sym!r} has no value for {cov} = {', '.join(unknown)}; "
                    f"it lists {', '.join(lookup)}"
                )
            env[sym] = np.array([float(lookup[str(v)]) for v in np.atleast_1d(got)]).reshape(got.shape)
        for name in self.direct:
            v = get(name)
            if isinstance(v, str) or np.asarray(v).dtype.kind in "OUS":
                raise ValueError(
                    f"{who}: the dose formula reads {name!r} as a number, but it is categorical ({v!r}); "
                    f"map its levels to numbers: levels = {{ x = {{ of = {name!r}, ... }} }}"
                )
            a = np.asarray(v, float)
            have = (units or {}).get(name)
            if name in want and have:
                a = a * conversion(have, want[name])
            env[name] = a
        with np.errstate(invalid="ignore"):
            dose = np.asarray(_parsed(self.text)(env), float) * self.scale
            if self.round_to > 0:
                dose = np.round(dose / self.round_to) * self.round_to
            dose = np.where(np.isfinite(dose), np.clip(dose, self.min_dose, self.max_dose), np.nan)
        if dose.ndim == 0:
            if not np.isfinite(dose):
                raise ValueError(f"{who}: the dose formula gives {float(dose)} for this patient")
            return float(dose)
        return dose


@dataclasses.dataclass(frozen=True)
class DoseBlock:
    """A repeated dose: ``amount`` (in the compartment's amount unit, or per kg of ``WT``
    when ``per_kg``), or each patient's own from ``formula``, every ``every`` hours from
    ``start``, ``count`` times (or until ``stop``, or to the horizon), into compartment
    ``cmt``, as a bolus or an infusion of ``duration`` h."""

    amount: float
    cmt: str
    every: float | None = None
    start: float = 0.0
    count: int | None = None
    stop: float | None = None
    duration: float = 0.0
    per_kg: bool = False
    formula: DoseFormula | None = None

    def times(self, horizon: float) -> np.ndarray:
        if self.every is None:
            return np.array([self.start]) if self.start <= horizon else np.zeros(0)
        end = min(horizon, self.stop) if self.stop is not None else horizon
        n = int(math.floor((end - self.start) / self.every + 1e-9)) + 1
        if self.stop is not None:  # a stop time excludes a dose at it
            n = sum(1 for k in range(n) if self.start + k * self.every < self.stop)
        if self.count is not None:
            n = min(n, self.count)
        return self.start + self.every * np.arange(max(n, 0))


@dataclasses.dataclass(frozen=True)
class Adherence:
    """How the patient takes a regimen's doses (not the scenario's background doses).

    Random: each dose is missed with probability ``missed`` (independently), and a taken
    dose is late by ``delay_mean + delay_sd * z`` (``z`` standard normal; negative is
    early; a dose never moves before time 0), drawn per twin draw from an explicit key.
    Recorded: ``record`` gives, per dose in time order, the fraction of it taken (1 taken,
    0 missed, 0.5 half a tablet) and ``delays`` its delay; doses past the end of a record
    follow the random part (or the plan, without one). Times are in the model's time unit
    (h for every PK card).
    """

    missed: float = 0.0
    delay_sd: float = 0.0
    delay_mean: float = 0.0
    record: tuple[float, ...] = ()
    delays: tuple[float, ...] = ()

    @property
    def random(self) -> bool:
        return self.missed > 0 or self.delay_sd > 0

    def pattern(self, n_doses: int, n: int, *, key=None) -> tuple[np.ndarray, np.ndarray]:
        """``(taken, delay)``, each ``(n, n_doses)``: the fraction of each dose taken and its
        delay (h), for ``n`` draws."""
        taken = np.ones((n, n_doses))
        delay = np.full((n, n_doses), float(self.delay_mean))
        if self.random:
            if key is None:
                raise ValueError(
                    "a regimen with random adherence (missed or delay_sd) needs an explicit key: "
                    "compare(..., key=jax.random.key(seed))"
                )
            ku, kz = jax.random.split(key)
            taken = (np.asarray(jax.random.uniform(ku, (n, n_doses))) >= self.missed).astype(float)
            delay = delay + self.delay_sd * np.asarray(jax.random.normal(kz, (n, n_doses)))
        k = min(len(self.record), n_doses)
        taken[:, :k] = np.asarray(self.record[:k], float)
        k = min(len(self.delays), n_doses)
        delay[:, :k] = np.asarray(self.delays[:k], float)
        return taken, delay


@dataclasses.dataclass(frozen=True)
class Condition:
    """One branch of a :class:`Rule`: when ``above <= measured < below``, change the
    regimen's doses from the decision time on.

    ``scale`` multiplies them, ``target`` multiplies them by ``target / measured``
    (proportional adjustment, exact for a linear model at steady state), ``set_to`` sets
    them (at most one of the three); ``hold`` skips the next ``hold`` of them; ``add``
    gives an extra dose of that amount at the decision time."""

    above: float = -math.inf
    below: float = math.inf
    scale: float | None = None
    target: float | None = None
    set_to: float | None = None
    hold: int = 0
    add: float | None = None

    def holds(self, m: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.isfinite(m) & (m >= self.above) & (m < self.below)


@dataclasses.dataclass(frozen=True)
class Rule:
    """A feedback rule: at each decision time, measure ``metric`` of ``output`` on the
    simulated patient and apply the first of ``when``'s conditions that holds.

    Decision times: ``at`` and/or every ``every`` h from ``start`` to before ``stop`` (the
    horizon by default). The measurement is taken before any dose at the decision time:
    ``value``/``trough`` the level just before it; ``auc``, ``auc24``, ``cmax``, ``cmin``
    over the ``over`` hours before it, or over an absolute ``window`` (which may lie after
    the decision: a forecast under the doses planned so far, as model-informed dosing
    software gives). New amounts are rounded to multiples of ``round_to`` (when > 0) and
    kept within ``[min_dose, max_dose]``."""

    output: str
    metric: str
    when: tuple[Condition, ...]
    at: tuple[float, ...] = ()
    every: float | None = None
    start: float | None = None
    stop: float | None = None
    over: float | None = None
    window: tuple[float, float] | None = None
    round_to: float = 0.0
    min_dose: float = 0.0
    max_dose: float = math.inf
    name: str = ""

    def times(self, horizon: float) -> np.ndarray:
        """Decision times in (0, horizon), sorted."""
        ts = list(self.at)
        if self.every is not None:
            t0 = self.every if self.start is None else self.start
            end = horizon if self.stop is None else min(self.stop, horizon)
            ts += [t0 + k * self.every for k in range(int(math.ceil((end - t0) / self.every - 1e-9)))]
        return np.unique(np.asarray([t for t in ts if 0 < t < horizon], float))

    def measurement(self, t: float) -> Target:
        """The measurement at decision time ``t`` as a :class:`Target` (its window and metric)."""
        if self.window is not None:
            return Target(self.name, self.output, self.metric, self.window)
        if self.metric in ("value", "trough"):
            return Target(self.name, self.output, "trough", (max(t - 1.0, 0.0), t))
        return Target(self.name, self.output, self.metric, (max(t - float(self.over), 0.0), t))

    def apply(self, m: np.ndarray, t: float, amt: np.ndarray, plan: _Plan, index: int) -> np.ndarray:
        """New planned amounts ``(n, R)`` after the decision at ``t`` on measurements ``m``
        (``(n,)``); every draw is decided on its own measurement."""
        future = np.nonzero(plan.own & (plan.time >= t - 1e-9))[0]  # time-sorted record indices
        decided = np.zeros(m.shape[0], bool)
        out = amt.copy()
        for cond in self.when:
            hit = cond.holds(m) & ~decided
            decided |= hit
            if not hit.any():
                continue
            new = amt[hit][:, future]
            factor = None
            if cond.scale is not None:
                factor = np.full(int(hit.sum()), cond.scale)
            elif cond.target is not None:
                mh = m[hit]
                factor = np.where(mh > 0, cond.target / np.where(mh > 0, mh, 1.0), 1.0)
            if factor is not None or cond.set_to is not None:
                new = new * factor[:, None] if factor is not None else np.full_like(new, cond.set_to)
                if self.round_to > 0:
                    new = np.round(new / self.round_to) * self.round_to
                new = np.clip(new, self.min_dose, self.max_dose)
            if cond.hold:
                new[:, : cond.hold] = 0.0
            rows = np.nonzero(hit)[0]
            out[np.ix_(rows, future)] = new
            if cond.add is not None:
                out[rows, plan.slots[(index, float(t))]] = cond.add
        return out


@dataclasses.dataclass(frozen=True)
class Regimen:
    """A named regimen: dose blocks (a loading dose, a maintenance schedule, a switch of
    route or drug at a time) given in order, how the patient takes them (``adherence``),
    and feedback ``rules`` (therapeutic drug monitoring, titration)."""

    name: str
    blocks: tuple[DoseBlock, ...]
    adherence: Adherence | None = None
    rules: tuple[Rule, ...] = ()

    def doses(self, model, horizon: float, weight=None, covariates: Mapping[str, Any] | None = None):
        """(time, amount, compartment index, duration) of every dose, sorted by time.

        ``weight`` (kg) scales the per-kg doses: a number (one patient), or an array
        ``(n,)`` (one weight per patient), which makes the amounts ``(n, R)``; likewise the
        ``covariates`` a dose formula reads (:class:`DoseFormula`)."""
        rows = _block_rows(self.blocks, model, horizon, weight, f"regimen {self.name!r}", covariates)
        if not rows:
            raise ValueError(f"regimen {self.name!r} gives no dose within the horizon ({horizon} h)")
        rows.sort(key=lambda r: r[0])
        t, a, c, d, kg = zip(*rows)
        return (
            np.asarray(t, float),
            _per_kg(a, np.asarray(kg, bool), weight),
            np.asarray(c, int),
            np.asarray(d, float),
        )

    def events(
        self, model, horizon: float, weight: float | None = None, covariates: Mapping[str, Any] | None = None
    ) -> EventTable:
        """The planned doses (full adherence, no rules) as one patient's events."""
        t, a, c, d = self.doses(model, horizon, weight, covariates)
        if np.ndim(a) != 1:
            raise ValueError(
                f"regimen {self.name!r}: events of one patient need one patient's weight and covariates"
            )
        rate = np.where(d > 0, a / np.where(d > 0, d, 1.0), 0.0)
        return EventTable.from_records(t, np.ones_like(c), a, c + 1, rate=rate, n_cmt=model.n_state)


def _block_rows(blocks, model, horizon, weight, who, covariates=None, units=None):
    """(time, amount per dose or per kg, compartment index, duration, per kg) of each dose;
    the amount of a formula dose is a number or an array ``(n,)`` (one per patient)."""
    rows = []
    for b in blocks:
        if b.per_kg and weight is None:
            raise ValueError(
                f"{who} doses per kg, but the patient has no weight: give WT in "
                "[patient] (or the twin's data, or the cohort's [population])"
            )
        amount = b.amount
        if b.formula is not None:
            if covariates is None:
                raise ValueError(f"{who}: a dose formula needs the patient's covariates")
            amount = b.formula.amounts(covariates, who, units)
        ci = model.compartment_index(b.cmt)
        rows += [(float(t), amount, ci, b.duration, b.per_kg) for t in b.times(horizon)]
    return rows


def _per_kg(amounts, per_kg: np.ndarray, weight) -> np.ndarray:
    """Amounts ``(R,)`` (numbers, or arrays ``(n,)`` for per-patient formula doses) with the
    per-kg ones times ``weight``: ``(R,)`` for one patient, ``(n, R)`` when the weight or
    any amount is per patient (a cohort)."""
    n = {np.size(a) for a in amounts if np.ndim(a)} | ({np.size(weight)} if np.ndim(weight) else set())
    if len(n) > 1:
        raise ValueError(f"per-patient doses and weights disagree on the number of patients: {sorted(n)}")
    amount = np.stack(np.broadcast_arrays(*[np.asarray(a, float) for a in amounts]), -1) if n else None
    if amount is None:
        amount = np.asarray(amounts, float).reshape(-1)
    if weight is None or not per_kg.any():
        return amount
    w = np.asarray(weight, float)
    return np.where(per_kg, amount * (w[..., None] if w.ndim else w), amount)


def with_amounts(events: EventTable, amounts) -> EventTable:
    """The same doses with other amounts (traced allowed): infusions keep their duration."""
    dur = jnp.where(events.rate > 0, events.amt / jnp.where(events.rate > 0, events.rate, 1.0), 0.0)
    rate = jnp.where(dur > 0, amounts / jnp.where(dur > 0, dur, 1.0), 0.0)
    return eqx.tree_at(lambda e: (e.amt, e.rate), events, (jnp.asarray(amounts, float), rate))


# ------------------------------------------------------------------------------ targets
@dataclasses.dataclass(frozen=True)
class Target:
    """An exposure metric of one output over a window ``[start, end)``, and its target range.

    ``metric``: ``auc`` (integral over the window), ``auc24`` (the same per 24 h),
    ``cmax``, ``cmin``, ``trough`` (just before the end of the window: put the window's end
    at a dose), ``value`` (at the window's end), ``time_in_range`` (fraction of the window
    with ``low <= C <= high``; its target is ``min_fraction <= fraction <= max_fraction``).
    ``low``/``high``: the range (either may be omitted).
    """

    name: str
    output: str
    metric: str
    window: tuple[float, float]
    low: float = -math.inf
    high: float = math.inf
    min_fraction: float = 0.0
    max_fraction: float = 1.0

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(
                f"target {self.name!r}: metric must be one of {', '.join(METRICS)}, not {self.metric!r}"
            )
        a, b = self.window
        if not b > a >= 0:
            raise ValueError(
                f"target {self.name!r}: window {list(self.window)} must be [start, end] with end > start >= 0"
            )
        if self.metric == "time_in_range" and not (math.isfinite(self.low) or math.isfinite(self.high)):
            raise ValueError(f"target {self.name!r}: time_in_range needs low and/or high")
        if not 0.0 <= self.min_fraction <= self.max_fraction <= 1.0:
            raise ValueError(
                f"target {self.name!r}: need 0 <= min_fraction <= max_fraction <= 1, got "
                f"{self.min_fraction} and {self.max_fraction}"
            )

    def value(self, t, c, width=None):
        """The metric of one trajectory ``c`` on the grid ``t`` (jnp; differentiable).

        ``width``: for ``time_in_range``, logistic edges of this width (concentration
        units) instead of the indicator of the range, so that the fraction has a useful
        derivative (what :func:`optimise` differentiates)."""
        a, b = self.window
        # [a, b): a dose at b (the window's end at the next dose) is not part of the window.
        inside = (t >= a - 1e-12) & (t <= b - _EPS + 1e-12)
        if self.metric in ("auc", "auc24"):
            w = jnp.where(inside[1:] & inside[:-1], jnp.diff(t), 0.0)
            auc = jnp.sum(w * 0.5 * (c[1:] + c[:-1]))
            return auc * (24.0 / (b - a)) if self.metric == "auc24" else auc
        if self.metric == "cmax":
            return jnp.max(jnp.where(inside, c, -jnp.inf))
        if self.metric == "cmin":
            return jnp.min(jnp.where(inside, c, jnp.inf))
        if self.metric in ("trough", "value"):
            return c[jnp.argmin(jnp.abs(t - (b - _EPS if self.metric == "trough" else b)))]
        # time_in_range on the grid's intervals (as floats: bool + bool is a logical or)
        if width is None:
            ok = ((c >= self.low) & (c <= self.high)).astype(float)
        else:
            ok = _smooth_range(c, self.low, self.high, width)
        w = jnp.where(inside[1:] & inside[:-1], jnp.diff(t), 0.0)
        return jnp.sum(w * 0.5 * (ok[1:] + ok[:-1])) / (b - a)

    def attained(self, m):
        if self.metric == "time_in_range":
            return (m >= self.min_fraction) & (m <= self.max_fraction)
        return (m >= self.low) & (m <= self.high)


def _window_points(a: float, b: float, step: float) -> np.ndarray:
    return np.concatenate([np.arange(a, b + 1e-9, step), [a, b, max(b - _EPS, 0.0)]])


# ------------------------------------------------------------------------------ scenario
@dataclasses.dataclass(frozen=True)
class Scenario:
    """A frozen scenario: model, regimens, targets, horizon, output grid, the twin's
    covariates (and fixed parameter values) when no fit is given, background doses every
    regimen shares (meals, a co-medication), and within-patient variability the scenario
    adds to the twin's draws (``variability``: parameter, log-scale SD)."""

    name: str
    model: str
    regimens: tuple[Regimen, ...]
    targets: tuple[Target, ...]
    horizon: float
    step: float = 0.25
    patient: tuple[tuple[str, Any], ...] = ()
    description: str = ""
    source: str = ""  # the file's text (its hash goes into every result)
    background: tuple[DoseBlock, ...] = ()
    variability: tuple[tuple[str, float], ...] = ()
    population: Mapping[str, Any] | None = dataclasses.field(default=None, hash=False)
    arms: tuple[tuple[str, str], ...] = ()
    cohort: tuple[tuple[str, Any], ...] = ()

    @property
    def hash(self) -> str:
        return hashlib.sha256((self.source or repr(self)).encode()).hexdigest()[:16]

    @property
    def arm_regimens(self) -> tuple[tuple[str, Regimen], ...]:
        """The arms of an in-silico trial, ``(arm name, regimen)``: the ``[[arms]]`` of the
        file, or one arm per regimen (named after it)."""
        if self.arms:
            return tuple((a, self.regimen(r)) for a, r in self.arms)
        return tuple((r.name, r) for r in self.regimens)

    @property
    def dose_covariates(self) -> tuple[str, ...]:
        """The covariates the dose formulas of the regimens and background doses read."""
        blocks = [b for r in self.regimens for b in r.blocks] + list(self.background)
        return tuple(dict.fromkeys(c for b in blocks if b.formula is not None for c in b.formula.covariates))

    def dose_inputs(self, draws: Mapping[str, Any]) -> dict[str, Any]:
        """What dose formulas read for ``draws``: the ``[patient]`` values, overridden by
        the draws' own (categorical covariates as the card's level names)."""
        return {**dict(self.patient), **_level_names(get_model(self.model), draws)}

    def model_inputs(self, draws: Mapping[str, Any]) -> dict[str, Any]:
        """``draws`` without the covariates only dose formulas read (height for a dosing
        algorithm, say): the simulator refuses names its model does not read."""
        only = set(self.dose_covariates) - set(get_model(self.model).input_names)
        return {k: v for k, v in draws.items() if k not in only}

    def regimen(self, name: str) -> Regimen:
        for r in self.regimens:
            if r.name == name:
                return r
        raise KeyError(
            f"no regimen {name!r} in scenario {self.name!r}; known: {', '.join(r.name for r in self.regimens)}"
        )

    def target(self, name: str) -> Target:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(
            f"no target {name!r} in scenario {self.name!r}; known: {', '.join(t.name for t in self.targets)}"
        )

    def grid(self, targets: Sequence[Target] | None = None) -> np.ndarray:
        """Output times for the metrics: a regular grid over each target's window (all
        targets by default), its ends and the time just before its end."""
        pts = [_window_points(*tg.window, self.step) for tg in (self.targets if targets is None else targets)]
        return np.unique(np.concatenate(pts))

    def regimen_grid(self, regimen: Regimen) -> np.ndarray:
        """:meth:`grid` plus the points every rule of ``regimen`` measures at its decisions:
        one grid for every simulation of the regimen (one compiled shape)."""
        pts = [self.grid()]
        for rule in regimen.rules:
            pts += [_window_points(*rule.measurement(t).window, self.step) for t in rule.times(self.horizon)]
        return np.unique(np.concatenate(pts))


def _cmt_unit(model, cmt: str) -> str:
    units = getattr(getattr(model, "card", None), "compartment_units", None)
    return units[model.compartment_index(cmt)] if units else model.amount_unit


def _formula(spec: Mapping[str, Any], scale: float, where: str) -> DoseFormula:
    """A dose table: ``{ formula = "...", levels = {...}, units = {...}, round = , min = , max = }``."""
    from .model.expr import ExprError

    _unknown(spec, {"formula", "levels", "units", "round", "min", "max"}, f"{where} dose")
    if "formula" not in spec:
        raise ValueError(
            f'{where}: a dose table needs a formula of covariates, e.g. dose = {{ formula = "0.5 * WT" }}'
        )
    text = str(spec["formula"])
    try:
        expr = _parsed(text)
    except ExprError as e:
        raise ValueError(f"{where}: dose formula: {e}") from None
    levels = []
    for sym, table in dict(spec.get("levels", {})).items():
        if not isinstance(table, Mapping) or "of" not in table or len(table) < 2:
            raise ValueError(
                f'{where}: dose levels {sym!r} must be a table {{ of = "COVARIATE", LEVEL = value, ... }}'
            )
        if sym not in expr.symbols:
            raise ValueError(f"{where}: dose levels {sym!r} is not used in the formula {text!r}")
        values = tuple((str(k), float(v)) for k, v in table.items() if k != "of")
        levels.append((str(sym), str(table["of"]), values))
    units = tuple((str(k), str(v)) for k, v in dict(spec.get("units", {})).items())
    for k, u in units:
        try:
            conversion(u, u)  # a unit twinrx knows
        except Exception as e:
            raise ValueError(f"{where}: dose units {k} = {u!r}: {e}") from None
    lo, hi = float(spec.get("min", 0.0)), float(spec.get("max", math.inf))
    if lo < 0 or hi < lo:
        raise ValueError(f"{where}: dose min = {lo}, max = {hi}: need 0 <= min <= max")
    return DoseFormula(
        text, tuple(levels), units, float(spec.get("round", 0.0)) * scale, lo * scale, hi * scale, scale
    )


def _block(model, spec: Mapping[str, Any], where: str) -> DoseBlock:
    known = {"dose", "unit", "cmt", "every", "start", "count", "stop", "duration", "per_kg"}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    if "dose" not in spec or "cmt" not in spec:
        raise ValueError(f"{where}: a dose needs 'dose' (amount) and 'cmt' (compartment name or number)")
    cmt_unit = _cmt_unit(model, str(spec["cmt"]))
    unit = str(spec.get("unit", cmt_unit))
    per_kg = bool(spec.get("per_kg", False))
    if unit.endswith("/kg"):
        unit, per_kg = unit[: -len("/kg")], True
    formula = None
    if isinstance(spec["dose"], Mapping):  # each patient's own dose, from covariates
        formula = _formula(spec["dose"], conversion(unit, cmt_unit), where)
        amount = math.nan
    else:
        amount = float(spec["dose"]) * conversion(unit, cmt_unit)
    if amount < 0:
        raise ValueError(f"{where}: dose {spec['dose']} is negative")
    dur = float(spec.get("duration", 0.0))
    if dur < 0:
        raise ValueError(f"{where}: duration {dur} is negative")
    every = spec.get("every")
    if every is not None and float(every) <= 0:
        raise ValueError(f"{where}: every = {every} must be > 0 (hours between doses)")
    return DoseBlock(
        amount=amount,
        cmt=str(spec["cmt"]),
        every=None if every is None else float(every),
        start=float(spec.get("start", 0.0)),
        count=None if spec.get("count") is None else int(spec["count"]),
        stop=None if spec.get("stop") is None else float(spec["stop"]),
        duration=dur,
        per_kg=per_kg,
        formula=formula,
    )


def _unknown(spec: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")


def _adherence(spec: Mapping[str, Any], n_doses: int, where: str) -> Adherence:
    where = f"{where} adherence"
    _unknown(spec, {"missed", "delay_sd", "delay_mean", "record", "delays"}, where)
    missed = float(spec.get("missed", 0.0))
    if not 0.0 <= missed < 1.0:
        raise ValueError(f"{where}: missed = {missed} must be a probability in [0, 1)")
    sd = float(spec.get("delay_sd", 0.0))
    if sd < 0:
        raise ValueError(f"{where}: delay_sd = {sd} must be >= 0 (hours)")
    record = tuple(float(x) for x in spec.get("record", ()))
    delays = tuple(float(x) for x in spec.get("delays", ()))
    for name, seq in (("record", record), ("delays", delays)):
        if len(seq) > n_doses:
            raise ValueError(
                f"{where}: {name} has {len(seq)} entries but the regimen has {n_doses} doses within "
                "the horizon: give one entry per dose in time order (or fewer: later doses follow plan)"
            )
        if not all(math.isfinite(x) for x in seq):
            raise ValueError(f"{where}: {name} has a non-finite entry")
    if any(x < 0 for x in record):
        raise ValueError(f"{where}: record entries are fractions of each dose taken (1, 0, 0.5...), not < 0")
    return Adherence(missed, sd, float(spec.get("delay_mean", 0.0)), record, delays)


def _rule(model, spec: Mapping[str, Any], reg_unit: str, horizon: float, where: str) -> Rule:
    known = {"name", "output", "metric", "at", "every", "start", "stop", "over", "window", "when"}
    known |= {"round", "min_dose", "max_dose", "unit"}
    _unknown(spec, known, where)
    outputs = [o.name for o in model.outputs]
    out = str(spec.get("output", outputs[0]))
    if out not in outputs:
        raise ValueError(f"{where}: unknown output {out!r}; model {model.name!r} has {', '.join(outputs)}")
    metric = str(spec.get("metric", "value"))
    if metric not in RULE_METRICS:
        raise ValueError(f"{where}: metric must be one of {', '.join(RULE_METRICS)}, not {metric!r}")
    window = spec.get("window")
    if window is not None:
        window = (float(window[0]), float(window[1]))
        if not (horizon >= window[1] > window[0] >= 0):
            raise ValueError(f"{where}: window {list(window)} must be [start, end] within [0, {horizon}]")
    over = spec.get("over")
    if metric not in ("value", "trough") and window is None and over is None:
        raise ValueError(f"{where}: metric {metric!r} needs 'over' (hours before the decision) or 'window'")
    if over is not None and float(over) <= 0:
        raise ValueError(f"{where}: over = {over} must be > 0 (hours)")
    if "at" not in spec and "every" not in spec:
        raise ValueError(f"{where}: give decision times: 'at' = [hours] and/or 'every' = hours")
    at = tuple(float(x) for x in spec.get("at", ()))
    bad = [t for t in at if not 0 < t < horizon]
    if bad:
        raise ValueError(f"{where}: decision times {bad} are outside (0, horizon = {horizon})")
    every = spec.get("every")
    if every is not None and float(every) <= 0:
        raise ValueError(f"{where}: every = {every} must be > 0 (hours)")
    unit = str(spec.get("unit", reg_unit))
    f = conversion(unit, reg_unit)

    def amount(key, v, where=where):
        v = float(v) * f
        if v < 0:
            raise ValueError(f"{where}: {key} = {v} must be >= 0")
        return v

    when = spec.get("when")
    if not when:
        raise ValueError(
            f"{where}: needs 'when' = [{{below = ..., scale = ...}}, ...] (conditions, in order)"
        )
    conds = []
    for k, c in enumerate(when):
        w = f"{where} when #{k + 1}"
        _unknown(c, {"above", "below", "scale", "target", "set", "hold", "add"}, w)
        changes = [x for x in ("scale", "target", "set") if x in c]
        if len(changes) > 1:
            raise ValueError(f"{w}: give at most one of scale, target, set (got {changes})")
        if not changes and "hold" not in c and "add" not in c:
            raise ValueError(f"{w}: needs an action: scale, target, set, hold or add")
        if "target" in c and float(c["target"]) <= 0:
            raise ValueError(f"{w}: target must be > 0")
        if "scale" in c and float(c["scale"]) < 0:
            raise ValueError(f"{w}: scale must be >= 0")
        hold = int(c.get("hold", 0))
        if hold < 0:
            raise ValueError(f"{w}: hold counts doses to skip: 0 or more")
        conds.append(
            Condition(
                above=float(c.get("above", -math.inf)),
                below=float(c.get("below", math.inf)),
                scale=None if "scale" not in c else float(c["scale"]),
                target=None if "target" not in c else float(c["target"]),
                set_to=None if "set" not in c else amount("set", c["set"], w),
                hold=hold,
                add=None if "add" not in c else amount("add", c["add"], w),
            )
        )
    return Rule(
        output=out,
        metric=metric,
        when=tuple(conds),
        at=at,
        every=None if every is None else float(every),
        start=None if spec.get("start") is None else float(spec["start"]),
        stop=None if spec.get("stop") is None else float(spec["stop"]),
        over=None if over is None else float(over),
        window=window,
        round_to=amount("round", spec.get("round", 0.0)),
        min_dose=amount("min_dose", spec.get("min_dose", 0.0)),
        max_dose=amount("max_dose", spec.get("max_dose", math.inf)),
        name=str(spec.get("name", f"{metric} {out}")),
    )


def _variability(model, spec: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
    out = []
    for p, v in spec.items():
        if p not in model.parameter_names:
            raise ValueError(
                f"[variability]: {p!r} is not a parameter of {model.name!r}; it has "
                f"{', '.join(model.parameter_names)}"
            )
        if not isinstance(v, Mapping) or len(v) != 1 or next(iter(v)) not in ("cv", "omega2", "sd"):
            raise ValueError(
                f"[variability] {p}: give exactly one of cv, omega2, sd, e.g. {p} = {{ cv = 0.2 }}"
            )
        k, x = next(iter(v.items()))
        x = float(x)
        if x < 0:
            raise ValueError(f"[variability] {p}: {k} = {x} must be >= 0")
        out.append((p, {"cv": math.sqrt(math.log1p(x * x)), "omega2": math.sqrt(x), "sd": x}[k]))
    return tuple(out)


def load_scenario(source: str | Path | Mapping[str, Any]) -> Scenario:
    """A scenario from a TOML file (path), TOML text, or the parsed mapping."""
    if isinstance(source, Mapping):
        doc, text = dict(source), json.dumps(source, sort_keys=True, default=str)
    else:
        is_text = isinstance(source, str) and ("\n" in source or "[" in source)
        text = str(source) if is_text else Path(source).read_text()
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{source}: not valid TOML ({e})") from None
    head = doc.get("scenario", {})
    for key in ("name", "model", "horizon"):
        if key not in head:
            raise ValueError(f"[scenario] needs {key!r} (name, model card, horizon in the card's time unit)")
    model = get_model(head["model"])
    horizon = float(head["horizon"])
    regimens = []
    for i, r in enumerate(doc.get("regimens", [])):
        where = f"[[regimens]] #{i + 1}"
        if "name" not in r:
            raise ValueError(f"{where}: needs a 'name'")
        where = f"{where} ({r['name']})"
        blocks = r.get("doses") or [{k: v for k, v in r.items() if k not in ("name", "adherence", "rules")}]
        blocks = tuple(_block(model, b, where) for b in blocks)
        n_doses = sum(len(b.times(horizon)) for b in blocks)
        adherence = None if "adherence" not in r else _adherence(r["adherence"], n_doses, where)
        unit = _cmt_unit(model, blocks[0].cmt)
        rules = tuple(
            _rule(model, spec, unit, horizon, f"{where} rule #{k + 1}")
            for k, spec in enumerate(r.get("rules", []))
        )
        regimens.append(Regimen(str(r["name"]), blocks, adherence, rules))
    if not regimens:
        raise ValueError("a scenario needs at least one [[regimens]] entry")
    names = [r.name for r in regimens]
    if len(set(names)) != len(names):
        raise ValueError(f"regimen names must be unique: {names}")
    outputs = [o.name for o in model.outputs]
    targets = []
    for i, t in enumerate(doc.get("targets", [])):
        where = f"[[targets]] #{i + 1}"
        out = t.get("output", outputs[0])
        if out not in outputs:
            raise ValueError(
                f"{where}: unknown output {out!r}; model {model.name!r} has {', '.join(outputs)}"
            )
        if "window" not in t or "metric" not in t:
            raise ValueError(f"{where}: needs 'metric' and 'window' = [start, end] (hours)")
        targets.append(
            Target(
                name=str(t.get("name", f"{t['metric']} {out}")),
                output=out,
                metric=str(t["metric"]),
                window=(float(t["window"][0]), float(t["window"][1])),
                low=float(t.get("low", -math.inf)),
                high=float(t.get("high", math.inf)),
                min_fraction=float(t.get("min_fraction", 0.0)),
                max_fraction=float(t.get("max_fraction", 1.0)),
            )
        )
    if not targets:
        raise ValueError("a scenario needs at least one [[targets]] entry")
    background = tuple(
        _block(model, b, f"[[background]] #{i + 1}") for i, b in enumerate(doc.get("background", []))
    )
    population = doc.get("population")
    if population is not None and not isinstance(population, Mapping):
        raise ValueError("[population] must be a table (the virtual population: covariates, genotypes)")
    return Scenario(
        name=str(head["name"]),
        model=str(head["model"]),
        regimens=tuple(regimens),
        targets=tuple(targets),
        horizon=horizon,
        step=float(head.get("step", 0.25)),
        patient=tuple(sorted(doc.get("patient", {}).items())),
        description=str(head.get("description", "")),
        source=text,
        background=background,
        variability=_variability(model, doc.get("variability", {})),
        population=None if population is None else _frozen_mapping(population),
        arms=_arms(doc.get("arms", []), names),
        cohort=_cohort_settings(doc.get("cohort", {})),
    )


class _ReadOnly(Mapping):
    """A read-only mapping that pickles (a scenario travels to dask workers)."""

    __slots__ = ("_d",)

    def __init__(self, d: Mapping[str, Any]):
        self._d = dict(d)

    def __getitem__(self, k):
        return self._d[k]

    def __iter__(self):
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return repr(self._d)

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):
        return (_ReadOnly, (self._d,))


def _frozen_mapping(d: Any) -> Any:
    """A read-only copy of a TOML value (tables as read-only mappings, arrays as tuples)."""
    if isinstance(d, Mapping):
        return _ReadOnly({k: _frozen_mapping(v) for k, v in d.items()})
    if isinstance(d, (list, tuple)):
        return tuple(_frozen_mapping(v) for v in d)
    return d


def _arms(spec: Any, regimens: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``[[arms]]``: ``name`` and ``regimen`` (a regimen's name) per arm."""
    if not isinstance(spec, (list, tuple)):
        raise ValueError('[[arms]] must be a list of tables: [[arms]] name = "A" regimen = "<regimen name>"')
    out = []
    for i, a in enumerate(spec):
        where = f"[[arms]] #{i + 1}"
        if not isinstance(a, Mapping):
            raise ValueError(f"{where} must be a table with name and regimen")
        _unknown(a, {"name", "regimen"}, where)
        if "regimen" not in a:
            raise ValueError(f"{where}: needs 'regimen' (one of: {', '.join(regimens)})")
        reg = str(a["regimen"])
        if reg not in regimens:
            raise ValueError(f"{where}: no regimen {reg!r}; the scenario has: {', '.join(regimens)}")
        out.append((str(a.get("name", reg)), reg))
    arm_names = [a for a, _ in out]
    if len(set(arm_names)) != len(arm_names):
        raise ValueError(f"[[arms]]: arm names must be unique, got {arm_names}")
    return tuple(out)


_COHORT_KEYS = {"n": int, "chunk": int, "trajectories": int, "seed": int, "subgroup": str}


def _cohort_settings(spec: Any) -> tuple[tuple[str, Any], ...]:
    """``[cohort]``: defaults of ``twinrx cohort run`` (n, chunk, trajectories, seed, subgroup)."""
    if not isinstance(spec, Mapping):
        raise ValueError("[cohort] must be a table, e.g. [cohort] n = 10000 chunk = 1000")
    _unknown(spec, set(_COHORT_KEYS), "[cohort]")
    out = []
    for k, v in spec.items():
        kind = _COHORT_KEYS[k]
        if kind is int and (
            isinstance(v, bool) or not isinstance(v, int) or v < (1 if k in ("n", "chunk") else 0)
        ):
            low = "a positive" if k in ("n", "chunk") else "a non-negative"
            raise ValueError(f"[cohort] {k} = {v!r} must be {low} whole number")
        if kind is str and not isinstance(v, str):
            raise ValueError(f"[cohort] {k} = {v!r} must be a covariate name (text)")
        out.append((k, v))
    return tuple(sorted(out))


# ------------------------------------------------------------------------------ the twin
def twin_draws(
    model,
    *,
    key: jax.Array,
    n: int = 1000,
    fit=None,
    patient: int | str = 0,
    covariates: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """``n`` draws of one patient's inputs for :func:`twinrx.simulate`: typical values,
    covariates and random effects ``eta_<P>``.

    With ``fit`` (a :class:`twinrx.infer.Fit`), from its posterior for ``patient`` (an
    index or an id): population values from the posterior (or the values an individual
    fit held), the patient's own ``eta`` draws, and its covariates (the last recorded value;
    ``covariates`` overrides). Without, from the card: its typical values, the given
    covariates, and random effects from the card's variability (the population is the twin).
    ``covariates`` may also fix a parameter's typical value (a scenario's ``[patient]``).
    """
    model = get_model(model)
    covs = dict(covariates or {})
    if fit is None:
        etas = model.card.variability.sample(key, n) if model.card is not None else {}
        out = {k: np.full(n, float(v)) for k, v in model.typical_params().items()}
        out.update({k: np.asarray(v) for k, v in etas.items()})
        out.update({k: (np.full(n, v) if not isinstance(v, str) else v) for k, v in covs.items()})
        return out
    ids = list(fit.data.ids)
    j = ids.index(str(patient)) if isinstance(patient, str) else int(patient)
    if not 0 <= j < len(ids):
        raise ValueError(f"patient {patient!r} is not in the fit (it has {len(ids)} patients)")
    flat = {k: np.asarray(v).reshape((-1,) + np.shape(v)[2:]) for k, v in fit.samples.items()}
    total = next(iter(flat.values())).shape[0]
    pick = np.asarray(jax.random.choice(key, total, (n,), replace=total < n))
    out: dict[str, Any] = {}
    for name in model.parameter_names:
        if name in flat:
            out[name] = flat[name][pick]
        elif name in fit.conditioned:
            out[name] = np.full(n, float(np.asarray(fit.conditioned[name])))
        elif name in dict(fit.pop.fixed):  # held fixed in the fit (fixed=): not the card's value
            out[name] = np.full(n, float(dict(fit.pop.fixed)[name]))
    for name, v in flat.items():
        if name.startswith("eta_"):
            out[name] = v[pick, j]
    for name, v in fit.data.covariates.items():
        if name not in covs:
            a = np.asarray(v)[j]
            covs[name] = float(a[-1] if a.ndim else a)
    out.update({k: (np.full(n, v) if not isinstance(v, str) else v) for k, v in covs.items()})
    for name, v in fit.conditioned.items():  # estimated covariate effects held by the fit
        if name.startswith("beta_"):
            out[f"__{name}"] = np.full(n, float(np.asarray(v)))
    for name, v in flat.items():
        if name.startswith("beta_"):
            out[f"__{name}"] = v[pick]
    return out


def _level_names(model, draws: Mapping[str, Any]) -> dict[str, Any]:
    """``draws`` with the card's categorical covariates as level names where they are codes
    (a fit's data holds codes; dose formulas read level names)."""
    card = getattr(model, "card", None)
    out = dict(draws)
    for c in getattr(card, "covariates", ()) if card is not None else ():
        v = out.get(c.name)
        if c.levels is None or v is None or isinstance(v, str) or np.asarray(v).dtype.kind in "OUS":
            continue
        codes = np.asarray(v)
        if not np.all((codes == np.round(codes)) & (codes >= 0) & (codes < len(c.levels))):
            continue  # not level codes: left as they are (a dose formula then names them)
        out[c.name] = np.asarray(c.levels, dtype=object)[codes.astype(int)]
    return out


def _weight(draws: Mapping[str, Any]):
    """The draws' weight (kg) for per-kg doses: one number when every draw has the same (a
    twin), else an array ``(n,)`` (a cohort), or None without ``WT``."""
    w = draws.get("WT")
    if w is None:
        return None
    w = np.asarray(w, float).reshape(-1)
    return float(w[0]) if np.all(w == w[0]) else w


def _n_draws(draws: Mapping[str, Any]) -> int:
    return next(len(np.atleast_1d(v)) for v in draws.values() if not isinstance(v, str))


def _needs_key(scenario: Scenario, regimens: Sequence[Regimen]) -> bool:
    return bool(scenario.variability) or any(r.adherence is not None and r.adherence.random for r in regimens)


def _scenario_draws(model, scenario: Scenario, draws: Mapping[str, Any], key) -> dict[str, Any]:
    """The twin's draws with the scenario's within-patient variability: each named
    parameter's value multiplied by ``exp(sd * z)``, ``z`` standard normal per draw."""
    if not scenario.variability:
        return dict(draws)
    n = _n_draws(draws)
    z = np.asarray(jax.random.normal(key, (n, len(scenario.variability))))
    out = dict(draws)
    typical = model.typical_params()
    for i, (p, sd) in enumerate(scenario.variability):
        base = np.broadcast_to(np.asarray(out.get(p, typical[p]), float), (n,))
        out[p] = base * np.exp(sd * z[:, i])
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class _Plan:
    """One regimen's records for a scenario, sorted by planned time: the regimen's own
    doses (``own``), the background doses, and one reserved record (amount 0 until a rule
    adds a dose) per rule decision that may add one (``slots``: (rule, time) -> record)."""

    time: np.ndarray
    amt: np.ndarray
    cmt: np.ndarray
    duration: np.ndarray
    own: np.ndarray
    slots: dict[tuple[int, float], int]
    base: EventTable

    @staticmethod
    def build(model, scenario: Scenario, reg: Regimen, weight, covariates=None, units=None) -> _Plan:
        """``weight``: a number, or an array ``(n,)`` (one per patient: then ``amt`` is
        ``(n, R)``); ``covariates`` (and their ``units``) for dose formulas, likewise."""
        who = f"regimen {reg.name!r}"
        rows = [
            (*r[:4], 1, None, r[4])
            for r in _block_rows(reg.blocks, model, scenario.horizon, weight, who, covariates, units)
        ]
        rows += [
            (*r[:4], 0, None, r[4])
            for r in _block_rows(
                scenario.background, model, scenario.horizon, weight, "[[background]]", covariates, units
            )
        ]
        first = reg.blocks[0]
        for i, rule in enumerate(reg.rules):
            if any(cond.add is not None for cond in rule.when):
                ci = model.compartment_index(first.cmt)
                rows += [
                    (float(td), 0.0, ci, first.duration, 2, (i, float(td)), False)
                    for td in rule.times(scenario.horizon)
                ]
        if not any(r[4] == 1 for r in rows):
            raise ValueError(f"regimen {reg.name!r} gives no dose within the horizon ({scenario.horizon} h)")
        rows.sort(key=lambda r: (r[0], -r[4]))  # own doses first at equal times
        time, amt, cmt, dur, kind, slot, kg = zip(*rows, strict=True)
        time, dur = (np.asarray(x, float) for x in (time, dur))
        cmt, kind = np.asarray(cmt, int), np.asarray(kind, int)
        amt = _per_kg(amt, np.asarray(kg, bool), weight)
        rate = np.where(dur > 0, 1.0 / np.where(dur > 0, dur, 1.0), 0.0)  # placeholder amount 1
        base = EventTable.from_records(
            time, np.ones_like(cmt), np.ones_like(time), cmt + 1, rate=rate, n_cmt=model.n_state
        )
        slots = {s: k for k, s in enumerate(slot) if s is not None}
        return _Plan(time, amt, cmt, dur, kind == 1, slots, base)

    @property
    def taken_by(self) -> np.ndarray:
        """Records whose doses the patient takes (own doses and added doses)."""
        return self.own | np.isin(np.arange(len(self.time)), list(self.slots.values()))

    def adherence(self, reg: Regimen, n: int, key) -> tuple[np.ndarray, np.ndarray]:
        """``(taken, time)``, each ``(n, R)``: the fraction of each record's dose taken and
        its actual time."""
        taken = np.ones((n, len(self.time)))
        time = np.broadcast_to(self.time, (n, len(self.time))).copy()
        if reg.adherence is not None:
            f, delay = reg.adherence.pattern(int(self.own.sum()), n, key=key)
            taken[:, self.own] = f
            time[:, self.own] = np.maximum(time[:, self.own] + delay, 0.0)
        return taken, time

    def events(self, amt, time) -> EventTable:
        """Batched events ``(n, R)`` with the given amounts (traced allowed) and times."""
        return _batched_events(self.base, self.duration, amt, time)


def _batched_events(base: EventTable, duration, amt, time) -> EventTable:
    n = amt.shape[0]
    # Concrete amounts and times: host arrays (broadcast views), which the simulation's
    # compiled call transfers itself; traced ones (optimise) stay JAX.
    xp = np if not any(isinstance(x, jax.core.Tracer) for x in (amt, time)) else jnp
    if xp is np:
        base = jax.tree.map(np.asarray, base)
    batch = jax.tree.map(lambda x: xp.broadcast_to(x, (n, *x.shape)), base)
    dur = xp.asarray(duration)
    rate = xp.where(dur > 0, amt / xp.where(dur > 0, dur, 1.0), 0.0)
    time = xp.asarray(time, float)
    dose_time = xp.take(time, base.dose_rec, axis=-1)
    return eqx.tree_at(
        lambda e: (e.time, e.amt, e.rate, e.dose_time),
        batch,
        (time, xp.asarray(amt, float), rate, dose_time),
    )


def _dose_grid(grid: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Per draw ``(n, T + 2R)``: the output grid plus each dose's time and the time just
    before it, so that a trapezoid AUC across a bolus sees its jump exactly (delayed doses
    included)."""
    n = time.shape[0]
    if n > 1 and np.all(time == time[:1]):  # every draw doses at the same times: sort once
        one = np.sort(np.concatenate([grid, np.maximum(time[0] - _EPS, 0.0), time[0]]))
        return np.broadcast_to(one, (n, one.size))
    pts = np.concatenate([np.broadcast_to(grid, (n, grid.size)), np.maximum(time - _EPS, 0.0), time], axis=1)
    return np.sort(pts, axis=1)


def _metric(tg: Target, grid, c):
    """``tg``'s metric per draw on per-draw grids ``(n, T)`` and trajectories ``(n, T)``."""
    return np.asarray(jax.vmap(tg.value)(jnp.asarray(grid), c))


def _simulate_regimen(
    model,
    scenario: Scenario,
    reg: Regimen,
    draws,
    key,
    *,
    weight=None,
    grid=None,
    covariates=None,
    units=None,
):
    """Simulate one regimen on every draw, deciding its rules per draw on the way.

    ``weight`` (kg, a number or ``(n,)``) scales per-kg doses (default: the draws' ``WT``);
    ``covariates`` (in ``units``) are what dose formulas read (default: the draws' and the
    scenario's ``[patient]``); ``grid`` replaces the regimen's output grid (before the dose
    times are added).

    Returns the per-draw grid ``(n, T)``, outputs ``{name: (n, T)}``, status ``(n,)``, the
    plan, the planned amounts after the rules ``(n, R)``, the fraction of each dose taken
    and its actual time (each ``(n, R)``)."""
    n = _n_draws(draws)
    if covariates is None:
        covariates = scenario.dose_inputs(draws)
    plan = _Plan.build(model, scenario, reg, _weight(draws) if weight is None else weight, covariates, units)
    draws = scenario.model_inputs(draws)
    taken, time = plan.adherence(reg, n, key)
    amt = np.broadcast_to(plan.amt, (n, len(plan.time))).copy()
    grid = _dose_grid(scenario.regimen_grid(reg) if grid is None else grid, time)

    # Without per-draw dose times every draw has the same grid: give it once.
    times = jnp.asarray(grid[0] if grid.strides[0] == 0 else grid)

    def run(amt):
        _, out, status = simulate_arrays(model, draws, plan.events(amt * taken, time), times, devices=1)
        return out, np.asarray(status)

    failed = np.zeros(n, bool)
    decisions = np.unique(np.concatenate([r.times(scenario.horizon) for r in reg.rules] or [np.zeros(0)]))
    for td in decisions:
        out, status = run(amt)
        failed |= status != 0
        for i, rule in enumerate(reg.rules):
            if np.any(np.isclose(rule.times(scenario.horizon), td)):
                m = _metric(rule.measurement(float(td)), grid, out[rule.output])
                amt = rule.apply(np.where(status != 0, np.nan, m), float(td), amt, plan, i)
    out, status = run(amt)
    return grid, out, np.where(failed, np.maximum(status, 1), status), plan, amt, taken, time


def compare(
    scenario: Scenario, draws: Mapping[str, Any] | None = None, *, key=None, n: int = 1000
) -> xr.Dataset:
    """Every regimen on every draw of the twin: metrics per target and draw, and per regimen
    and target the median, 5 % and 95 % quantiles, the probability of target attainment and
    the rank (1 = highest PTA; ties by the median's distance to the range's middle).

    ``draws``: from :func:`twin_draws` (default: the card's population, ``n`` draws from
    ``key``, covariates from the scenario's ``[patient]``). ``key`` also draws what the
    scenario makes random per draw: adherence patterns (from ``fold_in(key, 1)``, the same
    for every regimen: common random numbers) and its within-patient variability
    (``fold_in(key, 2)``); it is required when the scenario has either.

    Besides the metrics, ``last_dose`` (the amount planned for the regimen's last dose,
    after its rules) and ``total_dose`` (the amount taken in ``[0, horizon)``, after
    adherence and rules) per regimen and draw."""
    model = get_model(scenario.model)
    if draws is None:
        if key is None:
            raise ValueError(
                "compare needs draws (twin_draws) or an explicit key to draw the card's population"
            )
        draws = twin_draws(model, key=key, n=n, covariates=dict(scenario.patient))
    if key is None and _needs_key(scenario, scenario.regimens):
        raise ValueError(
            f"scenario {scenario.name!r} draws adherence patterns or within-patient variability: "
            "pass an explicit key, compare(scenario, draws, key=jax.random.key(seed))"
        )
    draws = _scenario_draws(model, scenario, draws, None if key is None else jax.random.fold_in(key, 2))
    akey = None if key is None else jax.random.fold_in(key, 1)
    metrics = {tg.name: [] for tg in scenario.targets}
    failed, last, total, dose_units = [], [], [], []
    for reg in scenario.regimens:
        grid, outputs, status, plan, amt, taken, time = _simulate_regimen(model, scenario, reg, draws, akey)
        failed.append(status != 0)
        own = np.nonzero(plan.own)[0]
        last.append(amt[:, own[-1]])
        within = plan.taken_by & (time < scenario.horizon)
        total.append(np.sum(np.where(within, amt * taken, 0.0), axis=1))
        dose_units.append(_cmt_unit(model, reg.blocks[0].cmt))
        for tg in scenario.targets:
            m = _metric(tg, grid, outputs[tg.output])
            metrics[tg.name].append(np.where(status != 0, np.nan, m))
    regs = [r.name for r in scenario.regimens]
    D = len(failed[0])
    ds = xr.Dataset(coords={"regimen": regs, "draw": np.arange(D)})
    ds["failed"] = (("regimen", "draw"), np.stack(failed))
    units = {o.name: o.unit for o in model.outputs}
    pta_all = []
    for tg in scenario.targets:
        m = np.stack(metrics[tg.name])
        ds[tg.name] = (("regimen", "draw"), m)
        ds[tg.name].attrs.update(units=_metric_unit(tg, units[tg.output]), metric=tg.metric, output=tg.output)
        ok = np.asarray(tg.attained(m)) & np.isfinite(m)
        pta_all.append(ok.mean(axis=1))
    dose_unit = ", ".join(dict.fromkeys(dose_units))
    ds["last_dose"] = (("regimen", "draw"), np.stack(last), {"units": dose_unit})
    ds["total_dose"] = (("regimen", "draw"), np.stack(total), {"units": dose_unit})
    summary = {
        "median": (
            ("target", "regimen"),
            np.stack([np.nanmedian(ds[t.name].values, 1) for t in scenario.targets]),
        ),
        "q05": (
            ("target", "regimen"),
            np.stack([np.nanquantile(ds[t.name].values, 0.05, 1) for t in scenario.targets]),
        ),
        "q95": (
            ("target", "regimen"),
            np.stack([np.nanquantile(ds[t.name].values, 0.95, 1) for t in scenario.targets]),
        ),
        "pta": (("target", "regimen"), np.stack(pta_all)),
    }
    for k, v in summary.items():
        ds[k] = v
    ds = ds.assign_coords(target=[t.name for t in scenario.targets])
    # Rank by the PTA of the first target; ties broken by the median's distance to its range.
    t0 = scenario.targets[0]
    mid = _middle(t0)
    dist = np.abs(ds["median"].values[0] - mid) if mid is not None else np.zeros(len(regs))
    order = np.lexsort((dist, -ds["pta"].values[0]))
    rank = np.empty(len(regs), int)
    rank[order] = np.arange(1, len(regs) + 1)
    ds["rank"] = ("regimen", rank)
    ds.attrs.update(
        scenario=scenario.name,
        scenario_hash=scenario.hash,
        model=model.name,
        horizon_h=scenario.horizon,
        time_unit=model.time_unit,
        failed_draws=int(np.sum(np.stack(failed))),
    )
    return ds


def _metric_unit(tg: Target, conc_unit: str) -> str:
    if tg.metric in ("auc", "auc24"):
        return f"h*{conc_unit}"
    if tg.metric == "time_in_range":
        return "1"
    return conc_unit


def _middle(tg: Target) -> float | None:
    if math.isfinite(tg.low) and math.isfinite(tg.high):
        return 0.5 * (tg.low + tg.high)
    return None


# ------------------------------------------------------------------------------ optimisation
def _smooth_range(x, low: float, high: float, width):
    """A differentiable stand-in for ``low <= x <= high`` (logistic edges of ``width``)."""
    lo = jax.nn.sigmoid((x - low) / width) if math.isfinite(low) else 1.0
    hi = jax.nn.sigmoid((high - x) / width) if math.isfinite(high) else 1.0
    return lo * hi


def _smooth_attainment(tg: Target, m, width):
    """A differentiable stand-in for :meth:`Target.attained`: the metric's range with edges
    of ``width``; for ``time_in_range`` the fraction's range with edges 5 % of it wide."""
    if tg.metric == "time_in_range":
        span = tg.max_fraction - tg.min_fraction
        edge = 0.05 * span if span > 0 else 0.01
        lo = tg.min_fraction if tg.min_fraction > 0 else -math.inf
        hi = tg.max_fraction if tg.max_fraction < 1 else math.inf
        return _smooth_range(m, lo, hi, edge)
    return _smooth_range(m, tg.low, tg.high, width)


def optimise(
    scenario: Scenario,
    draws: Mapping[str, Any],
    *,
    regimen: str | None = None,
    target: str | None = None,
    objective: str = "pta",
    bounds: tuple[float, float] | None = None,
    iterations: int = 40,
    key=None,
) -> dict[str, Any]:
    """The dose scale of ``regimen`` (every dose multiplied by one factor) that maximises the
    probability of attaining ``target`` over the twin's ``draws`` (``objective="pta"``:
    logistic edges 5 % of the range wide; for a time in range, the same edges on the
    concentration range and on the fraction's), or minimises the expected squared log distance
    to the middle of the range (``"loss"``).

    The derivative of the objective with respect to the log dose scale comes from JAX
    through the simulator; its root is bracketed and found by Brent's method (safe for the
    unimodal objectives these are), within ``bounds`` (default: 1/20 to 20 times the
    regimen's doses), in at most ``iterations`` steps. Background doses are
    not scaled; the regimen's adherence applies (random patterns from ``key``, as in
    :func:`compare`). A regimen with feedback rules is not differentiable in its dose (the
    rules decide it) and is refused. Returns the scale, the regimen's doses, the smoothed
    and the exact PTA there, and the objective's derivative at the solution."""
    model = get_model(scenario.model)
    reg = scenario.regimen(regimen) if regimen else scenario.regimens[0]
    tg = scenario.target(target) if target else scenario.targets[0]
    if objective not in ("pta", "loss"):
        raise ValueError(f"objective must be 'pta' or 'loss', not {objective!r}")
    if objective == "loss" and _middle(tg) is None:
        raise ValueError(f"objective 'loss' needs a target with both low and high ({tg.name!r} has not)")
    if objective == "loss" and tg.metric == "time_in_range":
        raise ValueError(
            f"objective 'loss' (distance of the metric to the middle of its range) does not apply to "
            f"a time in range ({tg.name!r}); use objective='pta'"
        )
    if reg.rules:
        raise ValueError(
            f"regimen {reg.name!r} has feedback rules, which decide its doses per draw: its dose "
            "cannot be optimised by gradient; compare start doses as regimens instead"
        )
    if key is None and _needs_key(scenario, [reg]):
        raise ValueError(
            f"regimen {reg.name!r} or scenario {scenario.name!r} is random per draw (adherence or "
            "variability): pass an explicit key, optimise(..., key=jax.random.key(seed))"
        )
    draws = _scenario_draws(model, scenario, draws, None if key is None else jax.random.fold_in(key, 2))
    n = _n_draws(draws)
    plan = _Plan.build(model, scenario, reg, _weight(draws), scenario.dose_inputs(draws))
    draws = scenario.model_inputs(draws)
    taken, time = plan.adherence(reg, n, None if key is None else jax.random.fold_in(key, 1))
    grid = jnp.asarray(_dose_grid(scenario.grid([tg]), time))  # the target's window only
    width = (
        0.05 * (tg.high - tg.low)
        if _middle(tg) is not None
        else 0.05 * abs(tg.low if math.isfinite(tg.low) else tg.high)
    )
    arrays = {k: jnp.asarray(v, float) for k, v in draws.items() if not isinstance(v, str)}
    strings = tuple(sorted((k, v) for k, v in draws.items() if isinstance(v, str)))
    fn = _dose_objective(model, tg, plan, strings, bool(np.any(plan.duration > 0)))
    args = (
        arrays,
        jnp.asarray(taken),
        jnp.asarray(time),
        grid,
        objective == "pta",
        width,
        _middle(tg) or 1.0,
    )

    def grad(x):
        return float(fn(jnp.asarray(x, float), *args)[1])

    lo, hi = (math.log(b) for b in (bounds or (1 / 20, 20.0)))
    g_lo, g_hi = float(grad(lo)), float(grad(hi))
    if g_lo >= 0:  # increasing from the lower bound: the bound is best
        x, g = lo, g_lo
    elif g_hi <= 0:
        x, g = hi, g_hi
    else:
        from scipy.optimize import brentq

        seen = {}

        def g_of(x):
            seen[x] = float(grad(x))
            return seen[x]

        x, _ = brentq(g_of, lo, hi, xtol=1e-10, maxiter=iterations, full_output=True, disp=False)
        g = seen[x] if x in seen else g_of(x)
    value, _, (m, status) = fn(jnp.asarray(x, float), *args)
    m = np.asarray(m)
    exact = float(np.mean(np.asarray(tg.attained(m)) & (np.asarray(status) == 0)))
    return {
        "regimen": reg.name,
        "target": tg.name,
        "scale": math.exp(x),
        "doses": np.asarray(plan.amt)[..., plan.own] * math.exp(x),
        "objective": float(value),
        "pta": exact,
        "gradient": g,
        "median": float(np.median(m)),
    }


_OBJECTIVES: dict[tuple, Any] = {}  # compiled objectives of optimise, by model, target and plan


def _dose_objective(model, tg: Target, plan: _Plan, strings: tuple, infusions: bool):
    """The objective of :func:`optimise`, its derivative in the log dose scale, and the
    metric and status per draw, as one compiled function of ``(log_scale, draws, taken,
    time, grid, pta, width, middle)``. The plan's structure (compartments, durations,
    which records are the regimen's) is compiled in as constants; the function is kept,
    so that optimising the same regimen again (the other objective, other draws of the
    same size) compiles nothing."""
    sig = (model, tg, strings, infusions, plan.cmt.tobytes(), plan.duration.tobytes(), plan.own.tobytes())
    sig += (plan.amt.tobytes(),)
    if sig in _OBJECTIVES:
        return _OBJECTIVES[sig]
    events, duration = plan.base, plan.duration
    base, own = jnp.asarray(plan.amt), jnp.asarray(plan.own)
    tir = tg.metric == "time_in_range"

    @jax.jit
    def fn(log_scale, draws, taken, time, grid, pta, width, middle):
        def value(s):
            amt = jnp.where(own, base * jnp.exp(s), base) * taken
            e = _batched_events(events, duration, amt, time)
            # The plan's records are plain doses (no reset, no steady state): superposition holds.
            _, out, status = simulate_arrays(
                model, {**draws, **dict(strings)}, e, grid, devices=1, superposition=True, infusions=infusions
            )
            m = jax.vmap(tg.value)(grid, out[tg.output])
            # time in range: a fraction with smoothed edges of the range, else the metric
            ms = jax.vmap(lambda t, c: tg.value(t, c, width))(grid, out[tg.output]) if tir else m
            smooth = -jnp.mean(_smooth_attainment(tg, ms, width))
            loss = jnp.mean(jnp.log(jnp.maximum(m, 1e-300) / middle) ** 2)
            return jnp.where(pta, smooth, loss), (m, status)

        (v, aux), g = jax.value_and_grad(value, has_aux=True)(log_scale)
        return v, g, aux

    if len(_OBJECTIVES) >= 16:
        _OBJECTIVES.pop(next(iter(_OBJECTIVES)))
    _OBJECTIVES[sig] = fn
    return fn
