"""FLOP counting three ways: analytic (per method), fvcore, and torch's FlopCounterMode.

Units: ``macs_*`` count multiply-adds (the "FLOPs" of fvcore and of most vision papers);
``flops_torch`` counts floating-point operations, 2 per multiply-add. All three count the
forward pass only, and all three count matrix products only: softmax, normalisation and
other elementwise work count zero, as fvcore does.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch

# Ops that fvcore does not know and that do no matrix-product work: counted as zero.
ZERO_OPS = (
    "aten::softmax", "aten::_softmax", "aten::elu", "aten::exp", "aten::log", "aten::sqrt",
    "aten::rsqrt", "aten::reciprocal", "aten::where", "aten::clamp", "aten::clamp_min",
    "aten::sum", "aten::mean", "aten::amax", "aten::max", "aten::gt", "aten::lt", "aten::ge",
    "aten::le", "aten::eq", "aten::ne", "aten::ones_like", "aten::zeros_like", "aten::gather",
    "aten::index", "aten::topk", "aten::sort", "aten::norm", "aten::linalg_vector_norm",
    "aten::pow", "aten::abs", "aten::neg", "aten::cos", "aten::sin", "aten::arange",
    "aten::floor_divide", "aten::div", "aten::mul", "aten::add", "aten::sub", "aten::pad",
    "aten::constant_pad_nd", "aten::roll", "aten::masked_fill", "aten::scatter_add",
    "aten::index_select", "aten::expand_as", "aten::repeat", "aten::full", "aten::zeros",
    "aten::ones", "aten::eye", "aten::cumsum", "aten::logsumexp", "aten::log_softmax",
    "aten::adaptive_avg_pool2d", "aten::avg_pool2d", "aten::layer_norm", "aten::relu",
    "aten::gelu", "aten::sigmoid", "aten::tanh", "aten::acos", "aten::maximum", "aten::minimum",
    "aten::upsample_bilinear2d", "aten::scatter_",
)


def _shape(value: Any) -> list[int] | None:
    t = value.type()
    sizes = t.sizes() if hasattr(t, "sizes") else None
    return list(sizes) if sizes is not None else None


def matmul_macs(a: list[int], b: list[int]) -> int:
    """Multiply-adds of torch.matmul on shapes a and b, broadcasting batch dimensions."""
    if len(a) == 1:
        a = [1] + a
    if len(b) == 1:
        b = b + [1]
    batch_a, batch_b = a[:-2], b[:-2]
    width = max(len(batch_a), len(batch_b))
    batch_a = [1] * (width - len(batch_a)) + batch_a
    batch_b = [1] * (width - len(batch_b)) + batch_b
    batch = math.prod(max(x, y) for x, y in zip(batch_a, batch_b))
    return int(batch * a[-2] * a[-1] * b[-1])


def _matmul_handle(inputs, outputs) -> int:
    return matmul_macs(_shape(inputs[0]), _shape(inputs[1]))


def _sdpa_handle(inputs, outputs) -> int:
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    return int(batch * q[-2] * k[-2] * (q[-1] + v[-1]))


def _zero_handle(inputs, outputs) -> int:
    return 0


def fvcore_count(module: torch.nn.Module, inputs: tuple) -> dict[str, Any]:
    """fvcore FlopCountAnalysis of ``module(*inputs)`` with the project's handles (matmul and SDPA
    counted, ZERO_OPS as zero); macs_fvcore and the ops fvcore could not count."""
    from fvcore.nn import FlopCountAnalysis

    handles = {op: _zero_handle for op in ZERO_OPS}
    handles.update({
        "aten::matmul": _matmul_handle,
        "aten::scaled_dot_product_attention": _sdpa_handle,
    })
    analysis = FlopCountAnalysis(module, inputs).set_op_handle(**handles)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation and tracer notes
        total = int(analysis.total())
    return {"macs_fvcore": total, "fvcore_uncounted_ops": sorted(analysis.unsupported_ops())}


class _Call(torch.nn.Module):
    """An attention method called as ``module(q, k, v)`` with its grid bound, for tracing."""

    def __init__(self, module: torch.nn.Module, grid) -> None:
        super().__init__()
        self.inner, self.grid = module, grid

    def forward(self, q, k, v):
        return self.inner(q, k, v, grid=self.grid)


def fvcore_macs(module: torch.nn.Module, q, k, v, grid=None) -> dict[str, Any]:
    """fvcore multiply-adds of the attention ``module(q, k, v, grid)``; q, k, v (B, H, N, d)."""
    return fvcore_count(_Call(module, grid), (q, k, v))


def _sdpa_cpu_formula(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def torch_flops(fn) -> dict[str, Any]:
    """FlopCounterMode total over one forward call (FLOPs = 2 x multiply-adds)."""
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:  # not in torch's own table
        custom[cpu_sdpa] = _sdpa_cpu_formula
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return {"flops_torch": int(counter.get_total_flops())}
