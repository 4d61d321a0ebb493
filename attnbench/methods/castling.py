"""Castling-ViT linear-angular attention (You et al., 2023), kernel part only.

sim(q, k) = ½ + q̂·k̂/π with q̂ = q/‖q‖, k̂ = k/‖k‖: the first-order part of the angular kernel
1 − arccos(q̂·k̂)/π. It lies in [½ − 1/π, ½ + 1/π], so it is always positive. Normalised over
the keys,

    out_i = Σ_j sim(q_i, k_j) v_j / Σ_j sim(q_i, k_j)
          = (½ Σ_j v_j + q̂_iᵀ (K̂ᵀ V)/π) / (½ N + q̂_i · Σ_j k̂_j / π),

computed right-to-left in O(N·d²). Zero vectors normalise to zero (F.normalize).

The authors' public code differs: it computes ½·v_i + q̂_iᵀ(K̂ᵀV)/π per token (the ½ term is the
token's own value, not ½ Σ_j v_j), divides each output row by its L2 norm instead of by the
kernel's row sum, and adds a depthwise convolution of v (kernel 9 x 1) as a residual. That
output is not a weighted average of the values; this module implements the kernel normalised as
an attention so that it approximates softmax attention and has an attention matrix.

MACs: K̂ᵀV (N·d²), q̂ times it (N·d²) and the normaliser q̂·Σk̂ (N·d), per batch and head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attnbench.methods.base import AttentionMethod
from attnbench.registry import register


def angular_similarity(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, H, N, N) ½ + q̂ k̂ᵀ/π, the O(N²) form (reference and attention matrix)."""
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    return 0.5 + (qn @ kn.transpose(-1, -2)) / math.pi


@register("castling", family="linear",
          description="Castling-ViT linear-angular kernel ½ + q̂·k̂/π, normalised over keys, O(N d²)")
class CastlingAttention(AttentionMethod):
    """Linear-angular attention; see the module docstring."""

    def forward(self, q, k, v, grid=None):
        qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)   # (B, H, N, d)
        n = k.shape[-2]
        kv = kn.transpose(-1, -2) @ v                              # (B, H, d, d)
        num = 0.5 * v.sum(dim=-2, keepdim=True) + (qn @ kv) / math.pi
        ksum = kn.sum(dim=-2).unsqueeze(-1)                        # (B, H, d, 1)
        den = 0.5 * n + (qn @ ksum) / math.pi                      # (B, H, N, 1)
        return num / den

    def macs(self, batch, n, grid=None):
        d = self.head_dim
        return batch * self.heads * n * (2 * d * d + d)

    def attention_matrix(self, q, k, v, grid=None):
        s = angular_similarity(q, k)
        return s / s.sum(dim=-1, keepdim=True)
