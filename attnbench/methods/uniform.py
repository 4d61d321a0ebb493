"""The null model of the error: every token gets the mean of the values, ignoring q and k.

out_i = (1/N) Σ_j v_j, i.e. the attention matrix with every entry 1/N. It does no matrix
product, so its analytic MAC count is 0. A method's ``err_skill`` compares its error with
this one on the same inputs.
"""
from __future__ import annotations

import torch

from attnbench.methods.base import AttentionMethod
from attnbench.registry import register


def uniform_attention(v: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) -> (B, H, N, d), every row the mean of v over the N tokens."""
    return v.mean(dim=-2, keepdim=True).expand_as(v)


@register("uniform", family="null", uses_query=False,
          description="null model: out_i = mean_j v_j (ignores q and k), O(N)")
class UniformAttention(AttentionMethod):
    """Uniform attention; the reference point of err_skill."""

    def forward(self, q, k, v, grid=None):
        return uniform_attention(v)

    def macs(self, batch, n, grid=None):
        return 0

    def attention_matrix(self, q, k, v, grid=None):
        b, h, n, _ = v.shape
        return torch.full((b, h, n, n), 1.0 / n, dtype=v.dtype, device=v.device)
