"""``bench.py merge``: the union of run folders (e.g. sweeps made on several machines).

Rows are de-duplicated by their identity key (attnbench.rows.identity). Two rows of one identity
that measured different values conflict: the merge refuses them unless ``keep`` says which wins
(``newest`` or ``oldest`` by timestamp). Rows that differ only in where and when they were
measured (run, time, environment, worker) are the same measurement; the first one is kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnbench import rows
from attnbench.results import LOCK_NAME, FolderLock, RowWriter, RowsFileError, read_lines, read_rows

PROVENANCE = {"run_id", "timestamp", "env", "executor", "worker_host", "worker_pid", "device_index",
              "device_uuid", "ray_node_id"}


class MergeConflict(RowsFileError):
    """Two folders hold different measurements of one point."""


@dataclass
class MergeSummary:
    rows: int
    duplicates: int
    conflicts_resolved: int
    runs: int


def measured_values(row: dict[str, Any]) -> dict[str, Any]:
    """The row without its provenance: what two measurements of one point are compared on."""
    return {k: v for k, v in row.items() if k not in PROVENANCE}


def merge_runs(folders: list[Path], out: Path, keep: str | None = None) -> MergeSummary:
    """Write the union of ``folders`` (and of ``out``'s own rows) into ``out``."""
    if keep not in (None, "newest", "oldest"):
        raise RowsFileError(f"unknown --keep {keep!r}; use newest or oldest")
    sources = [(f, _folder_rows(f)) for f in folders]
    created = not Path(out).exists()
    with FolderLock(out):
        existing = rows.dedup(read_rows(out / "rows.jsonl", repair_tail=True))[0] if (out / "rows.jsonl").exists() else []
        try:
            chosen, dups, resolved = _union([(out, existing)] + sources, keep)
        except MergeConflict:
            if created:     # refused before writing: leave no folder holding only the lock
                _remove_lock_only_folder(Path(out))
            raise
        new = [r for r in chosen.values() if not any(r is e for e in existing)]
        kept_out = {rows.identity(r) for r in existing if chosen.get(rows.identity(r)) is r}
        writer = RowWriter(out / "rows.jsonl")
        for r in new:
            writer.append(r)
        runs = _merge_runs_files(folders, out)
    superseded = len({rows.identity(r) for r in existing}) - len(kept_out)
    return MergeSummary(rows=len(chosen), duplicates=dups + superseded, conflicts_resolved=resolved, runs=runs)


def _remove_lock_only_folder(folder: Path) -> None:
    lock = folder / LOCK_NAME
    if [p.name for p in folder.iterdir()] == [LOCK_NAME]:
        lock.unlink()
        folder.rmdir()


def _folder_rows(folder: Path) -> list[dict[str, Any]]:
    path = folder / "rows.jsonl"
    if not path.exists():
        raise RowsFileError(f"{folder}: no rows.jsonl (not a run folder)")
    latest, _ = rows.dedup(read_rows(path))           # within a folder the last row written wins
    return latest


def _union(sources: list[tuple[Path, list[dict[str, Any]]]], keep: str | None):
    chosen: dict[str, dict[str, Any]] = {}
    origin: dict[str, Path] = {}
    dups = resolved = 0
    for folder, folder_rows in sources:
        for r in folder_rows:
            key = rows.identity(r)
            if key not in chosen:
                chosen[key], origin[key] = r, folder
                continue
            dups += 1
            if measured_values(chosen[key]) == measured_values(r):
                continue
            if keep is None:
                raise MergeConflict(f"{origin[key]} and {folder} hold different measurements of "
                                    f"{_label(r)}; pass --keep newest or --keep oldest")
            resolved += 1
            if _wins(r, chosen[key], keep):
                chosen[key], origin[key] = r, folder
    return chosen, dups, resolved


def _wins(new: dict[str, Any], old: dict[str, Any], keep: str) -> bool:
    a, b = str(new.get("timestamp") or ""), str(old.get("timestamp") or "")
    return a > b if keep == "newest" else a < b


def _label(r: dict[str, Any]) -> str:
    return f"{r.get('method')} n={r.get('n')} m={r.get('m')} ({r.get('device_name')}, {r.get('dtype')})"


def _merge_runs_files(folders: list[Path], out: Path) -> int:
    """Append to ``out/runs.jsonl`` the invocations it does not hold yet; return how many it holds."""
    path = out / "runs.jsonl"
    have = {e.get("run_id") for e in read_lines(path, repair_tail=True, check_rows=False)} if path.exists() else set()
    writer = RowWriter(path)
    for folder in folders:
        src = folder / "runs.jsonl"
        for entry in read_lines(src, check_rows=False) if src.exists() else []:
            if entry.get("run_id") not in have:
                writer.append(entry)
                have.add(entry.get("run_id"))
    return len(have)
