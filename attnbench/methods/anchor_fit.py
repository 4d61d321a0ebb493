"""The closed-form fit of anchor attention (AnchorFormer Eq. 4-6), used by ``anchor --fit closed``.

With p(u_j|v_i) = softmax_j(u_j·k_i/√d) (Eq. 4), the objective of Eq. 5 is
J(U) = Σ_i Σ_j p(u_j|v_i) ‖u_j − k_i‖², and setting its derivative in u (p held fixed) to zero
gives Eq. 6, u_j = Σ_i p(u_j|v_i) k_i / Σ_i p(u_j|v_i). ``anchor_fixed_point`` iterates Eq. 6
from a k-means++ start. Because p is a softmax of inner products rather than the minimiser of J
over p, an Eq. 6 step need not lower J: the history records whether it did.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from attnbench.methods._cluster import kmeans_pp_init, sq_dist


def anchor_probs(u: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """Eq. 4: (P, m) p(u_j|v_i) = softmax over the m anchors u (m, d) of u_j·k_i·scale, keys (P, d)."""
    return torch.softmax(keys @ u.T * scale, dim=-1)


def eq5_objective(u: torch.Tensor, keys: torch.Tensor, scale: float) -> float:
    """Eq. 5: Σ_i Σ_j p(u_j|v_i) ‖u_j − k_i‖² with p from Eq. 4 at the same anchors."""
    return float((anchor_probs(u, keys, scale) * sq_dist(keys, u)).sum())


def eq6_update(u: torch.Tensor, keys: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Eq. 6 with p (P, m) given. An anchor whose column of p is empty (all zero) stays put."""
    mass = p.sum(0)[:, None]                                            # (m, 1)
    new = (p.T @ keys) / mass.clamp_min(torch.finfo(keys.dtype).tiny)   # (m, d)
    return torch.where(mass > 0, new, u)


def eq6_step(u: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """One Eq. 6 update, p from Eq. 4 at the current anchors: u (m, d), keys (P, d)."""
    return eq6_update(u, keys, anchor_probs(u, keys, scale))


def anchor_fixed_point(keys: torch.Tensor, m: int, iters: int = 20, scale: float | None = None,
                       seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Anchors (m, d) for keys (P, d): k-means++ start, then ``iters`` Eq. 6 updates (float64).

    The history holds J (Eq. 5) at the start and after every update, and the relative size
    of each update, max_j ‖Δu_j‖ / max_i ‖k_i‖.
    """
    x = keys.detach().double()
    scale = 1.0 / math.sqrt(x.shape[-1]) if scale is None else scale
    gen = torch.Generator().manual_seed(seed)                           # a CPU generator
    u = kmeans_pp_init(x.cpu()[None], m, gen)[0].to(x.device)           # (m, d)
    p = anchor_probs(u, x, scale)                                       # (P, m)
    objective = [float((p * sq_dist(x, u)).sum())]
    updates = []
    key_norm = float(x.norm(dim=-1).max()) or 1.0
    for _ in range(iters):
        new = eq6_update(u, x, p)
        updates.append(float((new - u).norm(dim=-1).max()) / key_norm)
        u, p = new, anchor_probs(new, x, scale)
        objective.append(float((p * sq_dist(x, u)).sum()))
    monotone = all(b <= a * (1 + 1e-12) for a, b in zip(objective, objective[1:]))
    return u, {"objective": objective, "update_rel": updates, "monotone": monotone}


def summarise_history(hist: list[dict[str, Any]]) -> dict[str, Any]:
    """A row-sized summary of several fixed-point histories (one per head, or one shared)."""
    return {
        "objective_start": sum(h["objective"][0] for h in hist),
        "objective_end": sum(h["objective"][-1] for h in hist),
        "monotone": all(h["monotone"] for h in hist),
        "last_update_rel": max((h["update_rel"][-1] for h in hist if h["update_rel"]), default=None),
    }
