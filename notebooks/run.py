"""Execute every notebook (``notebooks/*.py``, jupytext percent format) as a script and time it.

Each notebook runs in a fresh Python subprocess with ``MPLBACKEND=Agg`` and its outputs in a
temporary folder (``TWINRX_NOTEBOOK_OUT``), from the repository root. The runner prints a
table of run times and exits 1, after running them all, if any notebook fails or takes
longer than the limit (5 minutes each by default). It also regenerates the example inputs
into a temporary folder and warns when the shipped ``notebooks/data`` files differ (a model
card or a reader changed: rerun ``notebooks/data/make_examples.py``).

Usage::

    .venv/bin/python notebooks/run.py                     # every notebook
    .venv/bin/python notebooks/run.py warfarin_precision_dosing  # some, by name
    .venv/bin/python notebooks/run.py --keep out/         # keep the figures in out/
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LIMIT_S = 300.0
SKIP = {"run.py"}


def notebooks(names: list[str]) -> list[Path]:
    """The notebooks to run: every ``*.py`` here except this runner and helpers (``_*.py``), or
    the ones named."""
    found = sorted(p for p in HERE.glob("*.py") if p.name not in SKIP and not p.name.startswith("_"))
    if not names:
        return found
    by_stem = {p.stem: p for p in found}
    missing = [n for n in names if Path(n).stem not in by_stem]
    if missing:
        raise SystemExit(f"no notebook named {missing}; notebooks: {', '.join(sorted(by_stem))}")
    return [by_stem[Path(n).stem] for n in names]


def run_one(path: Path, out: Path, limit: float) -> tuple[str, float, str]:
    """Run one notebook; returns (status, seconds, the tail of its output)."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MPLBACKEND": "Agg", "TWINRX_NOTEBOOK_OUT": str(out), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=limit,
        )
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return "TIMEOUT", time.perf_counter() - t0, text[-3000:]
    seconds = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    return ("ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"), seconds, text[-3000:]


def examples_current() -> list[str]:
    """Names of shipped example files that differ from a fresh run of make_examples.py."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, str(HERE / "data" / "make_examples.py"), tmp],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "MPLBACKEND": "Agg"},
        )
        if proc.returncode != 0:
            return [f"make_examples.py failed: {proc.stderr.strip()[-500:]}"]
        return [
            p.name
            for p in sorted(Path(tmp).iterdir())
            if not (HERE / "data" / p.name).exists()
            or (HERE / "data" / p.name).read_bytes() != p.read_bytes()
        ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="notebook names (default: all)")
    ap.add_argument("--limit", type=float, default=LIMIT_S, help="seconds allowed per notebook (default 300)")
    ap.add_argument(
        "--keep", type=Path, help="write the notebooks' figures and tables here (default: a temp dir)"
    )
    ap.add_argument("--no-examples-check", action="store_true", help="skip regenerating the example inputs")
    args = ap.parse_args(argv)
    todo = notebooks(args.names)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep if args.keep is not None else Path(tmp)
        for nb in todo:
            print(f"running {nb.name} ...", flush=True)
            status, seconds, tail = run_one(nb, base / nb.stem, args.limit)
            if status == "ok" and seconds > args.limit:
                status = "TOO SLOW"
            rows.append((nb.name, status, seconds))
            if status != "ok":
                print(f"--- {nb.name}: {status}; last output:\n{tail}\n---", flush=True)
    stale = [] if args.no_examples_check else examples_current()
    width = max(len(r[0]) for r in rows)
    print(f"\n{'notebook':{width}s}  {'status':18s}  seconds")
    for name, status, seconds in rows:
        print(f"{name:{width}s}  {status:18s}  {seconds:7.1f}")
    print(f"limit {args.limit:.0f} s per notebook; {os.cpu_count()} CPU cores")
    if stale:
        print(
            "warning: notebooks/data differs from a fresh make_examples.py run: "
            f"{', '.join(stale)} (rerun .venv/bin/python notebooks/data/make_examples.py if intended)"
        )
    failed = [r for r in rows if r[1] != "ok"]
    if failed:
        print(f"FAILED: {', '.join(r[0] for r in failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
