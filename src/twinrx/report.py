"""One self-contained static HTML page of a fit or a scenario result (``twinrx report``).

The page needs no server and no network: its style is inline, every figure is a PNG
embedded as a ``data:`` URI (the loss trace of an SVI fit an inline SVG), and a
Content-Security-Policy ``<meta>`` forbids the browser to fetch anything else. Every piece of
text from the store is HTML-escaped. The page holds only what the store holds (pseudonymous
patient ids, times relative to the first dose) and names the store by its file name, never
by its folder.

A **fit** (``twinrx fit --out FIT.zarr``) gives: the population parameters (median, 90 %
interval, R-hat, bulk and tail ESS; R-hat above :data:`RHAT_MAX` and ESS below
:data:`ESS_MIN` flagged), the patients' individual values, the sampler's diagnostics, the
figures of :mod:`twinrx.plots` (individual fits of the first patients, goodness of fit, a
prediction-corrected VPC for population fits of at least :data:`VPC_MIN_PATIENTS` patients, a
pair plot of the typical values or, for an individual fit, of the first patient's values)
and, for SVI, the loss per step.

A **scenario result** (``twinrx scenario run --out RESULT.zarr``) gives: per target the
regimens by rank (median, 90 % interval, probability of target attainment), the
:func:`twinrx.plots.scenario_comparison` figure and the scenario file. The concentration
bands need the twin's draws: for the card's population they are drawn again exactly as
``twinrx scenario run`` drew them (the stored seed and number of draws); for a fitted twin,
pass its store as ``twin=`` (without it only the attainment panel is drawn).

A **cohort store** (``twinrx cohort run --out STORE.zarr``, schema ``cohort/1``) gives: the
scenario, the number of virtual patients, the arms, the seed and the chunks done out of the
total (a partly finished store says so, and its endpoints are those of its finished chunks);
per target the endpoint table (per arm: patients solved and failed, median and 90 % interval
of the metric, the PTA over the solved patients with its 95 % Wilson interval, and the PTA
per level of the subgroup); the :func:`twinrx.plots.cohort_endpoints` figure and, when the
store keeps trajectories, :func:`twinrx.plots.cohort_trajectories`; and the scenario file.

All end with the provenance table (versions, device, seed, hashes, times of writing).

Examples
--------
>>> from twinrx.report import write_report                      # doctest: +SKIP
>>> write_report("pop.zarr", "pop.html")                        # doctest: +SKIP
PosixPath('pop.html')
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import xarray as xr

from . import plots
from .infer.posterior import FIT_SCHEMA, from_datatree
from .model.library import get_model
from .scenarios import load_scenario, twin_draws
from .store import COHORT_SCHEMA, read_fit

__all__ = ["write_report", "store_kind", "RHAT_MAX", "ESS_MIN", "VPC_MIN_PATIENTS"]

#: R-hat above this is flagged (Vehtari et al., Bayesian Analysis 2021;16:667).
RHAT_MAX = 1.01
#: Bulk or tail ESS below this is flagged (the same paper: 100 per chain for 4 chains).
ESS_MIN = 400.0
#: The VPC is drawn for population fits of at least this many patients.
VPC_MIN_PATIENTS = 5
_PATIENTS_SCHEMA = "twinrx.patients/1"
_LONG_ATTRS = ("model_card", "info", "settings", "data_options", "scenario_source")

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f5f7; color: #1d2330;
  font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 32px 48px; background: #fff;
  min-height: 100vh; box-shadow: 0 0 0 1px #e3e6eb; }
header { border-bottom: 3px solid #2a5db0; padding-bottom: 14px; margin-bottom: 8px; }
h1 { font-size: 1.75rem; line-height: 1.25; margin: 0 0 6px; }
h2 { font-size: 1.3rem; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #d8dce3; }
h3 { font-size: 1.05rem; margin: 22px 0 8px; }
.meta { color: #4a5263; margin: 2px 0; font-size: .95rem; }
nav { font-size: .93rem; margin: 12px 0 4px; }
nav a { color: #2a5db0; margin-right: 14px; text-decoration: none; white-space: nowrap; }
nav a:hover { text-decoration: underline; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: .93rem; max-width: 100%; }
caption { text-align: left; color: #4a5263; font-size: .88rem; padding: 0 0 4px; caption-side: top; }
th, td { padding: 5px 12px; border-bottom: 1px solid #e3e6eb; text-align: left; vertical-align: top; }
th { background: #eef1f6; font-weight: 600; }
tbody tr:nth-child(even) td { background: #fafbfc; }
table.names td:first-child { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.flag, tbody tr:nth-child(even) td.flag { background: #fde4e1; color: #8a1c12; font-weight: 600; }
.scroll { overflow-x: auto; }
.warn { background: #fff5e0; border-left: 4px solid #e09b12; padding: 8px 14px; margin: 12px 0; }
.ok { background: #eaf6ec; border-left: 4px solid #2e8b47; padding: 8px 14px; margin: 12px 0; }
.note { color: #4a5263; font-size: .92rem; }
figure { margin: 16px 0 24px; }
figure img, figure svg { display: block; max-width: 100%; height: auto;
  border: 1px solid #e3e6eb; background: #fff; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 4px 20px; }
.grid figure { margin: 8px 0; }
figure.medium img { max-width: 900px; }
figure.narrow img { max-width: 760px; }
figcaption { color: #4a5263; font-size: .9rem; margin-top: 6px; }
pre { background: #f6f8fa; border: 1px solid #e3e6eb; padding: 12px 14px; overflow-x: auto;
  font: .85rem/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: pre; }
details { margin: 10px 0; }
summary { cursor: pointer; color: #2a5db0; }
footer { margin-top: 40px; color: #6a7284; font-size: .85rem; }
"""

# No fetch of any kind: images only as data: URIs, style only inline, no scripts.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# ------------------------------------------------------------------------------ HTML helpers
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(v: Any) -> str:
    """A number as 4 significant digits ('-' when missing or not finite)."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{x:.4g}" if math.isfinite(x) else "-"


class _Cell:
    """A table cell: text, numeric alignment, a flag with its reason (a tooltip)."""

    def __init__(self, text: Any, *, num: bool = False, flag: str = ""):
        self.text, self.num, self.flag = str(text), num, flag

    def html(self) -> str:
        cls = " ".join(c for c in ("num" if self.num else "", "flag" if self.flag else "") if c)
        attrs = f' class="{cls}"' if cls else ""
        if self.flag:
            attrs += f' title="{_e(self.flag)}"'
            return f"<td{attrs}>{_e(self.text)} &#9888;</td>"
        return f"<td{attrs}>{_e(self.text)}</td>"


def _num(v: Any, *, flag: str = "") -> _Cell:
    return _Cell(_fmt(v), num=True, flag=flag)


def _table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], *, id: str = "", caption: str = "", cls: str = ""
) -> str:
    ident = (f' id="{_e(id)}"' if id else "") + (f' class="{_e(cls)}"' if cls else "")
    out = [f'<div class="scroll"><table{ident}>']
    if caption:
        out.append(f"<caption>{_e(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead><tbody>")
    for r in rows:
        cells = (c if isinstance(c, _Cell) else _Cell(c) for c in r)
        out.append("<tr>" + "".join(c.html() for c in cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _png(fig) -> str:
    """A matplotlib figure as a PNG ``data:`` URI (no matplotlib import needed here)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=plots.DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(make, *, alt: str, caption: str, id: str, size: str = "") -> str:
    """A figure (``size``: a CSS class that caps its width); a figure that cannot be drawn
    (a ValueError of plots: e.g. a pair plot of a single MAP point) becomes a note."""
    try:
        uri = _png(make())
    except ValueError as err:
        return f'<p class="note" id="{_e(id)}">{_e(caption)}: not drawn ({_e(err)}).</p>'
    cls = f' class="{size}"' if size else ""
    return (
        f'<figure id="{_e(id)}"{cls}><img alt="{_e(alt)}" src="{uri}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _page(title: str, meta: Sequence[str], nav: Sequence[tuple[str, str]], body: Sequence[str]) -> str:
    links = "".join(f'<a href="#{_e(a)}">{_e(t)}</a>' for a, t in nav)
    lines = "".join(f'<p class="meta">{m}</p>' for m in meta)
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    from . import __version__

    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="twinrx {_e(__version__)}">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><main><header><h1>{_e(title)}</h1>{lines}<nav>{links}</nav></header>\n"
        + "\n".join(body)
        + f"\n<footer>Written by twinrx {_e(__version__)} on {now}. A static page: no scripts, "
        "no network; every figure is embedded.</footer></main></body></html>\n"
    )


def _section(id: str, title: str, *parts: str) -> str:
    return f'<section id="{_e(id)}"><h2>{_e(title)}</h2>' + "".join(parts) + "</section>"


def _provenance(attrs: Mapping[str, Any]) -> str:
    """Every attribute of the store but the long texts shown elsewhere, sorted by name."""
    rows = [
        (k, _Cell(v if isinstance(v, str) else json.dumps(_plain(v))))
        for k, v in sorted(attrs.items())
        if k not in _LONG_ATTRS
    ]
    return _section(
        "provenance",
        "Provenance",
        '<p class="note">Every attribute the store carries: versions, device, seed, hashes, '
        "times of writing (UTC).</p>",
        _table(["attribute", "value"], rows, id="provenance-table"),
    )


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


# ------------------------------------------------------------------------------ the store
def store_kind(attrs: Mapping[str, Any], variables: Sequence[str] = ()) -> str:
    """``"fit"``, ``"scenario"`` or ``"cohort"`` from a store's root attributes (and variables)."""
    if attrs.get("schema") == FIT_SCHEMA:
        return "fit"
    if attrs.get("twinrx_schema") == COHORT_SCHEMA:
        return "cohort"
    if "scenario_source" in attrs and {"pta", "rank"} <= set(variables):
        return "scenario"
    if attrs.get("schema") == _PATIENTS_SCHEMA:
        raise ValueError(
            "this is a patient store (twinrx ingest): `twinrx inspect` lists it; a report is made "
            "from a fit (twinrx fit --out FIT.zarr) or a scenario result (twinrx scenario run --out)"
        )
    raise ValueError(
        "not a fit (twinrx fit --out FIT.zarr, schema "
        f"{FIT_SCHEMA!r}), a scenario result (twinrx scenario run --out RESULT.zarr, with "
        f"'scenario_source', 'pta' and 'rank') nor a cohort store (twinrx cohort run --out "
        f"STORE.zarr, schema {COHORT_SCHEMA!r}); its attributes: {', '.join(sorted(attrs)) or 'none'}"
    )


def _open(source) -> tuple[xr.DataTree, str]:
    if isinstance(source, xr.DataTree):
        return source, "(in memory)"
    if isinstance(source, xr.Dataset):
        return xr.DataTree(source), "(in memory)"
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"no store {path.name!r}: give a FIT.zarr (twinrx fit), a RESULT.zarr (twinrx scenario run) "
            "or a cohort STORE.zarr (twinrx cohort run)"
        )
    tree = xr.open_datatree(path, engine="zarr", consolidated=False)
    if tree.attrs.get("twinrx_schema") == COHORT_SCHEMA:
        return tree, path.name  # lazily: the page reads the few variables it shows
    return read_fit(path), path.name


# ------------------------------------------------------------------------------ entry point
def write_report(
    source: str | Path | xr.DataTree | xr.Dataset,
    out: str | Path,
    *,
    title: str | None = None,
    key: jax.Array | None = None,
    twin: str | Path | None = None,
    patients: int = 3,
    draws: int = 200,
    n_sim: int = 200,
    max_draws: int = 200,
) -> Path:
    """Write one self-contained static HTML page of a fit or a scenario result.

    Parameters
    ----------
    source
        A fit store (``twinrx fit --out``), a scenario result store (``twinrx scenario run
        --out``), a cohort store (``twinrx cohort run --out``), or one already opened (a
        :class:`xarray.DataTree` / Dataset). The kind is read from the store's attributes
        (:func:`store_kind`). A cohort page needs none of the options below but ``title``.
    out
        The HTML file to write (its folder must exist).
    title
        The page's title (default: what the store is, e.g. ``"nuts fit of one_cpt_oral"``).
    key
        Random key of the figures' draws (individual fits, VPC replicates); default
        ``jax.random.key(seed)`` with the store's seed, so a store always gives the same
        figures. A scenario's concentration bands always use the stored seed (the draws
        ``twinrx scenario run`` made).
    twin
        Scenario results of a fitted twin: the twin's fit store, whose draws (the stored
        seed and number of draws, for the stored patient) give the concentration bands.
    patients
        Fits: individual-fit figures of this many patients (the first ones).
    draws
        Fits: posterior draws per individual-fit figure.
    n_sim
        Fits: replicates of the VPC.
    max_draws
        Scenarios: draws simulated for the concentration bands.

    Returns
    -------
    Path
        ``out``.
    """
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"out {out.name!r}: a report is an HTML page; end the name in .html")
    if not out.parent.exists():
        raise FileNotFoundError(f"the folder of {out.name!r} does not exist: create it first")
    for name, v in (("patients", patients), ("draws", draws), ("n_sim", n_sim), ("max_draws", max_draws)):
        if int(v) < (0 if name == "patients" else 1):
            raise ValueError(f"{name} must be at least {0 if name == 'patients' else 1}, not {v}")
    tree, name = _open(source)
    kind = store_kind(tree.attrs, list(tree.ds.data_vars))
    if kind == "fit":
        page = _fit_page(tree, name, title=title, key=key, patients=patients, draws=draws, n_sim=n_sim)
    elif kind == "cohort":
        page = _cohort_page(tree.to_dataset(), name, title=title)
    else:
        page = _scenario_page(tree.to_dataset(), name, title=title, twin=twin, max_draws=max_draws)
    out.write_text(page, encoding="utf-8")
    return out


# ------------------------------------------------------------------------------ fit
_FLAG_KINDS = (f"R-hat > {RHAT_MAX}", f"bulk ESS < {ESS_MIN:g}", f"tail ESS < {ESS_MIN:g}")


def _warnings(flags: Sequence[tuple[str, str]], n_div: int) -> str:
    """The flags grouped by kind: population parameters by name, individual values counted."""
    items = []
    if n_div:
        items.append(
            f"{n_div} divergent transition{'s' if n_div != 1 else ''}: raise target_accept or reparameterise"
        )
    advice = {
        _FLAG_KINDS[0]: "chains disagree: run longer chains (--warmup, --draws)",
        _FLAG_KINDS[1]: "too few effective draws for the median: draw more",
        _FLAG_KINDS[2]: "too few effective draws for the 90 % interval: draw more",
    }
    for what in _FLAG_KINDS:
        names = [p for w, p in flags if w == what]
        if not names:
            continue
        pop = [p for p in names if "[" not in p]
        n_ind = len(names) - len(pop)
        who = ", ".join(pop) + (" and " if pop and n_ind else "")
        who += f"{n_ind} individual value{'s' if n_ind != 1 else ''}" if n_ind else ""
        items.append(f"{what}: {who} ({advice[what]})")
    if not items:
        return ""
    lis = "".join(f"<li>{_e(i)}</li>" for i in items)
    return f'<div class="warn" id="warnings"><b>Diagnostic warnings</b><ul>{lis}</ul></div>'


def _row_flags(r_hat: float, ess_b: float, ess_t: float) -> tuple[str, str, str]:
    fr = f"R-hat above {RHAT_MAX}: chains disagree; run longer" if r_hat > RHAT_MAX else ""
    fb = f"bulk ESS below {ESS_MIN:g}: too few effective draws" if ess_b < ESS_MIN else ""
    ft = f"tail ESS below {ESS_MIN:g}: the interval is uncertain" if ess_t < ESS_MIN else ""
    return fr, fb, ft


def _site_unit(post: xr.Dataset, name: str) -> str:
    base = name.split("[")[0]
    if base in post and "units" in post[base].attrs:
        return str(post[base].attrs["units"])
    if base.startswith("omega_"):
        return "SD of eta (log scale)"
    return ""


def _parameter_tables(tree: xr.DataTree) -> tuple[str, list[tuple[str, str]]]:
    """The population and individual tables, and the flags ``(kind, parameter)``."""
    post = tree["posterior"].to_dataset()
    warnings: list[tuple[str, str]] = []
    if "diagnostics" not in tree.children:  # one point (MAP): the estimate only
        rows = []
        for k, v in post.data_vars.items():
            if v.dims == ("chain", "draw") and not k.startswith("z_"):
                rows.append((k, _site_unit(post, k), _num(float(np.median(v.values)))))
        table = _table(["parameter", "unit", "estimate"], rows, id="parameters-table")
        note = '<p class="note">A point estimate (no posterior draws): no interval, R-hat or ESS.</p>'
        return note + table, warnings
    d = tree["diagnostics"].to_dataset()
    names = [str(p) for p in d["parameter"].values]
    pop_rows: list[tuple[Any, ...]] = []
    ind: dict[str, dict[str, tuple[float, float, float]]] = {}
    for i, p in enumerate(names):
        med, lo, hi = (float(d[s].values[i]) for s in ("median", "q05", "q95"))
        rh, eb, et = (float(d[s].values[i]) for s in ("r_hat", "ess_bulk", "ess_tail"))
        fr, fb, ft = _row_flags(rh, eb, et)
        for what, f in zip(_FLAG_KINDS, (fr, fb, ft)):
            if f:
                warnings.append((what, p))
        if "[" in p:
            site, pid = p[:-1].split("[", 1)
            ind.setdefault(pid, {})[site] = (med, lo, hi)
            continue
        pop_rows.append(
            (
                p,
                _site_unit(post, p),
                _num(med),
                _Cell(f"{_fmt(lo)} - {_fmt(hi)}", num=True),
                _num(rh, flag=fr),
                _num(eb, flag=fb),
                _num(et, flag=ft),
            )
        )
    header = ["parameter", "unit", "median", "90% interval", "R-hat", "ESS bulk", "ESS tail"]
    parts = [
        f'<p class="note">Posterior medians and 5th-95th percentiles; flagged (&#9888;): R-hat &gt; '
        f"{RHAT_MAX} or ESS &lt; {ESS_MIN:g}.</p>"
    ]
    if pop_rows:  # an individual fit estimates no population values
        parts.append(_table(header, pop_rows, id="parameters-table"))
    if ind:
        sites = list(dict.fromkeys(s for v in ind.values() for s in v))
        rows = [(pid, *(_Cell(_interval(vals.get(s)), num=True) for s in sites)) for pid, vals in ind.items()]
        hdr = ["patient", *(f"{s} ({_site_unit(post, s) or '1'})" for s in sites)]
        flagged = sum(1 for _, p in warnings if "[" in p)
        parts.append(
            f"<details{' open' if len(ind) <= 12 else ''}><summary>Individual values of "
            f"{len(ind)} patient{'s' if len(ind) != 1 else ''} (median [90% interval])"
            + (f"; {flagged} diagnostic flag{'s' if flagged != 1 else ''}" if flagged else "")
            + "</summary>"
            + _table(hdr, rows, id="individual-table")
            + "</details>"
        )
    if "constant_data" in tree.children:
        const = tree["constant_data"].to_dataset()
        held = sorted(
            (
                (k[6:], _num(float(np.asarray(v.values))))
                for k, v in const.data_vars.items()
                if k.startswith("fixed_") and np.ndim(v.values) == 0
            ),
            key=lambda r: (r[0].startswith("omega_"), r[0].startswith("sigma_"), r[0]),
        )
        if held:
            parts.append(
                "<h3>Population values held</h3>"
                '<p class="note">An individual fit: these came from the prior population fit.</p>'
                + _table(["parameter", "value"], held, id="held-table")
            )
    return "".join(parts), warnings


def _interval(v: tuple[float, float, float] | None) -> str:
    return "-" if v is None else f"{_fmt(v[0])} [{_fmt(v[1])}, {_fmt(v[2])}]"


def _sampler(tree: xr.DataTree, info: Mapping[str, Any]) -> tuple[str, int]:
    attrs = tree.attrs
    post = tree["posterior"].to_dataset()
    chains, n_draws = int(post.sizes.get("chain", 1)), int(post.sizes.get("draw", 1))
    rows: list[tuple[Any, ...]] = [
        ("method", attrs.get("method", "")),
        ("chains x draws", f"{chains} x {n_draws}"),
        ("seconds", _num(info.get("seconds", float("nan")))),
    ]
    n_div = int(attrs.get("num_divergences", 0))
    if "sample_stats" in tree.children:
        st = tree["sample_stats"].to_dataset()
        if "diverging" in st:
            n_div = int(np.sum(st["diverging"].values))
            rows.append(
                (
                    "divergences",
                    _num(n_div, flag="divergent transitions: a biased posterior" if n_div else ""),
                )
            )
            if "patient" in st["diverging"].dims:
                per = st["diverging"].sum(("chain", "draw"))
                bad = [f"{p} ({int(c)})" for p, c in zip(per["patient"].values, per.values) if c > 0]
                if bad:
                    rows.append(("patients with divergences", ", ".join(bad)))
        for k, v in st.data_vars.items():
            if k != "diverging" and np.issubdtype(v.dtype, np.number):
                rows.append((f"{k} (mean)", _num(float(np.mean(v.values)))))
    for k, v in info.items():
        if k == "seconds" or k == "losses":
            continue
        v = _plain(v)
        if isinstance(v, (list, tuple)):
            v = f"{len(v)} values" if len(v) > 8 else ", ".join(_fmt(x) for x in v)
        rows.append((k, _num(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)))
    return _table(["", "value"], rows, id="sampler-table"), n_div


def _nice_ticks(lo: float, hi: float, n: int = 5) -> np.ndarray:
    if not hi > lo:
        return np.array([lo])
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return np.arange(math.ceil(lo / step) * step, hi + 1e-9 * step, step)


def _loss_svg(loss: np.ndarray) -> str:
    """The SVI loss per step as an inline SVG line chart (drawn here: no figure library)."""
    loss = np.asarray(loss, float)
    steps = np.arange(1, loss.size + 1)
    keep = np.isfinite(loss)
    steps, loss = steps[keep], loss[keep]
    if loss.size > 1500:  # at most 1500 vertices: the line looks the same
        idx = np.unique(np.linspace(0, loss.size - 1, 1500).round().astype(int))
        steps, loss = steps[idx], loss[idx]
    W, H, L, R, T, B = 760.0, 320.0, 70.0, 20.0, 30.0, 50.0
    x0, x1 = 1.0, float(max(steps.max(initial=1), 2))
    lo, hi = (float(loss.min()), float(loss.max())) if loss.size else (0.0, 1.0)
    pad = 0.04 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    sx = lambda s: L + (s - x0) / (x1 - x0) * (W - L - R)  # noqa: E731
    sy = lambda v: T + (hi - v) / (hi - lo) * (H - T - B)  # noqa: E731
    pts = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in zip(steps, loss))
    g = [
        f'<svg id="loss-trace" viewBox="0 0 {W:g} {H:g}" width="{W:g}" '
        f'height="{H:g}" role="img" aria-label="SVI loss per step" font-family="sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{W:g}" height="{H:g}" fill="#fff"/>',
    ]
    for v in _nice_ticks(lo, hi):
        y = sy(v)
        g.append(f'<line x1="{L}" x2="{W - R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6eb"/>')
        g.append(f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(_fmt(v))}</text>')
    for s in _nice_ticks(x0, x1):
        x = sx(s)
        g.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{H - B}" y2="{H - B + 5}" stroke="#333"/>')
        g.append(f'<text x="{x:.1f}" y="{H - B + 18}" text-anchor="middle">{_e(_fmt(s))}</text>')
    g += [
        f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#333"/>',
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.2" points="{pts}"/>',
        f'<text x="{(L + W - R) / 2}" y="{H - 10}" text-anchor="middle">optimisation step</text>',
        f'<text transform="translate(16 {(T + H - B) / 2}) rotate(-90)" text-anchor="middle">'
        "loss (negative ELBO)</text>",
        f'<text x="{(L + W - R) / 2}" y="18" text-anchor="middle" font-size="13">SVI loss per step</text>',
        "</svg>",
    ]
    return "".join(g)


def _fit_page(tree, name, *, title, key, patients, draws, n_sim) -> str:
    attrs = tree.attrs
    method, model = str(attrs.get("method", "")), str(attrs.get("model", ""))
    info = json.loads(attrs.get("info", "{}") or "{}")
    individual = bool(attrs.get("individual", False))
    seed = int(attrs.get("seed", 0))
    key = jax.random.key(seed) if key is None else key
    post = tree["posterior"].to_dataset()
    n_pat = int(post.sizes.get("patient", 0))
    if "patients" in tree.children:
        n_pat = max(n_pat, int(tree["patients"].to_dataset().sizes.get("patient", 0)))
    kind = "individual" if individual else "population"
    title = title or f"{method} fit of {model}"
    meta = [
        f"A {_e(kind)} fit ({_e(method)}) of model <b>{_e(model)}</b> to {n_pat} "
        f"patient{'s' if n_pat != 1 else ''}; store <code>{_e(name)}</code>.",
        f"Written {_e(attrs.get('created', '?'))} by {_e(attrs.get('created_by', 'twinrx'))}; "
        f"seed {seed}; model card digest <code>{_e(attrs.get('model_card_digest', '') or '-')}</code>.",
    ]
    body: list[str] = []
    params, warnings = _parameter_tables(tree)
    sampler, n_div = _sampler(tree, info)
    warn = _warnings(warnings, n_div)
    if warn:
        body.append(warn)
    elif "diagnostics" in tree.children:
        body.append(
            f'<div class="ok" id="warnings">All R-hat &le; {RHAT_MAX} and ESS &ge; {ESS_MIN:g}; no divergences.</div>'
        )
    body.append(_section("parameters", "Parameters", params))
    body.append(_section("sampler", "Sampler diagnostics", sampler))
    body.append(_section("figures", "Figures", *_fit_figures(tree, key, patients, draws, n_sim)))
    card = str(attrs.get("model_card", ""))
    settings = attrs.get("settings", "")
    extra = []
    if card:
        extra.append(f"<details><summary>Model card {_e(model)}</summary><pre>{_e(card)}</pre></details>")
    if settings:
        try:
            settings = json.dumps(json.loads(settings), indent=2)
        except ValueError:
            pass
        extra.append(f"<details><summary>Fit settings</summary><pre>{_e(settings)}</pre></details>")
    if extra:
        body.append(_section("model", "Model and settings", *extra))
    body.append(_provenance(attrs))
    nav = [
        ("parameters", "Parameters"),
        ("sampler", "Sampler"),
        ("figures", "Figures"),
        *([("model", "Model")] if extra else []),
        ("provenance", "Provenance"),
    ]
    return _page(title, meta, nav, body)


def _fit_figures(tree, key, patients, draws, n_sim) -> list[str]:
    out: list[str] = []
    if "loss_trace" in tree.children:
        loss = np.asarray(tree["loss_trace"]["loss"].values, float)
        out.append(
            f'<figure id="fig-loss">{_loss_svg(loss)}<figcaption>SVI: the loss (negative ELBO) at '
            f"each of {loss.size} optimisation steps; it should level off.</figcaption></figure>"
        )
    if "patients" not in tree.children:
        out.append(
            '<p class="note">The store holds no patients (a fit made without them), so the '
            "figures of the data are not drawn.</p>"
        )
        return out
    fit = from_datatree(tree)
    ids = list(fit.data.ids)
    individual = bool(fit.conditioned)
    k_ind, k_vpc = jax.random.split(key)
    shown = ids[: int(patients)]
    if shown:
        out.append('<h3>Individual fits</h3><div class="grid">')
    for i, pid in enumerate(shown):
        out.append(
            _figure(
                lambda pid=pid, i=i: plots.individual_fit(
                    fit, pid, key=jax.random.fold_in(k_ind, i), draws=int(draws)
                ),
                alt=f"individual fit of patient {pid}",
                caption=f"Patient {pid}: levels (open markers: censored), doses (red triangles), "
                "median and 50 % / 90 % bands of the individual prediction",
                id=f"fig-individual-{i}",
            )
        )
    if shown:
        out.append("</div>")
    if len(ids) > len(shown):
        out.append(f'<p class="note">{len(ids) - len(shown)} more patients are not shown.</p>')
    out.append("<h3>Goodness of fit</h3>")
    out.append(
        _figure(
            lambda: plots.goodness_of_fit(fit),
            alt="goodness of fit",
            caption="Observations against population (PRED) and individual (IPRED) predictions, "
            "and NPDE against time (dashed: +-1.96)",
            id="fig-gof",
        )
    )
    if not individual and len(ids) >= VPC_MIN_PATIENTS:
        out.append("<h3>Visual predictive check</h3>")
        out.append(
            _figure(
                lambda: plots.vpc(fit, key=k_vpc, n_sim=int(n_sim)),
                alt="prediction-corrected visual predictive check",
                caption=f"Prediction-corrected VPC, {int(n_sim)} replicates: observed 5th/50th/95th "
                "percentiles against the 90 % intervals of the simulated ones",
                id="fig-vpc",
                size="medium",
            )
        )
    elif not individual:
        out.append(
            f'<p class="note">No VPC: it needs at least {VPC_MIN_PATIENTS} patients '
            f"(the fit has {len(ids)}).</p>"
        )
    flat = fit.flat_samples()
    typical = [p for p in fit.model.parameter_names if p in flat and np.ndim(flat[p]) == 1]
    if not individual and typical:
        names, who = typical[:4], None
    else:
        names = [f"{p}_i" for p in fit.model.parameter_names if f"{p}_i" in flat][:4]
        who = ids[0]
    out.append("<h3>Posterior pair plot</h3>")
    out.append(
        _figure(
            lambda: plots.pair_plot(fit, names, patient=who),
            alt="posterior pair plot",
            caption="Posterior draws of "
            + ", ".join(names)
            + (f" (patient {who})" if who is not None else " (typical values)"),
            id="fig-pairs",
            size="narrow",
        )
    )
    return out


# ------------------------------------------------------------------------------ scenario
def _target_text(tg, unit: str, time_unit: str = "h") -> str:
    u = f" {unit}" if unit and unit != "1" else ""
    lo, hi = math.isfinite(tg.low), math.isfinite(tg.high)
    rng = (
        f"{_fmt(tg.low)} to {_fmt(tg.high)}"
        if lo and hi
        else f"at least {_fmt(tg.low)}"
        if lo
        else f"at most {_fmt(tg.high)}"
    )
    if tg.metric == "time_in_range":
        what = f"a fraction {_fmt(tg.min_fraction)} to {_fmt(tg.max_fraction)} of the window with {tg.output} {rng}"
    else:
        what = rng + u
    return (
        f"{tg.metric} of {tg.output} over [{_fmt(tg.window[0])}, {_fmt(tg.window[1])}) {time_unit}; "
        f"target: {what}"
    )


def _twin_words(who: str) -> str:
    if who == "card population":
        return "the model card's population"
    return f"the fitted twin {who}" if who else "the twin"


def _scenario_page(ds: xr.Dataset, name: str, *, title, twin, max_draws) -> str:
    attrs = ds.attrs
    sc = load_scenario(str(attrs["scenario_source"]))
    model = get_model(sc.model)
    seed, n_draws = int(attrs.get("seed", 0)), int(attrs.get("draws", ds.sizes.get("draw", 0)))
    who = str(attrs.get("twin", ""))
    patient = str(attrs.get("patient", ""))
    title = title or f"Scenario {sc.name}"
    meta = [
        f"{len(sc.regimens)} regimens x {int(ds.sizes.get('draw', 0))} draws of "
        f"{_e(_twin_words(who))}{(', patient ' + _e(patient)) if patient else ''}; model "
        f"<b>{_e(model.name)}</b>; store <code>{_e(name)}</code>.",
        f"Written {_e(attrs.get('created', '?'))}; seed {seed}; scenario hash "
        f"<code>{_e(attrs.get('scenario_hash', sc.hash))}</code>.",
    ]
    if sc.description:
        meta.insert(0, _e(sc.description))
    regs = [str(r) for r in ds["regimen"].values]
    order = np.argsort(np.asarray(ds["rank"].values))
    failed = np.asarray(ds["failed"].values).sum(axis=1) if "failed" in ds else np.zeros(len(regs))
    parts = []
    for k, t in enumerate(str(x) for x in ds["target"].values):
        unit = str(ds[t].attrs.get("units", "")) if t in ds else ""
        tg = sc.target(t)
        rows = []
        for i in order:
            rows.append(
                (
                    _num(int(ds["rank"].values[i])),
                    regs[i],
                    _num(ds["median"].values[k, i]),
                    _Cell(f"{_fmt(ds['q05'].values[k, i])} - {_fmt(ds['q95'].values[k, i])}", num=True),
                    _Cell(f"{100 * float(ds['pta'].values[k, i]):.1f} %", num=True),
                    _num(
                        int(failed[i]),
                        flag="failed simulations (counted as not attained)" if failed[i] else "",
                    ),
                )
            )
        hdr = ["rank", "regimen", f"median ({unit})", f"90% interval ({unit})", "PTA", "failed draws"]
        parts.append(
            f'<h3>{_e(t)}</h3><p class="note">{_e(_target_text(tg, unit, model.time_unit))}</p>'
            + _table(hdr, rows, id=f"target-{k}")
        )
    body = [
        _section(
            "comparison",
            "Regimens by target",
            '<p class="note">Per target: the median and 5th-95th percentiles of the metric over the '
            "twin's draws and the probability of target attainment (PTA); regimens in the order of "
            "their rank (the PTA of the first target; ties by the distance of the median to the "
            "target range's middle).</p>",
            *parts,
        )
    ]
    draws_ = None
    note = ""
    if who == "card population" or (not who and twin is None):
        draws_ = twin_draws(model, key=jax.random.key(seed), n=n_draws, covariates=dict(sc.patient))
        note = f"bands: {min(n_draws, int(max_draws))} of the {n_draws} draws of the card's population (seed {seed})"
    elif twin is not None:
        fit = from_datatree(read_fit(Path(twin)))
        if fit.model.name != sc.model:
            raise ValueError(
                f"twin {Path(twin).name!r} is a fit of {fit.model.name!r}, but the scenario uses {sc.model!r}"
            )
        draws_ = twin_draws(
            sc.model, key=jax.random.key(seed), n=n_draws, fit=fit, patient=patient if patient else 0
        )
        note = f"bands: the fitted twin {Path(twin).name} (seed {seed})"
    else:
        note = f"the twin was the fit {who}: give it (twin=) to draw the concentration bands"
    body.append(
        _section(
            "figure",
            "Comparison figure",
            _figure(
                lambda: plots.scenario_comparison(ds, sc, draws=draws_, max_draws=int(max_draws)),
                alt=f"scenario {sc.name}: concentration bands and target attainment",
                caption=f"Left: median and 90 % band of {sc.targets[0].output} per regimen with the "
                "concentration targets; right: probability of target attainment per regimen and "
                f"target ({note})."
                if draws_ is not None
                else f"Probability of target attainment per regimen and target ({note}).",
                id="fig-scenario",
            ),
        )
    )
    body.append(
        _section(
            "scenario",
            "Scenario file",
            f'<pre id="scenario-source">{_e(attrs["scenario_source"])}</pre>',
        )
    )
    body.append(_provenance(attrs))
    nav = [
        ("comparison", "Regimens"),
        ("figure", "Figure"),
        ("scenario", "Scenario file"),
        ("provenance", "Provenance"),
    ]
    return _page(title, meta, nav, body)


# ------------------------------------------------------------------------------ cohort
def _pct(p: float) -> str:
    return f"{100 * p:.1f}" if math.isfinite(p) else "-"


def _pta_cell(p: float, lo: float, hi: float, n: int) -> _Cell:
    """A subgroup's PTA: percent, its interval and the patients it is over."""
    if not math.isfinite(p):
        return _Cell(f"- of {n}", num=True)
    return _Cell(f"{_pct(p)} % ({_pct(lo)} - {_pct(hi)} %) of {n}", num=True)


def _cohort_page(ds: xr.Dataset, name: str, *, title) -> str:
    attrs = ds.attrs
    sm = plots.cohort_summary(ds)
    sc = load_scenario(str(attrs["scenario_source"])) if attrs.get("scenario_source") else None
    scen = str(attrs.get("scenario", sc.name if sc is not None else "?"))
    model_name = str(attrs.get("model", sc.model if sc is not None else "?"))
    time_unit = get_model(sc.model).time_unit if sc is not None else "h"
    arms = [str(a) for a in ds["arm"].values]
    regimens = [str(r) for r in ds["regimen"].values] if "regimen" in ds.coords else arms
    n_all, n_done = int(sm.attrs["n_patients"]), int(sm.attrs["n_done"])
    c_done, c_all = int(sm.attrs["chunks_done"]), int(sm.attrs["n_chunks"])
    sub = str(sm.attrs["subgroup"])
    title = title or f"Cohort {scen}"
    meta = [
        f"{n_all} virtual patients x {len(arms)} arms of scenario <b>{_e(scen)}</b> (model "
        f"<b>{_e(model_name)}</b>); store <code>{_e(name)}</code>.",
        f"Written {_e(attrs.get('created', '?'))}; seed {_e(attrs.get('seed', '?'))}; "
        f'chunks done: <b id="chunks-done">{c_done} / {c_all}</b> (chunks of {_e(attrs.get("chunk", "?"))} '
        f"patients); scenario hash <code>{_e(attrs.get('scenario_hash', '-'))}</code>.",
    ]
    if sc is not None and sc.description:
        meta.insert(0, _e(sc.description))
    body: list[str] = []
    if c_done < c_all:
        body.append(
            f'<div class="warn" id="partial"><b>Partly finished run:</b> {c_done} of {c_all} chunks are '
            f"done ({n_done} of {n_all} patients). Every number and figure below is over the finished "
            "chunks only; the store's own endpoints are not written yet. Continue it with "
            f"<code>twinrx cohort run SCENARIO.toml --n {n_all} --chunk {_e(attrs.get('chunk', '?'))} "
            f"--seed {_e(attrs.get('seed', '?'))} --out {_e(name)} --resume</code>.</div>"
        )
    failed = np.asarray(sm["n_failed"].values)
    if failed.sum():
        which = ", ".join(f"{a}: {int(f)}" for a, f in zip(arms, failed) if f)
        body.append(
            f'<div class="warn" id="failed">{int(failed.sum())} failed solves ({_e(which)}): those '
            "patients count as not attained in that arm's PTA and are left out of its quantiles. "
            "<code>status</code> holds each one's code; <code>twinrx.status_message(code)</code> "
            "says what it means.</div>"
        )
    arm_rows = [
        (a, r, _num(int(sm["n_ok"].values[i])), _num(int(failed[i])))
        for i, (a, r) in enumerate(zip(arms, regimens))
    ]
    parts = [
        _table(
            ["arm", "regimen", "patients solved", "failed solves"], arm_rows, id="arms-table", cls="names"
        ),
        f'<p class="note">Paired design: every virtual patient goes through every arm with the same '
        "covariates, parameters, adherence pattern and within-patient variability. The PTA is over "
        "all patients (a failed solve counts as not attained), with its "
        f"{100 * sm.attrs['level']:g} % Wilson score interval, per subgroup level over the "
        "patients of that level; the median and the 90 % interval (5th-95th percentiles) of the "
        "metric are over the patients whose solve succeeded.</p>",
    ]
    levels = [str(x) for x in sm["level"].values] if sub else []
    for k, t in enumerate(str(x) for x in sm["target"].values):
        unit = str(sm["target_units"].values[k])
        rows, by_rows = [], []
        for i, a in enumerate(arms):
            v = {n: float(sm[n].values[i, k]) for n in ("median", "q05", "q95", "pta", "pta_low", "pta_high")}
            row = [
                a,
                _num(int(sm["n_ok"].values[i])),
                _num(
                    int(failed[i]),
                    flag="failed solves: not attained, not in the quantiles" if failed[i] else "",
                ),
                _num(v["median"]),
                _Cell(f"{_fmt(v['q05'])} - {_fmt(v['q95'])}", num=True),
                _Cell(f"{_pct(v['pta'])} %", num=True),
                _Cell(f"{_pct(v['pta_low'])} - {_pct(v['pta_high'])} %", num=True),
            ]
            rows.append(row)
            by_rows.append(
                [a]
                + [
                    _pta_cell(
                        float(sm["pta_by"].values[j, i, k]),
                        float(sm["pta_by_low"].values[j, i, k]),
                        float(sm["pta_by_high"].values[j, i, k]),
                        int(sm["n_by"].values[j, i]),
                    )
                    for j in range(len(levels))
                ]
            )
        hdr = [
            "arm",
            "n ok",
            "n failed",
            f"median ({unit})",
            f"90% interval ({unit})",
            "PTA",
            f"PTA {100 * sm.attrs['level']:g}% interval",
        ]
        note = _target_text(sc.target(t), unit, time_unit) if sc is not None else f"units: {unit}"
        parts.append(
            f'<h3>{_e(t)}</h3><p class="note">{_e(note)}</p>'
            + _table(hdr, rows, id=f"target-{k}", cls="names")
        )
        if levels:
            parts.append(
                _table(
                    ["arm", *(f"{sub} = {lv}" for lv in levels)],
                    by_rows,
                    id=f"target-{k}-by",
                    cls="names",
                    caption=f"{t}: PTA by {sub} ({100 * sm.attrs['level']:g} % interval) of the patients of the level",
                )
            )
    body.append(_section("endpoints", "Endpoints by target", *parts))
    figs = [
        _figure(
            lambda: plots.cohort_endpoints(ds),
            alt=f"cohort {scen}: target attainment and metric distributions per arm",
            caption="Per target: PTA per arm with its 95 % Wilson interval; the metric's median, 50 % "
            "and 90 % intervals per arm with the target range shaded"
            + (f"; PTA per {sub} level" if sub else "")
            + ".",
            id="fig-endpoints",
        )
    ]
    if "trajectory" in ds:
        k = int(ds.sizes["traj"])
        figs.append(
            _figure(
                lambda: plots.cohort_trajectories(ds),
                alt=f"cohort {scen}: concentration bands per arm",
                caption=f"Median and 90 % band over time per arm, over the first {k} patients "
                "(those whose solve succeeded), on the targets' output grid, with the concentration "
                "targets shaded.",
                id="fig-trajectories",
            )
        )
    body.append(_section("figures", "Figures", *figs))
    if sc is not None:
        scen_part = f'<pre id="scenario-source">{_e(attrs["scenario_source"])}</pre>'
    else:
        scen_part = (
            f'<p class="note" id="scenario-source">The store does not carry the scenario file; its '
            f"hash is <code>{_e(attrs.get('scenario_hash', '-'))}</code>.</p>"
        )
    body.append(_section("scenario", "Scenario file", scen_part))
    body.append(_provenance(attrs))
    nav = [
        ("endpoints", "Endpoints"),
        ("figures", "Figures"),
        ("scenario", "Scenario file"),
        ("provenance", "Provenance"),
    ]
    return _page(title, meta, nav, body)
