"""bench.py merge: union by identity, conflicting duplicates refused unless --keep."""
import json

from attnbench.cli import main
from attnbench.results import RowWriter, read_rows


def row(n, latency, ts, run="r1", method="uniform"):
    return {"kind": "attention", "method": method, "n": n, "m": None, "status": "ok", "device": "cpu",
            "dtype": "float32", "mode": "fwd", "device_name": "cpu-x", "latency_ms": latency,
            "timestamp": ts, "run_id": run, "worker_pid": 1}


def folder(tmp_path, name, rows_, runs=("r1",)):
    f = tmp_path / name
    f.mkdir()
    for r in rows_:
        RowWriter(f / "rows.jsonl").append(r)
    for run in runs:
        RowWriter(f / "runs.jsonl").append({"run_id": run, "argv": []})
    return f


def test_union_drops_duplicates_and_keeps_every_point(tmp_path, capsys):
    a = folder(tmp_path, "a", [row(16, 1.0, "2026-01-01"), row(32, 2.0, "2026-01-01")])
    b = folder(tmp_path, "b", [{**row(16, 1.0, "2026-01-02", run="r2"), "worker_pid": 7}, row(64, 3.0, "2026-01-02")],
               runs=("r2",))
    out = tmp_path / "m"
    assert main(["merge", str(a), str(b), "--out", str(out)]) == 0
    got = read_rows(out / "rows.jsonl")
    assert sorted(r["n"] for r in got) == [16, 32, 64]
    assert "1 duplicates dropped" in capsys.readouterr().out
    assert [json.loads(x)["run_id"] for x in (out / "runs.jsonl").read_text().splitlines()] == ["r1", "r2"]
    assert main(["merge", str(a), str(b), "--out", str(out)]) == 0       # again: nothing added
    assert len(read_rows(out / "rows.jsonl")) == 3


def test_conflicting_duplicates_are_refused_unless_keep(tmp_path, capsys):
    a = folder(tmp_path, "a", [row(16, 1.0, "2026-01-01")])
    b = folder(tmp_path, "b", [row(16, 5.0, "2026-01-03")])
    out = tmp_path / "m"
    assert main(["merge", str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "uniform n=16" in err and "--keep" in err
    assert not (out / "rows.jsonl").exists()
    for keep, latency in (("newest", 5.0), ("oldest", 1.0)):
        dest = tmp_path / keep
        assert main(["merge", str(b), str(a), "--out", str(dest), "--keep", keep]) == 0
        assert [r["latency_ms"] for r in read_rows(dest / "rows.jsonl")] == [latency]
