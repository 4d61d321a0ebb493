"""The verdict: correctness first (output against the base's, error against exact attention),
then speed against the baseline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from attnbench.check.outputs import fingerprint_difference, output_tolerance
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


@dataclass(frozen=True)
class OutputCheck:
    """How outputs are compared with the base: its name in the verdict, the dtype (for the
    tolerance) and the methods whose output change is accepted (``--accept``)."""

    label: str = "baseline"
    dtype: str = "float32"
    accepted: frozenset[str] = frozenset()


def correctness_row(it: Measured, base: dict[str, Any] | None, oc: OutputCheck | None = None) -> Row | None:
    """A failing row when the entry's output differs from its base's (``it.out_diff``, when
    compared), errs beyond its tolerance, or cannot run; None when it passes. An accepted method
    (``oc.accepted``) is not held to its base's output or error, only to finite output (and, if
    exact, to plain attention's error)."""
    key = it.entry.key
    if it.status == "skipped":
        return Row(key, "skipped", note=it.message or "")
    if it.status == "error":
        return Row(key, "ERROR", note=it.message or "")
    oc = oc or OutputCheck()
    accepted = it.entry.method in oc.accepted
    base_err = base.get("err_rel_fro") if base and not accepted else None
    tol = error_tolerance(it.entry, it.plain_err, base_err)
    if not it.out_finite:
        return Row(key, "WRONG", note="output has inf or NaN")
    out_tol = output_tolerance(oc.dtype, it.plain_err)
    if it.out_diff is not None and not accepted and not it.out_diff <= out_tol:
        return Row(key, "WRONG", note=f"output differs from {oc.label} by {it.out_diff:.3g} > tolerance {out_tol:.3g}"
                                      f"; err {it.err_rel_fro:.3g}")
    if tol is not None and not it.err_rel_fro <= tol:
        return Row(key, "WRONG", note=f"error {it.err_rel_fro:.3g} > tolerance {tol:.3g} vs exact attention")
    return None


def output_note(it: Measured, oc: OutputCheck | None) -> str:
    """'err X; output differs from BASE by Y' (and whether that change was accepted)."""
    note = f"err {it.err_rel_fro:.3g}" if it.err_rel_fro is not None else ""
    if it.out_diff is not None and oc is not None:
        note += f"; output differs from {oc.label} by {it.out_diff:.3g}"
        if it.entry.method in oc.accepted:
            note += " (accepted)"
    return note


def stored_output_diff(it: Measured, base: dict[str, Any] | None) -> None:
    """``it.out_diff`` from the fingerprints, where the baseline has one for this configuration."""
    if it.status == "ok" and it.fingerprint is not None and base and base.get("fingerprint"):
        it.out_diff = fingerprint_difference(it.fingerprint, base["fingerprint"])


def speed_row(it: Measured, base: dict[str, Any], tolerance: float, oc: OutputCheck | None = None) -> Row:
    ratio, lo, hi = ratio_of_medians_ci(it.samples, base["samples"])
    return Row(it.entry.key, speed_verdict(ratio, lo, hi, tolerance), float(np.median(base["samples"])),
               float(np.median(it.samples)), ratio, lo, hi, note=output_note(it, oc))


def compare(items: list[Measured], baseline: dict[str, Any], s: Settings, tolerance: float,
            wls: dict[int, Any], plugins: tuple[str, ...] = (), oc: OutputCheck | None = None) -> list[Row]:
    """Correctness gate first (output fingerprint and error); then the passing entries are timed
    together and compared, and suspected regressions are measured again in a fresh process; the
    second measurement decides."""
    base = {entry_of(c).key: c for c in baseline["configs"]}
    oc = oc or OutputCheck(dtype=s.dtype)
    rows: dict[str, Row] = {}
    timed = []
    for it in items:
        b = base.get(it.entry.key)
        stored_output_diff(it, b)
        bad = correctness_row(it, b, oc)
        if bad is not None:
            rows[it.entry.key] = bad
        elif b is None or b.get("status") != "ok":
            rows[it.entry.key] = Row(it.entry.key, "new", note="not measured in the baseline; refresh with --update")
        else:
            timed.append(it)
    measure_speed(timed, s, wls)
    for it in timed:
        rows[it.entry.key] = speed_row(it, base[it.entry.key], tolerance, oc)
    again = [it for it in timed if suspect(rows[it.entry.key].ratio, rows[it.entry.key].lo, tolerance)]
    if again:
        where = remeasure(again, s, wls, plugins)
        for it in again:
            rows[it.entry.key] = speed_row(it, base[it.entry.key], tolerance, oc)
            rows[it.entry.key].note += f"; measured again {where}"
    return [rows[it.entry.key] for it in items]


def needed_tolerance(rows: list[Row]) -> float:
    """The smallest --tolerance at which no speed row would be a regression (0 if none is slower)."""
    return max([0.0] + [r.lo - 1 for r in rows if r.lo is not None])


def update_problems(items: list[Measured]) -> list[Row]:
    """Rows that forbid writing a baseline: exact methods that are wrong, or errors."""
    rows = [correctness_row(it, None) for it in items]
    return [r for r in rows if r is not None and r.failed]

