"""Canonical quantities: the name, canonical unit and LOINC codes of every measured quantity
twinrx understands, and the conversion of a reported value into the canonical unit.

Every reader converts at ingestion, so inside twinrx creatinine is always mg/dL, glucose
mg/dL, weight kg and a drug level mg/L. A unit that cannot be converted is an error, never a
silent pass-through.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..units import UnitError, conversion

__all__ = [
    "Quantity",
    "QUANTITIES",
    "DRUG_LEVELS",
    "by_loinc",
    "quantity",
    "to_canonical",
    "COVARIATE_ALIASES",
    "UnitError",
]


@dataclasses.dataclass(frozen=True)
class Quantity:
    name: str
    unit: str  # canonical
    kind: str  # Series.kind: lab, vital, wearable, concentration, response
    loinc: tuple[str, ...] = ()
    molar_mass: float | None = None  # g/mol, for substance <-> mass concentration
    description: str = ""
    low: float = -np.inf  # physiologically possible range in the canonical unit:
    high: float = np.inf  # values outside it are skipped as implausible (a unit slip)


_Q = [
    Quantity(
        "weight",
        "kg",
        "vital",
        ("29463-7", "3141-9", "3142-7", "8335-2"),
        low=0.2,
        high=700,
        description="body weight",
    ),
    Quantity(
        "height", "cm", "vital", ("8302-2", "8306-3", "3137-7"), low=20, high=280, description="body height"
    ),
    Quantity("bmi", "kg/m**2", "vital", ("39156-5",), low=5, high=250, description="body mass index"),
    Quantity(
        "creatinine",
        "mg/dL",
        "lab",
        ("2160-0", "38483-4", "14682-9"),
        molar_mass=113.12,
        low=0.01,
        high=40,
        description="serum/plasma creatinine",
    ),
    Quantity("cystatin_c", "mg/L", "lab", ("33863-2",), low=0.05, high=20, description="serum cystatin C"),
    Quantity("albumin", "g/dL", "lab", ("1751-7", "61151-7"), low=0.1, high=10, description="serum albumin"),
    Quantity(
        "inr",
        "1",
        "response",
        ("6301-6", "34714-6", "46418-0"),
        low=0.3,
        high=25,
        description="prothrombin time INR",
    ),
    Quantity(
        "glucose",
        "mg/dL",
        "response",
        ("2345-7", "2339-0", "41653-7", "14749-6", "15074-8", "99504-3", "2341-6"),
        molar_mass=180.156,
        low=5,
        high=2000,
        description="glucose (serum, plasma, blood, interstitial)",
    ),
    Quantity(
        "insulin", "uU/mL", "lab", ("20448-7", "14796-7"), low=0, high=5000, description="serum insulin"
    ),
    Quantity(
        "heart_rate",
        "1/min",
        "vital",
        ("8867-4", "8889-8", "40443-4", "68999-2"),
        low=10,
        high=350,
        description="heart rate",
    ),
    Quantity(
        "steps",
        "1",
        "wearable",
        ("55423-8", "41950-7"),
        low=0,
        high=1e6,
        description="step count in the interval",
    ),
    Quantity(
        "systolic_bp", "mmHg", "vital", ("8480-6",), low=30, high=350, description="systolic blood pressure"
    ),
    Quantity(
        "diastolic_bp", "mmHg", "vital", ("8462-4",), low=10, high=250, description="diastolic blood pressure"
    ),
    Quantity(
        "potassium", "mmol/L", "lab", ("2823-3", "6298-4"), low=0.5, high=15, description="serum potassium"
    ),
    Quantity(
        "bilirubin",
        "mg/dL",
        "lab",
        ("1975-2",),
        molar_mass=584.66,
        low=0,
        high=80,
        description="total bilirubin",
    ),
    Quantity("alt", "U/L", "lab", ("1742-6",), low=0, high=1e5, description="alanine aminotransferase"),
    Quantity("ast", "U/L", "lab", ("1920-8",), low=0, high=1e5, description="aspartate aminotransferase"),
]

# Drug levels (LOINC mass or substance concentration in serum/plasma/blood) -> drug name.
# The canonical unit of every drug level is mg/L; molar masses allow umol/L and nmol/L.
# Aminoglycosides and vancomycin: the plain serum/plasma code and the --peak and --trough
# codes as laboratory test catalogues (ARUP, Mayo, Labcorp) report them (vancomycin 20578-1,
# 4090-7 peak, 4092-3 trough); the code between peak and trough (4091-5, 3664-0, 4058-4,
# 3320-9) as the MIMIC and PCORnet lab mappings use it for a level of unstated timing.
_DRUGS = {
    # drug: (molar mass g/mol, LOINC codes)
    "vancomycin": (1449.3, ("20578-1", "4090-7", "4091-5", "4092-3")),
    "gentamicin": (477.6, ("35668-3", "3663-2", "3664-0", "3665-7")),
    "tobramycin": (467.5, ("35670-9", "4057-6", "4058-4", "4059-2")),
    "amikacin": (585.6, ("35669-1", "3319-1", "3320-9", "3321-7")),
    "theophylline": (180.16, ("4049-3",)),
    "digoxin": (780.9, ("10535-3",)),
    "phenytoin": (252.3, ("3968-5",)),
    "carbamazepine": (236.3, ("3432-2",)),
    "valproate": (144.2, ("4086-5",)),
    "lithium": (6.94, ("14334-7",)),
    "tacrolimus": (804.0, ("11253-2",)),  # Tacrolimus [Mass/volume] in Blood
    "cyclosporine": (1202.6, ("3520-4",)),  # cycloSPORINE [Mass/volume] in Blood
    "warfarin": (308.3, ("4098-0",)),  # Warfarin [Mass/volume] in Serum or Plasma (racemic)
    # S-warfarin alone (chiral assays; no LOINC code: map a laboratory's own code with
    # read_fhir(..., codes=...)). Warfarin PK/PD cards model the S enantiomer.
    "s-warfarin": (308.3, ()),
    "indometacin": (357.8, ()),
}

QUANTITIES: dict[str, Quantity] = {q.name: q for q in _Q}
DRUG_LEVELS: dict[str, Quantity] = {
    d: Quantity(
        d,
        "mg/L",
        "concentration",
        codes,
        molar_mass=mm,
        low=0,
        high=1e5,
        description=f"{d} concentration in serum/plasma/blood",
    )
    for d, (mm, codes) in _DRUGS.items()
}
_BY_LOINC = {code: q for q in [*QUANTITIES.values(), *DRUG_LEVELS.values()] for code in q.loinc}

# Covariate names in NONMEM data sets and model cards -> the canonical quantity name.
COVARIATE_ALIASES = {
    "WT": "weight",
    "BW": "weight",
    "WEIGHT": "weight",
    "HT": "height",
    "HEIGHT": "height",
    "AGE": "age",
    "SEX": "sex",
    "SCR": "creatinine",
    "CREAT": "creatinine",
    "CRCL": "crcl",
    "CLCR": "crcl",
    "EGFR": "egfr",
    "BSA": "bsa",
    "LBW": "lbw",
    "BMI": "bmi",
    "ALB": "albumin",
}


def by_loinc(code: str) -> Quantity | None:
    """The quantity a LOINC code measures (None when twinrx does not know the code)."""
    return _BY_LOINC.get(str(code).strip())


def quantity(name: str) -> Quantity:
    """A quantity or drug level by canonical name; KeyError names the known ones."""
    if name in QUANTITIES:
        return QUANTITIES[name]
    if name in DRUG_LEVELS:
        return DRUG_LEVELS[name]
    raise KeyError(f"unknown quantity {name!r}; known: {sorted([*QUANTITIES, *DRUG_LEVELS])}")


def to_canonical(q: Quantity | str, values, unit: str) -> np.ndarray:
    """``values`` reported in ``unit`` as float64 in the quantity's canonical unit.

    Raises ``UnitError`` for a unit that is not understood or not convertible.
    """
    q = quantity(q) if isinstance(q, str) else q
    return np.asarray(values, dtype=np.float64) * conversion(str(unit), q.unit, q.molar_mass)
