"""FHIR reader: values vs the numbers the generator planted, censoring, doses and regimens,
what is skipped and why, R4/R4B/R5, NDJSON = Bundle, speed, and fuzzing (random bytes and
structurally mutated Bundles give an Extract or IngestError, and never leak an identifier)."""

from __future__ import annotations

import copy
import gzip
import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth.fhir import EXPECTED, P1, P2, P3, PATIENTS, PHI, resources, write_fhir

from twinrx.data import ingest
from twinrx.data._raw import Extract, IngestError
from twinrx.data.fhir import read_fhir

FUZZ_EXAMPLES = 60  # per fuzz test (two of them)
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_fhir(tmp_path_factory.mktemp("fhir"))


@pytest.fixture(scope="module")
def bundle(files) -> Extract:
    return read_fhir(files["bundle"])


@pytest.fixture(scope="module")
def ndjson(files) -> Extract:
    return read_fhir(files["ndjson"])


def _series(ex: Extract, pid: str, name: str):
    found = [s for s in ex.patients[pid].series if s.name == name]
    assert len(found) == 1, f"{pid} {name}: {len(found)} series"
    return found[0]


def _doses(ex: Extract, pid: str) -> list[dict]:
    rows = []
    for d in ex.patients[pid].doses:
        for i in range(d.time.size):
            rows.append(
                dict(
                    time=str(d.time[i]),
                    amount=float(d.amount[i]),
                    drug=d.drug[i],
                    route=d.route[i],
                    rate=float(d.rate[i]),
                    duration=float(d.duration[i]),
                    ii=float(d.ii[i]),
                    addl=int(d.addl[i]),
                )
            )
    return sorted(rows, key=lambda r: (r["time"], r["drug"]))


def _texts(ex: Extract) -> list[str]:
    """Every string a reader lets through, except the source ids (the lead replaces them)."""
    out = [str(s) for s in ex.skipped]
    for p in ex.patients.values():
        out += [f"{k}={c.value}|{c.unit}|{c.source}" for k, c in p.covariates.items()]
        out += [f"{s.name}|{s.unit}|{s.kind}|{s.source}" for s in p.series]
        out += [f"{d.drug}|{d.route}" for d in p.doses]
    return out


def _assert_no_phi(texts, what=""):
    for text in texts:
        for phi in PHI:
            assert phi not in text, f"{what}: identifying string {phi!r} in {text!r}"


# ------------------------------------------------------------------ content
def test_patients_keep_only_sex_and_birth_date(bundle):
    assert sorted(bundle.patients) == sorted(PATIENTS)
    for pid in PATIENTS:
        p = bundle.patients[pid]
        assert set(p.covariates) == {"sex"}
        assert p.covariates["sex"].value == EXPECTED["sex"][pid]
        assert p.covariates["sex"].source == "fhir"
        assert p.birth_date.dtype == np.dtype("datetime64[ns]")
        assert str(p.birth_date) == EXPECTED["birth_date"][pid]
    assert not bundle.patients[P1].phenotypes


def test_values_and_units_match_the_planted_numbers(bundle):
    got = {(pid, s.name) for pid, p in bundle.patients.items() for s in p.series}
    assert got == set(EXPECTED["series"])
    for (pid, name), rows in EXPECTED["series"].items():
        s = _series(bundle, pid, name)
        assert s.unit == EXPECTED["units"][name]
        assert s.kind == EXPECTED["kinds"].get(name, "concentration")
        assert s.source == "fhir"
        assert s.time.dtype == np.dtype("datetime64[ns]")
        order = np.argsort(s.time, kind="stable")
        want = sorted(rows)
        assert [str(t) for t in s.time[order]] == [r[0] for r in want]
        np.testing.assert_allclose(s.value[order], [r[1] for r in want], rtol=1e-9, atol=0)
        assert s.censored[order].tolist() == [r[2] for r in want]


def test_censoring_below_and_above_the_limits(bundle):
    v = _series(bundle, P1, "vancomycin")
    below = v.censored == -1
    assert below.sum() == 1
    assert v.value[below][0] == 2.0 and v.lloq[below][0] == 2.0  # value = lloq = the limit
    assert np.isnan(v.lloq[~below]).all()  # referenceRange is not an LLOQ
    g = _series(bundle, P2, "glucose")
    assert g.censored.tolist().count(1) == 1
    assert g.value[g.censored == 1][0] == 600.0
    assert np.isnan(g.lloq).all()


def test_doses_from_administrations_and_requests(bundle):
    for pid in PATIENTS:
        got, want = _doses(bundle, pid), sorted(EXPECTED["doses"][pid], key=lambda r: (r["time"], r["drug"]))
        assert len(got) == len(want), pid
        for g, w in zip(got, want):
            for key in ("time", "drug", "route", "addl"):
                assert g[key] == w[key], (pid, key, g, w)
            for key in ("amount", "rate", "duration", "ii"):
                np.testing.assert_allclose(g[key], w[key], rtol=1e-9, atol=0, err_msg=f"{pid} {key}")
    assert all(d.time.dtype == np.dtype("datetime64[ns]") for p in bundle.patients.values() for d in p.doses)


def test_every_bad_resource_is_listed_with_file_record_and_field(bundle, ndjson):
    for ex, fname, kind in ((bundle, "bundle.json", "entry"), (ndjson, "bundle.ndjson", "line")):
        for record, field, words in EXPECTED["skipped"]:
            hits = [s for s in ex.skipped if s.record == f"{kind} {record}" and s.field == field]
            assert hits, f"{fname}: nothing skipped at {kind} {record} field {field}"
            assert any(words in s.reason for s in hits), (words, [s.reason for s in hits])
            assert all(s.file == fname for s in hits)
        expected_records = {f"{kind} {r}" for r, _, _ in EXPECTED["skipped"]}
        unexpected = [
            s for s in ex.skipped if s.record not in expected_records and not s.record.endswith("resource")
        ]
        assert not unexpected, unexpected


def test_types_that_are_not_read_are_counted_once_per_type(bundle):
    counted = {s.reason: s for s in bundle.skipped if s.field == "resourceType"}
    for rtype, n in EXPECTED["not_read"].items():
        s = counted[f"resource type {rtype} is not read"]
        assert s.record == f"{n} resource{'s' if n != 1 else ''}"
        assert s.file == "bundle.json"
    assert len(counted) == len(EXPECTED["not_read"])


def test_nothing_identifying_survives(bundle, ndjson):
    _assert_no_phi(_texts(bundle), "bundle")
    _assert_no_phi(_texts(ndjson), "ndjson")
    # and through ingest into the stored layout (the lead's store scan checks the same)
    cohort = ingest(bundle, seed=1)
    ds = cohort.to_dataset()
    dumped = [str(ds.attrs)] + [str(ds[v].values.tolist()) for v in ds.variables]
    _assert_no_phi(dumped, "dataset")


def test_ingest_gives_age_and_hours_after_the_first_dose(bundle):
    cohort = ingest(bundle, seed=3)
    by_first_dose = {round(float(p.covariates["age"].value), 1) for p in cohort}
    # Jane: born 1957-04-13, first dose 2024-03-04 -> 66.9 y; Robert: 1949-11-02 to 2024-04-10
    # -> 74.4 y; Ana: 1988-07-30 to 2024-05-01 -> 35.8 y
    assert by_first_dose == {66.9, 74.4, 35.8}
    jane = next(p for p in cohort if p.covariates["age"].value == 66.9)
    # first vancomycin infusion 08:00+01:00 on 2024-03-04; trough at 07:55+01:00 on 2024-03-05
    assert jane.dosing.time[0] == 0.0
    np.testing.assert_allclose(jane.series["vancomycin"].time[0], 23 + 55 / 60, rtol=1e-12)


def test_ndjson_equals_bundle(bundle, ndjson):
    assert sorted(bundle.patients) == sorted(ndjson.patients)
    for pid in bundle.patients:
        a, b = bundle.patients[pid], ndjson.patients[pid]
        assert a.covariates == b.covariates and a.birth_date == b.birth_date
        sa = {s.name: s for s in a.series}
        sb = {s.name: s for s in b.series}
        assert sa.keys() == sb.keys()
        for k in sa:
            for attr in ("time", "value", "censored", "lloq"):
                np.testing.assert_array_equal(getattr(sa[k], attr), getattr(sb[k], attr))
        assert _doses(bundle, pid) == _doses(ndjson, pid)

    def norm(ex):
        return [(s.record.replace("entry", "#").replace("line", "#"), s.field, s.reason) for s in ex.skipped]

    assert norm(bundle) == norm(ndjson)


def test_several_files_and_a_folder_resolve_references_across_files(files, tmp_path):
    res = resources(0)
    (tmp_path / "Patient.ndjson").write_text(
        "".join(json.dumps(r) + "\n" for r in res if r["resourceType"] == "Patient" and r["id"] != P3)
    )
    observations = "".join(
        json.dumps(r) + "\n" for r in res if r["resourceType"] == "Observation" and r["id"][:2] == "o2"
    )
    # bulk exports are often gzipped
    (tmp_path / "Observation.ndjson.gz").write_bytes(gzip.compress(observations.encode()))
    ex = read_fhir(tmp_path)
    assert sorted(ex.patients) == sorted([P1, P2])
    assert {s.name for s in ex.patients[P2].series} == {n for p, n in EXPECTED["series"] if p == P2}
    both = read_fhir([tmp_path / "Patient.ndjson", tmp_path / "Observation.ndjson.gz"])
    assert sorted(both.patients) == sorted(ex.patients)


# ------------------------------------------------------------------ versions
def _r5_admin(pid=P2):
    return {
        "resourceType": "MedicationAdministration",
        "id": "ma-r5",
        "status": "completed",
        "medication": {"concept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                               "code": "4413", "display": "gentamicin"}]}},
        "subject": {"reference": f"Patient/{pid}"},
        "occurencePeriod": {"start": "2024-04-11T10:00:00Z", "end": "2024-04-11T11:00:00Z"},
        "dosage": {"route": {"coding": [{"system": "http://snomed.info/sct", "code": "47625008"}]},
                   "dose": {"value": 320, "unit": "mg", "system": UCUM, "code": "mg"}},
    }  # fmt: skip


def _write_bundle(path: Path, res: list[dict]) -> Path:
    path.write_text(
        json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in res]})
    )
    return path


def test_r4_and_r4b_read_the_same_and_r5_resources_need_auto_or_r5(files, bundle, tmp_path):
    for version in ("R4", "R4B", "r4b"):
        ex = read_fhir(files["bundle"], version=version)
        assert [str(s) for s in ex.skipped] == [str(s) for s in bundle.skipped]
        assert _doses(ex, P1) == _doses(bundle, P1)
    patient = next(r for r in resources(0) if r["id"] == P2)
    path = _write_bundle(tmp_path / "r5.json", [patient, _r5_admin()])
    for version in ("auto", "R5"):
        rows = _doses(read_fhir(path, version=version), P2)
        assert rows == [dict(time="2024-04-11T10:00:00.000000000", amount=320.0, drug="gentamicin", route="iv",
                             rate=320.0, duration=1.0, ii=0.0, addl=0)]  # fmt: skip
    r4 = read_fhir(path, version="R4")
    assert not r4.patients[P2].doses
    (skip,) = [s for s in r4.skipped if "MedicationAdministration" in s.record]
    assert skip.field in ("medication", "occurencePeriod") and "extra_forbidden" in skip.reason
    # an R4 MedicationAdministration is not R5 (effective[x] became occurence[x])
    r5 = read_fhir(files["bundle"], version="R5")
    assert not any(d for d in r5.patients[P1].doses)
    with pytest.raises(ValueError, match="version"):
        read_fhir(files["bundle"], version="STU3")


# ------------------------------------------------------------------ edge cases
def _obs(value_quantity, code="2160-0", subject="Patient/p", **extra):
    r = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": subject},
        "effectiveDateTime": "2024-01-02T08:00:00Z",
    }
    if value_quantity is not None:
        r["valueQuantity"] = value_quantity
    r.update(extra)
    return r


def test_edge_cases(tmp_path):
    res = [
        {"resourceType": "Patient", "gender": "female", "birthDate": "1970"},  # no id: keyed by fullUrl
        {"resourceType": "Patient", "id": "p", "gender": "unknown"},
        _obs({"value": 1.0, "unit": "mg/dL"}, subject="urn:uuid:11111111-2222-4333-8444-555555555555"),
        _obs({"value": 88.0, "unit": "umol/L", "comparator": "<="}, code="14682-9"),
        _obs(None, valueString="see note"),
        _obs(None, dataAbsentReason={"text": "not done"}),
        _obs({"value": 1.0, "unit": "mg/dL", "comparator": "ad"}),
        _obs({"value": 1.0}),  # no unit for creatinine
        _obs({"value": 1.0, "unit": "mg/dL"}, code="xyz"),  # not a LOINC-shaped code
        _obs({"value": 1.0, "unit": "mg/dL"}, modifierExtension=[{"url": "http://example.org/x", "valueBoolean": True}]),
        _obs({"value": 1.0, "unit": "mg/dL"}, subject="Patient/p", status="preliminary", effectiveDateTime="2024-01-03"),
        {
            "resourceType": "MedicationAdministration",
            "status": "completed",
            "contained": [{"resourceType": "Medication", "id": "m1",
                           "code": {"coding": [{"display": "Vancomycin 500 MG Injection"}]}}],
            "medicationReference": {"reference": "#m1"},
            "subject": {"reference": "Patient/p"},
            "effectivePeriod": {"start": "2024-01-02T08:00:00Z", "end": "2024-01-02T09:00:00Z"},
            "dosage": {"route": {"coding": [{"display": "Intravenous (qualifier value)"}]},
                       "rateRatio": {"numerator": {"value": 500, "code": "mg", "system": UCUM},
                                     "denominator": {"value": 1, "code": "h", "system": UCUM}}},
        },
        {
            "resourceType": "MedicationRequest",
            "status": "completed",
            "intent": "plan",
            "medicationCodeableConcept": {"coding": [{"display": "Digoxin 0.125 MG Oral Tablet"}]},
            "subject": {"reference": "Patient/p"},
            "dosageInstruction": [
                {"timing": {"repeat": {"frequency": 1, "period": 24, "periodUnit": "h",
                                       "boundsPeriod": {"start": "2024-01-01T08:00:00Z", "end": "2024-01-04T08:00:00Z"}}},
                 "doseAndRate": [{"doseQuantity": {"value": 125, "code": "ug", "system": UCUM}}]},
                {"timing": {"repeat": {"frequency": 1, "period": 24, "periodUnit": "h",
                                       "boundsPeriod": {"start": "2024-01-05T08:00:00Z"}}},
                 "doseAndRate": [{"doseQuantity": {"value": 125, "code": "ug", "system": UCUM}}]},
            ],
        },
    ]  # fmt: skip
    entries = [{"resource": r} for r in res]
    entries[0]["fullUrl"] = "urn:uuid:11111111-2222-4333-8444-555555555555"
    path = tmp_path / "edge.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
    ex = read_fhir(path)
    uuid_key = "urn:uuid:11111111-2222-4333-8444-555555555555"
    assert sorted(ex.patients) == sorted(["p", uuid_key])
    assert ex.patients[uuid_key].birth_date == np.datetime64("1970-01-01", "ns")
    assert _series(ex, uuid_key, "creatinine").value.tolist() == [1.0]
    scr = _series(ex, "p", "creatinine")
    order = np.argsort(scr.time)
    np.testing.assert_allclose(scr.value[order], [88.0 * 113.12 / 10_000, 1.0], rtol=1e-12)
    assert scr.censored[order].tolist() == [-1, 0]
    reasons = {s.record.split()[1]: (s.field, s.reason) for s in ex.skipped}
    assert reasons["5"] == ("valueString", "is a valueString, not a valueQuantity")
    assert reasons["6"][0] == "dataAbsentReason"
    assert reasons["7"][0] == "valueQuantity.comparator"
    assert reasons["8"] == ("valueQuantity.unit", "has no unit (creatinine is in mg/dL)")
    assert reasons["9"] == ("code.coding", "the LOINC code is not a quantity twinrx knows")
    assert reasons["10"][0] == "modifierExtension"
    rows = _doses(ex, "p")
    assert [r["drug"] for r in rows] == ["digoxin", "vancomycin"]
    dig = rows[0]
    assert (dig["amount"], dig["ii"], dig["addl"], dig["route"]) == (0.125, 24.0, 3, "")  # 4 doses to the end
    vanc = rows[1]
    assert (vanc["amount"], vanc["rate"], vanc["duration"], vanc["route"]) == (500.0, 500.0, 1.0, "iv")
    (open_ended,) = [s for s in ex.skipped if s.field == "dosageInstruction[1].timing.repeat"]
    assert "number of doses is unknown" in open_ended.reason


@pytest.mark.parametrize(
    "content, name, field",
    [
        (b"\xff\xfe\x00garbage", "x.json", "encoding"),
        (b"{not json", "x.json", "-"),
        (b"[1, 2, 3]", "x.json", "resourceType"),
        (b'{"hello": "world"}', "x.json", "resourceType"),
        (b'{"resourceType": "Jane Q. Synthetic"}', "x.json", "resourceType"),
        (b'{"resourceType": "Bundle", "entry": {"a": 1}}', "x.json", "entry"),
        (b"   \n", "x.json", "file"),
        (b"not json\nstill not\n", "x.ndjson", "-"),
        (b"\x1f\x8b\x08\x00broken", "x.ndjson.gz", "file"),
    ],
)
def test_unreadable_files_raise_ingest_error_naming_the_file(tmp_path, content, name, field):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(IngestError) as info:
        read_fhir(path)
    assert info.value.file == name and info.value.field == field
    assert "Synthetic" not in str(info.value) and "world" not in str(info.value)
    with pytest.raises(IngestError, match="does not exist"):
        read_fhir(tmp_path / "missing.json")


def test_a_bad_ndjson_line_is_skipped_and_the_rest_read(files, tmp_path):
    lines = files["ndjson"].read_text().splitlines()
    lines.insert(3, '{"resourceType": "Observation", "status": ')  # truncated
    lines.insert(5, '["MRN-00042917"]')
    path = tmp_path / "partly.ndjson"
    path.write_text("\n".join(lines) + "\n")
    ex = read_fhir(path)
    bad = [s for s in ex.skipped if s.record in ("line 4", "line 6")]
    assert [s.record for s in bad] == ["line 4", "line 6"]
    assert sorted(ex.patients) == sorted(PATIENTS)
    _assert_no_phi(_texts(ex))


def test_ten_thousand_observations_read_in_a_few_seconds(tmp_path):
    res = resources(0)
    patient = next(r for r in res if r["id"] == P1)
    kinds = [r for r in res if r["id"] in ("o-scr-1", "o-wt-1", "o-glu-1", "o-hr-1", "o-vanc-1")]
    entries = [{"resource": patient}]
    for i in range(10_000):
        o = copy.deepcopy(kinds[i % len(kinds)])
        o["id"] = f"x{i}"
        entries.append({"resource": o})
    path = _write_bundle(tmp_path / "big.json", [e["resource"] for e in entries])
    t0 = time.perf_counter()
    ex = read_fhir(path)
    elapsed = time.perf_counter() - t0
    assert sum(s.value.size for s in ex.patients[P1].series) == 10_000 and not ex.skipped
    assert elapsed < 10.0, f"{elapsed:.1f} s for 10,000 Observations"


# ------------------------------------------------------------------ fuzzing
@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _check(path: Path):
    try:
        ex = read_fhir(path)
    except IngestError as err:
        assert "twinrx bug" not in str(err), str(err)
        _assert_no_phi([str(err)], "IngestError")
        return
    assert isinstance(ex, Extract)
    _assert_no_phi(_texts(ex), "Extract")


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=400), st.text(max_size=400).map(str.encode)), ndjson=st.booleans())
def test_fuzz_random_bytes(fuzz_dir, data, ndjson):
    path = fuzz_dir / ("random.ndjson" if ndjson else "random.json")
    path.write_bytes(data)
    _check(path)


_BASE = json.loads(
    json.dumps(
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources(0)]}
    )
)
for _e in _BASE["entry"]:
    _e["resource"].pop("_fullUrl", None)
    if str(_e["resource"].get("subject", {}).get("reference", "")).startswith("urn:uuid:"):
        _e["resource"]["subject"]["reference"] = f"Patient/{P3}"


def _paths(node, path=()):
    """Every (container path, key) in a JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path + (k,)
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield path + (i,)
            yield from _paths(v, path + (i,))


_ALL_PATHS = list(_paths(_BASE))
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=2),
)
_mutation = st.tuples(st.sampled_from(["delete", "replace", "insert"]), st.integers(0, len(_ALL_PATHS) - 1), _values,
                      st.text(min_size=1, max_size=12))  # fmt: skip


def _mutate(doc, op, index, value, new_key):
    path = _ALL_PATHS[index]
    node = doc
    for p in path[:-1]:
        try:
            node = node[p]
        except (KeyError, IndexError, TypeError):
            return  # an earlier mutation removed it
    key = path[-1]
    if isinstance(node, dict) and (key in node or op == "insert"):
        if op == "delete":
            node.pop(key, None)
        elif op == "replace":
            node[key] = value
        else:
            node[new_key] = value
    elif isinstance(node, list) and isinstance(key, int) and key < len(node):
        if op == "delete":
            node.pop(key)
        elif op == "replace":
            node[key] = value
        else:
            node.insert(key, value)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(_mutation, min_size=1, max_size=8), ndjson=st.booleans())
def test_fuzz_mutated_bundles(fuzz_dir, mutations, ndjson):
    doc = copy.deepcopy(_BASE)
    for m in mutations:
        _mutate(doc, *m)
    if ndjson:
        entries = doc.get("entry") if isinstance(doc, dict) else None
        lines = (
            [json.dumps(e.get("resource") if isinstance(e, dict) else e) for e in entries]
            if isinstance(entries, list)
            else [json.dumps(doc)]
        )
        path = fuzz_dir / "mutated.ndjson"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        path = fuzz_dir / "mutated.json"
        path.write_text(json.dumps(doc), encoding="utf-8")
    _check(path)


def test_a_laboratorys_own_code_maps_to_a_quantity(tmp_path):
    """S-warfarin has no LOINC code: a laboratory's code is mapped with codes=; the value is
    converted to the quantity's unit (ug/mL -> mg/L, umol/L by the molar mass); without the
    map the observation is skipped, saying how to map it."""
    local = "https://lab.example.org/codes"

    def swarf(value, unit):
        o = _obs({"value": value, "unit": unit, "system": UCUM, "code": unit})
        o["code"] = {"coding": [{"system": local, "code": "SWARF", "display": "S-warfarin, plasma"}]}
        return o

    path = _write_bundle(
        tmp_path / "b.json",
        [
            {"resourceType": "Patient", "id": "p", "gender": "female"},
            swarf(0.42, "ug/mL"),
            swarf(1.0, "umol/L"),
        ],
    )
    ex = read_fhir(path, codes={f"{local}|SWARF": "s-warfarin"})
    s = _series(ex, "p", "s-warfarin")
    assert s.unit == "mg/L"
    np.testing.assert_allclose(sorted(s.value), [0.308, 0.42], rtol=1e-3)  # 1 umol/L x 308.3 g/mol
    plain = read_fhir(path)
    assert not plain.patients["p"].series
    assert any("codes=" in sk.reason for sk in plain.skipped)
    with pytest.raises(ValueError, match="SYSTEM|CODE"):
        read_fhir(path, codes={"SWARF": "s-warfarin"})
    with pytest.raises(ValueError, match="unknown quantity 'swarfarin'"):
        read_fhir(path, codes={f"{local}|SWARF": "swarfarin"})
