"""Workloads (image, file), the uniform null model with err_skill, and attention-map metrics."""
import math
import socket

import pytest
import torch

import attnbench
from attnbench.measure.attnmap import attn_map_metrics
from attnbench.measure.error import exact_reference
from attnbench.measure.timing import TimingConfig
from attnbench.methods.base import near_square_grid
from attnbench.results import read_rows
from attnbench.sweep import SweepConfig, run_sweep
from attnbench.workloads import WorkloadError, make_workload

FAST = TimingConfig(cpu_min_run_time_s=0.01)


def image_wl(n=150, head_dim=33, seed=0, split="eval", batch=2):
    return make_workload("image", batch, 3, n, head_dim, dtype=torch.float32, device="cpu", seed=seed, split=split)


def sweep_rows(tmp_path, **kw):
    kw = {"workload": "gaussian", "fit": "none", "executor": "inline", "ms": (30,), **kw}
    cfg = SweepConfig(out=tmp_path, count_flops=False, timing=FAST, **kw)
    summary = run_sweep(cfg, progress=False)
    return read_rows(tmp_path / "rows.jsonl"), summary


# -- image ----------------------------------------------------------------------------------

def test_image_is_deterministic_and_needs_no_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the image workload tried to open a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    a, b, other = image_wl(), image_wl(), image_wl(seed=1)
    assert a.q.shape == (2, 3, 150, 33) and a.grid == near_square_grid(150) == (10, 15)
    for x, y in ((a.q, b.q), (a.k, b.k), (a.v, b.v)):
        assert torch.equal(x, y)
    assert not torch.equal(a.k, other.k)
    assert all(torch.isfinite(t).all() for t in (a.q, a.k, a.v))


def test_image_fit_split_uses_other_photographs():
    ev, fit = image_wl(), image_wl(split="fit")
    assert not set(ev.params["images"]) & set(fit.params["images"])
    assert not torch.equal(ev.v, fit.v)
    with pytest.raises(WorkloadError, match="split"):
        image_wl(split="test")


def test_image_attention_is_structured():
    wl = image_wl(n=256, head_dim=64, batch=1)
    ratio = exact_reference(wl.q, wl.k, wl.v).entropy_ratio
    assert ratio < 0.8


def test_workload_spec_errors():
    with pytest.raises(WorkloadError, match="takes no ':' argument"):
        make_workload("image:astronaut", 1, 1, 4, 4, dtype=torch.float32, device="cpu")
    with pytest.raises(WorkloadError, match="unknown workload"):
        make_workload("imagenet", 1, 1, 4, 4, dtype=torch.float32, device="cpu")
    with pytest.raises(WorkloadError, match="needs a path"):
        make_workload("file", 1, 1, 4, 4, dtype=torch.float32, device="cpu")


def test_gaussian_fit_split_is_another_seed():
    ev = make_workload("gaussian", 1, 2, 20, 8, dtype=torch.float32, device="cpu", seed=4)
    fit = make_workload("gaussian", 1, 2, 20, 8, dtype=torch.float32, device="cpu", seed=4, split="fit")
    assert not torch.equal(ev.q, fit.q)


# -- file -----------------------------------------------------------------------------------

def save(path, tensors):
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    else:
        torch.save(tensors, path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_file_round_trip_equals_in_memory_error(tmp_path, suffix):
    mem = make_workload("gaussian", 1, 2, 48, 8, dtype=torch.float32, device="cpu", seed=7)
    path = tmp_path / f"acts{suffix}"
    save(path, {"q": mem.q, "k": mem.k, "v": mem.v, "grid": torch.tensor([6, 8])})
    common = dict(ns=(48,), ms=(5,), methods=("anchor", "uniform"), seed=7)
    mem_rows, _ = sweep_rows(tmp_path / "mem", heads=2, head_dim=8, workload="gaussian", **common)
    file_rows, summary = sweep_rows(tmp_path / "file", heads=6, head_dim=64, batch=3,
                                    workload=f"file:{path}", **{**common, "ns": (1024,)})
    assert "batch=1, heads=2, n=48, head_dim=8" in summary.notes[0]
    assert [r["status"] for r in file_rows] == ["ok"] * 2
    loaded = make_workload(f"file:{path}", 1, 1, 1, 1, dtype=torch.float32, device="cpu")
    assert all(torch.equal(x, y) for x, y in ((loaded.q, mem.q), (loaded.k, mem.k), (loaded.v, mem.v)))
    assert loaded.grid == (6, 8)
    for a, b in zip(mem_rows, file_rows):
        assert (b["method"], b["n"], b["heads"], b["head_dim"], b["batch"]) == (a["method"], 48, 2, 8, 1)
        assert b["attn_entropy_ratio"] == a["attn_entropy_ratio"]   # float64 reference: bitwise
        # same inputs bit for bit; a float32 forward may take another kernel path on differently
        # aligned memory, which moves the output by a few ulp (~1e-7 relative)
        assert b["err_rel_fro"] == pytest.approx(a["err_rel_fro"], abs=1e-6)


GOOD = {"q": torch.randn(1, 2, 12, 4), "k": torch.randn(1, 2, 12, 4), "v": torch.randn(1, 2, 12, 4)}
BAD_FILES = {
    "missing-key": ({"q": GOOD["q"], "k": GOOD["k"]}, "no tensor 'v'"),
    "not-4d": ({**GOOD, "k": torch.randn(2, 12, 4)}, "'k' has shape (2, 12, 4)"),
    "shape-mismatch": ({**GOOD, "v": torch.randn(1, 2, 13, 4)}, "'v' has shape (1, 2, 13, 4) but 'q'"),
    "int-dtype": ({**GOOD, "q": torch.ones(1, 2, 12, 4, dtype=torch.int32)}, "'q' has dtype int32"),
    "nan": ({**GOOD, "v": GOOD["v"].clone().index_fill_(2, torch.tensor([3]), float("nan"))}, "'v' has 8 non-finite"),
    "inf": ({**GOOD, "k": GOOD["k"].clone().index_fill_(0, torch.tensor([0]), float("inf"))}, "'k' has 96 non-finite"),
    "bad-grid": ({**GOOD, "grid": torch.tensor([5, 3])}, "grid must be two positive integers"),
}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_file_gives_one_line_error(tmp_path, case, suffix):
    tensors, expected = BAD_FILES[case]
    path = tmp_path / f"bad{suffix}"
    save(path, tensors)
    with pytest.raises(WorkloadError) as exc:
        make_workload(f"file:{path}", 1, 1, 1, 1, dtype=torch.float32, device="cpu")
    msg = str(exc.value)
    assert expected in msg and str(path) in msg and "\n" not in msg


@pytest.mark.parametrize("name,content,expected", [
    ("absent.pt", None, "does not exist"),
    ("acts.npy", b"x", "must end in .safetensors, .pt or .pth"),
    ("corrupt.safetensors", b"not a safetensors file", "cannot read workload file"),
    ("corrupt.pt", b"garbage", "cannot read workload file"),
])
def test_unreadable_file_gives_one_line_error(tmp_path, name, content, expected):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WorkloadError) as exc:
        make_workload(f"file:{path}", 1, 1, 1, 1, dtype=torch.float32, device="cpu")
    assert expected in str(exc.value) and "\n" not in str(exc.value)


def test_pt_file_that_is_not_a_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([GOOD["q"]], path)
    with pytest.raises(WorkloadError, match="must hold a dict of tensors"):
        make_workload(f"file:{path}", 1, 1, 1, 1, dtype=torch.float32, device="cpu")


def test_file_fit_split(tmp_path):
    path = tmp_path / "acts.safetensors"
    save(path, GOOD)
    with pytest.raises(WorkloadError, match="no q_fit, k_fit, v_fit"):
        make_workload(f"file:{path}", 1, 1, 1, 1, dtype=torch.float32, device="cpu", split="fit")
    fit = {f"{x}_fit": torch.randn(3, 2, 12, 4) for x in "qkv"}
    save(path, {**GOOD, **fit})
    wl = make_workload(f"file:{path}", 1, 1, 1, 1, dtype=torch.float32, device="cpu", split="fit")
    assert torch.equal(wl.k, fit["k_fit"])


@pytest.mark.parametrize("extra", [[], ["--fit", "closed"]], ids=["eval", "fit"])
def test_cli_bad_file_is_one_line_exit_2(tmp_path, capsys, extra):
    from attnbench.cli import main

    path = tmp_path / "bad.safetensors"
    save(path, {"q": GOOD["q"], "k": GOOD["k"]} if not extra else GOOD)
    method = "anchor" if extra else "uniform"   # a fit asks for the fitting split only where there is state to fit
    code = main(["sweep", "--workload", f"file:{path}", "--methods", method, "--out", str(tmp_path / "o"),
                 "--quiet"] + extra)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0
    assert ("'v'" if not extra else "q_fit") in err


# -- uniform and err_skill ------------------------------------------------------------------

def test_uniform_err_skill_is_zero_and_exact_methods_one(tmp_path):
    rows, _ = sweep_rows(tmp_path, ns=(77,), ms=(6,), heads=2, head_dim=9,
                         methods=("uniform", "vanilla-math", "vanilla-sdpa", "anchor"))
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        if r["method"] == "uniform":
            assert r["err_skill"] == 0.0 and r["err_rel_fro"] == r["err_uniform_rel_fro"]
        elif r["method"].startswith("vanilla"):
            # float32 rounding: err_rel_fro ~1e-7 against a uniform error of order 1
            assert r["err_skill"] == pytest.approx(1.0, abs=1e-5)
        else:
            assert r["err_skill"] == pytest.approx(1 - r["err_rel_fro"] / r["err_uniform_rel_fro"], rel=1e-12)


def test_uniform_error_matches_an_independent_mean():
    wl = make_workload("gaussian", 1, 2, 30, 5, dtype=torch.float32, device="cpu")
    mod = attnbench.create("uniform", heads=2, head_dim=5)
    out = mod(wl.q, wl.k, wl.v)
    for i in (0, 17, 29):
        torch.testing.assert_close(out[0, 1, i], wl.v[0, 1].sum(0) / 30)
    assert mod.macs(1, 30) == 0


# -- attention-map metrics ------------------------------------------------------------------

MATRIX_METHODS = [m["name"] for m in attnbench.list_methods("cpu") if m["available"]]


@pytest.mark.parametrize("name", MATRIX_METHODS)
def test_implied_matrix_reproduces_the_output(name, qkv_factory):
    """Where a method forms its N×N matrix, P v equals its forward (N, head_dim awkward)."""
    info = attnbench.registry.get_info(name)
    kwargs = {info.budget: 7} if info.budget else {}
    mod = attnbench.create(name, heads=3, head_dim=11, **kwargs).double()
    q, k, v = (t.double() for t in qkv_factory(2, 3, 45, 11, seed=5, scale=2.0))
    mat = mod.attention_matrix(q, k, v, (5, 9))
    if mat is None:
        pytest.skip(f"{name} forms no attention matrix")
    assert mat.shape == (2, 3, 45, 45)
    torch.testing.assert_close(mat @ v, mod(q, k, v, grid=(5, 9)), rtol=1e-9, atol=1e-9)


def test_attn_map_metrics_exact_and_uniform(qkv_factory):
    q, k, v = qkv_factory(1, 2, 100, 8, seed=2, scale=3.0)
    exact = attnbench.create("vanilla-math", heads=2, head_dim=8)
    m = attn_map_metrics(exact, q, k, v, None, block=37)
    assert m["attn_map_reason"] is None and m["attn_kl_mean"] < 1e-5 and m["attn_tv_mean"] < 1e-5
    # against the uniform matrix, KL(p ‖ 1/N) = log N − H(p): mean KL = log N · (1 − entropy ratio)
    uni = attn_map_metrics(attnbench.create("uniform", heads=2, head_dim=8), q, k, v, None, block=37)
    ratio = exact_reference(q, k, v).entropy_ratio
    assert uni["attn_kl_mean"] == pytest.approx(math.log(100) * (1 - ratio), rel=1e-5)
    p = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(8), -1)
    # the method's matrix holds float32(1/N), 1e-10 off 1/N per entry
    assert uni["attn_tv_mean"] == pytest.approx(float(0.5 * (p - 0.01).abs().sum(-1).mean()), rel=1e-6)


def test_attn_map_metrics_reasons(qkv_factory):
    q, k, v = qkv_factory(1, 1, 20, 4)
    big = attn_map_metrics(attnbench.create("uniform", heads=1, head_dim=4), q, k, v, None, max_n=10)
    assert big["attn_kl_mean"] is None and "n=20 > 10" in big["attn_map_reason"]

    class NoMatrix(attnbench.methods.base.AttentionMethod):
        def forward(self, q, k, v, grid=None):
            return v

    none = attn_map_metrics(NoMatrix(1, 4), q, k, v, None)
    assert none["attn_tv_mean"] is None and "no implied attention matrix" in none["attn_map_reason"]


def test_sweep_rows_carry_attention_map_fields(tmp_path):
    rows, _ = sweep_rows(tmp_path, ns=(36,), ms=(4,), heads=2, head_dim=8, methods=("anchor", "anchor-select"),
                         workload="image")
    for r in rows:
        assert r["status"] == "ok" and r["attn_map_reason"] is None
        assert r["attn_kl_mean"] > 0 and 0 < r["attn_tv_mean"] <= 1


def test_attn_map_failure_becomes_a_reason(qkv_factory):
    q, k, v = qkv_factory(1, 1, 20, 4)

    class Broken(attnbench.methods.base.AttentionMethod):
        def forward(self, q, k, v, grid=None):
            return v

        def attention_matrix(self, q, k, v, grid=None):
            raise RuntimeError("cannot form it\nsecond line")

    m = attn_map_metrics(Broken(1, 4), q, k, v, None)
    assert m["attn_kl_mean"] is None and m["attn_map_reason"].endswith("RuntimeError: cannot form it")
