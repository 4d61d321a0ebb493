"""Bootstrap statistics of speed samples and the speed verdict they give."""
from __future__ import annotations

from typing import Iterable

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP = 2000


def ratio_of_medians_ci(now: Iterable[float], base: Iterable[float], *, confidence: float = CONFIDENCE,
                        resamples: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float, float]:
    """median(now) / median(base) and its percentile-bootstrap interval (both samples resampled)."""
    a, b = np.asarray(list(now), float), np.asarray(list(base), float)
    rng = np.random.default_rng(seed)
    ra = np.median(rng.choice(a, (resamples, a.size)), axis=1)
    rb = np.median(rng.choice(b, (resamples, b.size)), axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(ra / rb, [alpha, 1 - alpha])
    return float(np.median(a) / np.median(b)), float(lo), float(hi)


def median_ci(samples: Iterable[float], *, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP,
              seed: int = 0) -> tuple[float, float, float]:
    """median(samples) and its percentile-bootstrap interval (paired ratios: one sample each)."""
    a = np.asarray(list(samples), float)
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(a, (resamples, a.size)), axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(meds, [alpha, 1 - alpha])
    return float(np.median(a)), float(lo), float(hi)


def speed_verdict(ratio: float, lo: float, hi: float, tolerance: float) -> str:
    """'REGRESSION' when the whole interval is above 1+tol, 'faster' when it is below 1-tol."""
    if lo > 1 + tolerance:
        return "REGRESSION"
    if hi < 1 - tolerance:
        return "faster"
    return "ok"


def suspect(ratio: float, lo: float, tolerance: float) -> bool:
    """Worth measuring again: slower than the tolerance by the point estimate or the interval."""
    return ratio > 1 + tolerance or lo > 1 + tolerance

