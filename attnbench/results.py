"""Row files (rows.jsonl, runs.jsonl): read and validate, repair a cut tail in place, append
durably, and lock a run folder against a second writer.

Every write is an append of whole lines, flushed and fsynced; nothing ever rewrites a file. A
process killed mid-append leaves at most one cut last line, which the next writer truncates
away (``os.truncate``) before it appends.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from attnbench.rows import REQUIRED as REQUIRED_FIELDS, STATUSES, dedup, identity, type_problem  # noqa: F401

LOCK_NAME = ".lock"
REPAIR_HOOK_ENV = "ATTNBENCH_TEST_REPAIR_HOOK"   # tests: before-cut, after-cut, before-newline pauses


class RowsFileError(ValueError):
    """A row file that cannot be used or written; the message names the file (and line)."""


class FolderLocked(RowsFileError):
    """Another live process writes to the run folder."""


def _parse_line(path: Path, lineno: int, line: bytes, check_row: bool) -> dict[str, Any]:
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise RowsFileError(f"{path}: line {lineno} is not UTF-8 text (not a rows file?)") from None
    except json.JSONDecodeError as exc:
        raise RowsFileError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise RowsFileError(f"{path}: line {lineno} is not a JSON object")
    problem = type_problem(row) if check_row else None
    if problem:
        raise RowsFileError(f"{path}: line {lineno} {problem}")
    return row


def _is_cut_line(tail: bytes) -> bool:
    """A plausible start of a JSON line cut off mid-write (not binary garbage)."""
    if not tail.lstrip().startswith(b"{") or b"\0" in tail:
        return False
    try:
        tail.decode("utf-8")
    except UnicodeDecodeError as exc:          # only a multi-byte character cut at the very end
        return exc.start >= len(tail) - 3 and exc.reason == "unexpected end of data"
    return True


def read_lines(path: str | Path, repair_tail: bool = False, check_rows: bool = True) -> list[dict[str, Any]]:
    """Parse a JSON-lines file; a corrupt line raises RowsFileError naming its line number.

    A last line without its newline is the record a killed process was writing. With
    ``repair_tail`` it is kept (and its newline appended) when it is a complete record, else the
    file is truncated in place to its last complete line. Everything is validated before the
    file is touched: a file that is refused is left exactly as it was.
    """
    path = Path(path)
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    body, tail = data[:cut], data[cut:]
    records = [_parse_line(path, i, line, check_rows)
               for i, line in enumerate(body.split(b"\n"), start=1) if line.strip()]
    if not tail.strip():
        return records
    lineno = body.count(b"\n") + 1
    try:
        last = _parse_line(path, lineno, tail, check_rows)
    except RowsFileError:
        if not _is_cut_line(tail):
            raise
        last = None
    if not repair_tail:
        if last is None:
            raise RowsFileError(f"{path}: line {lineno} is cut off (a killed writer); resume the run to repair it")
        return records + [last]
    _repair(path, cut, keep=last is not None)
    return records + ([last] if last is not None else [])


def read_rows(path: str | Path, repair_tail: bool = False) -> list[dict[str, Any]]:
    """The rows of a rows.jsonl (see read_lines), each checked against attnbench.rows."""
    return read_lines(path, repair_tail=repair_tail, check_rows=True)


def _repair(path: Path, cut: int, keep: bool) -> None:
    """Truncate to ``cut`` bytes, or keep a complete last record and append its newline."""
    _test_pause("before-cut" if not keep else "before-newline")
    if keep:
        with open(path, "ab") as fh:
            fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        return
    os.truncate(path, cut)
    _test_pause("after-cut")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _test_pause(point: str) -> None:
    """Tests: with ATTNBENCH_TEST_REPAIR_HOOK=<point>:<file>, touch <file> and wait to be killed."""
    spec = os.environ.get(REPAIR_HOOK_ENV, "")
    want, _, marker = spec.partition(":")
    if want == point and marker:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(60)


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
    """Appends JSON lines (rows, invocations) to one file, each flushed and fsynced.

    A cut last line left by a killed writer is repaired before the first append. A failed write
    (a full disk) is undone by truncating to the size before it, and raises RowsFileError
    naming the file: every earlier line stays intact.
    """

    def __init__(self, path: Path, check_rows: bool | None = None) -> None:
        self.path = Path(path)
        self.check_rows = self.path.name != "runs.jsonl" if check_rows is None else check_rows
        self._repaired = False

    def append(self, row: dict[str, Any]) -> None:
        if not self._repaired:
            if _ends_cut(self.path):
                read_lines(self.path, repair_tail=True, check_rows=self.check_rows)
            self._repaired = True
        data = (json.dumps(row, default=str) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except OSError as exc:
                os.ftruncate(fd, size)
                reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
                raise RowsFileError(f"{self.path}: {reason}; the row was not written, "
                                    f"earlier rows are intact") from None
        finally:
            os.close(fd)


def _ends_cut(path: Path) -> bool:
    """True when the file exists, is not empty and its last byte is not a newline."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def measured_keys(out: Path, retry: tuple[str, ...] = ()) -> set[str]:
    """Create the run folder; return the identity keys of the rows already in it (resume).

    Points whose latest row has a status in ``retry`` are left out, so they are measured again.
    """
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    if not rows_path.exists():
        return set()
    latest, _ = dedup(read_rows(rows_path, repair_tail=True))
    return {identity(r) for r in latest if r.get("status") not in retry}


@contextlib.contextmanager
def naming(path: str | Path):
    """An OSError raised inside (a full disk: the write() call names no file) names ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


class FolderLock:
    """An exclusive lock on a run folder (``DIR/.lock``, flock), naming its holder's PID and host.

    The kernel drops the lock when its holder dies, so a stale lock file is simply taken over.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "FolderLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            os.close(fd)
            pid, host = (holder + ["?", "?"])[:2]
            raise FolderLocked(f"{self.path.parent} is in use by another sweep (pid {pid} on host {host}); "
                               f"wait for it or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
