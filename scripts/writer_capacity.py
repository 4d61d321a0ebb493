"""Rows per second the single writer sustains (RowWriter: append, flush, fsync per row).

Usage: PYTHONPATH=. python scripts/writer_capacity.py ROWS_JSONL [COUNT]
The rows of ROWS_JSONL (a real run) are appended COUNT times in all to a scratch file.
"""
import sys
import tempfile
import time
from pathlib import Path

from attnbench.results import RowWriter, read_rows


def main() -> None:
    source = read_rows(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    with tempfile.TemporaryDirectory() as tmp:
        writer = RowWriter(Path(tmp) / "rows.jsonl")
        t0 = time.perf_counter()
        for i in range(count):
            writer.append(source[i % len(source)])
        elapsed = time.perf_counter() - t0
        size = (Path(tmp) / "rows.jsonl").stat().st_size
    print(f"{count} rows ({size / count / 1024:.1f} KiB each) in {elapsed:.2f} s: {count / elapsed:.0f} rows/s")


if __name__ == "__main__":
    main()
