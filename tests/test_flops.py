"""Analytic MACs against fvcore and FlopCounterMode/2, for every method available on CPU."""
import pytest
import torch

import attnbench
from attnbench.measure.flops import fvcore_macs, matmul_macs, torch_flops
from attnbench.point import base_row  # noqa: F401  (import check)

SHAPES = [(1, 6, 196, 64), (2, 3, 300, 32)]


def _budgeted_kwargs(info, n):
    return {info["budget"]: min(30, n // 4)} if info["budget"] else {}


def _cpu_methods():
    # FlexAttention members are left out: the counters see the unfused path's full score matrix
    # (or cannot trace the higher-order op); their block-mask MAC counts are tested in test_flex.py.
    return [m for m in attnbench.list_methods("cpu") if m["available"] and not m["name"].endswith("-flex")]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-H{}-N{}-D{}".format(*s))
@pytest.mark.parametrize("info", _cpu_methods(), ids=lambda m: m["name"])
def test_analytic_macs_match_counters(info, shape):
    b, h, n, d = shape
    mod = attnbench.create(info["name"], heads=h, head_dim=d, **_budgeted_kwargs(info, n)).eval()
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(b, h, n, d, generator=gen) for _ in range(3))
    analytic = mod.macs(b, n)
    fv = fvcore_macs(mod, q, k, v)
    counted = torch_flops(lambda: mod(q, k, v))["flops_torch"] / 2
    assert analytic > 0 or fv["macs_fvcore"] == counted == 0  # the uniform null model does no matmul
    assert abs(fv["macs_fvcore"] - analytic) <= 0.01 * analytic, (fv, analytic)
    assert abs(counted - analytic) <= 0.01 * analytic, (counted, analytic)


def test_matmul_macs_broadcasts_batch_dims():
    assert matmul_macs([6, 30, 64], [2, 6, 64, 100]) == 2 * 6 * 30 * 64 * 100
    assert matmul_macs([5, 7], [7]) == 35
    assert matmul_macs([3, 4, 5], [5, 2]) == 3 * 4 * 5 * 2


def test_fvcore_count_of_any_module_uses_the_project_handles():
    """Linear (2·5·8·3 MACs) + matmul (2·5·3·5) + softmax (zero): 390, nothing left uncounted."""
    from attnbench.measure.flops import fvcore_count

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 3, bias=False)

        def forward(self, x):
            y = self.proj(x)                                     # (2, 5, 3)
            return torch.softmax(torch.matmul(y, y.transpose(-1, -2)), dim=-1)  # (2, 5, 5)

    out = fvcore_count(Toy(), (torch.randn(2, 5, 8),))
    assert out == {"macs_fvcore": 2 * 5 * 8 * 3 + 2 * 5 * 3 * 5, "fvcore_uncounted_ops": []}
