"""Cohort runs at scale: chunks of virtual patients over a dask cluster, into one Zarr store.
The only module that imports dask.

:func:`run_cohort` simulates ``n`` virtual patients of a scenario's ``[population]`` under
every arm of the scenario (a paired design: each patient, with the same parameters and the
same adherence pattern, goes through every arm), chunk by chunk. Each chunk is one task:
draw its patients, simulate every arm, compute the targets' metrics and the chunk's partial
sums, write its own region of the store, then its ``done`` flag. The endpoints per arm (PTA,
median, 5 % and 95 % quantiles, failed solves; per subgroup level when asked) are reduced
from the partial sums and the stored per-patient metrics at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import jax
import numpy as np
import xarray as xr

from . import cohort as _cohort
from . import store as _store
from .model.library import get_model
from .scenarios import Scenario, load_scenario

__all__ = ["run_cohort", "cohort_template"]


@dataclasses.dataclass(frozen=True)
class _Job:
    """Everything a chunk task needs (pickled to the workers)."""

    scenario: Scenario
    path: str
    n: int
    chunk: int
    trajectories: int
    key_data: np.ndarray
    subgroup: str | None
    levels: tuple[str, ...]
    covariates: tuple[str, ...]
    source: Any = None


def _chunk_task(job: _Job, index: int) -> int:
    """Simulate, summarise and write cohort chunk ``index``; returns ``index``."""
    return _write_chunk(job, index, _compute_chunk(job, index))


def _draw_chunk(job: _Job, index: int):
    """Chunk ``index``'s patients and their parameters (:func:`twinrx.cohort.draw_chunk`)."""
    key = jax.random.wrap_key_data(np.asarray(job.key_data, np.uint32))
    spec = _cohort.scenario_population(job.scenario)
    return _cohort.draw_chunk(job.scenario, spec, index, job.chunk, key=key, source=job.source)


def _compute_chunk(job: _Job, index: int, drawn=None) -> dict[str, tuple[tuple[slice, ...], Any]]:
    """Simulate and summarise cohort chunk ``index``: what it writes, by variable."""
    key = jax.random.wrap_key_data(np.asarray(job.key_data, np.uint32))
    spec = _cohort.scenario_population(job.scenario)
    pop, res = _cohort.simulate_chunk(
        job.scenario,
        spec,
        index,
        job.chunk,
        job.n,
        key=key,
        trajectories=job.trajectories,
        source=job.source,
        drawn=drawn,
    )
    codes = None if job.subgroup is None else pop.codes[job.subgroup]
    part = _cohort.chunk_partials(job.scenario, res, subgroup=codes, n_levels=len(job.levels))
    a, b = index * job.chunk, index * job.chunk + pop.n
    rows = (slice(a, b),)
    one = (slice(index, index + 1),)
    values: dict[str, tuple[tuple[slice, ...], Any]] = {
        "metric": (rows, res.metric),
        "status": (rows, res.status),
        "total_dose": (rows, res.total_dose),
        "last_dose": (rows, res.last_dose),
        "part_n": (one, part["n"][None]),
        "part_attained": (one, part["n_attained"][None]),
        "part_failed": (one, part["n_failed"][None]),
    }
    for name in job.covariates:
        v = pop.codes[name] if name in pop.codes else pop.covariates[name]
        values[name] = (rows, np.asarray(v, np.int16 if name in pop.codes else np.float64))
    if codes is not None:
        values["part_n_by"] = (one, part["n_by"][None])
        values["part_attained_by"] = (one, part["n_attained_by"][None])
    k = res.trajectory.shape[0]
    if k:
        values["trajectory"] = ((slice(a, a + k),), res.trajectory)
    return values


def _write_chunk(job: _Job, index: int, values) -> int:
    """Write chunk ``index``'s region, then its done flag (resume trusts the flag)."""
    _store.write_region(job.path, values, after={"done": ((slice(index, index + 1),), np.ones(1, np.int8))})
    return index


def cohort_template(
    scenario: Scenario, n: int, chunk: int, *, trajectories: int = 0, subgroup: str | None = None
) -> xr.Dataset:
    """The store's layout for ``n`` patients in chunks of ``chunk``: lazy (dask) variables of
    the final shapes, each chunked so that one cohort chunk owns its zarr chunks.

    Per patient: ``metric`` (patient, arm, target), ``status`` (patient, arm; 0 ok, else the
    solver's status code), ``total_dose`` and ``last_dose`` (patient, arm), and the
    population's covariates (categorical ones as level codes, levels in ``attrs``). Per
    chunk: ``done`` and the partial sums ``part_*``. Endpoints per arm and target: ``pta``,
    ``median``, ``q05``, ``q95``, ``n_attained``, and ``n_failed`` per arm; with a subgroup,
    ``pta_by`` and ``n_by``. With trajectories: ``trajectory`` (traj, arm, output, time)."""
    spec = _cohort.scenario_population(scenario)
    model = get_model(scenario.model)
    probe = _cohort.sample_population(spec, 1, key=jax.random.key(0))  # names, levels, units
    arms = [a for a, _ in scenario.arm_regimens]
    targets = [t.name for t in scenario.targets]
    A, M = len(arms), len(targets)
    C = math.ceil(n / chunk)
    units = {o.name: o.unit for o in model.outputs}
    from .scenarios import _cmt_unit, _metric_unit

    dose_unit = ", ".join(dict.fromkeys(_cmt_unit(model, r.blocks[0].cmt) for _, r in scenario.arm_regimens))

    def lazy(shape, chunks, dtype, fill):
        return da.full(shape, fill, dtype=dtype, chunks=chunks)

    nan = float("nan")
    data: dict[str, Any] = {
        "metric": (("patient", "arm", "target"), lazy((n, A, M), (chunk, A, M), "f8", nan)),
        "status": (("patient", "arm"), lazy((n, A), (chunk, A), "i2", 0), {"units": "1"}),
        "total_dose": (("patient", "arm"), lazy((n, A), (chunk, A), "f8", nan), {"units": dose_unit}),
        "last_dose": (("patient", "arm"), lazy((n, A), (chunk, A), "f8", nan), {"units": dose_unit}),
        "done": (("chunk",), lazy((C,), (1,), "i1", 0)),
        "part_n": (("chunk",), lazy((C,), (1,), "i8", 0)),
        "part_attained": (("chunk", "arm", "target"), lazy((C, A, M), (1, A, M), "i8", 0)),
        "part_failed": (("chunk", "arm"), lazy((C, A), (1, A), "i8", 0)),
        "pta": (("arm", "target"), lazy((A, M), (A, M), "f8", nan), {"units": "1"}),
        "median": (("arm", "target"), lazy((A, M), (A, M), "f8", nan)),
        "q05": (("arm", "target"), lazy((A, M), (A, M), "f8", nan)),
        "q95": (("arm", "target"), lazy((A, M), (A, M), "f8", nan)),
        "n_attained": (("arm", "target"), lazy((A, M), (A, M), "i8", 0)),
        "n_failed": (("arm",), lazy((A,), (A,), "i8", 0)),
    }
    reserved = set(data) | {"trajectory", "part_n_by", "part_attained_by", "pta_by", "n_by"}
    covariates = []
    for name in probe.covariates:
        if name in reserved:
            raise ValueError(f"population covariate {name!r} clashes with a store variable; rename it")
        attrs = {"units": probe.units.get(name, "")}
        if name in probe.codes:
            attrs["levels"] = list(probe.levels[name])
            data[name] = (("patient",), lazy((n,), (chunk,), "i2", 0), attrs)
        else:
            data[name] = (("patient",), lazy((n,), (chunk,), "f8", nan), attrs)
        covariates.append(name)
    coords: dict[str, Any] = {
        "patient": _cohort._ids(n),
        "arm": np.asarray(arms),
        "target": np.asarray(targets),
        "target_units": ("target", np.asarray([_metric_unit(t, units[t.output]) for t in scenario.targets])),
        "target_metric": ("target", np.asarray([t.metric for t in scenario.targets])),
        "regimen": ("arm", np.asarray([r.name for _, r in scenario.arm_regimens])),
    }
    if subgroup is not None:
        levels = _cohort.subgroup_levels(spec, subgroup)
        L = len(levels)
        coords["level"] = np.asarray(levels)
        data["part_n_by"] = (("chunk", "level"), lazy((C, L), (1, L), "i8", 0))
        data["part_attained_by"] = (
            ("chunk", "level", "arm", "target"),
            lazy((C, L, A, M), (1, L, A, M), "i8", 0),
        )
        data["n_by"] = (("level",), lazy((L,), (L,), "i8", 0))
        data["pta_by"] = (("level", "arm", "target"), lazy((L, A, M), (L, A, M), "f8", nan), {"units": "1"})
    k = min(int(trajectories), n)
    if k:
        times = scenario.grid()
        outs = [o.name for o in model.outputs]
        data["trajectory"] = (
            ("traj", "arm", "output", "time"),
            lazy((k, A, len(outs), times.size), (chunk, A, len(outs), times.size), "f8", nan),
            {"description": "outputs of the first patients (traj = patient index) at the targets' grid"},
        )
        coords.update(
            traj=np.arange(k),
            output=np.asarray(outs),
            output_units=("output", np.asarray([units[o] for o in outs])),
            time=("time", times, {"units": model.time_unit}),
        )
    ds = xr.Dataset(data, coords=coords)
    ds.attrs["covariates"] = covariates
    return ds


def _key_data(key, seed) -> tuple[np.ndarray, str]:
    if (key is None) == (seed is None):
        raise ValueError("give exactly one of seed (an int) or key (a jax random key)")
    if key is None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be a whole number, not {seed!r}")
        key = jax.random.key(int(seed))
        label = str(int(seed))
    else:
        if isinstance(key, (int, np.integer)):
            raise TypeError("key must be a jax random key, e.g. jax.random.key(0); or pass seed=0")
        label = "key:" + np.asarray(jax.random.key_data(key)).astype(np.uint32).tobytes().hex()
    return np.asarray(jax.random.key_data(key), np.uint32), label


def _on_accelerator() -> bool:
    return jax.default_backend() not in ("cpu",)


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int | None):
    """A dask.distributed client: to ``scheduler`` (an address), or to a LocalCluster of
    ``workers`` single-threaded processes started with spawn (JAX is not fork-safe)."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        with (
            LocalCluster(
                n_workers=workers or os.cpu_count() or 1,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client


def _finalise(path: Path, scenario: Scenario, subgroup: str | None) -> None:
    """Endpoints from the per-chunk partial sums and the stored per-patient metrics."""
    names = ["part_n", "part_attained", "part_failed", "metric"]
    names += ["part_n_by", "part_attained_by"] if subgroup is not None else []
    v = _store.read_variables(path, names)
    n = int(v["part_n"].sum())
    att = v["part_attained"].sum(axis=0).astype(np.int64)
    failed = v["part_failed"].sum(axis=0).astype(np.int64)
    metric = v["metric"]  # (patient, arm, target): small next to what made it
    with warnings.catch_warnings():  # an arm whose every solve failed: NaN quantiles
        warnings.simplefilter("ignore", RuntimeWarning)
        q = np.nanquantile(metric, [0.05, 0.5, 0.95], axis=0)
    A, M = att.shape
    full2, full1 = (slice(0, A), slice(0, M)), (slice(0, A),)
    values: dict[str, tuple[tuple[slice, ...], Any]] = {
        "pta": (full2, att / n),
        "n_attained": (full2, att),
        "n_failed": (full1, failed),
        "q05": (full2, q[0]),
        "median": (full2, q[1]),
        "q95": (full2, q[2]),
    }
    if subgroup is not None:
        n_by = v["part_n_by"].sum(axis=0).astype(np.int64)
        by = v["part_attained_by"].sum(axis=0).astype(np.int64)
        pta_by = np.where(n_by[:, None, None] > 0, by / np.maximum(n_by, 1)[:, None, None], np.nan)
        L = n_by.size
        values["n_by"] = ((slice(0, L),), n_by)
        values["pta_by"] = ((slice(0, L), slice(0, A), slice(0, M)), pta_by)
    _store.write_region(path, values)


def run_cohort(
    scenario: Scenario | str | Path,
    n: int,
    out: str | Path,
    *,
    seed: int | None = None,
    key=None,
    chunk: int = 1000,
    scheduler: str | None = None,
    resume: bool = False,
    trajectories: int = 0,
    progress: bool = True,
    workers: int | None = None,
    subgroup: str | None = None,
    source=None,
    on_chunk: Callable[[int], None] | None = None,
) -> xr.Dataset:
    """Simulate ``n`` virtual patients of ``scenario`` under every arm into the Zarr store
    ``out``, and return it (opened lazily: dask-backed variables).

    Parameters
    ----------
    scenario : a :class:`twinrx.scenarios.Scenario` (or its file) with a ``[population]``.
    n : number of virtual patients.
    out : the store's path; it must not exist unless ``resume``.
    seed, key : the randomness, one of the two (an int, or a jax random key).
    chunk : patients per task and per zarr chunk.
    scheduler : where the chunks run.

        - ``None`` (default): a ``dask.distributed.LocalCluster`` of ``workers`` (default:
          one per CPU core) single-threaded worker processes started with ``spawn``; but
          in-process when JAX's default backend is an accelerator (GPU): the chunks then run
          one after the other on the device, without dask.
        - ``"synchronous"``: in-process, one chunk after the other.
        - ``"tcp://host:port"``: an existing dask.distributed scheduler, e.g. of a cluster
          started by ``dask-jobqueue`` (``SLURMCluster(...).scheduler_address``, HPC batch
          systems) or ``dask-kubernetes`` (``KubeCluster``); its workers need twinrx
          installed and ``out`` on a file system they all see.
    resume : continue the store ``out`` of an interrupted run (same scenario, ``n``,
        ``chunk``, seed or key, ``trajectories`` and ``subgroup``): chunks whose ``done``
        flag is set are skipped, never written twice; the others are run.
    trajectories : keep the outputs of the first this many patients at the targets' grid.
    progress : show a progress bar (rich) of the chunks.
    subgroup : a categorical covariate (``SEX``, ``ANCESTRY``, a gene) to give the PTA by
        level (``pta_by``); default: the scenario's ``[cohort] subgroup``, if any.
    source : a population fit (:class:`twinrx.infer.Fit`) for the parameters, instead of the
        card's variability (see :func:`twinrx.cohort.individual_parameters`); its data's
        hash is recorded (``data_hash``). In-process schedulers only pass it cheaply.
    on_chunk : called with each chunk's index once it is written (in the calling process).

    Randomness
    ----------
    Chunk ``c`` draws from ``fold_in(key, c)`` only (its patients' covariates, parameters,
    adherence patterns and within-patient variability), so the result does not depend on the
    number of workers, on the order chunks finish in, or on an interruption and resume: a
    resumed run ends with the same bytes in every data chunk file as an uninterrupted one. It
    does depend on ``chunk`` (a patient's draws come from its chunk's key).

    A patient whose solve fails under an arm is flagged (``status`` != 0, NaN metrics) and
    counted in ``n_failed``; its arm counts as not attained in the PTA (the PTA is over all
    ``n`` patients); the other patients are unaffected.

    Examples
    --------
    >>> from twinrx.scale import run_cohort
    >>> ds = run_cohort("scenarios/vancomycin_auc_guided.toml", 200, "vanco.zarr", seed=0,
    ...                 chunk=100, scheduler="synchronous", progress=False)  # doctest: +SKIP
    >>> ds["pta"].sel(target="AUC24 day 3").values  # doctest: +SKIP
    """
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive whole number of patients, not {n!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive whole number of patients, not {chunk!r}")
    if int(trajectories) < 0:
        raise ValueError(f"trajectories must be >= 0, not {trajectories!r}")
    n, chunk, trajectories = int(n), int(min(chunk, n)), min(int(trajectories), int(n))
    settings = dict(sc.cohort)
    subgroup = subgroup if subgroup is not None else settings.get("subgroup")
    key_data, key_label = _key_data(key, seed)
    model = get_model(sc.model)
    spec = _cohort.scenario_population(sc)
    if subgroup is not None:
        _cohort.subgroup_levels(spec, subgroup)  # fails early on a bad name
    path = Path(out)
    expected = {
        "scenario_hash": sc.hash,
        "seed": key_label,
        "n_patients": str(n),
        "chunk": str(chunk),
        "trajectories": str(trajectories),
        "subgroup": subgroup or "",
    }
    if resume and path.exists():
        _store.check_cohort_store(path, expected)
    elif path.exists():
        raise FileExistsError(f"{path} exists: pass resume to continue it, or choose another output path")
    template = cohort_template(sc, n, chunk, trajectories=trajectories, subgroup=subgroup)
    covariates = tuple(template.attrs.pop("covariates"))
    create = None
    if not path.exists():
        data_hash = None
        if source is not None:
            data = getattr(source, "data", None)
            data_hash = _store.data_hash(data.to_dataset()) if hasattr(data, "to_dataset") else "unknown"
        attrs = _store.provenance(model=model, scenario=sc, data_hash=data_hash)
        attrs.update({k: v for k, v in expected.items() if k != "seed"})
        attrs.update(
            seed=key_label,
            scenario_source=sc.source,
            population_spec_digest=spec.digest,
            design="paired: every patient under every arm, common random numbers",
        )

        def create():
            _store.create_cohort_store(template, path, attrs=attrs)

    job = _Job(
        scenario=sc,
        path=str(path.resolve()),  # workers of a remote scheduler need the absolute path
        n=n,
        chunk=chunk,
        trajectories=trajectories,
        key_data=key_data,
        subgroup=subgroup,
        levels=_cohort.subgroup_levels(spec, subgroup) if subgroup else (),
        covariates=covariates,
        source=source,
    )
    in_process = scheduler == "synchronous" or (scheduler is None and _on_accelerator())
    if create is not None and not in_process:
        create()  # before any worker writes into it
        create = None
    done = _store.chunks_done(path) if create is None else np.zeros(math.ceil(n / chunk), bool)
    todo = [int(c) for c in np.nonzero(~done)[0]]
    with _progress(progress, len(done), int(done.sum()), sc.name) as advance:
        if in_process:
            _run_in_process(job, todo, advance, on_chunk, create)
        elif todo:
            from distributed import as_completed

            with _client(scheduler, workers) as client:
                futures = [client.submit(_chunk_task, job, c, pure=False) for c in todo]
                try:
                    for fut in as_completed(futures):
                        c = fut.result()
                        advance()
                        if on_chunk is not None:
                            on_chunk(c)
                except BaseException:
                    client.cancel(futures)
                    raise
    _finalise(path, sc, subgroup)
    return _store.open_store(path)


def _run_in_process(job: _Job, todo: list[int], advance, on_chunk, create=None) -> None:
    """Chunks one after the other, in a pipeline of three threads (JAX, NumPy and Zarr's
    compression release the GIL): while chunk ``c`` is simulated, chunk ``c + 1``'s patients
    are drawn and chunk ``c - 1`` is written (the store's creation, ``create``, overlaps the
    first chunk). A chunk counts as done, for the progress bar and ``on_chunk``, once its
    write and flag are on disk; an error or an interruption waits for the write in flight,
    so the store never holds a flag without its region."""
    with ThreadPoolExecutor(max_workers=1) as writer, ThreadPoolExecutor(max_workers=1) as drawer:
        pending = None
        created = None if create is None else writer.submit(create)
        draws = {todo[0]: drawer.submit(_draw_chunk, job, todo[0])} if todo else {}

        def finish(fut):
            c = fut.result()
            advance()
            if on_chunk is not None:
                on_chunk(c)

        for i, c in enumerate(todo):
            if i + 1 < len(todo):
                draws[todo[i + 1]] = drawer.submit(_draw_chunk, job, todo[i + 1])
            values = _compute_chunk(job, c, draws.pop(c).result())
            if created is not None:
                created.result()  # the store exists (or its error is raised here)
                created = None
            if pending is not None:
                finish(pending)
            pending = writer.submit(_write_chunk, job, c, values)
        if created is not None:
            created.result()
        if pending is not None:
            finish(pending)


@contextlib.contextmanager
def _progress(show: bool, total: int, done: int, name: str):
    if not show:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task(f"{name}: chunks", total=total, completed=done)
        yield lambda: bar.advance(task)
