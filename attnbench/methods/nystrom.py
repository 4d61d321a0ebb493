"""Nyströmformer (Xiong et al., AAAI 2021): softmax attention through m landmarks, O(N·m·d + m³).

With landmarks Q̃, K̃ (m, d): F = softmax(Q K̃ᵀ/√d) (N, m), A = softmax(Q̃ K̃ᵀ/√d) (m, m),
B = softmax(Q̃ Kᵀ/√d) (m, N), and out = F (A⁺ (B V)), A⁺ the Moore–Penrose pseudo-inverse by
the iterative method of the paper: Z₀ = Aᵀ / (‖A‖₁‖A‖∞), then
Z ← ¼ Z (13I − AZ (15I − AZ (7I − AZ))), ``pinv_iters`` times (default 6, as in the paper).

``init`` chooses Z₀: ``"paper"`` (default) takes ‖A‖₁‖A‖∞ of each (batch, head) matrix;
``"official"`` (the default of the authors' code) divides by one scalar for the whole batch and
all heads, the largest column sum of A over all of them (A is row-stochastic, so ‖A‖∞ = 1).
With ``official`` a row's output depends on the other inputs in the batch.

Landmarks are segment means of the token sequence: N = m·s + r splits into r segments of s+1
tokens followed by m − r segments of s tokens (the paper needs m | N; these uneven segments
do not). ``fit_closed`` replaces them by fixed per-head k-means centroids of fitting queries
and keys. The optional depthwise-conv skip of the authors' code is not included.

m = N: the landmarks are the tokens and F = A = B = S, the exact attention matrix, so the
output is S S⁺ S V = S V exactly when A⁺ is accurate. A is then an N×N softmax matrix whose
small singular values take more than 6 iterations to resolve (each iteration multiplies a tiny
eigenvalue of AZ by about 13/4): at m = N, 6 iterations leave a relative error of 1e-2 to 1e-1
and about 12–15 are needed for 1e-3, so the m = N test uses ``pinv_iters=20``; the default
stays at the paper's 6 (tests/test_methods_b.py checks both).
"""
from __future__ import annotations

from typing import Any

import torch

from attnbench.methods._cluster import heads_as_point_sets, kmeans
from attnbench.methods.base import AttentionMethod
from attnbench.registry import register


def segment_means(x: torch.Tensor, m: int) -> torch.Tensor:
    """(B, H, N, d) -> (B, H, m, d): means of m contiguous segments, the first N mod m one longer."""
    n = int(x.shape[-2])  # a traced shape arrives as a tensor
    s, r = divmod(n, m)
    lead, d = x.shape[:-2], x.shape[-1]
    long_part = x[..., : r * (s + 1), :].reshape(*lead, r, s + 1, d).mean(-2)    # (B, H, r, d)
    if s == 0:
        return long_part
    short_part = x[..., r * (s + 1):, :].reshape(*lead, m - r, s, d).mean(-2)    # (B, H, m-r, d)
    return torch.cat([long_part, short_part], dim=-2)


INITS = ("paper", "official")


def pinv_initial_guess(a: torch.Tensor, init: str = "paper") -> torch.Tensor:
    """Z₀ (..., m, m): Aᵀ / (‖A‖₁‖A‖∞) per matrix (``paper``) or Aᵀ / max column sum of all
    matrices together (``official``)."""
    if init == "official":
        return a.transpose(-1, -2) / a.sum(-2).amax()
    if init != "paper":
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    norm_1 = a.abs().sum(-2).amax(-1)                            # (...,) max column sum
    norm_inf = a.abs().sum(-1).amax(-1)                          # (...,) max row sum
    return a.transpose(-1, -2) / (norm_1 * norm_inf)[..., None, None]


def newton_schulz_pinv(a: torch.Tensor, iters: int, init: str = "paper") -> torch.Tensor:
    """Iterative Moore–Penrose pseudo-inverse of each (m, m) matrix in a (..., m, m); 4·m³ MACs/iter."""
    z = pinv_initial_guess(a, init)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_kernels(q, k, q_land, k_land, scale):
    """F (B, H, N, m), A (B, H, m, m), B (B, H, m, N) of the Nyström factorisation."""
    f = torch.softmax((q @ k_land.transpose(-1, -2)) * scale, dim=-1)
    a = torch.softmax((q_land @ k_land.transpose(-1, -2)) * scale, dim=-1)
    b = torch.softmax((q_land @ k.transpose(-1, -2)) * scale, dim=-1)
    return f, a, b


@register("nystrom", family="nystrom", budget="m", defaults={"m": 30, "init": "paper"},
          description="Nyströmformer: m segment-mean landmarks, iterative pseudo-inverse")
class NystromAttention(AttentionMethod):
    """m landmarks; ``pinv_iters`` Newton–Schulz steps (6); ``fit_closed`` fixes the landmarks.

    ``init="paper"`` (default): per-matrix initial guess; ``"official"``: the authors' default,
    one scalar over the whole batch and all heads.
    """

    def __init__(self, heads: int, head_dim: int, m: int = 30, pinv_iters: int = 6, seed: int = 0,
                 init: str = "paper"):
        super().__init__(heads, head_dim)
        if int(m) <= 0 or int(pinv_iters) < 0:
            raise ValueError(f"m must be positive and pinv_iters >= 0, got m={m}, pinv_iters={pinv_iters}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.m, self.pinv_iters, self.seed, self.init = int(m), int(pinv_iters), int(seed), init
        self.register_buffer("fitted_q", None)   # (H, m, d) after fit_closed
        self.register_buffer("fitted_k", None)

    def landmarks(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, m, d) query and key landmarks: fitted centroids if set, else segment means."""
        if self.fitted_q is None:
            return segment_means(q, self.m), segment_means(k, self.m)
        shape = (q.shape[0], *self.fitted_q.shape)
        return (self.fitted_q.to(q.dtype).expand(shape), self.fitted_k.to(k.dtype).expand(shape))

    def factors(self, q, k):
        """F (B, H, N, m), A⁺ (B, H, m, m), B (B, H, m, N)."""
        f, a, b = nystrom_kernels(q, k, *self.landmarks(q, k), self.scale)
        return f, newton_schulz_pinv(a, self.pinv_iters, self.init), b

    def forward(self, q, k, v, grid=None):
        f, a_pinv, b = self.factors(q, k)
        return f @ (a_pinv @ (b @ v))                            # (B, H, N, d)

    def attention_matrix(self, q, k, v, grid=None):
        f, a_pinv, b = self.factors(q, k)
        return (f @ a_pinv) @ b                                  # (B, H, N, N)

    def macs(self, batch, n, grid=None):
        m, d = self.m, self.head_dim
        # q k̃ᵀ, q̃ kᵀ, B v, F (A⁺ B v): 4·N·m·d; q̃ k̃ᵀ and A⁺ (B v): 2·m²·d; pinv: 4·m³ per step
        per_head = 4 * n * m * d + 2 * m * m * d + 4 * self.pinv_iters * m ** 3
        return batch * self.heads * per_head

    def fit_closed(self, q, k, v, grid=None, iters=20) -> dict[str, Any]:
        """Landmarks := per-head k-means centroids (k-means++, ``iters`` Lloyd steps, ``seed``)
        of the fitting queries and keys (B, H, N, d); later calls use them instead of segment
        means. ``reset_fit()`` goes back to segment means."""
        fq = kmeans(heads_as_point_sets(q), self.m, iters, self.seed)
        fk = kmeans(heads_as_point_sets(k), self.m, iters, self.seed)
        self.fitted_q, self.fitted_k = fq.centroids.detach(), fk.centroids.detach()
        return {"kind": "kmeans", "m": self.m, "iters": iters, "seed": self.seed,
                "iters_run_q": fq.iters, "iters_run_k": fk.iters, "fit_tokens": q.shape[0] * q.shape[2],
                "inertia_q": fq.inertia.tolist(), "inertia_k": fk.inertia.tolist()}

    def reset_fit(self) -> None:
        self.fitted_q = self.fitted_k = None
