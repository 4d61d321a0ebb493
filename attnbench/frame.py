"""Rows as one flat pandas frame: ``attnbench.load_frame`` and ``bench.py export``.

One frame row per row after de-duplication by identity within each run folder (the last row
written wins, as in the report). No cell holds a dict: nested keys are joined with dots
(``env.torch``, ``params.backend``, ``impl.block_density``, ``env.roofline.matmul_tflops``).
Lists are JSON text. Column types come from the row schema (attnbench.rows): numbers float64,
integers Int64, flags boolean, text string; dotted columns take the narrowest of those that
holds every value. ``source`` names the run folder a row came from.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from attnbench import rows as R
from attnbench.results import read_rows

DTYPES = {R.NUMBER: "float64", R.INT: "Int64", R.FLAG: "boolean", R.TEXT: "string", R.LIST: "string",
          R.ANY: "string", R.MAPPING: "string"}


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"env": {"torch": "2.1"}}`` -> ``{"env.torch": "2.1"}``; an empty dict stays one null cell."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        elif isinstance(value, dict):
            out[name] = None
        else:
            out[name] = value
    return out


def _paths(path_or_paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(path_or_paths, (str, Path)):
        return [Path(path_or_paths)]
    return [Path(p) for p in path_or_paths]


def _rows_file(path: Path) -> Path:
    return path / "rows.jsonl" if path.is_dir() else path


def _source(path: Path) -> str:
    return path.name if path.is_dir() else path.parent.name


def read_deduped(path_or_paths) -> list[dict[str, Any]]:
    """Rows of every folder (or rows.jsonl), de-duplicated by identity per folder, with ``source``."""
    rows: list[dict[str, Any]] = []
    for path in _paths(path_or_paths):
        kept, _ = R.dedup(read_rows(_rows_file(path)))
        rows += [{**r, "source": _source(path)} for r in kept]
    return rows


def _text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _infer(values: list[Any]) -> str:
    """The dtype of a column outside the schema: boolean, Int64, float64 or string."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if present and all(isinstance(v, bool) for v in present):
        return "boolean"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "Int64"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float64"
    return "string"


def column_dtype(name: str, values: list[Any]) -> str:
    """The declared field's dtype, else (dotted keys, extra fields) the inferred one."""
    field = R.BY_NAME.get(name)
    if field is not None and field.type != R.ANY:
        return DTYPES[field.type]
    return _infer(values)


def to_frame(rows: list[dict[str, Any]]):
    """A flat frame of ``rows`` (dicts), columns typed as described in the module docstring."""
    import pandas as pd

    flat = [flatten(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    data = {}
    for name in columns:
        values = [r.get(name) for r in flat]
        dtype = column_dtype(name, values)
        if dtype == "string":
            values = [_text(v) for v in values]
        elif dtype == "float64":
            values = [float("nan") if v is None else float(v) for v in values]
        data[name] = pd.array(values, dtype=dtype)
    return pd.DataFrame(data, index=pd.RangeIndex(len(flat)))


def load_frame(path_or_paths: str | Path | Iterable[str | Path]):
    """Rows of one or more run folders (or rows.jsonl files) as one flat, typed pandas DataFrame.

    One frame row per row after de-duplication by identity within each folder; nested keys as
    dotted columns (``env.torch``, ``params.backend``); ``source``: the run folder's name.
    """
    return to_frame(read_deduped(path_or_paths))


EXPORT_FORMATS = ("csv", "parquet")
PARQUET_EXTRA = "parquet"


class ExportError(ValueError):
    """An export that cannot be written (a missing optional package); one line."""


def export(paths: list[Path], fmt: str, out: Path) -> int:
    """Write the frame of ``paths`` to ``out`` as CSV or Parquet; returns the number of rows."""
    frame = load_frame(paths)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ExportError(f"--format parquet needs pyarrow: pip install 'attnbench[{PARQUET_EXTRA}]'") from None
        frame.to_parquet(out, index=False)
    else:
        frame.to_csv(out, index=False, lineterminator="\n")
    return len(frame)
