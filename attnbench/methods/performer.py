"""Performer FAVOR+ (Choromanski et al., 2021): positive orthogonal random features.

exp(q·k/√d) is estimated by φ(q)·φ(k) with φ(x) = exp(W x' − ‖x'‖²/2)/√m, x' = x / d^(1/4),
W (m, d) built from blocks of random orthogonal rows, each row rescaled to the norm of a
Gaussian vector (so rows are marginally Gaussian). out = φ(Q)(φ(K)ᵀV) / (φ(Q)·Σ_j φ(K_j)),
O(N·m·d). ``features`` m defaults to ⌈d ln d⌉ (at least 1); W is drawn once from ``seed`` and
never redrawn (a buffer, shared by all heads).

Numerical stabilisers as in the authors' code: each query's features are divided by
exp(max over its m projections), all keys' features of one (batch, head) by exp(max over keys
and features) — both cancel in the normalisation — and ``eps`` (1e-6) is added to every
feature so that no key has exactly zero weight. ``stabilizer`` sets the denominator
R = φ(Q)·Σ_j φ(K_j): ``"official"`` (default) uses R + 2·eps·(|R| <= eps), as the authors' code
does, so a row whose features all underflowed is divided by about 2·eps, not by a tiny R;
``"none"`` divides by R itself.

MACs: the projections Q'Wᵀ and K'Wᵀ (N·d·m each), φ(K)ᵀV and φ(Q) times it (N·m·d each), and
the normaliser φ(Q)·Σφ(K) (N·m), per batch and head.
"""
from __future__ import annotations

import math

import torch

from attnbench.methods.base import AttentionMethod
from attnbench.registry import register


def default_features(head_dim: int) -> int:
    return max(1, math.ceil(head_dim * math.log(head_dim)))


def orthogonal_gaussian(m: int, d: int, seed: int) -> torch.Tensor:
    """(m, d) float64: stacked d x d orthogonal blocks (QR of Gaussians, signs fixed by diag(R)
    so that each block is a uniformly random rotation; without the fix the row directions are
    not uniform and the estimate is biased), rows scaled by the norms of independent
    d-dimensional Gaussian vectors."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(math.ceil(m / d), d, d, generator=gen, dtype=torch.float64)
    qr = torch.linalg.qr(g)                                        # one QR per d x d block
    haar = qr.Q * torch.sign(torch.diagonal(qr.R, dim1=-2, dim2=-1)).unsqueeze(-2)  # uniform rotations
    w = haar.transpose(-1, -2).reshape(-1, d)[:m]                  # (m, d) orthonormal rows per block
    norms = torch.randn(m, d, generator=gen, dtype=torch.float64).norm(dim=-1)
    return w * norms.unsqueeze(-1)


def favor_features(x: torch.Tensor, w: torch.Tensor, is_query: bool, eps: float) -> torch.Tensor:
    """(B, H, N, d) -> (B, H, N, m) positive features, stabilised (see the module docstring)."""
    d, m = x.shape[-1], w.shape[0]
    x = x * d ** -0.25
    proj = x @ w.transpose(-1, -2)                                 # (B, H, N, m)
    sq = (x * x).sum(dim=-1, keepdim=True) / 2                     # (B, H, N, 1)
    dims = (-1,) if is_query else (-2, -1)
    stab = proj.detach().amax(dim=dims, keepdim=True)
    return (torch.exp(proj - sq - stab) + eps) / math.sqrt(m)


STABILIZERS = ("official", "none")


def stabilized_denominator(r: torch.Tensor, eps: float, stabilizer: str) -> torch.Tensor:
    """R + 2·eps·(|R| <= eps) for ``official``, R unchanged for ``none``."""
    if stabilizer == "none":
        return r
    if stabilizer != "official":
        raise ValueError(f"stabilizer must be one of {', '.join(STABILIZERS)}, got {stabilizer!r}")
    return r + 2 * eps * (r.abs() <= eps).to(r.dtype)


@register("performer", family="linear", defaults={"features": None, "seed": 0, "stabilizer": "official"},
          description="Performer FAVOR+, positive orthogonal random features (no redraw)")
class PerformerAttention(AttentionMethod):
    """FAVOR+ with ``features`` random features; see the module docstring.

    ``stabilizer="official"`` (default): denominator R + 2·eps·(|R| <= eps) as the authors' code;
    ``"none"``: R.
    """

    def __init__(self, heads: int, head_dim: int, features: int | None = None, seed: int = 0,
                 eps: float = 1e-6, stabilizer: str = "official"):
        super().__init__(heads, head_dim)
        m = default_features(head_dim) if features is None else int(features)
        if m <= 0:
            raise ValueError(f"features must be positive, got {features}")
        if stabilizer not in STABILIZERS:
            raise ValueError(f"stabilizer must be one of {', '.join(STABILIZERS)}, got {stabilizer!r}")
        self.features, self.seed, self.eps, self.stabilizer = m, int(seed), float(eps), stabilizer
        self.register_buffer("projection", orthogonal_gaussian(m, head_dim, self.seed).float())

    def feature_maps(self, q, k):
        w = self.projection.to(q.dtype)
        return favor_features(q, w, True, self.eps), favor_features(k, w, False, self.eps)

    def forward(self, q, k, v, grid=None):
        fq, fk = self.feature_maps(q, k)                           # (B, H, N, m)
        kv = fk.transpose(-1, -2) @ v                              # (B, H, m, d)
        z = fk.sum(dim=-2).unsqueeze(-1)                           # (B, H, m, 1)
        return (fq @ kv) / stabilized_denominator(fq @ z, self.eps, self.stabilizer)

    def macs(self, batch, n, grid=None):
        d, m = self.head_dim, self.features
        return batch * self.heads * n * m * (4 * d + 1)

    def attention_matrix(self, q, k, v, grid=None):
        """(B, H, N, N) the implied kernel matrix φ(Q)φ(K)ᵀ divided by the (stabilised) row sum."""
        fq, fk = self.feature_maps(q, k)
        a = fq @ fk.transpose(-1, -2)
        return a / stabilized_denominator(a.sum(dim=-1, keepdim=True), self.eps, self.stabilizer)
