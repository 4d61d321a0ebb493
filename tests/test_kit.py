"""bench.py kit and its run.sh: bad input is one line and exit 2; selftest within a budget names every step."""
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from attnbench import kit, selftest
from attnbench.cli import main
from attnbench.methods.vanilla import VanillaMath
from attnbench.point import _memory_guard

ROOT = Path(__file__).resolve().parent.parent
STEPS = [s.name for s in selftest.plan("cpu", selftest.SHAPES["cpu"], Path("w"), Path("o"))]


@pytest.mark.parametrize("budget", ["0", "-5", "abc", "nan", "inf"])
def test_selftest_bad_budget_is_one_line(budget, capsys):
    assert main(["selftest", "--device", "cpu", "--budget", budget]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--budget" in err[0]


def fake_kit(tmp_path, missing=False):
    """run.sh beside one tiny 'wheel' and its SHA256SUMS (a missing file when asked)."""
    d = tmp_path / "kit"
    d.mkdir()
    shutil.copy(ROOT / "attnbench" / "kit_run.sh", d / "run.sh")
    (d / "a-1-py3-none-any.whl").write_bytes(b"not really a wheel")
    names = ["a-1-py3-none-any.whl"] + (["b-2-py3-none-any.whl"] if missing else [])
    (d / "SHA256SUMS").write_text("".join(f"{'0' * 64 if n.startswith('b') else kit.sha256(d / n)}  {n}\n"
                                          for n in names))
    return d


@pytest.mark.parametrize("args", [["--budget", "0"], ["--budget", "-5"], ["--budget", "abc"], ["--budget"],
                                  ["--device", "tpu"], ["--frobnicate"]])
def test_run_sh_bad_input_is_one_line(tmp_path, args):
    proc = subprocess.run(["bash", str(fake_kit(tmp_path) / "run.sh"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout == ""


def test_run_sh_kit_missing_a_wheel_is_one_line(tmp_path):
    proc = subprocess.run(["bash", str(fake_kit(tmp_path, missing=True) / "run.sh"), "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "lacks b-2-py3-none-any.whl" in proc.stderr


def test_run_sh_outside_a_checkout_is_one_line(tmp_path):
    proc = subprocess.run(["bash", str(fake_kit(tmp_path) / "run.sh"), "--device", "cpu"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "checkout" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_kit_refuses_a_folder_of_other_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["kit", "--out", str(tmp_path)]) == 2
    assert "not the kit's" in capsys.readouterr().err and (tmp_path / "notes.txt").exists()


def test_sync_keeps_identical_files_and_removes_stale_ones(tmp_path):
    stage, out = tmp_path / "stage", tmp_path / "out"
    stage.mkdir(), out.mkdir()
    (stage / "a.whl").write_bytes(b"a"), (stage / "b.whl").write_bytes(b"b")
    (out / "a.whl").write_bytes(b"a"), (out / "b.whl").write_bytes(b"old"), (out / "stale.whl").write_bytes(b"s")
    os.utime(out / "a.whl", (1, 1))
    assert kit.sync(stage, out) == ["a.whl", "b.whl"]
    assert sorted(p.name for p in out.iterdir()) == ["a.whl", "b.whl"]
    assert (out / "b.whl").read_bytes() == b"b" and (out / "a.whl").stat().st_mtime == 1  # untouched


def test_out_problems_counts_sizes_depth_and_steps(tmp_path):
    (tmp_path / "summary.md").write_text("| a-step | x |\n")
    assert kit.out_problems(tmp_path, ["a-step"]) == []
    assert kit.out_problems(tmp_path, ["a-step", "b-step"]) == ["summary.md does not name step b-step"]
    deep = tmp_path / "x" / "y" / "z"
    deep.mkdir(parents=True)
    (deep / "f").write_text("1")
    for i in range(8):
        (tmp_path / f"f{i}").write_text("1")
    found = kit.out_problems(tmp_path, ["a-step"])
    assert any("10 files" in f for f in found) and any("too deep" in f for f in found)


def test_tiny_budget_writes_summary_naming_missing_steps(tmp_path):
    out = tmp_path / "out"
    t0 = time.time()
    rc = selftest.run_selftest("cpu", out, lambda s: None, budget_s=8.0)
    took = time.time() - t0
    assert rc == 1 and took <= 8.0 * 1.1 + 1
    page = (out / "summary.md").read_text()
    assert page.startswith("# selftest on cpu: FAILED")
    for name in STEPS:
        assert f"| {name} |" in page
    assert "not reached (budget spent" in page
    assert kit.out_problems(out, STEPS) == [] and len(list(out.iterdir())) <= 8


def test_killed_run_leaves_a_summary_and_no_step_running(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench.py"), "selftest", "--device", "cpu", "--budget", "60",
                             "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while not (out / "summary.md").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) != 0
    page = (out / "summary.md").read_text()
    assert all(f"| {name} |" in page for name in STEPS) and "not reached" in page
    assert kit.out_problems(out, STEPS) == []


def test_memory_guard_refuses_a_cuda_point_larger_than_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (2**30, 80 * 2**30))
    cfg = types.SimpleNamespace(device="cuda", batch=16, dtype="bfloat16", memory_guard=0.8)
    module = VanillaMath(6, 64)
    why = _memory_guard(cfg, module, 16384)         # 2 x 16 x 6 x 16384² x 2 bytes = 96 GiB
    assert why and "free device memory" in why
    assert _memory_guard(cfg, module, 64) is None   # 3 MiB fits
