import pytest
import torch

import attnbench
from attnbench.measure.memory import cpu_peak_bytes


def _explicit_st(anchors, k):
    """S_t = A Δ⁻¹ Aᵀ built entry by entry in float64 for one (batch, head)."""
    n, m = k.shape[0], anchors.shape[0]
    d = k.shape[1]
    a = torch.zeros(n, m, dtype=torch.float64)
    for i in range(n):
        logits = torch.tensor([float(anchors[j].double() @ k[i].double()) / d ** 0.5 for j in range(m)],
                              dtype=torch.float64)
        a[i] = torch.softmax(logits, dim=0)
    delta = torch.diag(a.sum(0))
    return a @ torch.linalg.inv(delta) @ a.T


@pytest.mark.parametrize("n,m,d", [(5, 3, 4), (37, 10, 8), (64, 64, 16)])
def test_anchor_equals_explicit_st_and_st_is_row_stochastic(n, m, d, qkv_factory):
    q, k, v = qkv_factory(2, 3, n, d, seed=n + m)
    mod = attnbench.create("anchor", heads=3, head_dim=d, m=m, seed=m).double()
    out = mod(q.double(), k.double(), v.double())
    for b in range(2):
        for h in range(3):
            st = _explicit_st(mod.anchors[h].detach(), k[b, h])
            torch.testing.assert_close(st.sum(1), torch.ones(n, dtype=torch.float64))
            torch.testing.assert_close(out[b, h], st @ v[b, h].double())


def test_anchor_ignores_queries(qkv_factory):
    q, k, v = qkv_factory(1, 2, 40, 8)
    mod = attnbench.create("anchor", heads=2, head_dim=8, m=6)
    torch.testing.assert_close(mod(q, k, v), mod(torch.randn_like(q), k, v))


def test_shared_anchors_equal_per_head_copies(qkv_factory):
    q, k, v = qkv_factory(2, 4, 50, 8)
    shared = attnbench.create("anchor", heads=4, head_dim=8, m=7, shared=True)
    assert shared.anchors.shape == (7, 8)
    per_head = attnbench.create("anchor", heads=4, head_dim=8, m=7)
    with torch.no_grad():
        per_head.anchors.copy_(shared.anchors.expand(4, 7, 8))
    torch.testing.assert_close(shared(q, k, v), per_head(q, k, v))


def test_empty_anchor_column_gives_no_nan(qkv_factory):
    q, k, v = qkv_factory(1, 1, 30, 4)
    k = k.abs()  # all keys in the positive orthant
    mod = attnbench.create("anchor", heads=1, head_dim=4, m=3)
    with torch.no_grad():
        mod.anchors[0, 0] = -1e4          # dot products ~ -1e4: exp underflows to exactly 0
        mod.anchors[0, 1:] = torch.randn(2, 4)
    a_col = torch.softmax(k[0, 0] @ mod.anchors[0].detach().T / 2.0, dim=-1)[:, 0]
    assert float(a_col.sum()) == 0.0      # the column really is empty
    out = mod(q, k, v)
    assert torch.isfinite(out).all()
    two = attnbench.create("anchor", heads=1, head_dim=4, m=2)
    with torch.no_grad():
        two.anchors.copy_(mod.anchors[:, 1:])
    torch.testing.assert_close(out, two(q, k, v))
    out.sum().backward()
    assert torch.isfinite(mod.anchors.grad).all()


def test_anchor_gradients_reach_anchors(qkv_factory):
    q, k, v = qkv_factory(1, 2, 20, 8)
    mod = attnbench.create("anchor", heads=2, head_dim=8, m=4)
    mod(q, k, v).square().sum().backward()
    assert mod.anchors.grad is not None and mod.anchors.grad.abs().sum() > 0


def test_anchor_never_allocates_n_by_n():
    n, heads, d = 16384, 6, 64
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, d, generator=gen) for _ in range(3))
    mod = attnbench.create("anchor", heads=heads, head_dim=d, m=30)
    with torch.no_grad():
        peak = cpu_peak_bytes(lambda: mod(q, k, v))
    n2_bytes = n * n * 4
    assert peak > 0
    assert peak < n2_bytes / 20, (peak, n2_bytes)  # measured: output + a few N×m tensors


def test_memory_probe_sees_n_by_n_of_vanilla():
    """The probe used above must be able to fail: vanilla-math at N=1024 allocates H·N²·4 bytes."""
    n, heads = 1024, 2
    q, k, v = (torch.randn(1, heads, n, 16) for _ in range(3))
    mod = attnbench.create("vanilla-math", heads=heads, head_dim=16)
    with torch.no_grad():
        peak = cpu_peak_bytes(lambda: mod(q, k, v))
    assert peak >= heads * n * n * 4


@pytest.mark.parametrize("select", ["strided", "random", "topnorm"])
def test_anchor_select_uses_chosen_queries(select, qkv_factory):
    q, k, v = qkv_factory(2, 2, 23, 8, seed=3)
    mod = attnbench.create("anchor-select", heads=2, head_dim=8, m=5, select=select)
    out = mod(q, k, v)
    from attnbench.methods.anchor import select_anchor_indices

    idx = select_anchor_indices(q, 5, select)
    assert idx.shape == (2, 2, 5) and len(set(idx[0, 0].tolist())) == 5
    for b in range(2):
        for h in range(2):
            st = _explicit_st(q[b, h, idx[b, h]], k[b, h])
            torch.testing.assert_close(out[b, h].double(), st @ v[b, h].double(), rtol=1e-5, atol=1e-5)


def test_anchor_select_strided_indices_are_even():
    from attnbench.methods.anchor import select_anchor_indices

    idx = select_anchor_indices(torch.zeros(1, 1, 100, 4), 4, "strided")
    assert idx[0, 0].tolist() == [0, 25, 50, 75]
