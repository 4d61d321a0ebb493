"""Read and validate rows.jsonl files into lists of dicts or a pandas DataFrame."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REQUIRED_FIELDS = ("method", "n", "status", "device", "dtype", "mode")
STATUSES = ("ok", "oom", "error", "unsupported", "timeout")


class RowsFileError(ValueError):
    """A rows.jsonl that cannot be used; the message names the file and line."""


def read_rows(path: str | Path, repair_tail: bool = False) -> list[dict[str, Any]]:
    """Parse a rows.jsonl. A corrupt line raises RowsFileError naming its line number.

    With ``repair_tail``, a last line without its newline (a row cut off by a killed
    process) is removed from the file instead of raising: it is the row that was in flight.
    """
    path = Path(path)
    data = path.read_bytes()
    if repair_tail and data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        path.write_bytes(data[:cut])
        data = data[:cut]
    rows = []
    for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RowsFileError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise RowsFileError(f"{path}: line {lineno} is not a JSON object")
        missing = [f for f in REQUIRED_FIELDS if f not in row]
        if missing:
            raise RowsFileError(f"{path}: line {lineno} lacks field(s) {', '.join(missing)}")
        if row["status"] not in STATUSES:
            raise RowsFileError(f"{path}: line {lineno} has unknown status {row['status']!r}")
        rows.append(row)
    return rows


def load_frame(path: str | Path):
    """Rows of one or more rows.jsonl files (or run folders) as a pandas DataFrame."""
    import pandas as pd

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    rows: list[dict[str, Any]] = []
    for p in paths:
        p = Path(p)
        rows += read_rows(p / "rows.jsonl" if p.is_dir() else p)
    return pd.DataFrame(rows)
