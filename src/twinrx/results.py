"""The xarray schema of simulation results."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from ._types import Status, status_message

__all__ = ["simulation_dataset", "SCHEMA_VERSION"]

SCHEMA_VERSION = "1"


def simulation_dataset(model, events, times, amounts, outputs, status, *, ids: Sequence[str] | None = None):
    """Arrays from the solver -> Dataset with dims (patient, time|record) and units."""
    amounts = np.asarray(amounts)
    status = np.atleast_1d(np.asarray(status))
    if amounts.ndim == 2:  # one patient
        amounts = amounts[None]
        outputs = {k: np.asarray(v)[None] for k, v in outputs.items()}
    n_pat = amounts.shape[0]
    ids = list(ids) if ids is not None else [str(i + 1) for i in range(n_pat)]
    if times is None:
        tdim = "record"
        rec_t = np.atleast_2d(np.asarray(events.time))
        mask = np.atleast_2d(np.asarray(events.mask))
        coords = {"patient": ids, "record": np.arange(amounts.shape[1])}
        extra = {
            "TIME": (("patient", "record"), np.where(mask, rec_t, np.nan), {"units": model.time_unit}),
        }
    else:
        t = np.asarray(times, float)
        tdim = "time"
        if t.ndim == 1:
            coords = {"patient": ids, "time": ("time", t, {"units": model.time_unit})}
            extra = {}
        else:
            coords = {"patient": ids, "time": np.arange(t.shape[1])}
            extra = {"TIME": (("patient", "time"), t, {"units": model.time_unit})}
    data = {}
    for j, cmt in enumerate(model.compartments):
        data[f"A_{cmt}"] = (
            ("patient", tdim),
            amounts[..., j],
            {"units": model.amount_unit, "long_name": f"amount in {cmt}"},
        )
    units = {o.name: o.unit for o in model.outputs}
    for k, v in outputs.items():
        data[k] = (("patient", tdim), np.asarray(v), {"units": units.get(k, "")})
    data.update(extra)
    data["status"] = (
        ("patient",),
        status.astype(np.int32),
        {"flag_meanings": " ".join(s.name.lower() for s in Status)},
    )
    data["status_message"] = (("patient",), np.array([status_message(int(s)) for s in status], dtype=object))
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update({"model": model.name, "schema_version": SCHEMA_VERSION})
    return ds
