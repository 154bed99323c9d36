"""In-silico trial pipeline benchmark: end-to-end cohort run vs bare simulation, and Zarr
write bandwidth.

Problem
-------
The shipped ``scenarios/vancomycin_auc_guided.toml`` with its virtual hospital population
(Goti 2018 Table 1: sex, dialysis, age, weight, serum creatinine with correlations, and the
Cockcroft-Gault creatinine clearance), restricted by ``[[arms]]`` to its three regimens
without feedback rules ("1000 mg q12h", "25 mg/kg load, 15 mg/kg q12h" -- per-kg, so each
patient's own weight -- and "1500 mg q12h"), so that one arm is one simulation. Model
``vancomycin_goti_2018`` (two compartments, 1-1.5 h infusions; solved by the closed form by
superposition of dose responses). Two targets (day-3 AUC24 and trough). N = 100,000 virtual
patients (``--n``) in chunks of 10,000 (``--chunk``).

What is timed (both in this process, one after the other, on the same CPU cores)
---------------------------------------------------------------------------------
``pipeline``
    ``twinrx.scale.run_cohort(..., scheduler="synchronous")`` into a new store: per chunk,
    draw the patients (covariates, copula, derived CRCL), their parameters (card IIV), build
    each arm's doses (per-kg amounts per patient), simulate, compute the metrics, the partial
    sums, write the chunk's region and ``done`` flag; at the end reduce the endpoints (PTA,
    quantiles via dask) and write them.
``bare``
    ``twinrx.simulate_arrays`` alone on the same patients (their parameters prepared beforehand,
    outside the timing), the same events and output grids, the same chunks and arms, with
    ``jax.block_until_ready``: what the simulation itself costs.

``ratio`` = pipeline / bare wall time (goal: <= 1.25); ``cpu_ratio`` the same in CPU
seconds of this process (all its threads: the pipeline draws the next chunk and writes the
previous one in two threads while a chunk is simulated). Both are warmed first on one chunk of
the same size (compilation is not timed); best of ``--repeats`` (default 2) for each. The
machine may be shared: run it twice and compare.

Zarr write bandwidth: the time spent in ``twinrx.store.write_region`` during the pipeline,
against the bytes it was given (uncompressed) and the bytes of the chunk files on disk.

Usage
-----
    python benchmarks/cohort.py                 # N = 100,000, chunk 10,000
    python benchmarks/cohort.py --n 20000 --chunk 5000
    python benchmarks/cohort.py --cluster 2     # also one run on a LocalCluster of 2 workers
Results: a table on stdout, ``benchmarks/results/cohort.json``; write the Markdown summary
``benchmarks/results/cohort.md`` from them (see that file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path

import jax
import numpy as np

import twinrx
from twinrx import cohort, scale, store
from twinrx.scenarios import _dose_grid, _Plan, _scenario_draws, load_scenario

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("1000 mg q12h", "25 mg/kg load, 15 mg/kg q12h", "1500 mg q12h")


def scenario():
    text = (ROOT / "scenarios" / "vancomycin_auc_guided.toml").read_text()
    text += "".join(f'\n[[arms]]\nregimen = "{a}"\n' for a in ARMS)
    return load_scenario(text)


def bare_inputs(sc, n: int, chunk: int, seed: int):
    """Per chunk and arm: (model, params, events, grid), prepared as the pipeline does."""
    model = twinrx.get_model(sc.model)
    spec = cohort.scenario_population(sc)
    key = jax.random.key(seed)
    out = []
    for c in range(-(-n // chunk)):
        kc = jax.random.fold_in(key, c)
        pop = cohort.sample_population(spec, chunk, key=jax.random.fold_in(kc, 0))
        params = cohort.individual_parameters(model, pop, key=jax.random.fold_in(kc, 1))
        params = _scenario_draws(model, sc, params, jax.random.fold_in(jax.random.fold_in(kc, 2), 2))
        w = cohort.patient_weight(pop)
        for _, reg in sc.arm_regimens:
            plan = _Plan.build(model, sc, reg, w)
            taken, t = plan.adherence(reg, chunk, None)
            amt = np.broadcast_to(plan.amt, (chunk, len(plan.time)))
            grid = _dose_grid(sc.regimen_grid(reg), t)
            times = grid[0] if grid.strides[0] == 0 else grid  # as _simulate_regimen gives them
            out.append((model, params, plan.events(amt * taken, t), jax.numpy.asarray(times)))
    return out


def run_bare(inputs) -> tuple[float, float]:
    """Wall and CPU (this process, all threads) seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    for model, params, events, grid in inputs:
        jax.block_until_ready(twinrx.simulate_arrays(model, params, events, grid, devices=1))
    return time.perf_counter() - t0, time.process_time() - c0


def run_pipeline(sc, n: int, chunk: int, seed: int, path: Path) -> tuple[float, float, float, int]:
    """Wall seconds end to end, CPU seconds, seconds inside write_region, bytes given to it."""
    shutil.rmtree(path, ignore_errors=True)
    spent = [0.0, 0]
    real = store.write_region

    def timed(p, values, **kw):
        t0 = time.perf_counter()
        real(p, values, **kw)
        spent[0] += time.perf_counter() - t0
        batches = [values, kw.get("after") or {}]
        spent[1] += sum(np.asarray(v).nbytes for b in batches for _, v in b.values())

    store.write_region = timed
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        scale.run_cohort(sc, n, path, seed=seed, chunk=chunk, scheduler="synchronous", progress=False)
        return time.perf_counter() - t0, time.process_time() - c0, spent[0], spent[1]
    finally:
        store.write_region = real


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != "zarr.json")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--cluster", type=int, default=0, help="also time the default LocalCluster with this many workers"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cohort.json")
    args = ap.parse_args(argv)
    sc = scenario()
    tmp = Path(tempfile.mkdtemp(prefix="twinrx_cohort_bench_"))
    try:
        # warm: compile every shape on one chunk of the same size
        run_pipeline(sc, args.chunk, args.chunk, args.seed, tmp / "warm.zarr")
        t0 = time.perf_counter()
        inputs = bare_inputs(sc, args.n, args.chunk, args.seed)
        prep = time.perf_counter() - t0
        run_bare(inputs[: len(ARMS)])
        bare, bare_cpu = min(run_bare(inputs) for _ in range(args.repeats))
        runs = [
            run_pipeline(sc, args.n, args.chunk, args.seed, tmp / "run.zarr") for _ in range(args.repeats)
        ]
        pipeline, pipeline_cpu, write_s, write_bytes = min(runs)
        cluster = None
        if args.cluster:  # one run, spawn start-up of the workers (and their compilation) included
            t0 = time.perf_counter()
            scale.run_cohort(
                sc,
                args.n,
                tmp / "cluster.zarr",
                seed=args.seed,
                chunk=args.chunk,
                workers=args.cluster,
                progress=False,
            )
            cluster = time.perf_counter() - t0
        on_disk = disk_bytes(tmp / "run.zarr")
        ds = store.open_store(tmp / "run.zarr")
        pta = {str(a): float(ds["pta"].sel(arm=a).values[0]) for a in ds.arm.values}
        failed = int(ds["n_failed"].sum())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {
        "n": args.n,
        "chunk": args.chunk,
        "arms": len(ARMS),
        "pipeline_seconds": pipeline,
        "bare_simulation_seconds": bare,
        "ratio": pipeline / bare,
        "pipeline_cpu_seconds": pipeline_cpu,
        "bare_cpu_seconds": bare_cpu,
        "cpu_ratio": pipeline_cpu / bare_cpu,
        "pipeline_patients_per_second": args.n / pipeline,
        "bare_patients_per_second": args.n / bare,
        "bare_input_preparation_seconds": prep,
        "write_seconds": write_s,
        "write_bytes_uncompressed": write_bytes,
        "store_bytes_on_disk": on_disk,
        "write_MB_per_s_uncompressed": write_bytes / write_s / 1e6,
        "write_MB_per_s_on_disk": on_disk / write_s / 1e6,
        "local_cluster_workers": args.cluster or None,
        "local_cluster_seconds_including_startup": cluster,
        "pta_auc24_day3": pta,
        "failed_solves": failed,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind,
        },
        "versions": {
            p: metadata.version(p) for p in ("twinrx", "jax", "jaxlib", "numpy", "xarray", "zarr", "dask")
        },
    }
    print(f"N = {args.n:,} patients x {len(ARMS)} arms, chunks of {args.chunk:,}")
    print(
        f"  pipeline (simulate + summarise + write): {pipeline:8.2f} s  ({args.n / pipeline:,.0f} patients/s)"
    )
    print(f"  bare simulate_arrays:                    {bare:8.2f} s  ({args.n / bare:,.0f} patients/s)")
    print(f"  ratio pipeline / bare:                   {pipeline / bare:8.3f}  (goal <= 1.25)")
    print(f"  CPU seconds (all threads): pipeline {pipeline_cpu:.2f}, bare {bare_cpu:.2f}")
    print(
        f"  zarr writes: {write_s:.3f} s for {write_bytes / 1e6:.1f} MB "
        f"({res['write_MB_per_s_uncompressed']:.0f} MB/s uncompressed, {on_disk / 1e6:.1f} MB on disk)"
    )
    if cluster is not None:
        print(
            f"  LocalCluster, {args.cluster} spawn workers (start-up and compilation included): {cluster:.2f} s"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
