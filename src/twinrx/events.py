"""NONMEM dosing records -> a padded, fixed-shape :class:`EventTable`.

The table keeps the records (EVID 0-4, AMT, CMT, RATE, SS, II) in input order and expands
ADDL into explicit dose instances, so every array has a static shape and a cohort of
patients with different record counts can be padded to one shape and vmapped. Everything
that depends on parameters (lag time, bioavailability, modelled rate or duration, the
steady state) is resolved later, inside the compiled solver, in :mod:`twinrx.solve`.

Semantics follow NONMEM/PREDPP:

- EVID 0 observation, 1 dose, 2 other (e.g. a covariate change), 3 reset, 4 reset and dose.
- RATE > 0 infusion at that rate (duration F*AMT/RATE); RATE = -1 rate from the model
  (duration F*AMT/R); RATE = -2 duration from the model (rate F*AMT/D); RATE = 0 bolus.
- SS = 1 resets the system and sets it to the steady state of the dose repeated every II;
  SS = 2 adds that steady state to the current state; AMT = 0, RATE > 0, II = 0, SS = 1 sets
  the state to the steady state of a constant infusion, which (as NONMEM 7's own output
  shows) does not continue past the record.
- ADDL additional doses every II after the record's own dose.
- Records at the same time are processed in input order; doses delayed by a lag time and
  ADDL doses ("implied" events) come before the records that share their time.
- A reset (EVID 3/4, SS = 1) cancels infusions in progress and implied doses of earlier
  records that have not happened yet.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._types import Array, Bool, Float, Int

__all__ = ["DataError", "EventTable", "Problem", "check_records", "stack_tables"]

EVID_OBS, EVID_DOSE, EVID_OTHER, EVID_RESET, EVID_RESET_DOSE = 0, 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem of a data set: where it is and how to fix it."""

    patient: str
    row: int | None
    column: str
    message: str
    fix: str

    def __str__(self) -> str:
        where = f"patient {self.patient}" + (f", row {self.row}" if self.row is not None else "")
        return f"{where}, column {self.column}: {self.message}. Fix: {self.fix}"


class DataError(ValueError):
    """Bad input data. ``problems`` lists every problem found, each with its location."""

    def __init__(self, problems: Sequence[Problem] | str):
        if isinstance(problems, str):
            self.problems: list[Problem] = []
            super().__init__(problems)
            return
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the data:\n"
        super().__init__(head + "\n".join(f"  - {p}" for p in self.problems))


def check_records(
    time,
    evid,
    amt,
    cmt,
    rate,
    ss,
    ii,
    addl,
    *,
    n_cmt: int,
    modelled_rate: Sequence[int] = (),
    modelled_duration: Sequence[int] = (),
    patient: str = "1",
    rows: Sequence[int] | None = None,
) -> list[Problem]:
    """Every problem of one patient's records. ``cmt`` is 1-based as in NONMEM.

    ``modelled_rate`` / ``modelled_duration`` are the 0-based compartments for which the
    model defines a rate (for RATE = -1) or a duration (for RATE = -2).
    """
    n = len(time)
    rows = list(rows) if rows is not None else list(range(1, n + 1))
    out: list[Problem] = []

    def add(i, col, msg, fix):
        out.append(Problem(patient, int(rows[i]), col, msg, fix))

    for i in range(n):
        t, e = float(time[i]), evid[i]
        if not np.isfinite(t):
            add(i, "TIME", f"TIME is {t}", "give a finite time in hours")
        if i > 0 and np.isfinite(t) and np.isfinite(time[i - 1]) and t < time[i - 1]:
            add(
                i,
                "TIME",
                f"TIME {t:g} is earlier than the previous record's {time[i - 1]:g}",
                "sort the records of each ID by TIME (or use EVID=3/4 resets for occasions)",
            )
        if e not in (0, 1, 2, 3, 4):
            add(i, "EVID", f"EVID {e} is not one of 0-4", "use 0 obs, 1 dose, 2 other, 3 reset, 4 reset+dose")
            continue
        is_dose = e in (1, 4)
        if not is_dose:
            continue
        c = int(cmt[i]) if float(cmt[i]).is_integer() else float(cmt[i])
        if not (1 <= c <= n_cmt) or not isinstance(c, int):
            add(i, "CMT", f"CMT {c} does not exist (the model has {n_cmt})", f"use a CMT in 1..{n_cmt}")
            continue
        a, r, s, iv, ad = amt[i], rate[i], ss[i], ii[i], addl[i]
        if a < 0:
            add(i, "AMT", f"AMT {a:g} is negative", "give the dose amount as a positive number")
        if ad < 0:
            add(i, "ADDL", f"ADDL {ad:g} is negative", "ADDL counts additional doses: 0 or more")
        if ad > 1_000_000:
            add(i, "ADDL", f"ADDL {ad:g} is implausibly large", "give the number of additional doses (< 1e6)")
        elif ad != int(ad):
            add(i, "ADDL", f"ADDL {ad:g} is not a whole number", "give a whole number of doses")
        if iv < 0:
            add(i, "II", f"II {iv:g} is negative", "give the dosing interval in hours")
        if ad > 0 and iv <= 0:
            add(i, "II", f"II is {iv:g} but ADDL is {ad:g}", "give II > 0 when ADDL > 0")
        if s not in (0, 1, 2):
            add(i, "SS", f"SS {s:g} is not 0, 1 or 2", "use SS=0 (none), 1 (reset) or 2 (add)")
        const_inf = a == 0 and r > 0 and iv == 0 and s == 1
        if s in (1, 2) and iv <= 0 and not const_inf:
            add(
                i,
                "II",
                f"SS={s:g} needs II > 0",
                "give II, or AMT=0 with RATE>0 and II=0 for a steady-state constant infusion",
            )
        if a == 0 and not const_inf:
            add(i, "AMT", "a dose record has AMT 0", "give AMT > 0, or set EVID=2 for a no-dose record")
        if r < 0 and r not in (-1, -2):
            add(i, "RATE", f"RATE {r:g} is negative", "use RATE > 0, 0 (bolus), -1 or -2")
        if r == -1 and (c - 1) not in modelled_rate:
            add(
                i,
                "RATE",
                f"RATE=-1 asks for a rate from the model, but the model defines none for CMT {c}",
                f"pass --rate {c}=COLUMN (or rate={{{c}: ...}}), or give RATE > 0",
            )
        if r == -2 and (c - 1) not in modelled_duration:
            add(
                i,
                "RATE",
                f"RATE=-2 asks for a duration from the model, but the model defines none for CMT {c}",
                f"pass --duration {c}=COLUMN (or duration={{{c}: ...}}), or give RATE > 0",
            )
    return out


class EventTable(eqx.Module):
    """One patient's dosing records in fixed-shape arrays (a leading batch axis for cohorts).

    Records (``R``): ``time`` (h), ``evid``, ``amt`` (mg), ``cmt`` (0-based state index),
    ``rate`` (mg/h, or -1/-2), ``ss``, ``ii`` (h), ``mask`` (False for padding).
    Dose instances (``M``, ADDL expanded): ``dose_rec`` (record index), ``dose_time``
    (record time + k*II), ``dose_first`` (k == 0), ``dose_mask``.
    Steady-state records (``S``): ``ss_rec`` (record index), ``ss_mask``.
    """

    time: Float[Array, " R"]
    evid: Int[Array, " R"]
    amt: Float[Array, " R"]
    cmt: Int[Array, " R"]
    rate: Float[Array, " R"]
    ss: Int[Array, " R"]
    ii: Float[Array, " R"]
    mask: Bool[Array, " R"]
    dose_rec: Int[Array, " M"]
    dose_time: Float[Array, " M"]
    dose_first: Bool[Array, " M"]
    dose_mask: Bool[Array, " M"]
    ss_rec: Int[Array, " S"]
    ss_mask: Bool[Array, " S"]
    max_ss_overlap: int = eqx.field(static=True, default=4)

    @property
    def n_records(self) -> int:
        return self.time.shape[-1]

    @classmethod
    def from_records(
        cls,
        time,
        evid=None,
        amt=None,
        cmt=None,
        rate=None,
        ss=None,
        ii=None,
        addl=None,
        *,
        n_cmt: int | None = None,
        modelled_rate: Sequence[int] = (),
        modelled_duration: Sequence[int] = (),
        patient: str = "1",
        rows: Sequence[int] | None = None,
        max_ss_overlap: int | None = None,
        validate: bool = True,
    ) -> EventTable:
        """Build from NONMEM-style columns (``cmt`` 1-based; missing columns default to 0).

        Raises :class:`DataError` listing every problem (patient, row, column, fix).
        """
        t = np.asarray(time, dtype=float).reshape(-1)
        n = t.shape[0]

        def col(x, default=0.0):
            return np.full(n, default, float) if x is None else np.asarray(x, float).reshape(-1)

        ev = col(evid, 0.0)
        if evid is None and amt is not None:
            ev = np.where(col(amt) > 0, 1.0, 0.0)
        a, c, r, s, iv, ad = col(amt), col(cmt, 1.0), col(rate), col(ss), col(ii), col(addl)
        if validate:
            ncmt = n_cmt if n_cmt is not None else int(max(c.max(initial=1), 1))
            problems = check_records(
                t,
                ev,
                a,
                c,
                r,
                s,
                iv,
                ad,
                n_cmt=ncmt,
                modelled_rate=modelled_rate,
                modelled_duration=modelled_duration,
                patient=patient,
                rows=rows,
            )
            if problems:
                raise DataError(problems)
        is_dose = np.isin(ev, (EVID_DOSE, EVID_RESET_DOSE))
        const_inf = is_dose & (a == 0) & (r > 0) & (iv == 0) & (s == 1)
        dose_rec, dose_time, dose_first = [], [], []
        for i in np.nonzero(is_dose & ~const_inf)[0]:
            for k in range(int(ad[i]) + 1):
                dose_rec.append(i)
                dose_time.append(t[i] + k * iv[i])
                dose_first.append(k == 0)
        ss_rec = [int(i) for i in np.nonzero(is_dose & (s > 0))[0]]
        if max_ss_overlap is None:
            # Earlier infusions still running at a steady-state infusion: about D/II of them.
            # With a modelled rate/duration or F the exact count is only known at run time;
            # a count above this limit is reported as a solver status, never silently cut.
            k = 2
            for i in ss_rec:
                if r[i] > 0 and iv[i] > 0 and a[i] > 0:
                    k = max(k, math.ceil(2.0 * a[i] / (r[i] * iv[i])) + 1)
                elif r[i] < 0:
                    k = max(k, 4)
            max_ss_overlap = k
        return cls(
            time=jnp.asarray(t),
            evid=jnp.asarray(ev, dtype=jnp.int32),
            amt=jnp.asarray(a),
            cmt=jnp.asarray(np.clip(c - 1, 0, None), dtype=jnp.int32),
            rate=jnp.asarray(r),
            ss=jnp.asarray(s, dtype=jnp.int32),
            ii=jnp.asarray(iv),
            mask=jnp.ones(n, bool),
            dose_rec=jnp.asarray(np.asarray(dose_rec, int), dtype=jnp.int32),
            dose_time=jnp.asarray(np.asarray(dose_time, float)),
            dose_first=jnp.asarray(np.asarray(dose_first, bool)),
            dose_mask=jnp.ones(len(dose_rec), bool),
            ss_rec=jnp.asarray(np.asarray(ss_rec, int), dtype=jnp.int32),
            ss_mask=jnp.ones(len(ss_rec), bool),
            max_ss_overlap=int(max_ss_overlap),
        )

    def pad(self, n_records: int, n_doses: int, n_ss: int) -> EventTable:
        """Pad to the given sizes. Padding repeats the last record as a masked no-op."""
        R, M, S = self.time.shape[0], self.dose_rec.shape[0], self.ss_rec.shape[0]
        if n_records < R or n_doses < M or n_ss < S:
            raise ValueError("cannot pad an EventTable to a smaller size")

        def edge(x, n, fill=None):
            x = np.asarray(x)
            if n == x.shape[0]:
                return jnp.asarray(x)
            if fill is None:
                fill = x[-1] if x.shape[0] else 0
            return jnp.asarray(np.concatenate([x, np.full(n - x.shape[0], fill, dtype=x.dtype)]))

        return EventTable(
            time=edge(self.time, n_records),
            evid=edge(self.evid, n_records, EVID_OTHER),
            amt=edge(self.amt, n_records, 0.0),
            cmt=edge(self.cmt, n_records, 0),
            rate=edge(self.rate, n_records, 0.0),
            ss=edge(self.ss, n_records, 0),
            ii=edge(self.ii, n_records, 0.0),
            mask=edge(self.mask, n_records, False),
            dose_rec=edge(self.dose_rec, n_doses, 0),
            dose_time=edge(self.dose_time, n_doses, float(np.asarray(self.time)[0]) if R else 0.0),
            dose_first=edge(self.dose_first, n_doses, False),
            dose_mask=edge(self.dose_mask, n_doses, False),
            ss_rec=edge(self.ss_rec, n_ss, 0),
            ss_mask=edge(self.ss_mask, n_ss, False),
            max_ss_overlap=self.max_ss_overlap,
        )


def resets_or_steady_states(events: EventTable) -> bool:
    """Whether any (unmasked) record resets the system (EVID 3/4) or is a steady-state
    dose. The events must be concrete (a tracer raises jax's TracerArrayConversionError)."""
    evid = np.asarray(events.evid)
    resets = np.isin(evid, (EVID_RESET, EVID_RESET_DOSE)) & np.asarray(events.mask)
    return bool(np.any(resets) or np.any(np.asarray(events.ss_mask)))


def stack_tables(tables: Sequence[EventTable]) -> EventTable:
    """Pad patients' tables to one shape and stack them along a leading patient axis.

    Padding repeats each patient's last record as a masked no-op; done in numpy, once, so a
    cohort of 10^5 patients stacks in well under a second per 10^4; one table object
    repeated (``[table] * n``) is read once.
    """
    if not tables:
        raise ValueError("no event tables to stack")
    # The same table object repeated (one regimen for a whole cohort) is read once.
    slot: dict[int, int] = {}
    unique: list[EventTable] = []
    for t in tables:
        if id(t) not in slot:
            slot[id(t)] = len(unique)
            unique.append(t)
    index = np.array([slot[id(t)] for t in tables], dtype=np.intp)
    tables = unique
    sizes = {
        "time": max(t.time.shape[0] for t in tables),
        "dose_rec": max(t.dose_rec.shape[0] for t in tables),
        "ss_rec": max(t.ss_rec.shape[0] for t in tables),
    }
    group = {
        "time": "time",
        "evid": "time",
        "amt": "time",
        "cmt": "time",
        "rate": "time",
        "ss": "time",
        "ii": "time",
        "mask": "time",
        "dose_rec": "dose_rec",
        "dose_time": "dose_rec",
        "dose_first": "dose_rec",
        "dose_mask": "dose_rec",
        "ss_rec": "ss_rec",
        "ss_mask": "ss_rec",
    }
    fills = {
        "evid": EVID_OTHER,
        "amt": 0.0,
        "rate": 0.0,
        "ss": 0,
        "ii": 0.0,
        "mask": False,
        "dose_rec": 0,
        "dose_first": False,
        "dose_mask": False,
        "ss_rec": 0,
        "ss_mask": False,
    }
    out = {}
    for name, g in group.items():
        cols = [np.asarray(getattr(t, name)) for t in tables]
        n = sizes[g]
        arr = np.empty((len(tables), n), dtype=cols[0].dtype)
        for i, (c, t) in enumerate(zip(cols, tables)):
            k = c.shape[0]
            arr[i, :k] = c
            if k < n:
                if name in fills:
                    arr[i, k:] = fills[name]
                elif name == "dose_time":
                    arr[i, k:] = np.asarray(t.time)[0] if t.time.shape[0] else 0.0
                else:  # time, cmt: repeat the last value
                    arr[i, k:] = c[-1] if k else 0
        out[name] = jnp.asarray(arr if len(tables) == len(index) else arr[index])
    return EventTable(**out, max_ss_overlap=max(t.max_ss_overlap for t in tables))
