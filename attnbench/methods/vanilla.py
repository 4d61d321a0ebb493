"""Exact softmax attention three ways: materialised math, PyTorch SDPA, xformers."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from attnbench.methods.base import AttentionMethod
from attnbench.reference import softmax_attention, softmax_matrix
from attnbench.registry import register
from attnbench.spec import one_line

# aten operator name -> SDPA backend, as seen by the profiler.
_SDPA_BACKENDS = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_efficient_attention": "mem_efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
}


def _exact_macs(batch: int, heads: int, n: int, head_dim: int) -> int:
    return 2 * batch * heads * n * n * head_dim  # q kᵀ and P v


@register("vanilla-math", family="vanilla", description="materialised softmax(q kᵀ/√d) v, O(N²)")
class VanillaMath(AttentionMethod):
    """Exact attention with the N×N probability matrix materialised."""

    def forward(self, q, k, v, grid=None):
        return softmax_attention(q, k, v, precision=None, block=None)  # (B, H, N, N) materialised

    def macs(self, batch, n, grid=None):
        return _exact_macs(batch, self.heads, n, self.head_dim)

    def attention_matrix(self, q, k, v, grid=None):
        return softmax_matrix(q, k, self.scale)

    def workspace_bytes(self, batch, n, dtype_bytes):
        return 2 * batch * self.heads * n * n * dtype_bytes  # logits and probabilities


@register("vanilla-sdpa", family="vanilla", description="torch scaled_dot_product_attention")
class VanillaSDPA(AttentionMethod):
    """torch.nn.functional.scaled_dot_product_attention; the row records the backend used."""

    def forward(self, q, k, v, grid=None):
        return F.scaled_dot_product_attention(q, k, v)

    def macs(self, batch, n, grid=None):
        return _exact_macs(batch, self.heads, n, self.head_dim)

    def attention_matrix(self, q, k, v, grid=None):
        return softmax_matrix(q, k, self.scale)

    def backend_info(self, q, k, v, grid=None) -> dict[str, Any]:
        from torch.profiler import ProfilerActivity, profile

        from attnbench.measure.memory import quiet_native_stderr

        with torch.no_grad(), quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
            self(q, k, v)
        names = {evt.key for evt in prof.key_averages()}
        found = [label for op, label in _SDPA_BACKENDS.items() if op in names]
        return {"sdpa_backend": found[0] if found else "unknown"}


def _xformers_reason() -> str | None:
    try:
        import xformers.ops  # noqa: F401
    except Exception as exc:  # ImportError, or a broken build raising at import
        return f"xformers is not importable ({one_line(exc)})."
    return None


@register("vanilla-xformers", family="vanilla", devices=("cuda",), dtypes=("float16", "bfloat16", "float32"),
          description="xformers.ops.memory_efficient_attention")
class VanillaXformers(AttentionMethod):
    """xformers memory-efficient attention (CUDA only); inputs are re-laid out outside the timed call."""

    @staticmethod
    def availability() -> str | None:
        return _xformers_reason()

    def forward(self, q, k, v, grid=None):
        import xformers.ops as xops

        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    def bench_fn(self, q, k, v, grid=None) -> Callable[[], torch.Tensor]:
        import xformers.ops as xops

        qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))  # (B, N, H, d)
        return lambda: xops.memory_efficient_attention(qt, kt, vt)

    def macs(self, batch, n, grid=None):
        return _exact_macs(batch, self.heads, n, self.head_dim)
