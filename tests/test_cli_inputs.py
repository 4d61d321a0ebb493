"""Malformed options and damaged row files: one line on stderr, exit status 2, rows untouched."""
import json
from pathlib import Path

import pytest

from attnbench.cli import main

TINY = ["--heads", "2", "--head-dim", "8", "--min-run-time", "0.01", "--quiet", "--workload", "gaussian",
        "--fit", "none", "--no-flops"]

BAD_SWEEPS = {
    "empty-n": (["--n", ""], "--n is empty"),
    "blank-n": (["--n", "  "], "--n is empty"),
    "comma-methods": (["--n", "16", "--methods", ","], "names no method"),
    "empty-methods": (["--n", "16", "--methods", ""], "names no method"),
    "huge-seed": (["--n", "16", "--seed", "100000000000000000000000"], "--seed must be"),
    "negative-seed": (["--n", "16", "--seed", "-1"], "--seed must be"),
    "nan-min-run-time": (["--n", "16", "--min-run-time", "nan"], "--min-run-time must be a positive finite"),
    "inf-min-run-time": (["--n", "16", "--min-run-time", "inf"], "--min-run-time must be a positive finite"),
    "nan-timeout": (["--n", "16", "--timeout", "nan"], "--timeout must be a positive finite"),
    "inf-timeout": (["--n", "16", "--timeout", "inf"], "--timeout must be a positive finite"),
    "nan-fit-lr": (["--n", "16", "--fit-lr", "nan"], "--fit-lr must be a positive finite"),
}


def one_line(code, err, needle):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: ") and needle in err, err


@pytest.mark.parametrize("case", sorted(BAD_SWEEPS))
def test_bad_sweep_option_is_one_line_and_touches_no_rows(case, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    before = '{"method": "anchor", "n": 16, "status": "ok", "device": "cpu", "dtype": "float32", "mode": "fwd"}\n'
    (out / "rows.jsonl").write_text(before)
    args, needle = BAD_SWEEPS[case]
    # the option under test comes last, so it overrides TINY's value of the same option
    code = main(["sweep", "--methods", "uniform", "--out", str(out)] + TINY + args)
    one_line(code, capsys.readouterr().err, needle)
    assert (out / "rows.jsonl").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["rows.jsonl"]


def test_default_n_still_applies_when_n_is_not_given(tmp_path, capsys):
    """--n absent takes the default grid (here capped by --methods uniform, which is cheap)."""
    out = tmp_path / "run"
    assert main(["sweep", "--methods", "uniform", "--out", str(out)] + TINY) == 0
    ns = sorted(json.loads(line)["n"] for line in (out / "rows.jsonl").read_text().splitlines())
    assert ns == [196, 1024]


def test_default_workload_is_image_with_closed_fit():
    from attnbench.cli import sweep_cmd

    defaults = {p.name: p.default for p in sweep_cmd.params}
    assert defaults["workload"] == "image" and defaults["fit"] == "closed"


ROW = {"method": "anchor", "family": "anchor", "params": {}, "n": 256, "m": 10, "batch": 1, "heads": 2,
       "head_dim": 8, "dtype": "float32", "device": "cpu", "mode": "fwd", "workload": "image", "seed": 0,
       "status": "ok", "latency_ms": 1.0, "peak_mem_bytes": 1024, "macs_analytic": 10, "err_rel_fro": 0.5}


def write(folder: Path, rows, runs: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if runs is not None:
        (folder / "runs.jsonl").write_bytes(runs)
    return folder


@pytest.mark.parametrize("field,value,needle", [
    ("n", "abc", """field 'n' is str "abc", expected int"""),
    ("n", 2.5, "field 'n' is float 2.5, expected int"),
    ("n", True, "field 'n' is bool true, expected int"),
    ("n", -4, "field 'n' is -4, expected a positive int"),
    ("m", [10], "field 'm' is list [10], expected int"),
    ("latency_ms", "fast", """field 'latency_ms' is str "fast", expected number"""),
    ("params", "x", """field 'params' is str "x", expected mapping"""),
    ("method", 3, "field 'method' is int 3, expected text"),
    ("env", [1], "field 'env' is list [1], expected mapping"),
])
def test_wrongly_typed_row_field_is_one_line(tmp_path, capsys, field, value, needle):
    run = write(tmp_path / "r", [ROW, {**ROW, field: value}])
    before = (run / "rows.jsonl").read_bytes()
    code = main(["report", "--run", str(run), "--out", str(tmp_path / "out")])
    one_line(code, capsys.readouterr().err, needle)
    assert (run / "rows.jsonl").read_bytes() == before


def test_binary_runs_file_is_skipped_with_a_note(tmp_path, capsys):
    good = json.dumps({"run_id": "r1", "argv": ["bench.py", "sweep"]}).encode()
    junk = bytes(range(256)) + b"\n[1, 2]\n" + json.dumps({"argv": 5, "env": "x"}).encode()
    run = write(tmp_path / "r", [ROW, {**ROW, "n": 512}], runs=junk + b"\n" + good + b"\n")
    code = main(["report", "--run", str(run), "--out", str(tmp_path / "out")])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "damaged line(s) skipped" in cap.out and "Traceback" not in cap.err
    assert "bench.py sweep" in (tmp_path / "out" / "report.md").read_text()


def test_binary_rows_file_is_one_line(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "rows.jsonl").write_bytes(bytes(range(256)) * 4)
    code = main(["report", "--run", str(run), "--out", str(tmp_path / "out")])
    one_line(code, capsys.readouterr().err, "not valid JSON")


HOSTILE = "<img src=x onerror=alert(1)>"


def test_method_names_and_params_carry_no_markup_into_markdown_or_csv(tmp_path, capsys):
    rows = [{**ROW, "method": HOSTILE, "family": "=cmd|' /C calc'!A0", "params": {"k": "<b>x</b>"}, "n": n}
            for n in (256, 512)]
    rows += [{**ROW, "method": HOSTILE, "family": "=cmd|' /C calc'!A0", "params": {"k": "[a](javascript:x)"}, "n": 256}]
    run = write(tmp_path / "r", rows)
    out = tmp_path / "out"
    assert main(["report", "--run", str(run), "--out", str(out)]) == 0, capsys.readouterr().err
    md = (out / "report.md").read_text()
    assert HOSTILE not in md and "<img" not in md and "<b>" not in md and "[a](javascript" not in md
    assert "&lt;img src=x onerror=alert(1)&gt;" in md
    for csv in (out / "tables").glob("*.csv"):
        text = csv.read_text()
        assert "<" not in text and ">" not in text, csv.name
        assert "\n=" not in text and ",=" not in text and '"=' not in text, csv.name
    html = (out / "report.html").read_text()
    assert HOSTILE not in html and "&lt;img" in html
