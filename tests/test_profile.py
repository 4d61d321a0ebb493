"""bench.py profile: trace and top-operators table on CPU; table arithmetic on recorded values."""
import csv
import json

import pytest

from attnbench.cli import main
from attnbench.measure.roofline import bytes_min
from attnbench.profiling import OpRecord, top_table, whole_call_line

TINY = ["--heads", "2", "--head-dim", "12", "--active", "2"]


def test_profile_writes_trace_and_table(tmp_path, capsys):
    out = tmp_path / "prof"
    code = main(["profile", "--method", "vanilla-math", "--n", "37", "--device", "cpu", "--out", str(out)] + TINY)
    cap = capsys.readouterr()
    assert code == 0, cap.err
    trace = json.loads((out / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"aten::softmax", "aten::matmul", "aten::bmm"} <= names
    with open(out / "top_ops.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    ops = [r for r in table if r["rank"]]
    assert "aten::bmm" in {r["name"] for r in ops}
    assert not any(r["name"].startswith("ProfilerStep") for r in table)
    assert float(next(r for r in ops if r["name"] == "aten::bmm")["calls"]) == 2  # q kᵀ and P v
    shares = [float(r["share_pct"]) for r in ops]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 100.0 + 1e-6
    whole = table[-1]
    assert whole["name"] == "(whole call)" and float(whole["self_ms_per_call"]) >= sum(
        float(r["self_ms_per_call"]) for r in ops) * (1 - 1e-9)
    assert "| aten::bmm |" in (out / "top_ops.md").read_text() and "aten::bmm" in cap.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["level"] == "operators" and summary["config"]["n"] == 37


def test_profile_fwdbwd_records_backward_ops(tmp_path, capsys):
    out = tmp_path / "prof"
    code = main(["profile", "--method", "anchor", "--n", "29", "--m", "5", "--mode", "fwdbwd",
                 "--device", "cpu", "--out", str(out)] + TINY)
    assert code == 0, capsys.readouterr().err
    names = {e.get("name") for e in json.loads((out / "trace.json").read_text())["traceEvents"]}
    assert "aten::_softmax_backward_data" in names


@pytest.mark.parametrize("args", [
    ["--method", "nope", "--n", "16"],
    ["--method", "anchor", "--n", "16", "--m", "17"],
    ["--method", "vanilla-math", "--n", "16", "--m", "4"],
    ["--method", "vanilla-math", "--n", "0"],
    ["--method", "vanilla-math", "--n", "16", "--mode", "bwd"],
    ["--method", "vanilla-math", "--n", "16", "--dtype", "float8"],
    ["--method", "vanilla-math", "--n", "16", "--device", "tpu"],
], ids=["unknown-method", "m-over-n", "m-without-budget", "n-zero", "bad-mode", "bad-dtype", "bad-device"])
def test_profile_bad_input_is_one_line_exit_2(tmp_path, capsys, args):
    out = tmp_path / "prof"
    code = main(["profile", "--out", str(out)] + args)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()


def test_top_table_per_call_shares_and_cut():
    recs = [OpRecord("ProfilerStep#3", 4, 9000.0), OpRecord("aten::bmm", 8, 600.0),
            OpRecord("aten::_softmax", 4, 300.0), OpRecord("aten::view", 12, 100.0), OpRecord("aten::empty", 4, 0.0)]
    table = top_table(recs, calls=4, top=2)
    assert [r["name"] for r in table] == ["aten::bmm", "aten::_softmax"]
    assert table[0]["calls"] == 2 and table[0]["self_ms_per_call"] == pytest.approx(0.15)
    assert table[0]["share_pct"] == pytest.approx(60.0) and table[1]["share_pct"] == pytest.approx(30.0)
    whole = whole_call_line(recs, calls=4, bytes_moved=None)
    assert whole["self_ms_per_call"] == pytest.approx(0.25) and whole["gbps"] is None


def test_whole_call_bandwidth_on_known_bytes():
    # q, k, v, out of (1, 6, 16384, 64) bf16: 4 * 6 * 16384 * 64 * 2 bytes.
    nbytes = bytes_min(1, 6, 16384, 64, 2, True, "fwd")
    assert nbytes == 50_331_648
    assert bytes_min(1, 6, 16384, 64, 2, True, "fwdbwd") == 2 * nbytes
    line = whole_call_line([OpRecord("flash_fwd_kernel", 10, 1000.0)], calls=10, bytes_moved=nbytes)
    assert line["self_ms_per_call"] == pytest.approx(0.1)
    assert line["gbps"] == pytest.approx(503.31648)  # 50_331_648 B / 100 µs


def test_timing_line_from_recorded_row_fields():
    from attnbench.profiling import timing_line

    assert timing_line(None) is None
    line = timing_line({"latency_ms": 1.23456, "energy_j_per_call": 0.0075, "gpu_power_avg_w": 412.3})
    assert line == "timed outside the profiler: median 1.235 ms, 0.0075 J per call, average power 412.3 W"
    missing = timing_line({"latency_ms": 2.0, "energy_j_per_call": None, "telemetry_reason": "energy counter: Not Supported"})
    assert missing.endswith("energy unavailable (energy counter: Not Supported)")


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_profile_on_cuda_lists_kernels_and_bandwidth(tmp_path, capsys):
    out = tmp_path / "prof"
    code = main(["profile", "--method", "vanilla-sdpa", "--n", "1000", "--device", "cuda", "--out", str(out)] + TINY)
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["level"] == "kernels" and summary["table"][-1]["gbps"] > 0
    assert summary["timing"]["timing"]["mode"] == "eager"
