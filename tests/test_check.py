"""`bench.py check`: the correctness gate, the speed gate, and bad baselines, on a tiny suite."""
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from attnbench import check
from attnbench.cli import main
from attnbench.check.device import cpu_class
from attnbench.check.modes import head_root
from attnbench.check.revision import repo_root
from attnbench.reference import exact_reference

TINY = ["--methods", "vanilla-math,anchor", "--n", "48,80", "--m", "6", "--heads", "2", "--head-dim", "16",
        "--repeats", "7", "--block-ms", "6"]

SAME = """
import attnbench
from attnbench.methods.vanilla import VanillaMath

@attnbench.register("vanilla-math", family="vanilla", replace=True)
class SameMath(VanillaMath):
    pass
"""

TRIPLE = """
import attnbench
from attnbench.methods.vanilla import VanillaMath

@attnbench.register("vanilla-math", family="vanilla", replace=True)
class TripleMath(VanillaMath):
    def forward(self, q, k, v, grid=None):
        super().forward(q, k, v)
        super().forward(q, k, v)
        return super().forward(q, k, v)
"""

WRONG = """
import attnbench
from attnbench.methods.anchor import AnchorAttention, anchor_weights

@attnbench.register("anchor", family="anchor", budget="m", uses_query=False, defaults={"m": 30}, replace=True)
class WrongAnchor(AnchorAttention):
    def forward(self, q, k, v, grid=None):  # forgets the column normalisation by Δ
        a = anchor_weights(self.anchors, k, self.scale)
        return a @ (a.transpose(-1, -2) @ v)
"""

OFF_BY_SCALE = """
import attnbench
from attnbench.methods.vanilla import VanillaMath

@attnbench.register("vanilla-math", family="vanilla", replace=True)
class SlightlyWrongMath(VanillaMath):
    def forward(self, q, k, v, grid=None):
        return super().forward(q, k, v) * (1 + 1e-4)
"""


def run_main(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    path = tmp_path_factory.mktemp("ci") / "cpu.json"
    assert main(["check", "--update", "--baseline", str(path)] + TINY) == 0
    return path


def plugin(tmp_path, name, text):
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return str(path)


def verdicts(stdout):
    """{config key: verdict} parsed from the table."""
    out = {}
    for line in stdout.splitlines():
        for v in ("REGRESSION", "WRONG", "ERROR", "faster", "ok", "skipped", "new"):
            if f"  {v}" in line:
                out[line[:30].strip()] = v
                break
    return out


def test_update_writes_a_baseline_that_check_accepts(baseline, capsys):
    data = json.loads(baseline.read_text())
    assert data["format"] == check.FORMAT and data["device_class"] == "cpu"
    assert data["provenance"]["date"] and data["provenance"]["env"]["torch"]
    assert "commit" in data["provenance"]
    assert [c["key"] for c in data["configs"]] == ["vanilla-math n=48", "vanilla-math n=80",
                                                  "anchor n=48 m=6", "anchor n=80 m=6"]
    assert all(len(c["samples"]) == 3 * 3 for c in data["configs"])  # 7 repeats over 3 processes
    code, out, err = run_main(["check", "--baseline", str(baseline)], capsys)
    assert code == 0, out + err
    assert set(verdicts(out).values()) <= {"ok", "faster"} and len(verdicts(out)) == 4
    assert "check passed" in out


def in_git_checkout():
    return repo_root(head_root()) is not None


# "stored": against the baseline file; "ab": side by side with the committed HEAD (--base).
MODES = [pytest.param([], id="stored"),
         pytest.param(["--base", "HEAD", "--repeats", "3"], id="ab",
                      marks=pytest.mark.skipif(not in_git_checkout(), reason="needs a git checkout"))]


@pytest.mark.parametrize("mode", MODES)
def test_identical_copy_passes(mode, baseline, tmp_path, capsys, scratch_registry):
    code, out, err = run_main(["check", "--baseline", str(baseline), "--plugin", plugin(tmp_path, "same", SAME)]
                              + mode, capsys)
    assert code == 0, out + err


@pytest.mark.parametrize("mode", MODES)
def test_three_times_the_work_is_a_regression(mode, baseline, tmp_path, capsys, scratch_registry):
    code, out, _ = run_main(["check", "--baseline", str(baseline), "--plugin", plugin(tmp_path, "triple", TRIPLE)]
                            + mode, capsys)
    assert code == 1, out
    v = verdicts(out)
    assert v["vanilla-math n=48"] == v["vanilla-math n=80"] == "REGRESSION"
    assert "check FAILED: vanilla-math n=48 REGRESSION" in out
    assert "measured again in a fresh" in out
    assert "anchor n=48 m=6" in v     # measured too; whether an untouched configuration is ever
    # flagged is a question of noise, answered by the recorded benchmark (scripts/check_sensitivity.py,
    # README "Sensitivity": 0 of 68 runs at the default settings), not by a timed test at 3 repetitions


@pytest.mark.parametrize("mode", MODES)
def test_wrong_output_fails_the_correctness_gate(mode, baseline, tmp_path, capsys, scratch_registry):
    code, out, _ = run_main(["check", "--baseline", str(baseline), "--plugin", plugin(tmp_path, "wrong", WRONG)]
                            + mode, capsys)
    assert code == 1, out
    v = verdicts(out)
    assert v["anchor n=48 m=6"] == v["anchor n=80 m=6"] == "WRONG"
    assert v["vanilla-math n=48"] in ("ok", "faster")
    assert "output differs from" in out         # the same state on both sides: the output moved


def test_wrong_exact_method_is_not_written_as_baseline(tmp_path, capsys, scratch_registry):
    path = tmp_path / "b.json"
    code, out, _ = run_main(["check", "--update", "--baseline", str(path),
                             "--plugin", plugin(tmp_path, "bad", OFF_BY_SCALE)]
                            + TINY, capsys)
    assert code == 1 and not path.exists()
    assert "baseline not written" in out and "vanilla-math n=48" in out


BAD_CASES = ["missing", "not-json", "wrong-format", "no-samples", "heads-six", "float64", "negative-n"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_baseline_exits_2_with_one_line(case, mode, baseline, tmp_path, capsys):
    path = tmp_path / "cpu.json"
    data = json.loads(baseline.read_text())
    if case == "not-json":
        path.write_text(baseline.read_text()[:200])
    elif case == "wrong-format":
        path.write_text(json.dumps({"format": "something else"}))
    elif case == "no-samples":
        data["configs"][1]["samples"] = []
    elif case == "heads-six":
        data["settings"]["heads"] = "six"
    elif case == "float64":
        data["settings"]["dtype"] = "float64"
    elif case == "negative-n":
        data["configs"][2]["n"] = -48
    if case in ("no-samples", "heads-six", "float64", "negative-n"):
        path.write_text(json.dumps(data))
    code, out, err = run_main(["check", "--baseline", str(path)] + mode, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err
    assert ("missing" if case == "missing" else "corrupt") in err
    assert {"heads-six": "six", "float64": "float64", "negative-n": "-48"}.get(case, "") in err


def test_unregistered_method_in_baseline_is_skipped(baseline, tmp_path, capsys):
    data = json.loads(baseline.read_text())
    extra = dict(data["configs"][0], method="not-yet-merged", key="not-yet-merged n=48")
    data["configs"].append(extra)
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(data))
    code, out, _ = run_main(["check", "--baseline", str(path), "--repeats", "3"], capsys)
    assert code == 0, out
    assert verdicts(out)["not-yet-merged n=48"] == "skipped" and "is not registered" in out
    assert "check passed (1 skipped)" in out
    code, out, _ = run_main(["check", "--baseline", str(path), "--methods", "anchor", "--repeats", "3"], capsys)
    assert code == 0 and set(verdicts(out)) == {"anchor n=48 m=6", "anchor n=80 m=6"}


def test_shape_options_need_update(baseline, capsys):
    code, _, err = run_main(["check", "--baseline", str(baseline), "--n", "64"], capsys)
    assert code == 2 and "--n apply only with --update" in err


@pytest.mark.parametrize("args,words", [(["--tolerance", "nan"], "--tolerance"),
                                        (["--tolerance", "-0.1"], "--tolerance"),
                                        (["--base", "no-such-rev-xyz"], "no-such-rev-xyz")])
def test_bad_options_exit_2_naming_them(args, words, baseline, capsys):
    code, out, err = run_main(["check", "--baseline", str(baseline)] + args, capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and words in err, err


def test_bootstrap_interval_separates_shifted_samples():
    rng = np.random.default_rng(1)
    base = 1.0 + 0.05 * rng.standard_normal(15)
    ratio, lo, hi = check.ratio_of_medians_ci(base * 1.5, base)
    assert lo > 1.3 and hi < 1.7 and abs(ratio - 1.5) < 1e-9
    ratio, lo, hi = check.ratio_of_medians_ci(base[::-1].copy(), base)
    assert lo < 1 < hi
    assert check.speed_verdict(1.5, 1.3, 1.7, 0.15) == "REGRESSION"
    assert check.speed_verdict(1.3, 1.1, 1.5, 0.15) == "ok"      # slower, but not surely by 15%
    assert check.speed_verdict(0.5, 0.4, 0.6, 0.15) == "faster"


def hand_plain_error(q, k, v):
    """Relative Frobenius error of float32 softmax(q kᵀ/√d) v against the same in float64."""
    def attn(q, k, v):
        s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        p = torch.exp(s - s.amax(-1, keepdim=True))
        return (p / p.sum(-1, keepdim=True)) @ v
    ref = attn(q.double(), k.double(), v.double())
    return float((attn(q, k, v).double() - ref).norm() / ref.norm())


def test_exact_tolerance_is_four_times_a_hand_computed_plain_error(qkv_factory):
    q, k, v = qkv_factory(1, 2, 80, 16, seed=3)
    wl = type("W", (), {"q": q, "k": k, "v": v})()
    ref = exact_reference(q, k, v).out
    plain = check.plain_attention_error(wl, ref)
    hand = hand_plain_error(q, k, v)
    assert 1e-8 < hand < 1e-5 and plain == pytest.approx(hand, rel=0.3)
    exact = check.SuiteEntry("vanilla-math", 80, exact=True)
    approx = check.SuiteEntry("anchor", 80, 6)
    assert check.error_tolerance(exact, hand, 0.5) == pytest.approx(4 * hand)    # README: 4 x plain error
    assert check.error_tolerance(approx, hand, 0.5) == pytest.approx(0.505 + 4 * hand)   # baseline + 1 %
    assert check.error_tolerance(approx, hand, None) is None


@pytest.mark.parametrize("factor,failed", [(3.9, False), (4.1, True)])
def test_exact_method_fails_beyond_four_times_plain_error(factor, failed):
    from attnbench.check.verdict import correctness_row
    it = check.Measured(check.SuiteEntry("vanilla-math", 80, exact=True), err_rel_fro=factor * 1e-7,
                        plain_err=1e-7, out_finite=True)
    row = correctness_row(it, None)
    assert (row is not None and row.verdict == "WRONG") == failed


def test_device_class_is_a_file_name(monkeypatch):
    assert check.device_class("cpu") == "cpu"
    monkeypatch.setattr("attnbench.check.baselines.device_name", lambda device: "NVIDIA H100 80GB HBM3")
    assert check.device_class("cuda") == "nvidia-h100-80gb-hbm3"


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
stepping\t: 2

processor\t: 1
model name\t: Other
"""


def test_cpu_class_has_model_name_family_model_and_stepping():
    assert cpu_class(CPUINFO) == "Intel(R) Xeon(R) Processor family 6 model 207 stepping 2"
    assert cpu_class(CPUINFO.replace("207", "143")) != cpu_class(CPUINFO)


SLOW_COMMIT = """

_plain_math_forward = VanillaMath.forward


def _three_times(self, q, k, v, grid=None):
    _plain_math_forward(self, q, k, v, grid=grid)
    _plain_math_forward(self, q, k, v, grid=grid)
    return _plain_math_forward(self, q, k, v, grid=grid)


VanillaMath.forward = _three_times
"""


def git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory, baseline):
    """A git repository holding this tree's package and the tiny baseline, then a commit that makes
    vanilla-math do three times its work; HEAD detached, as in a CI clone."""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(head_root() / "attnbench", root / "attnbench", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "baselines" / "ci").mkdir(parents=True)
    shutil.copy(baseline, root / "baselines" / "ci" / "cpu.json")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    with open(root / "attnbench" / "methods" / "vanilla.py", "a") as f:
        f.write(SLOW_COMMIT)
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "slow")
    git(root, "checkout", "-q", "--detach", "HEAD")
    return root


@pytest.fixture
def in_slow_repo(slow_repo, monkeypatch):
    """Check the package of ``slow_repo`` (its workers import it) instead of this tree's."""
    for where in ("attnbench.check.modes", "attnbench.check.entry"):
        monkeypatch.setattr(f"{where}.head_root", lambda: slow_repo)
    return slow_repo


def test_ab_between_two_commits_names_the_slowed_configuration(in_slow_repo, capsys):
    repo = in_slow_repo
    code, out, err = run_main(["check", "--baseline", str(repo / "baselines/ci/cpu.json"), "--base", "HEAD~1",
                               "--repeats", "3"], capsys)
    assert code == 1, out + err
    v = verdicts(out)
    assert v["vanilla-math n=48"] == v["vanilla-math n=80"] == "REGRESSION"
    assert v["anchor n=48 m=6"] in ("ok", "faster") and v["anchor n=80 m=6"] in ("ok", "faster")
    assert "check FAILED: vanilla-math n=48 REGRESSION; vanilla-math n=80 REGRESSION" in out
    listed = subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True).stdout
    assert len(listed.strip().splitlines()) == 1       # the temporary worktree is gone


def test_another_machine_class_switches_to_ab_with_the_baselines_commit(in_slow_repo, capsys, monkeypatch):
    repo = in_slow_repo
    monkeypatch.setattr("attnbench.check.modes.machine_class", lambda device: "Fake CPU family 1 model 2 stepping 3")
    base = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD~1"], capture_output=True, text=True).stdout
    code, out, err = run_main(["check", "--baseline", str(repo / "baselines/ci/cpu.json"), "--methods", "vanilla-math",
                               "--repeats", "3"], capsys)
    first = out.splitlines()[0]
    assert "this machine (Fake CPU family 1 model 2 stepping 3) is not the baseline's" in first
    assert f"comparing side by side with {base[:12]}" in first
    assert code == 1 and verdicts(out)["vanilla-math n=80"] == "REGRESSION", out + err


def test_another_machine_class_without_a_revision_widens_the_tolerance(baseline, capsys, monkeypatch):
    monkeypatch.setattr("attnbench.check.modes.machine_class", lambda device: "Fake CPU family 1 model 2 stepping 3")
    code, out, err = run_main(["check", "--baseline", str(baseline), "--repeats", "3"], capsys)
    first = out.splitlines()[0]
    assert "is not the baseline's" in first and "no revision to compare with" in first
    assert f"wider tolerance {check.FALLBACK_TOLERANCE:g}" in first
    assert f"(tolerance {check.FALLBACK_TOLERANCE:g}," in out
