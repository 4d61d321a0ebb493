"""Castling-ViT linear-angular attention (You et al., 2023): the paper's kernel, or the authors' code.

sim(q, k) = ½ + q̂·k̂/π with q̂ = q/‖q‖, k̂ = k/‖k‖: the first-order part of the angular kernel
1 − arccos(q̂·k̂)/π. It lies in [½ − 1/π, ½ + 1/π], so it is always positive. Normalised over
the keys,

    out_i = Σ_j sim(q_i, k_j) v_j / Σ_j sim(q_i, k_j)
          = (½ Σ_j v_j + q̂_iᵀ (K̂ᵀ V)/π) / (½ N + q̂_i · Σ_j k̂_j / π),

computed right-to-left in O(N·d²). Zero vectors normalise to zero (F.normalize).

``variant`` selects the computation: ``"paper"`` (default) is the kernel above, normalised as
an attention, so that it approximates softmax attention and has an attention matrix.
``"official"`` is what the authors' public code computes per head:

    x_i = ½ v_i + q̂_iᵀ (K̂ᵀ V)/π,   out_i = x_i / ‖x_i‖ + (c_h ∗ v)_i

(the ½ term is the token's own value, not ½ Σ_j v_j; each row is divided by its L2 norm instead
of the kernel's row sum), plus a depthwise convolution of v along the tokens: one 9-tap filter
c_h per head, shared by the head's d channels, zero-padded by 4 at both ends, no bias
(PyTorch's default uniform init, bound 1/3, from ``seed``). That output is not a weighted
average of the values, so it has no attention matrix. (A zero x_i normalises to zero here; the
authors' division would give NaN.)

MACs: K̂ᵀV (N·d²), q̂ times it (N·d²) and the normaliser q̂·Σk̂ (N·d), per batch and head;
``official``: K̂ᵀV, q̂ times it and the 9-tap conv (9·N·d).
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


VARIANTS = ("paper", "official")
CONV_TAPS = 9


def token_conv(v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) v convolved along the tokens with one filter per head, weight (H, 1, taps, 1)."""
    taps = weight.shape[-2]
    return F.conv2d(v, weight.to(v.dtype), padding=(taps // 2, 0), groups=v.shape[1])


@register("castling", family="linear", defaults={"variant": "paper"},
          description="Castling-ViT linear-angular kernel ½ + q̂·k̂/π, normalised over keys, O(N d²)")
class CastlingAttention(AttentionMethod):
    """Linear-angular attention; see the module docstring.

    ``variant="paper"`` (default): the kernel normalised over the keys; ``"official"``: the
    authors' ½·v_i + q̂(K̂ᵀV)/π divided by its row L2 norm, plus a 9×1 conv of v along the tokens.
    """

    def __init__(self, heads: int, head_dim: int, variant: str = "paper", seed: int = 0):
        super().__init__(heads, head_dim)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.variant, self.seed = variant, int(seed)
        if variant == "official":
            gen = torch.Generator().manual_seed(self.seed)
            bound = 1.0 / math.sqrt(CONV_TAPS)  # fan_in = 9, as PyTorch's default uniform init
            w = torch.empty(heads, 1, CONV_TAPS, 1).uniform_(-bound, bound, generator=gen)
            self.conv_weight = torch.nn.Parameter(w)

    def forward(self, q, k, v, grid=None):
        qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)   # (B, H, N, d)
        kv = kn.transpose(-1, -2) @ v                              # (B, H, d, d)
        if self.variant == "official":
            x = 0.5 * v + (qn @ kv) / math.pi                      # (B, H, N, d)
            return F.normalize(x, dim=-1) + token_conv(v, self.conv_weight)  # a zero row stays zero
        n = k.shape[-2]
        num = 0.5 * v.sum(dim=-2, keepdim=True) + (qn @ kv) / math.pi
        ksum = kn.sum(dim=-2).unsqueeze(-1)                        # (B, H, d, 1)
        den = 0.5 * n + (qn @ ksum) / math.pi                      # (B, H, N, 1)
        return num / den

    def macs(self, batch, n, grid=None):
        d = self.head_dim
        if self.variant == "official":
            return batch * self.heads * n * (2 * d * d + CONV_TAPS * d)
        return batch * self.heads * n * (2 * d * d + d)

    def attention_matrix(self, q, k, v, grid=None):
        """Row-normalised kernel (B, H, N, N); None for ``official`` (not a weighted average)."""
        if self.variant == "official":
            return None
        s = angular_similarity(q, k)
        return s / s.sum(dim=-1, keepdim=True)
