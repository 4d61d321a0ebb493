"""The sweep CLI end to end on tiny shapes: rows, resume after a kill, and bad input."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--heads", "2", "--head-dim", "8", "--min-run-time", "0.01", "--quiet"]


def rows_of(out: Path):
    return [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]


def run_main(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_sweep_writes_complete_rows(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_main(["sweep", "--n", "16,20", "--m", "2,4", "--methods", "anchor,vanilla-math,vanilla-sdpa",
                                "--out", str(out)] + TINY, capsys)
    assert code == 0, stdout
    rows = rows_of(out)
    assert len(rows) == 2 * (2 + 1 + 1)
    for r in rows:
        assert r["status"] == "ok", r["message"]
        for f in ("latency_ms", "latency_p20_ms", "latency_p80_ms", "peak_mem_bytes", "macs_analytic",
                  "macs_fvcore", "flops_torch", "err_rel_fro", "err_max_abs", "err_cos_mean", "attn_entropy_ratio"):
            assert r[f] is not None, (r["method"], f)
        assert r["env"]["torch"] and r["timing"]["unit"] == "ms"
        assert r["macs_fvcore"] == r["macs_analytic"] == r["flops_torch"] // 2
    exact = [r for r in rows if r["method"].startswith("vanilla")]
    assert all(r["err_rel_fro"] < 1e-5 for r in exact)
    sdpa = [r for r in rows if r["method"] == "vanilla-sdpa"]
    assert sdpa and all(r["impl"]["sdpa_backend"] == "flash (cpu)" for r in sdpa)  # CPU float32
    assert {r["m"] for r in rows if r["method"] == "anchor"} == {2, 4}
    assert {r["m"] for r in rows if r["method"] != "anchor"} == {None}


def test_rerun_resumes_without_duplicates(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["sweep", "--n", "16", "--m", "2", "--methods", "anchor,vanilla-math", "--out", str(out), "--no-flops"] + TINY
    assert run_main(args, capsys)[0] == 0
    first = rows_of(out)
    code, stdout, _ = run_main(args[:2] + ["16,24"] + args[3:], capsys)
    assert code == 0 and "2 already measured" in stdout
    rows = rows_of(out)
    assert rows[:2] == first and len(rows) == 4
    assert sorted(r["n"] for r in rows) == [16, 16, 24, 24]


def test_truncated_last_line_is_dropped_and_remeasured(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["sweep", "--n", "16", "--m", "2", "--methods", "anchor,vanilla-math", "--out", str(out), "--no-flops"] + TINY
    assert run_main(args, capsys)[0] == 0
    text = (out / "rows.jsonl").read_text()
    lines = text.splitlines(keepends=True)
    (out / "rows.jsonl").write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # killed mid-write
    assert run_main(args, capsys)[0] == 0
    rows = rows_of(out)
    assert len(rows) == 2 and {r["method"] for r in rows} == {"anchor", "vanilla-math"}


def test_killed_sweep_loses_at_most_the_row_in_flight(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "bench.py"), "sweep", "--n", "16,24,32,40,48,56", "--m", "2",
           "--methods", "anchor,vanilla-math", "--out", str(out), "--no-flops"] + TINY
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows_file = out / "rows.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if rows_file.exists() and rows_file.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = rows_file.read_text().count("\n")
    assert 3 <= before < 12, "the sweep was not interrupted half-way"
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = rows_of(out)
    keys = [(r["method"], r["n"]) for r in rows]
    assert len(keys) == len(set(keys)) == 12
    assert all(r["status"] == "ok" for r in rows)


def test_m_larger_than_n_is_a_row_with_reason(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_main(["sweep", "--n", "8,32", "--m", "16", "--methods", "anchor", "--out", str(out),
                             "--no-flops"] + TINY, capsys)
    assert code == 0
    rows = {r["n"]: r for r in rows_of(out)}
    assert rows[8]["status"] == "unsupported" and "exceeds the token count" in rows[8]["message"]
    assert rows[32]["status"] == "ok"
    assert "skipped: anchor n=8 m=16" in err


BAD_INPUTS = {
    "malformed-n": (["sweep", "--n", "12..abc"], "--n"),
    "zero-m": (["sweep", "--n", "16", "--m", "0,10"], "--m must be positive"),
    "unknown-method": (["sweep", "--n", "16", "--methods", "nope"], "known methods"),
    "unknown-device": (["sweep", "--n", "16", "--device", "tpu"], "invalid value for '--device': 'tpu' is not one of"),
    "unknown-dtype": (["sweep", "--n", "16", "--dtype", "float8"], "invalid value for '--dtype'"),
    "unknown-mode": (["sweep", "--n", "16", "--mode", "bwd"], "invalid value for '--mode'"),
    "unknown-option": (["sweep", "--frobnicate"], "no such option"),
    "missing-plugin": (["list", "--plugin", "/nonexistent/plug.py"], "does not exist"),
    "param-unknown-key": (["sweep", "--n", "16", "--methods", "anchor", "--param", "anchor.bogus=1"], "anchor takes"),
    "param-budget-key": (["sweep", "--n", "16", "--methods", "anchor", "--param", "anchor.m=5"], "set it with --m"),
    "param-other-method": (["sweep", "--n", "16", "--methods", "anchor", "--param", "nosuch.x=1"], "not among"),
    "negative-timeout": (["sweep", "--n", "16", "--timeout", "-1"], "--timeout must be a positive"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2(case, capsys, tmp_path):
    args, needle = BAD_INPUTS[case]
    code, _, err = run_main(args + ["--out", str(tmp_path / "o")] if args[0] == "sweep" else args, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert needle.lower() in err.lower()


def test_cuda_requested_without_cuda(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_main(["sweep", "--n", "16", "--device", "cuda", "--out", str(tmp_path)], capsys)
    assert code == 2 and "no CUDA device" in err and len(err.strip().splitlines()) == 1


def test_corrupt_rows_file_names_the_line(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["sweep", "--n", "16", "--m", "2", "--methods", "anchor,vanilla-math", "--out", str(out), "--no-flops"] + TINY
    assert run_main(args, capsys)[0] == 0
    lines = (out / "rows.jsonl").read_text().splitlines()
    (out / "rows.jsonl").write_text(lines[0] + "\n{not json\n" + lines[1] + "\n")
    code, _, err = run_main(args, capsys)
    assert code == 2 and "line 2" in err and len(err.strip().splitlines()) == 1
    assert (out / "rows.jsonl").read_text().count("\n") == 3  # nothing measured was lost


def test_broken_plugin_file_is_one_line(tmp_path, capsys):
    plugin = tmp_path / "broken.py"
    plugin.write_text("import attnbench\ndef broken(:\n")
    code, _, err = run_main(["list", "--plugin", str(plugin)], capsys)
    assert code == 2 and "SyntaxError" in err and len(err.strip().splitlines()) == 1


def test_list_and_env_commands(capsys):
    code, out, _ = run_main(["list"], capsys)
    assert code == 0 and "vanilla-xformers" in out and "no:" in out
    code, out, _ = run_main(["env"], capsys)
    assert code == 0 and json.loads(out)["torch"]


def test_bench_py_and_module_entry_agree():
    res = subprocess.run([sys.executable, str(ROOT / "bench.py"), "list", "--json"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "anchor" in {m["name"] for m in json.loads(res.stdout)}


def test_unwritable_output_folder_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    code, _, err = run_main(["sweep", "--n", "16", "--m", "2", "--methods", "anchor", "--out",
                             str(blocker / "run"), "--no-flops"] + TINY, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_fit_options_are_part_of_the_resume_key(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["sweep", "--n", "16", "--m", "2", "--methods", "anchor", "--fit", "closed", "--out", str(out),
            "--no-flops"] + TINY
    assert run_main(args + ["--fit-iters", "2"], capsys)[0] == 0
    assert run_main(args + ["--fit-iters", "3"], capsys)[0] == 0
    assert sorted(r["fit_cfg"]["iters"] for r in rows_of(out)) == [2, 3]
