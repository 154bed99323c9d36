"""Scenarios: named regimens and targets, compared on a twin with its full uncertainty.

A :class:`Scenario` (``scenarios/*.toml``, format in ``scenarios/README.md``) names a model
card, dosing regimens, targets and a horizon. :func:`compare` simulates every regimen for
every draw of a twin (a fitted patient's posterior, or the card's population distribution
until a fit exists), computes each target's exposure metric per draw, and summarises it
per regimen: median and 90% interval, the probability of target attainment (PTA), and a
ranking. :func:`optimise` finds the dose that maximises the PTA (or minimises an expected
loss) by differentiating through the simulator.

Every regimen is expanded into one record per dose (no ADDL), so that each dose's amount
and time are ordinary arrays: traced for optimisation, perturbed for adherence.
"""

from __future__ import annotations

import dataclasses
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
    "Regimen",
    "Target",
    "Scenario",
    "load_scenario",
    "twin_draws",
    "compare",
    "optimise",
    "METRICS",
]

METRICS = ("auc", "auc24", "cmax", "cmin", "trough", "value", "time_in_range")
_EPS = 1e-6  # h: a trough is read this long before the dose that ends its window


# ------------------------------------------------------------------------------ regimens
@dataclasses.dataclass(frozen=True)
class DoseBlock:
    """A repeated dose: ``amount`` (in the model's amount unit, or per kg of ``WT`` when
    ``per_kg``) every ``every`` hours from ``start``, ``count`` times (or until ``stop``, or
    to the horizon), into compartment ``cmt``, as a bolus or an infusion of ``duration`` h."""

    amount: float
    cmt: str
    every: float | None = None
    start: float = 0.0
    count: int | None = None
    stop: float | None = None
    duration: float = 0.0
    per_kg: bool = False

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
class Regimen:
    """A named regimen: dose blocks (a loading dose, a maintenance schedule, a switch of
    route or drug at a time) given in order."""

    name: str
    blocks: tuple[DoseBlock, ...]

    def doses(self, model, horizon: float, weight: float | None = None):
        """(time, amount, compartment index, duration) of every dose, sorted by time."""
        rows = []
        for b in self.blocks:
            amt = b.amount
            if b.per_kg:
                if weight is None:
                    raise ValueError(
                        f"regimen {self.name!r} doses per kg, but the patient has no weight: give WT in "
                        "[patient] (or the twin's data)"
                    )
                amt = amt * weight
            ci = model.compartment_index(b.cmt)
            rows += [(t, amt, ci, b.duration) for t in b.times(horizon)]
        if not rows:
            raise ValueError(f"regimen {self.name!r} gives no dose within the horizon ({horizon} h)")
        rows.sort(key=lambda r: r[0])
        t, a, c, d = (np.asarray(x) for x in zip(*rows))
        return t.astype(float), a.astype(float), c.astype(int), d.astype(float)

    def events(self, model, horizon: float, weight: float | None = None) -> EventTable:
        t, a, c, d = self.doses(model, horizon, weight)
        rate = np.where(d > 0, a / np.where(d > 0, d, 1.0), 0.0)
        return EventTable.from_records(t, np.ones_like(c), a, c + 1, rate=rate, n_cmt=model.n_state)


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
    with ``low <= C <= high``; its target is ``min_fraction``). ``low``/``high``: the range
    (either may be omitted).
    """

    name: str
    output: str
    metric: str
    window: tuple[float, float]
    low: float = -math.inf
    high: float = math.inf
    min_fraction: float = 0.0

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

    def value(self, t, c):
        """The metric of one trajectory ``c`` on the grid ``t`` (jnp; differentiable)."""
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
        ok = (c >= self.low) & (c <= self.high)  # time_in_range on the grid's intervals
        w = jnp.where(inside[1:] & inside[:-1], jnp.diff(t), 0.0)
        return jnp.sum(w * 0.5 * (ok[1:] + ok[:-1])) / (b - a)

    def attained(self, m):
        if self.metric == "time_in_range":
            return m >= self.min_fraction
        return (m >= self.low) & (m <= self.high)


# ------------------------------------------------------------------------------ scenario
@dataclasses.dataclass(frozen=True)
class Scenario:
    """A frozen scenario: model, regimens, targets, horizon, output grid and the twin's
    covariates when no fit is given."""

    name: str
    model: str
    regimens: tuple[Regimen, ...]
    targets: tuple[Target, ...]
    horizon: float
    step: float = 0.25
    patient: tuple[tuple[str, Any], ...] = ()
    description: str = ""
    source: str = ""  # the file's text (its hash goes into every result)

    @property
    def hash(self) -> str:
        return hashlib.sha256((self.source or repr(self)).encode()).hexdigest()[:16]

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
        pts = []
        for tg in self.targets if targets is None else targets:
            a, b = tg.window
            pts.append(np.arange(a, b + 1e-9, self.step))
            pts.append(np.array([a, b, max(b - _EPS, 0.0)]))
        return np.unique(np.concatenate(pts))


def _block(model_amount_unit: str, spec: Mapping[str, Any], where: str) -> DoseBlock:
    known = {"dose", "unit", "cmt", "every", "start", "count", "stop", "duration", "per_kg"}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    if "dose" not in spec or "cmt" not in spec:
        raise ValueError(f"{where}: a dose needs 'dose' (amount) and 'cmt' (compartment name or number)")
    unit = str(spec.get("unit", model_amount_unit))
    per_kg = bool(spec.get("per_kg", False))
    if unit.endswith("/kg"):
        unit, per_kg = unit[: -len("/kg")], True
    amount = float(spec["dose"]) * conversion(unit, model_amount_unit)
    if amount < 0:
        raise ValueError(f"{where}: dose {spec['dose']} is negative")
    dur = float(spec.get("duration", 0.0))
    if dur < 0:
        raise ValueError(f"{where}: duration {dur} is negative")
    every = spec.get("every")
    return DoseBlock(
        amount=amount,
        cmt=str(spec["cmt"]),
        every=None if every is None else float(every),
        start=float(spec.get("start", 0.0)),
        count=None if spec.get("count") is None else int(spec["count"]),
        stop=None if spec.get("stop") is None else float(spec["stop"]),
        duration=dur,
        per_kg=per_kg,
    )


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
            raise ValueError(f"[scenario] needs {key!r} (name, model card, horizon in hours)")
    model = get_model(head["model"])
    regimens = []
    for i, r in enumerate(doc.get("regimens", [])):
        where = f"[[regimens]] #{i + 1}"
        if "name" not in r:
            raise ValueError(f"{where}: needs a 'name'")
        blocks = r.get("doses") or [{k: v for k, v in r.items() if k != "name"}]
        regimens.append(
            Regimen(
                str(r["name"]),
                tuple(_block(model.amount_unit, b, f"{where} ({r['name']})") for b in blocks),
            )
        )
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
            )
        )
    if not targets:
        raise ValueError("a scenario needs at least one [[targets]] entry")
    return Scenario(
        name=str(head["name"]),
        model=str(head["model"]),
        regimens=tuple(regimens),
        targets=tuple(targets),
        horizon=float(head["horizon"]),
        step=float(head.get("step", 0.25)),
        patient=tuple(sorted(doc.get("patient", {}).items())),
        description=str(head.get("description", "")),
        source=text,
    )


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


def _weight(draws: Mapping[str, Any]) -> float | None:
    w = draws.get("WT")
    return None if w is None else float(np.asarray(w).reshape(-1)[0])


def _simulate_draws(model, events: EventTable, draws, grid):
    """Outputs (draw, time) for every draw on one regimen's events."""
    n = next(len(np.atleast_1d(v)) for v in draws.values() if not isinstance(v, str))
    batch = jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), events)
    _, outputs, status = simulate_arrays(model, draws, batch, jnp.asarray(grid), devices=1)
    return outputs, np.asarray(status)


def compare(
    scenario: Scenario, draws: Mapping[str, Any] | None = None, *, key=None, n: int = 1000
) -> xr.Dataset:
    """Every regimen on every draw of the twin: metrics per target and draw, and per regimen
    and target the median, 5 % and 95 % quantiles, the probability of target attainment and
    the rank (1 = highest PTA; ties by the median's distance to the range's middle).

    ``draws``: from :func:`twin_draws` (default: the card's population, ``n`` draws from
    ``key``, covariates from the scenario's ``[patient]``)."""
    model = get_model(scenario.model)
    if draws is None:
        if key is None:
            raise ValueError(
                "compare needs draws (twin_draws) or an explicit key to draw the card's population"
            )
        draws = twin_draws(model, key=key, n=n, covariates=dict(scenario.patient))
    grid = scenario.grid()
    w = _weight(draws)
    metrics = {tg.name: [] for tg in scenario.targets}
    failed = []
    for reg in scenario.regimens:
        outputs, status = _simulate_draws(model, reg.events(model, scenario.horizon, w), draws, grid)
        failed.append(status != 0)
        for tg in scenario.targets:
            m = jax.vmap(lambda c, tg=tg: tg.value(jnp.asarray(grid), c))(outputs[tg.output])
            metrics[tg.name].append(np.where(status != 0, np.nan, np.asarray(m)))
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
def _smooth_attainment(tg: Target, m, width):
    """A differentiable stand-in for ``low <= m <= high`` (logistic edges of ``width``)."""
    lo = jax.nn.sigmoid((m - tg.low) / width) if math.isfinite(tg.low) else 1.0
    hi = jax.nn.sigmoid((tg.high - m) / width) if math.isfinite(tg.high) else 1.0
    return lo * hi


def optimise(
    scenario: Scenario,
    draws: Mapping[str, Any],
    *,
    regimen: str | None = None,
    target: str | None = None,
    objective: str = "pta",
    bounds: tuple[float, float] | None = None,
    iterations: int = 40,
) -> dict[str, Any]:
    """The dose scale of ``regimen`` (every dose multiplied by one factor) that maximises the
    probability of attaining ``target`` over the twin's ``draws`` (``objective="pta"``:
    logistic edges 5 % of the range wide), or minimises the expected squared log distance
    to the middle of the range (``"loss"``).

    The derivative of the objective with respect to the log dose scale comes from JAX
    through the simulator; its root is bracketed and found by bisection on its sign (safe
    for the unimodal objectives these are), within ``bounds`` (default: 1/20 to 20 times the
    regimen's doses). Returns the scale, the doses, the smoothed and the exact PTA there,
    and the objective's derivative at the solution."""
    model = get_model(scenario.model)
    reg = scenario.regimen(regimen) if regimen else scenario.regimens[0]
    tg = scenario.target(target) if target else scenario.targets[0]
    if objective not in ("pta", "loss"):
        raise ValueError(f"objective must be 'pta' or 'loss', not {objective!r}")
    if objective == "loss" and _middle(tg) is None:
        raise ValueError(f"objective 'loss' needs a target with both low and high ({tg.name!r} has not)")
    grid = jnp.asarray(scenario.grid([tg]))  # the target's window only
    ev = reg.events(model, scenario.horizon, _weight(draws))
    base = jnp.asarray(ev.amt)
    n = next(len(np.atleast_1d(v)) for v in draws.values() if not isinstance(v, str))
    width = (
        0.05 * (tg.high - tg.low)
        if _middle(tg) is not None
        else 0.05 * abs(tg.low if math.isfinite(tg.low) else tg.high)
    )

    def metric(log_scale):
        e = with_amounts(ev, base * jnp.exp(log_scale))
        batch = jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), e)
        _, out, status = simulate_arrays(model, draws, batch, grid, devices=1, superposition=None)
        return jax.vmap(lambda c: tg.value(grid, c))(out[tg.output]), status

    def value(log_scale):
        m, _ = metric(log_scale)
        if objective == "pta":
            return -jnp.mean(_smooth_attainment(tg, m, width))
        return jnp.mean(jnp.log(jnp.maximum(m, 1e-300) / _middle(tg)) ** 2)

    grad = jax.jit(jax.grad(value))
    lo, hi = (math.log(b) for b in (bounds or (1 / 20, 20.0)))
    g_lo, g_hi = float(grad(lo)), float(grad(hi))
    if g_lo >= 0:  # increasing from the lower bound: the bound is best
        x = lo
    elif g_hi <= 0:
        x = hi
    else:
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            if float(grad(mid)) < 0:
                lo = mid
            else:
                hi = mid
        x = 0.5 * (lo + hi)
    m, status = metric(jnp.asarray(x))
    m = np.asarray(m)
    exact = float(np.mean(np.asarray(tg.attained(m)) & (np.asarray(status) == 0)))
    return {
        "regimen": reg.name,
        "target": tg.name,
        "scale": math.exp(x),
        "doses": np.asarray(base) * math.exp(x),
        "objective": float(value(jnp.asarray(x))),
        "pta": exact,
        "gradient": float(grad(x)),
        "median": float(np.median(m)),
    }
