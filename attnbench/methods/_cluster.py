"""k-means (k-means++ seeding, Lloyd iterations) per head, for closed-form token fitting."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KMeansFit:
    """Centroids (H, m, d), the final inertia per head (H,) and the iterations run."""

    centroids: torch.Tensor
    inertia: torch.Tensor
    iters: int


def heads_as_point_sets(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) fitting data -> (H, B*N, d): every batch element's tokens pooled per head."""
    b, h, n, d = x.shape
    return x.transpose(0, 1).reshape(h, b * n, d)


def sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances (..., P, m) between points x (..., P, d) and centres c (..., m, d), clamped at 0."""
    d2 = (x * x).sum(-1, keepdim=True) - 2 * x @ c.transpose(-1, -2) + (c * c).sum(-1).unsqueeze(-2)
    return d2.clamp_min(0)


def kmeans_pp_init(x: torch.Tensor, m: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: (H, m, d) centres drawn from x (H, P, d) with probability ∝ D²."""
    h, p, d = x.shape
    first = torch.randint(p, (h,), generator=gen)
    centres = [x[torch.arange(h), first]]                        # list of (H, d)
    d2 = sq_dist(x, centres[0].unsqueeze(1)).squeeze(-1)        # (H, P)
    for _ in range(1, m):
        weights = d2.double().cpu()
        flat = weights.sum(-1, keepdim=True) <= 0                # all points already chosen
        weights = torch.where(flat, torch.ones_like(weights), weights)
        pick = torch.multinomial(weights, 1, generator=gen).squeeze(-1).to(x.device)  # (H,)
        centres.append(x[torch.arange(h), pick])
        d2 = torch.minimum(d2, sq_dist(x, centres[-1].unsqueeze(1)).squeeze(-1))
    return torch.stack(centres, dim=1)                           # (H, m, d)


def lloyd_step(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """One Lloyd update; a centre that loses all its points stays where it was."""
    assign = sq_dist(x, c).argmin(-1)                           # (H, P)
    onehot = torch.nn.functional.one_hot(assign, c.shape[1]).to(x.dtype)  # (H, P, m)
    counts = onehot.sum(1).unsqueeze(-1)                         # (H, m, 1)
    sums = onehot.transpose(-1, -2) @ x                          # (H, m, d)
    return torch.where(counts > 0, sums / counts.clamp_min(1), c)


def kmeans(x: torch.Tensor, m: int, iters: int = 20, seed: int = 0) -> KMeansFit:
    """k-means of the point sets x (H, P, d) into m clusters each, deterministic for a seed.

    Computed in float64; stops early when no centre moves. Needs P >= 1; when P < m some
    centres coincide (k-means++ then draws uniformly among points already chosen).
    """
    if m <= 0 or iters < 0:
        raise ValueError(f"kmeans needs m > 0 and iters >= 0, got m={m}, iters={iters}")
    x64 = x.detach().double()
    gen = torch.Generator().manual_seed(seed)
    c = kmeans_pp_init(x64, m, gen)
    done = 0
    for done in range(1, iters + 1):
        new = lloyd_step(x64, c)
        moved = not torch.equal(new, c)
        c = new
        if not moved:
            break
    inertia = sq_dist(x64, c).min(-1).values.sum(-1)            # (H,)
    return KMeansFit(centroids=c.to(x.dtype), inertia=inertia, iters=done if iters else 0)
