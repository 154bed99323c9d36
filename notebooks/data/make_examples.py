"""Write the notebooks' example input files: two SYNTHETIC patients simulated from model cards.

Run from anywhere (``.venv/bin/python notebooks/data/make_examples.py``); it writes next to
itself and is deterministic (fixed seeds, fixed dates): running it again gives the same bytes.

Warfarin patient (``warfarin_precision_dosing.py``), source id ``pt-demo-wf01``
    Simulated from ``warfarin_hamberg_2007`` with CYP2C9 *1/*3, VKORC1 -1639 G/A, age 65 and
    the random effects ``WARFARIN_TRUE_ETAS`` (so the true individual values are the card's
    typical value x genotype effect x exp(eta); ``warfarin_truth()`` returns them).
    Files:

    - ``warfarin_patient.vcf``: one sample, GRCh38, the two CYP2C9 defining positions (*2
      rs1799853 C>T homozygous reference, *3 rs1057910 A>C heterozygous) and VKORC1
      rs9923231 C>T (plus strand; -1639G>A on the gene strand) heterozygous.
    - ``warfarin_fhir_bundle.json``: a FHIR R4 collection Bundle with the Patient (gender,
      birth date 65 years before the first dose; no name or identifier), weight (75 kg) and
      height (170 cm), 14 MedicationAdministrations of oral warfarin at 18:00 (5 mg, then
      titrated on the INR of days 7 and 10 by +-15 %, rounded to 0.5 mg) and 7 INR
      Observations: at the first dose (baseline) and at 09:00 on days 3, 5, 7, 10, 12, 14.
      INR values carry the card's residual error (exponential, SD 0.0325 on the log scale),
      rounded to 0.1 as laboratories report them. And 3 S-warfarin levels (mg/L; card
      output ``CP``, error exponential SD 0.09, rounded to 0.01) with the INRs of days 5, 10
      and 14, coded with the laboratory's own code (``LAB_CODES`` ``SWARF``: S-warfarin
      has no LOINC code; LOINC 4098-0 is racemic warfarin).

Glucose patient (``glucose_insulin_timing.py``), source id ``pt-demo-gl01``
    Simulated from ``dalla_man_2007`` made insulin-deficient as in
    ``scenarios/insulin_timing.toml`` (K = beta = 0, BW 78 kg), with the individual values
    ``GLUCOSE_TRUE`` for insulin action on glucose uptake (Vmx), on the liver (kp3), gastric
    emptying (kmax) and intestinal absorption (kabs); every other parameter at the card's
    value. One day: three 80 g carbohydrate meals (07:00, 12:30, 19:00; taken as glucose,
    80000 mg) with an 8 U rapid-acting bolus 15 min before breakfast, with lunch and 20 min
    after dinner.
    File: ``glucose_cgm_clarity.csv``, a Dexcom Clarity CSV export (mg/dL): the header rows
    Clarity writes (placeholder names, device rows), EGV readings every 5 min from 06:00 to
    24:00 with proportional measurement error (SD 8 %, of the order of a CGM's MARD) rounded
    to whole mg/dL (``Low`` below 40, ``High`` above 400, as Dexcom reports), and the Insulin
    and Carbs events the patient entered in the app.

Dates are fixed and meaningless (January 2000): the formats require absolute date-times; the
readers and ``twinrx.data.ingest`` turn them into hours after the first dose.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import twinrx

HERE = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------------- warfarin
WARFARIN_ID = "pt-demo-wf01"
WARFARIN_COVARIATES = {"CYP2C9": "*1/*3", "VKORC1": "GA", "AGE": 65.0}
WARFARIN_TRUE_ETAS = {
    "eta_CL": -0.35,
    "eta_V1": 0.10,
    "eta_V2": 0.0,
    "eta_EC50": -0.30,
    "eta_MTT1": 0.0,
    "eta_MTT2": 0.25,
}
WARFARIN_START = np.datetime64("2000-01-03T18:00:00")  # the first dose
WARFARIN_BIRTH = "1935-01-01"  # 65.0 years at the first dose (ingest computes the age)
WARFARIN_DOSE_DAYS = 14
WARFARIN_INR_DAYS = (3, 5, 7, 10, 12, 14)  # at 09:00, 9 h before that day's dose
WARFARIN_TITRATION_DAYS = (7, 10)  # the clinic adjusts the dose on these INRs
WARFARIN_LEVEL_DAYS = (5, 10, 14)  # S-warfarin levels, drawn with that morning's INR
LAB_CODES = "https://lab.example.org/codes"  # the laboratory's own code system (no LOINC)
WARFARIN_START_DOSE = 5.0  # mg racemic warfarin, the standard start


def warfarin_truth() -> dict[str, float]:
    """The simulated patient's true individual values: the card's typical value x its
    genotype factor (``models/warfarin_hamberg_2007.toml``, written out here by hand) x
    exp(eta). Age 65 <= 71: no age effect on CL."""
    e = WARFARIN_TRUE_ETAS
    return {
        "CL": 0.314 * 0.547 * np.exp(e["eta_CL"]),  # L/h, CYP2C9 *1/*3 factor 0.547
        "V1": 13.8 * np.exp(e["eta_V1"]),  # L
        "V2": 6.59 * np.exp(e["eta_V2"]),  # L
        "EC50": 4.61 * 0.6551 * np.exp(e["eta_EC50"]),  # mg/L, VKORC1 G/A factor 0.6551
        "MTT1": 11.6 * np.exp(e["eta_MTT1"]),  # h
        "MTT2": 120.0 * np.exp(e["eta_MTT2"]),  # h
    }


def _warfarin_inputs() -> dict:
    m = twinrx.get_model("warfarin_hamberg_2007")
    return {**m.typical_params(), **WARFARIN_COVARIATES, **WARFARIN_TRUE_ETAS}


def _inr_at(dose_times, doses, times, output: str = "INR") -> np.ndarray:
    m = twinrx.get_model("warfarin_hamberg_2007")
    ev = twinrx.EventTable.from_records(
        np.asarray(dose_times, float),
        evid=np.ones(len(doses), int),
        amt=np.asarray(doses, float),
        cmt=np.ones(len(doses), int),
    )
    ds = twinrx.simulate(m, _warfarin_inputs(), ev, times=np.asarray(times, float))
    return np.asarray(ds[output].values).reshape(-1)


def warfarin_levels(dose_t, doses) -> tuple[np.ndarray, np.ndarray]:
    """S-warfarin levels (mg/L) at 09:00 on ``WARFARIN_LEVEL_DAYS`` (drawn with that
    morning's INR), with the card's residual error (exponential, SD 0.09), rounded to
    0.01 mg/L."""
    rng = np.random.default_rng(20000104)
    t = np.array([24.0 * d - 9.0 for d in WARFARIN_LEVEL_DAYS])
    cp = _inr_at(dose_t, doses, t, "CP") * np.exp(rng.normal(0.0, 0.09, t.size))
    return t, np.round(cp, 2)


def warfarin_history() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Dose times (h after the first dose), doses (mg), INR times (h) and observed INRs.

    The clinic's titration is simulated on the true (noiseless) INR measured with noise: on
    days 7 and 10 an INR above 3 lowers the daily dose by 15 %, below 2 raises it by 15 %
    (rounded to 0.5 mg)."""
    rng = np.random.default_rng(20000103)
    dose_t = 24.0 * np.arange(WARFARIN_DOSE_DAYS)
    doses = np.full(WARFARIN_DOSE_DAYS, WARFARIN_START_DOSE)
    inr_t = np.array([0.0, *(24.0 * d - 9.0 for d in WARFARIN_INR_DAYS)])
    noise = rng.normal(0.0, 0.0325, inr_t.size)  # the card's error: exponential, SD 0.0325
    for day in WARFARIN_TITRATION_DAYS:
        k = 1 + WARFARIN_INR_DAYS.index(day)
        inr = _inr_at(dose_t, doses, [inr_t[k]])[0] * np.exp(noise[k])
        inr = round(inr, 1)
        factor = 0.85 if inr > 3.0 else 1.15 if inr < 2.0 else 1.0
        new = np.round(doses[day] * factor / 0.5) * 0.5
        doses[dose_t >= 24.0 * day] = new
    inr = np.round(_inr_at(dose_t, doses, inr_t) * np.exp(noise), 1)
    return dose_t, doses, inr_t, inr


def _iso(t0: np.datetime64, hours: float) -> str:
    t = t0 + np.timedelta64(int(round(hours * 3600)), "s")
    return str(t) + "Z"


LOINC, UCUM = "http://loinc.org", "http://unitsofmeasure.org"
RXNORM, SNOMED = "http://www.nlm.nih.gov/research/umls/rxnorm", "http://snomed.info/sct"


def _observation(oid: str, code: str, display: str, value: float, unit: str, ucum: str, when: str) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{WARFARIN_ID}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": ucum},
    }


def warfarin_bundle() -> dict:
    dose_t, doses, inr_t, inr = warfarin_history()
    first = _iso(WARFARIN_START, 0.0)
    res: list[dict] = [
        {"resourceType": "Patient", "id": WARFARIN_ID, "gender": "female", "birthDate": WARFARIN_BIRTH},
        _observation("wt-1", "29463-7", "Body weight", 75.0, "kg", "kg", first),
        _observation("ht-1", "8302-2", "Body height", 170.0, "cm", "cm", first),
    ]
    for k, (t, v) in enumerate(zip(inr_t, inr), start=1):
        res.append(
            _observation(
                f"inr-{k}",
                "6301-6",
                "INR in Platelet poor plasma by Coagulation assay",
                float(v),
                "{INR}",
                "{INR}",
                _iso(WARFARIN_START, t),
            )
        )
    for k, (t, v) in enumerate(zip(*warfarin_levels(dose_t, doses)), start=1):
        level = _observation(f"swarf-{k}", "", "", float(v), "mg/L", "mg/L", _iso(WARFARIN_START, t))
        level["code"] = {
            "coding": [
                {"system": LAB_CODES, "code": "SWARF", "display": "S-warfarin [Mass/volume] in Plasma"}
            ],
            "text": "S-warfarin (chiral HPLC)",
        }
        res.append(level)
    for k, (t, d) in enumerate(zip(dose_t, doses), start=1):
        res.append(
            {
                "resourceType": "MedicationAdministration",
                "id": f"ma-{k}",
                "status": "completed",
                "medicationCodeableConcept": {
                    "coding": [{"system": RXNORM, "code": "11289", "display": "warfarin"}]
                },
                "subject": {"reference": f"Patient/{WARFARIN_ID}"},
                "effectiveDateTime": _iso(WARFARIN_START, t),
                "dosage": {
                    "route": {"coding": [{"system": SNOMED, "code": "26643006", "display": "Oral route"}]},
                    "dose": {"value": float(d), "unit": "mg", "system": UCUM, "code": "mg"},
                },
            }
        )
    entries = [{"fullUrl": f"urn:example:{r['resourceType']}/{r['id']}", "resource": r} for r in res]
    return {"resourceType": "Bundle", "id": "warfarin-demo", "type": "collection", "entry": entries}


def warfarin_vcf() -> str:
    lines = [
        "##fileformat=VCFv4.2",
        "##reference=GRCh38",
        "##contig=<ID=chr10,length=133797422>",
        "##contig=<ID=chr16,length=90338345>",
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", WARFARIN_ID]),
        "chr10\t94942290\trs1799853\tC\tT\t.\tPASS\t.\tGT\t0/0",  # CYP2C9*2: absent
        "chr10\t94981296\trs1057910\tA\tC\t.\tPASS\t.\tGT\t0/1",  # CYP2C9*3: one copy
        "chr16\t31096368\trs9923231\tC\tT\t.\tPASS\t.\tGT\t0/1",  # VKORC1 -1639G>A: G/A
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ glucose
GLUCOSE_ID = "pt-demo-gl01"
GLUCOSE_FIXED = {"BW": 78.0, "DMEAL": 80000.0, "K": 0.0, "beta": 0.0}
GLUCOSE_TRUE = {
    "Vmx": 0.047 * np.exp(-0.5),
    "kp3": 0.009 * np.exp(0.25),
    "kmax": 0.0558 * np.exp(0.3),
    "kabs": 0.057 * np.exp(-0.25),
}
GLUCOSE_DAY = np.datetime64("2000-01-03T00:00:00")
GLUCOSE_CGM_START, GLUCOSE_CGM_END = 6 * 60.0, 24 * 60.0  # min after midnight
GLUCOSE_MEALS = ((7 * 60.0, 80.0), (12 * 60.0 + 30, 80.0), (19 * 60.0, 80.0))  # (min, g)
GLUCOSE_BOLUSES = ((6 * 60.0 + 45, 8.0), (12 * 60.0 + 30, 8.0), (19 * 60.0 + 20, 8.0))  # (min, U)
PMOL_PER_U = 6000.0  # insulin: 1 U = 6 nmol
CGM_CV = 0.08


def glucose_events():
    """Meal and insulin records in minutes after midnight (the card's time unit)."""
    rows = [(t, 1, g * 1000.0) for t, g in GLUCOSE_MEALS] + [
        (t, 4, u * PMOL_PER_U) for t, u in GLUCOSE_BOLUSES
    ]
    rows.sort()
    t, cmt, amt = (np.array(c) for c in zip(*rows))
    return twinrx.EventTable.from_records(
        t, evid=np.ones(len(t), int), amt=amt, cmt=cmt.astype(int), n_cmt=14
    )


def glucose_readings() -> tuple[np.ndarray, list[str]]:
    """CGM times (min after midnight, each 2 min 37 s past the 5-min mark, as a sensor's
    clock would be) and the reported texts (whole mg/dL, Low, High)."""
    rng = np.random.default_rng(20000104)
    m = twinrx.get_model("dalla_man_2007")
    t = np.arange(GLUCOSE_CGM_START, GLUCOSE_CGM_END, 5.0) + 157.0 / 60.0
    # The day starts at the basal steady state at midnight: the simulation starts there.
    ds = twinrx.simulate(
        m, {**m.typical_params(), **GLUCOSE_FIXED, **GLUCOSE_TRUE}, glucose_events(), times=t
    )
    g = np.asarray(ds["G"].values).reshape(-1) * (1.0 + CGM_CV * rng.normal(size=t.size))
    texts = ["Low" if v < 40 else "High" if v > 400 else str(int(round(v))) for v in g]
    return t, texts


def clarity_csv() -> str:
    header = (
        "Index,Timestamp (YYYY-MM-DDThh:mm:ss),Event Type,Event Subtype,Patient Info,Device Info,"
        "Source Device ID,Glucose Value (mg/dL),Insulin Value (u),Carb Value (grams),Duration (hh:mm:ss),"
        "Glucose Rate of Change (mg/dL/min),Transmitter Time (Long Integer),Transmitter ID"
    )
    device = "Android G6"
    rows = [
        ["", "FirstName", "", "Demo"],
        ["", "LastName", "", "Patient"],
        ["", "Device", "", "", "Dexcom G6 Mobile App", device],
        ["", "Alert", "High", "", "", device, "250", "", "", "", "", "", ""],
        ["", "Alert", "Low", "", "", device, "70", "", "", "", "", "", ""],
    ]

    def stamp(minutes: float) -> str:
        return str(GLUCOSE_DAY + np.timedelta64(int(round(minutes * 60)), "s"))

    events = []
    t, texts = glucose_readings()
    for k, (ti, gi) in enumerate(zip(t, texts)):
        events.append(
            (
                ti,
                [
                    stamp(ti),
                    "EGV",
                    "",
                    "",
                    "",
                    device,
                    gi,
                    "",
                    "",
                    "",
                    "",
                    str(4_000_000 + 300 * k),
                    "8XXXXX",
                ],
            )
        )
    for ti, u in GLUCOSE_BOLUSES:
        events.append(
            (ti, [stamp(ti), "Insulin", "Fast-Acting", "", "", device, "", f"{u:g}", "", "", "", "", ""])
        )
    for ti, g in GLUCOSE_MEALS:
        events.append((ti, [stamp(ti), "Carbs", "", "", "", device, "", "", f"{g:g}", "", "", "", ""]))
    events.sort(key=lambda e: e[0])
    rows += [r for _, r in events]
    lines = [header] + [",".join([str(i), *r]) for i, r in enumerate(rows, start=1)]
    return "\r\n".join(lines) + "\r\n"


def main(out: str | Path = HERE) -> dict[str, Path]:
    """Write the three files into ``out`` (default: this folder); returns their paths."""
    out = Path(out)
    paths = {
        "vcf": out / "warfarin_patient.vcf",
        "fhir": out / "warfarin_fhir_bundle.json",
        "cgm": out / "glucose_cgm_clarity.csv",
    }
    paths["vcf"].write_text(warfarin_vcf())
    paths["fhir"].write_text(json.dumps(warfarin_bundle(), indent=1) + "\n")
    paths["cgm"].write_bytes(clarity_csv().encode())
    for p in paths.values():
        print(f"{p.name}: {p.stat().st_size / 1024:.1f} kB")
    return paths


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else HERE)
