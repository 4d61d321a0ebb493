"""The report's first screen, as pure functions of one group's ok rows.

Per measured n: the fastest approximate method whose ``err_skill`` reaches 0.5 (and 0.9), the
smallest in memory at 0.5, the exact baseline beside them; per approximate family: the n at
which its fastest method overtakes exact attention, bracketed by the measured n around it.

``err_skill`` = 1 − err_rel_fro / err_rel_fro of uniform attention on the same inputs: 0 is no
better than averaging v, 1 is exact. Exact methods are the ``vanilla`` family, the null model
is ``uniform`` (family ``null``); every other family is approximate.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd

from attnbench.report.stats import crossover

EXACT_FAMILY = "vanilla"
NULL_FAMILY = "null"
REFERENCE = "vanilla-sdpa"
SKILL_BARS = (0.5, 0.9)


@dataclass(frozen=True)
class Pick:
    """One row chosen for the verdict: its series, n and the figure shown."""

    series: str
    n: int
    latency_ms: float | None
    peak_mem_mib: float | None
    skill: float | None


@dataclass(frozen=True)
class Crossover:
    """Where an approximate family's fastest method becomes faster than the exact baseline.

    ``kind``: "between" (slower at ``low``, faster at ``high`` and every larger n), "below"
    (faster at every measured n; ``high`` is the smallest), "beyond" (slower at the largest
    measured n, ``low``), or "none" (no n in common with the baseline).
    """

    family: str
    kind: str
    low: int | None
    high: int | None
    estimate: float | None          # log-log interpolated n, for "between"
    low_series: str | None
    high_series: str | None


def numeric(col: pd.Series) -> pd.Series:
    return pd.to_numeric(col, errors="coerce")


def families(rows: pd.DataFrame) -> pd.Series:
    """The family of each row; the method name where the row names none."""
    fam = rows["family"] if "family" in rows else pd.Series(None, index=rows.index, dtype=object)
    return fam.where(fam.notna(), rows["method"]).astype(str)


def skill(rows: pd.DataFrame) -> pd.Series:
    """err_skill per row; where a row lacks it, 1 − err / err_uniform from its own
    ``err_uniform_rel_fro`` or, failing that, from the uniform row at the same n."""
    err = numeric(rows.get("err_rel_fro", pd.Series(None, index=rows.index)))
    given = numeric(rows.get("err_skill", pd.Series(None, index=rows.index)))
    own = numeric(rows.get("err_uniform_rel_fro", pd.Series(None, index=rows.index)))
    uni = rows[rows["method"] == "uniform"]
    by_n = dict(zip(uni["n"], numeric(uni["err_rel_fro"]))) if "err_rel_fro" in uni else {}
    base = own.where(own.notna(), rows["n"].map(by_n))
    base = numeric(base).where(numeric(base) > 0)
    return given.where(given.notna(), 1.0 - err / base)


def with_derived(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with family filled, ``skill`` and ``peak_mem_mib`` (from bytes where absent)."""
    out = rows.copy()
    out["family"] = families(out)
    out["skill"] = skill(out)
    if "peak_mem_mib" not in out:
        out["peak_mem_mib"] = numeric(out.get("peak_mem_bytes", pd.Series(None, index=out.index))) / 2**20
    out["latency_ms"] = numeric(out.get("latency_ms", pd.Series(None, index=out.index)))
    return out


def approximate(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[~rows["family"].isin((EXACT_FAMILY, NULL_FAMILY))]


def baseline_series(rows: pd.DataFrame) -> str | None:
    """The exact series the verdict compares with: vanilla-sdpa (its first parameter set) if
    measured, else the exact series measured at the most n (then the lowest total latency)."""
    exact = rows[(rows["family"] == EXACT_FAMILY) & rows["latency_ms"].notna()]
    if exact.empty:
        return None
    ref = exact[exact["method"] == REFERENCE]
    if len(ref):
        return min(ref["series"])
    stats = exact.groupby("series").agg(count=("n", "nunique"), total=("latency_ms", "sum"))
    return min(stats.index, key=lambda s: (-stats.loc[s, "count"], stats.loc[s, "total"], s))


def pick(row: pd.Series) -> Pick:
    mib = row.get("peak_mem_mib")
    return Pick(str(row["series"]), int(row["n"]), _float(row["latency_ms"]), _float(mib), _float(row.get("skill")))


def _float(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def best(rows: pd.DataFrame, by: str, bar: float) -> Pick | None:
    """The approximate row with the lowest ``by`` among those with skill >= ``bar``; ties by series."""
    cand = approximate(rows)
    cand = cand[(cand["skill"] >= bar) & numeric(cand[by]).notna()]
    if cand.empty:
        return None
    return pick(cand.assign(_v=numeric(cand[by])).sort_values(["_v", "series"], kind="stable").iloc[0])


@dataclass(frozen=True)
class NVerdict:
    """The verdict at one n; a pick is None when no approximate method reaches the bar."""

    n: int
    exact: Pick | None
    fastest: dict[float, Pick | None]   # skill bar -> fastest approximate row reaching it
    smallest: Pick | None               # least peak memory among rows with skill >= 0.5


def verdict(rows: pd.DataFrame, bars: tuple[float, ...] = SKILL_BARS) -> list[NVerdict]:
    """One NVerdict per measured n, in increasing n."""
    rows = with_derived(rows)
    base = baseline_series(rows)
    out = []
    for n in sorted(int(x) for x in rows["n"].unique()):
        at = rows[rows["n"] == n]
        ref = at[(at["series"] == base) & at["latency_ms"].notna()] if base else at.iloc[0:0]
        out.append(NVerdict(n, pick(ref.iloc[0]) if len(ref) else None,
                            {bar: best(at, "latency_ms", bar) for bar in bars}, best(at, "peak_mem_mib", bars[0])))
    return out


def family_fastest(rows: pd.DataFrame, family: str) -> dict[int, Pick]:
    """n -> the family's fastest row at that n."""
    fam = rows[(rows["family"] == family) & rows["latency_ms"].notna()]
    fam = fam.sort_values(["n", "latency_ms", "series"], kind="stable").drop_duplicates("n")
    return {int(r["n"]): pick(r) for _, r in fam.iterrows()}


def family_crossover(rows: pd.DataFrame, family: str, base: str) -> Crossover:
    """Crossover of one family's fastest method against the baseline series ``base``."""
    fam = family_fastest(rows, family)
    ref = {int(r["n"]): float(r["latency_ms"]) for _, r in rows[rows["series"] == base].iterrows()
           if pd.notna(r["latency_ms"])}
    common = sorted(set(fam) & set(ref))
    if not common:
        return Crossover(family, "none", None, None, None, None, None)
    faster = [fam[n].latency_ms < ref[n] for n in common]
    if not faster[-1]:
        return Crossover(family, "beyond", common[-1], None, None, fam[common[-1]].series, None)
    first = max(i for i, f in enumerate(faster) if not f) + 1 if not all(faster) else 0
    if first == 0:
        return Crossover(family, "below", None, common[0], None, None, fam[common[0]].series)
    low, high = common[first - 1], common[first]
    est, _ = crossover([low, high], [fam[low].latency_ms, fam[high].latency_ms], [low, high], [ref[low], ref[high]])
    return Crossover(family, "between", low, high, est, fam[low].series, fam[high].series)


def crossovers(rows: pd.DataFrame) -> list[Crossover]:
    """One Crossover per approximate family (sorted by name); empty without an exact baseline."""
    rows = with_derived(rows)
    base = baseline_series(rows)
    if base is None:
        return []
    return [family_crossover(rows, f, base) for f in sorted(approximate(rows)["family"].unique())]


def crossover_text(c: Crossover) -> str:
    """'between n=196 and n=1024 (≈ 412)', 'at or below n=196', 'beyond n=4096', 'no common n'."""
    if c.kind == "between":
        est = f" (≈ {c.estimate:.0f}, log-log interpolated)" if c.estimate else ""
        return f"between n={c.low} and n={c.high}{est}"
    if c.kind == "below":
        return f"at or below n={c.high}: faster at every measured n"
    if c.kind == "beyond":
        return f"beyond n={c.low}: still slower at the largest measured n"
    return "no n measured in common with the exact baseline"


def gaussian_note(rows: pd.DataFrame) -> str | None:
    """Why the errors of a ``gaussian`` group sit near 1: a sentence with the measured entropy."""
    workload = set(rows["workload"].dropna().astype(str)) if "workload" in rows else set()
    if not any(w == "gaussian" for w in workload):
        return None
    ent = numeric(rows.get("attn_entropy_ratio", pd.Series(dtype=float))).dropna()
    measured = f" (mean attn_entropy_ratio {ent.mean():.2f}, i.e. the row entropy of exact attention is " \
               f"{ent.mean():.2f} × log n)" if len(ent) else ""
    return ("Workload gaussian: q, k and v are independent random numbers, so exact attention spreads each "
            f"query's weight over many unrelated keys{measured} and its output is a weighted mean of random "
            "values with no structure an approximation could find. Every approximation therefore lands at about "
            "the error of averaging v (err_rel_fro near 1, err_skill near 0): this group measures speed and "
            "memory, not quality. Use the image workload (the default) or file: for errors that mean something.")


_SLUG = re.compile(r"[^a-z0-9]+")


def slug(text: str) -> str:
    """A lower-case anchor fragment: runs of other characters become one '-'."""
    return _SLUG.sub("-", str(text).lower()).strip("-")


def row_anchor(suffix: str, series: str, n: int) -> str:
    """The HTML id of the measurements-table row of (series, n) in the group with ``suffix``."""
    return f"row{suffix}-{slug(series)}-n{int(n)}"
