"""The reader registry: one name per source format, one call per file, one ingest for all.

>>> from twinrx.data import read, ingest
>>> cohort = ingest([read("fhir", "bundle.json"), read("wearable", "export.xml", patient="pt-1")])

Every reader returns an ``Extract`` (``twinrx.data._raw``) and raises only ``DataError``
(``IngestError`` names the file, record and field).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Sequence

from ._raw import Extract, IngestError
from .ingest import ingest
from .patient import Cohort

__all__ = ["READERS", "read", "ingest_files"]

# format -> (module, function, what it reads)
READERS: dict[str, tuple[str, str, str]] = {
    "nonmem": ("nonmem", "read_nonmem_extract", "NONMEM CSV data set (DV, MDV, BLQ/LLOQ, covariates)"),
    "cdisc": ("cdisc", "read_cdisc", "CDISC SDTM DM/EX/PC/LB/VS and ADaM ADPPK (.xpt, .sas7bdat, .csv)"),
    "fhir": ("fhir", "read_fhir", "HL7 FHIR R4/R4B Bundle JSON or NDJSON"),
    "wearable": (
        "wearables",
        "read_wearable",
        "Apple Health export.xml/.zip, Open mHealth JSON, Dexcom Clarity CSV",
    ),
    "apple_health": ("wearables", "read_apple_health", "Apple Health export.xml or export.zip"),
    "openmhealth": ("wearables", "read_openmhealth", "Open mHealth JSON data points"),
    "cgm": ("wearables", "read_cgm_csv", "Dexcom Clarity CSV export"),
    "vcf": ("pgx", "read_vcf", "VCF genotypes at CPIC-defining positions"),
    "genotypes": ("pgx", "read_genotypes", "diplotype table (patient, gene, diplotype)"),
}


def read(fmt: str, source, **options) -> Extract:
    """Read one source with the reader for ``fmt`` (a key of ``READERS``)."""
    if fmt not in READERS:
        raise IngestError(
            source, "-", "format", f"unknown format {fmt!r}", f"use one of {', '.join(READERS)}"
        )
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise IngestError(source, "-", "path", "the file does not exist", "check the path")
    module, func, _ = READERS[fmt]
    return getattr(importlib.import_module(f"{__package__}.{module}"), func)(source, **options)


def ingest_files(
    *,
    nonmem: str | os.PathLike | None = None,
    nonmem_options: dict | None = None,
    cdisc: Sequence[str | os.PathLike] = (),
    fhir: Sequence[str | os.PathLike] = (),
    fhir_codes: dict[str, str] | None = None,
    wearables: Iterable[tuple[str | None, str | os.PathLike]] = (),
    vcf: str | os.PathLike | None = None,
    genotypes: str | os.PathLike | None = None,
    seed: int | None = None,
    linkage: str | os.PathLike | None = None,
    keep_ids: bool = False,
) -> Cohort:
    """Read every source and merge them per patient (``twinrx ingest``).

    ``fhir_codes`` maps a laboratory's own codes to quantities (``read_fhir(codes=...)``).
    ``wearables`` are ``(source_id, path)`` pairs; a wearable export carries no patient id, so
    ``source_id`` says whose it is (the id used in the other sources). ``None`` is allowed
    when the other sources hold exactly one patient.
    """
    extracts: list[Extract] = []
    if nonmem is not None:
        extracts.append(read("nonmem", nonmem, **(nonmem_options or {})))
    if cdisc:
        extracts.append(read("cdisc", list(cdisc) if len(cdisc) > 1 else cdisc[0]))
    if fhir:  # one call: a bulk export split by resource type resolves references across files
        fhir = list(fhir)
        for f in fhir:
            if not os.path.exists(f):
                raise IngestError(f, "-", "path", "the file does not exist", "check the path")
        from .fhir import read_fhir

        extracts.append(read_fhir(fhir if len(fhir) > 1 else fhir[0], codes=fhir_codes))
    if vcf is not None:
        extracts.append(read("vcf", vcf))
    if genotypes is not None:
        extracts.append(read("genotypes", genotypes))
    known = list(dict.fromkeys(sid for ex in extracts for sid in ex.patients))
    for sid, path in wearables:
        if sid is None:
            if len(known) != 1:
                raise IngestError(
                    path,
                    "-",
                    "patient",
                    f"a wearable export carries no patient id and the other sources hold {len(known)} patients",
                    "say whose it is: --wearable ID=FILE, with ID as in the other sources",
                )
            sid = known[0]
        elif known and sid not in known:
            raise IngestError(
                path,
                "-",
                "patient",
                "the patient id given for this wearable export is in none of the other sources",
                "use an id from the other sources (their patient ids) before '='",
            )
        extracts.append(read("wearable", path, patient=sid))
    if not extracts:
        raise IngestError(
            None, "-", "sources", "no source given", "pass at least one of --nonmem, --cdisc, --fhir, ..."
        )
    return ingest(extracts, seed=seed, linkage=linkage, keep_ids=keep_ids)
