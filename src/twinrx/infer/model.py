"""The population (NLME) model of a card as ONE numpyro model function.

For ``N`` patients with data :class:`~twinrx.infer.data.FitData`::

    typical values      CL ~ prior from the card (value, bounds)        site "CL"
    variability         omega_CL ~ HalfNormal                            site "omega_CL"
    (full covariance)   L_corr ~ LKJCholesky(d, 2)                       site "L_corr"
    random effects      z_CL[i] ~ Normal(0, 1), eta = diag(omega) L z    sites "z_CL", "eta_CL"
    covariate effects   the card's, or estimated: beta_CL_WT ~ Normal    site "beta_CL_WT"
    individual values   CL_i = CL x effects(covariates) x exp(eta_CL)    site "CL_i"
    residual error      sigma_CP (additive/proportional/exponential),
                        sigma_CP_add and sigma_CP_prop (combined)
    observations        CP[i, k] ~ error model around the prediction; censored values
                        (BLQ) by the M3 likelihood P(y < LLOQ)          site "CP"

Predictions come from :func:`twinrx.solve.simulate_arrays` (the event engine, closed form or
ODE), so doses follow NONMEM semantics. Individual fits (population values held at an
earlier fit's estimates), fixed parameters and predictions are numpyro handlers
(``condition``, ``Predictive``) around this one function.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from ..model.residual import ERROR_MODELS, residual_logcdf, residual_logpdf, residual_noise
from ..solve import simulate_arrays
from .data import FitData

__all__ = ["PopulationModel", "Observation", "default_prior"]

#: SD on the log scale of the default prior of a positive typical value: the card's value
#: times or divided by 5.2 covers 90 % of the prior mass.
PRIOR_LOG_SD = 1.0


class Observation(dist.Distribution):
    """Observations of one output around predictions ``f``: a residual-error model with
    censoring (``cens`` -1: below ``limit``, +1: above, 0: exact) and a ``mask`` for
    padding (log density 0 there, and no NaN in gradients)."""

    support = constraints.real

    def __init__(
        self, kind, f, additive, proportional, cens, limit, mask, *, censored=True, validate_args=None
    ):
        self.kind = kind
        self.f, self.valid = f, mask
        self.additive, self.proportional = additive, proportional
        self.cens, self.limit = cens, limit
        self.censored = censored  # False: no observation is censored (static; skip the CDFs)
        super().__init__(batch_shape=jnp.shape(f), validate_args=validate_args)

    def _safe(self, x):
        return jnp.where(self.valid, x, 1.0)

    def sample(self, key, sample_shape=()):
        eps = jax.random.normal(key, sample_shape + self.batch_shape)
        return residual_noise(self.kind, self.f, eps, self.additive, self.proportional)

    def log_prob(self, value):
        f, y = self._safe(self.f), self._safe(value)
        a, b, k = self.additive, self.proportional, self.kind
        exact = residual_logpdf(k, y, f, a, b)
        if not self.censored:
            return jnp.where(self.valid, exact, 0.0)
        limit = jnp.where(self.cens != 0, self._safe(self.limit), y)
        below = residual_logcdf(k, limit, f, a, b)
        above = residual_logcdf(k, limit, f, a, b, upper=True)
        lp = jnp.where(self.cens < 0, below, jnp.where(self.cens > 0, above, exact))
        return jnp.where(self.valid, lp, 0.0)


def default_prior(value: float, bounds: tuple[float, float], scale: float = PRIOR_LOG_SD):
    """A weakly informative prior from a card's value and bounds.

    - positive value, lower bound >= 0 and no tight upper bound: log-normal around the value
      (SD ``scale`` on the log scale);
    - both bounds finite and tight (upper < 100 x value): normal on the logit of the position
      in the interval, centred on the value;
    - otherwise a normal with SD max(|value|, 1), truncated to the bounds.
    """
    lo, hi = float(bounds[0]), float(bounds[1])
    v = float(value)
    if v > 0 and lo >= 0 and (not math.isfinite(hi) or hi >= 100 * v):
        return dist.LogNormal(math.log(v), scale)
    if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
        frac = min(max((v - lo) / (hi - lo), 0.02), 0.98)
        return dist.TransformedDistribution(
            dist.Normal(math.log(frac / (1 - frac)), 1.5 * scale),
            [dist.transforms.SigmoidTransform(), dist.transforms.AffineTransform(lo, hi - lo)],
        )
    sd = max(abs(v), 1.0)
    if math.isfinite(lo) or math.isfinite(hi):
        return dist.TruncatedNormal(
            v, sd, low=lo if math.isfinite(lo) else None, high=hi if math.isfinite(hi) else None
        )
    return dist.Normal(v, sd)


@dataclasses.dataclass(frozen=True)
class ErrorSpec:
    """The residual-error model fitted for one output, and its prior scales."""

    kind: str
    add_scale: float = 1.0
    prop_scale: float = 0.5

    def sites(self, output: str) -> tuple[str, ...]:
        if self.kind == "combined":
            return (f"sigma_{output}_add", f"sigma_{output}_prop")
        return (f"sigma_{output}",)


@dataclasses.dataclass(frozen=True)
class PopulationModel:
    """A card's population model; calling it with :class:`FitData` runs the numpyro model.

    Build it with :meth:`build` (which reads defaults from the card and the data).
    """

    model: Any
    errors: tuple[tuple[str, ErrorSpec], ...]
    free: tuple[str, ...]  # typical values that are sampled
    fixed: tuple[tuple[str, float], ...]
    iiv: tuple[str, ...]  # parameters with a random effect
    omega_scale: tuple[float, ...]
    full_covariance: bool
    estimated_effects: tuple[str, ...]  # effect keys "beta_<P>_<COV>"
    priors: tuple[tuple[str, Any], ...] = ()  # user priors (numpyro distributions)
    prior_scale: float = PRIOR_LOG_SD
    solver: str | None = None
    rtol: float = 1e-6
    atol: float = 1e-9
    max_steps: int = 4096

    # ---------------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        model,
        data: FitData | None = None,
        *,
        error: Mapping[str, str] | None = None,
        priors: Mapping[str, Any] | None = None,
        fixed: Mapping[str, float] | None = None,
        variability: tuple[str, ...] | None = None,
        covariance: str | None = None,
        estimate_effects: bool | tuple[str, ...] = False,
        prior_scale: float = PRIOR_LOG_SD,
        solver: str | None = None,
        rtol: float = 1e-6,
        atol: float = 1e-9,
        max_steps: int = 4096,
    ) -> PopulationModel:
        """The population model of ``model`` (a card) for ``data``.

        error
            Residual-error model per output (``"additive"``, ``"proportional"``,
            ``"combined"``, ``"exponential"``); default: the card's. Only outputs with data
            are fitted.
        priors
            numpyro distributions by site name (``{"CL": dist.LogNormal(1, 0.3)}``),
            replacing the defaults (:func:`default_prior` for typical values,
            HalfNormal for ``omega_*`` and ``sigma_*``).
        fixed
            Typical values held fixed (not estimated).
        variability
            Parameters with inter-individual variability (default: the card's).
        covariance
            ``"diagonal"`` or ``"full"`` (LKJ prior on the correlations); default: full
            when the card declares a covariance block, else diagonal.
        estimate_effects
            Estimate the card's (non-categorical) covariate effects: True for all, or their
            keys (``"beta_CL_WT"``); default: held at the card's coefficients.
        """
        card = getattr(model, "card", None)
        if card is None:
            raise TypeError(
                f"model {model.name!r} is not a model card; population fits need a card's "
                "variability and residual error (see models/README.md)"
            )
        errs = model.residual_errors
        outputs = data.outputs if data is not None else tuple(errs)
        error = dict(error or {})
        bad = [k for k in error if k not in model.output_names]
        if bad:
            raise ValueError(f"error models given for unknown outputs {bad}; outputs: {model.output_names}")
        specs = []
        for o in outputs:
            kind = error.get(o) or (errs[o].kind if o in errs else None)
            if kind is None:
                raise ValueError(
                    f"output {o} has data but no residual-error model in card {model.name!r}; "
                    f"pass error={{'{o}': 'additive'}} (or proportional, combined, exponential)"
                )
            if kind not in ERROR_MODELS:
                raise ValueError(
                    f"error model for {o} must be one of {', '.join(ERROR_MODELS)}, not {kind!r}"
                )
            card_err = errs.get(o)
            add0 = card_err.additive if card_err is not None else 0.0
            prop0 = card_err.proportional if card_err is not None else 0.0
            spread = 1.0
            if data is not None and kind in ("additive", "combined"):
                ob = data.obs[o]
                v = np.asarray(ob.value)[np.asarray(ob.mask) & (np.asarray(ob.cens) == 0)]
                spread = float(np.std(v)) if v.size > 1 else 1.0
            specs.append(
                (
                    o,
                    ErrorSpec(
                        kind,
                        add_scale=max(2 * add0, spread) if kind != "exponential" else max(2 * add0, 0.5),
                        prop_scale=max(2 * prop0, 0.5),
                    ),
                )
            )
        fixed = {k: float(v) for k, v in (fixed or {}).items()}
        unknown = [k for k in fixed if k not in model.parameter_names]
        if unknown:
            raise ValueError(f"fixed parameters {unknown} are not parameters of {model.name!r}")
        free = tuple(p for p in model.parameter_names if p not in fixed)
        var = card.variability
        iiv = tuple(variability) if variability is not None else var.parameters
        bad = [p for p in iiv if p not in model.parameter_names]
        if bad:
            raise ValueError(f"variability on unknown parameters {bad}")
        mat = var.matrix()
        sds = {p: math.sqrt(mat[i, i]) for i, p in enumerate(var.parameters)}
        omega_scale = tuple(max(2 * sds.get(p, 0.5), 0.5) for p in iiv)
        if covariance is None:
            full = bool(np.any(mat - np.diag(np.diag(mat)))) if mat.size else False
        elif covariance in ("diagonal", "full"):
            full = covariance == "full"
        else:
            raise ValueError(f"covariance must be 'diagonal' or 'full', not {covariance!r}")
        keys = [e.key for e in card.effects if e.estimable]
        if estimate_effects is True:
            est = tuple(keys)
        elif not estimate_effects:
            est = ()
        else:
            est = tuple(estimate_effects)
            bad = [k for k in est if k not in keys]
            if bad:
                raise ValueError(f"unknown covariate effects {bad}; the card's are {keys or 'none'}")
        priors = dict(priors or {})
        return cls(
            model,
            tuple(specs),
            free,
            tuple(fixed.items()),
            iiv,
            omega_scale,
            full and len(iiv) > 1,
            est,
            tuple(priors.items()),
            float(prior_scale),
            solver,
            float(rtol),
            float(atol),
            int(max_steps),
        )

    # ---------------------------------------------------------------------- sites
    @property
    def population_sites(self) -> tuple[str, ...]:
        """Sites shared by all patients (typical values, variabilities, effects, errors)."""
        out = [*self.free, *(f"omega_{p}" for p in self.iiv)]
        if self.full_covariance:
            out.append("L_corr")
        out += list(self.estimated_effects)
        for o, spec in self.errors:
            out += list(spec.sites(o))
        return tuple(out)

    @property
    def patient_sites(self) -> tuple[str, ...]:
        return tuple(f"z_{p}" for p in self.iiv)

    def prior(self, site: str):
        user = dict(self.priors)
        if site in user:
            return user[site]
        par = {p.name: p for p in self.model.parameters}
        if site in par:
            return default_prior(par[site].value, par[site].bounds, self.prior_scale)
        if site.startswith("omega_"):
            return dist.HalfNormal(self.omega_scale[self.iiv.index(site[6:])])
        if site.startswith("beta_"):
            eff = {e.key: e for e in self.model.card.effects}[site]
            return dist.Normal(eff.coefficient, max(abs(eff.coefficient), 1.0))
        for o, spec in self.errors:
            if site in spec.sites(o):
                if site.endswith("_prop") or spec.kind == "proportional":
                    return dist.HalfNormal(spec.prop_scale)
                return dist.HalfNormal(spec.add_scale)
        raise KeyError(site)

    # ---------------------------------------------------------------------- the model
    def __call__(self, data: FitData):
        m = self.model
        N = data.times.shape[0]
        inputs: dict[str, Any] = {}
        for name in self.free:
            inputs[name] = numpyro.sample(name, self.prior(name))
        for name, v in self.fixed:
            inputs[name] = jnp.asarray(v)
        d = len(self.iiv)
        if d:
            omega = jnp.stack([numpyro.sample(f"omega_{p}", self.prior(f"omega_{p}")) for p in self.iiv])
            chol = None
            if self.full_covariance:
                chol = numpyro.sample(
                    "L_corr",
                    self.prior("L_corr") if "L_corr" in dict(self.priors) else dist.LKJCholesky(d, 2.0),
                )
            with numpyro.plate("patient", N):
                z = jnp.stack([numpyro.sample(f"z_{p}", dist.Normal(0.0, 1.0)) for p in self.iiv], -1)
            eta = z @ (omega[:, None] * chol).T if chol is not None else z * omega
            for j, p in enumerate(self.iiv):
                inputs[f"eta_{p}"] = numpyro.deterministic(f"eta_{p}", eta[:, j])
        for key in self.estimated_effects:
            inputs[f"__{key}"] = numpyro.sample(key, self.prior(key))
        sigma = {}
        for o, spec in self.errors:
            sigma[o] = [numpyro.sample(s, self.prior(s)) for s in spec.sites(o)]
        covs = {k: jnp.asarray(v) for k, v in data.covariates.items()}
        pinputs = {k: (jnp.broadcast_to(v, (N,)) if jnp.ndim(v) == 0 else v) for k, v in inputs.items()}
        first = {k: (v[:, 0] if v.ndim == 2 else v) for k, v in covs.items()}
        for name, v in m.individual_values({**pinputs, **first}).items():
            numpyro.deterministic(f"{name}_i", jnp.broadcast_to(v, (N,)))
        _, outputs, status = simulate_arrays(
            m,
            {**pinputs, **covs},
            data.events,
            data.times,
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            max_steps=self.max_steps,
            devices=1,
            superposition=data.plain_doses,
            infusions=data.infusions,
            sensitivity="forward",  # ODE gradients: a patient's few parameters (see simulate_arrays)
        )
        # A failed solve makes the draw impossible (NUTS treats it as a divergence).
        numpyro.factor("solver_ok", jnp.sum(jnp.where(status == 0, 0.0, -jnp.inf)))
        for o, spec in self.errors:
            ob = data.obs[o]
            f = jnp.take_along_axis(outputs[o], ob.index, axis=1)
            s = sigma[o]
            if spec.kind == "combined":
                a, b = s
            elif spec.kind == "proportional":
                a, b = 0.0, s[0]
            else:
                a, b = s[0], 0.0
            censored = data.censored is None or o in data.censored
            numpyro.sample(
                o,
                Observation(spec.kind, f, a, b, ob.cens, ob.limit, ob.mask, censored=censored),
                obs=ob.value,
            )
        return outputs

    # ---------------------------------------------------------------------- storage
    def settings(self) -> dict[str, Any]:
        """What rebuilds this model from a stored fit (JSON-able)."""
        return {
            "errors": {o: dataclasses.asdict(s) for o, s in self.errors},
            "fixed": dict(self.fixed),
            "variability": list(self.iiv),
            "omega_scale": list(self.omega_scale),
            "covariance": "full" if self.full_covariance else "diagonal",
            "estimate_effects": list(self.estimated_effects),
            "prior_scale": self.prior_scale,
            "user_priors": {k: repr(v) for k, v in self.priors},
            "solver": self.solver,
            "rtol": self.rtol,
            "atol": self.atol,
            "max_steps": self.max_steps,
        }

    @classmethod
    def from_settings(cls, model, settings: Mapping[str, Any] | str) -> PopulationModel:
        s = json.loads(settings) if isinstance(settings, str) else dict(settings)
        errors = tuple((o, ErrorSpec(**v)) for o, v in s["errors"].items())
        fixed = tuple((k, float(v)) for k, v in s["fixed"].items())
        return cls(
            model,
            errors,
            tuple(p for p in model.parameter_names if p not in dict(fixed)),
            fixed,
            tuple(s["variability"]),
            tuple(s["omega_scale"]),
            s["covariance"] == "full",
            tuple(s["estimate_effects"]),
            (),
            float(s["prior_scale"]),
            s["solver"],
            float(s["rtol"]),
            float(s["atol"]),
            int(s["max_steps"]),
        )
