"""Zarr read/write with provenance. The only module that imports zarr."""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync

__all__ = [
    "provenance",
    "write_store",
    "open_store",
    "write_patients",
    "read_patients",
    "write_fit",
    "read_fit",
    "COHORT_SCHEMA",
    "create_cohort_store",
    "write_region",
    "chunks_done",
    "check_cohort_store",
    "data_hash",
    "read_variables",
]

#: Schema of the stores ``twinrx cohort run`` writes (attribute ``twinrx_schema``).
COHORT_SCHEMA = "cohort/1"


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "absent"


def provenance(
    *, model=None, scenario=None, seed=None, data_hash: str | None = None, created: bool = True, **extra
) -> dict[str, str]:
    """Attributes that say how a result was made: package, JAX and storage versions, the
    device, the time of writing (``created=False`` leaves it out), and when given the model
    card (name and SHA-256 of its text), the scenario (name and hash of its file), the seed
    and the hash of the patient data a fit used."""
    import jax

    attrs = {
        "twinrx_version": _version("twinrx"),
        "jax_version": _version("jax"),
        "jaxlib_version": _version("jaxlib"),
        "diffrax_version": _version("diffrax"),
        "numpy_version": _version("numpy"),
        "xarray_version": _version("xarray"),
        "zarr_version": _version("zarr"),
        "python_version": platform.python_version(),
        "device": str(jax.devices()[0].device_kind),
        "platform": str(jax.default_backend()),
    }
    if created:
        attrs["created"] = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if model is not None:
        card = getattr(model, "card", None)
        attrs["model"] = str(getattr(model, "name", model))
        attrs["model_card_hash"] = card.digest if card is not None else "no card (built-in model)"
    if scenario is not None:
        attrs["scenario"] = scenario.name
        attrs["scenario_hash"] = scenario.hash
    if seed is not None:
        attrs["seed"] = str(seed)
    if data_hash is not None:
        attrs["data_hash"] = data_hash
    attrs.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return attrs


def data_hash(ds: xr.Dataset) -> str:
    """SHA-256 of a dataset's variables (names, dims and values; not its attributes): the
    ``data_hash`` provenance attribute of results made from patient data."""
    h = hashlib.sha256()
    for name in sorted(map(str, ds.variables)):
        v = ds.variables[name]
        h.update(f"{name}:{','.join(map(str, v.dims))}:{v.dtype.kind}".encode())
        a = np.asarray(v.values)
        h.update(
            np.ascontiguousarray(a).tobytes()
            if a.dtype.kind not in "OUS"
            else "\x1f".join(map(str, a.ravel())).encode()
        )
    return h.hexdigest()


def _utf8(ds: xr.Dataset) -> xr.Dataset:
    """Text as variable-length UTF-8, the string type the Zarr v3 spec defines."""
    ds = ds.copy()
    for name, var in list(ds.variables.items()):
        if var.dtype.kind == "U":
            ds[name] = var.copy(data=var.values.astype(object))
    return ds


def write_store(ds: xr.Dataset, path: str | Path, *, mode: str = "w", **extra_attrs) -> Path:
    """Write ``ds`` to a Zarr (v3) store with provenance attributes."""
    ds = _utf8(ds)
    ds.attrs.update(provenance(**extra_attrs))
    ds.to_zarr(Path(path), mode=mode, zarr_format=3, consolidated=False)
    return Path(path)


def open_store(path: str | Path) -> xr.Dataset:
    """Open a store lazily (dask-backed variables)."""
    return xr.open_zarr(Path(path), consolidated=False, chunks={})


def write_patients(cohort, path: str | Path, **extra_attrs) -> Path:
    """Write a ``twinrx.data.Cohort`` (de-identified patients) to a Zarr store."""
    return write_store(cohort.to_dataset(), path, **extra_attrs)


def read_patients(path: str | Path):
    """Read a patient store written by ``write_patients`` (or ``twinrx ingest``)."""
    from .data.patient import Cohort

    if not Path(path).exists():
        raise FileNotFoundError(f"no store at {Path(path).name!r}; write one with `twinrx ingest`")
    with xr.open_zarr(Path(path), consolidated=False, chunks=None) as ds:
        return Cohort.from_dataset(ds.load())


def write_fit(tree, path: str | Path) -> Path:
    """Write a fit's ArviZ DataTree (:func:`twinrx.infer.posterior.to_datatree`) to Zarr;
    ``arviz_base`` and ``xarray.open_datatree(path, engine="zarr")`` read it back as it is."""
    path = Path(path)
    tree = xr.DataTree.from_dict({node.path: _utf8(node.to_dataset(inherit=False)) for node in tree.subtree})
    prov = provenance(numpyro_version=_version("numpyro"))
    tree.attrs.update({k: v for k, v in prov.items() if k not in tree.attrs})
    tree.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    return path


def read_fit(path: str | Path):
    """A fit's DataTree from Zarr (loaded into memory)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no fit store at {path}")
    return xr.open_datatree(path, engine="zarr", consolidated=False).load()


# --------------------------------------------------------------------------------------
# Cohort stores: created whole up front, filled region by region
# --------------------------------------------------------------------------------------
def create_cohort_store(template: xr.Dataset, path: str | Path, *, attrs: dict[str, str]) -> Path:
    """Create a cohort store from ``template`` (the final shapes; lazy, dask-backed data
    variables): metadata and coordinates are written, the data chunks are not
    (``compute=False``); :func:`write_region` fills them chunk by chunk.

    Every zarr chunk of a variable with a ``patient`` (or ``chunk``) dimension belongs to one
    cohort chunk, so that workers never write the same file. Fails if ``path`` exists."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; pass resume to continue it, or choose another path")
    ds = _utf8(template)
    ds.attrs.update({"twinrx_schema": COHORT_SCHEMA, **attrs})
    encoding = {name: {"_FillValue": None} for name, v in ds.data_vars.items() if v.dtype.kind in "iub"}
    ds.to_zarr(path, mode="w-", zarr_format=3, consolidated=False, compute=False, encoding=encoding)
    return path


def write_region(
    path: str | Path,
    values: dict[str, tuple[tuple[slice, ...], object]],
    *,
    after: dict[str, tuple[tuple[slice, ...], object]] | None = None,
) -> None:
    """Write ``{variable: (index, array)}`` into an existing store: each array into its
    variable's region ``index`` (whole zarr chunks; no read-modify-write), all at once; then
    ``after`` (e.g. a done flag, once the region is on disk)."""
    sync(_write_all(str(path), values, after or {}))


async def _write_all(path: str, values, after) -> None:
    # All variables at once on zarr's event loop: compression and file writes overlap.
    group = await zarr.api.asynchronous.open_group(store=path, mode="r+", zarr_format=3)
    for batch in (values, after):
        arrays = await asyncio.gather(*(group.getitem(name) for name in batch))
        await asyncio.gather(*(a.setitem(index, data) for a, (index, data) in zip(arrays, batch.values())))


def read_variables(path: str | Path, names) -> dict[str, np.ndarray]:
    """Variables of a store read whole into numpy, without xarray's decoding (for the
    small per-chunk and summary arrays of a cohort store)."""
    group = zarr.open_group(str(path), mode="r", zarr_format=3)
    return {name: np.asarray(group[name][...]) for name in names}


def chunks_done(path: str | Path) -> np.ndarray:
    """The ``done`` flag of every cohort chunk of a store, ``(n_chunks,)`` bool."""
    group = zarr.open_group(str(path), mode="r", zarr_format=3)
    return np.asarray(group["done"][:]).astype(bool)


def check_cohort_store(path: str | Path, expected: dict[str, str]) -> dict[str, str]:
    """The attributes of a cohort store, after checking its schema and that ``expected``
    attributes (scenario hash, seed, sizes) match: a run is resumed only into the store it
    started."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no cohort store at {path} to resume; run without resume to create it")
    try:
        attrs = dict(zarr.open_group(str(path), mode="r", zarr_format=3).attrs)
    except Exception as err:  # any failure to read it: not a store
        raise ValueError(f"{path} is not a Zarr store ({type(err).__name__}); choose another --out") from None
    if attrs.get("twinrx_schema") != COHORT_SCHEMA:
        raise ValueError(
            f"{path} is not a twinrx cohort store (schema {attrs.get('twinrx_schema')!r}, "
            f"expected {COHORT_SCHEMA!r}); choose another --out"
        )
    for k, v in expected.items():
        if str(attrs.get(k)) != str(v):
            raise ValueError(
                f"{path} was started with {k} = {attrs.get(k)!r}, not {v!r}: resume it with the same "
                "scenario, n, chunk, seed and trajectories, or write a new store"
            )
    return attrs
