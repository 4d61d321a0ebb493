import pytest
import torch

import attnbench
from attnbench.reference import softmax_attention as exact_attention

SHAPES = [(1, 1, 1, 4), (1, 2, 7, 16), (2, 3, 33, 8), (1, 6, 197, 64), (1, 2, 255, 20)]


def _reference_loop(q, k, v):
    """Row-by-row softmax attention in float64, written without batched matmuls."""
    b, h, n, d = q.shape
    out = torch.zeros(b, h, n, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                logits = (k[bi, hi].double() * q[bi, hi, i].double()).sum(-1) / d ** 0.5
                w = torch.exp(logits - logits.max())
                out[bi, hi, i] = (w[:, None] * v[bi, hi].double()).sum(0) / w.sum()
    return out


def test_exact_reference_matches_loop(qkv_factory):
    q, k, v = qkv_factory(1, 2, 19, 8, scale=3.0)
    torch.testing.assert_close(exact_attention(q, k, v, block=4), _reference_loop(q, k, v))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-H{}-N{}-D{}".format(*s))
@pytest.mark.parametrize("name", ["vanilla-math", "vanilla-sdpa"])
def test_vanilla_equals_float64_reference(name, shape, qkv_factory):
    b, h, n, d = shape
    q, k, v = qkv_factory(b, h, n, d, seed=n, scale=2.0)
    mod = attnbench.create(name, heads=h, head_dim=d)
    ref = exact_attention(q, k, v)
    out = mod(q, k, v)
    # float32 result vs float64 truth: error of a float32 computation, far below 1e-4
    err = (out.double() - ref).norm() / ref.norm()
    assert err < 1e-5, err
    # and vanilla-math itself in float64 is exact to float64 rounding
    out64 = mod(q.double(), k.double(), v.double())
    assert ((out64 - ref).norm() / ref.norm()) < 1e-12


def test_sdpa_backend_recorded(qkv_factory):
    q, k, v = qkv_factory(1, 2, 16, 8)
    info = attnbench.create("vanilla-sdpa", heads=2, head_dim=8).backend_info(q, k, v)
    assert info["sdpa_backend"] == "flash (cpu)"  # the kernel PyTorch picks for CPU float32
