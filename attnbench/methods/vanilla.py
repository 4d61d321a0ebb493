"""Exact softmax attention three ways: materialised math, PyTorch SDPA, xformers."""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

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


# backend parameter -> the one SDPBackend that sdpa_kernel allows ("auto": PyTorch chooses).
SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
# What each backend needs, for inputs PyTorch refuses without saying why.
SDPA_REQUIREMENTS = {
    "flash": "FlashAttention: its CPU kernel, or on CUDA float16/bfloat16 inputs on a GPU it supports",
    "efficient": "the memory-efficient kernel, which PyTorch builds for CUDA only",
    "cudnn": "the cuDNN attention kernel, which PyTorch builds for CUDA only",
    "math": "the math fallback",
}
_PROBES: dict[tuple[str, str, str, int], str | None] = {}


def sdpa_probe(backend: str, device: str, dtype: str, head_dim: int) -> str | None:
    """None when SDPA forced to ``backend`` runs a small (1, 1, 128, head_dim) input on
    (device, dtype), else a sentence with PyTorch's own reasons; cached per combination."""
    key = (backend, device, dtype, int(head_dim))
    if key not in _PROBES:
        _PROBES[key] = _probe_once(*key)
    return _PROBES[key]


def _probe_once(backend: str, device: str, dtype: str, head_dim: int) -> str | None:
    from attnbench.spec import DTYPES, one_line

    q = torch.randn(1, 1, 128, head_dim, device=device, dtype=DTYPES[dtype])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel(SDPA_BACKENDS[backend]):
                F.scaled_dot_product_attention(q, q, q)
            return None
        except RuntimeError as exc:
            error = one_line(exc)
    said = [" ".join(str(w.message).split()) for w in caught]
    pytorch = "; ".join(dict.fromkeys(said)) or error
    return (f"SDPA backend {backend} cannot run {dtype}, head_dim {head_dim} on {device}: it needs "
            f"{SDPA_REQUIREMENTS[backend]}. PyTorch: {pytorch}")[:600]


@register("vanilla-sdpa", family="vanilla", defaults={"backend": "auto"},
          description="torch scaled_dot_product_attention; backend=auto|flash|efficient|cudnn|math")
class VanillaSDPA(AttentionMethod):
    """torch.nn.functional.scaled_dot_product_attention; ``backend`` forces one SDPA backend through
    ``torch.nn.attention.sdpa_kernel`` (no fallback), ``auto`` lets PyTorch choose. The row records
    the backend that ran."""

    def __init__(self, heads: int, head_dim: int, backend: str = "auto"):
        super().__init__(heads, head_dim)
        if backend != "auto" and backend not in SDPA_BACKENDS:
            raise ValueError(f"backend must be auto or one of {', '.join(SDPA_BACKENDS)}, got {backend!r}")
        self.backend = str(backend)

    def extra_unsupported_reason(self, device, dtype, n, head_dim):
        return None if self.backend == "auto" else sdpa_probe(self.backend, device, dtype, head_dim)

    def _kernel_scope(self):
        return contextlib.nullcontext() if self.backend == "auto" else sdpa_kernel(SDPA_BACKENDS[self.backend])

    def forward(self, q, k, v, grid=None):
        with self._kernel_scope():
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
        return {"sdpa_backend": found[0] if found else "unknown", "sdpa_backend_requested": self.backend}


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
