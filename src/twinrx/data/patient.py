"""Patient and Cohort: the one record every reader produces and the solver and fitter consume.

A Patient holds, for one pseudonymous id,

- static covariates (``Covariate``: value, canonical unit, source), numeric or categorical;
- measured series (``Series``: drug levels, labs, vitals, wearable streams, time-varying
  covariates), each in its canonical unit with per-value censoring and LLOQ;
- the dosing history (``Dosing``: NONMEM columns plus drug and route), from which an
  ``EventTable`` is built for a model;
- genotype-derived phenotypes (``Phenotype``: gene, diplotype, activity score, phenotype).

Times are hours relative to the patient's reference time (the first dose, or the first record
when there is no dose); calendar dates never enter a Patient. A Cohort is a tuple of Patients
with their ids; ``Cohort.to_dataset`` / ``Cohort.from_dataset`` map it to one xarray Dataset
(ragged arrays in the CF "contiguous ragged array" layout) that ``twinrx.store`` writes to Zarr.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..events import DataError, EventTable
from ..units import conversion

__all__ = [
    "BELOW",
    "ABOVE",
    "OBSERVED",
    "Covariate",
    "Series",
    "Dosing",
    "Phenotype",
    "Skipped",
    "Patient",
    "Cohort",
    "SCHEMA",
]

SCHEMA = "twinrx.patients/1"
OBSERVED, BELOW, ABOVE = 0, -1, 1  # Series.censored: below LLOQ (left), above ULOQ (right)
SERIES_KINDS = ("concentration", "lab", "vital", "wearable", "covariate", "response")


def _f64(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float64).reshape(-1))


@dataclasses.dataclass(frozen=True)
class Covariate:
    """A static covariate: a number in its canonical unit, or a category (``unit=""``)."""

    value: float | str
    unit: str = ""
    source: str = ""

    @property
    def categorical(self) -> bool:
        return isinstance(self.value, str)


@dataclasses.dataclass(frozen=True, eq=False)
class Series:
    """Values of one quantity over time (hours), in its canonical unit.

    ``censored`` is 0 for an observed value, -1 when the value is below the quantification
    limit (``value`` then holds the limit) and +1 when above the upper limit (CGM "High").
    ``lloq`` is the lower limit of quantification per value (NaN when not reported).
    """

    name: str
    unit: str
    time: np.ndarray
    value: np.ndarray
    censored: np.ndarray | None = None
    lloq: np.ndarray | None = None
    kind: str = "lab"
    source: str = ""

    def __post_init__(self):
        t, v = _f64(self.time), _f64(self.value)
        if t.shape != v.shape:
            raise ValueError(f"series {self.name}: {t.size} times but {v.size} values")
        c = np.zeros(t.shape, np.int8) if self.censored is None else np.asarray(self.censored, np.int8)
        lq = np.full(t.shape, np.nan) if self.lloq is None else _f64(np.broadcast_to(self.lloq, t.shape))
        if c.shape != t.shape:
            raise ValueError(f"series {self.name}: censoring flags do not match the values")
        if self.kind not in SERIES_KINDS:
            raise ValueError(f"series {self.name}: kind {self.kind!r} is not one of {SERIES_KINDS}")
        order = np.argsort(t, kind="stable")
        if np.any(order != np.arange(t.size)):
            t, v, c, lq = t[order], v[order], c[order], lq[order]
        for name, val in (("time", t), ("value", v), ("censored", c), ("lloq", lq)):
            val.setflags(write=False)
            object.__setattr__(self, name, val)

    def __len__(self) -> int:
        return int(self.time.size)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Series):
            return NotImplemented
        return (
            (self.name, self.unit, self.kind, self.source)
            == (other.name, other.unit, other.kind, other.source)
            and np.array_equal(self.time, other.time)
            and np.array_equal(self.value, other.value, equal_nan=True)
            and np.array_equal(self.censored, other.censored)
            and np.array_equal(self.lloq, other.lloq, equal_nan=True)
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def time_range(self) -> tuple[float, float]:
        return (float(self.time[0]), float(self.time[-1])) if len(self) else (np.nan, np.nan)

    def at(self, t, rule: str = "locf") -> np.ndarray:
        """Values at times ``t``: last observation carried forward (``locf``), next observation
        carried backward (``nocb``, NONMEM's rule for covariates) or ``linear``."""
        t = _f64(t)
        if not len(self):
            return np.full(t.shape, np.nan)
        if rule == "linear":
            return np.interp(t, self.time, self.value)
        if rule == "locf":
            i = np.clip(np.searchsorted(self.time, t, side="right") - 1, 0, len(self) - 1)
        elif rule == "nocb":
            i = np.clip(np.searchsorted(self.time, t, side="left"), 0, len(self) - 1)
        else:
            raise ValueError(f"rule {rule!r} is not one of locf, nocb, linear")
        return self.value[i]

    def concat(self, other: Series) -> Series:
        if (other.name, other.unit) != (self.name, self.unit):
            raise ValueError(f"cannot join series {self.name} [{self.unit}] and {other.name} [{other.unit}]")
        source = self.source if self.source == other.source else f"{self.source}+{other.source}"
        return Series(
            self.name,
            self.unit,
            np.concatenate([self.time, other.time]),
            np.concatenate([self.value, other.value]),
            np.concatenate([self.censored, other.censored]),
            np.concatenate([self.lloq, other.lloq]),
            kind=self.kind,
            source=source,
        )


_DOSE_FLOAT = ("time", "amount", "rate", "duration", "ii")
_DOSE_INT = ("evid", "cmt", "ss", "addl")
_DOSE_STR = ("drug", "route")


@dataclasses.dataclass(frozen=True, eq=False)
class Dosing:
    """The dosing history as columns (one row per dosing record).

    ``amount`` in mg (canonical), ``rate`` in mg/h (0: bolus; -1/-2: rate/duration from the
    model), ``duration`` in h (0: not given), ``ii`` in h. ``cmt`` is the NONMEM compartment
    number when the source gives one, 0 when it is to be chosen from ``route`` ("oral",
    "iv", "sc", "im", ...) for a model. ``evid`` is 1 (dose) or 4 (reset and dose).
    """

    time: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    amount: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    drug: np.ndarray | Sequence[str] | None = None
    route: np.ndarray | Sequence[str] | None = None
    rate: np.ndarray | None = None
    duration: np.ndarray | None = None
    evid: np.ndarray | None = None
    cmt: np.ndarray | None = None
    ss: np.ndarray | None = None
    ii: np.ndarray | None = None
    addl: np.ndarray | None = None
    unit: str = "mg"

    def __post_init__(self):
        n = _f64(self.time).size
        for name in (*_DOSE_FLOAT, *_DOSE_INT, *_DOSE_STR):
            val = getattr(self, name)
            if name in _DOSE_STR:
                val = np.asarray(["" for _ in range(n)] if val is None else list(val), dtype=object)
                val = np.asarray([str(x) for x in val], dtype=np.str_) if n else np.zeros(0, "<U1")
            elif name in _DOSE_INT:
                default = 1 if name == "evid" else 0
                val = np.full(n, default, np.int64) if val is None else np.asarray(val, np.int64).reshape(-1)
            else:
                val = np.zeros(n) if val is None else _f64(val)
            if val.shape != (n,):
                raise ValueError(f"dosing column {name} has {val.size} rows, expected {n}")
            object.__setattr__(self, name, val)
        order = np.argsort(self.time, kind="stable")
        if np.any(order != np.arange(n)):
            for name in (*_DOSE_FLOAT, *_DOSE_INT, *_DOSE_STR):
                object.__setattr__(self, name, getattr(self, name)[order])
        for name in (*_DOSE_FLOAT, *_DOSE_INT, *_DOSE_STR):
            getattr(self, name).setflags(write=False)

    def __len__(self) -> int:
        return int(self.time.size)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Dosing):
            return NotImplemented
        return self.unit == other.unit and all(
            np.array_equal(getattr(self, n), getattr(other, n))
            for n in (*_DOSE_FLOAT, *_DOSE_INT, *_DOSE_STR)
        )

    __hash__ = None  # type: ignore[assignment]

    def columns(self) -> dict[str, np.ndarray]:
        return {n: getattr(self, n) for n in (*_DOSE_FLOAT, *_DOSE_INT, *_DOSE_STR)}

    @classmethod
    def concat(cls, parts: Iterable[Dosing]) -> Dosing:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls()
        cols = {n: np.concatenate([p.columns()[n] for p in parts]) for n in parts[0].columns()}
        return cls(**cols)

    def cmt_for(self, routes: Mapping[str, int] | None = None) -> np.ndarray:
        """Compartment numbers: the given ``cmt``, else ``routes[route]``."""
        cmt = self.cmt.copy()
        for i in np.flatnonzero(cmt == 0):
            r = self.route[i]
            if routes is None or r not in routes:
                raise DataError(
                    f"dose {i + 1} (route {r or 'not given'!r}) has no compartment; pass "
                    f"routes={{'{r or 'oral'}': CMT}} to say which compartment it goes to"
                )
            cmt[i] = routes[r]
        return cmt


@dataclasses.dataclass(frozen=True)
class Phenotype:
    """A gene's diplotype, its activity score (NaN where CPIC assigns none) and phenotype."""

    gene: str
    diplotype: str
    activity_score: float = float("nan")
    phenotype: str = ""
    source: str = ""

    def __eq__(self, other) -> bool:
        if not isinstance(other, Phenotype):
            return NotImplemented
        a, b = self.activity_score, other.activity_score
        same_score = a == b or (np.isnan(a) and np.isnan(b))
        return same_score and (self.gene, self.diplotype, self.phenotype, self.source) == (
            other.gene,
            other.diplotype,
            other.phenotype,
            other.source,
        )

    __hash__ = None  # type: ignore[assignment]


@dataclasses.dataclass(frozen=True)
class Skipped:
    """Something a reader left out, and why. Never carries an identifier or free text."""

    file: str
    record: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}, {self.record}, field {self.field}: {self.reason}"


@dataclasses.dataclass(frozen=True, eq=False)
class Patient:
    """One patient's data, de-identified: a pseudonymous id and relative times (hours)."""

    id: str
    covariates: Mapping[str, Covariate] = dataclasses.field(default_factory=dict)
    series: Mapping[str, Series] = dataclasses.field(default_factory=dict)
    dosing: Dosing = dataclasses.field(default_factory=Dosing)
    phenotypes: Mapping[str, Phenotype] = dataclasses.field(default_factory=dict)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Patient):
            return NotImplemented
        return (
            self.id == other.id
            and dict(self.covariates) == dict(other.covariates)
            and dict(self.series) == dict(other.series)
            and self.dosing == other.dosing
            and dict(self.phenotypes) == dict(other.phenotypes)
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def observations(self) -> dict[str, Series]:
        """Every measured series (drug levels, labs, vitals, wearables)."""
        return {k: s for k, s in self.series.items() if s.kind != "covariate"}

    @property
    def time_varying(self) -> dict[str, Series]:
        """Series usable as time-varying covariates (labs, vitals, declared covariates)."""
        return {k: s for k, s in self.series.items() if s.kind in ("covariate", "lab", "vital")}

    def _resolve(self, name: str) -> str | None:
        from .quantities import COVARIATE_ALIASES

        canon = COVARIATE_ALIASES.get(name.upper(), name)
        for cand in (name, canon, name.lower()):
            if cand in self.covariates or cand in self.series or cand in self.phenotypes:
                return cand
        for alias, target in COVARIATE_ALIASES.items():  # the data set's name for it
            if target == canon:
                for cand in (alias, alias.lower()):
                    if cand in self.covariates or cand in self.series:
                        return cand
        return None

    def covariate(self, name: str, t=None, rule: str = "nocb"):
        """A covariate's value by its name or a usual alias (``WT`` finds ``weight``,
        ``CYP2C9`` finds the CYP2C9 diplotype): static if it is static, else from its series
        at times ``t`` (NONMEM's next observation carried backward by default)."""
        key = self._resolve(name)
        if key is None:
            raise KeyError(
                f"patient {self.id} has no covariate {name!r}; it has "
                f"{sorted([*self.covariates, *self.time_varying, *self.phenotypes]) or 'none'}"
            )
        if key in self.covariates:
            v = self.covariates[key].value
            return v if t is None else np.full(np.shape(t), v)
        if key in self.series:
            s = self.series[key]
            return s.value[0] if t is None else s.at(t, rule)
        v = self.phenotypes[key].diplotype
        return v if t is None else np.full(np.shape(t), v, dtype=object)

    def event_table(
        self,
        n_cmt: int,
        *,
        routes: Mapping[str, int] | None = None,
        obs_times=None,
        time_unit: str = "h",
    ):
        """An ``EventTable`` of this patient's doses plus observation records at ``obs_times``.

        ``time_unit`` is the model's: the patient's times, intervals and durations (hours)
        are converted to it, rates (per hour) inversely; ``obs_times`` are in it already."""
        d = self.dosing
        cmt = d.cmt_for(routes)
        f = 1.0 if time_unit == "h" else conversion("h", time_unit)
        rate = np.where(d.duration > 0, d.amount / np.where(d.duration > 0, d.duration, 1.0), d.rate)
        rate = np.where(rate > 0, rate / f, rate)  # -1 / -2: rate or duration from the model
        t_obs = _f64(() if obs_times is None else obs_times)
        n_obs = t_obs.size
        cols = (
            np.concatenate([d.time * f, t_obs]),
            np.concatenate([d.evid, np.zeros(n_obs, np.int64)]),
            np.concatenate([d.amount, np.zeros(n_obs)]),
            np.concatenate([cmt, np.ones(n_obs, np.int64)]),
            np.concatenate([rate, np.zeros(n_obs)]),
            np.concatenate([d.ss, np.zeros(n_obs, np.int64)]),
            np.concatenate([d.ii * f, np.zeros(n_obs)]),
            np.concatenate([d.addl, np.zeros(n_obs, np.int64)]),
        )
        order = np.argsort(cols[0], kind="stable")
        return EventTable.from_records(*(c[order] for c in cols), n_cmt=n_cmt, patient=self.id)

    def summary(self) -> dict[str, Any]:
        """What ``twinrx inspect`` prints: covariates, phenotypes and series, no values of series."""
        return {
            "id": self.id,
            "covariates": {
                k: {"value": c.value, "unit": c.unit, "source": c.source} for k, c in self.covariates.items()
            },
            "phenotypes": {
                g: {
                    "diplotype": p.diplotype,
                    "activity_score": None if np.isnan(p.activity_score) else p.activity_score,
                    "phenotype": p.phenotype,
                }
                for g, p in self.phenotypes.items()
            },
            "series": {
                k: {
                    "kind": s.kind,
                    "count": len(s),
                    "unit": s.unit,
                    "time_range_h": list(s.time_range) if len(s) else None,
                    "censored": int(np.count_nonzero(s.censored)),
                    "source": s.source,
                }
                for k, s in self.series.items()
            },
            "doses": {
                "count": len(self.dosing),
                "drugs": sorted(set(self.dosing.drug.tolist()) - {""}),
                "time_range_h": [float(self.dosing.time[0]), float(self.dosing.time[-1])]
                if len(self.dosing)
                else None,
            },
        }


def _strs(values) -> np.ndarray:
    return np.asarray(list(values), dtype=np.str_) if len(values) else np.zeros(0, "<U1")


@dataclasses.dataclass(frozen=True, eq=False)
class Cohort:
    """Patients with distinct pseudonymous ids, plus what the readers skipped."""

    patients: tuple[Patient, ...]
    skipped: tuple[Skipped, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "patients", tuple(self.patients))
        object.__setattr__(self, "skipped", tuple(self.skipped))
        ids = [p.id for p in self.patients]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"patient ids must be distinct; repeated: {dup[:5]}")

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.patients]

    def __len__(self) -> int:
        return len(self.patients)

    def __iter__(self) -> Iterator[Patient]:
        return iter(self.patients)

    def __getitem__(self, key: int | str) -> Patient:
        if isinstance(key, str):
            for p in self.patients:
                if p.id == key:
                    return p
            raise KeyError(f"no patient {key!r} in the cohort")
        return self.patients[key]

    def __eq__(self, other) -> bool:
        if not isinstance(other, Cohort):
            return NotImplemented
        return self.patients == other.patients and self.skipped == other.skipped

    __hash__ = None  # type: ignore[assignment]

    # ---------------------------------------------------------------- xarray (Zarr) layout
    def to_dataset(self) -> xr.Dataset:
        """One Dataset: a ``patient`` dimension for ids and static covariates, and ragged
        ``series``/``obs``, ``dose`` and ``phenotype`` dimensions indexed by patient."""
        pats = self.patients
        cov_names = sorted({k for p in pats for k in p.covariates})
        data: dict[str, Any] = {"patient_id": ("patient", _strs([p.id for p in pats]))}
        cov_attrs: dict[str, Any] = {}
        for k in cov_names:
            present = [p.covariates.get(k) for p in pats]
            kinds = {c.categorical for c in present if c is not None}
            units = {c.unit for c in present if c is not None}
            if len(kinds) > 1 or len(units) > 1:
                raise ValueError(f"covariate {k} mixes units or kinds across patients: {units}")
            if kinds == {True}:
                arr = _strs(["" if c is None else c.value for c in present])
            else:
                arr = np.array([np.nan if c is None else float(c.value) for c in present])
            data[f"cov_{k}"] = ("patient", arr)
            data[f"covsrc_{k}"] = ("patient", _strs(["" if c is None else c.source for c in present]))
            cov_attrs[f"cov_{k}"] = {
                "units": units.pop(),
                "covariate": k,
                "missing": "" if kinds == {True} else "NaN",
            }
        # series (contiguous ragged array)
        rows = [(i, s) for i, p in enumerate(pats) for s in p.series.values()]
        lens = np.array([len(s) for _, s in rows], np.int64)
        data.update(
            series_patient=("series", np.array([i for i, _ in rows], np.int64)),
            series_name=("series", _strs([s.name for _, s in rows])),
            series_unit=("series", _strs([s.unit for _, s in rows])),
            series_kind=("series", _strs([s.kind for _, s in rows])),
            series_source=("series", _strs([s.source for _, s in rows])),
            series_count=("series", lens),
        )

        def cat(attr, dtype):
            return np.concatenate([getattr(s, attr) for _, s in rows]) if rows else np.zeros(0, dtype)

        data.update(
            obs_time=("obs", cat("time", np.float64)),
            obs_value=("obs", cat("value", np.float64)),
            obs_censored=("obs", cat("censored", np.int8)),
            obs_lloq=("obs", cat("lloq", np.float64)),
        )
        # doses
        dose_patient = np.concatenate(
            [np.full(len(p.dosing), i, np.int64) for i, p in enumerate(pats)] or [np.zeros(0, np.int64)]
        )
        data["dose_patient"] = ("dose", dose_patient)
        for name in (*_DOSE_FLOAT, *_DOSE_INT):
            data[f"dose_{name}"] = (
                "dose",
                np.concatenate([getattr(p.dosing, name) for p in pats] or [np.zeros(0)]),
            )
        for name in _DOSE_STR:
            data[f"dose_{name}"] = ("dose", _strs([x for p in pats for x in getattr(p.dosing, name)]))
        # phenotypes
        ph = [(i, f) for i, p in enumerate(pats) for f in p.phenotypes.values()]
        data.update(
            phenotype_patient=("phenotype", np.array([i for i, _ in ph], np.int64)),
            phenotype_gene=("phenotype", _strs([f.gene for _, f in ph])),
            phenotype_diplotype=("phenotype", _strs([f.diplotype for _, f in ph])),
            phenotype_activity_score=("phenotype", np.array([f.activity_score for _, f in ph], np.float64)),
            phenotype_phenotype=("phenotype", _strs([f.phenotype for _, f in ph])),
            phenotype_source=("phenotype", _strs([f.source for _, f in ph])),
        )
        ds = xr.Dataset(data)
        for k, a in cov_attrs.items():
            ds[k].attrs.update(a)
        ds["obs_time"].attrs.update(units="h", origin="the patient's first dose (or first record)")
        ds["dose_time"].attrs["units"] = "h"
        ds["dose_amount"].attrs["units"] = "mg"
        ds["dose_rate"].attrs["units"] = "mg/h"
        ds["dose_duration"].attrs["units"] = "h"
        ds["dose_ii"].attrs["units"] = "h"
        ds["obs_censored"].attrs["flag_meanings"] = (
            "-1 below LLOQ (value is the limit), 0 observed, 1 above ULOQ"
        )
        ds.attrs.update(
            schema=SCHEMA,
            time_units="h",
            skipped=json.dumps([dataclasses.asdict(s) for s in self.skipped]),
        )
        return ds

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> Cohort:
        """Inverse of ``to_dataset`` (reads every variable into memory)."""
        if ds.attrs.get("schema") != SCHEMA:
            raise DataError(
                f"this store is not a twinrx patient store (schema {ds.attrs.get('schema')!r}, "
                f"expected {SCHEMA!r}); write one with `twinrx ingest`"
            )
        v = {k: np.asarray(ds[k].values) for k in ds.variables}
        ids = [str(x) for x in v["patient_id"]]
        n = len(ids)
        covs: list[dict[str, Covariate]] = [{} for _ in range(n)]
        for key in sorted(k for k in v if k.startswith("cov_")):
            name = ds[key].attrs.get("covariate", key[4:])
            unit = ds[key].attrs.get("units", "")
            src = v[f"covsrc_{name}"]
            for i, x in enumerate(v[key]):
                if isinstance(x, str) or v[key].dtype.kind in "UO":
                    if str(x) != "":
                        covs[i][name] = Covariate(str(x), unit, str(src[i]))
                elif not np.isnan(x):
                    covs[i][name] = Covariate(float(x), unit, str(src[i]))
        series: list[dict[str, Series]] = [{} for _ in range(n)]
        starts = np.concatenate([[0], np.cumsum(v["series_count"])]).astype(np.int64)
        for j in range(v["series_count"].size):
            a, b = starts[j], starts[j + 1]
            s = Series(
                str(v["series_name"][j]),
                str(v["series_unit"][j]),
                v["obs_time"][a:b],
                v["obs_value"][a:b],
                v["obs_censored"][a:b],
                v["obs_lloq"][a:b],
                kind=str(v["series_kind"][j]),
                source=str(v["series_source"][j]),
            )
            series[int(v["series_patient"][j])][s.name] = s
        dosing = []
        for i in range(n):
            m = v["dose_patient"] == i
            cols = {name: v[f"dose_{name}"][m] for name in (*_DOSE_FLOAT, *_DOSE_INT)}
            cols.update({name: [str(x) for x in v[f"dose_{name}"][m]] for name in _DOSE_STR})
            dosing.append(Dosing(**cols))
        phen: list[dict[str, Phenotype]] = [{} for _ in range(n)]
        for j in range(v["phenotype_patient"].size):
            f = Phenotype(
                str(v["phenotype_gene"][j]),
                str(v["phenotype_diplotype"][j]),
                float(v["phenotype_activity_score"][j]),
                str(v["phenotype_phenotype"][j]),
                str(v["phenotype_source"][j]),
            )
            phen[int(v["phenotype_patient"][j])][f.gene] = f
        skipped = tuple(Skipped(**s) for s in json.loads(ds.attrs.get("skipped", "[]")))
        pats = tuple(Patient(ids[i], covs[i], series[i], dosing[i], phen[i]) for i in range(n))
        return cls(pats, skipped)
