"""Non-compartmental analysis (NCA), named with CDISC PP test codes (PPTESTCD).

The rules are those of PKNCA and Phoenix WinNonlin, so that numbers agree with theirs:

- **AUC**: ``"linear"`` trapezoids, or ``"lin-up/log-down"`` (a log trapezoid
  ``(C1 - C2) (t2 - t1) / ln(C1 / C2)`` where the concentration falls and both ends are
  positive, a linear one elsewhere). AUMC follows the same rule.
- **BLQ**: a concentration that is zero or below ``lloq`` is BLQ. Leading BLQ values (before
  the first measurable one) count as 0, BLQ values between measurable ones are dropped, and
  trailing BLQ values count as 0 but only for AUCALL: PKNCA's default
  (``conc.blq = list(first="keep", middle="drop", last="keep")``). NaN is missing and dropped.
- **Dose time**: times are hours after a single dose at ``t = 0``. When the first sample is
  after 0, a point is added at the dose time, as WinNonlin does: ``C = 0`` for extravascular
  dosing, the back-extrapolated ``C0`` for an intravascular bolus (log-linear through the first
  two measurable points when they fall, else the first measurable concentration).
- **lambda_z** (LAMZ): log-linear least squares on the last 3, 4, ... measurable points after
  Tmax (Tmax itself is excluded for extravascular dosing, included for an intravascular bolus).
  Among the fits with ``LAMZ > 0`` and an adjusted R² greater than the best adjusted R² minus
  1e-4, the one with the most points wins (PKNCA's ``adj.r.squared.factor``, WinNonlin's "best
  fit"). ``lambda_z_times=(start, end)`` fits the measurable points in that window instead.
- **Extrapolation**: AUCIFO = AUCLST + CLST/LAMZ (observed Clast), AUCIFP uses the predicted
  Clast (CLSTP); AUMCIFO = AUMCLST + CLST·TLST/LAMZ + CLST/LAMZ².

A value that cannot be computed is NaN, never an exception; :attr:`NCAResult.reasons` says why.
Bad input (unsorted times, negative concentrations) raises ``ValueError`` naming the position.

Differentiable helpers for scenario metrics (:func:`auc_interval`, :func:`cmax_interval`,
:func:`ctrough`) work in JAX on a fixed output grid and can be vmapped and differentiated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
import xarray as xr

__all__ = [
    "NCAResult",
    "pp_codes",
    "nca",
    "nca_dataset",
    "auc_partial",
    "auc_interval",
    "cmax_interval",
    "ctrough",
    "AUC_METHODS",
    "ROUTES",
]

AUC_METHODS = ("linear", "lin-up/log-down")
ROUTES = ("extravascular", "intravascular")
ADJ_R2_FACTOR = 1e-4
MIN_LAMZ_POINTS = 3

_COMMON = (
    "CMAX",
    "TMAX",
    "CLST",
    "TLST",
    "AUCLST",
    "AUCALL",
    "AUMCLST",
    "LAMZ",
    "LAMZHL",
    "R2",
    "R2ADJ",
    "LAMZNPT",
    "LAMZLL",
    "LAMZUL",
    "LAMZSPN",
    "CLSTP",
    "AUCIFO",
    "AUCIFP",
    "AUCPEO",
    "AUCPEP",
    "AUMCIFO",
)
_BY_ROUTE = {
    "extravascular": ("MRTEVLST", "MRTEVIFO", "CLFO", "VZFO", "CLFP", "VZFP"),
    "intravascular": ("C0", "MRTIVLST", "MRTIVIFO", "CLO", "VZO", "CLP", "VZP", "VSSO"),
}

# What each code measures, for units (see _units) and long names.
_KIND = {
    **dict.fromkeys(("CMAX", "CLST", "CLSTP", "C0"), "conc"),
    **dict.fromkeys(("TMAX", "TLST", "LAMZHL", "LAMZLL", "LAMZUL"), "time"),
    **dict.fromkeys(("MRTEVLST", "MRTEVIFO", "MRTIVLST", "MRTIVIFO"), "time"),
    **dict.fromkeys(("AUCLST", "AUCALL", "AUCIFO", "AUCIFP"), "auc"),
    **dict.fromkeys(("AUMCLST", "AUMCIFO"), "aumc"),
    **dict.fromkeys(("AUCPEO", "AUCPEP"), "percent"),
    **dict.fromkeys(("R2", "R2ADJ", "LAMZSPN", "LAMZNPT"), "unitless"),
    **dict.fromkeys(("CLFO", "CLFP", "CLO", "CLP"), "clearance"),
    **dict.fromkeys(("VZFO", "VZFP", "VZO", "VZP", "VSSO"), "volume"),
    "LAMZ": "rate",
}
_LONG = {
    "CMAX": "maximum observed concentration",
    "TMAX": "time of the (first) maximum concentration",
    "CLST": "last measurable concentration",
    "TLST": "time of the last measurable concentration",
    "CLSTP": "concentration at TLST predicted by the lambda_z fit",
    "C0": "concentration at the dose time (observed or back-extrapolated)",
    "AUCLST": "AUC from the dose to TLST",
    "AUCALL": "AUC from the dose to the last sample, trailing BLQ values as 0",
    "AUMCLST": "AUMC from the dose to TLST",
    "LAMZ": "terminal rate constant lambda_z",
    "LAMZHL": "terminal half-life ln(2)/LAMZ",
    "R2": "R squared of the lambda_z fit",
    "R2ADJ": "adjusted R squared of the lambda_z fit",
    "LAMZNPT": "number of points in the lambda_z fit",
    "LAMZLL": "first time of the lambda_z fit",
    "LAMZUL": "last time of the lambda_z fit",
    "LAMZSPN": "span of the lambda_z fit in half-lives",
    "AUCIFO": "AUC to infinity, observed CLST",
    "AUCIFP": "AUC to infinity, predicted CLST",
    "AUCPEO": "percent of AUCIFO extrapolated",
    "AUCPEP": "percent of AUCIFP extrapolated",
    "AUMCIFO": "AUMC to infinity, observed CLST",
    "MRTEVLST": "mean residence time to TLST (extravascular)",
    "MRTEVIFO": "mean residence time to infinity, observed CLST (extravascular)",
    "MRTIVLST": "mean residence time to TLST (intravascular)",
    "MRTIVIFO": "mean residence time to infinity, observed CLST (intravascular)",
    "CLFO": "apparent clearance Dose/AUCIFO",
    "VZFO": "apparent terminal volume Dose/(LAMZ*AUCIFO)",
    "CLFP": "apparent clearance Dose/AUCIFP",
    "VZFP": "apparent terminal volume Dose/(LAMZ*AUCIFP)",
    "CLO": "clearance Dose/AUCIFO",
    "VZO": "terminal volume Dose/(LAMZ*AUCIFO)",
    "CLP": "clearance Dose/AUCIFP",
    "VZP": "terminal volume Dose/(LAMZ*AUCIFP)",
    "VSSO": "volume at steady state MRTIVIFO*CLO",
}


class NCAResult(dict):
    """``{PPTESTCD: value}`` (floats; NaN where a value cannot be computed).

    ``reasons`` maps a code (or ``"data"``) to why it is NaN, e.g.
    ``{"LAMZ": "too few measurable points after Tmax for lambda_z (2 < 3)"}``.
    """

    def __init__(self, values: Mapping[str, float], reasons: Mapping[str, str] | None = None):
        super().__init__(values)
        self.reasons: dict[str, str] = dict(reasons or {})


def pp_codes(route: str = "extravascular") -> tuple[str, ...]:
    """The PP codes :func:`nca` returns for ``route`` (intervals aside), in order."""
    return _COMMON + _BY_ROUTE[_check_route(route)]


def _check_route(route: str) -> str:
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    return route


def _check_method(method: str) -> str:
    if method not in AUC_METHODS:
        raise ValueError(f"auc_method must be one of {AUC_METHODS}, got {method!r}")
    return method


# --------------------------------------------------------------------------- input cleaning


def _clean(time, conc, lloq: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated arrays with NaN pairs dropped and BLQ rules applied.

    Returns (t, c, measurable): leading BLQ as 0, middle BLQ dropped, trailing BLQ as 0.
    """
    t = np.asarray(time, dtype=np.float64)
    c = np.asarray(conc, dtype=np.float64)
    if t.ndim != 1 or c.shape != t.shape:
        raise ValueError(
            f"time and conc must be 1-D arrays of the same length, got shapes {t.shape} and {c.shape}"
        )
    if not math.isfinite(lloq) or lloq < 0:
        raise ValueError(f"lloq must be a finite number >= 0, got {lloq!r}")
    pos = np.flatnonzero(~np.isnan(t) & ~np.isnan(c))
    t, c = t[pos], c[pos]
    for arr, name in ((t, "time"), (c, "concentration")):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            i = pos[bad[0]]
            raise ValueError(
                f"{name} at position {i} is infinite ({arr[bad[0]]}); pass NaN for a missing value"
            )
    if t.size and t.min() < 0:
        k = int(np.argmin(t))
        raise ValueError(
            f"time at position {pos[k]} is negative ({t[k]} h); nca() takes times after a single "
            "dose at t = 0 (use auc_partial for an interval of a longer profile)"
        )
    step = np.flatnonzero(np.diff(t) <= 0)
    if step.size:
        k = step[0]
        raise ValueError(
            f"time must be strictly increasing: position {pos[k + 1]} (t = {t[k + 1]}) does not come "
            f"after position {pos[k]} (t = {t[k]}); sort the profile by time and drop duplicate samples"
        )
    neg = np.flatnonzero(c < 0)
    if neg.size:
        k = neg[0]
        raise ValueError(
            f"concentration at position {pos[k]} (t = {t[k]}) is negative ({c[k]}); concentrations must "
            "be >= 0 (pass values below the LLOQ as 0 or NaN, and the LLOQ as `lloq`)"
        )
    meas = (c > 0) & (c >= lloq)
    if not meas.any():
        return t, np.zeros_like(c), meas
    idx = np.flatnonzero(meas)
    first, last = idx[0], idx[-1]
    keep = np.ones(t.size, dtype=bool)
    keep[first:last] = meas[first:last]  # middle BLQ dropped
    c = np.where(meas, c, 0.0)
    return t[keep], c[keep], meas[keep]


# ----------------------------------------------------------------------------- trapezoids


def _segments(t: np.ndarray, c: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """AUC and AUMC of each segment between consecutive points."""
    t1, t2, c1, c2 = t[:-1], t[1:], c[:-1], c[1:]
    h = t2 - t1
    auc = 0.5 * h * (c1 + c2)
    aumc = 0.5 * h * (t1 * c1 + t2 * c2)
    if method == "lin-up/log-down":
        log = (c1 > 0) & (c2 > 0) & (c2 < c1)
        if log.any():
            a, b, hh, s1, s2 = c1[log], c2[log], h[log], t1[log], t2[log]
            r = np.log(a / b)
            auc[log] = (a - b) * hh / r
            # integral of t * C1 exp(-k (t - t1)) over [t1, t2] with k = r / h
            aumc[log] = (a * s1 - b * s2) * hh / r + (a - b) * hh**2 / r**2
    return auc, aumc


def _interp(t: np.ndarray, c: np.ndarray, x: float, method: str) -> float:
    """Concentration at ``x`` inside [t[0], t[-1]]: linear, or log-linear where it falls."""
    j = int(np.searchsorted(t, x, side="right")) - 1
    if j >= t.size - 1:
        return float(c[-1])
    t1, t2, c1, c2 = t[j], t[j + 1], c[j], c[j + 1]
    f = (x - t1) / (t2 - t1)
    if method == "lin-up/log-down" and c1 > 0 and c2 > 0 and c2 < c1:
        return float(c1 * (c2 / c1) ** f)
    return float(c1 + f * (c2 - c1))


def _area(t: np.ndarray, c: np.ndarray, a: float, b: float, method: str) -> float:
    """AUC over [a, b] inside the data range, interpolating the ends by ``method``."""
    inner = (t > a) & (t < b)
    tt = np.concatenate(([a], t[inner], [b]))
    cc = np.concatenate(([_interp(t, c, a, method)], c[inner], [_interp(t, c, b, method)]))
    return float(_segments(tt, cc, method)[0].sum())


# ------------------------------------------------------------------------------- lambda_z


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """Least-squares y = b0 + b1 x -> (lambda_z = -b1, intercept, R², adjusted R²)."""
    n = x.size
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    sxy = float(((x - xm) * (y - ym)).sum())
    syy = float(((y - ym) ** 2).sum())
    b1 = sxy / sxx
    b0 = ym - b1 * xm
    r2 = 1.0 - float(((y - b0 - b1 * x) ** 2).sum()) / syy if syy > 0 else math.nan
    adj = 1.0 - (1.0 - r2) * (n - 1) / (n - 2)
    return -b1, float(b0), r2, adj


def _lambda_z(t, c, meas, tmax, tlast, route, window) -> tuple[dict[str, float], str | None]:
    nan = math.nan
    out = dict(LAMZ=nan, R2=nan, R2ADJ=nan, LAMZNPT=nan, LAMZLL=nan, LAMZUL=nan, b0=nan)
    use = meas & (t <= tlast)
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
        use &= (t >= lo) & (t <= hi)
        where = f"in lambda_z_times [{lo:g}, {hi:g}]"
    else:
        use &= t > tmax if route == "extravascular" else t >= tmax
        where = "after Tmax" if route == "extravascular" else "from Tmax on"
    x, y = t[use], np.log(c[use])
    n = x.size
    if n < MIN_LAMZ_POINTS:
        return out, f"too few measurable points {where} for lambda_z ({n} < {MIN_LAMZ_POINTS})"
    if window is not None:
        fits = [(n, *_fit(x, y))]
    else:
        fits = [(k, *_fit(x[-k:], y[-k:])) for k in range(MIN_LAMZ_POINTS, n + 1)]
    adj = np.array([f[4] for f in fits])
    if np.all(np.isnan(adj)):
        return out, f"the measurable concentrations {where} are all equal; lambda_z cannot be estimated"
    best = np.nanmax(adj)
    ok = [f for f in fits if f[1] > 0 and f[4] > best - ADJ_R2_FACTOR]
    if not ok:
        return out, f"no log-linear fit of the points {where} has lambda_z > 0 (the profile does not fall)"
    k, lam, b0, r2, a = max(ok, key=lambda f: f[0])
    xs = x[-k:]
    out.update(LAMZ=lam, R2=r2, R2ADJ=a, LAMZNPT=float(k), LAMZLL=float(xs[0]), LAMZUL=float(xs[-1]), b0=b0)
    return out, None


def _with_dose_point(t, c, meas, route) -> tuple[np.ndarray, np.ndarray, float]:
    """The profile with a point at the dose time (t = 0) when the first sample is later:
    0 for extravascular dosing, C0 for an intravascular bolus (WinNonlin's rule)."""
    if t[0] == 0.0:
        return t, c, float(c[0])
    if route == "intravascular":
        j = np.flatnonzero(meas)[:2]
        if j.size == 2 and c[j[1]] < c[j[0]]:
            t1, t2, c1, c2 = t[j[0]], t[j[1]], c[j[0]], c[j[1]]
            c0 = float(c1 * math.exp(math.log(c1 / c2) / (t2 - t1) * t1))  # log-linear back to t = 0
        else:
            c0 = float(c[j[0]])
    else:
        c0 = 0.0
    return np.concatenate(([0.0], t)), np.concatenate(([c0], c)), c0


# -------------------------------------------------------------------------------- public


def nca(
    time,
    conc,
    *,
    dose: float | None = None,
    route: str = "extravascular",
    auc_method: str = "lin-up/log-down",
    lloq: float = 0.0,
    lambda_z_times: tuple[float, float] | None = None,
    intervals: Sequence[tuple[float, float]] | None = None,
) -> NCAResult:
    """Non-compartmental analysis of one concentration-time profile after a single dose.

    Parameters
    ----------
    time, conc
        Sampling times (h after the dose at t = 0, strictly increasing) and concentrations
        (>= 0; NaN for missing). Any consistent units; the results are in the same ones.
    dose
        Dose amount, for the clearances and volumes (NaN when None).
    route
        ``"extravascular"`` (oral, sc, ...: CLFO, VZFO, MRTEV*) or ``"intravascular"``
        (IV bolus: C0, CLO, VZO, VSSO, MRTIV*).
    auc_method
        ``"lin-up/log-down"`` (default, as PKNCA) or ``"linear"``.
    lloq
        Lower limit of quantification; values below it are BLQ (see the module notes).
    lambda_z_times
        ``(start, end)``: fit lambda_z to the measurable points in this window instead of
        choosing the points automatically.
    intervals
        ``[(t1, t2), ...]``: add ``AUCINT_<t1>_<t2>`` (partial AUC, see :func:`auc_partial`)
        and ``CTROUGH_<t1>_<t2>`` (concentration at t2) for each.

    Returns
    -------
    NCAResult
        A dict ``{PPTESTCD: float}`` with :func:`pp_codes` keys; NaN where a value cannot be
        computed, and the reason in ``result.reasons``.

    Examples
    --------
    >>> r = nca([0, 1, 2, 4, 6, 8], [0, 8, 6, 4, 2, 1], dose=100.0)
    >>> round(r["LAMZ"], 4), r["LAMZNPT"]
    (0.3466, 3.0)
    """
    route, method = _check_route(route), _check_method(auc_method)
    for a, b in intervals or ():
        if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b < a:
            raise ValueError(f"an interval must be (t1, t2) with 0 <= t1 <= t2 < inf, got ({a!r}, {b!r})")
    if lambda_z_times is not None and not float(lambda_z_times[0]) < float(lambda_z_times[1]):
        raise ValueError(f"lambda_z_times must be (start, end) with start < end, got {lambda_z_times!r}")
    t, c, meas = _clean(time, conc, lloq)
    res: dict[str, float] = dict.fromkeys(pp_codes(route), math.nan)
    reasons: dict[str, str] = {}
    for a, b in intervals or ():
        res[f"AUCINT_{a:g}_{b:g}"] = math.nan
        res[f"CTROUGH_{a:g}_{b:g}"] = math.nan
    if not meas.any():
        reasons["data"] = (
            "no measurable concentration (all missing, zero or below the LLOQ)"
            if t.size
            else "no samples (all missing)"
        )
        if t.size:
            res.update(CMAX=0.0, AUCLST=0.0, AUCALL=0.0, AUMCLST=0.0)
        return NCAResult(res, reasons)

    # Cmax/Tmax/Clast/Tlast come from the observations, before a dose-time point is added.
    im = int(np.argmax(c))  # argmax returns the first maximum
    il = int(np.flatnonzero(meas)[-1])
    tmax, tlast, clast = float(t[im]), float(t[il]), float(c[il])
    res.update(CMAX=float(c[im]), TMAX=tmax, CLST=clast, TLST=tlast)

    ta, ca, c0 = _with_dose_point(t, c, meas, route)
    if route == "intravascular":
        res["C0"] = c0

    auc, aumc = _segments(ta, ca, method)
    nl = int(np.searchsorted(ta, tlast))  # segments up to tlast
    auclst, aumclst = float(auc[:nl].sum()), float(aumc[:nl].sum())
    res.update(AUCLST=auclst, AUCALL=float(auc.sum()), AUMCLST=aumclst)
    mrt = "MRTEV" if route == "extravascular" else "MRTIV"
    res[mrt + "LST"] = aumclst / auclst if auclst > 0 else math.nan

    lz, why = _lambda_z(t, c, meas, tmax, tlast, route, lambda_z_times)
    if why is not None:
        reasons["LAMZ"] = why
    lam = lz["LAMZ"]
    res.update({k: v for k, v in lz.items() if k != "b0"})
    if math.isfinite(lam):
        clstp = math.exp(lz["b0"] - lam * tlast)
        aucifo = auclst + clast / lam
        aucifp = auclst + clstp / lam
        aumcifo = aumclst + clast * tlast / lam + clast / lam**2
        hl = math.log(2.0) / lam
        res.update(
            LAMZHL=hl,
            LAMZSPN=(lz["LAMZUL"] - lz["LAMZLL"]) / hl,
            CLSTP=clstp,
            AUCIFO=aucifo,
            AUCIFP=aucifp,
            AUCPEO=100.0 * (aucifo - auclst) / aucifo,
            AUCPEP=100.0 * (aucifp - auclst) / aucifp,
            AUMCIFO=aumcifo,
        )
        res[mrt + "IFO"] = aumcifo / aucifo
        if dose is not None:
            d = float(dose)
            cl, vz, clp, vzp = (
                ("CLFO", "VZFO", "CLFP", "VZFP") if route == "extravascular" else ("CLO", "VZO", "CLP", "VZP")
            )
            res.update({cl: d / aucifo, vz: d / (lam * aucifo), clp: d / aucifp, vzp: d / (lam * aucifp)})
            if route == "intravascular":
                res["VSSO"] = res["MRTIVIFO"] * res["CLO"]

    for a, b in intervals or ():
        key = f"{a:g}_{b:g}"
        try:
            res[f"AUCINT_{key}"] = _auc_partial_clean(ta, ca, tlast, clast, a, b, method, lam)
            res[f"CTROUGH_{key}"] = _conc_at(ta, ca, tlast, clast, b, method, lam)
        except _Undefined as err:
            reasons[f"AUCINT_{key}"] = str(err)
    return NCAResult(res, reasons)


class _Undefined(Exception):
    pass


def _conc_at(t, c, tlast, clast, x, method, lam) -> float:
    if x <= tlast:
        return _interp(t, c, x, method)
    if not math.isfinite(lam):
        raise _Undefined(f"t = {x:g} is after Tlast ({tlast:g}) and lambda_z is not available")
    return clast * math.exp(-lam * (x - tlast))


def _auc_partial_clean(t, c, tlast, clast, a, b, method, lam) -> float:
    if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b < a:
        raise ValueError(f"an AUC interval must be (t1, t2) with 0 <= t1 <= t2 < inf, got ({a!r}, {b!r})")
    inside = _area(t, c, a, min(b, tlast), method) if a < tlast else 0.0
    if b <= tlast:
        return inside
    if not math.isfinite(lam):
        raise _Undefined(f"the interval ends after Tlast ({tlast:g}) and lambda_z is not available")
    # exact integral of Clast exp(-lambda (t - tlast)) over [max(a, tlast), b]
    lo = max(a, tlast)
    return inside + clast / lam * (math.exp(-lam * (lo - tlast)) - math.exp(-lam * (b - tlast)))


def auc_partial(
    time,
    conc,
    start: float,
    end: float,
    *,
    auc_method: str = "lin-up/log-down",
    lloq: float = 0.0,
    route: str = "extravascular",
    lambda_z: float | None = None,
) -> float:
    """AUC over ``[start, end]`` (PKNCA's ``aucint``; CDISC AUCINT).

    Inside the data, the ends are interpolated by ``auc_method`` (log-linear on a falling
    segment for lin-up/log-down, linear otherwise). After Tlast the curve is extrapolated
    as ``Clast exp(-lambda_z (t - Tlast))``; ``lambda_z`` defaults to the one :func:`nca`
    estimates. NaN when the interval needs an extrapolation that is not available.

    Examples
    --------
    >>> auc_partial([0, 1, 2], [0, 2, 2], 0.5, 1.5, auc_method="linear")
    1.75
    """
    method = _check_method(auc_method)
    t, c, meas = _clean(time, conc, lloq)
    if not meas.any():
        return math.nan
    il = int(np.flatnonzero(meas)[-1])
    tlast, clast = float(t[il]), float(c[il])
    if lambda_z is None:
        r = nca(time, conc, route=route, auc_method=method, lloq=lloq, intervals=[(start, end)])
        return r[f"AUCINT_{start:g}_{end:g}"]
    t, c, _ = _with_dose_point(t, c, meas, _check_route(route))
    try:
        return _auc_partial_clean(t, c, tlast, clast, float(start), float(end), method, float(lambda_z))
    except _Undefined:
        return math.nan


# ------------------------------------------------------------------------------- datasets


def _units(kind: str, cu: str, tu: str, du: str) -> tuple[str, float]:
    """(unit, factor) for a code of ``kind``; clearances and volumes converted to L/h and L
    when the dimensions allow (a factor of 1 for mg doses and mg/L concentrations)."""
    if kind == "conc":
        return cu, 1.0
    if kind == "time":
        return tu, 1.0
    if kind == "rate":
        return f"1/{tu}", 1.0
    if kind == "auc":
        return f"{tu}*{cu}", 1.0
    if kind == "aumc":
        return f"{tu}*{tu}*{cu}", 1.0
    if kind == "percent":
        return "%", 1.0
    if kind == "unitless":
        return "1", 1.0
    from .units import UnitError, conversion

    raw = f"{du}/({cu})" if kind == "volume" else f"{du}/({tu}*{cu})"
    target = "L" if kind == "volume" else f"L/{tu}"
    try:
        return target, conversion(raw, target)
    except UnitError:
        return raw, 1.0


def nca_dataset(
    ds: xr.Dataset,
    output: str = "CP",
    *,
    dose: Any = None,
    dose_unit: str = "mg",
    route: str = "extravascular",
    auc_method: str = "lin-up/log-down",
    lloq: float = 0.0,
    lambda_z_times: tuple[float, float] | None = None,
    intervals: Sequence[tuple[float, float]] | None = None,
) -> xr.Dataset:
    """:func:`nca` for every patient of a simulation or observation Dataset.

    Parameters
    ----------
    ds
        Dims ``(patient, time)`` as :func:`twinrx.simulate` returns: times from the ``time``
        coordinate, or from a ``TIME`` variable ``(patient, time|record)`` when each patient
        has its own (NaN entries are skipped).
    output
        The concentration variable; its ``units`` attr sets the units of the results.
    dose
        A number, one per patient (array or DataArray over ``patient``), or None.
    dose_unit
        Unit of ``dose``. Clearances and volumes are reported in L/h and L when the units
        allow (mg and mg/L: no conversion), else in the derived unit.
    route, auc_method, lloq, lambda_z_times, intervals
        As for :func:`nca`.

    Returns
    -------
    xarray.Dataset
        One variable per PP code, dims ``(patient,)``, ``units`` and ``long_name`` in attrs,
        and ``nca_note`` (why values are NaN, "" when none).

    Examples
    --------
    >>> import twinrx
    >>> ev = twinrx.EventTable.from_records([0.0], evid=[1], amt=[100.0], cmt=[1])
    >>> sim = twinrx.simulate("one_cpt_oral", {"CL": 5.0, "V": 50.0, "KA": 1.0}, ev,
    ...                       times=np.linspace(0, 72, 97))
    >>> res = nca_dataset(sim, dose=100.0)
    >>> res.CLFO.attrs["units"], bool(abs(res.CLFO.item() - 5.0) < 0.05)
    ('L/h', True)
    """
    if output not in ds:
        raise ValueError(f"output {output!r} is not in the Dataset; it has {sorted(map(str, ds.data_vars))}")
    da = ds[output]
    if da.ndim != 2 or da.dims[0] != "patient":
        raise ValueError(f"{output!r} must have dims (patient, time), got {da.dims}")
    tdim = da.dims[1]
    if "TIME" in ds and ds["TIME"].dims == da.dims:
        times = np.asarray(ds["TIME"].values, dtype=np.float64)
        tu = ds["TIME"].attrs.get("units", "h")
    elif tdim in ds.coords and ds[tdim].ndim == 1:
        times = np.broadcast_to(np.asarray(ds[tdim].values, dtype=np.float64), da.shape)
        tu = ds[tdim].attrs.get("units", "h")
    else:
        raise ValueError(f"no times for {output!r}: need a 1-D {tdim!r} coordinate or a TIME variable")
    conc = np.asarray(da.values, dtype=np.float64)
    n = conc.shape[0]
    if isinstance(dose, xr.DataArray):
        doses = np.asarray(dose.broadcast_like(da.isel({tdim: 0}, drop=True)).values, dtype=np.float64)
    elif dose is None:
        doses = [None] * n
    else:
        doses = np.broadcast_to(np.asarray(dose, dtype=np.float64), (n,))
    cu = da.attrs.get("units", "") or "1"
    codes = list(pp_codes(route))
    for a, b in intervals or ():
        codes += [f"AUCINT_{a:g}_{b:g}", f"CTROUGH_{a:g}_{b:g}"]
    values = {k: np.full(n, np.nan) for k in codes}
    notes = np.empty(n, dtype=object)
    for i in range(n):
        d = doses[i]
        r = nca(
            times[i],
            conc[i],
            dose=None if d is None else float(d),
            route=route,
            auc_method=auc_method,
            lloq=lloq,
            lambda_z_times=lambda_z_times,
            intervals=intervals,
        )
        for k in codes:
            values[k][i] = r[k]
        notes[i] = "; ".join(f"{k}: {v}" for k, v in r.reasons.items())
    data = {}
    for k in codes:
        base = k.split("_")[0]
        kind = {"AUCINT": "auc", "CTROUGH": "conc"}.get(base, _KIND.get(k))
        unit, f = _units(kind, cu, tu, dose_unit)
        long = _LONG.get(k) or (
            f"AUC over [{k.split('_')[1]}, {k.split('_')[2]}] {tu}"
            if base == "AUCINT"
            else f"concentration at {k.split('_')[2]} {tu}"
        )
        data[k] = (("patient",), values[k] * f, {"units": unit, "long_name": long})
    data["nca_note"] = (("patient",), notes, {"long_name": "why NCA values are NaN"})
    coords = {"patient": ds["patient"].values} if "patient" in ds.coords else {}
    out = xr.Dataset(data, coords=coords)
    out.attrs.update(
        {
            "nca_output": output,
            "route": route,
            "auc_method": auc_method,
            "lloq": float(lloq),
            "dose_unit": dose_unit,
            "convention": "CDISC PPTESTCD codes; PKNCA/WinNonlin rules (see twinrx.nca)",
        }
    )
    if "model" in ds.attrs:
        out.attrs["model"] = ds.attrs["model"]
    return out


# ---------------------------------------------------------------- JAX, differentiable


def auc_interval(t, c, t1, t2):
    """Linear-trapezoid AUC of the piecewise-linear interpolant of ``c`` over ``[t1, t2]``.

    For scenario metrics inside JAX: differentiable with respect to ``c`` (the trapezoid
    weights), ``t1`` and ``t2`` (``-c(t1)`` and ``c(t2)``), jittable and vmappable. ``t`` is
    the strictly increasing output grid (h); the interval is clipped to it (no extrapolation).

    Examples
    --------
    >>> float(auc_interval(jnp.array([0.0, 1.0, 2.0]), jnp.array([0.0, 2.0, 2.0]), 0.5, 1.5))
    1.75
    """
    t = jnp.asarray(t)
    c = jnp.asarray(c)
    ta, tb, ca, cb = t[:-1], t[1:], c[:-1], c[1:]
    lo = jnp.clip(t1, ta, tb)
    hi = jnp.clip(t2, ta, tb)
    slope = (cb - ca) / (tb - ta)
    clo = ca + slope * (lo - ta)
    chi = ca + slope * (hi - ta)
    return jnp.sum(jnp.where(hi > lo, 0.5 * (hi - lo) * (clo + chi), 0.0))


def ctrough(t, c, t_end):
    """Concentration at ``t_end`` (end of a dosing interval), linear interpolation on the grid.

    Differentiable in ``c`` and ``t_end``; vmappable.
    """
    return jnp.interp(t_end, jnp.asarray(t), jnp.asarray(c))


def cmax_interval(t, c, t1=-jnp.inf, t2=jnp.inf):
    """Largest concentration over ``[t1, t2]``: grid points inside and the interpolated ends.

    Differentiable in ``c`` (the gradient flows to the maximum); vmappable.
    """
    t = jnp.asarray(t)
    c = jnp.asarray(c)
    inside = (t >= t1) & (t <= t2)
    m = jnp.max(jnp.where(inside, c, -jnp.inf))
    a = jnp.clip(t1, t[0], t[-1])
    b = jnp.clip(t2, t[0], t[-1])
    return jnp.maximum(m, jnp.maximum(jnp.interp(a, t, c), jnp.interp(b, t, c)))
