"""twinrx.store: provenance attributes and the cohort store's life cycle (created whole, filled
region by region, resumed only into the run that made it), checked on the files themselves."""

import hashlib
from pathlib import Path

import dask.array as da
import jax
import numpy as np
import pytest
import xarray as xr
import zarr

from twinrx import get_model, store
from twinrx.scenarios import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def _template(n=10, chunk=4):
    c = -(-n // chunk)
    return xr.Dataset(
        {
            "metric": (("patient", "arm"), da.full((n, 2), np.nan, chunks=(chunk, 2))),
            "status": (("patient", "arm"), da.zeros((n, 2), dtype="i2", chunks=(chunk, 2))),
            "done": (("chunk",), da.zeros((c,), dtype="i1", chunks=(1,))),
        },
        coords={"patient": [f"V{i:06d}" for i in range(1, n + 1)], "arm": ["a", "b"]},
    )


def test_provenance_names_the_card_scenario_seed_versions_and_device():
    model = get_model("one_cpt_iv")
    sc = load_scenario(ROOT / "scenarios" / "vancomycin_auc_guided.toml")
    attrs = store.provenance(model=model, scenario=sc, seed=12, data_hash="abc")
    text = (ROOT / "models" / "one_cpt_iv.toml").read_text()
    assert attrs["model_card_hash"] == hashlib.sha256(text.encode()).hexdigest()
    src = (ROOT / "scenarios" / "vancomycin_auc_guided.toml").read_text()
    assert attrs["scenario_hash"] == hashlib.sha256(src.encode()).hexdigest()[:16]
    assert attrs["seed"] == "12" and attrs["data_hash"] == "abc"
    assert attrs["jax_version"] == jax.__version__ and attrs["zarr_version"] == zarr.__version__
    assert attrs["device"] == jax.devices()[0].device_kind
    assert "created" in attrs and "created" not in store.provenance(created=False)
    assert store.provenance(note={"a": 1})["note"] == '{"a": 1}'


def test_cohort_store_is_created_without_data_chunks_and_filled_by_region(tmp_path):
    path = tmp_path / "c.zarr"
    store.create_cohort_store(_template(), path, attrs={"seed": "1"})
    assert not [p for p in (path / "metric").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert store.chunks_done(path).tolist() == [False, False, False]
    with pytest.raises(FileExistsError, match="resume"):
        store.create_cohort_store(_template(), path, attrs={})
    store.write_region(
        path,
        {
            "metric": ((slice(4, 8),), np.arange(8.0).reshape(4, 2)),
            "status": ((slice(4, 8),), np.array([[0, 5], [0, 0], [1, 0], [0, 0]])),
            "done": ((slice(1, 2),), np.ones(1, np.int8)),
        },
    )
    # exactly the one zarr chunk of patients 5-8 exists (chunk index 1 along patient)
    files = sorted(str(p.relative_to(path / "metric")) for p in (path / "metric").rglob("*") if p.is_file())
    assert files == ["c/1/0", "zarr.json"]
    assert store.chunks_done(path).tolist() == [False, True, False]
    ds = store.open_store(path)
    assert isinstance(ds["metric"].data, da.Array)
    assert ds["status"].dtype == np.int16  # an integer status stays an integer (no fill masking)
    np.testing.assert_array_equal(ds["metric"].values[4:8], np.arange(8.0).reshape(4, 2))
    assert np.isnan(ds["metric"].values[:4]).all()
    assert ds["status"].values[4, 1] == 5 and ds["status"].values[6, 0] == 1
    assert ds.attrs["twinrx_schema"] == store.COHORT_SCHEMA and ds.attrs["seed"] == "1"


def test_check_cohort_store_refuses_other_runs_and_other_stores(tmp_path):
    path = tmp_path / "c.zarr"
    store.create_cohort_store(_template(), path, attrs={"seed": "1", "n_patients": "10"})
    assert store.check_cohort_store(path, {"seed": "1", "n_patients": "10"})["seed"] == "1"
    with pytest.raises(ValueError, match="n_patients"):
        store.check_cohort_store(path, {"seed": "1", "n_patients": "11"})
    with pytest.raises(FileNotFoundError, match="resume"):
        store.check_cohort_store(tmp_path / "nothing.zarr", {})
    other = tmp_path / "other.zarr"
    store.write_store(xr.Dataset({"x": ("i", np.arange(3.0))}), other)
    with pytest.raises(ValueError, match="not a twinrx cohort store"):
        store.check_cohort_store(other, {})


def test_data_hash_follows_the_values_not_the_attributes():
    a = xr.Dataset({"dv": (("id", "t"), np.ones((2, 3)))}, coords={"id": ["P1", "P2"]})
    b = a.copy(deep=True)
    b.attrs["note"] = "same data"
    assert store.data_hash(a) == store.data_hash(b)
    b["dv"][1, 2] = 1.5
    assert store.data_hash(a) != store.data_hash(b)
    c = a.assign_coords(id=["P1", "P3"])
    assert store.data_hash(a) != store.data_hash(c)
