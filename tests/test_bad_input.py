"""Bad input is refused before anything is measured: one line on stderr naming the problem,
exit status 2, nothing written."""
import errno
from pathlib import Path

import pytest

from attnbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n", "16", "--heads", "2", "--head-dim", "8", "--min-run-time", "0.01", "--quiet", "--no-flops",
        "--executor", "inline"]


def refused(args, capsys, needle):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: ") and needle in err, err
    return err


BAD_SWEEPS = {
    "unknown-workload": (["--workload", "nosuch"], "unknown workload 'nosuch'"),
    "workload-argument": (["--workload", "gaussian:3"], "takes no ':' argument"),
    "param-not-a-number": (["--methods", "window", "--param", "window.window=abc"], "window.window='abc': expected int"),
    "param-refused-by-constructor": (["--methods", "window", "--param", "window.window=0"], "window must be positive"),
    "param-variant-refused": (["--methods", "window", "--param", "window.window=7,0"], "window must be positive"),
    "mem-limit-nan": (["--executor", "process", "--worker-mem-limit", "nan"], "--worker-mem-limit must be a positive finite"),
    "mem-limit-inf": (["--executor", "process", "--worker-mem-limit", "inf"], "--worker-mem-limit must be a positive finite"),
    "point-timeout-nan": (["--point-timeout", "nan"], "--point-timeout must be a positive finite"),
    "unknown-device": (["--device", "tpu"], "'tpu' is not one of 'cpu', 'cuda'"),
    "unknown-dtype": (["--dtype", "float8"], "'float8' is not one of"),
    "unknown-executor": (["--executor", "threads"], "'threads' is not one of"),
    "unknown-fit": (["--fit", "exact"], "'exact' is not one of"),
    "plugin-folder": (["--plugin", str(ROOT / "tests" / "plugins")], "is a folder; give a .py file"),
}


@pytest.mark.parametrize("case", sorted(BAD_SWEEPS))
def test_bad_sweep_input_is_refused_before_measuring(case, tmp_path, capsys):
    args, needle = BAD_SWEEPS[case]
    out = tmp_path / "run"
    refused(["sweep", "--methods", "uniform", "--out", str(out)] + TINY + args, capsys, needle)
    assert not out.exists()


def test_a_good_param_value_is_still_measured(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["sweep", "--methods", "window", "--param", "window.window=2", "--out", str(out), "--workload",
                 "gaussian", "--fit", "none"] + TINY) == 0, capsys.readouterr().err
    assert '"status": "ok"' in (out / "rows.jsonl").read_text()


def test_model_refuses_a_parameter_no_attention_takes(tmp_path, capsys):
    out = tmp_path / "model"
    refused(["model", "--arch", "deit-tiny", "--img", "32", "--no-timing", "--param", "nosuch=1", "--out", str(out)],
            capsys, "vanilla-math takes")
    assert not out.exists()


def test_list_on_cuda_without_cuda_is_refused(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(["list", "--device", "cuda"], capsys, "torch sees no CUDA device")


def test_a_refused_merge_leaves_no_out_folder(tmp_path, capsys):
    from test_merge import folder, row

    a = folder(tmp_path, "a", [row(16, 1.0, "2026-01-01")])
    b = folder(tmp_path, "b", [row(16, 5.0, "2026-01-03")])
    out = tmp_path / "m"
    refused(["merge", str(a), str(b), "--out", str(out)], capsys, "--keep")
    assert not out.exists()


def test_merge_summary_names_keep_only_when_given(tmp_path, capsys):
    from test_merge import folder, row

    a = folder(tmp_path, "a", [row(16, 1.0, "2026-01-01")])
    assert main(["merge", str(a), "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "1 rows in" in out and "--keep None" not in out and "conflicts" not in out


def test_report_on_a_full_disk_names_the_file(tmp_path, capsys, monkeypatch):
    from test_report import synthetic_rows, write_run

    run = write_run(tmp_path / "run", synthetic_rows())
    plain = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "report.md":
            raise OSError(errno.ENOSPC, "No space left on device")
        return plain(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    err = refused(["report", "--run", str(run), "--out", str(tmp_path / "rep")], capsys, "No space left on device")
    assert str(tmp_path / "rep" / "report.md") in err
