"""`bench.py check` compares outputs: planted wrong outputs fail in A/B and stored mode, on a one-n suite."""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
ONE_N = ["--methods", "anchor,fused-anchor,nystrom,window", "--n", "64", "--m", "6", "--heads", "2",
         "--head-dim", "16", "--repeats", "3", "--block-ms", "4"]
KEYS = ("anchor n=64 m=6", "fused-anchor n=64 m=6", "nystrom n=64 m=6", "window n=64")
KINDS = ("scaled", "noise", "zero-head", "permuted", "swapped-kv")


def sensitivity_script():
    spec = importlib.util.spec_from_file_location("check_sensitivity_script", ROOT / "scripts" / "check_sensitivity.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def planted(tmp_path, kind):
    """A plugin file re-registering anchor, fused-anchor, nystrom and window with output changed by ``kind``."""
    path = tmp_path / f"planted_{kind.replace('-', '_')}.py"
    path.write_text(sensitivity_script().planted_plugin(kind))
    return str(path)


def run_main(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def failed_line(out):
    return next((ln for ln in out.splitlines() if ln.startswith("check FAILED")), "")


def named_with_output(out, key, label):
    return re.search(rf"(: |; ){re.escape(key)} WRONG \(output differs from {re.escape(label)} by ",
                     failed_line(out)) is not None


@pytest.fixture(scope="module")
def one_n_baseline(tmp_path_factory):
    path = tmp_path_factory.mktemp("ci") / "cpu.json"
    assert main(["check", "--update", "--baseline", str(path)] + ONE_N) == 0
    return path


@pytest.fixture(scope="module")
def one_n_repo(tmp_path_factory, one_n_baseline):
    """A git repository holding this tree's package and the one-n baseline, HEAD detached."""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    from attnbench.check.modes import head_root

    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(head_root() / "attnbench", root / "attnbench", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "baselines" / "ci").mkdir(parents=True)
    shutil.copy(one_n_baseline, root / "baselines" / "ci" / "cpu.json")
    for args in (("init", "-q"), ("add", "-A"), ("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"),
                 ("checkout", "-q", "--detach", "HEAD")):
        subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)
    return root


@pytest.fixture
def in_repo(one_n_repo, monkeypatch):
    for where in ("attnbench.check.modes", "attnbench.check.entry"):
        monkeypatch.setattr(f"{where}.head_root", lambda: one_n_repo)
    return one_n_repo


@pytest.mark.parametrize("kind", KINDS)
def test_planted_wrong_output_fails_against_the_stored_baseline(kind, one_n_baseline, tmp_path, capsys,
                                                                 scratch_registry):
    code, out, err = run_main(["check", "--baseline", str(one_n_baseline), "--plugin", planted(tmp_path, kind)], capsys)
    assert code == 1, out + err
    for key in KEYS:
        assert named_with_output(out, key, "baseline"), (key, failed_line(out))


@pytest.mark.parametrize("kind", KINDS)
def test_planted_wrong_output_fails_side_by_side(kind, in_repo, tmp_path, capsys, scratch_registry):
    code, out, err = run_main(["check", "--baseline", str(in_repo / "baselines/ci/cpu.json"), "--base", "HEAD",
                               "--repeats", "3", "--plugin", planted(tmp_path, kind)], capsys)
    assert code == 1, out + err
    for key in KEYS:
        assert named_with_output(out, key, "HEAD"), (key, failed_line(out))


def test_unchanged_tree_passes_with_zero_output_difference_in_both_modes(in_repo, one_n_baseline, capsys):
    for args, label in ((["--baseline", str(one_n_baseline)], "baseline"),
                        (["--baseline", str(in_repo / "baselines/ci/cpu.json"), "--base", "HEAD", "--repeats", "3"],
                         "HEAD")):
        code, out, err = run_main(["check", *args], capsys)
        assert code == 0, out + err
        for key in KEYS:
            line = next(ln for ln in out.splitlines() if ln.startswith(key + " "))
            # CPU: bitwise the same output (a timing suspect measured again adds a clause after it)
            assert re.search(rf"output differs from {label} by 0[);]", line), line


def test_accept_lets_an_intended_change_pass_and_says_so(one_n_baseline, tmp_path, capsys, scratch_registry):
    code, out, err = run_main(["check", "--baseline", str(one_n_baseline), "--plugin", planted(tmp_path, "scaled"),
                               "--accept", "anchor,fused-anchor,nystrom,window"], capsys)
    assert code == 0, out + err
    assert "accepted output changes (--accept): anchor, fused-anchor, nystrom, window" in out
    anchor = next(ln for ln in out.splitlines() if ln.startswith("anchor n=64"))
    assert "(accepted)" in anchor and "output differs from baseline by 0." in anchor


def test_accept_of_one_method_leaves_the_others_judged(one_n_baseline, tmp_path, capsys, scratch_registry):
    code, out, err = run_main(["check", "--baseline", str(one_n_baseline), "--plugin", planted(tmp_path, "zero-head"),
                               "--accept", "anchor"], capsys)
    assert code == 1
    assert not named_with_output(out, "anchor n=64 m=6", "baseline")
    assert named_with_output(out, "fused-anchor n=64 m=6", "baseline")


@pytest.mark.parametrize("args", [["--accept", "no-such-method"], ["--update", "--accept", "anchor"]],
                         ids=["unknown", "with-update"])
def test_bad_accept_is_one_line_and_exit_2(args, one_n_baseline, tmp_path, capsys):
    target = one_n_baseline if "--update" not in args else tmp_path / "new.json"
    code, out, err = run_main(["check", "--baseline", str(target), *args], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--accept" in err or "no-such-method" in err
    assert not (tmp_path / "new.json").exists()


def test_old_baseline_without_fingerprints_says_so_and_checks_errors(one_n_baseline, tmp_path, capsys,
                                                                      scratch_registry):
    data = json.loads(one_n_baseline.read_text())
    data["format"] = "attnbench-ci-baseline/1"
    for c in data["configs"]:
        c.pop("fingerprint", None)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    code, out, err = run_main(["check", "--baseline", str(old), "--plugin", planted(tmp_path, "scaled")], capsys)
    notes = [ln for ln in out.splitlines() if "no output fingerprints" in ln]
    assert len(notes) == 1 and "only the error check" in notes[0]
    assert "output differs" not in out
    assert code == 1 and "error " in failed_line(out)       # x1.5 on image inputs: its error grows


def test_baseline_stores_a_fingerprint_per_configuration(one_n_baseline):
    data = json.loads(one_n_baseline.read_text())
    assert data["format"] == "attnbench-ci-baseline/2"
    assert data["settings"]["check_workload"] == "image" and data["settings"]["fit"] == "closed"
    for c in data["configs"]:
        assert c["status"] == "ok", c
        fp = c["fingerprint"]
        assert fp["shape"] == [1, 2, 64, 16] and fp["norm"] > 0 and len(fp["proj"]) == 64
    fits = {c["method"]: c["fit"]["applied"] for c in data["configs"]}
    assert fits["anchor"] == fits["nystrom"] == "closed" and fits["window"] == "none"


@pytest.mark.parametrize("scale", [1e-4, 1e-2, 0.5])
def test_fingerprint_difference_estimates_the_relative_difference(scale):
    from attnbench.check.outputs import fingerprint, fingerprint_difference, relative_difference

    gen = torch.Generator().manual_seed(3)
    base = torch.randn(1, 3, 50, 8, generator=gen)
    head = base + scale * base.norm() / base.numel() ** 0.5 * torch.randn(base.shape, generator=gen)
    true = relative_difference(head, base)
    est = fingerprint_difference(fingerprint(head), fingerprint(base))
    assert abs(true - scale) < 0.2 * scale
    assert 0.6 * true < est < 1.5 * true
    assert fingerprint_difference(fingerprint(base), fingerprint(base)) == 0.0
    assert fingerprint_difference(fingerprint(base[:, :2]), fingerprint(base)) == float("inf")


def test_scaling_an_output_moves_its_fingerprint_norm_by_the_scale():
    from attnbench.check.outputs import fingerprint, fingerprint_difference

    base = torch.randn(2, 2, 30, 4, generator=torch.Generator().manual_seed(5))
    assert fingerprint_difference(fingerprint(1.5 * base), fingerprint(base)) == pytest.approx(0.5, rel=1e-9)


@pytest.mark.parametrize("method", ["nystrom", "anchor", "agent"])
def test_shared_state_gives_a_fresh_module_the_fitted_output(method):
    """module_state (parent) -> worker.load_state (either side): a differently seeded, unfitted build
    gives bitwise the fitted module's output, including state that fitting adds (None buffers)."""
    import runpy

    from attnbench import registry
    from attnbench.check.outputs import module_state

    worker = runpy.run_path(str(ROOT / "attnbench" / "check" / "worker.py"))
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 36, 8, generator=gen) for _ in range(3))
    fitted = registry.build(method, heads=2, head_dim=8, m=4, params={"seed": 0})
    fitted.fit_closed(q, k, v, (6, 6))
    fresh = registry.build(method, heads=2, head_dim=8, m=4, params={"seed": 7})
    assert not torch.equal(fresh(q, k, v, grid=(6, 6)), fitted(q, k, v, grid=(6, 6)))
    worker["load_state"](fresh, module_state(fitted), "cpu")
    assert torch.equal(fresh(q, k, v, grid=(6, 6)), fitted(q, k, v, grid=(6, 6)))


def test_output_tolerance_has_a_floor_per_dtype_and_follows_plain_error():
    from attnbench.check.outputs import OUTPUT_RTOL, output_tolerance

    assert output_tolerance("float32", 1e-7) == OUTPUT_RTOL["float32"]
    assert output_tolerance("bfloat16", 1e-7) == OUTPUT_RTOL["bfloat16"] > OUTPUT_RTOL["float32"]
    assert output_tolerance("float32", 0.01) == pytest.approx(0.04)


class _Recorder:
    """Stands in for torch.cuda events and the flush buffer: records the order of operations."""

    def __init__(self, log, name):
        self.log, self.name = log, name

    def record(self):
        self.log.append(f"{self.name}.record")

    def synchronize(self):
        self.log.append(f"{self.name}.synchronize")

    def zero_(self):
        self.log.append("flush")

    def elapsed_time(self, other):
        return 12.0


def test_cuda_ab_clock_flushes_l2_outside_the_events_before_each_block():
    import runpy

    worker = runpy.run_path(str(ROOT / "attnbench" / "check" / "worker.py"))
    log = []
    clock = object.__new__(worker["CudaClock"])
    clock.flush, clock.start, clock.end = _Recorder(log, "flush"), _Recorder(log, "start"), _Recorder(log, "end")
    ms = [worker["timed"](lambda: log.append("call"), 3, clock) for _ in range(2)]
    block = ["flush", "start.record", "call", "call", "call", "end.record", "end.synchronize"]
    assert log == block + block
    assert ms == [4.0, 4.0]                             # elapsed 12 ms over 3 calls


def test_cpu_ab_clock_times_the_whole_block():
    import runpy
    import time

    worker = runpy.run_path(str(ROOT / "attnbench" / "check" / "worker.py"))
    ms = worker["timed"](lambda: time.sleep(0.004), 3, worker["CpuClock"]())
    assert 3.5 < ms < 40


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_ab_clock_measures_a_known_sleep():
    import runpy

    worker = runpy.run_path(str(ROOT / "attnbench" / "check" / "worker.py"))
    clock = worker["CudaClock"]()
    ms = worker["timed"](lambda: torch.cuda._sleep(2_000_000), 4, clock)
    assert ms > 0.1
