"""FlexAttention members against their plain references (eager flex_attention at small N), the
neighbourhood reference against a per-query loop, block/pair densities against brute-force
counts, and every forced SDPA backend against float64 exact attention."""
import math

import pytest
import torch

import attnbench
from attnbench.methods import vanilla
from attnbench.methods._flex import FLEX_BLOCK
from attnbench.reference import softmax_attention as exact_attention


def _pair(name, ref_name, batch, heads, head_dim, **params):
    """(reference, flex member) with the same parameters and the reference's learnable state."""
    ref = attnbench.create(ref_name, heads=heads, head_dim=head_dim, **params)
    flex = attnbench.create(name, heads=heads, head_dim=head_dim, **params)
    assert {k for k, _ in flex.named_parameters()} == {k for k, _ in ref.named_parameters()}
    flex.load_state_dict(ref.state_dict())
    return ref, flex


def _close(a, b, tol=2e-5):
    err = ((a.double() - b.double()).norm() / b.double().norm()).item()
    assert err < tol, err


# window: (grid, params); 10x13 and 9x11 are not multiples of the window, 12x12 shifts evenly
WINDOW_CASES = [((12, 12), dict(window=4)), ((10, 13), dict(window=4, shift=True, rel_pos_bias=True)),
                ((9, 11), dict(window=7, shift=True)), ((17, 9), dict(window=5, rel_pos_bias=True))]


@pytest.mark.parametrize("grid,params", WINDOW_CASES, ids=lambda c: str(c))
def test_window_flex_equals_window(grid, params, qkv_factory):
    n = grid[0] * grid[1]
    q, k, v = qkv_factory(2, 3, n, 16, seed=n, scale=2.0)
    ref, flex = _pair("window-flex", "window", 2, 3, 16, **params)
    if ref.bias_table is not None:  # a non-trivial bias so a dropped score_mod would show
        with torch.no_grad():
            ref.bias_table.normal_(0, 1.0)
        flex.load_state_dict(ref.state_dict())
    _close(flex(q, k, v, grid=grid), ref(q, k, v, grid=grid))
    # the reference's matrix gives padded slots exactly zero weight (rows sum to 1 over real keys)
    p = ref.attention_matrix(q, k, v, grid=grid)
    torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))
    _close(flex(q, k, v, grid=grid), p @ v)


def test_window_flex_differs_from_a_wrong_mask(qkv_factory):
    q, k, v = qkv_factory(1, 2, 130, 16, seed=1, scale=2.0)
    flex = attnbench.create("window-flex", heads=2, head_dim=16, window=4, shift=True)
    unshifted = attnbench.create("window", heads=2, head_dim=16, window=4, shift=False)
    err = (flex(q, k, v, grid=(10, 13)) - unshifted(q, k, v, grid=(10, 13))).norm()
    assert err > 1e-2


@pytest.mark.parametrize("grid,window", [((6, 5), 7), ((9, 11), 11)])
def test_window_flex_with_the_whole_grid_is_exact(grid, window, qkv_factory):
    """With shift_rule=axis a window covering the grid is one window: exact attention. (The default
    official rule shrinks the window to the grid's shorter side, as the Swin block does.)"""
    q, k, v = qkv_factory(1, 2, grid[0] * grid[1], 16, seed=3, scale=2.0)
    flex = attnbench.create("window-flex", heads=2, head_dim=16, window=window, shift=True, shift_rule="axis")
    _close(flex(q, k, v, grid=grid), exact_attention(q, k, v))
    ref = attnbench.create("window", heads=2, head_dim=16, window=window, shift=True)   # official rule
    official = attnbench.create("window-flex", heads=2, head_dim=16, window=window, shift=True)
    _close(official(q, k, v, grid=grid), ref(q, k, v, grid=grid))


def _neighbourhood_loop(q, k, v, grid, kernel):
    """Per-query loop: the kernel x kernel keys around (i, j), window slid inside at the borders."""
    h, w = grid
    out = torch.zeros(q.shape, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            kh, kw = min(kernel, h), min(kernel, w)
            r0 = min(max(i - kernel // 2, 0), h - kh)
            c0 = min(max(j - kernel // 2, 0), w - kw)
            keys = [r * w + c for r in range(r0, r0 + kh) for c in range(c0, c0 + kw)]
            t = i * w + j
            logits = (q[..., t:t + 1, :].double() @ k[..., keys, :].double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
            out[..., t, :] = (torch.softmax(logits, -1) @ v[..., keys, :].double())[..., 0, :]
    return out


@pytest.mark.parametrize("grid,kernel", [((7, 9), 3), ((10, 13), 7), ((12, 5), 4)])
def test_neighborhood_equals_loop_and_flex_equals_it(grid, kernel, qkv_factory):
    q, k, v = qkv_factory(2, 2, grid[0] * grid[1], 8, seed=kernel, scale=2.0)
    ref = attnbench.create("neighborhood", heads=2, head_dim=8, kernel=kernel)
    flex = attnbench.create("neighborhood-flex", heads=2, head_dim=8, kernel=kernel)
    out = ref(q, k, v, grid=grid)
    _close(out, _neighbourhood_loop(q, k, v, grid, kernel))
    _close(flex(q, k, v, grid=grid), out)
    _close(ref.attention_matrix(q, k, v, grid=grid) @ v, out)


@pytest.mark.parametrize("grid,kernel", [((5, 6), 7), ((9, 11), 11)])
def test_neighborhood_with_the_whole_grid_is_exact(grid, kernel, qkv_factory):
    q, k, v = qkv_factory(1, 2, grid[0] * grid[1], 8, seed=4, scale=2.0)
    exact = exact_attention(q, k, v)
    for name in ("neighborhood", "neighborhood-flex"):
        _close(attnbench.create(name, heads=2, head_dim=8, kernel=kernel)(q, k, v, grid=grid), exact)


def test_neighborhood_flex_densities_match_brute_force():
    grid, kernel = (16, 20), 5            # N = 320: not a multiple of the block size
    n = grid[0] * grid[1]
    flex = attnbench.create("neighborhood-flex", heads=2, head_dim=8, kernel=kernel)
    impl = flex.flex_impl(torch.zeros(1, 2, n, 8), None, None, grid)
    assert impl["pair_density"] == pytest.approx(kernel * kernel / n)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for t in range(n):
        i, j = divmod(t, grid[1])
        r0, c0 = min(max(i - 2, 0), grid[0] - 5), min(max(j - 2, 0), grid[1] - 5)
        for r in range(r0, r0 + 5):
            allowed[t, r * grid[1] + c0:r * grid[1] + c0 + 5] = True
    nb = math.ceil(n / FLEX_BLOCK)
    hit = sum(bool(allowed[a * FLEX_BLOCK:(a + 1) * FLEX_BLOCK, c * FLEX_BLOCK:(c + 1) * FLEX_BLOCK].any())
              for a in range(nb) for c in range(nb))
    assert impl["block_density"] == pytest.approx(hit / nb ** 2)
    assert impl["macs_needed_pairs"] == 2 * 8 * 2 * n * kernel * kernel
    ref = attnbench.create("neighborhood", heads=2, head_dim=8, kernel=kernel)
    assert ref.backend_info(torch.zeros(1, 2, n, 8), None, None, grid)["macs_needed_pairs"] == impl["macs_needed_pairs"]


@pytest.mark.parametrize("grid,params", [((14, 14), dict()), ((10, 13), dict(regions=3, topk=2)),
                                         ((20, 23), dict(regions=5, topk=3))], ids=lambda c: str(c))
def test_biformer_flex_equals_biformer(grid, params, qkv_factory):
    q, k, v = qkv_factory(2, 3, grid[0] * grid[1], 16, seed=7, scale=2.0)
    ref, flex = _pair("biformer-flex", "biformer", 2, 3, 16, **params)
    _close(flex(q, k, v, grid=grid), ref(q, k, v, grid=grid))
    impl = flex.flex_impl(q, k, v, grid)
    # needed pairs: each query sees the tokens of topk regions; with regions of about N/R tokens
    r = min(params.get("regions", 7), grid[0]) * min(params.get("regions", 7), grid[1])
    assert impl["pair_density"] == pytest.approx(params.get("topk", 4) / r, rel=0.25)
    assert 0 < impl["block_density"] <= 1


@pytest.mark.parametrize("n,keep", [(100, 0.25), (300, 0.1), (257, 1.0)])
def test_sparsifiner_flex_equals_sparsifiner(n, keep, qkv_factory):
    q, k, v = qkv_factory(1, 2, n, 16, seed=n, scale=2.0)
    ref = attnbench.create("sparsifiner", heads=2, head_dim=16, keep=keep)
    out = ref(q, k, v)   # creates the per-N token projections
    flex = attnbench.create("sparsifiner-flex", heads=2, head_dim=16, keep=keep)
    flex.token_projections(n, q.device)
    flex.load_state_dict(ref.state_dict())
    _close(flex(q, k, v), out)
    if keep == 1.0:
        _close(flex(q, k, v), exact_attention(q, k, v))
    assert flex.flex_impl(q, k, v)["pair_density"] == pytest.approx(math.ceil(keep * n) / n)


def test_vanilla_flex_is_exact(qkv_factory):
    q, k, v = qkv_factory(2, 2, 200, 16, seed=2, scale=2.0)
    _close(attnbench.create("vanilla-flex", heads=2, head_dim=16)(q, k, v), exact_attention(q, k, v))


@pytest.mark.parametrize("name,ref", [("window-flex", "window"), ("biformer-flex", "biformer"),
                                      ("sparsifiner-flex", "sparsifiner"), ("neighborhood-flex", "neighborhood")])
def test_flex_member_takes_its_references_parameters(name, ref):
    import inspect

    info, ref_info = attnbench.registry.get_info(name), attnbench.registry.get_info(ref)
    assert info.defaults == ref_info.defaults
    assert issubclass(info.cls, ref_info.cls)
    assert set(inspect.signature(info.cls.__init__).parameters) == set(inspect.signature(ref_info.cls.__init__).parameters)


# dtype -> relative Frobenius tolerance against float64 exact attention
SDPA_TOL = {"float32": 1e-5, "bfloat16": 3e-2}


@pytest.mark.parametrize("dtype", list(SDPA_TOL))
@pytest.mark.parametrize("backend", ["auto", "flash", "efficient", "cudnn", "math"])
def test_forced_sdpa_backend_is_exact_or_unsupported(backend, dtype, qkv_factory):
    from attnbench.spec import DTYPES

    mod = attnbench.create("vanilla-sdpa", heads=2, head_dim=32, backend=backend)
    reason = mod.unsupported_reason("cpu", dtype, 77, 32)
    q, k, v = qkv_factory(1, 2, 77, 32, seed=5, scale=2.0)
    if reason is not None:
        assert backend in reason and "needs" in reason and "PyTorch:" in reason
        with pytest.raises(RuntimeError):  # never a silent fallback
            mod(*(t.to(DTYPES[dtype]) for t in (q, k, v)))
        return
    out = mod(*(t.to(DTYPES[dtype]) for t in (q, k, v)))
    ref = exact_attention(q.double(), k.double(), v.double())
    assert ((out.double() - ref).norm() / ref.norm()) < SDPA_TOL[dtype]
    if backend in ("flash", "math"):
        ran = mod.backend_info(q, k, v)["sdpa_backend"]
        assert ran.startswith(backend)


def test_sdpa_probe_runs_once_per_combination(monkeypatch):
    calls = []
    monkeypatch.setattr(vanilla, "_PROBES", {})
    monkeypatch.setattr(vanilla, "_probe_once", lambda *key: calls.append(key) or None)
    mod = attnbench.create("vanilla-sdpa", heads=2, head_dim=16, backend="flash")
    for n in (10, 20, 30):
        mod.unsupported_reason("cpu", "float32", n, 16)
    mod.unsupported_reason("cpu", "bfloat16", 10, 16)
    assert calls == [("flash", "cpu", "float32", 16), ("flash", "cpu", "bfloat16", 16)]


def test_unknown_sdpa_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        attnbench.create("vanilla-sdpa", heads=2, head_dim=16, backend="fastest")


def test_flex_fwdbwd_on_cpu_is_refused_in_one_sentence(qkv_factory):
    from attnbench.methods._flex import CPU_INFERENCE_ONLY

    q, k, v = (t.requires_grad_(True) for t in qkv_factory(1, 2, 64, 16))
    with pytest.raises(NotImplementedError, match="inference only"):
        attnbench.create("vanilla-flex", heads=2, head_dim=16).bench_fn(q, k, v)
    assert "\n" not in CPU_INFERENCE_ONLY
