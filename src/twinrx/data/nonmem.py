"""NONMEM-style CSV data sets: read, validate (every problem at once), simulate.

Columns are matched case-insensitively: ``ID TIME EVID AMT CMT RATE SS II ADDL DV MDV``
plus any covariate columns. A first column ``C`` is NONMEM's comment flag (``IGNORE=C``):
rows whose ``C`` is ``C`` or starts with ``#`` or ``@`` are skipped. ``.`` is a missing
value (0 for the dosing columns). Row numbers in messages are line numbers of the file
(the header is line 1).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..events import DataError, EventTable, Problem, check_records, stack_tables
from ..units import UnitError, conversion
from ._raw import Extract, IngestError, RawDoses, RawSeries
from .patient import Covariate

__all__ = ["NonmemData", "read_nonmem", "read_nonmem_extract", "validate_nonmem", "simulate_nonmem"]

_DOSING = ("EVID", "AMT", "CMT", "RATE", "SS", "II", "ADDL")
_REQUIRED = ("ID", "TIME")
_RECORD_COLUMNS = ("TIME", *_DOSING)  # the order of EventTable.from_records / check_records


@dataclasses.dataclass
class NonmemData:
    """A NONMEM data set split into patients (contiguous ID blocks, as NONMEM does)."""

    ids: list[str]
    columns: list[dict[str, np.ndarray]]  # per patient, upper-case column -> values per record
    lines: list[np.ndarray]  # per patient, the file line of each record
    frame: pd.DataFrame  # the used rows, in file order, upper-case columns

    def __len__(self) -> int:
        return len(self.ids)

    def event_tables(self, *, n_cmt: int, modelled_rate=(), modelled_duration=()) -> list[EventTable]:
        """One EventTable per patient; raises DataError listing every problem."""
        problems = self.problems(
            n_cmt=n_cmt, modelled_rate=modelled_rate, modelled_duration=modelled_duration
        )
        if problems:
            raise DataError(problems)
        out = []
        for pid, cols, lines in zip(self.ids, self.columns, self.lines):
            out.append(
                EventTable.from_records(
                    *(cols[c] for c in _RECORD_COLUMNS),
                    n_cmt=n_cmt,
                    patient=pid,
                    rows=lines,
                    validate=False,
                )
            )
        return out

    def problems(self, *, n_cmt: int, modelled_rate=(), modelled_duration=()) -> list[Problem]:
        out: list[Problem] = []
        for pid, cols, lines in zip(self.ids, self.columns, self.lines):
            out += check_records(
                *(cols[c] for c in _RECORD_COLUMNS),
                n_cmt=n_cmt,
                modelled_rate=modelled_rate,
                modelled_duration=modelled_duration,
                patient=pid,
                rows=lines,
            )
        return out


def _read_frame(source) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source.copy()
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise DataError(f"data file {os.fspath(source)!r} does not exist")
    try:
        return pd.read_csv(source, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError("the data file is empty: give a CSV with a header line (ID,TIME,...)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(
            f"the data file is not a readable CSV ({e}); save it as comma-separated text"
        ) from None


def read_nonmem(source: Any) -> NonmemData:
    """Read a NONMEM CSV (path, file object or DataFrame).

    Raises :class:`~twinrx.events.DataError` listing every unreadable cell and missing
    column (patient ID, file line, column, fix). Dosing semantics are checked later,
    against a model (:meth:`NonmemData.event_tables`, :func:`validate_nonmem`).
    """
    df = _read_frame(source)
    df.columns = [str(c).strip().upper() for c in df.columns]
    df["__LINE"] = np.arange(len(df)) + 2
    problems: list[Problem] = []
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise DataError(
            [
                Problem(
                    "-",
                    None,
                    c,
                    f"required column {c} is missing",
                    f"add a {c} column (NONMEM name, any case)",
                )
                for c in missing
            ]
        )
    if "C" in df.columns:
        flag = df["C"].astype(str).str.strip()
        df = df[~(flag.str.upper().eq("C") | flag.str.startswith(("#", "@")))]
    df = df.reset_index(drop=True)
    if "EVID" not in df.columns and "AMT" not in df.columns:
        problems.append(
            Problem(
                "-",
                None,
                "EVID",
                "neither EVID nor AMT is present",
                "add EVID (0 obs, 1 dose) and AMT columns",
            )
        )

    ids = df["ID"].astype(str).str.strip()
    numeric: dict[str, np.ndarray] = {}
    for col in df.columns:
        if col in ("C", "__LINE") or col == "ID":
            continue
        raw = df[col].astype(str).str.strip()
        is_missing = raw.isin(["", "."])
        vals = pd.to_numeric(raw.where(~is_missing, "nan"), errors="coerce")
        bad = vals.isna() & ~is_missing
        key_column = col in _DOSING or col in ("TIME", "DV", "MDV")
        if key_column:  # "inf" parses as a number, but no record can use it
            bad |= np.isinf(vals)
        if bad.any() and key_column:
            for i in np.nonzero(bad.to_numpy())[0]:
                problems.append(
                    Problem(
                        ids.iloc[i],
                        int(df["__LINE"].iloc[i]),
                        col,
                        f"{raw.iloc[i]!r} is not a finite number",
                        f"write a finite number in {col} (use . for missing)",
                    )
                )
        elif bad.any():
            continue  # a text column (e.g. a label); not usable as a parameter
        if col in _DOSING:
            vals = vals.fillna(0.0)
        if col == "TIME":
            for i in np.nonzero(is_missing.to_numpy())[0]:
                problems.append(
                    Problem(
                        ids.iloc[i],
                        int(df["__LINE"].iloc[i]),
                        col,
                        "TIME is missing",
                        "give every record a time in hours",
                    )
                )
        numeric[col] = vals.to_numpy(dtype=float)
    for i in np.nonzero(ids.isin(["", "."]).to_numpy())[0]:
        problems.append(
            Problem("?", int(df["__LINE"].iloc[i]), "ID", "ID is missing", "give every record its patient ID")
        )
    if problems:
        raise DataError(problems)

    n = len(df)
    for col in _DOSING:
        if col not in numeric:
            numeric[col] = np.zeros(n)
    if "EVID" not in df.columns:
        mdv = numeric.get("MDV", np.zeros(n))
        numeric["EVID"] = np.where(numeric["AMT"] > 0, 1.0, np.where(mdv > 0, 2.0, 0.0))
    if "CMT" not in df.columns:
        numeric["CMT"] = np.ones(n)
    # rxode2/nlmixr2 "classic" EVIDs (e.g. theo_sd's 101): 100*CMT + 1 is a bolus dose into
    # compartment CMT. Other classic codes (infusion flags in the 10000s) are left to the
    # EVID check, which says what NONMEM expects.
    ev = numeric["EVID"]
    classic = (ev >= 101) & (ev < 10000) & (np.mod(ev, 100) == 1)
    if classic.any():
        numeric["EVID"] = np.where(classic, 1.0, ev)
        numeric["CMT"] = np.where(classic, np.floor_divide(ev, 100), numeric["CMT"])
    lines = df["__LINE"].to_numpy()
    # Patients are contiguous ID blocks (NONMEM starts a new individual when ID changes).
    starts = np.nonzero(np.r_[True, ids.to_numpy()[1:] != ids.to_numpy()[:-1]])[0]
    bounds = list(starts) + [n]
    pids, cols, lns = [], [], []
    seen: dict[str, int] = {}
    for a, b in zip(bounds[:-1], bounds[1:]):
        pid = ids.iloc[a]
        seen[pid] = seen.get(pid, 0) + 1
        pids.append(pid if seen[pid] == 1 else f"{pid}#{seen[pid]}")
        cols.append({k: v[a:b] for k, v in numeric.items()})
        lns.append(lines[a:b])
    frame = df.drop(columns=["__LINE"]).assign(**{"__LINE": lines})
    return NonmemData(pids, cols, lns, frame)


def validate_nonmem(source: Any, model=None, **modifiers) -> list[Problem]:
    """Every problem of a data set at once (empty when it is fine).

    With a ``model``, compartment numbers and RATE=-1/-2 are checked against it and the
    dosing ``modifiers`` (as for :func:`simulate_nonmem`).
    """
    try:
        data = read_nonmem(source)
    except DataError as e:
        return e.problems or [Problem("-", None, "-", str(e), "fix the file")]
    if model is None:
        n_cmt = max(int(np.nanmax(c["CMT"], initial=1)) for c in data.columns) if len(data) else 1
        mr = md = tuple(range(n_cmt))
    else:
        n_cmt = model.n_state
        spec = _modifier_columns(model, data, **modifiers)
        mr = tuple(c for k, c, _ in spec if k == "rate")
        md = tuple(c for k, c, _ in spec if k == "duration")
    return data.problems(n_cmt=n_cmt, modelled_rate=mr, modelled_duration=md)


def _modifier_columns(model, data, lag=None, bioav=None, rate=None, duration=None):
    spec = []
    for kind, mapping in (("lag", lag), ("bioav", bioav), ("rate", rate), ("duration", duration)):
        for cmt, src in (mapping or {}).items():
            spec.append((kind, model.compartment_index(cmt), src))
    for kind, mapping in model.dosing_modifiers.items():
        for cmt, src in mapping.items():
            spec.append((kind, model.compartment_index(cmt), src))
    return spec


def _value_or_column(name: str, src, data: NonmemData):
    """A number, or a data column (time-varying per record, NONMEM semantics)."""
    if isinstance(src, (int, float, np.floating, np.integer)):
        return float(src)
    key = str(src).strip()
    try:
        return float(key)
    except ValueError:
        pass
    if key.upper() not in data.columns[0]:
        avail = sorted(k for k in data.columns[0] if k not in _DOSING)
        raise DataError(
            [
                Problem(
                    "-",
                    None,
                    key,
                    f"{name} refers to column {key!r}, which the data set does not have",
                    f"use one of: {', '.join(avail)}, or a number",
                )
            ]
        )
    return key.upper()


def simulate_nonmem(
    model,
    source: Any,
    params: Mapping[str, Any] | None = None,
    *,
    lag: Mapping | None = None,
    bioav: Mapping | None = None,
    rate: Mapping | None = None,
    duration: Mapping | None = None,
    solver: str | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-9,
) -> pd.DataFrame:
    """Simulate a NONMEM data set: one output row per input row, in input order.

    ``params`` maps each model parameter to a number or a column name (a column makes the
    parameter time-varying, NONMEM style); parameters not given take the model default or,
    if the data set has a column of that name, the column. Modifiers map a compartment
    (name or NONMEM number) to a number or a column.
    Returns a DataFrame with ``ID``, ``TIME``, ``A_<compartment>`` and each output.
    """
    from ..model.library import get_model
    from ..solve import simulate_arrays

    model = get_model(model)
    data = source if isinstance(source, NonmemData) else read_nonmem(source)
    params = dict(params or {})
    resolved: dict[str, Any] = {}
    # Covariates of a model card may have gaps (NaN): the card fills them by its
    # interpolation rule. Parameters must be on every record.
    gaps_ok = {c.name for c in getattr(model, "covariates", ())}
    for name in model.input_names:
        if name in params:
            resolved[name] = _value_or_column(name, params[name], data)
        elif name.upper() in data.columns[0]:
            resolved[name] = name.upper()
        elif name in model.parameter_names:
            resolved[name] = dict(model.typical_params())[name].item()
    unknown = set(params) - set(model.input_names)
    mods: dict[str, dict] = {"lag": {}, "bioav": {}, "rate": {}, "duration": {}}
    for kind, mapping in (("lag", lag), ("bioav", bioav), ("rate", rate), ("duration", duration)):
        for cmt, src in (mapping or {}).items():
            v = _value_or_column(f"{kind} of {cmt}", src, data)
            if isinstance(v, str):
                pname = f"__col_{v}"
                resolved[pname] = v
                mods[kind][cmt] = pname
            else:
                mods[kind][cmt] = v
    for name in unknown:  # extra parameters (e.g. referenced by a model's modifiers)
        resolved[name] = _value_or_column(name, params[name], data)
    spec = _modifier_columns(model, data, lag=lag, bioav=bioav, rate=rate, duration=duration)
    tables = data.event_tables(
        n_cmt=model.n_state,
        modelled_rate=[c for k, c, _ in spec if k == "rate"],
        modelled_duration=[c for k, c, _ in spec if k == "duration"],
    )
    events = stack_tables(tables)
    R = events.time.shape[1]
    pb = {}
    for name, v in resolved.items():
        if isinstance(v, str):
            rows = [np.pad(c[v], (0, R - len(c[v])), mode="edge") for c in data.columns]
            arr = np.stack(rows)
            if np.isnan(arr).any() and name not in gaps_ok:
                pi, ri = np.argwhere(np.isnan(arr))[0]
                raise DataError(
                    [
                        Problem(
                            data.ids[pi],
                            int(data.lines[pi][ri]),
                            v,
                            f"{name} column {v} is missing",
                            f"fill {v} on every record (NONMEM needs it on each row)",
                        )
                    ]
                )
            pb[name] = arr
        else:
            pb[name] = np.full(len(tables), v)
    amounts, outputs, status = simulate_arrays(
        model,
        pb,
        events,
        None,
        solver=solver,
        lag=mods["lag"],
        bioav=mods["bioav"],
        rate=mods["rate"],
        duration=mods["duration"],
        rtol=rtol,
        atol=atol,
    )
    amounts = np.asarray(amounts)
    status = np.asarray(status)
    frames = []
    for pi, (pid, cols) in enumerate(zip(data.ids, data.columns)):
        nrec = len(cols["TIME"])
        d = {"ID": pid.split("#")[0], "TIME": cols["TIME"]}
        for j, cmt in enumerate(model.compartments):
            d[f"A_{cmt}"] = amounts[pi, :nrec, j]
        for k, v in outputs.items():
            d[k] = np.asarray(v)[pi, :nrec]
        d["STATUS"] = int(status[pi])
        frames.append(pd.DataFrame(d))
    return pd.concat(frames, ignore_index=True)


# Columns with a NONMEM/PREDPP meaning; every other column is a covariate.
_RESERVED = {
    *_DOSING,
    "ID",
    "TIME",
    "DV",
    "MDV",
    "BLQ",
    "LLOQ",
    "LOQ",
    "CENS",
    "LIMIT",
    "DVID",
    "C",
    "DUR",
    "__LINE",
}


def read_nonmem_extract(
    source: Any,
    *,
    drug: str = "DV",
    dv_unit: str = "mg/L",
    dose_unit: str = "mg",
    units: Mapping[str, str] | None = None,
    dvid: Mapping[Any, str | tuple[str, str]] | None = None,
) -> Extract:
    """A NONMEM data set as a reader ``Extract`` (for ``twinrx ingest``).

    Observations are the records with EVID 0 and MDV 0 (MDV absent: every EVID 0 record
    with a DV). They form the series ``drug`` or, when a DVID column has more than one value,
    one series per DVID value, named by ``dvid`` (``{"cp": "warfarin", "pca": ("pca", "%")}``:
    a name, or a name and unit) or else ``<drug>_<DVID>``. Values are converted from their
    unit (``dv_unit`` by default) to the canonical unit when the name is a quantity twinrx
    knows (mg/L for a drug level). Censoring: ``BLQ`` = 1, or
    ``CENS`` = 1 (Monolix/nlmixr2), marks a value below the limit, taken from ``LLOQ``/``LOQ``
    when present, else DV (the M3 convention of DV = LLOQ); ``CENS`` = -1 marks a value above
    the limit. Doses are EVID 1 and 4 records, EVID 3 resets, in ``dose_unit`` (converted to
    mg), with their NONMEM compartment, RATE (or DUR), SS, II and ADDL. Every other column is
    a covariate: static when constant within a patient, else a ``covariate`` series at the
    record times. ``units`` gives covariate units (``{"WT": "kg"}``); a covariate without one
    keeps the unit of the data set, recorded as "". TIME is kept as it is (hours).
    Raises ``DataError`` naming patient, line and column.
    """
    from .quantities import DRUG_LEVELS, QUANTITIES, to_canonical

    data = source if isinstance(source, NonmemData) else read_nonmem(source)
    everything = range(1_000_000)  # compartments are checked against a model later
    problems = data.problems(n_cmt=len(everything), modelled_rate=everything, modelled_duration=everything)
    if problems:
        raise DataError(problems)
    units = {str(k).upper(): v for k, v in (units or {}).items()}
    dvids = {str(k): (v, dv_unit) if isinstance(v, str) else tuple(v) for k, v in (dvid or {}).items()}
    ex = Extract("nonmem")
    frame = data.frame
    label = "data set"

    def conv(values, src_unit, q, column):
        try:
            return to_canonical(q, values, src_unit)
        except UnitError as e:
            raise IngestError(
                label, "header", column, str(e), f"give the unit of {column} as pint/UCUM text"
            ) from None

    q_drug = DRUG_LEVELS.get(drug.lower()) or QUANTITIES.get(drug.lower())
    try:
        dose_factor = conversion(dose_unit, "mg")
    except UnitError as e:
        raise IngestError(
            label, "header", "AMT", str(e), "give dose_unit as a mass, e.g. 'mg' or 'ug'"
        ) from None
    text_cols = (
        [c for c in frame.columns if c not in _RESERVED and c not in data.columns[0]] if len(data) else []
    )
    row_of = {int(line): i for i, line in enumerate(frame["__LINE"].to_numpy())}
    for pid, cols, lines in zip(data.ids, data.columns, data.lines):
        raw = ex.patient(pid)
        t = cols["TIME"]
        evid = cols["EVID"].astype(np.int64)
        dv = cols.get("DV", np.full(t.size, np.nan))
        mdv = cols.get("MDV", np.where(np.isnan(dv), 1.0, 0.0))
        obs = (evid == 0) & (mdv == 0) & ~np.isnan(dv)
        if np.any(obs):
            cens = np.zeros(t.size, np.int8)
            if "BLQ" in cols:
                cens[np.nan_to_num(cols["BLQ"]) == 1] = -1
            if "CENS" in cols:
                c = np.nan_to_num(cols["CENS"])
                cens[c == 1] = -1
                cens[c == -1] = 1
            lloq = cols.get("LLOQ", cols.get("LOQ", np.full(t.size, np.nan)))
            value = np.where((cens == -1) & ~np.isnan(lloq), lloq, dv)
            if "DVID" in frame.columns:
                dvid = frame["DVID"].astype(str).str.strip().to_numpy()[[row_of[int(x)] for x in lines]]
            else:
                dvid = np.full(t.size, "")
            for key in dict.fromkeys(dvid[obs].tolist()):
                m = obs & (dvid == key)
                name, unit = dvids.get(key, (drug if len(set(dvid[obs])) == 1 else f"{drug}_{key}", dv_unit))
                q = DRUG_LEVELS.get(name.lower()) or QUANTITIES.get(name.lower())
                if q is not None:
                    v, lq = conv(value[m], unit, q, "DV"), conv(lloq[m], unit, q, "LLOQ")
                    name, unit, kind = q.name, q.unit, q.kind
                else:
                    v, lq, kind = value[m], lloq[m], "response"
                raw.series.append(RawSeries(name, unit, t[m], v, cens[m], lq, kind=kind, source="nonmem"))
        dose = np.isin(evid, (1, 3, 4))
        if np.any(dose):
            amt = cols["AMT"][dose] * dose_factor
            dur = cols.get("DUR", np.zeros(t.size))[dose]
            rate = cols["RATE"][dose]
            rate = np.where(rate > 0, rate * dose_factor, rate)
            raw.doses.append(
                RawDoses(
                    t[dose],
                    amt,
                    drug=[drug.lower() if q_drug is not None else ""] * int(dose.sum()),
                    rate=rate,
                    duration=np.nan_to_num(dur),
                    evid=evid[dose],
                    cmt=cols["CMT"][dose].astype(np.int64),
                    ss=cols["SS"][dose].astype(np.int64),
                    ii=cols["II"][dose],
                    addl=cols["ADDL"][dose].astype(np.int64),
                )
            )
        for name in [c for c in cols if c not in _RESERVED]:
            v = cols[name]
            ok = ~np.isnan(v)
            if not np.any(ok):
                continue
            unit = units.get(name, "")
            if np.unique(v[ok]).size == 1:
                raw.covariates[name] = Covariate(float(v[ok][0]), unit, "nonmem")
            else:
                raw.series.append(RawSeries(name, unit, t[ok], v[ok], kind="covariate", source="nonmem"))
        for name in text_cols:
            vals = frame[name].to_numpy()[[row_of[int(x)] for x in lines]]
            vals = [str(x).strip() for x in vals if str(x).strip() not in ("", ".")]
            if len(set(vals)) == 1:
                raw.covariates[name] = Covariate(vals[0], "", "nonmem")
            elif vals:
                ex.skip(label, f"patient {pid}", name, "a text covariate that changes within the patient")
    return ex
