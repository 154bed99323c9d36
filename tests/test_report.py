"""`twinrx report`: one static HTML page of a fit or a scenario result.

The page is parsed with the standard library's HTML parser: it must be well formed, hold the
expected sections and tables, and show the store's numbers, checked against values read back
independently with xarray and recomputed from the raw draws (numpy quantiles, the attainment
counted by hand, R-hat by arviz-stats). Every image must be an embedded PNG that PIL reads; no
URL may point outside the page; text from the store (a hostile scenario name) is escaped. With
Debian's chromium installed, a headless browser loads both pages and decodes every image.

The fit is written down directly (known draws of a two-chain "NUTS" posterior with a chain
shifted on ``V`` and three divergences, so that the flags are known without running a sampler).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import jax
import numpy as np
import pytest
import xarray as xr

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from synth.scenarios import two_arm_cohort  # noqa: E402

import twinrx  # noqa: E402
from twinrx.data.patient import Cohort, Dosing, Patient, Series  # noqa: E402
from twinrx.infer import Fit, FitData, PopulationModel, to_datatree  # noqa: E402
from twinrx.report import ESS_MIN, RHAT_MAX, write_report  # noqa: E402
from twinrx.scenarios import compare, load_scenario, twin_draws  # noqa: E402
from twinrx.store import write_fit, write_patients, write_store  # noqa: E402

M = twinrx.get_model("one_cpt_oral")
TYPICAL = {"CL": 5.0, "V": 50.0, "KA": 1.0}
TIMES = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0])
N, CHAINS, DRAWS = 5, 2, 60
N_DIV = 3
SECONDS = 12.5
HOSTILE = '<script>alert("x")</script> & <b>bold</b>'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "wbr", "source", "area", "base"}


# ------------------------------------------------------------------------------ parsing
class Page(HTMLParser):
    """Structure of a page: tag balance, tables by id (cell text and class), images, SVG
    polylines, <pre> texts by id, every attribute that may load something, all text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tables: dict[str, list[list[tuple[str, str]]]] = {}
        self.imgs: list[dict[str, str]] = []
        self.polylines: list[str] = []
        self.pres: dict[str, str] = {}
        self.links: list[tuple[str, str, str]] = []
        self.ids: list[str] = []
        self.h1 = ""
        self.text: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._cls = ""
        self._pre: str | None = None
        self._in_h1 = False
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(a["id"])
        for k in ("src", "href", "action", "data", "poster", "srcset"):
            if k in a:
                self.links.append((tag, k, a[k] or ""))
        if tag == "img":
            self.imgs.append(a)
        if tag == "polyline":
            self.polylines.append(a.get("points", ""))
        if tag == "table":
            self._table = a.get("id", f"table{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell, self._cls = [], a.get("class", "")
        elif tag == "pre":
            self._pre = a.get("id", "")
            self.pres[self._pre] = ""
        elif tag == "h1":
            self._in_h1 = True
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):  # <rect .../> in the SVG
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append(("".join(self._cell).strip(), self._cls))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "pre":
            self._pre = None
        elif tag == "h1":
            self._in_h1 = False

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._pre is not None:
            self.pres[self._pre] += data
        if self._in_h1:
            self.h1 += data

    def rows(self, table: str) -> dict[str, list[tuple[str, str]]]:
        """A table's rows by their first cell (header row left out)."""
        return {r[0][0]: r for r in self.tables[table][1:]}

    def header(self, table: str) -> list[str]:
        return [c[0] for c in self.tables[table][0]]


def _num(cell: str) -> float:
    return float(cell.replace("\u26a0", "").strip())


def _interval(cell: str) -> tuple[float, float]:
    lo, hi = cell.split(" - ")
    return float(lo), float(hi)


def _check_common(text: str, page: Page, tmp_path: Path) -> None:
    """Well formed; self-contained (no URL but in-page anchors and data: images); no folder."""
    assert text.startswith("<!DOCTYPE html>")
    assert not page.errors, page.errors[:5]
    for tag, attr, value in page.links:
        ok = value.startswith("#") if attr == "href" else value.startswith("data:image/png;base64,")
        assert ok, (tag, attr, value[:60])
        if attr == "href":
            assert value[1:] in page.ids, f"anchor {value} has no target"
    low = text.lower()
    assert "http:" not in low and "https:" not in low and "file:" not in low
    assert 'src="/' not in low and "url(" not in low and "@import" not in low
    assert "<script" not in low and "<link" not in low and "<iframe" not in low
    assert "default-src 'none'" in text  # the CSP: the browser may fetch nothing
    assert str(tmp_path) not in text and str(tmp_path.parent) not in text  # file names only
    for img in page.imgs:
        raw = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        assert raw[:8] == PNG_SIGNATURE
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()
        with Image.open(io.BytesIO(raw)) as im:
            assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 400
            assert np.asarray(im.convert("L")).std() > 5  # not blank
        assert img.get("alt")


# ------------------------------------------------------------------------------ the fit
def _cohort():
    rng = np.random.default_rng(5)
    truth = {p: tv * np.exp(0.25 * rng.standard_normal(N)) for p, tv in TYPICAL.items()}
    pats = []
    for i in range(N):
        cl, v, ka = (truth[p][i] for p in ("CL", "V", "KA"))
        c = 100 * ka / (v * (ka - cl / v)) * (np.exp(-cl / v * TIMES) - np.exp(-ka * TIMES))
        y = c + 0.05 * rng.standard_normal(TIMES.size)
        s = Series("CP", "mg/L", TIMES, y, kind="response")
        pats.append(Patient(f"P{i}", series={"CP": s}, dosing=Dosing([0.0], [100.0], cmt=[1])))
    return Cohort(tuple(pats)), truth


def _samples(truth, *, chains, draws, shift_v, seed=0):
    """Known draws around the true values, ``(chains, draws, ...)``; chain 1 of V shifted."""
    rng = np.random.default_rng(seed)
    S = (chains, draws)
    smp = {}
    for p, tv in TYPICAL.items():
        smp[p] = tv * np.exp(0.05 * rng.standard_normal(S))
        smp[f"omega_{p}"] = 0.3 * np.exp(0.05 * rng.standard_normal(S))
        smp[f"eta_{p}"] = np.log(truth[p] / tv) + 0.05 * rng.standard_normal((*S, N))
        smp[f"z_{p}"] = smp[f"eta_{p}"] / smp[f"omega_{p}"][..., None]
    if shift_v:
        smp["V"][1] *= 1.3  # the chains disagree on V: R-hat far above 1.01
    for p in TYPICAL:
        smp[f"{p}_i"] = smp[p][..., None] * np.exp(smp[f"eta_{p}"])
    smp["sigma_CP"] = 0.05 * np.exp(0.05 * rng.standard_normal(S))
    return smp


@pytest.fixture(scope="module")
def fit_store(tmp_path_factory):
    cohort, truth = _cohort()
    data = FitData.from_cohort(M, cohort)
    pop = PopulationModel.build(M, data, error={"CP": "additive"})
    div = np.zeros((CHAINS, DRAWS), bool)
    div[0, [3, 17]] = div[1, 40] = True
    stats = {"diverging": div, "accept_prob": np.full((CHAINS, DRAWS), 0.85)}
    smp = _samples(truth, chains=CHAINS, draws=DRAWS, shift_v=True)
    info = {"seconds": SECONDS, "warmup": 100, "draws": DRAWS, "chains": CHAINS}
    f = Fit(pop, data, "nuts", smp, stats, {}, 7, info, cohort)
    path = tmp_path_factory.mktemp("fit") / "pop fit.zarr"
    write_fit(to_datatree(f), path)
    return path


@pytest.fixture(scope="module")
def fit_page(fit_store):
    out = fit_store.parent / "fit.html"
    write_report(fit_store, out, key=jax.random.key(3), patients=2, draws=40, n_sim=40)
    text = out.read_text()
    return out, text, Page(text)


def test_fit_page_is_self_contained_well_formed_and_has_every_section(fit_page, fit_store):
    out, text, page = fit_page
    _check_common(text, page, fit_store.parent.parent)
    for sec in ("warnings", "parameters", "sampler", "figures", "model", "provenance"):
        assert sec in page.ids, sec
    assert page.h1 == "nuts fit of one_cpt_oral"
    assert "pop fit.zarr" in text  # the store by its file name
    # figures: 2 individual fits, goodness of fit, VPC (5 patients), pair plot
    shown = [i for i in page.ids if i.startswith("fig-")]
    assert shown == ["fig-individual-0", "fig-individual-1", "fig-gof", "fig-vpc", "fig-pairs"]
    assert len(page.imgs) == 5 and "fig-loss" not in page.ids  # no loss trace for NUTS
    assert "Patient P0" in text and "Patient P1" in text and "3 more patients" in text
    # the model card is shown, escaped, in full
    assert M.card.text.strip().splitlines()[0] in "".join(page.text)


def test_fit_parameter_table_shows_the_stored_diagnostics_and_flags(fit_page, fit_store):
    _, _, page = fit_page
    with xr.open_datatree(fit_store, engine="zarr", consolidated=False) as tree:
        d = tree["diagnostics"].to_dataset().load()
        post = tree["posterior"].to_dataset().load()
    rows = page.rows("parameters-table")
    assert page.header("parameters-table") == [
        "parameter",
        "unit",
        "median",
        "90% interval",
        "R-hat",
        "ESS bulk",
        "ESS tail",
    ]
    pop = [str(p) for p in d["parameter"].values if "[" not in str(p)]
    assert list(rows) == pop
    assert set(pop) == {"CL", "V", "KA", "omega_CL", "omega_V", "omega_KA", "sigma_CP"}
    flagged = {}
    for p in pop:
        r = rows[p]
        st = d.sel(parameter=p)
        assert _num(r[2][0]) == pytest.approx(float(st["median"]), rel=6e-4)
        lo, hi = _interval(r[3][0])
        assert lo == pytest.approx(float(st["q05"]), rel=6e-4) and hi == pytest.approx(
            float(st["q95"]), rel=6e-4
        )
        # ... and against the raw draws (numpy's quantiles of both chains pooled)
        v = post[p].values.ravel()
        assert _num(r[2][0]) == pytest.approx(np.median(v), rel=6e-4)
        assert lo == pytest.approx(np.quantile(v, 0.05), rel=6e-4)
        for col, stat, limit in ((4, "r_hat", None), (5, "ess_bulk", ESS_MIN), (6, "ess_tail", ESS_MIN)):
            val = float(st[stat])
            assert _num(r[col][0]) == pytest.approx(val, rel=6e-4)
            bad = val > RHAT_MAX if limit is None else val < limit
            assert ("flag" in r[col][1]) == bad, (p, stat, val)
            assert ("\u26a0" in r[col][0]) == bad
            flagged[(p, stat)] = bad
        assert r[1][0] == {"CL": "L/h", "V": "L", "KA": "1/h"}.get(p, r[1][0])
    assert flagged[("V", "r_hat")]  # the shifted chain
    # the warning box names the flagged population parameters, kind by kind
    text = "".join(page.text)
    for stat, what in (
        ("r_hat", "R-hat > 1.01"),
        ("ess_bulk", "bulk ESS < 400"),
        ("ess_tail", "tail ESS < 400"),
    ):
        names = [p for p in pop if flagged[(p, stat)]]
        line = re.search(re.escape(what) + r": ([^(]*)", text)
        if not names:  # no line, or one that counts individual values only
            assert line is None or re.match(r"\d+ individual value", line.group(1))
            continue
        listed = line.group(1).split(" and ")[0]
        assert [n.strip() for n in listed.split(",")] == names


def test_fit_rhat_of_the_shifted_parameter_agrees_with_arviz_stats(fit_page, fit_store):
    array_stats = pytest.importorskip("arviz_stats.base").array_stats
    _, _, page = fit_page
    with xr.open_datatree(fit_store, engine="zarr", consolidated=False) as tree:
        v = tree["posterior"]["V"].values
    ref = array_stats.rhat(v, chain_axis=0, draw_axis=1, method="rank")
    assert ref > 1.1
    assert _num(page.rows("parameters-table")["V"][4][0]) == pytest.approx(ref, rel=6e-4)


def test_fit_individual_values_sampler_and_provenance(fit_page, fit_store):
    _, _, page = fit_page
    with xr.open_datatree(fit_store, engine="zarr", consolidated=False) as tree:
        attrs = dict(tree.attrs)
        d = tree["diagnostics"].to_dataset().load()
        div = tree["sample_stats"]["diverging"].values
    ind = page.rows("individual-table")
    assert list(ind) == [f"P{i}" for i in range(N)]
    assert page.header("individual-table") == ["patient", "CL_i (L/h)", "V_i (L)", "KA_i (1/h)"]
    for i in range(N):
        for col, site in enumerate(("CL_i", "V_i", "KA_i"), start=1):
            med, rest = ind[f"P{i}"][col][0].split(" [")
            lo, hi = (float(x) for x in rest.rstrip("]").split(", "))
            st = d.sel(parameter=f"{site}[P{i}]")
            assert float(med) == pytest.approx(float(st["median"]), rel=6e-4)
            assert lo == pytest.approx(float(st["q05"]), rel=6e-4)
            assert hi == pytest.approx(float(st["q95"]), rel=6e-4)
    sampler = page.rows("sampler-table")
    assert sampler["method"][1][0] == "nuts"
    assert sampler["chains x draws"][1][0] == f"{CHAINS} x {DRAWS}"
    assert _num(sampler["seconds"][1][0]) == SECONDS
    assert int(_num(sampler["divergences"][1][0])) == N_DIV == int(div.sum())
    assert "flag" in sampler["divergences"][1][1]
    assert _num(sampler["accept_prob (mean)"][1][0]) == pytest.approx(0.85)
    assert "3 divergent transitions" in "".join(page.text)
    prov = page.rows("provenance-table")
    for k, v in attrs.items():
        if k in ("model_card", "info", "settings", "data_options"):
            continue
        assert k in prov, k
        shown = prov[k][1][0]
        assert shown == (v if isinstance(v, str) else json.dumps(v.item() if hasattr(v, "item") else v))
    for k in ("seed", "device", "jax_version", "twinrx_version", "model_card_digest", "created"):
        assert k in prov
    assert prov["seed"][1][0] == "7"


def test_svi_fit_without_patients_draws_its_loss_trace_as_inline_svg(tmp_path):
    cohort, truth = _cohort()
    data = FitData.from_cohort(M, cohort)
    pop = PopulationModel.build(M, data, error={"CP": "additive"})
    smp = _samples(truth, chains=1, draws=CHAINS * DRAWS, shift_v=False, seed=1)
    steps = np.arange(1, 301)
    losses = 80.0 * np.exp(-steps / 60.0) + 5.0 + np.sin(steps)  # known values to find on the chart
    f = Fit(pop, data, "svi", smp, {}, {}, 2, {"losses": losses, "seconds": 3.25}, None)
    store = tmp_path / "svi.zarr"
    write_fit(to_datatree(f), store)
    out = write_report(store, tmp_path / "svi.html", title="SVI " + HOSTILE)
    text = out.read_text()
    page = Page(text)
    _check_common(text, page, tmp_path)
    assert page.h1 == "SVI " + HOSTILE  # escaped, and read back as the same text
    assert "fig-loss" in page.ids and not page.imgs  # no patients: no figure of the data
    assert "holds no patients" in text
    assert len(page.polylines) == 1
    pts = np.array([[float(c) for c in p.split(",")] for p in page.polylines[0].split()])
    assert pts.shape == (losses.size, 2)
    # x: linear in the step; y: linear in the loss, larger loss higher up (smaller y)
    for col, truth_ in ((0, steps), (1, losses)):
        slope, icpt = np.polyfit(truth_, pts[:, col], 1)
        assert np.abs(pts[:, col] - (slope * truth_ + icpt)).max() < 0.06  # 0.1 px rounding
        assert (slope > 0) if col == 0 else (slope < 0)
    sampler = page.rows("sampler-table")
    assert sampler["method"][1][0] == "svi" and _num(sampler["seconds"][1][0]) == 3.25
    assert "losses" not in sampler


# ------------------------------------------------------------------------------ scenario
SCENARIO = f"""
[scenario]
name = '{HOSTILE}'
description = "Two regimens & a <target>"
model = "one_cpt_oral"
horizon = 48.0
step = 0.5

[[regimens]]
name = "100 mg q12h"
dose = 100
cmt = "depot"
every = 12

[[regimens]]
name = '200 mg q24h <b>"once"</b>'
dose = 200
cmt = "depot"
every = 24

[[targets]]
name = "trough day 2"
output = "CP"
metric = "trough"
window = [36.0, 48.0]
low = 0.5
high = 2.0

[[targets]]
name = "Cmax day 2"
output = "CP"
metric = "cmax"
window = [24.0, 48.0]
high = 4.0
"""
SEED, N_DRAWS = 4, 50


@pytest.fixture(scope="module")
def scenario_store(tmp_path_factory):
    sc = load_scenario(SCENARIO)
    draws = twin_draws(sc.model, key=jax.random.key(SEED), n=N_DRAWS, covariates=dict(sc.patient))
    ds = compare(sc, draws, key=jax.random.key(SEED + 1))
    path = tmp_path_factory.mktemp("scen") / "result.zarr"
    # the attributes `twinrx scenario run --out` writes
    write_store(
        ds,
        path,
        seed=str(SEED),
        draws=str(N_DRAWS),
        twin="card population",
        patient="",
        scenario_source=sc.source,
    )
    return path


@pytest.fixture(scope="module")
def scenario_page(scenario_store):
    out = write_report(scenario_store, scenario_store.parent / "scenario.html", max_draws=30)
    text = out.read_text()
    return out, text, Page(text)


def test_scenario_page_tables_match_the_draws(scenario_page, scenario_store):
    _, text, page = scenario_page
    _check_common(text, page, scenario_store.parent.parent)
    for sec in ("comparison", "figure", "scenario", "provenance", "fig-scenario"):
        assert sec in page.ids, sec
    assert len(page.imgs) == 1
    assert "Left: median and 90 % band" in text  # bands drawn: the card's population re-drawn
    with xr.open_zarr(scenario_store, consolidated=False, chunks=None) as ds:
        ds = ds.load()
    sc = load_scenario(SCENARIO)
    regs = [str(r) for r in ds["regimen"].values]
    for k, tg in enumerate(sc.targets):
        table = f"target-{k}"
        unit = ds[tg.name].attrs["units"]
        assert page.header(table) == [
            "rank",
            "regimen",
            f"median ({unit})",
            f"90% interval ({unit})",
            "PTA",
            "failed draws",
        ]
        body = page.tables[table][1:]
        ranks = [int(r[0][0]) for r in body]
        assert ranks == sorted(ranks) == list(range(1, len(regs) + 1))  # best first
        for r in body:
            name = r[1][0]
            i = regs.index(name)
            assert int(ds["rank"].values[i]) == int(r[0][0])
            m = ds[tg.name].values[i]  # the metric per draw
            assert float(r[2][0]) == pytest.approx(np.nanmedian(m), rel=6e-4)
            lo, hi = _interval(r[3][0])
            assert lo == pytest.approx(np.nanquantile(m, 0.05), rel=6e-4)
            assert hi == pytest.approx(np.nanquantile(m, 0.95), rel=6e-4)
            hit = np.mean((m >= tg.low) & (m <= tg.high))  # attainment counted here
            assert float(r[4][0].rstrip(" %")) == pytest.approx(100 * hit, abs=0.05)
            assert int(r[5][0]) == int(ds["failed"].values[i].sum()) == 0
    assert "target: 0.5 to 2 mg/L" in text and "target: at most 4 mg/L" in text
    prov = page.rows("provenance-table")
    for k in ("seed", "draws", "twin", "scenario_hash", "device", "jax_version", "created", "model"):
        assert prov[k][1][0] == str(ds.attrs[k]), k
    assert "scenario_source" not in prov  # shown in full below instead
    assert page.pres["scenario-source"] == sc.source


def test_scenario_page_escapes_hostile_text(scenario_page):
    _, text, page = scenario_page
    assert page.h1 == f"Scenario {HOSTILE}"
    assert "<script" not in text.lower() and "<b>bold" not in text and "<b>&quot;once" not in text
    assert "&lt;script&gt;" in text
    names = [r[1][0] for r in page.tables["target-0"][1:]]
    assert '200 mg q24h <b>"once"</b>' in names  # as text, not markup


def test_scenario_page_is_reproducible_and_a_fitted_twin_without_its_store_gets_the_pta_panel(
    scenario_page, scenario_store, tmp_path
):
    _, text, page = scenario_page
    again = Page(write_report(scenario_store, tmp_path / "again.html", max_draws=30).read_text())
    assert again.imgs[0]["src"] == page.imgs[0]["src"]  # the same seed, the same figure
    with xr.open_zarr(scenario_store, consolidated=False, chunks=None) as ds:
        ds = ds.load()
    ds.attrs["twin"] = "twin.zarr"  # as if run on a fitted twin
    out = write_report(ds, tmp_path / "fitted.html", max_draws=30)
    t2 = out.read_text()
    assert "give it (twin=)" in t2 and "Left: median" not in t2
    with Image.open(io.BytesIO(base64.b64decode(Page(t2).imgs[0]["src"].split(",", 1)[1]))) as im:
        with Image.open(io.BytesIO(base64.b64decode(page.imgs[0]["src"].split(",", 1)[1]))) as full:
            assert im.size[0] < 0.7 * full.size[0]  # one panel instead of two


# ------------------------------------------------------------------------------ errors
def test_clear_errors_for_other_stores_and_bad_outputs(tmp_path, scenario_store):
    cohort, _ = _cohort()
    pats = write_patients(cohort, tmp_path / "patients.zarr")
    with pytest.raises(ValueError, match="patient store"):
        write_report(pats, tmp_path / "p.html")
    with pytest.raises(FileNotFoundError, match="'nothing.zarr'"):
        write_report(tmp_path / "nothing.zarr", tmp_path / "n.html")
    with pytest.raises(ValueError, match=r"end the name in \.html"):
        write_report(scenario_store, tmp_path / "r.pdf")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(scenario_store, tmp_path / "no" / "r.html")
    with pytest.raises(ValueError, match="not a fit"):
        write_report(xr.Dataset(attrs={"hello": "world"}), tmp_path / "x.html")


# ------------------------------------------------------------------------------ a real browser
CHROMIUM = shutil.which("chromium")
_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
]
_PROBE = (
    "<script>window.addEventListener('load', function () {"
    "var p = document.createElement('pre'); p.id = 'check';"
    "p.textContent = JSON.stringify(Array.from(document.images).map("
    "function (i) { return [i.naturalWidth, i.complete]; }));"
    "document.body.appendChild(p); });</script>"
)


def _chromium(args, tmp_path):
    cmd = [CHROMIUM, *_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def _browser_check(report: Path, n_img: int, tmp_path: Path, shot: Path) -> None:
    # A copy with a probe script (the page's CSP forbids scripts: it is taken out of the copy).
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", report.read_text())
    probe = tmp_path / f"probe-{report.name}"
    probe.write_text(text.replace("</body>", _PROBE + "</body>"))
    dom = _chromium(["--dump-dom", probe.as_uri()], tmp_path).stdout
    found = re.search(r'<pre id="check">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not run"
    images = json.loads(found.group(1))
    assert len(images) == n_img
    assert all(w > 0 and done for w, done in images), images
    # The page itself (CSP on) as a screenshot: not blank.
    _chromium(["--window-size=1280,2400", f"--screenshot={shot}", report.as_uri()], tmp_path)
    with Image.open(shot) as im:
        a = np.asarray(im.convert("L"), float)
    assert a.shape == (2400, 1280) and a.std() > 20


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_chromium_loads_every_image_of_both_pages(fit_page, scenario_page, tmp_path):
    for (out, _, page), name in ((fit_page, "fit"), (scenario_page, "scenario")):
        _browser_check(out, len(page.imgs), tmp_path, tmp_path / f"report_{name}.png")


# ------------------------------------------------------------------------------ cohort
COHORT_SCENARIO = two_arm_cohort(
    "cohort report check",
    """
[[targets]]
name = "Cmax day 2"
output = "CP"
metric = "cmax"
window = [24.0, 48.0]
high = 3.0
""",
    description="Two arms & a <subgroup>",
)
COHORT_N, COHORT_CHUNK = 120, 40
COHORT_FAILED = {0: [1, 4], 1: [9]}  # arm: patients (of chunk 0) whose solve is marked failed


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def cohort_stores(tmp_path_factory):
    from twinrx.scale import run_cohort
    from twinrx.store import read_variables, write_region

    sc = load_scenario(COHORT_SCENARIO)
    root = tmp_path_factory.mktemp("cohort")
    full = root / "trial.zarr"
    opts = dict(seed=5, chunk=COHORT_CHUNK, scheduler="synchronous", progress=False, subgroup="SEX")
    run_cohort(sc, COHORT_N, full, trajectories=12, **opts)
    # failed solves as the engine flags them (a status code, NaN metrics), written into chunk 0
    v = read_variables(full, ["status", "metric"])
    status, metric = v["status"][:COHORT_CHUNK].copy(), v["metric"][:COHORT_CHUNK].copy()
    for a, pats in COHORT_FAILED.items():
        status[pats, a], metric[pats, a, :] = 2, np.nan
    rows = (slice(0, COHORT_CHUNK),)
    write_region(full, {"status": (rows, status), "metric": (rows, metric)})
    partial = root / "partial.zarr"

    def stop(c):
        raise _Stop

    with pytest.raises(_Stop):
        run_cohort(sc, COHORT_N, partial, on_chunk=stop, **opts)
    return full, partial


@pytest.fixture(scope="module")
def cohort_page(cohort_stores):
    full, _ = cohort_stores
    out = write_report(full, full.parent / "cohort.html")
    text = out.read_text()
    return out, text, Page(text)


def _pct_interval(cell: str) -> tuple[float, float]:
    lo, hi = cell.rstrip(" %").split(" - ")
    return float(lo), float(hi)


def _expected(ds, rows_done):
    """Per arm and target, from the per-patient metrics read here: (n ok, n failed, median,
    q05, q95, k attained, pta, Wilson interval by scipy), and per SEX level (k, n, interval)."""
    from scipy.stats import binomtest

    sc = load_scenario(COHORT_SCENARIO)
    status = ds["status"].values[rows_done]
    metric = ds["metric"].values[rows_done]
    codes = ds["SEX"].values[rows_done]
    out = {}
    for a in range(ds.sizes["arm"]):
        ok = status[:, a] == 0
        for j, tg in enumerate(sc.targets):
            m = metric[ok, a, j]
            hit = (m >= tg.low) & (m <= tg.high)
            k, n, n_all = int(hit.sum()), int(ok.sum()), len(ok)  # failed: not attained
            ci = binomtest(k, n_all).proportion_ci(0.95, method="wilson")
            by = []
            for lv in range(2):
                sel = ok & (codes == lv)
                mb = metric[sel, a, j]
                kb, nb = int(((mb >= tg.low) & (mb <= tg.high)).sum()), int((codes == lv).sum())
                cb = binomtest(kb, nb).proportion_ci(0.95, method="wilson")
                by.append((kb, nb, cb.low, cb.high))
            q = np.quantile(m, [0.05, 0.5, 0.95])
            out[a, j] = (n, int((~ok).sum()), q[1], q[0], q[2], k / n_all, ci.low, ci.high, by)
    return out


def _check_endpoint_tables(page, ds, rows_done):
    exp = _expected(ds, rows_done)
    arms = [str(a) for a in ds["arm"].values]
    for j in range(ds.sizes["target"]):
        unit = str(ds["target_units"].values[j])
        assert page.header(f"target-{j}") == [
            "arm",
            "n ok",
            "n failed",
            f"median ({unit})",
            f"90% interval ({unit})",
            "PTA",
            "PTA 95% interval",
        ]
        assert page.header(f"target-{j}-by") == ["arm", "SEX = F", "SEX = M"]
        rows, by = page.rows(f"target-{j}"), page.rows(f"target-{j}-by")
        assert list(rows) == arms == list(by)
        for a, arm in enumerate(arms):
            n, nf, med, q05, q95, pta, lo, hi, levels = exp[a, j]
            r = rows[arm]
            assert int(_num(r[1][0])) == n and int(_num(r[2][0])) == nf
            assert ("flag" in r[2][1]) == (nf > 0)
            assert _num(r[3][0]) == pytest.approx(med, rel=6e-4)
            assert _interval(r[4][0]) == pytest.approx((q05, q95), rel=6e-4)
            assert float(r[5][0].rstrip(" %")) == pytest.approx(100 * pta, abs=0.05)
            assert _pct_interval(r[6][0]) == pytest.approx((100 * lo, 100 * hi), abs=0.05)
            for lv, (kb, nb, blo, bhi) in enumerate(levels):
                found = re.fullmatch(r"([\d.]+) % \(([\d.]+) - ([\d.]+) %\) of (\d+)", by[arm][lv + 1][0])
                assert found, by[arm][lv + 1][0]
                p_, l_, h_, n_ = found.groups()
                assert int(n_) == nb
                assert float(p_) == pytest.approx(100 * kb / nb, abs=0.05)
                assert (float(l_), float(h_)) == pytest.approx((100 * blo, 100 * bhi), abs=0.05)


def test_cohort_page_tables_match_the_stored_per_patient_metrics(cohort_page, cohort_stores):
    out, text, page = cohort_page
    full, _ = cohort_stores
    _check_common(text, page, full.parent.parent)
    for sec in (
        "endpoints",
        "figures",
        "scenario",
        "provenance",
        "fig-endpoints",
        "fig-trajectories",
        "failed",
    ):
        assert sec in page.ids, sec
    assert "partial" not in page.ids
    assert len(page.imgs) == 2
    with xr.open_zarr(full, consolidated=False, chunks=None) as ds:
        ds = ds.load()
    assert page.h1 == "Cohort cohort report check"
    words = " ".join("".join(page.text).split())
    assert f"{COHORT_N} virtual patients x 2 arms" in words
    assert "chunks done: 3 / 3" in words and "seed 5" in words
    assert "Two arms & a <subgroup>" in words  # the description, escaped and read back
    _check_endpoint_tables(page, ds, np.ones(COHORT_N, bool))
    arms = page.rows("arms-table")
    for a, pats in COHORT_FAILED.items():
        assert int(_num(arms[str(ds["arm"].values[a])][3][0])) == len(pats)
    assert "3 failed solves" in words
    assert "target: 0.4 to 2 mg/L" in text and "target: at most 3 mg/L" in text
    assert (
        page.pres["scenario-source"] == load_scenario(COHORT_SCENARIO).source == ds.attrs["scenario_source"]
    )
    prov = page.rows("provenance-table")
    for k in (
        "seed",
        "n_patients",
        "chunk",
        "scenario_hash",
        "model_card_hash",
        "device",
        "created",
        "twinrx_schema",
    ):
        assert prov[k][1][0] == str(ds.attrs[k]), k
    assert "scenario_source" not in prov


def test_partly_finished_cohort_store_says_so_and_shows_its_finished_chunk(cohort_stores, tmp_path):
    _, partial = cohort_stores
    text = write_report(partial, tmp_path / "partial.html").read_text()
    page = Page(text)
    _check_common(text, page, partial.parent.parent)
    assert "partial" in page.ids
    words = " ".join("".join(page.text).split())
    assert "chunks done: 1 / 3" in words
    assert f"1 of 3 chunks are done ({COHORT_CHUNK} of {COHORT_N} patients)" in words
    assert "--resume" in words
    with xr.open_zarr(partial, consolidated=False, chunks=None) as ds:
        ds = ds.load()
    assert ds["done"].values.tolist() == [1, 0, 0]
    done = np.arange(COHORT_N) < COHORT_CHUNK
    _check_endpoint_tables(page, ds, done)
    assert all(int(_num(r[1][0])) == COHORT_CHUNK for r in page.rows("target-0").values())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_chromium_loads_every_image_of_the_cohort_page(cohort_page, tmp_path):
    out, _, page = cohort_page
    _browser_check(out, len(page.imgs), tmp_path, tmp_path / "report_cohort.png")
