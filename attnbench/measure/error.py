"""Approximation error against float64 exact softmax attention on the same q, k, v."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ExactReference:
    """Exact attention output (float64) and the structure statistic of its attention rows."""

    out: torch.Tensor            # (B, H, N, d) float64
    entropy_ratio: float         # mean row entropy of softmax(q kᵀ/√d) divided by log N


def exact_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int = 512) -> ExactReference:
    """Float64 exact attention and mean row entropy / log N, in query blocks (no N×N at once)."""
    q64, k64, v64 = q.double(), k.double(), v.double()
    n, scale = k.shape[-2], 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=torch.float64, device=q.device)
    entropy_sum = 0.0
    for s in range(0, q.shape[-2], block):
        logp = torch.log_softmax((q64[..., s:s + block, :] @ k64.transpose(-1, -2)) * scale, dim=-1)
        p = logp.exp()                                           # (B, H, b, N)
        out[..., s:s + block, :] = p @ v64
        entropy_sum += float(-(p * logp).sum())
    rows = q.shape[0] * q.shape[1] * q.shape[2]
    ratio = entropy_sum / rows / math.log(n) if n > 1 else 0.0
    return ExactReference(out=out, entropy_ratio=ratio)


def error_metrics(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """err_rel_fro = ‖out − ref‖_F / ‖ref‖_F, err_max_abs, err_cos_mean (mean cosine per token)."""
    o = out.detach().to(device=ref.device, dtype=torch.float64)
    diff = o - ref
    ref_norm = float(torch.linalg.vector_norm(ref))
    cos = torch.nn.functional.cosine_similarity(o, ref, dim=-1, eps=1e-30)
    return {
        "err_rel_fro": float(torch.linalg.vector_norm(diff)) / ref_norm if ref_norm > 0 else float("nan"),
        "err_max_abs": float(diff.abs().max()),
        "err_cos_mean": float(cos.mean()),
        "out_finite": bool(torch.isfinite(o).all()),
    }
