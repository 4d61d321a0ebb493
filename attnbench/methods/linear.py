"""Linear attention (Katharopoulos et al., 2020): a positive feature map instead of softmax.

φ(x) = elu(x) + 1 and out_i = φ(q_i)ᵀ (Σ_j φ(k_j) v_jᵀ) / (φ(q_i)ᵀ Σ_j φ(k_j) + eps), computed
right-to-left in O(N·d²). No 1/√d scaling: the feature map is applied to q and k as given.
Numerator and denominator are both divided by N (φ(k)/N and eps/N), which leaves the result
unchanged and keeps the key sums within float16 range at large N.

MACs: Σ_j φ(k_j) v_jᵀ (N·d²), φ(q) times it (N·d²) and the normaliser φ(q)·Σφ(k) (N·d),
per batch and head. The key sum is a reduction and counts zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.methods.base import AttentionMethod
from attnbench.registry import register


def elu_feature(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = elu(x) + 1 > 0, elementwise."""
    return F.elu(x) + 1


@register("linear", family="linear", defaults={"eps": 1e-6},
          description="linear attention, φ = elu + 1 (Katharopoulos et al.)")
class LinearAttention(AttentionMethod):
    """Kernelised attention with φ = elu + 1 and ``eps`` in the normaliser."""

    def __init__(self, heads: int, head_dim: int, eps: float = 1e-6):
        super().__init__(heads, head_dim)
        if not float(eps) >= 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        self.eps = float(eps)

    def forward(self, q, k, v, grid=None):
        n = k.shape[-2]
        fq, fk = elu_feature(q), elu_feature(k) / n               # (B, H, N, d)
        kv = fk.transpose(-1, -2) @ v                              # (B, H, d, d)
        z = fk.sum(dim=-2).unsqueeze(-1)                           # (B, H, d, 1)
        return (fq @ kv) / (fq @ z + self.eps / n)                 # (B, H, N, d)

    def macs(self, batch, n, grid=None):
        d = self.head_dim
        return batch * self.heads * n * (2 * d * d + d)

    def attention_matrix(self, q, k, v, grid=None):
        """(B, H, N, N) φ(q)φ(k)ᵀ / (row sum + eps): out = P v exactly; rows sum to
        s / (s + eps), i.e. 1 up to eps / s."""
        a = elu_feature(q) @ elu_feature(k).transpose(-1, -2)     # (B, H, N, N)
        return a / (a.sum(dim=-1, keepdim=True) + self.eps)
