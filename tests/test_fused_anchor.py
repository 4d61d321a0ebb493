"""fused-anchor (Triton kernel under the interpreter, chunked CPU path, gradients), anchor-compiled
wiring, and the roofline arithmetic."""
import json
import os

import pytest
import torch

import attnbench
from attnbench.cli import main
from attnbench.measure.memory import cpu_peak_bytes
from attnbench.measure.roofline import bytes_min, roofline_columns
from attnbench.methods.anchor import anchor_attention, anchor_weights
from attnbench.methods.fused_anchor import FusedAnchorFunction, chunked_backward, chunked_forward

# The kernels run on the GPU where there is one, else under triton's interpreter on CPU tensors
# (tests/conftest.py sets TRITON_INTERPRET=1 before triton is first imported).
pytestmark = pytest.mark.cuda  # the Triton kernels run on the GPU when there is one
KDEV = "cuda" if torch.cuda.is_available() else "cpu"


def rel_err(x, ref):
    return float((x.double() - ref.double()).norm() / ref.double().norm())


@pytest.fixture(scope="module")
def interp():
    """The Triton kernel module: compiled on a GPU, interpreted on CPU tensors otherwise."""
    pytest.importorskip("triton")
    if KDEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1 (set it before triton is imported)")
    from attnbench.kernels import anchor_triton

    return anchor_triton


def make_inputs(b, h, n, d, m, seed=0, dtype=torch.float32, shared=False, device=KDEV):
    """k, v (B, H, N, d) and anchors (B, H, m, d) (an expanded view of (m, d) when shared)."""
    gen = torch.Generator().manual_seed(seed)
    k, v = (torch.randn(b, h, n, d, generator=gen).to(device, dtype) for _ in range(2))
    u = torch.randn(m, d, generator=gen) if shared else torch.randn(h, m, d, generator=gen)
    u = (u * 2).to(device, dtype)  # logits with std 2: peaked, not near-uniform, anchor weights
    return k, v, u.expand(b, h, m, d)


def poisoned(k):
    return torch.full_like(k, float("nan"))


# Every listed N, m and head_dim, each N with both head dims and each m with both head dims;
# m = 100 (padded to 128, the interpreter's slowest float32 products) only at N <= 127, and the
# N = 1000 cases with one head, to keep the interpreted run short.
INTERP_CASES = [  # (N, m, d, B, H)
    (1, 1, 32, 2, 3), (1, 100, 64, 1, 1),
    (127, 10, 64, 2, 3), (127, 30, 32, 1, 2), (127, 100, 32, 1, 2),
    (1000, 1, 64, 1, 1), (1000, 10, 32, 1, 1), (1000, 30, 64, 1, 1),
]


@pytest.mark.parametrize("n,m,d,b,h", INTERP_CASES, ids=["N{}-m{}-d{}-B{}-H{}".format(*c) for c in INTERP_CASES])
def test_triton_kernel_matches_anchor_float32(interp, n, m, d, b, h):
    k, v, u = make_inputs(b, h, n, d, m, seed=n + m + d)
    out = poisoned(k)
    res, m2, s = interp.anchor_forward(k, v, u, d ** -0.5, out=out)
    assert res is out and torch.isfinite(out).all(), "unwritten or non-finite output elements"
    ref = anchor_attention(u, k, v, d ** -0.5)
    assert rel_err(out, ref) <= 1e-5
    a = anchor_weights(u.double(), k.double(), d ** -0.5)              # (B, H, N, m)
    torch.testing.assert_close(s.double(), a.sum(-2), rtol=1e-5, atol=1e-6)
    assert m2.shape == (b, h, m, d)


def test_triton_kernel_atomic_shared_and_explicit_splits(interp):
    """Atomics instead of per-split partials, one anchor set for all heads (stride 0), k and v
    laid out (B, N, H, d) and seen through a transpose, and token ranges that leave masked tails
    in both passes (700 = 2·256 + 188 = 384 + 316)."""
    k, v, u = make_inputs(1, 2, 700, 32, 30, seed=5, shared=True)
    k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (k, v))  # (B, H, N, d) views
    assert not k.is_contiguous()
    out = poisoned(k.contiguous())
    interp.anchor_forward(k, v, u, 32 ** -0.5, deterministic=False, tokens_per_split=256,
                          tokens_per_prog=384, out=out)
    assert torch.isfinite(out).all()
    assert rel_err(out, anchor_attention(u, k, v, 32 ** -0.5)) <= 1e-5


BF16_DOT = pytest.mark.skipif(KDEV == "cpu", reason="triton 3.9's interpreter multiplies bfloat16 dot "
                              "operands as raw 16-bit integers (fine on a GPU)")


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=BF16_DOT)], ids=str)
def test_triton_kernel_16bit_no_worse_than_eager(interp, dtype):
    """Float32 accumulation: the kernel's error against float64 is at most 2x eager anchor's."""
    k, v, u = make_inputs(1, 2, 127, 64, 30, seed=2, dtype=dtype)
    out = poisoned(k)
    interp.anchor_forward(k, v, u, 64 ** -0.5, out=out)
    ref = anchor_attention(u.double(), k.double(), v.double(), 64 ** -0.5)
    eager = anchor_attention(u, k, v, 64 ** -0.5)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 2 * rel_err(eager, ref)


def _empty_column_inputs(n=127, d=32):
    k, v, u = make_inputs(1, 1, n, d, 3, seed=7)
    k = k.abs()                                # all keys in the positive orthant
    u = u.clone()
    u[..., 0, :] = -1e4                        # logits ~ -1e4: column 0 of A is exactly 0
    return k, v, u


def test_zero_column_sums_give_zeros_not_nan(interp):
    k, v, u = _empty_column_inputs()
    assert float(anchor_weights(u, k, 32 ** -0.5)[..., 0].sum()) == 0.0
    ref = anchor_attention(u[..., 1:, :], k, v, 32 ** -0.5)    # the empty anchor dropped
    out = poisoned(k)
    _, m2, s = interp.anchor_forward(k, v, u, 32 ** -0.5, out=out)
    assert float(s[..., 0]) == 0.0 and (m2[..., 0, :] == 0).all()
    assert rel_err(out, ref) <= 1e-5
    cpu_out, cpu_m2, _ = chunked_forward(k.cpu(), v.cpu(), u.cpu(), 32 ** -0.5, chunk=50)
    assert (cpu_m2[..., 0, :] == 0).all() and rel_err(cpu_out, ref.cpu()) <= 1e-5


def test_kernel_rejects_unsupported_shapes(interp):
    k, v, u = make_inputs(1, 1, 10, 8, 3)
    with pytest.raises(ValueError, match="head_dim"):
        interp.anchor_forward(k, v, u, 8 ** -0.5)
    mod = attnbench.create("fused-anchor", heads=2, head_dim=256, m=30)
    assert "head_dim 16..128" in mod.unsupported_reason("cuda", "bfloat16", 1024, 256)
    assert mod.unsupported_reason("cpu", "float32", 1024, 256) is None


def test_device_dispatch_names(interp):
    fused = attnbench.create("fused-anchor", heads=2, head_dim=32, m=10)
    names = fused.impls(torch.device("cuda"))[0::2]
    assert names == ("triton", "triton")
    assert fused.impls(torch.device("cpu"))[0::2] == ("pytorch-chunked", "pytorch-chunked")
    torch_bwd = attnbench.create("fused-anchor", heads=2, head_dim=32, m=10, backward="pytorch")
    assert torch_bwd.impls(torch.device("cuda"))[0::2] == ("triton", "pytorch-chunked")


def _grads(fn, k, v, u_leaf, g):
    kk, vv = k.clone().requires_grad_(True), v.clone().requires_grad_(True)
    out = fn(kk, vv, u_leaf)
    return torch.autograd.grad(out, [kk, vv, u_leaf], g)


@pytest.mark.parametrize("backward", ["triton", "pytorch-chunked"])
def test_triton_gradients_match_anchor_autograd(interp, backward):
    """Triton forward with the Triton or the chunked backward, against autograd through ``anchor``
    in float32. Bound: 4x the float32 eager error against float64 autograd, plus 1e-6. N = 300
    split in 128-token ranges (two full, one masked tail) so the d anchors partials are summed."""
    b, h, n, d, m = 1, 2, 300, 32, 10
    k, v, u = make_inputs(b, h, n, d, m, seed=11)
    u_leaf = u[0].clone().requires_grad_(True)                        # (H, m, d)
    g = torch.randn(b, h, n, d, generator=torch.Generator().manual_seed(3)).to(KDEV)

    def fwd(k_, v_, a_, scale):
        return interp.anchor_forward(k_, v_, a_, scale, tokens_per_split=128)

    def bwd(g_, k_, v_, a_, m2, s, scale):
        if backward == "triton":
            return interp.anchor_backward(g_, k_, v_, a_, m2, s, scale, tokens_per_split=128)
        return chunked_backward(g_, k_, v_, a_, m2, s, scale, chunk=100)

    def fused(kk, vv, uu):
        return FusedAnchorFunction.apply(kk, vv, uu.expand(b, h, m, d), d ** -0.5, fwd, bwd)

    def eager(kk, vv, uu):
        return anchor_attention(uu, kk, vv, d ** -0.5)

    ref = _grads(eager, k.double(), v.double(), u_leaf.detach().double().requires_grad_(True), g.double())
    base = _grads(eager, k, v, u_leaf, g)
    got = _grads(fused, k, v, u_leaf, g)
    for name, x, y, r in zip(("dk", "dv", "danchors"), got, base, ref):
        assert torch.isfinite(x).all() and rel_err(x, r) <= 4 * rel_err(y, r) + 1e-6, name


SPLIT_CASES = [(200, 30, 16, 16), (130, 40, 32, 16), (129, 5, 32, 16)]  # (N, m, d, BLOCK_M): 2, 4 and 1 anchor blocks


@pytest.mark.parametrize("n,m,d,block_m", SPLIT_CASES, ids=["N{}-m{}-d{}-bm{}".format(*c) for c in SPLIT_CASES])
def test_split_anchor_axis_matches_float64_autograd(interp, n, m, d, block_m):
    """The anchor axis split in BLOCK_M blocks (pass 1 statistics looped over the blocks; the
    backward's dk and dv in their own programs), against float64 autograd through ``anchor``,
    with a masked token tail and a masked anchor tail. Bound: 4x the float32 eager error + 1e-6."""
    b, h = 1, 2
    k, v, u = make_inputs(b, h, n, d, m, seed=5)
    g = torch.randn(b, h, n, d, generator=torch.Generator().manual_seed(9)).to(KDEV)
    scale = d ** -0.5
    out, m2, s = interp.anchor_forward(k, v, u, scale, tokens_per_split=128, block_m=block_m)
    dk, dv, du = interp.anchor_backward(g, k, v, u, m2, s, scale, tokens_per_split=128, block_m=block_m)
    ref_leaf = u[0].detach().double().requires_grad_(True)
    ref = _grads(lambda kk, vv, uu: anchor_attention(uu, kk, vv, scale), k.double(), v.double(), ref_leaf, g.double())
    base = _grads(lambda kk, vv, uu: anchor_attention(uu, kk, vv, scale), k, v, u[0].clone().requires_grad_(True), g)
    ref_out = anchor_attention(u.double(), k.double(), v.double(), scale)
    eager_out = anchor_attention(u, k, v, scale)
    assert torch.isfinite(out).all() and rel_err(out, ref_out) <= 4 * rel_err(eager_out, ref_out) + 1e-6
    for name, x, y, r in zip(("dk", "dv", "danchors"), (dk, dv, du.sum(0)), base, ref):
        assert torch.isfinite(x).all() and rel_err(x, r) <= 4 * rel_err(y, r) + 1e-6, name


def test_anchor_block_splits_where_the_tiles_do_not_fit(interp):
    """Pass 1 splits at M_PAD 128 with D_PAD >= 64, the backward above M_PAD 32; the others hold all."""
    assert interp.anchor_block(128, 64, "pass1") < 128 and interp.anchor_block(128, 32, "pass1") == 128
    assert interp.anchor_block(64, 32, "bwd") < 64 and interp.anchor_block(32, 128, "bwd") == 32
    assert interp.anchor_block(128, 128, "pass2") == 128


@pytest.mark.parametrize("shared", [False, True], ids=["per-head", "shared"])
def test_cpu_path_gradients_equal_anchor_autograd(shared):
    """In float64 the chunked forward and backward equal ``anchor``'s autograd to rounding."""
    b, h, n, d, m = 2, 3, 77, 16, 5
    gen = torch.Generator().manual_seed(1)
    q, k, v, g = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) for _ in range(4))
    ref = attnbench.create("anchor", heads=h, head_dim=d, m=m, shared=shared).double()
    fused = attnbench.create("fused-anchor", heads=h, head_dim=d, m=m, shared=shared, chunk=20).double()
    assert torch.equal(ref.anchors, fused.anchors)
    results = []
    for mod in (ref, fused):
        kk, vv = k.clone().requires_grad_(True), v.clone().requires_grad_(True)
        out = mod(q, kk, vv)
        results.append((out, *torch.autograd.grad(out, [kk, vv, mod.anchors], g)))
    for name, x, y in zip(("out", "dk", "dv", "danchors"), *results):
        torch.testing.assert_close(y, x, rtol=1e-10, atol=1e-12, msg=name)


def test_cpu_path_matches_anchor_with_a_quarter_of_its_workspace():
    n, h, d = 16384, 2, 64
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, n, d, generator=gen) for _ in range(3))
    ref = attnbench.create("anchor", heads=h, head_dim=d, m=30)
    fused = attnbench.create("fused-anchor", heads=h, head_dim=d, m=30)
    assert fused.backend_info(q, k, v)["forward"] == "pytorch-chunked"
    with torch.no_grad():
        expected, got = ref(q, k, v), fused(q, k, v)
        assert rel_err(got, expected) <= 1e-5
        out_bytes = got.numel() * got.element_size()
        ref_ws = cpu_peak_bytes(lambda: ref(q, k, v)) - out_bytes
        fused_ws = cpu_peak_bytes(lambda: fused(q, k, v)) - out_bytes
    assert ref_ws > 0 and fused_ws <= ref_ws / 4, (fused_ws, ref_ws)


def _sweep_rows(tmp_path, capsys, methods, extra=()):
    out = tmp_path / "run"
    code = main(["sweep", "--n", "40", "--m", "4", "--methods", methods, "--out", str(out), "--heads", "2",
                 "--head-dim", "16", "--min-run-time", "0.01", "--quiet", "--no-flops", *extra])
    capsys.readouterr()
    assert code == 0
    return {r["method"]: r for r in map(json.loads, (out / "rows.jsonl").read_text().splitlines())}


def test_sweep_rows_say_which_paths_ran_and_carry_roofline(tmp_path, capsys):
    rows = _sweep_rows(tmp_path, capsys, "anchor,fused-anchor,anchor-compiled",
                       ["--mode", "fwdbwd", "--param", "anchor-compiled.backend=eager"])
    assert all(r["status"] == "ok" for r in rows.values()), {k: r["message"] for k, r in rows.items()}
    assert rows["fused-anchor"]["impl"] == {"forward": "pytorch-chunked", "backward": "pytorch-chunked", "chunk": 512}
    compiled = rows["anchor-compiled"]["impl"]
    assert compiled["backend"] == "eager" and compiled["compile_time_s"] > 0
    assert compiled["compile_includes_backward"] is True and compiled["compiled_vs_eager_max_abs"] == 0.0
    for r in rows.values():
        assert r["bytes_min"] == 6 * 2 * 40 * 16 * 4      # k, v, out, dout, dk, dv
        assert r["achieved_gbps"] > 0 and r["achieved_tflops"] > 0 and r["frac_copy_bw"] > 0
        assert r["env"]["roofline"]["copy_gbps"] > 0 and r["env"]["roofline"]["matmul_tflops"] > 0


def test_failed_compile_is_an_error_row(tmp_path, capsys):
    rows = _sweep_rows(tmp_path, capsys, "anchor-compiled", ["--param", "anchor-compiled.backend=no-such-backend"])
    row = rows["anchor-compiled"]
    assert row["status"] == "error" and "torch.compile(backend='no-such-backend') failed" in row["message"]
    assert row["bytes_min"] == 3 * 2 * 40 * 16 * 4 and row["achieved_gbps"] is None


def test_bytes_min_by_hand():
    tensor = 2 * 3 * 100 * 16 * 2                          # B·H·N·d elements of 2 bytes
    assert bytes_min(2, 3, 100, 16, 2) == 4 * tensor        # q, k, v read; out written
    assert bytes_min(2, 3, 100, 16, 2, uses_query=False) == 3 * tensor
    assert bytes_min(2, 3, 100, 16, 2, mode="fwdbwd") == 8 * tensor        # + dout, dq, dk, dv
    assert bytes_min(2, 3, 100, 16, 2, uses_query=False, mode="fwdbwd") == 6 * tensor


def test_roofline_columns_by_hand():
    row = {"batch": 1, "heads": 1, "n": 1000, "head_dim": 125, "dtype": "float32", "mode": "fwd",
           "latency_ms": 2.0, "macs_analytic": 10**9}
    cols = roofline_columns(row, True, {"copy_gbps": 0.5, "matmul_tflops": 4.0})
    assert cols["bytes_min"] == 4 * 1000 * 125 * 4 == 2_000_000
    assert cols["achieved_gbps"] == pytest.approx(2e6 / 2e-3 / 1e9)   # 1.0 GB/s
    assert cols["achieved_tflops"] == pytest.approx(2e9 / 2e-3 / 1e12)  # 1.0 TFLOP/s
    assert cols["frac_copy_bw"] == pytest.approx(2.0) and cols["frac_matmul_peak"] == pytest.approx(0.25)
    bwd = roofline_columns({**row, "mode": "fwdbwd"}, False, None)
    assert bwd["achieved_tflops"] == pytest.approx(3.0) and bwd["frac_copy_bw"] is None
    failed = roofline_columns({**row, "latency_ms": None}, True, {"copy_gbps": 1.0})
    assert failed["bytes_min"] == 2_000_000 and failed["achieved_gbps"] is None
