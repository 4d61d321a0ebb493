"""nystrom, agent, sparsifiner(-dense) and biformer against independent float64 references."""
import math

import pytest
import torch
import torch.nn.functional as F

import attnbench
from attnbench.measure.flops import fvcore_macs, torch_flops
from attnbench.reference import softmax_attention as exact_attention


def rel_err(out, ref):
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def float32_error_scale(q, k, v):
    """Relative error of plain float32 attention vs float64 on these inputs: the rounding yardstick."""
    mod = attnbench.create("vanilla-math", heads=q.shape[1], head_dim=q.shape[-1])
    return rel_err(mod(q, k, v), exact_attention(q, k, v))


def clustered(b, h, n, d, centres, seed, noise=1e-3):
    """(B, H, N, d) points at the given (H, c, d) centres plus small noise, every centre used."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % centres.shape[1]
    x = centres[:, labels].unsqueeze(0).expand(b, h, n, d)
    return x + noise * torch.randn(b, h, n, d, generator=gen)


def match_sets(found, expected):
    """Max distance between each expected row and its nearest found row (both (c, d))."""
    return float(torch.cdist(expected.double(), found.double()).min(dim=1).values.max())


def check_counters(mod, q, k, v, grid):
    analytic = mod.macs(q.shape[0], q.shape[-2], grid)
    fv = fvcore_macs(mod, q, k, v, grid)["macs_fvcore"]
    counted = torch_flops(lambda: mod(q, k, v, grid=grid))["flops_torch"] / 2
    assert abs(fv - analytic) <= 0.01 * analytic and abs(counted - analytic) <= 0.01 * analytic, (analytic, fv, counted)


# ---------------------------------------------------------------------------------- nystrom
def _segment_means_loop(x, m):
    n = x.shape[-2]
    s, r = divmod(n, m)
    sizes = [s + 1] * r + [s] * (m - r)
    starts = [sum(sizes[:i]) for i in range(m)]
    return torch.stack([x[..., a:a + z, :].double().mean(-2) for a, z in zip(starts, sizes)], dim=-2)


@pytest.mark.parametrize("n,m", [(12, 4), (23, 5), (7, 7), (31, 30)])
def test_segment_means_uneven(n, m, qkv_factory):
    from attnbench.methods.nystrom import segment_means

    q, _, _ = qkv_factory(2, 3, n, 4, seed=n)
    torch.testing.assert_close(segment_means(q.double(), m), _segment_means_loop(q, m))


def _nystrom_reference(q, k, v, q_land, k_land):
    """Float64 F A⁺ B v with the exact pseudo-inverse (torch.linalg.pinv)."""
    q, k, v, ql, kl = (x.double() for x in (q, k, v, q_land, k_land))
    s = 1 / math.sqrt(q.shape[-1])
    f = torch.softmax(q @ kl.transpose(-1, -2) * s, -1)
    a = torch.softmax(ql @ kl.transpose(-1, -2) * s, -1)
    b = torch.softmax(ql @ k.transpose(-1, -2) * s, -1)
    return f @ torch.linalg.pinv(a) @ b @ v


@pytest.mark.parametrize("n,m,d", [(24, 6, 8), (23, 5, 7)], ids=lambda x: str(x))
def test_nystrom_matches_exact_pinv_reference(n, m, d, qkv_factory):
    q, k, v = qkv_factory(2, 2, n, d, seed=n)
    mod = attnbench.create("nystrom", heads=2, head_dim=d, m=m, pinv_iters=40)
    out = mod(q.double(), k.double(), v.double())
    ref = _nystrom_reference(q, k, v, _segment_means_loop(q, m), _segment_means_loop(k, m))
    assert rel_err(out, ref) < 1e-9


def test_newton_schulz_converges_to_pinv():
    """The iteration with its per-matrix start reaches torch.linalg.pinv (condition numbers up to ~1e4)."""
    from attnbench.methods.nystrom import newton_schulz_pinv

    gen = torch.Generator().manual_seed(0)
    a = torch.softmax(3 * torch.randn(4, 10, 10, generator=gen, dtype=torch.float64), -1)
    assert rel_err(newton_schulz_pinv(a, 30), torch.linalg.pinv(a)) < 1e-9
    residual = [float((a @ newton_schulz_pinv(a, i) @ a - a).norm()) for i in (2, 4, 6, 8)]
    assert residual == sorted(residual, reverse=True) and residual[-1] < residual[0] / 10


def _pinv_steps(a, z, iters):
    """The paper's update Z <- Z (13I - AZ (15I - AZ (7I - AZ))) / 4, ``iters`` times."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    for _ in range(iters):
        az = a @ z
        z = z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az))) / 4
    return z


def _nystrom_iterative_reference(q, k, v, m, init, iters=6):
    """Float64 F Z B v with segment-mean landmarks and ``iters`` steps from the given start:
    paper Z0 = Aᵀ / (max column sum · max row sum) of each matrix, official Z0 = Aᵀ / (the largest
    column sum of any matrix in the batch, over all heads)."""
    q, k, v = q.double(), k.double(), v.double()
    ql, kl = _segment_means_loop(q, m), _segment_means_loop(k, m)
    s = 1 / math.sqrt(q.shape[-1])
    f = torch.softmax(q @ kl.transpose(-1, -2) * s, -1)
    a = torch.softmax(ql @ kl.transpose(-1, -2) * s, -1)
    b = torch.softmax(ql @ k.transpose(-1, -2) * s, -1)
    z0 = torch.empty_like(a)
    top = max(float(a[bi, hi].sum(0).max()) for bi in range(a.shape[0]) for hi in range(a.shape[1]))
    for bi in range(a.shape[0]):
        for hi in range(a.shape[1]):
            col, row = float(a[bi, hi].sum(0).max()), float(a[bi, hi].sum(1).max())
            z0[bi, hi] = a[bi, hi].T / (top if init == "official" else col * row)
    return f @ (_pinv_steps(a, z0, iters) @ (b @ v))


@pytest.mark.parametrize("init", ["paper", "official"])
@pytest.mark.parametrize("n,m,d", [(24, 6, 8), (23, 5, 7), (64, 16, 8)], ids=lambda x: str(x))
def test_nystrom_initial_guess_equals_reference(n, m, d, init, qkv_factory):
    q, k, v = (x.double() for x in qkv_factory(3, 2, n, d, seed=n, scale=2.0))
    mod = attnbench.create("nystrom", heads=2, head_dim=d, m=m, init=init)
    out = mod(q, k, v)
    torch.testing.assert_close(out, _nystrom_iterative_reference(q, k, v, m, init))
    torch.testing.assert_close(mod.attention_matrix(q, k, v) @ v, out)


def test_nystrom_official_initial_guess_depends_on_the_batch(qkv_factory):
    """One scalar over the batch: an input's output changes with its batch mates (paper: it does not);
    with enough steps both starts reach the same pseudo-inverse."""
    q, k, v = (x.double() for x in qkv_factory(4, 2, 40, 8, seed=1, scale=3.0))
    for init, depends in (("official", True), ("paper", False)):
        mod = attnbench.create("nystrom", heads=2, head_dim=8, m=10, init=init)
        alone = mod(q[:1], k[:1], v[:1])
        gap = float((mod(q, k, v)[:1] - alone).abs().max())
        assert (gap > 1e-8) if depends else (gap == 0.0), (init, gap)
    paper = attnbench.create("nystrom", heads=2, head_dim=8, m=10, pinv_iters=40)(q, k, v)
    official = attnbench.create("nystrom", heads=2, head_dim=8, m=10, pinv_iters=40, init="official")(q, k, v)
    assert rel_err(official, paper) < 1e-9
    with pytest.raises(ValueError, match="init"):
        attnbench.create("nystrom", heads=2, head_dim=8, init="exact")


@pytest.mark.parametrize("n,d", [(24, 8), (37, 7)])
def test_nystrom_m_equals_n_matches_exact(n, d, qkv_factory):
    q, k, v = qkv_factory(2, 2, n, d, seed=n, scale=2.0)
    ref = exact_attention(q, k, v)
    mod = attnbench.create("nystrom", heads=2, head_dim=d, m=n, pinv_iters=20)
    assert rel_err(mod(q, k, v), ref) < 1e-3
    # with the paper's 6 steps the N×N pseudo-inverse is not yet resolved (see the module docstring)
    assert rel_err(attnbench.create("nystrom", heads=2, head_dim=d, m=n)(q, k, v), ref) > 1e-3


def test_nystrom_attention_matrix_reproduces_output(qkv_factory):
    q, k, v = qkv_factory(2, 3, 29, 8, seed=2)
    mod = attnbench.create("nystrom", heads=3, head_dim=8, m=6)
    p = mod.attention_matrix(q, k, v)
    assert p.shape == (2, 3, 29, 29)
    torch.testing.assert_close(p @ v, mod(q, k, v), rtol=1e-4, atol=1e-5)


def test_nystrom_fit_closed_uses_kmeans_landmarks():
    h, d, m = 2, 6, 4
    gen = torch.Generator().manual_seed(0)
    cq, ck = torch.randn(h, m, d, generator=gen), torch.randn(h, m, d, generator=gen)
    q, k = clustered(2, h, 40, d, cq, 1), clustered(2, h, 40, d, ck, 2)
    mod = attnbench.create("nystrom", heads=h, head_dim=d, m=m, pinv_iters=30)
    info = mod.fit_closed(q, k, q, iters=10)
    assert info["kind"] == "kmeans" and info["m"] == m and len(info["inertia_q"]) == h
    for hi in range(h):
        assert match_sets(mod.fitted_q[hi], cq[hi]) < 1e-2 and match_sets(mod.fitted_k[hi], ck[hi]) < 1e-2
    # new inputs from the same clusters: the fitted landmarks make Nyström nearly exact,
    # segment means (mixtures of clusters) do not
    qn, kn, vn = clustered(1, h, 37, d, cq, 5), clustered(1, h, 37, d, ck, 6), torch.randn(1, h, 37, d)
    ref = exact_attention(qn, kn, vn)
    fitted = mod(qn, kn, vn)
    torch.testing.assert_close(fitted.double(), _nystrom_reference(qn, kn, vn, mod.fitted_q, mod.fitted_k),
                               rtol=1e-4, atol=1e-4)
    mod.reset_fit()
    plain = mod(qn, kn, vn)
    assert rel_err(fitted, ref) < 1e-2 < rel_err(plain, ref)


def test_kmeans_is_seeded_and_lloyd_lowers_inertia(qkv_factory):
    from attnbench.methods._cluster import kmeans

    x = qkv_factory(1, 3, 120, 4, seed=5)[0][0]                   # (H, P, d)
    a, b, c = kmeans(x, 6, 10, seed=0), kmeans(x, 6, 10, seed=0), kmeans(x, 6, 10, seed=1)
    assert torch.equal(a.centroids, b.centroids) and not torch.equal(a.centroids, c.centroids)
    init_only = kmeans(x, 6, 0, seed=0)
    assert bool((a.inertia < init_only.inertia).all())
    # run to convergence: each centroid is then the mean of the points nearest to it
    a = kmeans(x, 6, 200, seed=0)
    assert a.iters < 200
    assign = torch.cdist(x.double(), a.centroids.double()).argmin(-1)
    for h in range(3):
        for j in range(6):
            if (assign[h] == j).any():
                torch.testing.assert_close(a.centroids[h, j].double(), x[h][assign[h] == j].double().mean(0),
                                           rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- agent
def _adaptive_pool_loop(q, grid, out_hw):
    """Adaptive average pooling written out: cell (i, j) averages rows ⌊iH/a⌋..⌈(i+1)H/a⌉."""
    (gh, gw), (a, b) = grid, out_hw
    x = q.double().unflatten(-2, (gh, gw))
    cells = []
    for i in range(a):
        for j in range(b):
            r0, r1 = (i * gh) // a, -(-((i + 1) * gh) // a)
            c0, c1 = (j * gw) // b, -(-((j + 1) * gw) // b)
            cells.append(x[..., r0:r1, c0:c1, :].mean(dim=(-3, -2)))
    return torch.stack(cells, dim=-2)


def _agent_reference(q, k, v, agents):
    q, k, v, a = (x.double() for x in (q, k, v, agents))
    s = 1 / math.sqrt(q.shape[-1])
    return torch.softmax(q @ a.transpose(-1, -2) * s, -1) @ (torch.softmax(a @ k.transpose(-1, -2) * s, -1) @ v)


def test_agent_grid_shapes():
    from attnbench.methods.agent import agent_grid

    assert agent_grid(49, (14, 14)) == (7, 7)
    assert agent_grid(30, (15, 20)) == (5, 6)
    assert agent_grid(30, (20, 15)) == (6, 5)
    assert agent_grid(7, (14, 14)) == (1, 7)


@pytest.mark.parametrize("n,grid,m,d", [(196, (14, 14), 49, 8), (35, (5, 7), 6, 5), (300, (15, 20), 30, 4)],
                         ids=lambda x: str(x))
def test_agent_equals_reference(n, grid, m, d, qkv_factory):
    from attnbench.methods.agent import agent_grid

    q, k, v = qkv_factory(2, 2, n, d, seed=n, scale=2.0)
    mod = attnbench.create("agent", heads=2, head_dim=d, m=m)
    agents = _adaptive_pool_loop(q, grid, agent_grid(m, grid))
    assert agents.shape == (2, 2, m, d)
    out = mod(q.double(), k.double(), v.double(), grid=grid)
    torch.testing.assert_close(out, _agent_reference(q, k, v, agents))
    p = mod.attention_matrix(q, k, v, grid=grid)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 2, n))
    torch.testing.assert_close(p @ v, mod(q, k, v, grid=grid), rtol=1e-5, atol=1e-5)


def test_agent_dwc_adds_depthwise_conv_of_v(qkv_factory):
    h, d, grid = 2, 3, (4, 5)
    q, k, v = (x.double() for x in qkv_factory(1, h, 20, d, seed=3))
    plain = attnbench.create("agent", heads=h, head_dim=d, m=4).double()
    conv = attnbench.create("agent", heads=h, head_dim=d, m=4, dwc=True).double()
    assert conv.attention_matrix(q, k, v, grid) is None
    w, bias = conv.conv.weight.detach(), conv.conv.bias.detach()    # (h·d, 1, 3, 3), (h·d,)
    img = v[0].permute(0, 2, 1).reshape(h * d, *grid)
    expected = torch.zeros(h * d, *grid, dtype=torch.float64)
    for c in range(h * d):
        for y in range(grid[0]):
            for x in range(grid[1]):
                acc = float(bias[c])
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        if 0 <= y + dy < grid[0] and 0 <= x + dx < grid[1]:
                            acc += float(w[c, 0, dy + 1, dx + 1]) * float(img[c, y + dy, x + dx])
                expected[c, y, x] = acc
    expected = expected.reshape(h, d, -1).transpose(-1, -2)          # (h, N, d)
    torch.testing.assert_close(conv(q, k, v, grid)[0] - plain(q, k, v, grid)[0], expected)


def test_agent_bias_option(qkv_factory):
    q, k, v = qkv_factory(1, 2, 30, 4, seed=9)
    plain = attnbench.create("agent", heads=2, head_dim=4, m=6)
    biased = attnbench.create("agent", heads=2, head_dim=4, m=6, bias=True)
    assert not torch.allclose(biased(q, k, v, (5, 6)), plain(q, k, v, (5, 6)))
    with torch.no_grad():
        biased.an_bias.zero_()
        biased.na_bias.zero_()
    torch.testing.assert_close(biased(q, k, v, (5, 6)), plain(q, k, v, (5, 6)))


def _agent_decomposed_reference(q, k, v, agents, mod, grid):
    """Loop form of the decomposed biases: agent a -> token (r, c) gets ah[a, r] + aw[a, c], token
    (r, c) -> agent a gets ha[r, a] + wa[c, a], on top of the interpolated tables when ``bias``."""
    q, k, v, a = (x.double() for x in (q, k, v, agents))
    heads, m, (gh, gw) = q.shape[1], a.shape[-2], grid
    ah, aw, ha, wa = (t.detach().double() for t in mod.decomposed_biases(grid))
    b_an = torch.zeros(heads, m, gh * gw, dtype=torch.float64)
    b_na = torch.zeros(heads, gh * gw, m, dtype=torch.float64)
    for r in range(gh):
        for c in range(gw):
            b_an[:, :, r * gw + c] = ah[:, :, r, 0] + aw[:, :, 0, c]      # (heads, m)
            b_na[:, r * gw + c, :] = ha[:, r, 0, :] + wa[:, 0, c, :]
    if mod.bias:
        def resize(t):
            return F.interpolate(t.detach().double(), size=grid, mode="bilinear", align_corners=False)
        b_an = b_an + resize(mod.an_bias).reshape(heads, m, -1)
        b_na = b_na + resize(mod.na_bias).reshape(heads, m, -1).transpose(-1, -2)
    s = 1 / math.sqrt(q.shape[-1])
    a_attn = torch.softmax(a @ k.transpose(-1, -2) * s + b_an, -1)
    q_attn = torch.softmax(q @ a.transpose(-1, -2) * s + b_na, -1)
    return q_attn @ (a_attn @ v)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("grid,m", [((8, 12), 6), ((7, 5), 4), ((14, 14), 49)], ids=str)
def test_agent_decomposed_position_biases_equal_reference(grid, m, bias, qkv_factory):
    from attnbench.methods.agent import agent_grid

    n = grid[0] * grid[1]
    q, k, v = (x.double() for x in qkv_factory(2, 2, n, 4, seed=n, scale=2.0))
    mod = attnbench.create("agent", heads=2, head_dim=4, m=m, bias=bias, pos_bias=True).double()
    out = mod(q, k, v, grid=grid)
    agents = _adaptive_pool_loop(q, grid, agent_grid(m, grid))
    torch.testing.assert_close(out, _agent_decomposed_reference(q, k, v, agents, mod, grid))
    torch.testing.assert_close(mod.attention_matrix(q, k, v, grid=grid) @ v, out)
    plain = attnbench.create("agent", heads=2, head_dim=4, m=m, bias=bias).double()
    assert (plain(q, k, v, grid=grid) - out).abs().max() > 1e-4


def test_agent_decomposed_biases_are_seeded_per_grid(qkv_factory):
    mod = attnbench.create("agent", heads=2, head_dim=4, m=6, pos_bias=True)
    first = [t.detach().clone() for t in mod.decomposed_biases((8, 12))]
    assert [tuple(t.shape) for t in first] == [(2, 6, 8, 1), (2, 6, 1, 12), (2, 8, 1, 6), (2, 1, 12, 6)]
    assert all(torch.equal(a, b) for a, b in zip(first, mod.decomposed_biases((8, 12))))
    again = attnbench.create("agent", heads=2, head_dim=4, m=6, pos_bias=True).decomposed_biases((8, 12))
    assert all(torch.equal(a, b.detach()) for a, b in zip(first, again))
    other = mod.decomposed_biases((12, 8))
    assert not torch.equal(first[0].flatten()[:8], other[0].flatten()[:8])
    q, k, v = qkv_factory(1, 2, 96, 4)
    fresh = attnbench.create("agent", heads=2, head_dim=4, m=6, pos_bias=True)
    fresh.bench_fn(q, k, v, grid=(8, 12))                      # creates the parameters before timing
    assert len(fresh.grid_biases) == 4


def test_agent_rejects_grid_not_holding_tokens(qkv_factory):
    q, k, v = qkv_factory(1, 1, 30, 4)
    with pytest.raises(ValueError, match="H\\*W == N"):
        attnbench.create("agent", heads=1, head_dim=4, m=4)(q, k, v, grid=(4, 8))


def test_agent_fit_closed_fixes_agents():
    h, d, m = 2, 5, 3
    gen = torch.Generator().manual_seed(1)
    centres = 2 * torch.randn(h, m, d, generator=gen)
    fit_q = clustered(3, h, 20, d, centres, 2)
    mod = attnbench.create("agent", heads=h, head_dim=d, m=m)
    info = mod.fit_closed(fit_q, fit_q, fit_q, grid=(4, 5), iters=10)
    assert info["kind"] == "kmeans" and info["fit_tokens"] == 60
    for hi in range(h):
        assert match_sets(mod.fitted_agents[hi], centres[hi]) < 1e-2
    q, k, v = (torch.randn(1, h, 30, d, generator=gen) for _ in range(3))
    fitted = mod(q, k, v, grid=(5, 6))
    ref = _agent_reference(q, k, v, mod.fitted_agents.unsqueeze(0))
    assert rel_err(fitted, ref) <= 4 * float32_error_scale(q, k, v) + 1e-7
    mod.reset_fit()
    assert rel_err(mod(q, k, v, grid=(5, 6)), fitted) > 1e-2


@pytest.mark.parametrize("kwargs", [{"dwc": True}, {"bias": True}, {"bias": True, "pos_bias": True}], ids=str)
def test_agent_option_macs(kwargs, qkv_factory):
    q, k, v = qkv_factory(1, 2, 35, 8)
    check_counters(attnbench.create("agent", heads=2, head_dim=8, m=6, **kwargs), q, k, v, (7, 5))


# ---------------------------------------------------------------------------------- sparsifiner
def _sparsifiner_reference(mod, q, k, v):
    """Float64: predictor scores per (batch, head) with einsum, kept keys by full sort, masked softmax."""
    q, k, v = q.double(), k.double(), v.double()
    b, h, n, d = q.shape
    p_n, p_back = (t.detach().double() for t in mod.token_projections(n, q.device))
    kept = math.ceil(mod.keep * n)
    out = torch.zeros_like(q)
    mask = torch.zeros(b, h, n, n, dtype=torch.bool)
    for bi in range(b):
        for hi in range(h):
            qc = torch.einsum("nd,dc->nc", q[bi, hi], mod.w_q[hi].double()) + mod.b_q[hi].double()
            kc = torch.einsum("nd,dc->nc", k[bi, hi], mod.w_k[hi].double()) + mod.b_k[hi].double()
            coef = torch.softmax(torch.einsum("nc,mc->nm", qc, torch.einsum("nc,nr->rc", kc, p_n))
                                 / math.sqrt(qc.shape[-1]), -1)
            scores = torch.einsum("nr,mr->nm", coef, p_back.abs())
            order = scores.argsort(dim=-1, descending=True)[:, :kept]
            mask[bi, hi].scatter_(-1, order, torch.ones_like(order, dtype=torch.bool))
            logits = (q[bi, hi] @ k[bi, hi].T / math.sqrt(d)).masked_fill(~mask[bi, hi], float("-inf"))
            out[bi, hi] = torch.softmax(logits, -1) @ v[bi, hi]
    return out, mask


@pytest.mark.parametrize("name", ["sparsifiner", "sparsifiner-dense"])
@pytest.mark.parametrize("n,d,keep", [(24, 8, 0.25), (53, 7, 0.1), (197, 16, 0.25)], ids=lambda x: str(x))
def test_sparsifiner_equals_reference(name, n, d, keep, qkv_factory):
    q, k, v = qkv_factory(2, 2, n, d, seed=n, scale=2.0)
    mod = attnbench.create(name, heads=2, head_dim=d, keep=keep).double()
    ref, mask = _sparsifiner_reference(mod, q, k, v)
    torch.testing.assert_close(mod(q.double(), k.double(), v.double()), ref)
    p = mod.attention_matrix(q.double(), k.double(), v.double())
    assert torch.equal(p > 0, mask) and int(mask[0, 0, 0].sum()) == math.ceil(keep * n)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 2, n, dtype=torch.float64))
    torch.testing.assert_close(p @ v.double(), ref)


def _official_predictor_mask(mod, q, k):
    """(B, H, N, N) kept keys as the authors' inference path: channel projections shared by the
    heads, coefficients softmax(q_c k_r · heads^-½) with all but the 8 largest per row zeroed, basis
    |P_back|ᵀ with entries <= 0.02 zeroed, then the ⌈keep·N⌉ largest scores per query."""
    q, k = q.double(), k.double()
    b, h, n, d = q.shape
    p_n, p_back = (t.detach().double() for t in mod.token_projections(n, q.device))
    basis = p_back.abs().T
    basis = torch.where(basis > 0.02, basis, torch.zeros_like(basis))
    wq, bq, wk, bk = (t.detach().double()[0] for t in (mod.w_q, mod.b_q, mod.w_k, mod.b_k))
    kept = math.ceil(mod.keep * n)
    mask = torch.zeros(b, h, n, n, dtype=torch.bool)
    for bi in range(b):
        for hi in range(h):
            qc, kc = q[bi, hi] @ wq + bq, k[bi, hi] @ wk + bk
            coef = torch.softmax(qc @ (kc.T @ p_n) / math.sqrt(h), -1)      # (N, N_r)
            eighth = coef.sort(dim=-1, descending=True).values[:, 7:8] if coef.shape[-1] > 8 else None
            if eighth is not None:
                coef = torch.where(coef >= eighth, coef, torch.zeros_like(coef))
            order = (coef @ basis).argsort(dim=-1, descending=True)[:, :kept]
            mask[bi, hi].scatter_(-1, order, torch.ones_like(order, dtype=torch.bool))
    return mask


@pytest.mark.parametrize("name", ["sparsifiner", "sparsifiner-dense"])
@pytest.mark.parametrize("n,d", [(197, 8), (96, 6), (40, 4)])
def test_sparsifiner_official_predictor_equals_reference(name, n, d, qkv_factory):
    q, k, v = (x.double() for x in qkv_factory(2, 3, n, d, seed=n, scale=2.0))
    mod = attnbench.create(name, heads=3, head_dim=d, predictor="official").double()
    assert mod.w_q.shape[0] == 1 and mod.predictor_scale == 3 ** -0.5
    mask = _official_predictor_mask(mod, q, k)
    logits = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~mask, float("-inf"))
    ref = torch.softmax(logits, -1) @ v
    out = mod(q, k, v)
    torch.testing.assert_close(out, ref)
    p = mod.attention_matrix(q, k, v)
    assert torch.equal(p > 0, mask)
    torch.testing.assert_close(p @ v, out)
    plain = attnbench.create(name, heads=3, head_dim=d).double()
    assert not torch.equal(plain.attention_matrix(q, k, v) > 0, mask)
    with pytest.raises(ValueError, match="predictor"):
        attnbench.create(name, heads=3, head_dim=d, predictor="paper")


@pytest.mark.parametrize("n,d", [(50, 8), (197, 15)])
def test_sparsifiner_forms_agree_in_float32(n, d, qkv_factory, monkeypatch):
    from attnbench.methods import sparsifiner

    q, k, v = qkv_factory(1, 3, n, d, seed=d, scale=2.0)
    dense = attnbench.create("sparsifiner-dense", heads=3, head_dim=d)
    gathered = attnbench.create("sparsifiner", heads=3, head_dim=d)
    tol = 4 * float32_error_scale(q, k, v) + 1e-7
    assert rel_err(gathered(q, k, v), dense(q, k, v)) <= tol
    one_block = gathered(q, k, v)
    monkeypatch.setattr(sparsifiner, "SCORE_BLOCK_ELEMENTS", 3 * n * 10)   # predictor blocks of 10 queries
    monkeypatch.setattr(sparsifiner, "GATHER_BLOCK_ELEMENTS", 3 * math.ceil(0.25 * n) * d * 3)  # then of 3
    assert len(sparsifiner.query_blocks(n, 3 * n, sparsifiner.SCORE_BLOCK_ELEMENTS)) > 3
    assert rel_err(gathered(q, k, v), one_block) <= tol
    assert rel_err(dense(q, k, v), one_block) <= tol


@pytest.mark.parametrize("name", ["sparsifiner", "sparsifiner-dense"])
@pytest.mark.parametrize("n", [19, 64])
def test_sparsifiner_keep_one_is_exact(name, n, qkv_factory):
    q, k, v = qkv_factory(2, 2, n, 8, seed=n, scale=2.0)
    mod = attnbench.create(name, heads=2, head_dim=8, keep=1.0)
    assert rel_err(mod(q, k, v), exact_attention(q, k, v)) <= 4 * float32_error_scale(q, k, v) + 1e-7


def test_sparsifiner_weights_are_seeded_parameters(qkv_factory):
    q, k, v = qkv_factory(1, 2, 40, 8)
    a = attnbench.create("sparsifiner", heads=2, head_dim=8)
    b = attnbench.create("sparsifiner-dense", heads=2, head_dim=8)
    c = attnbench.create("sparsifiner", heads=2, head_dim=8, seed=1)
    a.bench_fn(q, k, v)
    names = {name for name, _ in a.named_parameters()}
    assert {"w_q", "b_q", "w_k", "b_k", "proj_n.40", "proj_back_n.40"} <= names
    torch.testing.assert_close(a.token_projections(40, "cpu")[0], b.token_projections(40, "cpu")[0])
    torch.testing.assert_close(a.w_q, b.w_q)
    assert not torch.allclose(a.w_q, c.w_q)
    assert a.proj_n["40"].shape == (40, 6)


# ---------------------------------------------------------------------------------- biformer
def _biformer_reference(q, k, v, grid, regions, topk, scale="head"):
    """Loop form: regions by ⌊iH/S⌋ borders, routing on head-summed region means, token attention
    with logits divided by √d (``head``) or by √(heads·d), all query/key channels (``channels``)."""
    q, k, v = q.double(), k.double(), v.double()
    b, h, n, d = q.shape
    root = math.sqrt(d if scale == "head" else h * d)
    gh, gw = grid
    sh, sw = min(regions, gh), min(regions, gw)
    # region of row y is i with ⌊iH/S⌋ <= y < ⌊(i+1)H/S⌋
    region_of = []
    for y in range(gh):
        i = max(i for i in range(sh) if (i * gh) // sh <= y)
        for x in range(gw):
            j = max(j for j in range(sw) if (j * gw) // sw <= x)
            region_of.append(i * sw + j)
    members = [[t for t in range(n) if region_of[t] == r] for r in range(sh * sw)]
    out = torch.zeros_like(q)
    for bi in range(b):
        qm = torch.stack([q[bi][:, m].mean(1) for m in members], 1)   # (h, R, d)
        km = torch.stack([k[bi][:, m].mean(1) for m in members], 1)
        affinity = torch.einsum("hrd,hsd->rs", qm, km)
        for r, m in enumerate(members):
            keys = sorted(t for s in affinity[r].topk(min(topk, len(members))).indices.tolist() for t in members[s])
            for hi in range(h):
                logits = q[bi, hi, m] @ k[bi, hi, keys].T / root
                out[bi, hi, m] = torch.softmax(logits, -1) @ v[bi, hi, keys]
    return out


def test_region_layout_covers_every_token_once():
    from attnbench.methods.biformer import region_layout

    for grid, regions in [((14, 14), 7), ((15, 20), 7), ((5, 7), 3), ((3, 9), 7)]:
        idx, valid = region_layout(grid, regions)
        tokens = sorted(idx[valid].tolist())
        assert tokens == list(range(grid[0] * grid[1]))
        sizes = valid.sum(-1)
        assert int(sizes.min()) >= 1 and idx.shape[0] == min(regions, grid[0]) * min(regions, grid[1])


@pytest.mark.parametrize("grid,regions,topk,d", [((5, 7), 3, 2, 4), ((15, 20), 7, 4, 8), ((8, 8), 4, 3, 6),
                                                 ((8, 12), 7, 4, 4)],
                         ids=lambda x: str(x))
@pytest.mark.parametrize("scale", ["head", "channels"])
def test_biformer_equals_loop_reference(grid, regions, topk, d, scale, qkv_factory):
    n = grid[0] * grid[1]
    q, k, v = (x.double() for x in qkv_factory(1, 2, n, d, seed=n, scale=2.0))
    mod = attnbench.create("biformer", heads=2, head_dim=d, regions=regions, topk=topk, scale=scale)
    out = mod(q, k, v, grid=grid)
    torch.testing.assert_close(out, _biformer_reference(q, k, v, grid, regions, topk, scale))
    p = mod.attention_matrix(q, k, v, grid=grid)
    torch.testing.assert_close(p.sum(-1), torch.ones(1, 2, n, dtype=torch.float64))
    torch.testing.assert_close(p @ v, out)


@pytest.mark.parametrize("grid,regions", [((14, 14), 7), ((15, 20), 7), ((5, 7), 3)])
def test_biformer_all_regions_is_exact(grid, regions, qkv_factory):
    n = grid[0] * grid[1]
    q, k, v = qkv_factory(1, 3, n, 8, seed=n, scale=2.0)
    mod = attnbench.create("biformer", heads=3, head_dim=8, regions=regions, topk=regions * regions)
    assert rel_err(mod(q, k, v, grid=grid), exact_attention(q, k, v)) <= 4 * float32_error_scale(q, k, v) + 1e-7


def test_biformer_padding_gets_zero_weight(qkv_factory):
    """15×20 with 7 regions: regions of 2 or 3 rows/cols in 3×3 slots; padded slots point at token 0
    and must carry exactly zero weight, so token 0 is seen only by queries whose region routes to it."""

    q, k, v = qkv_factory(1, 2, 300, 4, seed=1)
    mod = attnbench.create("biformer", heads=2, head_dim=4, regions=7, topk=4)
    idx, valid, routes, probs = mod.region_probs(q, k, (15, 20))
    assert int(valid.sum(-1).max()) > int(valid.sum(-1).min())   # regions really are uneven
    key_ok = valid[routes].flatten(-2)                             # (B, R, k·t)
    pad_weights = probs.masked_select(~key_ok[:, None, :, None, :].expand_as(probs))
    assert pad_weights.numel() > 0 and torch.equal(pad_weights, torch.zeros_like(pad_weights))
    p = mod.attention_matrix(q, k, v, grid=(15, 20))
    blind = [r for r in range(idx.shape[0]) if 0 not in routes[0, r].tolist()]   # token 0 is in region 0
    assert blind
    for r in blind:
        rows = idx[r][valid[r]]
        assert torch.equal(p[0, :, rows, 0], torch.zeros(2, len(rows)))


def test_biformer_scale_option(qkv_factory):
    from attnbench.methods.biformer import attention_scale

    assert attention_scale(4, 16, "head") == 0.25 and attention_scale(4, 16, "channels") == 0.125
    q, k, v = qkv_factory(1, 4, 196, 16, seed=3, scale=2.0)
    head = attnbench.create("biformer", heads=4, head_dim=16)
    channels = attnbench.create("biformer", heads=4, head_dim=16, scale="channels")
    assert head.scale == 0.25 and channels.scale == 0.125
    assert rel_err(channels(q, k, v), head(q, k, v)) > 1e-2
    with pytest.raises(ValueError, match="scale"):
        attnbench.create("biformer", heads=4, head_dim=16, scale="dim")


def test_biformer_option_macs(qkv_factory):
    q, k, v = qkv_factory(1, 2, 35, 8)
    check_counters(attnbench.create("biformer", heads=2, head_dim=8, regions=3, topk=2), q, k, v, (5, 7))


def test_nystrom_and_sparsifiner_option_macs(qkv_factory):
    q, k, v = qkv_factory(1, 2, 53, 8)
    check_counters(attnbench.create("nystrom", heads=2, head_dim=8, m=7, pinv_iters=11), q, k, v, None)
    check_counters(attnbench.create("sparsifiner", heads=2, head_dim=8, keep=0.1), q, k, v, None)
