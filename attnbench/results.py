"""Read and validate rows.jsonl files into lists of dicts or a pandas DataFrame."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from attnbench.rows import REQUIRED as REQUIRED_FIELDS, STATUSES, identity, type_problem  # noqa: F401


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
        problem = type_problem(row)
        if problem:
            raise RowsFileError(f"{path}: line {lineno} {problem}")
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


class RowWriter:
    """Appends JSON lines (rows, invocations) to one file, each flushed and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def measured_keys(out: Path) -> set[str]:
    """Create the run folder; return the identity keys of the rows already in it (resume)."""
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    if not rows_path.exists():
        return set()
    return {identity(r) for r in read_rows(rows_path, repair_tail=True)}
