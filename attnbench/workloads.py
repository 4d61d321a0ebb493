"""q, k, v generators. Each returns a ``Workload`` with tensors shaped (B, heads, N, head_dim).

``gaussian``: i.i.d. standard normal k and v, and q scaled by ``logit_std`` so that the
logits q·k/√d have standard deviation ``logit_std`` (default 3). At logit_std 1 exact
attention over thousands of keys is near-uniform and every approximation looks good; the
row stores the resulting structure (mean row entropy of exact attention / log N).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from attnbench.methods.base import near_square_grid


class WorkloadError(ValueError):
    """A workload specification or file that cannot be used; the message is one line."""


@dataclass
class Workload:
    name: str
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    grid: tuple[int, int]
    params: dict[str, Any] = field(default_factory=dict)


WorkloadFn = Callable[..., Workload]
_WORKLOADS: dict[str, WorkloadFn] = {}


def register_workload(name: str) -> Callable[[WorkloadFn], WorkloadFn]:
    def deco(fn: WorkloadFn) -> WorkloadFn:
        _WORKLOADS[name] = fn
        return fn
    return deco


def workload_names() -> list[str]:
    return sorted(_WORKLOADS)


@register_workload("gaussian")
def gaussian(batch: int, heads: int, n: int, head_dim: int, *, seed: int = 0,
             logit_std: float = 3.0) -> Workload:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, heads, n, head_dim)
    q = torch.randn(shape, generator=gen) * logit_std
    k = torch.randn(shape, generator=gen)
    v = torch.randn(shape, generator=gen)
    return Workload("gaussian", q, k, v, near_square_grid(n), {"logit_std": logit_std})


def make_workload(spec: str, batch: int, heads: int, n: int, head_dim: int, *, dtype: torch.dtype,
                  device: str, seed: int = 0) -> Workload:
    """Build workload ``spec`` ("name" or "name:arg") on CPU with ``seed``, then move it."""
    name, _, arg = spec.partition(":")
    if name not in _WORKLOADS:
        raise WorkloadError(f"unknown workload {spec!r}; known: {', '.join(workload_names())}")
    kwargs = {"path": arg} if arg else {}
    wl = _WORKLOADS[name](batch, heads, n, head_dim, seed=seed, **kwargs)
    wl.q, wl.k, wl.v = (t.to(device=device, dtype=dtype).contiguous() for t in (wl.q, wl.k, wl.v))
    return wl
