"""Row files: tail repair in place, refusal without modification, durable appends, disk full,
and a process killed inside the repair."""
import errno
import json
import os
import random
import signal
import time

import pytest

from attnbench import results
from attnbench.results import RowWriter, RowsFileError, measured_keys, read_lines, read_rows


def row(i):
    return {"method": "uniform", "n": 16 + i, "m": None, "status": "ok", "device": "cpu", "dtype": "float32",
            "mode": "fwd", "latency_ms": 0.5 + i}


def lines(count):
    return b"".join(json.dumps(row(i)).encode() + b"\n" for i in range(count))


def test_a_cut_last_line_is_truncated_in_place(tmp_path):
    path = tmp_path / "rows.jsonl"
    body = lines(3)
    path.write_bytes(body + json.dumps(row(3)).encode()[:25])
    inode = path.stat().st_ino
    got = read_rows(path, repair_tail=True)
    assert [r["n"] for r in got] == [16, 17, 18]
    assert path.read_bytes() == body and path.stat().st_ino == inode     # same file, cut, not rewritten


def test_a_complete_last_row_without_newline_is_kept(tmp_path):
    path = tmp_path / "rows.jsonl"
    body = lines(2) + json.dumps(row(2)).encode()
    path.write_bytes(body)
    assert [r["n"] for r in read_rows(path, repair_tail=True)] == [16, 17, 18]
    assert path.read_bytes() == body + b"\n"


@pytest.mark.parametrize("junk", [b"\x00\x01\xff\xfe binary", b"\x89PNG\r\n\x1a\n\x00\x00", b"not json at all"])
def test_garbage_is_refused_and_the_file_left_untouched(tmp_path, junk):
    path = tmp_path / "rows.jsonl"
    for data in (lines(2) + junk, junk + b"\n" + lines(2)):
        path.write_bytes(data)
        with pytest.raises(RowsFileError, match="line"):
            read_rows(path, repair_tail=True)
        assert path.read_bytes() == data


def test_writer_repairs_runs_jsonl_before_appending(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_bytes(b'{"run_id": "a"}\n{"run_id": "b", "ar')
    RowWriter(path).append({"run_id": "c"})
    assert [e["run_id"] for e in read_lines(path, check_rows=False)] == ["a", "c"]


def test_disk_full_names_the_file_and_keeps_earlier_rows(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    writer = RowWriter(path)
    writer.append(row(0))
    writer.append(row(1))
    before = path.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 10:
            real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.os, "write", half_then_full)
    with pytest.raises(RowsFileError) as info:
        writer.append(row(2))
    assert str(path) in str(info.value) and "disk full" in str(info.value)
    assert len(str(info.value).splitlines()) == 1
    monkeypatch.undo()
    assert path.read_bytes() == before


def test_retry_statuses_are_left_out_of_the_measured_keys(tmp_path):
    path = tmp_path / "rows.jsonl"
    statuses = ["ok", "crashed", "timeout", "error", "harness_error", "oom", "unsupported"]
    for i, status in enumerate(statuses):
        RowWriter(path).append({**row(i), "status": status})
    RowWriter(path).append({**row(1), "status": "ok"})          # crashed, then measured again: ok
    keep = measured_keys(tmp_path, retry=("crashed", "timeout", "error", "harness_error"))
    assert len(measured_keys(tmp_path)) == 7 and len(keep) == 4   # ok, ok again, oom, unsupported


@pytest.mark.parametrize("trial", range(10))
def test_killed_inside_the_tail_repair_loses_nothing(tmp_path, trial):
    """SIGKILL at a pause point inside the repair (a test hook): the file stays usable."""
    rng = random.Random(trial)
    path = tmp_path / "rows.jsonl"
    count = rng.randint(1, 50)
    complete_tail = rng.random() < 0.5
    last = json.dumps(row(count)).encode()
    tail = last if complete_tail else last[: rng.randint(1, len(last) - 1)]
    path.write_bytes(lines(count) + tail)
    marker = tmp_path / "paused"
    hook = ("before-newline" if complete_tail else rng.choice(["before-cut", "after-cut"])) + f":{marker}"
    pid = os.fork()
    if pid == 0:                                                 # the child repairs and is killed
        os.environ[results.REPAIR_HOOK_ENV] = hook
        try:
            measured_keys(tmp_path)
        finally:
            os._exit(0)
    deadline = time.time() + 30
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.05))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert marker.exists()
    got = read_rows(path, repair_tail=True)
    assert [r["n"] for r in got] == [16 + i for i in range(count + complete_tail)]
    assert path.read_bytes().endswith(b"\n")
