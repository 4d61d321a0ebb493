"""Checks on what the report reads: the type of every row field it uses, and the invocation log.

A row whose field has the wrong type (``"n": "abc"``) makes its run unusable with one message
naming the file, the row and the field; a damaged line of ``runs.jsonl`` (provenance only) is
skipped with a note.
"""
from __future__ import annotations

import json
from numbers import Real
from pathlib import Path
from typing import Any

INT = "an integer"
NUMBER = "a number"
TEXT = "a string"
OBJECT = "an object"

# field -> (what it must be, may it be null); fields not listed are not checked.
ROW_FIELDS: dict[str, tuple[str, bool]] = {
    "method": (TEXT, False), "status": (TEXT, False), "device": (TEXT, False), "dtype": (TEXT, False),
    "mode": (TEXT, False), "n": (INT, False), "m": (INT, True), "batch": (INT, True), "heads": (INT, True),
    "head_dim": (INT, True), "seed": (INT, True), "family": (TEXT, True), "workload": (TEXT, True),
    "fit": (TEXT, True), "kind": (TEXT, True), "message": (TEXT, True), "run_id": (TEXT, True),
    "timestamp": (TEXT, True), "env": (OBJECT, True),
    "latency_ms": (NUMBER, True), "latency_p20_ms": (NUMBER, True), "latency_p80_ms": (NUMBER, True),
    "peak_mem_bytes": (NUMBER, True), "macs_analytic": (NUMBER, True), "macs_fvcore": (NUMBER, True),
    "flops_torch": (NUMBER, True), "err_rel_fro": (NUMBER, True), "err_cos_mean": (NUMBER, True),
    "err_skill": (NUMBER, True), "err_uniform_rel_fro": (NUMBER, True), "attn_entropy_ratio": (NUMBER, True),
    "energy_j_per_call": (NUMBER, True), "images_per_s": (NUMBER, True), "img": (INT, True),
}


def is_kind(value: Any, kind: str) -> bool:
    """True when ``value`` is of ``kind`` (booleans are not numbers; an integral float is an integer)."""
    if kind == TEXT:
        return isinstance(value, str)
    if kind == OBJECT:
        return isinstance(value, dict)
    if isinstance(value, bool) or not isinstance(value, Real):
        return False
    return kind == NUMBER or float(value).is_integer()


def field_problem(row: dict[str, Any], name: str) -> str | None:
    """Why field ``name`` of ``row`` has the wrong type, or None when it is fine or absent."""
    if name not in row:
        return None
    kind, nullable = ROW_FIELDS[name]
    value = row[name]
    if value is None:
        return None if nullable else f"{name} is null, must be {kind}"
    if not is_kind(value, kind):
        return f"{name} is {json.dumps(value, default=str)[:40]}, must be {kind}"
    if name in ("n", "batch", "heads", "head_dim", "img") and value <= 0:
        return f"{name} is {value}, must be positive"
    return None


def params_problem(row: dict[str, Any]) -> str | None:
    """Attention rows hold params as an object; model rows as a parameter count."""
    value = row.get("params")
    if value is None:
        return None
    if row.get("kind") == "model":
        ok = is_kind(value, NUMBER)
        return None if ok else f"params is {json.dumps(value, default=str)[:40]}, must be a number in a model row"
    return None if isinstance(value, dict) else f"params is {json.dumps(value, default=str)[:40]}, must be an object"


def row_type_problem(rows: list[dict[str, Any]], path: Path | str) -> str | None:
    """The first wrongly typed field of ``rows`` (read from ``path``) as one sentence, or None."""
    for i, row in enumerate(rows, start=1):
        for name in ROW_FIELDS:
            problem = field_problem(row, name)
            if problem:
                return f"{path}: row {i} ({row.get('method', '?')}): {problem}"
        problem = params_problem(row)
        if problem:
            return f"{path}: row {i} ({row.get('method', '?')}): {problem}"
    return None


def read_invocations(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(entries, notes) of a runs.jsonl: lines that are not UTF-8 JSON objects are skipped, and
    a note says how many; a missing file gives nothing."""
    if not path.exists():
        return [], []
    out, bad = [], 0
    for line in path.read_bytes().splitlines():
        try:
            entry = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            entry = None
        if isinstance(entry, dict):
            out.append(clean_invocation(entry))
        elif line.strip():
            bad += 1
    notes = [f"{path}: {bad} damaged line(s) skipped (provenance only)"] if bad else []
    return out, notes


def clean_invocation(entry: dict[str, Any]) -> dict[str, Any]:
    """An invocation with the fields the provenance table shows reset to None where mistyped."""
    entry = dict(entry)
    argv = entry.get("argv")
    if argv is not None and not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        entry["argv"] = None
    for name, kind in (("env", OBJECT), ("run_id", TEXT), ("timestamp", TEXT)):
        if entry.get(name) is not None and not is_kind(entry[name], kind):
            entry[name] = None
    return entry
