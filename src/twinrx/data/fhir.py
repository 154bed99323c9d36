"""HL7 FHIR: Patients, Observations and medication records from a Bundle (JSON) or NDJSON.

What is read, and what survives
-------------------------------
- **Patient** (keyed by ``Patient.id``, or by the entry's ``fullUrl`` when it has no id):
  ``birthDate`` (turned into the age at the first dose by ``ingest``, then dropped) and
  ``gender`` (covariate ``sex``). Names, identifiers, addresses, telecom, contacts,
  extensions, narrative and everything else are dropped.
- **Observation** with a LOINC code that ``quantities.by_loinc`` knows (and each
  ``component`` of a panel such as blood pressure 85354-9): ``valueQuantity`` converted to the
  canonical unit, the time (``effectiveDateTime``, ``effectivePeriod.start``,
  ``effectiveInstant`` or ``issued``, in that order) and the comparator (``<``/``<=``: below
  the limit of quantification; ``>``/``>=``: above). Notes, performers, devices, reference
  ranges and interpretations are dropped.
- **MedicationAdministration** (what was given): one dose per record, in mg, with its time,
  route, infusion rate and duration.
- **MedicationRequest** (what was ordered, status active/completed, intent order/plan): one
  dosing row per ``dosageInstruction`` with the interval ``ii`` and ``addl`` further doses.
  Administrations win: when a patient has any MedicationAdministration of a drug, that
  patient's MedicationRequests for the drug are skipped ("administrations present").
- **Medication** resources are used only to name the drug of a ``medicationReference``.

Every other resource type is counted, not read. Each resource is validated with the
``fhir.resources`` models (R4B, which also reads R4, and R5); a resource that fails, or that
cannot be used, is listed in ``Extract.skipped`` with the file, the record (``entry 3
(Observation)`` in a Bundle, ``line 3 (Observation)`` in NDJSON) and the field, and never with a
value from the input other than numbers, unit strings and LOINC codes.
"""

from __future__ import annotations

import collections
import functools
import gzip
import json
import math
import os
import re
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..units import conversion
from ._raw import Extract, IngestError, RawDoses, RawSeries, parse_instant
from .patient import Covariate
from .quantities import Quantity, UnitError, by_loinc, quantity, to_canonical

__all__ = ["read_fhir", "FHIR_VERSIONS", "RXNORM_DRUGS", "ROUTES"]

SOURCE = "fhir"
FHIR_VERSIONS = ("auto", "R4", "R4B", "R5")

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
V3_ROUTE = "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration"

# RxNorm ingredient concepts (RXCUI) -> twinrx drug name. A medication coded otherwise is named
# by the first word of a coding display ("Vancomycin 1000 MG Injection" -> "vancomycin").
RXNORM_DRUGS = {
    "11124": "vancomycin",
    "4413": "gentamicin",
    "10438": "theophylline",
    "42316": "tacrolimus",
    "3407": "digoxin",
    "11289": "warfarin",
}

# Route of administration codes -> twinrx route.
ROUTES = {
    (SNOMED, "26643006"): "oral",  # Oral route
    (SNOMED, "386359008"): "oral",  # Oral administration
    (SNOMED, "47625008"): "iv",  # Intravenous route
    (SNOMED, "386358000"): "iv",
    (SNOMED, "34206005"): "sc",  # Subcutaneous route
    (SNOMED, "386362006"): "sc",
    (SNOMED, "78421000"): "im",  # Intramuscular route
    (SNOMED, "386356001"): "im",
    (V3_ROUTE, "PO"): "oral",
    (V3_ROUTE, "IVINJ"): "iv",
    (V3_ROUTE, "IVINFUS"): "iv",
    (V3_ROUTE, "IVINJBOL"): "iv",
    (V3_ROUTE, "IVPUSH"): "iv",
    (V3_ROUTE, "SQ"): "sc",
    (V3_ROUTE, "IM"): "im",
    (V3_ROUTE, "IMINJ"): "im",
}
# Coding displays (never free ``text``) that name a route.
_ROUTE_WORDS = (
    (re.compile(r"\bintravenous|\bi\.?v\.?\b", re.I), "iv"),
    (re.compile(r"\bsubcutaneous|\bs\.?c\.?\b|\bs\.?q\.?\b", re.I), "sc"),
    (re.compile(r"\bintramuscular|\bi\.?m\.?\b", re.I), "im"),
    (re.compile(r"\boral\b|\bby mouth\b|\bper os\b|\bp\.?o\.?\b", re.I), "oral"),
)

_READ = ("Patient", "Observation", "MedicationAdministration", "MedicationRequest", "Medication")
# The elements read of each type (exact names, and prefixes of choice elements such as
# value[x]). Only these, and any element a type does not have, are validated: the rest (names,
# notes, narrative, performers, identifiers, ...) is dropped unread, so its validation would
# cost time (most of it for a large Bundle) and decide nothing.
_KEEP: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "Patient": (frozenset({"id", "gender", "birthDate", "modifierExtension"}), ()),
    "Observation": (
        frozenset(
            {
                "id",
                "status",
                "code",
                "subject",
                "issued",
                "dataAbsentReason",
                "component",
                "modifierExtension",
            }
        ),
        ("effective", "value"),
    ),
    "MedicationAdministration": (
        frozenset({"id", "status", "subject", "dosage", "contained", "modifierExtension"}),
        ("medication", "effective", "occurence"),
    ),
    "MedicationRequest": (
        frozenset(
            {"id", "status", "intent", "subject", "dosageInstruction", "contained", "modifierExtension"}
        ),
        ("medication",),
    ),
    "Medication": (frozenset({"id", "code", "modifierExtension"}), ()),
}
_SKIP_OBS_STATUS = ("entered-in-error", "cancelled")
_SKIP_ADMIN_STATUS = ("not-done", "entered-in-error")
_REQUEST_STATUS = ("active", "completed")
_REQUEST_STATUSES = (
    "draft",
    "on-hold",
    "cancelled",
    "entered-in-error",
    "stopped",
    "unknown",
    *_REQUEST_STATUS,
)
_REQUEST_INTENT = ("order", "original-order", "reflex-order", "filler-order", "instance-order", "plan")
_REQUEST_INTENTS = ("proposal", "option", *_REQUEST_INTENT)
_GENDERS = ("female", "male", "other", "unknown")
_HOURS = {"s": 1 / 3600, "min": 1 / 60, "h": 1.0, "d": 24.0, "wk": 168.0, "mo": 730.5, "a": 8766.0}
_NS_PER_H = 3_600_000_000_000

_LOINC_CODE = re.compile(r"\d{1,7}-\d")
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{1,63}")
_ELEMENT = re.compile(r"_?[A-Za-z][A-Za-z0-9_]{0,63}")
_NEW_ELEMENT = re.compile(r"_?[a-z][A-Za-z0-9]{0,63}")  # an element name as FHIR spells them
_WORD = re.compile(r"[A-Za-z][A-Za-z-]{2,}")
_MAX_NESTING = 4  # Bundles inside Bundles
_MAX_DOSES = 100_000  # more doses than this from one order is a mistake, not a regimen


class _Skip(Exception):
    """A record (or a part of one) that cannot be used: the field and a reason without values."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


class _Record:
    __slots__ = ("file", "label", "rtype", "raw", "full_url")

    def __init__(self, file, label: str, rtype: str, raw: dict, full_url: str | None):
        self.file, self.label, self.rtype, self.raw, self.full_url = file, label, rtype, raw, full_url


# --------------------------------------------------------------------------- fhir.resources
@functools.cache
def _model(version: str, rtype: str):
    """The fhir.resources model class of a resource type in R4B or R5, or None."""
    if not _TYPE_NAME.fullmatch(rtype):
        return None
    if version == "R4B":
        from fhir.resources.R4B import get_fhir_model_class
    else:
        from fhir.resources import get_fhir_model_class
    try:
        cls = get_fhir_model_class(rtype)
        base = get_fhir_model_class("Resource")
    except (ValueError, AttributeError, ImportError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, base) else None


def _is_resource_type(rtype) -> bool:
    return isinstance(rtype, str) and (_model("R4B", rtype) is not None or _model("R5", rtype) is not None)


def _string_leaves(obj) -> list[str]:
    """Every string value in a JSON structure (not keys), for scrubbing validator messages."""
    out, stack = [], [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            if len(x.strip()) >= 3:
                out.append(x.strip())
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return out


def _loc(loc, etype: str) -> str:
    parts: list[str] = []
    for i, p in enumerate(loc):
        if isinstance(p, int):
            parts.append(f"[{p}]")
            continue
        p = str(p)
        last_unknown = etype == "extra_forbidden" and i == len(loc) - 1
        ok = _NEW_ELEMENT.fullmatch(p) if last_unknown else _ELEMENT.fullmatch(p)
        name = p if ok else ("<unknown element>" if last_unknown else "<element>")
        parts.append(("." if parts else "") + name)
    return "".join(parts) or "(resource)"


def _validation_reason(err, raw) -> tuple[str, str]:
    """Field and reason of a pydantic ValidationError, with no input value in either."""
    errs = err.errors(include_url=False, include_input=False, include_context=False)
    if not errs:
        return "(resource)", "failed validation"
    first = errs[0]
    etype = str(first.get("type", "error"))
    msg = " ".join(str(first.get("msg", "")).split()).removeprefix("Value error, ")
    if etype == "json_invalid":  # pydantic tried to read a string as the object it wanted
        msg = "a JSON object is required here, not a string"
    leaves = _string_leaves(raw)
    if len(msg) > 200 or any(leaf in msg for leaf in leaves):
        msg = "the value is not valid for this element"
    reason = f"{etype}: {msg}" if msg else etype
    if len(errs) > 1:
        reason += f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})"
    return _loc(first.get("loc", ()), etype), reason


@functools.cache
def _elements(version: str, rtype: str) -> frozenset[str]:
    """The JSON element names (``birthDate``, ``_birthDate``) of a resource type."""
    cls = _model(version, rtype)
    return frozenset(f.alias or name for name, f in cls.model_fields.items()) if cls else frozenset()


def _slim(version: str, rtype: str, raw: dict) -> dict:
    """``raw`` without the elements of its type that are not read (see ``_KEEP``)."""
    exact, prefixes = _KEEP[rtype]
    known = _elements(version, rtype)
    out = {}
    for k, v in raw.items():
        base = k[1:] if k.startswith("_") else k
        if k == "resourceType" or k not in known or base in exact or base.startswith(prefixes):
            out[k] = v
    return out


# --------------------------------------------------------------------------- JSON helpers
def _obj(d, key) -> dict | None:
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, dict) else None


def _list(d, key) -> list:
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, list) else []


def _str(d, key) -> str | None:
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, str) else None


def _number(d, key, field: str, *, required: bool = True) -> float | None:
    """A JSON number (FHIR decimals and integers are numbers in JSON, never strings)."""
    v = d.get(key) if isinstance(d, dict) else None
    if v is None:
        if required:
            raise _Skip(field, "has no value")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Skip(field, "must be a JSON number")
    try:
        x = float(v)
    except OverflowError:
        raise _Skip(field, "is too large") from None
    if not math.isfinite(x):
        raise _Skip(field, "is not a finite number")
    return x


def _instant(text, field: str) -> np.datetime64:
    """An ISO-8601 date/date-time as UTC datetime64[ns]; never quotes the text (a date)."""
    if not isinstance(text, str):
        raise _Skip(field, "is not a date-time string")
    s = text.strip()
    year = s[:4]  # datetime64[ns] silently wraps outside the years 1678-2262
    if not (year.isascii() and year.isdigit() and 1800 <= int(year) <= 2200):
        raise _Skip(field, "is not a date between the years 1800 and 2200")
    try:
        return parse_instant(s)
    except IngestError:
        raise _Skip(field, "is not an ISO-8601 date or date-time") from None


def _whole(ratio: float, rounding) -> float:
    """A number of doses, rounded; infinite when absurdly large, so that nothing overflows."""
    if math.isnan(ratio):
        return -math.inf
    if abs(ratio) > 1e9:
        return math.copysign(math.inf, ratio)
    return float(rounding(ratio))


def _hours(a: np.datetime64, b: np.datetime64) -> float:
    return float((b - a).astype("timedelta64[ns]").astype(np.int64)) / _NS_PER_H


def _show_unit(u: str) -> str:
    u = " ".join(u.split())
    return repr(u if len(u) <= 40 else u[:37] + "...")


def _unit_candidates(q: dict) -> list[tuple[str, str]]:
    """(field, unit) to try: the UCUM code first, then the human-readable unit."""
    out = []
    code, system, unit = _str(q, "code"), _str(q, "system"), _str(q, "unit")
    if code and code.strip() and system in (None, UCUM):
        out.append(("code", code))
    if unit and unit.strip() and unit != code:
        out.append(("unit", unit))
    return out


_SUSPECT_UNIT = re.compile(r"\d{4,}|\*\*|\^")


def _factor(unit: str, dst: str, molar_mass: float | None = None) -> float:
    """conversion() guarded against unit strings that are not units at all."""
    if len(unit) > 64 or _SUSPECT_UNIT.search(re.sub(r"\{[^}]*\}", "", unit)):
        raise UnitError("not a unit")
    try:
        f = conversion(unit, dst, molar_mass)
    except UnitError:
        raise
    except (ValueError, TypeError, ArithmeticError, AttributeError, KeyError, RecursionError) as err:
        raise UnitError(type(err).__name__) from None
    if not math.isfinite(f) or f == 0:
        raise UnitError("not a finite factor")
    return f


def _convert_quantity(q: dict, field: str, dst: str, what: str, molar_mass: float | None = None) -> float:
    """A FHIR Quantity's value in ``dst`` (mg, mg/h, h): its UCUM code, else its unit."""
    value = _number(q, "value", f"{field}.value")
    cands = _unit_candidates(q)
    if not cands:
        raise _Skip(f"{field}.unit", f"has no unit ({what} needs {dst})")
    for _, unit in cands:
        try:
            return value * _factor(unit, dst, molar_mass)
        except UnitError:
            continue
    key, unit = cands[0]
    hint = "; tablets or a volume would need the product's strength, which is not read" if dst == "mg" else ""
    raise _Skip(f"{field}.{key}", f"unit {_show_unit(unit)} is not {what} (twinrx needs {dst}{hint})")


# --------------------------------------------------------------------------- files
def _files(path_or_paths) -> list[Path]:
    if isinstance(path_or_paths, (str, os.PathLike)):
        items = [path_or_paths]
    else:
        try:
            items = list(path_or_paths)
        except TypeError:
            raise IngestError(
                None, "-", "path", "is neither a path nor a list of paths", "pass a file or a list of files"
            ) from None
    out: list[Path] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise IngestError(None, "-", "path", "is not a path", "pass a file or a list of files")
        p = Path(item)
        if p.is_dir():  # a bulk-data export folder
            found = sorted(
                f for f in p.iterdir() if f.is_file() and re.search(r"\.(json|ndjson|jsonl)(\.gz)?$", f.name)
            )
            if not found:
                raise IngestError(
                    p, "-", "path", "holds no .json or .ndjson file", "point at the export folder"
                )
            out += found
        elif not p.exists():
            raise IngestError(p, "-", "path", "does not exist", "check the path")
        else:
            out.append(p)
    if not out:
        raise IngestError(None, "-", "path", "no file given", "pass at least one FHIR file")
    return out


def _read_text(path: Path) -> tuple[str, bool]:
    """The file's text, and whether it is NDJSON by its name."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise IngestError(
            path,
            "-",
            "path",
            f"cannot be read ({err.strerror or type(err).__name__})",
            "check the permissions",
        ) from None
    name = path.name.lower()
    if data[:2] == b"\x1f\x8b":  # gzip, as bulk-data exports are often delivered
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            raise IngestError(
                path, "-", "file", "is a damaged gzip file", "decompress it or export it again"
            ) from None
        name = name.removesuffix(".gz")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise IngestError(
            path,
            f"byte {err.start}",
            "encoding",
            "is not UTF-8 text",
            "FHIR JSON is UTF-8; export it as UTF-8",
        ) from None
    return text, name.endswith((".ndjson", ".jsonl"))


def _not_fhir(path, record: str) -> IngestError:
    return IngestError(
        path,
        record,
        "resourceType",
        "is not a FHIR resource or Bundle (a JSON object with a resourceType)",
        "export the data as a FHIR R4 Bundle (JSON) or as NDJSON, one resource per line",
    )


class _Reader:
    def __init__(
        self, extract: Extract, version: str, codes: Mapping[tuple[str, str], Quantity] | None = None
    ):
        self.ex = extract
        self.codes = dict(codes or {})  # (system, code) -> quantity, before LOINC
        self.versions = {"auto": ("R4B", "R5"), "R4": ("R4B",), "R4B": ("R4B",), "R5": ("R5",)}[version]
        self.records: list[_Record] = []
        self.unread: dict[tuple[str, str], int] = collections.Counter()
        self.patient_refs: dict[str, str] = {}
        self.medications: dict[str, dict] = {}
        self.series: dict[tuple[str, str], list[tuple]] = collections.defaultdict(list)
        self.quantities: dict[str, Quantity] = {}
        self.doses: dict[str, list[tuple]] = collections.defaultdict(list)
        self.given: dict[str, set[str]] = collections.defaultdict(set)

    def skip(self, rec: _Record, field: str, reason: str) -> None:
        self.ex.skip(rec.file, rec.label, field, reason)

    # ---------------------------------------------------------------- parsing
    def load(self, path: Path) -> None:
        text, ndjson = _read_text(path)
        if not text.strip():
            raise IngestError(path, "-", "file", "is empty", "export the data again")
        if not ndjson:
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as err:
                if err.msg != "Extra data":  # several JSON values in a row: NDJSON after all
                    raise IngestError(
                        path,
                        f"line {err.lineno}",
                        "-",
                        f"is not JSON ({err.msg})",
                        "export the data as a FHIR JSON Bundle or NDJSON",
                    ) from None
                ndjson = True
            except (ValueError, RecursionError):
                raise IngestError(path, "-", "-", "is not JSON that can be read", "export it again") from None
            else:
                if not isinstance(doc, dict):
                    raise _not_fhir(path, "document")
                self._document(path, doc, "", None, 0, top=True)
                return
        self._lines(path, text)

    def _lines(self, path: Path, text: str) -> None:
        good = 0
        for n, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 is JSON text
            if not line.strip():
                continue
            label = f"line {n}"
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as err:
                self.ex.skip(path, label, "-", f"is not JSON ({err.msg})")
                continue
            except (ValueError, RecursionError):
                self.ex.skip(path, label, "-", "is not JSON that can be read")
                continue
            if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
                self.ex.skip(
                    path, label, "resourceType", "is not a FHIR resource (a JSON object with a resourceType)"
                )
                continue
            good += 1
            self._document(path, doc, label, None, 0)
        if not good:
            raise IngestError(
                path,
                "-",
                "-",
                "holds no FHIR resource (no line is a JSON object with a resourceType)",
                "NDJSON has one FHIR resource per line",
            )

    def _document(self, path, doc: dict, label: str, full_url, depth: int, top: bool = False) -> None:
        rtype = doc.get("resourceType")
        if not isinstance(rtype, str) or not _is_resource_type(rtype):
            if top:
                raise _not_fhir(path, "document")
            self.ex.skip(path, label or "document", "resourceType", "is missing or not a FHIR resource type")
            return
        if rtype != "Bundle":
            self._resource(path, label or "resource", rtype, doc, full_url)
            return
        if depth >= _MAX_NESTING:
            self.ex.skip(path, label, "entry", "Bundles nested this deeply are not read")
            return
        entries = doc.get("entry", [])
        if not isinstance(entries, list):
            if top:
                raise IngestError(path, "Bundle", "entry", "is not a list", "Bundle.entry is a JSON array")
            self.ex.skip(path, label, "entry", "is not a list")
            return
        prefix = f"{label} > " if label else ""
        for i, entry in enumerate(entries, start=1):
            elabel = f"{prefix}entry {i}"
            res = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(res, dict):
                self.ex.skip(path, elabel, "resource", "has no resource (a JSON object)")
                continue
            furl = _str(entry, "fullUrl")
            self._document(path, res, elabel, furl, depth + 1)

    def _resource(self, path, label: str, rtype: str, raw: dict, full_url) -> None:
        rec = _Record(path, f"{label} ({rtype})", rtype, raw, full_url)
        if rtype not in _READ:
            self.unread[(str(path), rtype)] += 1
            return
        err = None
        for v in self.versions:
            cls = _model(v, rtype)
            if cls is None:
                continue
            try:
                cls.model_validate(_slim(v, rtype, raw))
            except RecursionError:
                self.skip(rec, "(resource)", "is nested too deeply to validate")
                return
            except ValueError as e:  # pydantic's ValidationError is a ValueError
                err = err or e
                continue
            except TypeError:
                err = err or ValueError("invalid")
                continue
            if raw.get("modifierExtension"):
                # FHIR: a modifier extension changes the meaning; one not understood forbids use.
                self.skip(
                    rec, "modifierExtension", "has a modifier extension, which twinrx does not understand"
                )
                return
            self.records.append(rec)
            return
        if err is None:
            self.skip(rec, "resourceType", f"{rtype} is not in FHIR {'/'.join(self.versions)}")
        elif hasattr(err, "errors"):
            field, reason = _validation_reason(err, raw)
            self.skip(rec, field, reason)
        else:
            self.skip(rec, "(resource)", "failed validation")

    # ---------------------------------------------------------------- resources
    def run(self) -> None:
        order = {"Patient": 0, "Medication": 0, "Observation": 1, "MedicationAdministration": 1}
        handlers = {
            "Patient": self._patient,
            "Medication": self._medication,
            "Observation": self._observation,
            "MedicationAdministration": self._administration,
            "MedicationRequest": self._request,
        }
        for stage in (0, 1, 2):
            for rec in self.records:
                if order.get(rec.rtype, 2) != stage:
                    continue
                try:
                    handlers[rec.rtype](rec)
                except _Skip as s:
                    self.skip(rec, s.field, s.reason)
        self._assemble()

    def _patient(self, rec: _Record) -> None:
        raw = rec.raw
        pid = _str(raw, "id")
        key = pid or rec.full_url
        if not key:
            raise _Skip("id", "a Patient without id or fullUrl cannot be referenced")
        for ref in (f"Patient/{pid}" if pid else None, rec.full_url):
            if ref:
                self.patient_refs.setdefault(ref, key)
        new = key not in self.ex.patients
        p = self.ex.patient(key)
        # A bad gender or birth date loses that value, not the patient and its records.
        sex = birth = None
        if "gender" in raw:
            sex = _str(raw, "gender")
            if sex not in _GENDERS:
                self.skip(rec, "gender", f"is not one of {', '.join(_GENDERS)}")
                sex = None
        if "birthDate" in raw:
            try:
                birth = _instant(raw["birthDate"], "birthDate")
            except _Skip as s:
                self.skip(rec, s.field, s.reason)
        if not new:
            old_sex = p.covariates["sex"].value if "sex" in p.covariates else None
            if (sex is not None and old_sex not in (None, sex)) or (
                birth is not None and p.birth_date is not None and birth != p.birth_date
            ):
                raise _Skip(
                    "id",
                    "another Patient with the same id has a different birthDate or gender; kept that one",
                )
        if sex is not None:
            p.covariates["sex"] = Covariate(sex, "", SOURCE)
        if birth is not None:
            p.birth_date = birth

    def _medication(self, rec: _Record) -> None:
        mid = _str(rec.raw, "id")
        for ref in (f"Medication/{mid}" if mid else None, rec.full_url):
            if ref:
                self.medications.setdefault(ref, rec.raw)

    def _subject(self, raw: dict) -> str:
        subject = raw.get("subject")
        if not isinstance(subject, dict):
            raise _Skip("subject", "has no subject")
        ref = _str(subject, "reference")
        if not ref:
            raise _Skip(
                "subject.reference", "has no reference to a Patient (a logical identifier is not enough)"
            )
        ref = ref.strip()
        key = self.patient_refs.get(ref)
        if key is None:
            tail = re.sub(r"/_history/[^/]*$", "", ref)
            m = re.search(r"(?:^|/)(Patient/[^/]+)$", tail)
            key = self.patient_refs.get(tail) or (self.patient_refs.get(m.group(1)) if m else None)
        if key is None:
            raise _Skip("subject.reference", "does not reference a Patient in the input")
        return key

    # ---------------------------------------------------------------- observations
    def _observation(self, rec: _Record) -> None:
        raw = rec.raw
        status = _str(raw, "status")
        if status in _SKIP_OBS_STATUS:
            raise _Skip("status", f"status is {status}")
        pid = self._subject(raw)
        t = self._observation_time(raw)
        parts: list[tuple[str, dict]] = []
        components = [c for c in _list(raw, "component") if isinstance(c, dict)]
        if not components or any(k.startswith("value") for k in raw) or "dataAbsentReason" in raw:
            parts.append(("", raw))
        parts += [(f"component[{i}].", c) for i, c in enumerate(components)]
        for prefix, part in parts:
            try:
                q, v, cens, lloq = self._value(part, prefix)
            except _Skip as s:
                self.skip(rec, s.field, s.reason)
                continue
            self.quantities[q.name] = q
            self.series[(pid, q.name)].append((t, v, cens, lloq))

    def _observation_time(self, raw: dict) -> np.datetime64:
        if "effectiveDateTime" in raw:
            return _instant(raw["effectiveDateTime"], "effectiveDateTime")
        start = _str(_obj(raw, "effectivePeriod"), "start")
        if start is not None:
            return _instant(start, "effectivePeriod.start")
        if "effectiveInstant" in raw:
            return _instant(raw["effectiveInstant"], "effectiveInstant")
        if "issued" in raw:
            return _instant(raw["issued"], "issued")
        raise _Skip(
            "effective[x]", "has no effectiveDateTime, effectivePeriod.start, effectiveInstant or issued"
        )

    def _value(self, part: dict, prefix: str) -> tuple[Quantity, float, int, float]:
        codings = [c for c in _list(_obj(part, "code"), "coding") if isinstance(c, dict)]
        own = [(c.get("system"), c["code"].strip()) for c in codings if isinstance(c.get("code"), str)]
        q = next((self.codes[k] for k in own if k in self.codes), None)
        codes = [
            c.get("code") for c in codings if c.get("system") == LOINC and isinstance(c.get("code"), str)
        ]
        if q is None and not codes:
            raise _Skip(
                f"{prefix}code.coding",
                "has no LOINC coding (system http://loinc.org) and no code given to read_fhir(codes=...)",
            )
        if q is None:
            q = next((by_loinc(c) for c in codes if by_loinc(c) is not None), None)
        if q is None:
            code = codes[0].strip()
            shown = f"LOINC {code}" if _LOINC_CODE.fullmatch(code) else "the LOINC code"
            raise _Skip(f"{prefix}code.coding", f"{shown} is not a quantity twinrx knows")
        vq = _obj(part, "valueQuantity")
        if vq is None:
            other = next((k for k in part if k.startswith("value") and _ELEMENT.fullmatch(k)), None)
            if other:
                raise _Skip(f"{prefix}{other}", f"is a {other}, not a valueQuantity")
            if "dataAbsentReason" in part:
                raise _Skip(f"{prefix}dataAbsentReason", "the value is absent (dataAbsentReason)")
            raise _Skip(f"{prefix}valueQuantity", "has no value")
        field = f"{prefix}valueQuantity"
        value = _number(vq, "value", f"{field}.value")
        cands = _unit_candidates(vq)
        if not cands:
            if q.unit != "1":
                raise _Skip(f"{field}.unit", f"has no unit ({q.name} is in {q.unit})")
            cands = [("unit", "1")]
        v = None
        for _, unit in cands:
            try:
                _factor(unit, q.unit, q.molar_mass)  # guards odd strings before to_canonical
                v = float(to_canonical(q, value, unit))
                break
            except UnitError:
                continue
        if v is None:
            key, unit = cands[0]
            raise _Skip(
                f"{field}.{key}", f"unit {_show_unit(unit)} cannot be converted to {q.unit} ({q.name})"
            )
        if not math.isfinite(v):
            raise _Skip(f"{field}.value", "is not finite in the canonical unit")
        if not q.low <= v <= q.high:
            raise _Skip(
                f"{field}.value",
                f"{v:.6g} {q.unit} is outside the plausible range [{q.low:g}, {q.high:g}] {q.unit} "
                f"for {q.name} (a unit slip?)",
            )
        comparator = vq.get("comparator")
        if comparator in ("<", "<="):
            return q, v, -1, v
        if comparator in (">", ">="):
            return q, v, 1, math.nan
        if comparator is not None:
            raise _Skip(f"{field}.comparator", "only <, <=, >= and > are read (ad is not a measured value)")
        return q, v, 0, math.nan

    # ---------------------------------------------------------------- medications
    def _drug(self, raw: dict) -> str:
        med = _obj(raw, "medication")  # R5: CodeableReference
        concept = _obj(raw, "medicationCodeableConcept") or _obj(med, "concept")
        field = "medicationCodeableConcept" if "medicationCodeableConcept" in raw else "medication.concept"
        if concept is None:
            ref = _obj(raw, "medicationReference") or _obj(med, "reference")
            field = "medicationReference" if "medicationReference" in raw else "medication.reference"
            target = _str(ref, "reference")
            if not target:
                raise _Skip("medication[x]", "has no medication code or reference")
            medication = None
            if target.startswith("#"):
                medication = next(
                    (
                        c
                        for c in _list(raw, "contained")
                        if isinstance(c, dict)
                        and c.get("resourceType") == "Medication"
                        and c.get("id") == target[1:]
                    ),
                    None,
                )
            else:
                medication = self.medications.get(target) or self.medications.get(
                    re.sub(r"^.*?(Medication/[^/]+)(/_history/[^/]*)?$", r"\1", target)
                )
            concept = _obj(medication, "code")
            if concept is None:
                raise _Skip(f"{field}.reference", "does not reference a Medication with a code in the input")
        codings = [c for c in _list(concept, "coding") if isinstance(c, dict)]
        for c in codings:
            code = _str(c, "code")
            if c.get("system") == RXNORM and code in RXNORM_DRUGS:
                return RXNORM_DRUGS[code]
        for c in sorted(codings, key=lambda c: c.get("system") != RXNORM):
            m = _WORD.search(_str(c, "display") or "")
            if m:
                return m.group(0).lower()
        raise _Skip(f"{field}.coding", "names no drug (no RxNorm code twinrx knows, no coding display)")

    @staticmethod
    def _route(dosage: dict | None) -> str:
        route = _obj(dosage, "route")
        codings = [c for c in _list(route, "coding") if isinstance(c, dict)]
        for c in codings:
            r = ROUTES.get((_str(c, "system"), _str(c, "code")))
            if r:
                return r
        for c in codings:
            display = _str(c, "display") or ""
            for pattern, r in _ROUTE_WORDS:
                if pattern.search(display):
                    return r
        return ""

    @staticmethod
    def _rate(holder: dict, prefix: str) -> float | None:
        """An infusion rate in mg/h from rateQuantity or rateRatio (None when absent)."""
        ratio = _obj(holder, "rateRatio")
        if _obj(holder, "rateQuantity") is not None:
            field = f"{prefix}rateQuantity"
            rate = _convert_quantity(holder["rateQuantity"], field, "mg/h", "a mass per time")
        elif ratio is not None:
            field = f"{prefix}rateRatio"
            num, den = _obj(ratio, "numerator"), _obj(ratio, "denominator")
            if num is None or den is None:
                raise _Skip(field, "needs a numerator and a denominator")
            mg = _convert_quantity(num, f"{field}.numerator", "mg", "a mass")
            h = _convert_quantity(den, f"{field}.denominator", "h", "a time")
            if h <= 0:
                raise _Skip(f"{field}.denominator", "must be a positive time")
            rate = mg / h
        else:
            return None
        if not (math.isfinite(rate) and rate > 0):
            raise _Skip(field, "must be a positive rate")
        return rate

    def _administration(self, rec: _Record) -> None:
        raw = rec.raw
        status = _str(raw, "status")
        if status in _SKIP_ADMIN_STATUS:
            raise _Skip("status", f"status is {status}")
        pid = self._subject(raw)
        drug = self._drug(raw)
        start = end = None
        for name in ("effective", "occurence", "occurrence"):  # R5 spells it 'occurence'
            if f"{name}DateTime" in raw:
                start = _instant(raw[f"{name}DateTime"], f"{name}DateTime")
                break
            period = _obj(raw, f"{name}Period")
            if period is not None:
                if "start" not in period:
                    raise _Skip(f"{name}Period.start", "has no start")
                start = _instant(period["start"], f"{name}Period.start")
                end = _instant(period["end"], f"{name}Period.end") if "end" in period else None
                break
        if start is None:
            raise _Skip("effective[x]", "has no effectiveDateTime or effectivePeriod")
        dosage = _obj(raw, "dosage")
        route = self._route(dosage)
        duration = 0.0
        if route == "iv" and end is not None and end > start:
            duration = _hours(start, end)
        try:
            rate = self._rate(dosage, "dosage.") if dosage else None
        except _Skip:
            if duration <= 0:
                raise
            rate = None  # the period gives the infusion's duration; a mL/h pump rate is not needed
        if _obj(dosage, "dose") is not None:
            amount = _convert_quantity(dosage["dose"], "dosage.dose", "mg", "a mass")
        elif rate is not None and duration > 0:
            amount = rate * duration
        else:
            raise _Skip("dosage.dose", "has no dose (and no rate with an infusion period)")
        if not (amount > 0 and math.isfinite(amount)):
            raise _Skip("dosage.dose.value", "must be a positive amount")
        if rate is None:
            rate = amount / duration if duration > 0 else 0.0
        self.doses[pid].append((start, amount, drug, route, rate, duration, 0.0, 0))
        self.given[pid].add(drug)

    def _request(self, rec: _Record) -> None:
        raw = rec.raw
        status, intent = _str(raw, "status"), _str(raw, "intent")
        if status not in _REQUEST_STATUS:
            shown = f"status {status}" if status in _REQUEST_STATUSES else "the status"
            raise _Skip("status", f"{shown} is not active or completed")
        if intent not in _REQUEST_INTENT:
            shown = f"intent {intent}" if intent in _REQUEST_INTENTS else "the intent"
            raise _Skip("intent", f"{shown} is not an order or a plan")
        pid = self._subject(raw)
        drug = self._drug(raw)
        if drug in self.given[pid]:
            raise _Skip(
                "medication[x]",
                "administrations present: this patient's MedicationAdministrations of the drug are used instead",
            )
        instructions = [d for d in _list(raw, "dosageInstruction") if isinstance(d, dict)]
        if not instructions:
            raise _Skip("dosageInstruction", "has no dosage instruction")
        for i, di in enumerate(instructions):
            try:
                self.doses[pid] += self._instruction(di, f"dosageInstruction[{i}].", drug)
            except _Skip as s:
                self.skip(rec, s.field, s.reason)

    def _instruction(self, di: dict, prefix: str, drug: str) -> list[tuple]:
        route = self._route(di)
        dar = [d for d in _list(di, "doseAndRate") if isinstance(d, dict)]
        j, holder = next(
            ((j, d) for j, d in enumerate(dar) if _obj(d, "doseQuantity") is not None), (0, None)
        )
        if holder is None:
            if any(_obj(d, "doseRange") is not None for d in dar):
                raise _Skip(f"{prefix}doseAndRate", "a dose range is not a dose")
            raise _Skip(f"{prefix}doseAndRate", "has no doseQuantity")
        where = f"{prefix}doseAndRate[{j}]."
        amount = _convert_quantity(holder["doseQuantity"], f"{where}doseQuantity", "mg", "a mass")
        if not (amount > 0 and math.isfinite(amount)):
            raise _Skip(f"{where}doseQuantity.value", "must be a positive amount")
        rate = self._rate(holder, where) or 0.0
        timing = _obj(di, "timing")
        repeat = _obj(timing, "repeat")
        events = [_instant(e, f"{prefix}timing.event[{k}]") for k, e in enumerate(_list(timing, "event"))]
        duration = 0.0
        if repeat is not None and "duration" in repeat and route == "iv":
            unit = _str(repeat, "durationUnit")
            d = _number(repeat, "duration", f"{prefix}timing.repeat.duration")
            if unit not in _HOURS:
                raise _Skip(f"{prefix}timing.repeat.durationUnit", "is not one of s, min, h, d, wk, mo, a")
            duration = d * _HOURS[unit]
            if not (duration > 0 and math.isfinite(duration)):
                raise _Skip(f"{prefix}timing.repeat.duration", "must be a positive time")
        if duration > 0 and rate == 0:
            rate = amount / duration
        if repeat is None or "period" not in repeat:
            if not events:
                raise _Skip(f"{prefix}timing", "has neither a repeat period nor event times")
            return [(t, amount, drug, route, rate, duration, 0.0, 0) for t in events]
        rp = f"{prefix}timing.repeat."
        freq = _number(repeat, "frequency", f"{rp}frequency", required=False) or 1.0
        period = _number(repeat, "period", f"{rp}period")
        unit = _str(repeat, "periodUnit")
        if unit not in _HOURS:
            raise _Skip(f"{rp}periodUnit", "is not one of s, min, h, d, wk, mo, a")
        if not (freq >= 1 and period > 0):
            raise _Skip(f"{rp}period", "frequency and period must be positive")
        ii = period * _HOURS[unit] / freq
        if not (math.isfinite(ii) and ii > 0):
            raise _Skip(f"{rp}period", "gives no usable dosing interval")
        bounds = _obj(repeat, "boundsPeriod")
        if bounds is not None and "start" in bounds:
            start = _instant(bounds["start"], f"{rp}boundsPeriod.start")
        elif events:
            start = events[0]
        else:
            raise _Skip(
                f"{rp}boundsPeriod.start", "has no first dose time (boundsPeriod.start or timing.event)"
            )
        # n, the number of doses, as a float first: a tiny interval must not overflow.
        if "count" in repeat:
            field = f"{rp}count"
            n = _number(repeat, "count", field)
            if n != math.floor(n):
                raise _Skip(field, "must be a whole number")
        elif bounds is not None and "end" in bounds:
            field = f"{rp}boundsPeriod.end"
            end_text = bounds["end"]
            span = _hours(start, _instant(end_text, field))
            if isinstance(end_text, str) and "T" not in end_text:  # a date: the period runs to its end
                n = _whole((span + _HOURS["d"]) / ii - 1e-9, math.ceil)
            else:  # doses at start + k*ii up to and including the end
                n = _whole(span / ii + 1e-9, math.floor) + 1.0
        elif _obj(repeat, "boundsDuration") is not None:
            field = f"{rp}boundsDuration"
            span = _convert_quantity(repeat["boundsDuration"], field, "h", "a time")
            n = _whole(span / ii - 1e-9, math.ceil)
        else:
            raise _Skip(
                f"{prefix}timing.repeat",
                "has no count, boundsPeriod.end or boundsDuration: the number of doses is unknown",
            )
        if not n >= 1:
            raise _Skip(field, "gives no dose after the first dose time")
        if n > _MAX_DOSES:
            raise _Skip(field, f"gives more than {_MAX_DOSES} doses")
        n = int(n)
        return [(start, amount, drug, route, rate, duration, ii, n - 1)]

    # ---------------------------------------------------------------- output
    def _assemble(self) -> None:
        for (pid, name), rows in self.series.items():
            q = self.quantities[name]
            t = np.array([r[0] for r in rows], dtype="datetime64[ns]")
            self.ex.patient(pid).series.append(
                RawSeries(
                    name,
                    q.unit,
                    t,
                    np.array([r[1] for r in rows], np.float64),
                    censored=np.array([r[2] for r in rows], np.int8),
                    lloq=np.array([r[3] for r in rows], np.float64),
                    kind=q.kind,
                    source=SOURCE,
                )
            )
        for pid, rows in self.doses.items():
            if not rows:
                continue
            cols = list(zip(*rows))
            self.ex.patient(pid).doses.append(
                RawDoses(
                    time=np.array(cols[0], dtype="datetime64[ns]"),
                    amount=np.array(cols[1], np.float64),
                    drug=list(cols[2]),
                    route=list(cols[3]),
                    rate=np.array(cols[4], np.float64),
                    duration=np.array(cols[5], np.float64),
                    ii=np.array(cols[6], np.float64),
                    addl=np.array(cols[7], np.int64),
                )
            )
        for (path, rtype), n in self.unread.items():
            self.ex.skip(
                path,
                f"{n} resource{'s' if n != 1 else ''}",
                "resourceType",
                f"resource type {rtype} is not read",
            )


def read_fhir(path_or_paths, *, version: str = "auto", codes: Mapping[str, str] | None = None) -> Extract:
    """Read FHIR Patients, Observations and medication records into an ``Extract``.

    Parameters
    ----------
    path_or_paths
        A FHIR JSON file (a Bundle of any type, or a single resource), an NDJSON file (one
        resource or Bundle per line, as in a bulk-data export; ``.ndjson``/``.jsonl``, gzip
        allowed), a folder of such files, or a list of them. References are resolved across
        all the files given (``Patient/<id>``, absolute URLs ending in it, and ``urn:uuid:``
        fullUrls within a Bundle).
    version
        ``"R4"`` or ``"R4B"`` (both validated with the R4B models of ``fhir.resources``,
        which read R4 unchanged for these resources), ``"R5"``, or ``"auto"`` (the default:
        R4B first, then R5, per resource).
    codes
        A laboratory's own codes for what has no LOINC code (or to override one):
        ``{"SYSTEM|CODE": quantity}``, e.g. ``{"https://lab.example.org/codes|SWARF":
        "s-warfarin"}`` (a quantity or drug level of :mod:`twinrx.data.quantities`). These
        are looked up before LOINC.

    Returns
    -------
    Extract
        ``source="fhir"``; per Patient id a RawPatient with ``birth_date``, the covariate
        ``sex``, series in canonical units (``censored`` -1 below the limit of quantification
        with ``lloq`` = the limit, +1 above) and doses (mg, absolute UTC times, route
        ``oral``/``iv``/``sc``/``im`` or ``""`` when not coded, ``rate`` mg/h, ``duration`` h,
        and ``ii``/``addl`` for MedicationRequest regimens). Nothing else about the person
        is kept. ``skipped`` lists each resource (or part of one) left out, and one line per
        resource type that is not read ("12 resources", "resource type Encounter is not read").

    Raises
    ------
    IngestError
        For a file that cannot be read at all (missing, not UTF-8, not JSON, not a FHIR
        resource or Bundle, NDJSON without a single resource). It names the file, the record
        and the field, never a value from the file. No other exception escapes.
    ValueError
        For a ``version`` other than auto, R4, R4B or R5 (a programming error, not bad data).

    Examples
    --------
    >>> ex = read_fhir("bundle.json")  # doctest: +SKIP
    >>> sorted(ex.patients["pt-1"].covariates)  # doctest: +SKIP
    ['sex']
    """
    v = str(version).upper() if str(version).lower() != "auto" else "auto"
    if v not in FHIR_VERSIONS:
        raise ValueError(f"version {version!r} is not one of {', '.join(FHIR_VERSIONS)}")
    mapped = {}
    for key, name in (codes or {}).items():
        system, sep, code = str(key).rpartition("|")
        if not sep or not system or not code.strip():
            raise ValueError(
                f"codes: {key!r} must be 'SYSTEM|CODE', e.g. 'https://lab.example.org/codes|SWARF'"
            )
        try:
            mapped[(system, code.strip())] = quantity(name)
        except KeyError as e:
            raise ValueError(f"codes: {key!r} -> {e.args[0]}") from None
    ex = Extract(SOURCE)
    reader = _Reader(ex, v, mapped)
    files: list[Path] = []
    try:
        files = _files(path_or_paths)
        for f in files:
            reader.load(f)
        reader.run()
    except IngestError:
        raise
    except Exception as err:  # the guarantee: nothing but IngestError leaves a reader
        raise IngestError(
            files[0] if len(files) == 1 else None,
            "-",
            "-",
            f"could not be read: unexpected {type(err).__name__} (a twinrx bug; please report it)",
            "check that the file is FHIR JSON or NDJSON",
        ) from None
    return ex
