"""Zarr read/write with provenance. The only module that imports zarr."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from importlib import metadata
from pathlib import Path

import xarray as xr
import zarr  # noqa: F401  (the backend; kept here so zarr is imported in one place)

__all__ = [
    "provenance",
    "write_store",
    "open_store",
    "write_patients",
    "read_patients",
    "write_fit",
    "read_fit",
]


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "absent"


def provenance(**extra) -> dict[str, str]:
    """Attributes that say how a result was made (versions, device, time of writing)."""
    import jax

    attrs = {
        "twinrx_version": _version("twinrx"),
        "jax_version": _version("jax"),
        "jaxlib_version": _version("jaxlib"),
        "diffrax_version": _version("diffrax"),
        "xarray_version": _version("xarray"),
        "zarr_version": _version("zarr"),
        "python_version": platform.python_version(),
        "device": str(jax.devices()[0].device_kind),
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    attrs.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return attrs


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
