"""window, pvt, pvt-linear, linear, castling, performer against independent references.

References are built in float64, entry by entry or cell by cell, from the definitions in the
method docstrings; the methods run in float64 too, so agreement is to rounding (default
float64 tolerances of torch.testing, rtol 1e-7).
"""
import math

import pytest
import torch

import attnbench
from attnbench.measure.flops import fvcore_macs, torch_flops
from attnbench.reference import softmax_attention as exact_attention


def _qkv(b, h, n, d, seed=0, q_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) for _ in range(3))
    return q * q_scale, k, v


def _create(name, heads, d, **kw):
    return attnbench.create(name, heads=heads, head_dim=d, **kw).double()


def _grid_id(g):
    return "{}x{}".format(*g)


# ---------------------------------------------------------------- window
def _block(pos, side, win, shift):
    """Window index of one coordinate ("axis" rule): an axis no longer than the window is one
    window; shifted windows sit at offset -win//2, no wrap-around."""
    if win >= side:
        return 0
    s = win // 2 if shift else 0
    return (pos - s) // win


def _official_block(pos, grid, win, shift):
    """Window index of one coordinate as the Swin block: when the shorter grid side is <= win the
    windows are squares of that side, unshifted; else win-sided, shifted by win//2 if shift."""
    if min(grid) <= win:
        return pos // min(grid)
    s = win // 2 if shift else 0
    return (pos - s) // win


def _dense_window_mask(grid, win, shift, rule="axis"):
    """(N, N) bool, token by token: same window block along both axes."""
    h, w = grid
    if rule == "axis":
        def by(pos, side):
            return _block(pos, side, win, shift)
    else:
        def by(pos, side):
            return _official_block(pos, grid, win, shift)
    rows = torch.tensor([by(r, h) for r in range(h) for _ in range(w)])   # (N,) window row of each token
    cols = torch.tensor([by(c, w) for _ in range(h) for c in range(w)])   # (N,) window column
    return (rows[:, None] == rows[None, :]) & (cols[:, None] == cols[None, :])


def _dense_bias(grid, win, table):
    """(heads, N, N) relative position bias looked up from grid offsets."""
    h, w = grid
    coords = [(r, c) for r in range(h) for c in range(w)]
    bias = torch.zeros(table.shape[1], h * w, h * w, dtype=torch.float64)
    for i, (ri, ci) in enumerate(coords):
        for j, (rj, cj) in enumerate(coords):
            dy, dx = ri - rj + win - 1, ci - cj + win - 1
            if 0 <= dy < 2 * win - 1 and 0 <= dx < 2 * win - 1:
                bias[:, i, j] = table[dy * (2 * win - 1) + dx].double()
    return bias


def _masked_attention(q, k, v, mask, bias=None):
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    p = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    return p @ v, p


@pytest.mark.parametrize("grid", [(3, 5), (7, 9), (1, 13)], ids=_grid_id)
@pytest.mark.parametrize("shift", [False, True])
def test_window_covering_the_grid_is_exact_with_axis_rule(grid, shift):
    n = grid[0] * grid[1]
    q, k, v = _qkv(2, 3, n, 5, seed=n)
    mod = _create("window", 3, 5, window=max(grid), shift=shift, shift_rule="axis")
    torch.testing.assert_close(mod(q, k, v, grid=grid), exact_attention(q, k, v))


@pytest.mark.parametrize("grid", [(3, 3), (7, 7), (1, 1)], ids=_grid_id)
@pytest.mark.parametrize("shift", [False, True])
def test_window_covering_a_square_grid_is_exact_by_default(grid, shift):
    n = grid[0] * grid[1]
    q, k, v = _qkv(2, 3, n, 5, seed=n)
    mod = _create("window", 3, 5, window=grid[0] + 2, shift=shift)
    torch.testing.assert_close(mod(q, k, v, grid=grid), exact_attention(q, k, v))


@pytest.mark.parametrize("grid", [(3, 5), (7, 9), (1, 13)], ids=_grid_id)
def test_window_covering_a_long_grid_uses_squares_of_the_short_side_by_default(grid):
    n = grid[0] * grid[1]
    q, k, v = _qkv(2, 3, n, 5, seed=n)
    mod = _create("window", 3, 5, window=max(grid), shift=True)
    ref, _ = _masked_attention(q, k, v, _dense_window_mask(grid, max(grid), True, "official"))
    torch.testing.assert_close(mod(q, k, v, grid=grid), ref)
    assert (mod(q, k, v, grid=grid) - exact_attention(q, k, v)).abs().max() > 1e-3


@pytest.mark.parametrize("rule", ["official", "axis"])
@pytest.mark.parametrize("grid,win,shift,bias", [
    ((14, 14), 7, True, False), ((9, 11), 4, True, False), ((9, 11), 4, False, False),
    ((5, 7), 3, True, True), ((5, 12), 7, True, False), ((10, 6), 4, True, True),
    ((7, 14), 7, True, False), ((14, 7), 7, True, True), ((14, 21), 7, True, False),
    ((8, 12), 7, True, True), ((8, 12), 4, True, False), ((6, 10), 7, False, True),
], ids=lambda x: str(x))
def test_window_equals_dense_attention_under_explicit_mask(grid, win, shift, bias, rule):
    n = grid[0] * grid[1]
    q, k, v = _qkv(2, 2, n, 6, seed=win + n, q_scale=2.0)
    mod = _create("window", 2, 6, window=win, shift=shift, rel_pos_bias=bias, shift_rule=rule)
    mask = _dense_window_mask(grid, win, shift, rule)
    dense_bias = _dense_bias(grid, win, mod.bias_table.detach()) if bias else None
    ref_out, ref_p = _masked_attention(q, k, v, mask, dense_bias)
    torch.testing.assert_close(mod(q, k, v, grid=grid), ref_out)
    torch.testing.assert_close(mod.attention_matrix(q, k, v, grid=grid), ref_p)


def test_window_rules_differ_only_where_a_side_is_at_most_the_window():
    from attnbench.methods.window import effective_window

    assert effective_window(7, 14, 7, True, "official") == (7, 7, 0, 0)
    assert effective_window(7, 14, 7, True, "axis") == (7, 7, 0, 3)
    assert effective_window(5, 12, 7, False, "official") == (5, 5, 0, 0)
    assert effective_window(5, 12, 7, False, "axis") == (5, 7, 0, 0)
    for rule in ("official", "axis"):
        assert effective_window(14, 21, 7, True, rule) == (7, 7, 3, 3)
        assert effective_window(8, 12, 7, True, rule) == (7, 7, 3, 3)
    q, k, v = _qkv(1, 2, 98, 8, seed=4)
    official = _create("window", 2, 8, shift=True)
    axis = _create("window", 2, 8, shift=True, shift_rule="axis")
    assert (official(q, k, v, grid=(7, 14)) - axis(q, k, v, grid=(7, 14))).abs().max() > 1e-3
    torch.testing.assert_close(official(q, k, v, grid=(7, 14)), _create("window", 2, 8)(q, k, v, grid=(7, 14)))
    with pytest.raises(ValueError, match="shift_rule"):
        _create("window", 2, 8, shift_rule="both")


def test_window_shift_changes_the_output():
    q, k, v = _qkv(1, 2, 196, 8)
    plain, shifted = _create("window", 2, 8), _create("window", 2, 8, shift=True)
    assert (plain(q, k, v) - shifted(q, k, v)).abs().max() > 1e-3


@pytest.mark.parametrize("grid,win,shift", [((9, 11), 4, False), ((9, 11), 4, True), ((15, 20), 7, True)],
                         ids=lambda x: str(x))
def test_window_padded_keys_get_exactly_zero_weight(grid, win, shift):
    from attnbench.methods.window import window_token_ids

    n = grid[0] * grid[1]
    q, k, v = _qkv(2, 2, n, 4, seed=3, q_scale=3.0)
    mod = _create("window", 2, 4, window=win, shift=shift)
    p, g = mod.window_probs(q, k, grid)                            # (B, H, nW, T, T)
    valid = window_token_ids(g) >= 0                               # (nW, T)
    assert (~valid).any(), "this shape must have padding"
    real_queries = p[:, :, valid]                                  # (B, H, n_real, T)
    pad_keys = (~valid).unsqueeze(1).expand(-1, g.tokens, -1)[valid]  # (n_real, T)
    assert torch.all(real_queries[..., pad_keys] == 0)
    torch.testing.assert_close(real_queries.sum(-1), torch.ones_like(real_queries.sum(-1)))


def test_window_rejects_a_grid_that_does_not_hold_n():
    q, k, v = _qkv(1, 1, 20, 4)
    with pytest.raises(ValueError, match="N=20"):
        _create("window", 1, 4)(q, k, v, grid=(4, 6))


def test_window_macs_count_padded_windows():
    mod = _create("window", 3, 8, window=4, shift=True)
    # 9 x 11 pads to 12 x 12: 9 windows of 16 tokens, q kᵀ and P v each 9 * 16 * 16 * 8.
    assert mod.macs(2, 99, (9, 11)) == 2 * 3 * 2 * 9 * 16 * 16 * 8


# ---------------------------------------------------------------- pvt
def _cells(side, size, ceil_div):
    """[start, end) of each pooling cell along one axis."""
    return [(i * size, min((i + 1) * size, side)) for i in range(ceil_div)]


def _reduction_cells(side, sr, rounding):
    """Cells along one axis. ceil: sr-sized cells, the last one partial. floor (a strided conv
    with no padding): whole sr-sized cells only, leftover tokens dropped; a side shorter than
    sr is one cell."""
    if rounding == "ceil":
        return _cells(side, sr, math.ceil(side / sr))
    size = min(sr, side)
    return [(i * size, (i + 1) * size) for i in range(side // size)]


def _pool_reference(x, grid, cells_y, cells_x, weight=None):
    """(B, H, N, d) -> (B, H, M, d): mean over each cell, or the weighted sum weight[c, dy, dx]."""
    h, w = grid
    b, heads, _, d = x.shape
    img = x.reshape(b, heads, h, w, d)
    out = []
    for y0, y1 in cells_y:
        for x0, x1 in cells_x:
            block = img[:, :, y0:y1, x0:x1, :]                     # (B, H, cy, cx, d)
            if weight is None:
                out.append(block.mean(dim=(2, 3)))
            else:
                wgt = weight[:, :, :y1 - y0, :x1 - x0]             # (H, d, cy, cx)
                out.append(torch.einsum("bhyxd,hdyx->bhd", block, wgt))
    return torch.stack(out, dim=2)


def _attend(q, k_r, v_r):
    return torch.softmax(q @ k_r.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v_r


@pytest.mark.parametrize("rounding", ["floor", "ceil"])
@pytest.mark.parametrize("grid", [(3, 5), (7, 9), (14, 14)], ids=_grid_id)
def test_pvt_sr1_is_exact(grid, rounding):
    n = grid[0] * grid[1]
    q, k, v = _qkv(2, 3, n, 7, seed=n, q_scale=2.0)
    mod = _create("pvt", 3, 7, sr=1, rounding=rounding)
    torch.testing.assert_close(mod(q, k, v, grid=grid), exact_attention(q, k, v))


@pytest.mark.parametrize("rounding", ["floor", "ceil"])
@pytest.mark.parametrize("grid,sr", [((14, 14), 4), ((9, 11), 4), ((5, 7), 2), ((2, 3), 4), ((8, 12), 4),
                                     ((3, 10), 4)], ids=str)
def test_pvt_avg_equals_cell_means(grid, sr, rounding):
    n = grid[0] * grid[1]
    q, k, v = _qkv(2, 2, n, 5, seed=sr + n, q_scale=2.0)
    cy, cx = _reduction_cells(grid[0], sr, rounding), _reduction_cells(grid[1], sr, rounding)
    ref = _attend(q, _pool_reference(k, grid, cy, cx), _pool_reference(v, grid, cy, cx))
    mod = _create("pvt", 2, 5, sr=sr, rounding=rounding)
    assert mod.reduced_count(*grid) == len(cy) * len(cx)
    torch.testing.assert_close(mod(q, k, v, grid=grid), ref)
    p = mod.attention_matrix(q, k, v, grid=grid)
    torch.testing.assert_close(p @ v, ref)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 2, n, dtype=torch.float64))


def test_pvt_default_floor_drops_the_leftover_rows_and_columns():
    """14x14 with sr=4: a 3x3 reduced grid over the top-left 12x12 tokens; the last two rows and
    columns get zero weight, and changing their keys and values changes nothing."""
    q, k, v = _qkv(1, 2, 196, 4, seed=2)
    mod = _create("pvt", 2, 4)
    assert mod.reduced_count(14, 14) == 9
    p = mod.attention_matrix(q, k, v, grid=(14, 14)).reshape(1, 2, 196, 14, 14)
    assert torch.all(p[..., 12:, :] == 0) and torch.all(p[..., :, 12:] == 0)
    edge = torch.zeros(14, 14, dtype=torch.bool)
    edge[12:, :] = edge[:, 12:] = True
    k2, v2 = k.clone(), v.clone()
    k2[..., edge.reshape(-1), :] += 5.0
    v2[..., edge.reshape(-1), :] -= 5.0
    torch.testing.assert_close(mod(q, k2, v2, grid=(14, 14)), mod(q, k, v, grid=(14, 14)))
    ceil = _create("pvt", 2, 4, rounding="ceil")
    assert ceil.reduced_count(14, 14) == 16
    assert (ceil(q, k, v, grid=(14, 14)) - mod(q, k, v, grid=(14, 14))).abs().max() > 1e-3
    with pytest.raises(ValueError, match="rounding"):
        _create("pvt", 2, 4, rounding="round")


@pytest.mark.parametrize("rounding", ["floor", "ceil"])
@pytest.mark.parametrize("grid,sr", [((9, 11), 4), ((8, 12), 4), ((14, 14), 4), ((2, 9), 4)], ids=str)
def test_pvt_conv_equals_weighted_cell_sums(grid, sr, rounding):
    n, heads, d = grid[0] * grid[1], 2, 3
    q, k, v = _qkv(1, heads, n, d, seed=5)
    mod = _create("pvt", heads, d, sr=sr, reduce="conv", rounding=rounding)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        mod.conv_k.copy_(torch.randn(mod.conv_k.shape, generator=gen))
        mod.conv_v.copy_(torch.randn(mod.conv_v.shape, generator=gen))
    wk, wv = (w.detach().reshape(heads, d, sr, sr) for w in (mod.conv_k, mod.conv_v))
    cy, cx = _reduction_cells(grid[0], sr, rounding), _reduction_cells(grid[1], sr, rounding)
    ref = _attend(q, _pool_reference(k, grid, cy, cx, wk), _pool_reference(v, grid, cy, cx, wv))
    torch.testing.assert_close(mod(q, k, v, grid=grid), ref)
    assert mod.attention_matrix(q, k, v, grid=grid) is None


def test_pvt_conv_starts_as_average_pooling():
    q, k, v = _qkv(2, 2, 96, 4)
    conv, avg = _create("pvt", 2, 4, reduce="conv"), _create("pvt", 2, 4)
    torch.testing.assert_close(conv(q, k, v, grid=(8, 12)), avg(q, k, v, grid=(8, 12)))


def _adaptive_cells(side, out):
    return [(math.floor(i * side / out), math.ceil((i + 1) * side / out)) for i in range(out)]


@pytest.mark.parametrize("grid,pool", [((14, 14), 7), ((9, 11), 4), ((5, 3), 7), ((15, 20), 7)], ids=str)
def test_pvt_linear_equals_adaptive_cell_means(grid, pool):
    n = grid[0] * grid[1]
    q, k, v = _qkv(2, 2, n, 5, seed=pool + n, q_scale=2.0)
    cy, cx = _adaptive_cells(grid[0], pool), _adaptive_cells(grid[1], pool)
    ref = _attend(q, _pool_reference(k, grid, cy, cx), _pool_reference(v, grid, cy, cx))
    mod = _create("pvt-linear", 2, 5, pool=pool)
    torch.testing.assert_close(mod(q, k, v, grid=grid), ref)
    p = mod.attention_matrix(q, k, v, grid=grid)
    torch.testing.assert_close(p @ v, ref)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 2, n, dtype=torch.float64))


@pytest.mark.parametrize("name", ["pvt", "pvt-linear"])
def test_pvt_rejects_a_grid_that_does_not_hold_n(name):
    q, k, v = _qkv(1, 1, 20, 4)
    with pytest.raises(ValueError, match="N=20"):
        _create(name, 1, 4)(q, k, v, grid=(3, 5))


@pytest.mark.parametrize("name,kw,grid", [
    ("window", {"window": 4, "shift": True, "rel_pos_bias": True}, (9, 11)),
    ("window", {"window": 7, "shift": True}, (7, 12)),
    ("pvt", {"sr": 4, "reduce": "conv"}, (9, 11)),
    ("pvt", {"sr": 4, "reduce": "conv", "rounding": "ceil"}, (9, 11)),
    ("pvt", {"sr": 4, "reduce": "conv"}, (3, 11)),
    ("pvt", {"sr": 3, "reduce": "avg"}, (10, 10)),
    ("pvt-linear", {"pool": 4}, (9, 11)),
    ("castling", {}, (9, 11)),
    ("castling", {"variant": "official"}, (9, 11)),
], ids=str)
def test_grid_method_macs_match_counters_on_awkward_grids(name, kw, grid):
    n = grid[0] * grid[1]
    mod = attnbench.create(name, heads=2, head_dim=8, **kw).eval()
    q, k, v = (x.float() for x in _qkv(2, 2, n, 8))
    analytic = mod.macs(2, n, grid)
    assert fvcore_macs(mod, q, k, v, grid)["macs_fvcore"] == analytic
    assert torch_flops(lambda: mod(q, k, v, grid=grid))["flops_torch"] == 2 * analytic


# ---------------------------------------------------------------- linear, castling
def _explicit_linear(q, k, v, eps):
    """O(N²): a_ij = φ(q_i)·φ(k_j) entry by entry, out = a v / (a 1 + eps)."""
    def phi(x):                                                   # elu(x) + 1
        return torch.where(x > 0, x + 1, torch.exp(x))

    fq, fk = phi(q), phi(k)
    a = torch.einsum("bhid,bhjd->bhij", fq, fk)
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)


def _explicit_castling(q, k, v):
    """O(N²): sim_ij = ½ + cos∠(q_i, k_j)/π, out = sim v / sim 1."""
    cos = torch.einsum("bhid,bhjd->bhij", q, k) / (q.norm(dim=-1)[..., :, None] * k.norm(dim=-1)[..., None, :])
    sim = 0.5 + cos / math.pi
    return (sim @ v) / sim.sum(-1, keepdim=True)


@pytest.mark.parametrize("n,d", [(5, 3), (37, 8), (196, 16)], ids=lambda x: str(x))
@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_linear_equals_explicit_quadratic_form(n, d, eps):
    q, k, v = _qkv(2, 3, n, d, seed=n)
    mod = _create("linear", 3, d, eps=eps)
    ref = _explicit_linear(q, k, v, eps)
    torch.testing.assert_close(mod(q, k, v), ref)
    torch.testing.assert_close(mod.attention_matrix(q, k, v) @ v, ref)


@pytest.mark.parametrize("n,d", [(5, 3), (37, 8), (196, 16)], ids=lambda x: str(x))
def test_castling_equals_explicit_quadratic_form(n, d):
    q, k, v = _qkv(2, 3, n, d, seed=n + 1, q_scale=3.0)
    mod = _create("castling", 3, d)
    ref = _explicit_castling(q, k, v)
    torch.testing.assert_close(mod(q, k, v), ref)
    p = mod.attention_matrix(q, k, v)
    torch.testing.assert_close(p @ v, ref)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3, n, dtype=torch.float64))


def _official_castling(q, k, v, taps):
    """Per token: x_i = ½ v_i + Σ_j cos∠(q_i, k_j) v_j / π, out_i = x_i / ‖x_i‖ + Σ_t c[t] v_{i+t-4}
    (one 9-tap filter c per head, tokens outside 0..N-1 are zero)."""
    b, h, n, d = q.shape
    cos = torch.einsum("bhid,bhjd->bhij", q, k) / (q.norm(dim=-1)[..., :, None] * k.norm(dim=-1)[..., None, :])
    x = 0.5 * v + (cos @ v) / math.pi
    out = x / x.norm(dim=-1, keepdim=True)
    half = taps.shape[-1] // 2
    for i in range(n):
        for t in range(taps.shape[-1]):
            j = i + t - half
            if 0 <= j < n:
                out[:, :, i] += taps[None, :, t, None] * v[:, :, j]
    return out


@pytest.mark.parametrize("n,d", [(5, 3), (37, 8), (196, 16)], ids=lambda x: str(x))
def test_castling_official_variant_equals_reference(n, d):
    q, k, v = _qkv(2, 3, n, d, seed=n + 2, q_scale=3.0)
    mod = _create("castling", 3, d, variant="official")
    taps = mod.conv_weight.detach().reshape(3, 9)
    assert taps.abs().max() <= 1 / 3 and taps.std() > 0
    torch.testing.assert_close(mod(q, k, v), _official_castling(q, k, v, taps))
    assert mod.attention_matrix(q, k, v) is None
    assert (mod(q, k, v) - _create("castling", 3, d)(q, k, v)).abs().max() > 1e-2
    with pytest.raises(ValueError, match="variant"):
        _create("castling", 3, d, variant="code")


def test_castling_kernel_is_the_linear_part_of_the_angular_kernel():
    x = torch.tensor([-1e-4, 0.0, 1e-4], dtype=torch.float64)     # cos of the angle, near 0
    angular = 1 - torch.arccos(x) / math.pi
    torch.testing.assert_close(0.5 + x / math.pi, angular, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- performer
def _performer_error(features, seed, n, d):
    q, k, v = _qkv(1, 2, n, d, seed=100 + seed, q_scale=0.5)
    k = k * 0.5
    mod = _create("performer", 2, d, features=features, seed=seed)
    ref = exact_attention(q, k, v)
    return float((mod(q, k, v) - ref).norm() / ref.norm())


@pytest.mark.parametrize("n", [64, 75])
def test_performer_error_falls_as_features_grow(n):
    # An unbiased Monte-Carlo estimate has error ~ features^-1/2: 4x smaller per 16x features.
    # Require 2x on the first step (16 features is not yet asymptotic) and 3x on the second, which
    # a biased feature map (e.g. non-uniform orthogonal directions) fails as its error plateaus.
    d, seeds = 16, range(4)
    errs = [sum(_performer_error(m, s, n, d) for s in seeds) / len(seeds) for m in (16, 256, 4096)]
    assert errs[1] < errs[0] / 2 and errs[2] < errs[1] / 3, errs


def _favor_features(x, w, is_query, eps):
    """The module docstring's φ written out: exp(W x' − ‖x'‖²/2 − max)/√m + eps/√m, x' = x d^-1/4,
    the max over each query's projections, or over all keys and projections of a (batch, head)."""
    d, m = x.shape[-1], w.shape[0]
    xs = x * d ** -0.25
    proj = torch.einsum("bhnd,md->bhnm", xs, w)
    sq = (xs ** 2).sum(-1, keepdim=True) / 2
    stab = proj.amax(-1, keepdim=True) if is_query else proj.amax((-2, -1), keepdim=True)
    return (torch.exp(proj - sq - stab) + eps) / math.sqrt(m)


def _performer_reference(q, k, v, w, eps, stabilizer):
    """out = φ(Q)(φ(K)ᵀV) / R', R = φ(Q)·Σφ(K); R' = R + 2 eps [|R| <= eps] (official) or R."""
    fq, fk = _favor_features(q, w, True, eps), _favor_features(k, w, False, eps)
    r = fq @ fk.sum(-2).unsqueeze(-1)                              # (B, H, N, 1)
    if stabilizer == "official":
        r = torch.where(r.abs() <= eps, r + 2 * eps, r)
    return (fq @ (fk.transpose(-1, -2) @ v)) / r, r


@pytest.mark.parametrize("stabilizer", ["official", "none"])
@pytest.mark.parametrize("n,d,q_scale", [(45, 9, 2.0), (196, 16, 3.0), (50, 8, 0.5)])
def test_performer_equals_reference_with_each_stabilizer(n, d, q_scale, stabilizer):
    q, k, v = _qkv(2, 3, n, d, seed=n, q_scale=q_scale)
    mod = _create("performer", 3, d, stabilizer=stabilizer)
    ref, _ = _performer_reference(q, k, v, mod.projection.double(), 1e-6, stabilizer)
    out = mod(q, k, v)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(mod.attention_matrix(q, k, v) @ v, out)


def test_performer_stabilizer_changes_rows_whose_denominator_underflows():
    """Sharp queries: some rows have R <= eps; the official stabiliser divides those by R + 2 eps
    (row weights then sum to R / (R + 2 eps) < 1), the others are unchanged."""
    q, k, v = _qkv(2, 3, 45, 9, seed=2, q_scale=2.0)
    official, plain = _create("performer", 3, 9), _create("performer", 3, 9, stabilizer="none")
    _, r = _performer_reference(q, k, v, plain.projection.double(), 1e-6, "none")
    small = (r.abs() <= 1e-6).squeeze(-1)                          # (B, H, N)
    assert small.any() and not small.all()
    diff = (official(q, k, v) - plain(q, k, v)).abs().amax(-1)
    assert torch.all(diff[~small] == 0) and torch.all(diff[small] > 0)
    sums = official.attention_matrix(q, k, v).sum(-1)
    torch.testing.assert_close(sums[~small], torch.ones_like(sums[~small]))
    torch.testing.assert_close(sums[small], (r / (r + 2e-6)).squeeze(-1)[small])
    with pytest.raises(ValueError, match="stabilizer"):
        _create("performer", 3, 9, stabilizer="off")


def test_performer_attention_matrix_and_fixed_features():
    q, k, v = _qkv(2, 3, 45, 9, seed=2, q_scale=2.0)
    mod = _create("performer", 3, 9, stabilizer="none")
    assert mod.features == math.ceil(9 * math.log(9))
    p = mod.attention_matrix(q, k, v)
    assert torch.all(p > 0)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3, 45, dtype=torch.float64))
    torch.testing.assert_close(p @ v, mod(q, k, v))
    torch.testing.assert_close(mod(q, k, v), mod(q, k, v), rtol=0, atol=0)  # no redraw
    same = _create("performer", 3, 9)
    assert torch.equal(same.projection, mod.projection)
    assert not torch.equal(_create("performer", 3, 9, seed=1).projection, mod.projection)


def test_performer_blocks_are_orthogonal():
    mod = attnbench.create("performer", heads=1, head_dim=8, features=20)
    w = mod.projection.double()                                     # (20, 8): blocks of 8, 8, 4 rows
    for block in (w[:8], w[8:16], w[16:]):
        gram = block @ block.T
        torch.testing.assert_close(gram, torch.diag(torch.diagonal(gram)), rtol=0, atol=1e-5)


def test_performer_directions_are_uniform():
    # Each block should be a uniformly random rotation: at every row position, the unit rows
    # average to 0 over blocks (each component has variance 1/d, so the mean of b blocks has
    # std (d b)^-1/2; allow 5 std). A QR without the sign fix has a fixed-sign component.
    from attnbench.methods.performer import orthogonal_gaussian

    d, blocks = 16, 512
    w = orthogonal_gaussian(d * blocks, d, seed=3)
    unit = (w / w.norm(dim=-1, keepdim=True)).reshape(blocks, d, d)  # (blocks, row, component)
    assert unit.mean(dim=0).abs().max() < 5 / math.sqrt(d * blocks)
