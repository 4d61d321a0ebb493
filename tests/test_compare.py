"""bench.py compare on hand-made rows (ratios and bands against numbers computed here, pairing by
each kind of --on field, one-sided rows, one-line refusals); load_frame and export round trips."""
import copy
import json
import subprocess
import sys

import pandas as pd
import pytest

from attnbench.cli import main
from test_report import attention_row, write_run

NS = (256, 1024, 4096)


def lat(row, t, lo, hi):
    return {**row, "latency_ms": t, "latency_p20_ms": lo, "latency_p80_ms": hi}


def base_rows():
    rows = []
    for n in NS:
        rows.append(attention_row("vanilla-sdpa", n, 1e-5 * n ** 2, params={"backend": "auto"}))
        rows.append(attention_row("window", n, 1e-3 * n))
    return rows


def run(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def read_pairs(out):
    return pd.read_csv(out / "compare.csv")


def test_ratio_band_memory_and_error_against_hand_numbers(tmp_path, capsys):
    a = [lat(attention_row("window", 1024, 1.0), 2.0, 1.8, 2.4)]
    a[0].update(peak_mem_bytes=4000, err_rel_fro=0.25)
    b = [{**copy.deepcopy(a[0]), "dtype": "bfloat16", "peak_mem_bytes": 1000, "err_rel_fro": 0.375}]
    b[0].update(latency_ms=1.0, latency_p20_ms=0.9, latency_p80_ms=1.2)
    code, out, err = run(["compare", str(write_run(tmp_path / "a", a)), str(write_run(tmp_path / "b", b)),
                          "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "pairing on dtype" in out
    got = read_pairs(tmp_path / "o").iloc[0]
    assert got["latency_ratio_b_over_a"] == pytest.approx(1.0 / 2.0)
    assert got["ratio_low"] == pytest.approx(0.9 / 2.4) and got["ratio_high"] == pytest.approx(1.2 / 1.8)
    assert got["peak_mem_ratio_b_over_a"] == pytest.approx(0.25)
    assert got["err_rel_fro_b_minus_a"] == pytest.approx(0.125)
    assert got["outcome"] == "faster" and got["a_dtype"] == "float32" and got["b_dtype"] == "bfloat16"
    assert "p20" in got["interval_basis"]
    assert "B is 2× faster on 1 of 1 points." in out


def test_verdict_names_where_b_is_slower(tmp_path, capsys):
    a = [lat(r, r["latency_ms"], r["latency_ms"] * 0.95, r["latency_ms"] * 1.05) for r in base_rows()]
    b = []
    for r in copy.deepcopy(a):
        factor = 2.0 if (r["method"] == "window" and r["n"] >= 1024) else 0.5
        b.append(lat({**r, "device_name": "Other CPU"}, r["latency_ms"] * factor,
                     r["latency_p20_ms"] * factor, r["latency_p80_ms"] * factor))
    code, out, err = run(["compare", str(write_run(tmp_path / "a", a)), str(write_run(tmp_path / "b", b)),
                          "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "pairing on device_name" in out
    assert "B is 2× faster on 4 of 6 points; slower on window at n ≥ 1024." in out
    md = (tmp_path / "o" / "compare.md").read_text()
    assert md.index("## Verdict") < md.index("## Pairs") and "figures/ratio_vs_n.png" in md
    assert (tmp_path / "o" / "figures" / "ratio_vs_n.png").stat().st_size > 0
    assert len(read_pairs(tmp_path / "o")) == 6


def changed(rows, field, value):
    out = copy.deepcopy(rows)
    for r in out:
        if "." in field:
            head, key = field.split(".", 1)
            r[head] = {**(r.get(head) or {}), key: value}
        else:
            r[field] = value
    return out


@pytest.mark.parametrize("field,value,given", [
    ("dtype", "bfloat16", None), ("device_name", "Other CPU", None), ("params", {"backend": "math"}, None),
    ("params.backend", "math", "params.backend"), ("env.torch", "9.9", "env.torch"),
    ("env.git_commit", "def456", "env.git_commit"), ("dtype", "bfloat16", "dtype")])
def test_pairing_by_each_on_field(tmp_path, capsys, field, value, given):
    a = [r for r in base_rows() if r["method"] == "vanilla-sdpa"]
    b = changed(a, field, value)
    args = ["compare", str(write_run(tmp_path / "a", a)), str(write_run(tmp_path / "b", b)), "--out", str(tmp_path / "o")]
    code, out, err = run(args + (["--on", given] if given else []), capsys)
    assert code == 0, err
    pairs = read_pairs(tmp_path / "o")
    assert len(pairs) == len(NS) and sorted(pairs["n"]) == sorted(NS)
    if field.startswith("env."):
        assert field in out                    # the environment difference is named
    else:
        assert f"pairing on {given or field.split('.')[0]}" in out
    shown = given or field.split(".")[0]
    assert (pairs[f"a_{shown}"] != pairs[f"b_{shown}"]).all()


def test_without_on_a_changed_field_pairs_nothing_apart_from_itself(tmp_path, capsys):
    a = base_rows()
    b = changed(a, "dtype", "bfloat16")
    code, _, err = run(["compare", str(write_run(tmp_path / "a", a)), str(write_run(tmp_path / "b", b)),
                        "--on", "device_name", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "no row of A pairs" in err and len(err.strip().splitlines()) == 1


def test_one_sided_rows_are_listed(tmp_path, capsys):
    a = base_rows()
    b = [r for r in copy.deepcopy(a) if not (r["method"] == "window" and r["n"] == 4096)]
    b.append(attention_row("anchor", 256, 0.1, m=30))
    code, _, err = run(["compare", str(write_run(tmp_path / "a", a)), str(write_run(tmp_path / "b", b)),
                          "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    one = pd.read_csv(tmp_path / "o" / "one_sided.csv")
    assert sorted(zip(one["only in"], one["series"], one["n"])) == [("A", "window", 4096), ("B", "anchor m=30", 256)]
    assert len(read_pairs(tmp_path / "o")) == len(a) - 1
    assert "| A | window | 4096 |" in (tmp_path / "o" / "compare.md").read_text()


def one_line(code, err, needle):
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_refusals_are_one_line(tmp_path, capsys):
    a = write_run(tmp_path / "a", base_rows())
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "rows.jsonl").write_text("")
    model = [{"kind": "model", "method": "vanilla-math", "arch": "deit-tiny", "img": 224, "n": 197, "batch": 8,
              "dtype": "float32", "device": "cpu", "mode": "fwd", "status": "ok", "timed": False, "params": {}}]
    one_line(*run(["compare", str(a), str(empty)], capsys)[::2], "empty")
    one_line(*run(["compare", str(a), str(tmp_path / "nope")], capsys)[::2], "does not exist")
    one_line(*run(["compare", str(a), str(write_run(tmp_path / "m", model))], capsys)[::2], "nothing of the same kind")
    one_line(*run(["compare", str(a), str(a), "--on", "colour"], capsys)[::2], "not an identity field")
    two = base_rows() + changed(base_rows(), "dtype", "float16")
    one_line(*run(["compare", str(write_run(tmp_path / "two", two)), str(a), "--on", "dtype"], capsys)[::2],
             "two partners")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "run"
    assert main(["sweep", "--device", "cpu", "--methods", "vanilla-sdpa,anchor", "--n", "16,36", "--m", "4",
                 "--heads", "2", "--head-dim", "8", "--min-run-time", "0.01", "--no-flops", "--fit", "none",
                 "--quiet", "--out", str(out)]) == 0
    return out


def test_load_frame_is_flat_one_row_per_row(sweep):
    import attnbench

    rows = [json.loads(line) for line in (sweep / "rows.jsonl").read_text().splitlines()]
    frame = attnbench.load_frame(sweep)
    assert len(frame) == len(rows) == 4
    assert not any(isinstance(v, (dict, list)) for col in frame for v in frame[col])
    assert {"env.torch", "env.git_commit", "params.backend", "timing.method"} <= set(frame.columns)
    assert "env" not in frame.columns
    assert list(frame["params"].isna()) == [True] * len(rows)          # {} -> one null cell, else dotted keys
    assert list(frame["params.backend"].isna()) == [not r["params"] for r in rows]
    assert str(frame["n"].dtype) == "Int64" and str(frame["latency_ms"].dtype) == "float64"
    assert list(frame["env.torch"]) == [r["env"]["torch"] for r in rows]
    assert list(frame["latency_ms"]) == [r["latency_ms"] for r in rows]


def test_load_frame_keeps_the_last_row_of_a_point(tmp_path):
    import attnbench

    rows = base_rows()
    again = {**copy.deepcopy(rows[0]), "latency_ms": 123.0}
    frame = attnbench.load_frame(write_run(tmp_path / "a", rows + [again]))
    assert len(frame) == len(rows)
    assert 123.0 in list(frame["latency_ms"])


def test_export_csv_reads_back_to_the_same_frame(sweep, tmp_path, capsys):
    import attnbench

    code, _, err = run(["export", str(sweep), "--format", "csv", "--out", str(tmp_path / "rows.csv")], capsys)
    assert code == 0, err
    frame = attnbench.load_frame(sweep)
    back = pd.read_csv(tmp_path / "rows.csv", dtype=frame.dtypes.to_dict())
    pd.testing.assert_frame_equal(back, frame)
    plain = pd.read_csv(tmp_path / "rows.csv")
    assert list(plain.columns) == list(frame.columns) and list(plain["latency_ms"]) == list(frame["latency_ms"])


def test_export_parquet_without_pyarrow_names_the_extra(sweep, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    code, _, err = run(["export", str(sweep), "--format", "parquet", "--out", str(tmp_path / "r.parquet")], capsys)
    one_line(code, err, "attnbench[parquet]")


def test_import_attnbench_does_not_import_pandas():
    code = "import sys, attnbench; assert 'pandas' not in sys.modules; assert callable(attnbench.load_frame)"
    subprocess.run([sys.executable, "-c", code], check=True)
