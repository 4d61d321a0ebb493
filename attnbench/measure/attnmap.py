"""Attention-map metrics: how far a method's implied N×N matrix is from exact softmax attention.

For each query row i, with p_i the exact row softmax(q_i kᵀ/√d) and a_i the method's row
(``attention_matrix``), in float64 and in query blocks:

* ``attn_tv_mean``: mean over rows of ½ Σ_j |p_ij − a_ij| (total variation; a_i as given, so
  signed or unnormalised rows, as Nyström's, count as they are);
* ``attn_kl_mean``: mean over rows of KL(p_i ‖ ã_i) = Σ_j p_ij (log p_ij − log ã_ij), where
  ã_i = (max(a_i, 0) + ε) / Σ_j (max(a_ij, 0) + ε) with ε = ``KL_EPS`` per entry, so that an
  exact zero (a key the method never looks at) costs about log(1/ε) per unit of exact mass on it.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from attnbench.spec import one_line

KL_EPS = 1e-10
MAX_N = 4096


def _block_metrics(logp: torch.Tensor, approx: torch.Tensor) -> tuple[float, float]:
    """Summed KL and TV over the rows of one block; logp, approx: (H, b, N) float64."""
    p = logp.exp()
    tv = 0.5 * (p - approx).abs().sum(-1)                                  # (H, b)
    a = approx.clamp_min(0) + KL_EPS
    log_a = a.log() - a.sum(-1, keepdim=True).log()
    kl = (p * (logp - log_a)).sum(-1)                                       # (H, b)
    return float(kl.sum()), float(tv.sum())


def attn_map_metrics(module: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     grid: tuple[int, int] | None, max_n: int = MAX_N, block: int = 256) -> dict[str, Any]:
    """Row fields attn_kl_mean, attn_tv_mean and attn_map_reason (None when both were computed).

    q, k, v: (B, H, N, d). The implied matrix is formed one batch element at a time. A failure
    (e.g. out of memory) leaves both metrics null with the failure as the reason.
    """
    try:
        return _attn_map_metrics(module, q, k, v, grid, max_n, block)
    except Exception as exc:
        return {"attn_kl_mean": None, "attn_tv_mean": None,
                "attn_map_reason": f"attention-map metrics failed: {one_line(exc)}"}


def _attn_map_metrics(module, q, k, v, grid, max_n, block) -> dict[str, Any]:
    b, h, n, d = q.shape
    empty = {"attn_kl_mean": None, "attn_tv_mean": None}
    if n > max_n:
        return {**empty, "attn_map_reason": f"n={n} > {max_n}: the N×N attention matrix is not formed"}
    scale = 1.0 / math.sqrt(d)
    kl_sum = tv_sum = 0.0
    for bi in range(b):
        with torch.no_grad():
            mat = module.attention_matrix(q[bi:bi + 1], k[bi:bi + 1], v[bi:bi + 1], grid)
        if mat is None:
            return {**empty, "attn_map_reason": f"{type(module).__name__} has no implied attention matrix"}
        if tuple(mat.shape) != (1, h, n, n) or not bool(torch.isfinite(mat).all()):
            return {**empty, "attn_map_reason": f"attention_matrix gave shape {tuple(mat.shape)} "
                                                f"or non-finite values; expected finite (1, {h}, {n}, {n})"}
        q64, k64 = q[bi].double(), k[bi].double()                           # (H, N, d)
        for s in range(0, n, block):
            logp = torch.log_softmax((q64[:, s:s + block] @ k64.transpose(-1, -2)) * scale, dim=-1)
            kl, tv = _block_metrics(logp, mat[0, :, s:s + block].double())
            kl_sum, tv_sum = kl_sum + kl, tv_sum + tv
        del mat
    rows = b * h * n
    return {"attn_kl_mean": kl_sum / rows, "attn_tv_mean": tv_sum / rows, "attn_map_reason": None}
