"""The file: workload's layer axis and the sweep's one row per layer, on synthetic files."""
import pytest
import torch
from safetensors.torch import save_file

from attnbench.measure.timing import TimingConfig
from attnbench.reference import softmax_attention
from attnbench.results import read_rows
from attnbench.sweep import SweepConfig, run_sweep
from attnbench.workloads import WorkloadError, file_dims, make_workload


def layered(path, layers=3, batch=2, heads=2, n=10, d=4, fit_batch=1, seed=0):
    """A (layers, B, heads, n, d) file whose layers differ (layer l has logits scaled by l + 1)."""
    gen = torch.Generator().manual_seed(seed)

    def qkv(b):
        q, k, v = (torch.randn(layers, b, heads, n, d, generator=gen) for _ in range(3))
        return q * torch.arange(1, layers + 1).view(-1, 1, 1, 1, 1), k, v

    q, k, v = qkv(batch)
    qf, kf, vf = qkv(fit_batch)
    save_file({"q": q, "k": k, "v": v, "q_fit": qf, "k_fit": kf, "v_fit": vf}, str(path))
    return q, k, v, qf


def load(path, **kw):
    return make_workload(f"file:{path}", 1, 1, 1, 1, dtype=torch.float32, device="cpu", **kw)


def test_layer_picks_each_layer_and_its_fit_split(tmp_path):
    path = tmp_path / "l.safetensors"
    q, k, v, qf = layered(path)
    assert file_dims(str(path)) == {"batch": 2, "heads": 2, "n": 10, "head_dim": 4, "layers": 3}
    for layer in range(3):
        wl = load(path, layer=layer)
        assert torch.equal(wl.q, q[layer]) and torch.equal(wl.v, v[layer]) and wl.params["layer"] == layer
        assert torch.equal(load(path, layer=layer, split="fit").q, qf[layer])
    assert load(path, layer=1).params["grid_source"].startswith("near-square")


@pytest.mark.parametrize("layer", [None, 3, -1])
def test_layered_file_needs_a_valid_layer(tmp_path, layer):
    path = tmp_path / "l.safetensors"
    layered(path)
    with pytest.raises(WorkloadError, match="3 layers"):
        load(path, layer=layer)


def test_layer_on_a_file_without_layer_axis_or_gaussian_is_refused(tmp_path):
    path = tmp_path / "flat.safetensors"
    save_file({n: torch.randn(1, 2, 6, 4) for n in "qkv"}, str(path))
    with pytest.raises(WorkloadError, match="no layer axis"):
        load(path, layer=0)
    with pytest.raises(WorkloadError, match="no layer axis"):
        make_workload("gaussian", 1, 1, 4, 4, dtype=torch.float32, device="cpu", layer=0)


def test_fit_split_must_share_the_layer_axis(tmp_path):
    path = tmp_path / "mixed.safetensors"
    t = {n: torch.randn(2, 1, 2, 6, 4) for n in "qkv"}
    t.update({f"{n}_fit": torch.randn(1, 2, 6, 4) for n in "qkv"})
    save_file(t, str(path))
    with pytest.raises(WorkloadError, match="layer axis"):
        load(path, layer=0, split="fit")


def sweep(path, out, methods=("vanilla-math", "uniform"), fit="none"):
    cfg = SweepConfig(ns=(1,), ms=(3,), methods=methods, workload=f"file:{path}", out=out, count_flops=False,
                      timing=TimingConfig(cpu_min_run_time_s=0.001), fit=fit, executor="inline")
    return cfg, run_sweep(cfg, progress=False)


def test_sweep_gives_one_row_per_layer_and_resumes(tmp_path):
    path = tmp_path / "l.safetensors"
    q, k, v, _ = layered(path, n=11)                 # odd n: a 1 x 11 near-square grid
    cfg, summary = sweep(path, tmp_path / "run")
    rows = read_rows(tmp_path / "run" / "rows.jsonl")
    assert summary.written == 6 and sorted((r["layer"], r["method"]) for r in rows) == \
        [(layer, m) for layer in range(3) for m in ("uniform", "vanilla-math")]
    exact = {r["layer"]: r for r in rows if r["method"] == "vanilla-math"}
    uniform = {r["layer"]: r for r in rows if r["method"] == "uniform"}
    for layer in range(3):                           # the uniform error is the layer's own
        ref = softmax_attention(q[layer], k[layer], v[layer])
        mean = v[layer].double().mean(dim=-2, keepdim=True).expand_as(ref)
        expected = float((mean - ref).norm() / ref.norm())
        assert uniform[layer]["err_rel_fro"] == pytest.approx(expected, rel=1e-5)
        assert exact[layer]["err_rel_fro"] < 1e-6
    entropies = [exact[layer]["attn_entropy_ratio"] for layer in range(3)]
    assert entropies == sorted(entropies, reverse=True)   # sharper logits in later layers
    assert run_sweep(cfg, progress=False).skipped_existing == 6


def test_fitting_uses_the_same_layer(tmp_path):
    path = tmp_path / "l.safetensors"
    layered(path, n=12)
    _, summary = sweep(path, tmp_path / "run", methods=("anchor",), fit="closed")
    rows = read_rows(tmp_path / "run" / "rows.jsonl")
    assert summary.written == 3 and all(r["fit_info"]["applied"] == "closed" for r in rows)
    assert len({r["fit_info"]["objective_start"] for r in rows}) == 3     # fitted on three different layers


def test_file_without_layer_axis_gives_layer_all(tmp_path):
    path = tmp_path / "flat.safetensors"
    save_file({n: torch.randn(1, 2, 6, 4) for n in "qkv"}, str(path))
    sweep(path, tmp_path / "run", methods=("vanilla-math",))
    assert [r["layer"] for r in read_rows(tmp_path / "run" / "rows.jsonl")] == ["all"]
