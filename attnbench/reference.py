"""Exact softmax attention: the one reference every error and every gate is measured against."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ExactReference:
    """Exact attention output and the structure statistic of its attention rows."""

    out: torch.Tensor            # (B, H, N, d) in the precision it was computed in
    entropy_ratio: float         # mean row entropy of softmax(q kᵀ/√d) divided by log N


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                      precision: torch.dtype | None = torch.float64, block: int | None = 1024) -> torch.Tensor:
    """softmax(q kᵀ/√d) v, computed in ``precision`` (None: the inputs' own dtype).

    q, k, v: (B, H, N, d). ``block`` query rows at a time (no N×N at once); None: one block,
    which is plain materialised attention, the speed reference of the CPU gate.
    """
    return _attention(q, k, v, precision, block, entropy=False)[0]


def exact_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int = 512) -> ExactReference:
    """Float64 exact attention and its mean row entropy / log N, in query blocks."""
    out, ratio = _attention(q, k, v, torch.float64, block, entropy=True)
    return ExactReference(out=out, entropy_ratio=ratio)


def _attention(q, k, v, precision, block, entropy: bool) -> tuple[torch.Tensor, float | None]:
    if precision is not None:
        q, k, v = q.to(precision), k.to(precision), v.to(precision)
    n, scale = k.shape[-2], 1.0 / math.sqrt(q.shape[-1])
    if block is None or block >= q.shape[-2]:
        if not entropy:
            return torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v, None
        block = q.shape[-2]
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=v.dtype, device=q.device)
    entropy_sum = 0.0
    for s in range(0, q.shape[-2], block):
        logp = torch.log_softmax((q[..., s:s + block, :] @ k.transpose(-1, -2)) * scale, dim=-1)
        p = logp.exp()                                                   # (B, H, b, N)
        out[..., s:s + block, :] = p @ v
        if entropy:
            entropy_sum += float(-(p * logp).sum())
    if not entropy:
        return out, None
    rows = q.shape[0] * q.shape[1] * q.shape[2]
    return out, (entropy_sum / rows / math.log(n) if n > 1 else 0.0)


def softmax_matrix(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, H, N, N) softmax(q kᵀ·scale): the matrix every exact method applies to v."""
    return torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)
