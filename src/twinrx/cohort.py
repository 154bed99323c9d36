"""Virtual populations: covariates, genotypes and per-patient model parameters.

A :class:`PopulationSpec` says how the patients of an in-silico trial are made; it is the
``[population]`` table of a scenario file::

    [population]
    ancestry = { European = 0.7, "East Asian" = 0.3 }   # or one CPIC group: "European"
    genes = ["CYP2C9", "VKORC1"]

    [population.covariates]
    SEX = { dist = "categorical", levels = ["F", "M"], probabilities = [0.5, 0.5] }
    AGE = { dist = "uniform", low = 18, high = 90, unit = "yr" }
    HT  = { dist = "normal", mean = 171, sd = 9, unit = "cm", by = { SEX = { F = { mean = 162 } } } }
    SCR = { dist = "lognormal", meanlog = -0.1, sdlog = 0.25, unit = "mg/dL" }
    DIAL = { dist = "fixed", value = "no" }

    [population.covariates.WT]
    dist = "lognormal"
    median = 80
    gcv = 0.18
    unit = "kg"
    bounds = [40, 200]
    by = { SEX = { F = { median = 68 } } }

    [population.correlations]          # Gaussian copula: correlations of the normal scores
    names = ["WT", "HT", "AGE"]
    matrix = [[1.0, 0.6, 0.1], [0.6, 1.0, -0.1], [0.1, -0.1, 1.0]]
    # or a list of pairs:  correlations = [["WT", "HT", 0.6], ["WT", "AGE", 0.1]]

    [population.derived]
    CRCL = { formula = "cockcroft_gault", clip = [0, 150] }   # from AGE, WT, SCR, SEX

Distributions (``dist``), each with optional ``unit``, ``description`` and ``by``:

==============  ==============================================  ===============================
dist            parameters                                      notes
==============  ==============================================  ===============================
normal          ``mean``, ``sd``; optional ``bounds``           bounds truncate (not clip)
truncnormal     ``mean``, ``sd``, ``bounds`` (required)         the normal truncated to bounds
lognormal       ``median`` + ``gcv``, ``median`` + ``sdlog``    gcv = sqrt(exp(sdlog^2) - 1);
                or ``meanlog`` + ``sdlog``; optional ``bounds``  bounds truncate
uniform         ``low``, ``high``
categorical     ``levels``, ``probabilities`` (sum to 1)        values are the level names
fixed           ``value`` (a number, or a level name)
==============  ==============================================  ===============================

``by = { SEX = { F = {...}, M = {...} } }`` overrides parameters per level of a categorical
covariate (or of ``ANCESTRY``); a categorical covariate may change only its probabilities.

Correlated continuous covariates (normal, truncnormal, lognormal, uniform) share a Gaussian
copula: standard normal scores ``z ~ N(0, R)`` are drawn and each covariate is
``F^{-1}(Phi(z))`` of its (truncated) marginal, so the marginals are exactly those
specified and ``R`` is the correlation of the normal scores (Spearman's rho is
``6/pi asin(R/2)``). Per-level overrides keep the patient's normal score.

Derived covariates (``formula``; inputs default to ``AGE`` yr, ``WT`` kg, ``HT`` cm,
``SCR`` mg/dL and ``SEX``, renamed with ``age = "..."`` etc.; a covariate's ``unit`` is
converted to those; ``female`` names the SEX level for women when it is not ``F``/``female``;
``clip = [lo, hi]`` clips the result):

- ``cockcroft_gault``: creatinine clearance (mL/min) = (140 - age) x weight / (72 x SCr)
  x 0.85 if female (Cockcroft & Gault 1976; total body weight);
- ``ckd_epi_2021``: eGFR (mL/min/1.73 m^2), race-free CKD-EPI 2021;
- ``bmi`` (kg/m^2), ``bsa_du_bois`` and ``bsa_mosteller`` (m^2), ``lean_body_weight`` (kg).

Genotypes: each patient gets an ancestry group (CPIC's biogeographical groups; a mixture
draws one per patient, kept as the categorical covariate ``ANCESTRY``) and, for each gene,
two alleles drawn independently from that group's allele frequencies (Hardy-Weinberg
equilibrium; package data ``twinrx/data/cpic/frequencies.csv``). The diplotype (in CPIC
order: ``*1/*3``, ``GA``) is a categorical covariate named after the gene, as the model
cards name it; the CPIC phenotype and activity score come from
:func:`twinrx.data.pgx.phenotype`. Alleles outside the package's CPIC tables are counted as
the reference allele (see the CSV's ``note`` column).

Randomness comes from the explicit ``key`` only; each covariate, gene and the ancestry draw
from their own stream (``fold_in`` of the name), so adding a covariate to a spec leaves the
others' values unchanged.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import re
import types
import zlib
from collections.abc import Mapping
from importlib import resources
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from scipy import special

from .data import derived as _derived
from .data import pgx
from .units import UnitError, conversion

__all__ = [
    "ANCESTRY",
    "CovariateSpec",
    "DerivedSpec",
    "Marginal",
    "Population",
    "PopulationSpec",
    "allele_frequencies",
    "ancestry_groups",
    "individual_parameters",
    "sample_population",
]

#: Name of the categorical covariate holding each patient's CPIC biogeographical group.
ANCESTRY = "ANCESTRY"

CONTINUOUS = ("normal", "truncnormal", "lognormal", "uniform")
DISTS = (*CONTINUOUS, "categorical", "fixed")
_DIST_KEYS = {
    "normal": {"mean", "sd", "bounds"},
    "truncnormal": {"mean", "sd", "bounds"},
    "lognormal": {"median", "gcv", "meanlog", "sdlog", "bounds"},
    "uniform": {"low", "high"},
    "categorical": {"levels", "probabilities"},
    "fixed": {"value"},
}
_COMMON_KEYS = {"dist", "unit", "description", "by"}
_TOP_KEYS = ("covariates", "correlations", "derived", "ancestry", "genes", "n")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOL = 1e-6  # probabilities and frequencies must sum to 1 within this

# formula -> (input roles, unit of the result, function of canonical inputs)
_FORMULAS: dict[str, tuple[tuple[str, ...], str]] = {
    "cockcroft_gault": (("age", "weight", "scr", "sex"), "mL/min"),
    "ckd_epi_2021": (("scr", "age", "sex"), "mL/min/{1.73_m2}"),
    "bmi": (("weight", "height"), "kg/m**2"),
    "bsa_du_bois": (("weight", "height"), "m**2"),
    "bsa_mosteller": (("weight", "height"), "m**2"),
    "lean_body_weight": (("weight", "height", "sex"), "kg"),
}
_DEFAULT_INPUT = {"age": "AGE", "weight": "WT", "height": "HT", "scr": "SCR", "sex": "SEX"}
_CANONICAL_UNIT = {"age": "yr", "weight": "kg", "height": "cm", "scr": "mg/dL"}
_CREATININE_G_PER_MOL = 113.12  # umol/L <-> mg/dL


# --------------------------------------------------------------------------------------
# CPIC allele frequencies (package data)
# --------------------------------------------------------------------------------------
@functools.cache
def _frequencies() -> dict[str, dict[str, dict[str, float]]]:
    """gene -> group -> allele -> frequency (normalised to sum 1), alleles in file order."""
    text = resources.files("twinrx.data").joinpath("cpic", "frequencies.csv").read_text(encoding="utf-8")
    out: dict[str, dict[str, dict[str, float]]] = {}
    known: dict[str, set[str]] = {}
    for line, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        gene, allele, group = row["gene"], row["allele"], row["group"]
        if gene not in known:
            known[gene] = {r["allele"] for r in pgx.cpic_table(gene)}
        if allele not in known[gene]:
            raise ValueError(f"frequencies.csv row {line}: {gene} allele {allele} is not in the CPIC tables")
        f = float(row["frequency"])
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"frequencies.csv row {line}: frequency {f} is not in [0, 1]")
        out.setdefault(gene, {}).setdefault(group, {})[allele] = f
    for gene, groups in out.items():
        for group, freqs in groups.items():
            total = sum(freqs.values())
            if abs(total - 1.0) > _TOL:
                raise ValueError(f"frequencies.csv: {gene} in {group} sums to {total:.8f}, not 1")
            groups[group] = {a: f / total for a, f in freqs.items()}
    return out


def ancestry_groups() -> tuple[str, ...]:
    """The CPIC biogeographical groups with allele frequencies here."""
    seen: dict[str, None] = {}
    for groups in _frequencies().values():
        seen.update(dict.fromkeys(groups))
    return tuple(seen)


def allele_frequencies(gene: str, group: str) -> dict[str, float]:
    """CPIC allele frequencies of ``gene`` in a biogeographical ``group`` (sum 1).

    The reference allele carries the remainder (1 minus the alleles listed), so alleles that
    the package's CPIC tables do not cover count as the reference allele.

    Examples
    --------
    >>> f = allele_frequencies("CYP2C9", "European")
    >>> round(f["*2"], 4), round(sum(f.values()), 12)
    (0.1273, 1.0)
    """
    g = _gene_name(gene, "gene")
    return dict(_frequencies()[g][_group_name(group, "group", gene=g)])


def _gene_name(gene: Any, field: str) -> str:
    name = str(gene).strip().upper()
    if name not in _frequencies():
        covered = ", ".join(_frequencies())
        why = "is not a CPIC gene covered" if name not in pgx.GENES else "has no allele frequencies here"
        raise ValueError(f"population.{field}: gene {str(gene)[:40]!r} {why}; use one of {covered}")
    return name


def _group_name(group: Any, field: str, gene: str | None = None) -> str:
    norm = {re.sub(r"\s+", " ", g).strip().lower(): g for g in ancestry_groups()}
    key = re.sub(r"\s+", " ", str(group)).strip().lower()
    if key not in norm:
        raise ValueError(
            f"population.{field}: {str(group)[:60]!r} is not a CPIC biogeographical group; "
            f"use one of: {', '.join(ancestry_groups())}"
        )
    name = norm[key]
    if gene is not None and name not in _frequencies()[gene]:
        have = ", ".join(_frequencies()[gene])
        raise ValueError(
            f"population.{field}: CPIC gives no {gene} allele frequencies for {name}; "
            f"groups with {gene} frequencies: {have}"
        )
    return name


@functools.cache
def _diplotypes(gene: str):
    """Alleles, the level index of each allele pair, and per level the CPIC diplotype,
    phenotype and activity score."""
    alleles: dict[str, None] = {}
    for freqs in _frequencies()[gene].values():
        alleles.update(dict.fromkeys(freqs))
    names = tuple(alleles)
    k = len(names)
    index = np.zeros((k, k), np.int64)
    labels: list[str] = []
    pheno: list[str] = []
    score: list[float] = []
    for i in range(k):
        for j in range(i, k):
            a, b = names[i], names[j]
            p = pgx.phenotype(gene, f"{a}/{b}" if a.startswith("*") else a + b)
            if p.diplotype not in labels:
                labels.append(p.diplotype)
                pheno.append(p.phenotype)
                score.append(p.activity_score)
            index[i, j] = index[j, i] = labels.index(p.diplotype)
    return names, _frozen(index), tuple(labels), _frozen(np.asarray(pheno)), _frozen(np.asarray(score, float))


# --------------------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------------------
def _num(v: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{where} must be a number, not {v!r}")
    x = float(v)
    if math.isnan(x) or (positive and not x > 0):
        raise ValueError(f"{where} must be {'a positive number' if positive else 'a number'}, not {v!r}")
    return x


def _finite(v: Any, where: str, *, positive: bool = False) -> float:
    x = _num(v, where, positive=positive)
    if not math.isfinite(x):
        raise ValueError(f"{where} must be finite, not {v!r}")
    return x


def _unknown(d: Mapping, allowed, where: str) -> None:
    extra = [k for k in d if k not in allowed]
    if extra:
        raise ValueError(f"{where}: unknown key {extra[0]!r}; allowed keys: {', '.join(sorted(allowed))}")


@dataclasses.dataclass(frozen=True)
class Marginal:
    """One covariate's distribution, in canonical parameters.

    ``params``: normal/truncnormal ``(mean, sd)``, lognormal ``(meanlog, sdlog)``, uniform
    ``(low, high)``; ``bounds`` truncate normal, truncnormal and lognormal.
    """

    dist: str
    params: tuple[float, ...] = ()
    bounds: tuple[float, float] | None = None
    levels: tuple[str, ...] = ()
    probabilities: tuple[float, ...] = ()
    value: float | str | None = None

    @property
    def categorical(self) -> bool:
        return self.dist == "categorical" or (self.dist == "fixed" and isinstance(self.value, str))

    @property
    def random_continuous(self) -> bool:
        return self.dist in CONTINUOUS

    @property
    def level_names(self) -> tuple[str, ...]:
        if self.dist == "categorical":
            return self.levels
        return (str(self.value),) if self.categorical else ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Marginal:
        if not isinstance(d, Mapping):
            raise ValueError(f'{where} must be a table such as {{ dist = "normal", mean = 70, sd = 12 }}')
        dist = d.get("dist")
        if dist not in DISTS:
            raise ValueError(f"{where}.dist must be one of {', '.join(DISTS)}, not {dist!r}")
        _unknown(d, _COMMON_KEYS | _DIST_KEYS[dist], where)
        bounds = None
        if "bounds" in d:
            b = d["bounds"]
            if not isinstance(b, (list, tuple)) or len(b) != 2:
                raise ValueError(f"{where}.bounds must be [lower, upper]")
            lo, hi = _num(b[0], f"{where}.bounds[0]"), _num(b[1], f"{where}.bounds[1]")
            if not lo < hi:
                raise ValueError(f"{where}.bounds: lower {lo:g} must be below upper {hi:g}")
            bounds = (lo, hi)

        def need(*keys):
            missing = [k for k in keys if k not in d]
            if missing:
                raise ValueError(
                    f"{where}: a {dist} distribution needs {' and '.join(keys)} (missing {missing[0]})"
                )

        if dist in ("normal", "truncnormal"):
            need("mean", "sd")
            if dist == "truncnormal" and bounds is None:
                raise ValueError(
                    f'{where}: truncnormal needs bounds = [lower, upper] (or use dist = "normal")'
                )
            m = cls(
                dist,
                (_finite(d["mean"], f"{where}.mean"), _finite(d["sd"], f"{where}.sd", positive=True)),
                bounds,
            )
        elif dist == "lognormal":
            forms = {("median", "gcv"), ("median", "sdlog"), ("meanlog", "sdlog")}
            given = tuple(k for k in ("median", "meanlog", "gcv", "sdlog") if k in d)
            if given not in forms:
                raise ValueError(
                    f"{where}: a lognormal needs median and gcv, median and sdlog, or meanlog and sdlog "
                    f"(got {', '.join(given) or 'none of them'})"
                )
            if "median" in d:
                mu = math.log(_finite(d["median"], f"{where}.median", positive=True))
            else:
                mu = _finite(d["meanlog"], f"{where}.meanlog")
            if "gcv" in d:
                s = math.sqrt(math.log1p(_finite(d["gcv"], f"{where}.gcv", positive=True) ** 2))
            else:
                s = _finite(d["sdlog"], f"{where}.sdlog", positive=True)
            if bounds is not None and bounds[0] < 0:
                raise ValueError(f"{where}.bounds: a lognormal is positive; the lower bound must be >= 0")
            m = cls(dist, (mu, s), bounds)
        elif dist == "uniform":
            need("low", "high")
            lo, hi = _finite(d["low"], f"{where}.low"), _finite(d["high"], f"{where}.high")
            if not lo < hi:
                raise ValueError(f"{where}: low {lo:g} must be below high {hi:g}")
            m = cls(dist, (lo, hi))
        elif dist == "categorical":
            need("levels", "probabilities")
            levels, p = d["levels"], d["probabilities"]
            if (
                not isinstance(levels, (list, tuple))
                or not levels
                or not all(isinstance(x, str) for x in levels)
            ):
                raise ValueError(f'{where}.levels must be a non-empty list of names, e.g. ["F", "M"]')
            if len(set(levels)) != len(levels):
                raise ValueError(f"{where}.levels has a repeated level")
            if not isinstance(p, (list, tuple)) or len(p) != len(levels):
                raise ValueError(f"{where}.probabilities must list one probability per level ({len(levels)})")
            probs = tuple(_finite(x, f"{where}.probabilities[{i}]") for i, x in enumerate(p))
            if any(x < 0 for x in probs):
                raise ValueError(f"{where}.probabilities must not be negative")
            if abs(sum(probs) - 1.0) > _TOL:
                raise ValueError(
                    f"{where}.probabilities sum to {sum(probs):.6g}, not 1; make them sum to 1 "
                    f"(one per level of {', '.join(levels)})"
                )
            m = cls(dist, levels=tuple(levels), probabilities=probs)
        else:  # fixed
            need("value")
            v = d["value"]
            if isinstance(v, str):
                m = cls(dist, value=v)
            else:
                m = cls(dist, value=_finite(v, f"{where}.value"))
        if bounds is not None:
            m._truncation_mass(where)
        return m

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dist": self.dist}
        if self.dist in ("normal", "truncnormal"):
            out.update(mean=self.params[0], sd=self.params[1])
        elif self.dist == "lognormal":
            out.update(meanlog=self.params[0], sdlog=self.params[1])
        elif self.dist == "uniform":
            out.update(low=self.params[0], high=self.params[1])
        elif self.dist == "categorical":
            out.update(levels=list(self.levels), probabilities=list(self.probabilities))
        else:
            out["value"] = self.value
        if self.bounds is not None:
            out["bounds"] = list(self.bounds)
        return out

    # ---- sampling ----------------------------------------------------------------------
    def _standard_bounds(self) -> tuple[float, float]:
        lo, hi = self.bounds if self.bounds is not None else (-math.inf, math.inf)
        loc, scale = self.params
        if self.dist == "lognormal":
            lo = math.log(lo) if lo > 0 else -math.inf
            hi = math.log(hi) if hi > 0 else -math.inf
        return (lo - loc) / scale, (hi - loc) / scale

    def _truncation_mass(self, where: str) -> None:
        a, b = self._standard_bounds()
        mass = special.ndtr(b) - special.ndtr(a) if a <= 0 else special.ndtr(-a) - special.ndtr(-b)
        if not mass > 1e-12:
            raise ValueError(f"{where}.bounds exclude (almost) all of the distribution; widen them")

    def quantile(self, z: np.ndarray) -> np.ndarray:
        """The covariate whose normal score is ``z`` (``F^-1(Phi(z))``)."""
        if self.dist == "uniform":
            lo, hi = self.params
            return lo + (hi - lo) * special.ndtr(z)
        loc, scale = self.params
        x = z if self.bounds is None else _truncated(z, *self._standard_bounds())
        x = loc + scale * x
        return np.exp(x) if self.dist == "lognormal" else x


def _truncated(z: np.ndarray, a: float, b: float) -> np.ndarray:
    """A standard normal truncated to [a, b], as a monotone transform of the score ``z``;
    in the upper tail through the mirror image, so that ``Phi`` near 1 loses no digits."""
    if a > 0:
        return -_truncated(-z, -b, -a)
    fa, fb = special.ndtr(a), special.ndtr(b)
    return np.clip(special.ndtri(fa + special.ndtr(z) * (fb - fa)), a, b)


@dataclasses.dataclass(frozen=True)
class CovariateSpec:
    """A sampled covariate: its marginal, unit, and per-level overrides (``by``)."""

    name: str
    marginal: Marginal
    unit: str = ""
    description: str = ""
    by: str | None = None
    per_level: tuple[tuple[str, Marginal], ...] = ()

    @property
    def categorical(self) -> bool:
        return self.marginal.categorical

    def marginal_for(self, level: str) -> Marginal:
        return dict(self.per_level).get(level, self.marginal)

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> CovariateSpec:
        where = f"population.covariates.{name}"
        if not _NAME.fullmatch(name):
            raise ValueError(f"{where}: covariate names are identifiers (letters, digits, _)")
        base = Marginal.from_dict(d, where)
        for key in ("unit", "description"):
            if key in d and not isinstance(d[key], str):
                raise ValueError(f"{where}.{key} must be a string")
        by, per = None, []
        if "by" in d:
            spec = d["by"]
            if not isinstance(spec, Mapping) or len(spec) != 1:
                raise ValueError(
                    f"{where}.by must be {{ COVARIATE = {{ level = {{...}}, ... }} }} (one covariate)"
                )
            ((by, levels),) = spec.items()
            if not isinstance(levels, Mapping) or not levels:
                raise ValueError(f"{where}.by.{by} must map levels to parameter tables")
            raw = {k: v for k, v in d.items() if k not in ("by", "unit", "description")}
            for level, over in levels.items():
                lw = f"{where}.by.{by}.{level}"
                if not isinstance(over, Mapping):
                    raise ValueError(f"{lw} must be a table of parameters, e.g. {{ mean = 68 }}")
                m = Marginal.from_dict({**raw, **over}, lw)
                per.append((str(level), m))
        return cls(name, base, str(d.get("unit", "")), str(d.get("description", "")), by, tuple(per))

    def to_dict(self) -> dict[str, Any]:
        out = self.marginal.to_dict()
        if self.unit:
            out["unit"] = self.unit
        if self.description:
            out["description"] = self.description
        if self.by is not None:
            out["by"] = {self.by: {lv: m.to_dict() for lv, m in self.per_level}}
        return out


@dataclasses.dataclass(frozen=True)
class DerivedSpec:
    """A covariate computed from others: ``formula`` with ``inputs`` (role -> covariate)."""

    name: str
    formula: str
    inputs: tuple[tuple[str, str], ...]
    female: str | None = None
    clip: tuple[float, float] | None = None

    @property
    def unit(self) -> str:
        return _FORMULAS[self.formula][1]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"formula": self.formula, **dict(self.inputs)}
        if self.female is not None:
            out["female"] = self.female
        if self.clip is not None:
            out["clip"] = list(self.clip)
        return out


@dataclasses.dataclass(frozen=True)
class PopulationSpec:
    """How a virtual population is made (frozen, hashable); see the module docstring.

    Build it with :meth:`from_dict` from a scenario file's ``[population]`` table;
    :meth:`to_dict` gives it back (canonical parameters: lognormals as meanlog/sdlog).
    """

    covariates: tuple[CovariateSpec, ...] = ()
    correlation_names: tuple[str, ...] = ()
    correlation: tuple[tuple[float, ...], ...] = ()
    derived: tuple[DerivedSpec, ...] = ()
    ancestry: tuple[tuple[str, float], ...] = ()
    genes: tuple[str, ...] = ()
    n: int | None = None

    def __post_init__(self):
        names = [c.name for c in self.covariates] + [d.name for d in self.derived]
        reserved = {ANCESTRY, *self.genes}
        for nm in names:
            if names.count(nm) > 1:
                raise ValueError(f"population: covariate {nm} is defined twice")
            if nm in reserved:
                raise ValueError(f"population.covariates.{nm}: the name is taken by the genotypes; rename it")
        self._check_by()
        self._check_correlation()
        self._check_derived()
        if self.genes and not self.ancestry:
            raise ValueError("population.genes needs population.ancestry (a CPIC group or a mixture)")
        total = sum(p for _, p in self.ancestry)
        if self.ancestry and abs(total - 1.0) > _TOL:
            raise ValueError(f"population.ancestry: the proportions sum to {total:.6g}; make them sum to 1")
        if any(p < 0 for _, p in self.ancestry):
            raise ValueError("population.ancestry: proportions must not be negative")
        if self.n is not None and (isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1):
            raise ValueError(f"population.n must be a positive whole number, not {self.n!r}")

    # ---- checks -------------------------------------------------------------------------
    def _levels_of(self, name: str) -> tuple[str, ...] | None:
        if name == ANCESTRY and self.ancestry:
            return tuple(g for g, _ in self.ancestry)
        c = self.covariate(name)
        return c.marginal.level_names if c is not None and c.categorical else None

    def covariate(self, name: str) -> CovariateSpec | None:
        return next((c for c in self.covariates if c.name == name), None)

    def _check_by(self) -> None:
        for c in self.covariates:
            if c.by is None:
                continue
            where = f"population.covariates.{c.name}.by"
            levels = self._levels_of(c.by)
            if levels is None:
                raise ValueError(
                    f"{where}: {c.by} is not a categorical covariate (or ANCESTRY) of the population"
                )
            for lv, m in c.per_level:
                if lv not in levels:
                    raise ValueError(f"{where}.{c.by}: {lv!r} is not a level of {c.by} ({', '.join(levels)})")
                if m.categorical != c.categorical or (
                    c.categorical and m.level_names != c.marginal.level_names
                ):
                    raise ValueError(
                        f"{where}.{c.by}.{lv}: a per-level override may change parameters only "
                        "(same kind of distribution; a categorical keeps its levels)"
                    )
        # categorical chains must not loop
        for c in self.covariates:
            seen, cur = [c.name], c
            while cur is not None and cur.by is not None:
                if cur.by in seen:
                    raise ValueError(
                        f"population.covariates: 'by' loops through {' -> '.join([*seen, cur.by])}"
                    )
                seen.append(cur.by)
                cur = self.covariate(cur.by)

    def _check_correlation(self) -> None:
        names, R = self.correlation_names, np.asarray(self.correlation, float)
        if not names:
            if R.size:
                raise ValueError("population.correlations: a matrix needs names")
            return
        where = "population.correlations"
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: a covariate is named twice")
        for nm in names:
            c = self.covariate(nm)
            if c is None or not c.marginal.random_continuous:
                raise ValueError(
                    f"{where}: {nm} is not a random continuous covariate of the population "
                    f"(correlate normal, truncnormal, lognormal or uniform ones)"
                )
            if any(not m.random_continuous for _, m in c.per_level):
                raise ValueError(f"{where}: {nm} has a per-level override that is not continuous")
        k = len(names)
        if R.shape != (k, k):
            raise ValueError(f"{where}: the matrix must be {k} x {k} (one row and column per name)")
        if not np.all(np.isfinite(R)):
            raise ValueError(f"{where}: the matrix has a non-finite entry")
        if not np.allclose(np.diag(R), 1.0, atol=1e-12):
            raise ValueError(f"{where}: the diagonal must be 1 (it is a correlation matrix)")
        if not np.allclose(R, R.T, atol=1e-12):
            i, j = np.argwhere(~np.isclose(R, R.T, atol=1e-12))[0]
            raise ValueError(
                f"{where}: the matrix is not symmetric ({names[i]}-{names[j]} is {R[i, j]:g}, "
                f"{names[j]}-{names[i]} is {R[j, i]:g})"
            )
        off = np.abs(R - np.eye(k))
        if np.any(off >= 1.0):
            i, j = np.argwhere(off >= 1.0)[0]
            raise ValueError(
                f"{where}: {names[i]}-{names[j]} = {R[i, j]:g}; correlations lie strictly in (-1, 1)"
            )
        low = float(np.linalg.eigvalsh(R)[0])
        if low <= 1e-10:
            raise ValueError(
                f"{where}: the correlation matrix of {', '.join(names)} is not positive definite "
                f"(smallest eigenvalue {low:.3g}); these correlations cannot hold together: weaken them"
            )

    def _check_derived(self) -> None:
        known: dict[str, str] = {c.name: c.unit for c in self.covariates}
        for d in self.derived:
            where = f"population.derived.{d.name}"
            if d.formula not in _FORMULAS:
                raise ValueError(f"{where}.formula must be one of {', '.join(_FORMULAS)}, not {d.formula!r}")
            roles = _FORMULAS[d.formula][0]
            given = dict(d.inputs)
            if set(given) != set(roles):
                raise ValueError(f"{where}: {d.formula} takes inputs {', '.join(roles)}")
            for role, cov in d.inputs:
                if cov not in known:
                    raise ValueError(
                        f"{where}: input {role} = {cov!r} is not a covariate defined before it; "
                        f'add {cov} to population.covariates or set {role} = "<name>"'
                    )
                if role == "sex":
                    levels = self._levels_of(cov)
                    if levels is None:
                        raise ValueError(f"{where}: sex covariate {cov} must be categorical")
                    if d.female not in levels:
                        raise ValueError(
                            f"{where}.female: {d.female!r} is not a level of {cov} ({', '.join(levels)}); "
                            'set female = "<the level for women>"'
                        )
                    continue
                c = self.covariate(cov)
                if c is not None and c.categorical:
                    raise ValueError(f"{where}: input {role} = {cov} is categorical; it must be a number")
                unit = known[cov]
                if unit:
                    try:
                        conversion(
                            unit, _CANONICAL_UNIT[role], _CREATININE_G_PER_MOL if role == "scr" else None
                        )
                    except UnitError as err:
                        raise ValueError(
                            f"{where}: input {role} = {cov} has unit {unit!r}, which does not convert to "
                            f"{_CANONICAL_UNIT[role]} ({err})"
                        ) from None
            if d.clip is not None and not d.clip[0] < d.clip[1]:
                raise ValueError(f"{where}.clip: lower must be below upper")
            known[d.name] = d.unit

    # ---- dict form ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PopulationSpec:
        """Build a spec from a ``[population]`` table (a dict as ``tomllib`` reads it)."""
        if not isinstance(d, Mapping):
            raise ValueError("population must be a table")
        _unknown(d, _TOP_KEYS, "population")
        covs_raw = d.get("covariates", {})
        if not isinstance(covs_raw, Mapping):
            raise ValueError("population.covariates must be a table of NAME = { dist = ..., ... }")
        covs = tuple(CovariateSpec.from_dict(str(k), v) for k, v in covs_raw.items())
        names, matrix = _parse_correlations(d.get("correlations"))
        ancestry: tuple[tuple[str, float], ...] = ()
        if "ancestry" in d:
            a = d["ancestry"]
            if isinstance(a, str):
                ancestry = ((_group_name(a, "ancestry"), 1.0),)
            elif isinstance(a, Mapping) and a:
                ancestry = tuple(
                    (_group_name(g, "ancestry"), _finite(p, f"population.ancestry.{g}")) for g, p in a.items()
                )
                if len({g for g, _ in ancestry}) != len(ancestry):
                    raise ValueError("population.ancestry names a group twice")
            else:
                raise ValueError(
                    "population.ancestry must be a CPIC group name or a table { group = proportion, ... }"
                )
        genes_raw = d.get("genes", [])
        if isinstance(genes_raw, str) or not isinstance(genes_raw, (list, tuple)):
            raise ValueError('population.genes must be a list of gene names, e.g. ["CYP2C9", "VKORC1"]')
        genes = tuple(_gene_name(g, "genes") for g in genes_raw)
        if len(set(genes)) != len(genes):
            raise ValueError("population.genes names a gene twice")
        for g in genes:
            for grp, _ in ancestry:
                _group_name(grp, "ancestry", gene=g)
        spec_no_derived = dict(covariates=covs, ancestry=ancestry, genes=genes)
        derived = _parse_derived(d.get("derived", {}), spec_no_derived)
        n = d.get("n")
        return cls(covs, names, matrix, derived, ancestry, genes, n)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a ``[population]`` table (``from_dict(spec.to_dict()) == spec``)."""
        out: dict[str, Any] = {}
        if self.n is not None:
            out["n"] = self.n
        if self.ancestry:
            out["ancestry"] = dict(self.ancestry)
        if self.genes:
            out["genes"] = list(self.genes)
        if self.covariates:
            out["covariates"] = {c.name: c.to_dict() for c in self.covariates}
        if self.correlation_names:
            out["correlations"] = {
                "names": list(self.correlation_names),
                "matrix": [list(r) for r in self.correlation],
            }
        if self.derived:
            out["derived"] = {dv.name: dv.to_dict() for dv in self.derived}
        return out

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`to_dict` (16 hex digits)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _parse_correlations(c: Any) -> tuple[tuple[str, ...], tuple[tuple[float, ...], ...]]:
    where = "population.correlations"
    if c is None:
        return (), ()
    if isinstance(c, Mapping):
        _unknown(c, {"names", "matrix"}, where)
        names, matrix = c.get("names"), c.get("matrix")
        if not isinstance(names, (list, tuple)) or not all(isinstance(x, str) for x in names):
            raise ValueError(f"{where}.names must be a list of covariate names")
        if not isinstance(matrix, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in matrix):
            raise ValueError(f"{where}.matrix must be a list of rows")
        rows = tuple(
            tuple(_num(x, f"{where}.matrix[{i}][{j}]") for j, x in enumerate(r)) for i, r in enumerate(matrix)
        )
        return tuple(names), rows
    if isinstance(c, (list, tuple)):
        names: list[str] = []
        pairs = []
        for i, t in enumerate(c):
            if not (
                isinstance(t, (list, tuple))
                and len(t) == 3
                and isinstance(t[0], str)
                and isinstance(t[1], str)
            ):
                raise ValueError(f'{where}[{i}] must be ["A", "B", r]')
            if t[0] == t[1]:
                raise ValueError(f"{where}[{i}]: a covariate is not correlated with itself")
            pairs.append((t[0], t[1], _num(t[2], f"{where}[{i}][2]")))
            names += [x for x in t[:2] if x not in names]
        R = np.eye(len(names))
        seen = set()
        for a, b, r in pairs:
            i, j = names.index(a), names.index(b)
            if frozenset((a, b)) in seen:
                raise ValueError(f"{where}: the pair {a}-{b} is given twice")
            seen.add(frozenset((a, b)))
            R[i, j] = R[j, i] = r
        return tuple(names), tuple(tuple(float(x) for x in row) for row in R)
    raise ValueError(f'{where} must be {{ names = [...], matrix = [[...]] }} or a list of ["A", "B", r]')


def _parse_derived(d: Any, partial: Mapping[str, Any]) -> tuple[DerivedSpec, ...]:
    if not isinstance(d, Mapping):
        raise ValueError("population.derived must be a table of NAME = { formula = ..., ... }")
    covs = {c.name: c for c in partial["covariates"]}
    groups = tuple(g for g, _ in partial["ancestry"])
    out = []
    for name, spec in d.items():
        where = f"population.derived.{name}"
        if not _NAME.fullmatch(str(name)):
            raise ValueError(f"{where}: covariate names are identifiers (letters, digits, _)")
        if isinstance(spec, str):
            spec = {"formula": spec}
        if not isinstance(spec, Mapping) or "formula" not in spec:
            raise ValueError(f'{where} must be {{ formula = "cockcroft_gault", ... }}')
        formula = spec["formula"]
        if formula not in _FORMULAS:
            raise ValueError(f"{where}.formula must be one of {', '.join(_FORMULAS)}, not {formula!r}")
        roles = _FORMULAS[formula][0]
        _unknown(spec, {"formula", "female", "clip", *roles}, where)
        inputs = []
        for role in roles:
            cov = spec.get(role, _DEFAULT_INPUT[role])
            if not isinstance(cov, str):
                raise ValueError(f"{where}.{role} must be a covariate name")
            inputs.append((role, cov))
        female = None
        if "sex" in roles:
            sex = dict(inputs)["sex"]
            if "female" in spec:
                female = str(spec["female"])
            else:
                c = covs.get(sex)
                levels = c.marginal.level_names if c is not None else (groups if sex == ANCESTRY else ())
                match = [lv for lv in levels if lv.strip().lower() in ("f", "female", "woman", "women")]
                if len(match) != 1:
                    raise ValueError(
                        f'{where}: cannot tell which level of {sex} is female; set female = "<level>"'
                    )
                female = match[0]
        clip = None
        if "clip" in spec:
            cl = spec["clip"]
            if not isinstance(cl, (list, tuple)) or len(cl) != 2:
                raise ValueError(f"{where}.clip must be [lower, upper]")
            clip = (_num(cl[0], f"{where}.clip[0]"), _num(cl[1], f"{where}.clip[1]"))
        out.append(DerivedSpec(str(name), formula, tuple(inputs), female, clip))
    return tuple(out)


# --------------------------------------------------------------------------------------
# The population
# --------------------------------------------------------------------------------------
def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclasses.dataclass(frozen=True, eq=False)
class Population:
    """A sampled virtual population: ``n`` patients with pseudonymous ids.

    ``covariates`` maps each name to an array ``(n,)``: float64 for continuous covariates,
    level names (strings) for categorical ones, whose levels are ``levels[name]`` and whose
    0-based codes are ``codes[name]`` (genotypes: the gene's CPIC diplotypes; ``ANCESTRY``:
    the groups). :attr:`phenotypes` and :attr:`activity_scores` give each gene's CPIC
    phenotype and activity score (NaN where CPIC assigns none). Arrays are read-only.
    """

    ids: np.ndarray
    covariates: Mapping[str, np.ndarray]
    levels: Mapping[str, tuple[str, ...]]
    codes: Mapping[str, np.ndarray]
    units: Mapping[str, str]
    spec: PopulationSpec

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    def __len__(self) -> int:
        return self.n

    @property
    def genes(self) -> tuple[str, ...]:
        return self.spec.genes

    @property
    def phenotypes(self) -> dict[str, np.ndarray]:
        """CPIC phenotype per gene, ``(n,)`` strings."""
        return {g: _diplotypes(g)[3][self.codes[g]] for g in self.genes}

    @property
    def activity_scores(self) -> dict[str, np.ndarray]:
        """CPIC activity score per gene, ``(n,)`` (NaN where CPIC assigns none)."""
        return {g: _diplotypes(g)[4][self.codes[g]] for g in self.genes}

    def to_dataset(self) -> xr.Dataset:
        """The population as an ``xarray.Dataset`` with dim ``patient`` (ids as coordinate):
        one variable per covariate (``units``, and ``levels`` for categorical ones, in its
        attrs), ``<GENE>_phenotype`` and ``<GENE>_activity_score`` per gene, and the spec
        (JSON) and its digest in the dataset's attrs."""
        data = {}
        for name, v in self.covariates.items():
            attrs: dict[str, Any] = {"units": self.units.get(name, "")}
            if name in self.levels:
                attrs["levels"] = list(self.levels[name])
            data[name] = ("patient", np.asarray(v), attrs)
        scores = self.activity_scores
        for gene, v in self.phenotypes.items():
            data[f"{gene}_phenotype"] = ("patient", v, {"units": "", "source": "CPIC"})
            data[f"{gene}_activity_score"] = ("patient", scores[gene], {"units": "1", "source": "CPIC"})
        return xr.Dataset(
            data,
            coords={"patient": np.asarray(self.ids)},
            attrs={
                "title": "twinrx virtual population",
                "population_spec": json.dumps(self.spec.to_dict()),
                "population_spec_digest": self.spec.digest,
            },
        )


def _ids(n: int, start: int = 0, total: int | None = None) -> np.ndarray:
    """'V000001', 'V000002', ... (at least 6 digits, as many as ``total`` patients need),
    patients ``start + 1`` to ``start + n``, built without a Python loop."""
    w = max(6, len(str(n + start if total is None else total)))
    i = np.arange(start + 1, start + n + 1, dtype=np.int64)
    powers = 10 ** np.arange(w - 1, -1, -1, dtype=np.int64)
    chars = np.empty((n, w + 1), np.uint32)
    chars[:, 0] = ord("V")
    chars[:, 1:] = (i[:, None] // powers) % 10 + ord("0")
    return chars.view(f"<U{w + 1}").reshape(n)


def _stream(key, name: str):
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def _check_key(key) -> None:
    if key is None or isinstance(key, (int, np.integer)):
        raise TypeError("key must be a jax random key, e.g. jax.random.key(0)")


def _categorical_codes(u: np.ndarray, probabilities) -> np.ndarray:
    cum = np.cumsum(np.asarray(probabilities, float))
    cum /= cum[-1]
    return np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1)


def sample_population(spec: PopulationSpec | Mapping[str, Any], n: int | None = None, *, key) -> Population:
    """Draw ``n`` virtual patients from ``spec``.

    Parameters
    ----------
    spec : a :class:`PopulationSpec` or its dict form (a ``[population]`` table).
    n : number of patients (default ``spec.n``).
    key : a jax random key; the same key gives the same population.

    Returns
    -------
    Population (numpy arrays). Everything is vectorised: 10^6 patients take about a
    second on one CPU core.

    Examples
    --------
    >>> import jax
    >>> spec = {"covariates": {"WT": {"dist": "lognormal", "median": 70, "gcv": 0.2, "unit": "kg"}}}
    >>> pop = sample_population(spec, 3, key=jax.random.key(0))
    >>> pop.ids.tolist(), pop.covariates["WT"].shape
    (['V000001', 'V000002', 'V000003'], (3,))
    """
    if not isinstance(spec, PopulationSpec):
        spec = PopulationSpec.from_dict(spec)
    _check_key(key)
    n = spec.n if n is None else n
    if n is None or isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive whole number of patients (or set population.n), not {n!r}")
    n = int(n)
    values: dict[str, np.ndarray] = {}
    codes: dict[str, np.ndarray] = {}
    levels: dict[str, tuple[str, ...]] = {}
    units: dict[str, str] = {}

    if spec.ancestry:
        groups = tuple(g for g, _ in spec.ancestry)
        u = np.asarray(jax.random.uniform(_stream(key, ANCESTRY), (n,)))
        codes[ANCESTRY] = _categorical_codes(u, [p for _, p in spec.ancestry])
        levels[ANCESTRY] = groups
        units[ANCESTRY] = ""

    # categorical covariates, each after the one it depends on
    pending = [c for c in spec.covariates if c.categorical]
    while pending:
        for c in pending:
            if c.by is None or c.by in codes:
                break
        else:  # pragma: no cover - PopulationSpec rejects loops
            raise ValueError("population.covariates: 'by' dependencies cannot be resolved")
        pending.remove(c)
        names = c.marginal.level_names
        if c.marginal.dist == "fixed":
            cc = np.zeros(n, np.int64)
        else:
            u = np.asarray(jax.random.uniform(_stream(key, c.name), (n,)))
            cc = _categorical_codes(u, c.marginal.probabilities)
            if c.by is not None:
                by_levels = levels[c.by]
                for lv, m in c.per_level:
                    mask = codes[c.by] == by_levels.index(lv)
                    cc[mask] = _categorical_codes(u[mask], m.probabilities)
        codes[c.name], levels[c.name], units[c.name] = cc, names, c.unit

    # continuous covariates through the Gaussian copula
    cont = [c for c in spec.covariates if not c.categorical]
    z = {
        c.name: np.asarray(jax.random.normal(_stream(key, c.name), (n,)))
        for c in cont
        if c.marginal.random_continuous or any(m.random_continuous for _, m in c.per_level)
    }
    if spec.correlation_names:
        L = np.linalg.cholesky(np.asarray(spec.correlation, float))
        Z = np.stack([z[nm] for nm in spec.correlation_names], axis=1) @ L.T
        for j, nm in enumerate(spec.correlation_names):
            z[nm] = Z[:, j]
    for c in cont:
        x = _continuous(c.marginal, z.get(c.name), n)
        if c.by is not None:
            by_levels = levels[c.by]
            for lv, m in c.per_level:
                mask = codes[c.by] == by_levels.index(lv)
                x[mask] = _continuous(m, z[c.name][mask] if c.name in z else None, int(mask.sum()))
        values[c.name], units[c.name] = x, c.unit

    for d in spec.derived:
        values[d.name], units[d.name] = _derive(d, values, codes, levels, units), d.unit

    for gene in spec.genes:
        alleles, index = _diplotypes(gene)[:2]
        anc = codes[ANCESTRY]
        u = np.asarray(jax.random.uniform(_stream(key, f"gene:{gene}"), (n, 2)))
        pair = np.empty((n, 2), np.int64)
        for g, group in enumerate(levels[ANCESTRY]):
            mask = anc == g
            freq = [_frequencies()[gene][group].get(a, 0.0) for a in alleles]
            pair[mask] = _categorical_codes(u[mask], freq)
        codes[gene], levels[gene], units[gene] = index[pair[:, 0], pair[:, 1]], _diplotypes(gene)[2], ""

    order = [ANCESTRY] if spec.ancestry else []
    order += [c.name for c in spec.covariates] + [d.name for d in spec.derived] + list(spec.genes)
    small = {
        name: _frozen(cc.astype(np.min_scalar_type(max(len(levels[name]) - 1, 1))))
        for name, cc in codes.items()
    }
    for name, cc in small.items():
        values[name] = np.asarray(levels[name])[cc]
    return Population(
        ids=_frozen(_ids(n)),
        covariates=types.MappingProxyType({name: _frozen(values[name]) for name in order}),
        levels=types.MappingProxyType({k: levels[k] for k in order if k in levels}),
        codes=types.MappingProxyType({k: small[k] for k in order if k in small}),
        units=types.MappingProxyType({k: units[k] for k in order}),
        spec=spec,
    )


def _continuous(m: Marginal, z: np.ndarray | None, n: int) -> np.ndarray:
    return np.full(n, float(m.value)) if m.dist == "fixed" else m.quantile(z)


def _derive(d: DerivedSpec, values, codes, levels, units) -> np.ndarray:
    args = {}
    for role, cov in d.inputs:
        if role == "sex":
            args[role] = codes[cov] == levels[cov].index(d.female)  # True: female
            continue
        x = values[cov]
        if units.get(cov):
            x = x * conversion(
                units[cov], _CANONICAL_UNIT[role], _CREATININE_G_PER_MOL if role == "scr" else None
            )
        args[role] = x
    f = {
        "cockcroft_gault": lambda a: _derived.cockcroft_gault(a["age"], a["weight"], a["scr"], a["sex"]),
        "ckd_epi_2021": lambda a: _derived.ckd_epi_2021(a["scr"], a["age"], a["sex"]),
        "bmi": lambda a: _derived.bmi(a["weight"], a["height"]),
        "bsa_du_bois": lambda a: _derived.bsa_du_bois(a["weight"], a["height"]),
        "bsa_mosteller": lambda a: _derived.bsa_mosteller(a["weight"], a["height"]),
        "lean_body_weight": lambda a: _derived.lean_body_weight(a["weight"], a["height"], a["sex"]),
    }[d.formula]
    out = np.asarray(f(args), np.float64)
    return np.clip(out, *d.clip) if d.clip is not None else out


# --------------------------------------------------------------------------------------
# Per-patient model parameters
# --------------------------------------------------------------------------------------
def individual_parameters(
    model,
    population: Population,
    *,
    key,
    source=None,
    variability: bool = True,
) -> dict[str, np.ndarray]:
    """Per-patient inputs of a model card for ``population``, ready for :func:`twinrx.simulate`.

    Returns ``{**typical, **covariates, **etas}``, each an array ``(n,)``:

    - the population (typical) value of every parameter;
    - every covariate of the card that the population has, in the card's unit (converted
      when the units differ), categorical ones as the card's level codes; a card covariate
      the population lacks is left out, so the card's reference value applies;
    - ``eta_<P>`` for every parameter with inter-individual variability.

    The card applies its covariate effects and ``exp(eta)`` itself (``model.prepare``);
    ``model.individual_values(params)`` gives each patient's individual parameters
    (``CL_i = CL x effects(covariates) x exp(eta_CL)``).

    Variability (``source``)
        ``None``: the card's typical values for everyone, and ``eta ~ N(0, Omega)`` from the
        card's ``[variability]`` (``model.card.variability.sample``): between-subject
        variability only.
        A population fit (:class:`twinrx.infer.Fit`): each patient takes one posterior draw
        (uniformly among the fit's draws) of the population values, typical values,
        ``omega_<P>`` (and ``L_corr`` for a full covariance) and estimated covariate
        coefficients (passed as ``__beta_<P>_<COV>``), and a new ``eta = omega * (L z)``,
        ``z ~ N(0, I)``: parameter uncertainty and between-subject variability together.
        Values the fit held fixed are used as they are.
    variability : False sets every ``eta`` to 0 (typical patients with their covariates).

    Raises
    ------
    ValueError : the model is not a card, a covariate's kind or unit does not match the
        card's, or the fit is of another model.
    """
    card = getattr(model, "card", None)
    if card is None:
        raise ValueError(
            f"model {getattr(model, 'name', model)!r} is not a model card; per-patient parameters need a "
            "card's covariates and variability (twinrx.get_model('<card name>'))"
        )
    if not isinstance(population, Population):
        raise ValueError("population must be a twinrx.cohort.Population (from sample_population)")
    _check_key(key)
    n = population.n
    k_draw, k_eta = jax.random.split(key)

    covs: dict[str, np.ndarray] = {}
    for cov in card.covariates:
        if cov.name not in population.covariates:
            continue
        v = population.covariates[cov.name]
        is_cat = cov.name in population.levels
        if cov.categorical != is_cat:
            what = "categorical" if cov.categorical else "continuous"
            raise ValueError(
                f"covariate {cov.name}: the model card {card.name!r} reads it as {what}, the population "
                f"has it {'categorical' if is_cat else 'continuous'}; rename one of them"
            )
        if is_cat:
            try:
                table = np.asarray(cov.encode(np.asarray(population.levels[cov.name], dtype=object)), float)
            except ValueError as err:
                raise ValueError(f"{err} (population covariate {cov.name}, model {card.name!r})") from None
            covs[cov.name] = table.reshape(-1)[population.codes[cov.name]]
            continue
        have = population.units.get(cov.name, "")
        x = np.asarray(v, float)
        if have and cov.unit and have != cov.unit:
            try:
                x = x * conversion(have, cov.unit)
            except UnitError:
                raise ValueError(
                    f"covariate {cov.name}: the population's unit {have!r} does not convert to the "
                    f"card's {cov.unit!r} (model {card.name!r})"
                ) from None
        covs[cov.name] = x

    var = card.variability
    if source is None:
        typical = {p.name: np.full(n, float(p.value)) for p in card.parameters}
        if variability:
            etas = {k: np.asarray(v, float) for k, v in var.sample(k_eta, n).items()}
        else:
            etas = {name: np.zeros(n) for name in var.eta_names}
        return {**typical, **covs, **etas}
    return {**_from_fit(model, source, n, k_draw, k_eta, variability), **covs}


def _from_fit(model, fit, n: int, k_draw, k_eta, variability: bool) -> dict[str, np.ndarray]:
    pop = getattr(fit, "pop", None)
    if pop is None or not hasattr(fit, "flat_samples"):
        raise ValueError(
            "source must be a twinrx.infer.Fit (a population fit), or None for the card's values"
        )
    card = model.card
    if getattr(pop.model, "card", None) != card:
        raise ValueError(f"the fit is of model {pop.model.name!r}, not {model.name!r}; pass the fitted model")
    extra = [p for p in pop.iiv if p not in card.variability.parameters]
    if extra:
        raise ValueError(
            f"the fit has variability on {', '.join(extra)}, which card {card.name!r} has no eta for; "
            "add them to the card's [variability]"
        )
    flat = {k: np.asarray(v) for k, v in fit.flat_samples().items()}
    held = {k: np.asarray(v, float) for k, v in getattr(fit, "conditioned", {}).items()}
    sites = [s for s in pop.population_sites if s in flat and s not in held]
    draws = flat[sites[0]].shape[0] if sites else 1
    pick = np.asarray(jax.random.randint(k_draw, (n,), 0, draws))

    def site(name: str) -> np.ndarray:
        if name in held:
            return np.broadcast_to(held[name], (n, *held[name].shape)).copy()
        if name in flat:
            return np.asarray(flat[name][pick], float)
        raise ValueError(f"the fit has no draws of {name!r}; was it a population fit of {model.name!r}?")

    fixed = dict(pop.fixed)
    out: dict[str, np.ndarray] = {}
    for p in card.parameters:
        out[p.name] = np.full(n, float(fixed[p.name])) if p.name in fixed else site(p.name)
    etas = {name: np.zeros(n) for name in card.variability.eta_names}
    if variability and pop.iiv:
        omega = np.stack([site(f"omega_{p}") for p in pop.iiv], axis=1)  # (n, d)
        z = np.asarray(jax.random.normal(k_eta, (n, len(pop.iiv))))
        if pop.full_covariance:
            z = np.einsum("nij,nj->ni", site("L_corr"), z)
        eta = omega * z
        for j, p in enumerate(pop.iiv):
            etas[f"eta_{p}"] = eta[:, j]
    out.update(etas)
    for key in pop.estimated_effects:
        out[f"__{key}"] = site(key)
    return out


# --------------------------------------------------------------------------------------
# In-silico trials: every virtual patient under every arm
# --------------------------------------------------------------------------------------
def scenario_population(scenario) -> PopulationSpec:
    """The :class:`PopulationSpec` of a scenario's ``[population]`` table."""
    if scenario.population is None:
        raise ValueError(
            f"scenario {scenario.name!r} has no [population] table: add one (the virtual patients' "
            "covariates and genotypes; format in scenarios/README.md) to run it as a cohort"
        )
    try:
        return PopulationSpec.from_dict(scenario.population)
    except ValueError as err:
        raise ValueError(f"scenario {scenario.name!r} [population]: {err}") from None


def dose_covariates(scenario, population: Population) -> dict[str, Any]:
    """What dose formulas read for each patient: the population's covariates (categorical
    ones as level names, ``ANCESTRY`` and genotypes included) and, for what the population
    does not draw, the scenario's ``[patient]`` values (the same for every patient)."""
    return scenario.dose_inputs(population.covariates)


def patient_weight(population: Population):
    """Each patient's ``WT`` in kg (converted from its unit), or None without ``WT``."""
    if "WT" not in population.covariates or "WT" in population.levels:
        return None
    unit = population.units.get("WT") or "kg"
    try:
        f = conversion(unit, "kg")
    except UnitError:
        raise ValueError(f"population covariate WT has unit {unit!r}, which is not a mass") from None
    return np.asarray(population.covariates["WT"], float) * f


@dataclasses.dataclass(frozen=True, eq=False)
class ArmResults:
    """What :func:`run_arms` gives for ``n`` patients under ``A`` arms and ``M`` targets.

    ``metric`` ``(n, A, M)`` (NaN where the solve failed), ``status`` ``(n, A)`` (0 ok, else
    the solver's :class:`twinrx.Status` code), ``total_dose`` and ``last_dose`` ``(n, A)``
    (the amount taken in ``[0, horizon)``; the last planned dose after the rules), and the
    trajectories ``(k, A, O, T)`` of the first ``k`` patients: the outputs ``outputs`` at
    ``times`` (the scenario's grid: every target window, ``step`` apart)."""

    arms: tuple[str, ...]
    targets: tuple[str, ...]
    metric: np.ndarray
    status: np.ndarray
    total_dose: np.ndarray
    last_dose: np.ndarray
    outputs: tuple[str, ...]
    times: np.ndarray
    trajectory: np.ndarray

    def head(self, m: int) -> ArmResults:
        """The first ``m`` patients."""
        return dataclasses.replace(
            self,
            metric=self.metric[:m],
            status=self.status[:m],
            total_dose=self.total_dose[:m],
            last_dose=self.last_dose[:m],
            trajectory=self.trajectory[:m],
        )


def _patient_overrides(scenario, params: Mapping[str, Any], have: Mapping[str, Any], n: int):
    """The scenario's ``[patient]`` values for what the population does not give (fixed
    typical values such as insulin_timing's ``K = 0``), as arrays ``(n,)`` (text as is)."""
    out = dict(params)
    for k, v in scenario.patient:
        if k in have:
            continue
        out[k] = v if isinstance(v, str) else np.full(n, float(v))
    return out


def run_arms(
    scenario,
    params: Mapping[str, Any],
    *,
    key,
    weight=None,
    covariates: Mapping[str, Any] | None = None,
    units: Mapping[str, str] | None = None,
    trajectories: int = 0,
) -> ArmResults:
    """Every patient of ``params`` under every arm of ``scenario``: the chunk kernel of a
    cohort run.

    Parameters
    ----------
    scenario : a :class:`twinrx.scenarios.Scenario`; its arms (``scenario.arm_regimens``)
        and targets.
    params : per-patient model inputs ``{name: (n,)}`` (:func:`individual_parameters`).
    key : a jax random key; ``fold_in(key, 1)`` draws the adherence patterns (the same for
        every arm: a paired design with common random numbers), ``fold_in(key, 2)`` the
        scenario's within-patient variability.
    weight : each patient's weight in kg ``(n,)`` for per-kg doses (default: ``params["WT"]``).
    covariates, units : each patient's covariates ``{name: (n,)}`` (categorical ones as level
        names) and their units, for dose formulas (default: ``params`` and the scenario's
        ``[patient]``); see :func:`dose_covariates`.
    trajectories : keep the outputs of the first this many patients.

    A patient whose solve fails under an arm has status != 0 there and NaN metrics; the
    others are unaffected (patients are simulated independently).
    """
    from .model.library import get_model
    from .scenarios import _scenario_draws, _simulate_regimen

    _check_key(key)
    model = get_model(scenario.model)
    n = next(len(np.atleast_1d(v)) for v in params.values() if not isinstance(v, str))
    draws = _scenario_draws(model, scenario, params, jax.random.fold_in(key, 2))
    akey = jax.random.fold_in(key, 1)
    arms = scenario.arm_regimens
    k = max(0, min(int(trajectories), n))
    times = scenario.grid()
    outputs = tuple(o.name for o in model.outputs)
    A, M = len(arms), len(scenario.targets)
    needed = tuple(dict.fromkeys(t.output for t in scenario.targets))
    metric = np.empty((n, A, M))
    status = np.empty((n, A), np.int16)
    total = np.empty((n, A))
    last = np.empty((n, A))
    traj = np.empty((k, A, len(outputs), times.size))
    for a, (_, reg) in enumerate(arms):
        grid, out, st, plan, amt, taken, time = _simulate_regimen(
            model, scenario, reg, draws, akey, weight=weight, covariates=covariates, units=units
        )
        status[:, a] = st
        bad = st != 0
        shared = isinstance(grid, np.ndarray) and grid.ndim == 2 and grid.strides[0] == 0
        g = jnp.asarray(grid[0] if shared else grid)  # one grid for all: its masks computed once
        values = _metrics_fn(scenario.targets, shared)(g, {o: out[o] for o in needed})
        metric[:, a, :] = np.where(bad[:, None], np.nan, np.asarray(values))
        own = np.nonzero(plan.own)[0]
        last[:, a] = amt[:, own[-1]]
        within = plan.taken_by & (time < scenario.horizon)
        total[:, a] = np.sum(np.where(within, amt * taken, 0.0), axis=1)
        if k:
            g = np.asarray(grid[:k])
            idx = np.stack([np.searchsorted(g[i], times) for i in range(k)])
            for o, name in enumerate(outputs):
                y = np.asarray(out[name][:k])
                traj[:, a, o, :] = np.where(bad[:k, None], np.nan, np.take_along_axis(y, idx, axis=1))
    return ArmResults(
        arms=tuple(a for a, _ in arms),
        targets=tuple(t.name for t in scenario.targets),
        metric=metric,
        status=status,
        total_dose=total,
        last_dose=last,
        outputs=outputs,
        times=times,
        trajectory=traj,
    )


@functools.lru_cache(maxsize=32)
def _metrics_fn(targets, shared: bool = False):
    """Every target's metric per patient, ``(n, M)``, from per-patient grids ``(n, T)`` (or
    one grid ``(T,)`` for all when ``shared``) and outputs ``{name: (n, T)}``: one compiled
    function per set of targets (the metrics of :class:`twinrx.scenarios.Target`, jitted
    together rather than op by op)."""
    axes = (None, 0) if shared else (0, 0)

    def metrics(grid, outputs):
        return jnp.stack(
            [jax.vmap(tg.value, in_axes=axes)(grid, outputs[tg.output]) for tg in targets], axis=-1
        )

    return jax.jit(metrics)


def subgroup_levels(spec: PopulationSpec, name: str) -> tuple[str, ...]:
    """The levels of a categorical covariate (or ``ANCESTRY``, or a gene) of ``spec``."""
    pop = sample_population(spec, 1, key=jax.random.key(0))  # the levels do not depend on draws
    if name not in pop.levels:
        cats = ", ".join(pop.levels) or "none"
        raise ValueError(
            f"subgroup {name!r} is not a categorical covariate of the population; categorical ones: {cats}"
        )
    return tuple(pop.levels[name])


def draw_chunk(scenario, spec: PopulationSpec, index: int, size: int, *, key, source=None):
    """The ``size`` virtual patients of chunk ``index`` and their model inputs: ``(population,
    params)``, from ``fold_in(fold_in(key, index), 0)`` (covariates) and ``(..., 1)``
    (parameters). See :func:`simulate_chunk`."""
    from .model.library import get_model

    kc = jax.random.fold_in(key, index)
    model = get_model(scenario.model)
    pop = sample_population(spec, size, key=jax.random.fold_in(kc, 0))
    params = individual_parameters(model, pop, key=jax.random.fold_in(kc, 1), source=source)
    return pop, _patient_overrides(scenario, params, pop.covariates, size)


def simulate_chunk(
    scenario,
    spec: PopulationSpec,
    index: int,
    size: int,
    n: int,
    *,
    key,
    trajectories: int = 0,
    source=None,
    drawn=None,
) -> tuple[Population, ArmResults]:
    """Chunk ``index`` of a cohort of ``n`` patients in chunks of ``size``: patients
    ``index * size`` to ``min((index + 1) * size, n) - 1``.

    Its randomness is ``fold_in(key, index)`` alone (covariates from ``fold_in(., 0)``,
    parameters from ``fold_in(., 1)``, adherence and variability from ``fold_in(., 2)``),
    so a chunk's patients do not depend on which worker runs it, on the order chunks run
    in, or on an interruption; they do depend on ``size``. Every chunk draws and simulates
    ``size`` patients (one compiled shape), and the last one keeps those it needs.
    ``drawn``: the chunk's :func:`draw_chunk`, when already made."""
    start = index * size
    m = min(size, n - start)
    if m <= 0:
        raise ValueError(f"chunk {index} of size {size} starts after the cohort's {n} patients")
    pop, params = (
        drawn if drawn is not None else draw_chunk(scenario, spec, index, size, key=key, source=source)
    )
    res = run_arms(
        scenario,
        params,
        key=jax.random.fold_in(jax.random.fold_in(key, index), 2),
        weight=patient_weight(pop),
        covariates=dose_covariates(scenario, pop),
        units=pop.units,
        trajectories=max(0, min(trajectories - start, size)),
    )
    return _head_population(pop, m, start, n), res.head(m)


def _head_population(pop: Population, m: int, start: int, total: int) -> Population:
    return dataclasses.replace(
        pop,
        ids=_frozen(_ids(m, start, total)),
        covariates=types.MappingProxyType({k: _frozen(v[:m].copy()) for k, v in pop.covariates.items()}),
        codes=types.MappingProxyType({k: _frozen(v[:m].copy()) for k, v in pop.codes.items()}),
    )


def chunk_partials(
    scenario, res: ArmResults, *, subgroup: np.ndarray | None = None, n_levels: int = 0
) -> dict[str, np.ndarray]:
    """Partial sums of a chunk, added over chunks for the endpoints: ``n`` (patients),
    ``n_attained`` ``(A, M)`` (target attained, solve ok), ``n_failed`` ``(A,)``, and with
    ``subgroup`` (level codes ``(n,)``) ``n_by`` ``(L,)`` and ``n_attained_by`` ``(L, A, M)``."""
    ok = np.zeros(res.metric.shape, bool)
    for j, tg in enumerate(scenario.targets):
        m = res.metric[:, :, j]
        with np.errstate(invalid="ignore"):
            ok[:, :, j] = np.asarray(tg.attained(m)) & np.isfinite(m)
    ok &= (res.status == 0)[:, :, None]
    out = {
        "n": np.asarray(res.metric.shape[0], np.int64),
        "n_attained": ok.sum(axis=0).astype(np.int64),
        "n_failed": (res.status != 0).sum(axis=0).astype(np.int64),
    }
    if subgroup is not None:
        codes = np.asarray(subgroup, np.int64)
        out["n_by"] = np.bincount(codes, minlength=n_levels).astype(np.int64)
        by = np.zeros((n_levels, *ok.shape[1:]), np.int64)
        np.add.at(by, codes, ok.astype(np.int64))
        out["n_attained_by"] = by
    return out
