# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # An in-silico trial of vancomycin dosing strategies in a virtual hospital cohort
#
# **Question.** The 2020 consensus guideline (Rybak et al., *Am J Health-Syst Pharm*
# 2020;77:835-864) asks for a 24-hour AUC of 400-600 mg·h/L, and no longer a trough of
# 15-20 mg/L. How often does each common regimen reach that window by day 3 in patients
# whose renal function ranges from dialysis to normal — and how much does monitoring (a dose
# adjustment at 36 h guided by the AUC, or by the trough) recover?
#
# **Model.** The population PK model of Goti et al. (*Ther Drug Monit* 2018;40:212-221):
# two compartments, clearance scaled by creatinine clearance and dialysis, fitted on 1,812
# hospitalised adults (`models/vancomycin_goti_2018.toml`).
#
# **Virtual patients.** The `[population]` table of `scenarios/vancomycin_auc_guided.toml`,
# calibrated to Goti 2018's Table 1: sex, dialysis, age, weight and serum creatinine with
# correlations, and creatinine clearance by Cockcroft-Gault. Every virtual patient goes
# through every arm (a paired design with common random numbers), with the model's
# between-patient variability on top of the covariates.

# %%
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import twinrx
from twinrx import plots
from twinrx.scale import run_cohort
from twinrx.scenarios import load_scenario

ROOT = Path.cwd() if (Path.cwd() / "scenarios").is_dir() else Path.cwd().parent
OUT = Path(os.environ.get("TWINRX_NOTEBOOK_OUT", ROOT / "notebooks" / "_output"))
OUT.mkdir(parents=True, exist_ok=True)
N = int(os.environ.get("TWINRX_TRIAL_N", "4000"))  # virtual patients per arm

scenario = load_scenario(ROOT / "scenarios" / "vancomycin_auc_guided.toml")
print(f"{scenario.name}: {len(scenario.arm_regimens)} arms, targets:", [t.name for t in scenario.targets])
print("model:", twinrx.get_model(scenario.model).name)

# %% [markdown]
# ## Run the trial
#
# `run_cohort` cuts the cohort into chunks, simulates every arm of each chunk (the two
# monitored arms decide their 36-h adjustment on each simulated patient), computes the
# targets' metrics and writes each chunk into its own region of a Zarr store. Here it runs
# in-process (`scheduler="synchronous"`); on a workstation the default is a dask
# LocalCluster, on a cluster `scheduler="tcp://..."`. The same seed gives the same store,
# byte for byte, however the run is split or resumed.

# %%
store = OUT / "vancomycin_trial.zarr"
if store.exists():
    import shutil

    shutil.rmtree(store)
t0 = time.perf_counter()
ds = run_cohort(
    scenario, N, store, seed=2020, chunk=1000, scheduler="synchronous", trajectories=200, progress=False
)
print(f"{N} patients x {ds.sizes['arm']} arms in {time.perf_counter() - t0:.1f} s")

# %% [markdown]
# ## Who are the virtual patients?

# %%
cov = pd.DataFrame({k: ds[k].values for k in ("AGE", "WT", "CRCL")})
cov["on dialysis"] = np.asarray(ds["DIAL"].values) == 1
print(cov.describe(percentiles=[0.05, 0.5, 0.95]).round(1).T[["5%", "50%", "95%"]])
print(f"on dialysis: {cov['on dialysis'].mean():.1%} (Goti 2018: 18.5 %)")
print(f"median creatinine clearance: {cov['CRCL'].median():.0f} mL/min (Goti 2018: 62)")

# %% [markdown]
# ## Endpoints per arm
#
# The probability of target attainment (PTA) counts a patient as on target when the day-3
# AUC24 is within 400-600 mg·h/L (a failed solve would count as not attained; there are
# none here). The interval is the 95 % Wilson interval of a binomial proportion.

# %%
summary = plots.cohort_summary(ds)
auc = "AUC24 day 3"
table = pd.DataFrame(
    {
        "PTA": summary["pta"].sel(target=auc).values,
        "PTA 95% low": summary["pta_low"].sel(target=auc).values,
        "PTA 95% high": summary["pta_high"].sel(target=auc).values,
        "median AUC24": summary["median"].sel(target=auc).values,
        "AUC24 q05": summary["q05"].sel(target=auc).values,
        "AUC24 q95": summary["q95"].sel(target=auc).values,
        "failed": summary["n_failed"].values,
    },
    index=[str(a) for a in summary["arm"].values],
).sort_values("PTA", ascending=False)
print(table.round(3).to_string())
best = table.index[0]
print(f"\nbest arm: {best} (PTA {table.loc[best, 'PTA']:.1%})")

# %%
fig = plots.cohort_endpoints(ds, path=OUT / "vancomycin_trial_endpoints.png")
plt.show()

# %% [markdown]
# ## Renal function decides who a fixed dose fits
#
# The per-patient metrics are in the store, so any breakdown is a few lines of pandas: the
# PTA of each arm by creatinine-clearance band (dialysis patients apart).

# %%
metric = ds["metric"].sel(target=auc).values  # (patient, arm)
bands = pd.cut(cov["CRCL"], [0, 30, 60, 90, np.inf], labels=["<30", "30-60", "60-90", ">=90"])
group = np.where(cov["on dialysis"], "dialysis", bands.astype(str))
on_target = (metric >= 400) & (metric <= 600)
by_band = (
    pd.DataFrame(on_target, columns=[str(a) for a in ds["arm"].values])
    .assign(group=group)
    .groupby("group")
    .mean()
    .loc[["dialysis", "<30", "30-60", "60-90", ">=90"]]
)
by_band.insert(0, "patients", pd.Series(group).value_counts())
print((by_band.drop(columns="patients") * 100).round(0).assign(patients=by_band["patients"]).to_string())

# %%
fig, ax = plt.subplots(figsize=(9, 4.5), constrained_layout=True)
x = np.arange(len(by_band))
arms = [c for c in by_band.columns if c != "patients"]
width = 0.8 / len(arms)
for i, arm in enumerate(arms):
    ax.bar(x + (i - (len(arms) - 1) / 2) * width, 100 * by_band[arm].values, width, label=arm)
ax.set_xticks(x, [f"{g}\n(n={n})" for g, n in zip(by_band.index, by_band["patients"])])
ax.set_xlabel("creatinine clearance (mL/min) or dialysis")
ax.set_ylabel("PTA, AUC24 400-600 mg·h/L on day 3 (%)")
ax.legend(fontsize=7, ncol=2, loc="upper left")
fig.savefig(OUT / "vancomycin_trial_by_renal_function.png", dpi=120)
plt.show()

# %% [markdown]
# ## Exposure over time
#
# The first 200 virtual patients' concentrations are kept (`trajectories=200`): median and
# 90 % band per arm on the targets' window.

# %%
fig = plots.cohort_trajectories(ds, path=OUT / "vancomycin_trial_trajectories.png")
plt.show()

# %% [markdown]
# ## What the trial says, and what it does not
#
# - No fixed regimen fits this population: each puts at most about a quarter of the patients
#   in the AUC window, because the same dose gives a several-fold range of exposure across
#   renal function (the table by band: 1500 mg q12h suits only high clearances, 1000 mg q24h
#   only low ones, and the dialysis patients are over-exposed by nearly every regimen).
# - Monitoring recovers most of it: the AUC-guided adjustment at 36 h reaches the window about
#   two and a half times as often as the best fixed dose, and four times as often as the
#   trough-guided one, whose 15-20 mg/L trough target overshoots the AUC window — the reason
#   the 2020 guideline moved to AUC.
# - Except on dialysis: three 1000 mg doses have accumulated by 36 h and a smaller dose cannot
#   remove them; these patients need a loading dose and then doses by measured levels after
#   each dialysis session, which this scenario does not model.
# - The monitored arms are idealised: the adjustment uses the patient's true simulated AUC;
#   in practice it comes from one or two levels and a Bayesian forecast (see
#   `twinrx scenario run --twin` for that, one patient at a time), with assay error and
#   timing error on top.
# - The population is calibrated to medians and ranges (Goti 2018 Table 1); its spreads and
#   correlations are assumptions stated in the scenario file.

# %%
print(f"store: {store.name}, schema {ds.attrs['twinrx_schema']}, scenario hash {ds.attrs['scenario_hash']}")
