"""The verdict: correctness against exact attention first, then speed against the baseline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from attnbench.check.prepare import Measured
from attnbench.check.processes import remeasure
from attnbench.check.stats import ratio_of_medians_ci, speed_verdict, suspect
from attnbench.check.suite import Settings, SuiteEntry, entry_of
from attnbench.check.timing import measure_speed

EXACT_FACTOR = 4.0      # an exact method may err up to this many times plain math attention
ERR_RTOL = 0.01         # an approximate method may err 1% more than in its baseline


def error_tolerance(entry: SuiteEntry, plain_err: float, base_err: float | None) -> float | None:
    """Exact methods: EXACT_FACTOR x plain attention's error; approximate: baseline error + 1% + that floor."""
    floor = EXACT_FACTOR * plain_err
    if entry.exact:
        return floor
    if base_err is None:
        return None
    return base_err * (1 + ERR_RTOL) + floor


@dataclass
class Row:
    """One line of the verdict table."""

    key: str
    verdict: str
    base: float | None = None
    now: float | None = None
    ratio: float | None = None
    lo: float | None = None
    hi: float | None = None
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict in ("WRONG", "REGRESSION", "ERROR")


def correctness_row(it: Measured, base: dict[str, Any] | None) -> Row | None:
    """A failing row when the entry errs beyond its tolerance (or cannot run); None when it passes."""
    key = it.entry.key
    if it.status == "skipped":
        return Row(key, "skipped", note=it.message or "")
    if it.status == "error":
        return Row(key, "ERROR", note=it.message or "")
    base_err = base.get("err_rel_fro") if base else None
    tol = error_tolerance(it.entry, it.plain_err, base_err)
    if not it.out_finite:
        return Row(key, "WRONG", note="output has inf or NaN")
    if tol is not None and not it.err_rel_fro <= tol:
        return Row(key, "WRONG", note=f"error {it.err_rel_fro:.3g} > tolerance {tol:.3g} vs exact attention")
    return None


def speed_row(it: Measured, base: dict[str, Any], tolerance: float) -> Row:
    ratio, lo, hi = ratio_of_medians_ci(it.samples, base["samples"])
    return Row(it.entry.key, speed_verdict(ratio, lo, hi, tolerance), float(np.median(base["samples"])),
               float(np.median(it.samples)), ratio, lo, hi, note=f"err {it.err_rel_fro:.3g}")


def compare(items: list[Measured], baseline: dict[str, Any], s: Settings, tolerance: float,
            wls: dict[int, Any], plugins: tuple[str, ...] = ()) -> list[Row]:
    """Correctness gate first; then the passing entries are timed together and compared, and
    suspected regressions are measured again in a fresh process; the second measurement decides."""
    base = {entry_of(c).key: c for c in baseline["configs"]}
    rows: dict[str, Row] = {}
    timed = []
    for it in items:
        b = base.get(it.entry.key)
        bad = correctness_row(it, b)
        if bad is not None:
            rows[it.entry.key] = bad
        elif b is None or b.get("status") != "ok":
            rows[it.entry.key] = Row(it.entry.key, "new", note="not measured in the baseline; refresh with --update")
        else:
            timed.append(it)
    measure_speed(timed, s, wls)
    for it in timed:
        rows[it.entry.key] = speed_row(it, base[it.entry.key], tolerance)
    again = [it for it in timed if suspect(rows[it.entry.key].ratio, rows[it.entry.key].lo, tolerance)]
    if again:
        where = remeasure(again, s, wls, plugins)
        for it in again:
            rows[it.entry.key] = speed_row(it, base[it.entry.key], tolerance)
            rows[it.entry.key].note += f"; measured again {where}"
    return [rows[it.entry.key] for it in items]


def needed_tolerance(rows: list[Row]) -> float:
    """The smallest --tolerance at which no speed row would be a regression (0 if none is slower)."""
    return max([0.0] + [r.lo - 1 for r in rows if r.lo is not None])


def update_problems(items: list[Measured]) -> list[Row]:
    """Rows that forbid writing a baseline: exact methods that are wrong, or errors."""
    rows = [correctness_row(it, None) for it in items]
    return [r for r in rows if r is not None and r.failed]

