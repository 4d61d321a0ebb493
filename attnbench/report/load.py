"""Read one or more run folders into one frame; every problem becomes a message, not a crash."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from attnbench import rows as R
from attnbench.report.validate import read_invocations
from attnbench.results import RowsFileError, read_rows

# Fields that set a measurement apart: rows differing in any of them are never compared as one.
# They are the identity fields of a row (attnbench.rows) except those that tell the series
# apart inside one figure (method, params, n, m), plus the run folder the rows came from.
SERIES_FIELDS = ("kind", "method", "params", "n", "m", "layer")
GROUP_FIELDS = ("source",) + tuple(k for k in R.key_fields("attention") if k not in SERIES_FIELDS)


class ReportError(Exception):
    """Nothing can be reported; the message names what is missing."""


@dataclass
class RunData:
    rows: pd.DataFrame                       # one row per JSON row, plus source/kind/device_name
    invocations: list[dict[str, Any]]        # runs.jsonl entries, each with its source
    problems: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)  # rows dropped per run folder (same identity)
    notes: list[str] = field(default_factory=list)     # e.g. damaged runs.jsonl lines skipped


def latest_run(results: Path) -> Path:
    """The run folder under ``results`` whose rows.jsonl was written last."""
    found = sorted(results.glob("*/rows.jsonl"), key=lambda p: (p.stat().st_mtime, str(p))) if results.is_dir() else []
    if not found:
        raise ReportError(f"no run found: {results}/ holds no folder with a rows.jsonl; run `bench.py sweep` first")
    return found[-1].parent


def read_run(path: Path, problems: list[str], notes: list[str] | None = None
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows, invocations) of one run folder or rows.jsonl; problems are appended, not raised."""
    rows_path = path / "rows.jsonl" if path.is_dir() else path
    if not path.exists():
        problems.append(f"run {path} does not exist")
        return [], []
    if not rows_path.exists():
        problems.append(f"run {path} has no rows.jsonl")
        return [], []
    try:
        rows = read_rows(rows_path)
    except RowsFileError as exc:
        problems.append(str(exc))
        return [], []
    if not rows:
        problems.append(f"run {path} is empty: {rows_path} holds no rows")
    invocations, skipped = read_invocations(rows_path.parent / "runs.jsonl")
    if notes is not None:
        notes += skipped
    return rows, invocations


def load_runs(paths: list[Path]) -> RunData:
    """All rows of ``paths``; raises ReportError only when no row at all could be read."""
    problems: list[str] = []
    notes: list[str] = []
    rows, invocations, duplicates = [], [], {}
    for path in paths:
        run_rows, run_invs = read_run(Path(path), problems, notes)
        source = Path(path).name if Path(path).is_dir() else Path(path).parent.name
        kept, dropped = R.dedup(run_rows)   # a point measured twice in one folder: the last row wins
        if dropped:
            duplicates[source] = duplicates.get(source, 0) + dropped
        rows += [{**r, "source": source} for r in kept]
        invocations += [{**inv, "source": source} for inv in run_invs]
    if not rows:
        raise ReportError("; ".join(problems) or "no rows")
    return RunData(normalise(pd.DataFrame(rows)), invocations, problems, duplicates, notes)


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``kind`` (attention unless stated), ``device_name`` and the grouping fields."""
    df = df.copy()
    df["kind"] = df["kind"].fillna("attention") if "kind" in df else "attention"
    env = df["env"] if "env" in df else pd.Series([None] * len(df), index=df.index)
    names = [e.get("device_name") if isinstance(e, dict) else None for e in env]
    own = df["device_name"] if "device_name" in df else pd.Series([None] * len(df), index=df.index)
    names = [o if isinstance(o, str) else n for o, n in zip(own, names)]
    df["device_name"] = [f"{d} ({n})" if n else str(d) for d, n in zip(df["device"], names)]
    for f in GROUP_FIELDS + ("m", "params"):
        if f not in df:
            df[f] = None
    df["fit_cfg"] = [json.dumps(c, sort_keys=True) if isinstance(c, dict) else c for c in df["fit_cfg"]]
    df["params_key"] = [json.dumps(p, sort_keys=True, default=str) if p else "" for p in df["params"]]
    return df
