"""Anchor attention (AnchorFormer, Eq. 13-14): a bipartite token-anchor attention, O(N·m·d).

A[i, j] = softmax_j(u_j · k_i / √d) over the m anchors (rows sum to 1), Δ = diag(Aᵀ 1),
out = A (Δ⁻¹ (Aᵀ v)). The implied token-token matrix S_t = A Δ⁻¹ Aᵀ is row-stochastic and
is never formed. The queries are not used.
"""
from __future__ import annotations

import torch

from attnbench.methods.anchor_fit import anchor_fixed_point, summarise_history
from attnbench.methods.base import AttentionMethod
from attnbench.registry import register


def anchor_weights(anchors: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """A: (B, H, N, m) softmax over anchors. ``anchors`` is (m, d), (H, m, d) or (B, H, m, d)."""
    while anchors.dim() < k.dim():
        anchors = anchors.unsqueeze(0)
    anchors = anchors.expand(*k.shape[:-2], *anchors.shape[-2:])  # (B, H, m, d)
    logits = (k @ anchors.transpose(-1, -2)) * scale             # (B, H, N, m)
    return torch.softmax(logits, dim=-1)


def safe_column_sums(a: torch.Tensor) -> torch.Tensor:
    """Δ as a (B, H, m, 1) divisor, with empty columns (sum 0) replaced by 1.

    An empty column also has a zero row in Aᵀ v, so the quotient is exactly 0, never inf/NaN.
    """
    delta = a.sum(dim=-2).unsqueeze(-1)                          # (B, H, m, 1)
    return torch.where(delta > 0, delta, torch.ones_like(delta))


def anchor_apply(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """out = A (Δ⁻¹ (Aᵀ v)) in that order: M1 = Aᵀ v, M2 = Δ⁻¹ M1, M3 = A M2."""
    m1 = a.transpose(-1, -2) @ v                                 # (B, H, m, d)
    m2 = m1 / safe_column_sums(a)
    return a @ m2                                                # (B, H, N, d)


def anchor_attention(anchors: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return anchor_apply(anchor_weights(anchors, k, scale), v)


def anchor_matrix(a: torch.Tensor) -> torch.Tensor:
    """The implied (B, H, N, N) token-token matrix S_t = A Δ⁻¹ Aᵀ (Eq. 10); small N only."""
    return (a / safe_column_sums(a).transpose(-1, -2)) @ a.transpose(-1, -2)


def _anchor_macs(batch: int, heads: int, n: int, m: int, head_dim: int) -> int:
    return 3 * batch * heads * n * m * head_dim  # logits, Aᵀv, A·M2


@register("anchor", family="anchor", budget="m", uses_query=False, defaults={"m": 30},
          description="AnchorFormer differentiable anchors, A Δ⁻¹ (Aᵀ V)")
class AnchorAttention(AttentionMethod):
    """Learnable anchors (heads, m, head_dim), or one shared (m, head_dim) set with shared=True."""

    def __init__(self, heads: int, head_dim: int, m: int = 30, shared: bool = False, seed: int = 0):
        super().__init__(heads, head_dim)
        if int(m) <= 0:
            raise ValueError(f"m must be positive, got {m}")
        self.m = int(m)
        self.shared = bool(shared)
        gen = torch.Generator().manual_seed(seed)
        shape = (self.m, head_dim) if self.shared else (heads, self.m, head_dim)
        self.anchors = torch.nn.Parameter(torch.randn(shape, generator=gen))

    def forward(self, q, k, v, grid=None):
        anchors = self.anchors.to(dtype=k.dtype)
        return anchor_attention(anchors, k, v, self.scale)

    def macs(self, batch, n, grid=None):
        return _anchor_macs(batch, self.heads, n, self.m, self.head_dim)

    def attention_matrix(self, q, k, v, grid=None):
        return anchor_matrix(anchor_weights(self.anchors.to(dtype=k.dtype), k, self.scale))

    def fit_closed(self, q, k, v, grid=None, iters=20):
        """Eq. 5-6 fixed point from k-means++ on the keys: per head, or over all heads if shared."""
        d = k.shape[-1]
        groups = [k.transpose(0, 1).reshape(-1, d)] if self.shared else \
            [k[:, h].reshape(-1, d) for h in range(k.shape[1])]             # (B·N, d) each
        fitted, hist = [], []
        for g, keys in enumerate(groups):
            u, h_info = anchor_fixed_point(keys, self.m, iters, self.scale, seed=g)
            fitted.append(u)
            hist.append(h_info)
        new = fitted[0] if self.shared else torch.stack(fitted)
        self.anchors.data.copy_(new.to(self.anchors))
        return {"method": "eq6_fixed_point", "init": "kmeans++", "iters": iters, **summarise_history(hist)}


def select_anchor_indices(q: torch.Tensor, m: int, select: str, seed: int = 0) -> torch.Tensor:
    """Indices (B, H, m) of the queries used as anchors."""
    b, h, n, _ = q.shape
    if select == "strided":
        idx = torch.div(torch.arange(m, device=q.device) * n, m, rounding_mode="floor")
        return idx.expand(b, h, m)
    if select == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(n, generator=gen)[:m].to(q.device).expand(b, h, m)
    if select == "topnorm":
        return q.norm(dim=-1).topk(m, dim=-1).indices
    raise ValueError(f"select must be strided, random or topnorm, got {select!r}")


@register("anchor-select", family="anchor", budget="m", defaults={"m": 30, "select": "strided"},
          description="basic anchor attention, anchors chosen among the queries (Fig. 3a)")
class AnchorSelect(AttentionMethod):
    """Non-differentiable anchors: m of the queries, picked by ``select`` (strided|random|topnorm)."""

    def __init__(self, heads: int, head_dim: int, m: int = 30, select: str = "strided", seed: int = 0):
        super().__init__(heads, head_dim)
        if int(m) <= 0:
            raise ValueError(f"m must be positive, got {m}")
        if select not in ("strided", "random", "topnorm"):
            raise ValueError(f"select must be strided, random or topnorm, got {select!r}")
        self.m, self.select, self.seed = int(m), select, seed
        self._index_cache: dict = {}

    def selected_anchors(self, q: torch.Tensor) -> torch.Tensor:
        """The chosen queries, (B, H, m, d)."""
        if self.select == "topnorm":
            idx = select_anchor_indices(q, self.m, self.select, self.seed)       # (B, H, m)
        else:  # input-independent: computed once per shape and device, not in every call
            key = (tuple(q.shape), q.device)
            if key not in self._index_cache:
                self._index_cache[key] = select_anchor_indices(q, self.m, self.select, self.seed)
            idx = self._index_cache[key]
        return torch.gather(q, 2, idx.unsqueeze(-1).expand(*idx.shape, q.shape[-1]))

    def forward(self, q, k, v, grid=None):
        return anchor_attention(self.selected_anchors(q), k, v, self.scale)

    def macs(self, batch, n, grid=None):
        return _anchor_macs(batch, self.heads, n, self.m, self.head_dim)

    def attention_matrix(self, q, k, v, grid=None):
        return anchor_matrix(anchor_weights(self.selected_anchors(q), k, self.scale))
