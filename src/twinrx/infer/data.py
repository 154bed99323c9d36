"""The data of a fit as fixed-shape arrays: events, observation times, covariates and
observations per output, padded over patients so one compiled likelihood serves a cohort.

Built from a :class:`~twinrx.data.Cohort` (any reader) or a NONMEM CSV. Observations keep
their censoring: a value below the LLOQ (-1) or above the ULOQ (+1) enters the likelihood
by the M3 method (the probability of lying beyond the limit), never as a number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..data.patient import Cohort, Patient
from ..events import DataError, EventTable, Problem, resets_or_steady_states, stack_tables
from ..units import UnitError, conversion

__all__ = ["FitData", "Observations", "merge_cohorts", "nonmem_cohort"]


class Observations(eqx.Module):
    """One output's observations, ``(N, K)`` padded: value, index into the patient's
    output times, mask (False = padding), censoring (-1 below, +1 above the limit), limit."""

    value: jax.Array
    index: jax.Array
    mask: jax.Array
    cens: jax.Array
    limit: jax.Array

    @property
    def count(self) -> int:
        return int(np.asarray(self.mask).sum())


class FitData(eqx.Module):
    """A cohort's fitting data. A pytree: slice or vmap it along the leading patient axis."""

    events: EventTable  # (N, R)
    times: jax.Array  # (N, T) output times of each patient (sorted; padded with the last)
    covariates: dict[str, jax.Array]  # (N,) or (N, R) per record
    obs: dict[str, Observations]
    ids: tuple[str, ...] = eqx.field(static=True)
    units: tuple[tuple[str, str], ...] = eqx.field(static=True, default=())  # output -> unit
    # No resets or steady states: a closed form may superpose doses (static, so that it is
    # known while the events are traced).
    plain_doses: bool = eqx.field(static=True, default=False)
    infusions: bool = eqx.field(static=True, default=True)  # any dose record with RATE != 0
    # Outputs with censored observations (M3); None: not known, treat every output as such.
    # The others skip the censored likelihood's log-CDFs (and their gradients).
    censored: tuple[str, ...] | None = eqx.field(static=True, default=None)

    @property
    def n_patients(self) -> int:
        return len(self.ids)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self.obs)

    def select(self, index: Sequence[int] | slice) -> FitData:
        """The data of some patients (keeps the padded shapes)."""
        idx = np.arange(self.n_patients)[index] if isinstance(index, slice) else np.asarray(index)
        leaves = jax.tree.map(lambda x: x[idx], (self.events, self.times, self.covariates, self.obs))
        return FitData(
            *leaves,
            ids=tuple(self.ids[i] for i in idx),
            units=self.units,
            plain_doses=self.plain_doses,
            infusions=self.infusions,
            censored=self.censored,
        )

    def anonymous(self) -> FitData:
        """The same arrays with ids 0..N-1: compiled functions keyed on the data's structure
        are then reused across patients with other ids."""
        return FitData(
            self.events,
            self.times,
            self.covariates,
            self.obs,
            ids=tuple(str(i) for i in range(self.n_patients)),
            units=self.units,
            plain_doses=self.plain_doses,
            infusions=self.infusions,
            censored=self.censored,
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_cohort(
        cls,
        model,
        cohort: Cohort | Sequence[Patient],
        *,
        outputs: Mapping[str, str] | None = None,
        routes: Mapping[str, int] | None = None,
        covariates: Mapping[str, Any] | None = None,
    ) -> FitData:
        """Fitting data for ``model`` from patients.

        ``outputs`` maps a model output to the name of the patient series observed as it
        (default: the series of the output's own name; with one output and one drug-level
        series per patient, that series). Values are converted to the output's unit.
        ``routes`` maps a dose route to a compartment number where the doses have none.
        ``covariates`` gives values for covariates the patients lack (else an error names
        them); every covariate of the card that a patient has is used, static or by record.
        """
        patients = list(cohort)
        if not patients:
            raise DataError("no patients to fit")
        fitted = _fitted_outputs(model)
        mapping = dict(outputs or {})
        unknown = [k for k in mapping if k not in model.output_names]
        if unknown:
            raise ValueError(
                f"unknown output{'s' if len(unknown) > 1 else ''} {unknown} for model {model.name!r}; "
                f"it has {', '.join(model.output_names)}"
            )
        out_unit = {o.name: o.unit for o in model.outputs}
        # patients' times are hours; the model's may be minutes (glucose models) or days
        time_unit = getattr(model, "time_unit", "h")
        tf = 1.0 if time_unit == "h" else conversion("h", time_unit)
        names = [o for o in model.output_names if o in mapping or o in fitted]
        problems: list[Problem] = []
        per_patient = []
        for p in patients:
            series = {}
            for o in names:
                s = _series_for(p, o, mapping.get(o), len(fitted) == 1)
                if s is None:
                    continue
                try:
                    f = conversion(s.unit, out_unit[o]) if s.unit else 1.0
                except UnitError as e:
                    problems.append(
                        Problem(
                            p.id,
                            None,
                            s.name,
                            f"series {s.name} is in {s.unit!r}, which does not convert to the unit "
                            f"{out_unit[o]!r} of output {o} ({e})",
                            f"convert the data, or map output {o} to another series",
                        )
                    )
                    continue
                series[o] = (s.time * tf, s.value * f, s.censored, s.lloq * f)
            per_patient.append(series)
        used = sorted({o for s in per_patient for o in s})
        if not used:
            want = ", ".join(names) or ", ".join(model.output_names)
            have = sorted({k for p in patients for k in p.observations})
            raise DataError(
                f"no observations of the model's outputs ({want}) were found; the patients have "
                f"{', '.join(have) or 'no series'}. Map them with outputs={{OUTPUT: SERIES}} "
                "(CLI: --dvid VALUE=OUTPUT)"
            )
        # Output times: the union of each patient's observation times.
        times = [np.unique(np.concatenate([s[o][0] for o in s])) if s else np.zeros(1) for s in per_patient]
        T = max(len(t) for t in times)
        tables, covs = [], []
        card_covs = list(getattr(model, "covariates", ()))
        given = dict(covariates or {})
        for p, t in zip(patients, times):
            try:
                et = p.event_table(model.n_state, routes=routes, obs_times=t, time_unit=time_unit)
            except DataError as e:
                problems += e.problems or [
                    Problem(p.id, None, "CMT", str(e), "give the dose a compartment or a route")
                ]
                continue
            tables.append(et)
            rec_t = np.asarray(et.time)
            cv = {}
            for c in card_covs:
                try:
                    v = p.covariate(c.name, t=None)
                    tv = c.name in p.series or (p._resolve(c.name) in p.series)
                    if tv:
                        v = p.covariate(c.name, t=rec_t / tf)
                except KeyError:
                    if c.name not in given:
                        problems.append(
                            Problem(
                                p.id,
                                None,
                                c.name,
                                f"covariate {c.name} ({c.description or c.unit}) is missing",
                                f"add it to the data, or pass covariates={{'{c.name}': VALUE}} "
                                "(the card's reference is "
                                f"{c.levels[int(c.reference)] if c.categorical else c.reference})",
                            )
                        )
                        continue
                    v = given[c.name]
                try:
                    cv[c.name] = np.asarray(c.encode(v), float)
                except ValueError as e:
                    problems.append(Problem(p.id, None, c.name, str(e), "use one of the card's levels"))
            covs.append(cv)
        if problems:
            raise DataError(problems)
        events = stack_tables(tables)
        R = events.time.shape[1]
        cov_arrays = {}
        for c in card_covs:
            vals = [cv[c.name] for cv in covs]
            if any(v.ndim for v in vals):
                cov_arrays[c.name] = jnp.asarray(
                    np.stack(
                        [
                            np.pad(np.broadcast_to(v, (len(tb.time),)), (0, R - len(tb.time)), mode="edge")
                            for v, tb in zip(vals, tables)
                        ]
                    )
                )
            else:
                cov_arrays[c.name] = jnp.asarray(np.array(vals, float))
        time_arr = np.stack([np.pad(t, (0, T - len(t)), mode="edge") for t in times])
        obs = {}
        for o in used:
            K = max((len(s[o][0]) if o in s else 0) for s in per_patient)
            val = np.zeros((len(patients), K))
            idx = np.zeros((len(patients), K), np.int32)
            mask = np.zeros((len(patients), K), bool)
            cens = np.zeros((len(patients), K), np.int8)
            lim = np.zeros((len(patients), K))
            for i, (s, t) in enumerate(zip(per_patient, times)):
                if o not in s:
                    continue
                st, sv, sc, sl = s[o]
                k = len(st)
                idx[i, :k] = np.searchsorted(t, st)
                val[i, :k] = np.where(sc != 0, np.nan_to_num(sl, nan=0.0), sv)
                lim[i, :k] = np.where(sc != 0, np.where(np.isnan(sl), sv, sl), 0.0)
                mask[i, :k] = True
                cens[i, :k] = sc
            # Padding: a harmless value (positive, for log-scale error models).
            val = np.where(mask, val, 1.0)
            obs[o] = Observations(*(jnp.asarray(a) for a in (val, idx, mask, cens, lim)))
        return cls(
            events,
            jnp.asarray(time_arr),
            cov_arrays,
            obs,
            ids=tuple(p.id for p in patients),
            units=tuple((o, out_unit[o]) for o in used),
            plain_doses=not resets_or_steady_states(events),
            infusions=bool(np.any((np.asarray(events.rate) != 0) & np.asarray(events.mask))),
            censored=tuple(o for o, ob in obs.items() if np.any(np.asarray(ob.cens) != 0)),
        )

    @classmethod
    def from_nonmem(
        cls,
        model,
        source,
        *,
        dvid: Mapping[Any, str] | None = None,
        dv_unit: str | None = None,
        covariate_units: Mapping[str, str] | None = None,
        covariates: Mapping[str, Any] | None = None,
    ) -> FitData:
        """Fitting data from a NONMEM data set (path, file or DataFrame).

        ``dvid`` maps DVID values to model outputs (default: the output of the same name,
        case ignored, else the DVID-th output; None leaves those observations out); DV is in the output's unit unless
        ``dv_unit`` says otherwise. Censoring by BLQ/CENS and LLOQ columns (M3).
        """
        return cls.from_cohort(
            model,
            nonmem_cohort(model, source, dvid=dvid, dv_unit=dv_unit, covariate_units=covariate_units),
            covariates=covariates,
        )


def nonmem_cohort(model, source, *, dvid=None, dv_unit=None, covariate_units=None) -> Cohort:
    """A NONMEM data set as a Cohort whose observation series are named by the model's
    outputs (see :meth:`FitData.from_nonmem`). NONMEM ids are kept (study ids)."""
    from ..data.ingest import ingest
    from ..data.nonmem import read_nonmem, read_nonmem_extract

    data = read_nonmem(source)
    fitted = _fitted_outputs(model) or model.output_names
    out_unit = {o.name: o.unit for o in model.outputs}
    labels = []
    if "DVID" in data.frame.columns and len(data):
        evid = np.concatenate([c["EVID"] for c in data.columns])
        mdv = np.concatenate([c.get("MDV", np.zeros(len(c["EVID"]))) for c in data.columns])
        dv_ids = data.frame["DVID"].astype(str).str.strip().to_numpy()
        labels = list(dict.fromkeys(dv_ids[(evid == 0) & (np.nan_to_num(mdv) == 0)].tolist()))
    mapping: dict[str, tuple[str, str]] = {}
    given = {str(k): v for k, v in (dvid or {}).items()}
    upper = {o.upper(): o for o in model.output_names}
    for lab in labels:
        if lab in given and given[lab] in (None, "", "-"):  # observations not fitted
            mapping[lab] = (f"unused_{lab}", "1")
            continue
        if lab in given:
            o = given[lab]
        elif lab.upper() in upper:
            o = upper[lab.upper()]
        elif lab.isdigit() and 1 <= int(lab) <= len(fitted) and len(labels) > 1:
            o = fitted[int(lab) - 1]
        elif len(labels) == 1 and len(fitted) == 1:
            o = fitted[0]
        else:
            raise DataError(
                [
                    Problem(
                        "-",
                        None,
                        "DVID",
                        f"DVID {lab!r} does not name an output of model {model.name!r} "
                        f"({', '.join(model.output_names)})",
                        f"map it: dvid={{{lab!r}: OUTPUT}} (CLI: --dvid {lab}=OUTPUT)",
                    )
                ]
            )
        if o not in model.output_names:
            raise ValueError(f"DVID {lab!r} is mapped to {o!r}, which is not an output of {model.name!r}")
        mapping[lab] = (o, dv_unit or out_unit[o])
    single = fitted[0] if len(fitted) == 1 else None
    if not labels and single is None:
        raise DataError(
            f"model {model.name!r} has several outputs ({', '.join(fitted)}); the data set needs a "
            "DVID column saying which one each observation is"
        )
    ex = read_nonmem_extract(
        data,
        drug=single or "DV",
        dv_unit=dv_unit or (out_unit[single] if single else "1"),
        units=covariate_units,
        dvid=mapping or None,
    )
    # The drug name is not a known quantity (it is the output's name), so values stay in
    # DV's unit and the series carry the output names.
    return ingest(ex, keep_ids=True, derive=False)


def _fitted_outputs(model) -> tuple[str, ...]:
    errs = getattr(model, "residual_errors", {}) or {}
    return tuple(o for o in model.output_names if o in errs)


def _series_for(p: Patient, output: str, name: str | None, only_output: bool):
    obs = p.observations
    if name is not None:
        return obs.get(name)
    if output in obs:
        return obs[output]
    for k, s in obs.items():
        if k.upper() == output.upper():
            return s
    if only_output:
        levels = [s for s in obs.values() if s.kind == "drug_level"]
        if len(levels) == 1:
            return levels[0]
    return None


def merge_cohorts(old: Cohort, new: Cohort) -> Cohort:
    """``old`` with the records of ``new`` added (sequential updating): per patient id,
    series are joined (a record present in both, same time and value, counts once), doses
    likewise, covariates of ``new`` replace those of ``old``; new patients are appended."""
    import dataclasses

    from ..data.patient import Dosing, Series

    def join_series(a: Series, b: Series) -> Series:
        if a.unit != b.unit:
            raise DataError(
                f"series {a.name} is in {a.unit!r} in the fit but {b.unit!r} in the new data; "
                "give the new data in the same unit"
            )
        t = np.concatenate([a.time, b.time])
        v = np.concatenate([a.value, b.value])
        c = np.concatenate([a.censored, b.censored])
        lq = np.concatenate([a.lloq, b.lloq])
        _, keep = np.unique(np.stack([t, v, c.astype(float)]), axis=1, return_index=True)
        keep = np.sort(keep)
        return Series(a.name, a.unit, t[keep], v[keep], c[keep], lq[keep], kind=a.kind, source=a.source)

    def join_doses(a: Dosing, b: Dosing) -> Dosing:
        both = Dosing.concat([a, b])
        if not len(both):
            return both
        cols = both.columns()
        rows = list(zip(*(np.asarray(cols[k]).tolist() for k in cols)))
        keep = sorted({r: i for i, r in reversed(list(enumerate(rows)))}.values())
        return Dosing(**{k: np.asarray(v)[keep] for k, v in cols.items()}, unit=both.unit)

    by_id = {p.id: p for p in old}
    out = []
    for p in new:
        if p.id not in by_id:
            out.append(p)
            continue
        q = by_id.pop(p.id)
        series = dict(q.series)
        for k, s in p.series.items():
            series[k] = join_series(series[k], s) if k in series else s
        out.append(
            dataclasses.replace(
                q,
                covariates={**q.covariates, **p.covariates},
                series=series,
                dosing=join_doses(q.dosing, p.dosing),
                phenotypes={**q.phenotypes, **p.phenotypes},
            )
        )
    kept = [by_id[p.id] if p.id in by_id else None for p in old]
    merged = {p.id: p for p in out}
    ordered = [merged.pop(p.id) if p.id in merged else k for p, k in zip(old, kept)]
    return Cohort(tuple(x for x in ordered if x is not None) + tuple(merged.values()), old.skipped)
