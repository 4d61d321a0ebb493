"""Pure functions of measured points: scaling exponents, crossovers, Pareto fronts, MAC ranges."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def fit_exponent(ns: Sequence[float], values: Sequence[float], points: int = 4) -> dict:
    """Least-squares slope of log(value) on log(n) over the ``points`` largest distinct n.

    Returns slope, its 95% interval (t distribution, None below 3 points), and the n used.
    """
    pairs = sorted((float(n), float(v)) for n, v in zip(ns, values) if v is not None and v > 0 and n > 0)
    pairs = pairs[-points:]
    if len({n for n, _ in pairs}) < 2:
        return {"slope": None, "ci_low": None, "ci_high": None, "n_used": [n for n, _ in pairs]}
    x = np.log([n for n, _ in pairs])
    y = np.log([v for _, v in pairs])
    slope, intercept = np.polyfit(x, y, 1)
    half = slope_half_width(x, y - (slope * x + intercept))
    return {"slope": float(slope), "ci_low": None if half is None else float(slope - half),
            "ci_high": None if half is None else float(slope + half), "n_used": [int(n) for n, _ in pairs]}


def slope_half_width(x: np.ndarray, residuals: np.ndarray) -> float | None:
    """Half width of the 95% interval of a fitted slope; None with fewer than 3 points."""
    dof = len(x) - 2
    if dof < 1:
        return None
    from scipy.stats import t

    se = math.sqrt(float(residuals @ residuals) / dof / float(((x - x.mean()) ** 2).sum()))
    return float(t.ppf(0.975, dof) * se)


def crossover(ns: Sequence[float], lat: Sequence[float], ref_ns: Sequence[float],
              ref_lat: Sequence[float]) -> tuple[float | None, str]:
    """The n beyond which a method stays faster than the reference, log-log interpolated.

    Returns (n, note); n is None when the method is slower at the largest common n, or when
    it is faster at every common n (the note then says so).
    """
    ref = dict(zip(ref_ns, ref_lat))
    pts = sorted((n, t / ref[n]) for n, t in zip(ns, lat) if n in ref and t and ref[n])
    if not pts:
        return None, "no common n with the reference"
    if pts[-1][1] >= 1:
        return None, f"not faster at the largest common n ({pts[-1][0]:g})"
    slower = [i for i, (_, r) in enumerate(pts) if r >= 1]
    if not slower:
        return None, f"faster at every common n (from {pts[0][0]:g})"
    (n0, r0), (n1, r1) = pts[slower[-1]], pts[slower[-1] + 1]
    frac = math.log(r0) / (math.log(r0) - math.log(r1))
    return float(math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0)))), "interpolated"


def pareto_mask(x: Sequence[float], y: Sequence[float]) -> list[bool]:
    """True for points no other point beats in both x and y (lower is better in both)."""
    order = sorted(range(len(x)), key=lambda i: (x[i], y[i]))
    best, keep = math.inf, [False] * len(x)
    for i in order:
        if y[i] < best:
            keep[i], best = True, y[i]
    return keep


def mac_range(macs: float | None) -> str:
    """Decade bin of a MAC count, e.g. '1e8–1e9 MACs'."""
    if macs is None or not macs > 0:
        return "unknown MACs"
    e = int(math.floor(math.log10(macs)))
    return f"1e{e}–1e{e + 1} MACs"
