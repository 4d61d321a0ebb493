"""Neighbourhood attention, 2-D (NAT: Hassani et al., 2023), in plain PyTorch.

The N tokens are an H x W grid in row-major order. Query (i, j) attends with softmax(q kᵀ/√d) to
the ``kernel`` x ``kernel`` keys of its neighbourhood. At the borders the neighbourhood is not
cut but slid inwards, as NATTEN does: along each axis it starts at
clamp(i - kernel // 2, 0, side - kernel), so every query sees exactly kernel² keys. A kernel side
never exceeds the grid side (along a shorter axis the neighbourhood is the whole axis), so
``kernel`` >= both grid sides is exact attention. No dilation, no relative position bias.

MACs: q kᵀ and P v over the kernel² keys of every query: 2 · B · heads · N · kernel_h · kernel_w · d.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from attnbench.methods._grid import checked_grid
from attnbench.methods.base import AttentionMethod
from attnbench.methods.sparsifiner import query_blocks
from attnbench.registry import register

GATHER_BLOCK_ELEMENTS = 1 << 22  # B·H·b·kernel²·d gathered keys (and values) per query block


def window_starts(side: int, kernel: int) -> torch.Tensor:
    """(side,) first neighbour along one axis: i - kernel // 2, slid inside [0, side - kernel]."""
    return torch.clamp(torch.arange(side) - kernel // 2, 0, side - kernel)


@lru_cache(maxsize=32)
def neighbour_index(h: int, w: int, kernel: int) -> torch.Tensor:
    """(N, kh · kw) long: the token ids each query attends to, kh = min(kernel, h), kw likewise."""
    kh, kw = min(kernel, h), min(kernel, w)
    rows = window_starts(h, kh)[:, None] + torch.arange(kh)        # (h, kh)
    cols = window_starts(w, kw)[:, None] + torch.arange(kw)        # (w, kw)
    ids = rows[:, None, :, None] * w + cols[None, :, None, :]      # (h, w, kh, kw)
    return ids.reshape(h * w, kh * kw)


def neighbour_mask(h: int, w: int, kernel: int) -> torch.Tensor:
    """(N, N) bool: True where query i attends to key j."""
    idx = neighbour_index(h, w, kernel)
    mask = torch.zeros(h * w, h * w, dtype=torch.bool)
    return mask.scatter_(1, idx, True)


@register("neighborhood", family="window", needs_grid=True, defaults={"kernel": 7},
          description="2-D neighbourhood attention (NAT): kernel×kernel keys around each query, slid inside at borders")
class NeighborhoodAttention(AttentionMethod):
    """Each query attends to the ``kernel`` x ``kernel`` keys around it; see the module docstring."""

    def __init__(self, heads: int, head_dim: int, kernel: int = 7):
        super().__init__(heads, head_dim)
        if int(kernel) <= 0:
            raise ValueError(f"kernel must be positive, got {kernel}")
        self.kernel = int(kernel)

    def index(self, n: int, grid, device) -> torch.Tensor:
        """(N, K) neighbour token ids on ``device``."""
        h, w = checked_grid(n, grid)
        return neighbour_index(h, w, self.kernel).to(device)

    def _block(self, q_blk, k, v, idx_blk):
        """Probabilities (B, H, b, K) and outputs (B, H, b, d) of a block of queries."""
        k_sel, v_sel = k[..., idx_blk, :], v[..., idx_blk, :]                    # (B, H, b, K, d)
        logits = (q_blk.unsqueeze(-2) @ k_sel.transpose(-1, -2)).squeeze(-2) * self.scale
        p = torch.softmax(logits, dim=-1)                                          # (B, H, b, K)
        return p, (p.unsqueeze(-2) @ v_sel).squeeze(-2)

    def _run(self, q, k, v, grid, probs=None):
        idx = self.index(q.shape[-2], grid, q.device)
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        per_query = q.shape[0] * self.heads * idx.shape[1] * q.shape[-1]
        for s, e in query_blocks(q.shape[-2], per_query, GATHER_BLOCK_ELEMENTS):
            p, out[..., s:e, :] = self._block(q[..., s:e, :], k, v, idx[s:e])
            if probs is not None:
                probs[..., s:e, :].scatter_(-1, idx[s:e].expand(*p.shape), p)
        return out

    def forward(self, q, k, v, grid=None):
        return self._run(q, k, v, grid)                                            # (B, H, N, d)

    def attention_matrix(self, q, k, v, grid=None):
        probs = torch.zeros(*q.shape[:-1], q.shape[-2], dtype=q.dtype, device=q.device)
        self._run(q, k, v, grid, probs)
        return probs

    def backend_info(self, q, k, v, grid=None):
        """Only needed pairs are computed: their MACs are the row's (for kernel efficiency)."""
        return {"macs_needed_pairs": self.macs(q.shape[0], q.shape[-2], grid)}

    def macs(self, batch, n, grid=None):
        h, w = checked_grid(n, grid)
        return 2 * batch * self.heads * n * min(self.kernel, h) * min(self.kernel, w) * self.head_dim
