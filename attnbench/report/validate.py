"""Checks on what the report reads beyond the rows themselves: the invocation log.

(Row fields are checked against their one declaration in attnbench.rows when rows.jsonl is read:
a wrongly typed field makes its run unusable with one message naming the file, line and field.)
A damaged line of ``runs.jsonl`` (provenance only) is skipped with a note.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    for name, kind in (("env", dict), ("run_id", str), ("timestamp", str)):
        if entry.get(name) is not None and not isinstance(entry[name], kind):
            entry[name] = None
    return entry
