"""Model card vs the same model written by hand in Python: simulation time ratio.

Each pair simulates the same cohort with the same solver and tolerances; the only difference
is how the model was written. Ratio = card seconds / hand-written seconds (target <= 1.2).

Pairs
-----
``two_cpt_oral, closed form``
    ``models/two_cpt_oral.toml`` (structure two_cpt_oral) vs ``LinearCompartmentModel(2,
    oral=True)``; 100 mg q12h x 14 into the depot, CP hourly 0-168 h; log-normal IIV on CL,
    V1, KA (random effects passed as ``eta_*`` to the card, applied by hand for Python).
``two_cpt_oral, ODE``
    The same two models with ``solver="ode"`` (the card's ODE equations vs the built-in
    matrix-vector field).
``warfarin_hamberg_2007, ODE``
    The warfarin card (10 states, Hill inhibition, two transit chains, INR output) vs
    :class:`HandWarfarin` below, the same equations in plain JAX; 5 mg daily for 28 days,
    INR and CP every 6 h; genotypes and IIV vary across the cohort.

Timing: one untimed compile call, then the best of ``--repeats`` warm calls
(``jax.block_until_ready``). All CPU cores are used (``twinrx.use_cpu_cores``), the same for
both sides. Results: ``benchmarks/results/card_vs_python.json``.

Run: ``python benchmarks/card_vs_python.py [--n 2000] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import twinrx

twinrx.use_cpu_cores()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from twinrx.model._base import AbstractModel, Output, Parameter  # noqa: E402


class HandWarfarin(AbstractModel):
    """Hamberg 2007 warfarin PK/PD written by hand (the card's equations)."""

    name: str = "warfarin_hand"
    compartments: tuple = ("depot", "central", "peripheral", "A1", "A2", "A3", "A4", "A5", "A6", "A7")
    parameters: tuple = tuple(
        Parameter(n, "", v)
        for n, v in {
            "CL": 0.314,
            "V1": 13.8,
            "Q": 0.131,
            "V2": 6.59,
            "KA": 2.0,
            "EC50": 4.61,
            "GAMMA": 0.424,
            "MTT1": 11.6,
            "MTT2": 120.0,
            "LAMBDA": 3.61,
            "INRMAX": 20.0,
            "BASE": 1.0,
            "FS": 0.5,
        }.items()
    )
    outputs: tuple = (Output("CP", "mg/L"), Output("INR", "1"))
    amount_unit: str = "mg"
    time_unit: str = "h"

    @property
    def has_initial_state(self):
        return True

    @property
    def dosing_modifiers(self):
        return {"bioav": {"depot": "FS"}}

    def initial_state(self, p):
        return jnp.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])

    def vector_field(self, t, y, p, rate):
        cs = y[1] / p["V1"]
        csg = jnp.where(cs > 0, jnp.where(cs > 0, cs, 1.0) ** p["GAMMA"], 0.0)
        inhib = 1.0 - csg / (p["EC50"] ** p["GAMMA"] + csg)
        k1, k2 = 6.0 / p["MTT1"], 1.0 / p["MTT2"]
        ke, k12, k21 = p["CL"] / p["V1"], p["Q"] / p["V1"], p["Q"] / p["V2"]
        a = y[3:9]
        prev = jnp.concatenate([inhib[None], a[:-1]])
        return (
            jnp.concatenate(
                [
                    jnp.stack(
                        [
                            -p["KA"] * y[0],
                            p["KA"] * y[0] - (ke + k12) * y[1] + k21 * y[2],
                            k12 * y[1] - k21 * y[2],
                        ]
                    ),
                    k1 * (prev - a),
                    (k2 * (inhib - y[9]))[None],
                ]
            )
            + rate
        )

    def observe(self, t, y, p):
        x = 1.0 - y[8] * y[9]
        return {
            "CP": y[1] / p["V1"],
            "INR": p["BASE"] + p["INRMAX"] * jnp.where(x > 0, jnp.where(x > 0, x, 1.0) ** p["LAMBDA"], 0.0),
        }


def _time_pair(f_card, f_hand, repeats):
    """Best warm time of each, measured alternately (card, hand, card, ...) so that drift in
    the machine's load affects both alike."""
    jax.block_until_ready(f_card())
    jax.block_until_ready(f_hand())
    best = [np.inf, np.inf]
    for _ in range(repeats):
        for i, fn in enumerate((f_card, f_hand)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "card_vs_python.json"))
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    n = a.n
    results = []

    # ---- two_cpt_oral --------------------------------------------------------------------
    card = twinrx.get_model("two_cpt_oral")
    hand = twinrx.LinearCompartmentModel(2, True)
    eta = {k: 0.3 * rng.standard_normal(n) for k in ("CL", "V1", "KA")}
    typ = {"CL": 5.0, "V1": 50.0, "Q": 10.0, "V2": 100.0, "KA": 1.0}
    p_hand = {k: v * np.exp(eta[k]) if k in eta else np.full(n, v) for k, v in typ.items()}
    p_card = {f"eta_{k}": v for k, v in eta.items()}
    ev = twinrx.stack_tables(
        [twinrx.EventTable.from_records([0.0], [1], [100.0], [1], ii=[12.0], addl=[13])] * n
    )
    times = np.arange(0.0, 169.0)
    for solver in ("closed_form", "ode"):
        out_c = twinrx.simulate_arrays(card, p_card, ev, times, solver=solver)[1]["CP"]
        out_h = twinrx.simulate_arrays(hand, p_hand, ev, times, solver=solver)[1]["CP"]
        err = float(
            np.max(np.abs(np.asarray(out_c) - np.asarray(out_h)) / (np.abs(np.asarray(out_h)) + 1e-9))
        )
        tc, th = _time_pair(
            lambda s=solver: twinrx.simulate_arrays(card, p_card, ev, times, solver=s)[1],
            lambda s=solver: twinrx.simulate_arrays(hand, p_hand, ev, times, solver=s)[1],
            a.repeats,
        )
        results.append(
            {
                "model": "two_cpt_oral",
                "solver": solver,
                "n": n,
                "card_s": tc,
                "python_s": th,
                "ratio": tc / th,
                "max_rel_diff": err,
            }
        )

    # ---- warfarin --------------------------------------------------------------------------
    wcard = twinrx.get_model("warfarin_hamberg_2007")
    whand = HandWarfarin()
    cyp = rng.integers(0, 6, n)
    vk = rng.integers(0, 3, n)
    cl_mult = np.array([1.0, 0.685, 0.547, 0.278, 0.310, 0.148])[cyp]
    ec_mult = np.array([1.0, 0.6551, 0.4772])[vk]
    weta = {k: np.sqrt(w) * rng.standard_normal(n) for k, w in (("CL", 0.31), ("V1", 0.262), ("EC50", 0.409))}
    pw_card = {"CYP2C9": cyp.astype(float), "VKORC1": vk.astype(float), "AGE": np.full(n, 60.0)}
    pw_card |= {f"eta_{k}": v for k, v in weta.items()}
    pw_hand = {p.name: np.full(n, p.value) for p in whand.parameters}
    pw_hand["CL"] = 0.314 * cl_mult * np.exp(weta["CL"])
    pw_hand["V1"] = 13.8 * np.exp(weta["V1"])
    pw_hand["EC50"] = 4.61 * ec_mult * np.exp(weta["EC50"])
    wev = twinrx.stack_tables(
        [twinrx.EventTable.from_records([0.0], [1], [5.0], [1], ii=[24.0], addl=[27])] * n
    )
    wt = np.arange(0.0, 28 * 24 + 1, 6.0)
    oc = twinrx.simulate_arrays(wcard, pw_card, wev, wt)[1]
    oh = twinrx.simulate_arrays(whand, pw_hand, wev, wt)[1]
    err = float(np.max(np.abs(np.asarray(oc["INR"]) - np.asarray(oh["INR"])) / np.abs(np.asarray(oh["INR"]))))
    tc, th = _time_pair(
        lambda: twinrx.simulate_arrays(wcard, pw_card, wev, wt)[1],
        lambda: twinrx.simulate_arrays(whand, pw_hand, wev, wt)[1],
        a.repeats,
    )
    results.append(
        {
            "model": "warfarin_hamberg_2007",
            "solver": "ode",
            "n": n,
            "card_s": tc,
            "python_s": th,
            "ratio": tc / th,
            "max_rel_diff": err,
        }
    )

    print(
        f"{'model':24} {'solver':12} {'N':>6} {'card s':>9} {'python s':>9} {'ratio':>6} {'max rel diff':>12}"
    )
    for r in results:
        print(
            f"{r['model']:24} {r['solver']:12} {r['n']:6d} {r['card_s']:9.4f} {r['python_s']:9.4f} "
            f"{r['ratio']:6.2f} {r['max_rel_diff']:12.2e}"
        )
    meta = {
        "machine": platform.platform(),
        "cpu_devices": len(jax.local_devices()),
        "jax": jax.__version__,
        "twinrx": twinrx.__version__ if hasattr(twinrx, "__version__") else "dev",
        "repeats": a.repeats,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
