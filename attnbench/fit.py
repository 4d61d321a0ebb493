"""Fitting a method's learnable state before it is measured: closed form and distillation.

Closed form for anchors (AnchorFormer Eq. 4-6): with p(u_j|v_i) = softmax_j(u_j·k_i/√d)
(Eq. 4), the objective of Eq. 5 is J(U) = Σ_i Σ_j p(u_j|v_i) ‖u_j − k_i‖², and setting its
derivative in u (p held fixed) to zero gives Eq. 6, u_j = Σ_i p(u_j|v_i) k_i / Σ_i p(u_j|v_i).
``anchor_fixed_point`` iterates Eq. 6 from a k-means++ start. Because p is a softmax of inner
products rather than the minimiser of J over p, an Eq. 6 step need not lower J: the history
records whether it did.

Distillation: Adam on the fitting split minimising mean (out − exact)² over all output entries.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch

FIT_MODES = ("none", "closed", "distill")


def kmeanspp(x: torch.Tensor, m: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: (m, d) rows of x (P, d), each next one drawn ∝ squared distance."""
    p = x.shape[0]
    idx = [int(torch.randint(p, (1,), generator=gen))]
    d2 = ((x - x[idx[0]]) ** 2).sum(-1)                                # (P,)
    for _ in range(1, m):
        total = float(d2.sum())
        nxt = int(torch.multinomial(d2 / total, 1, generator=gen)) if total > 0 else \
            int(torch.randint(p, (1,), generator=gen))
        idx.append(nxt)
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(-1))
    return x[idx].clone()                                               # (m, d)


def anchor_probs(u: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """Eq. 4: (P, m) p(u_j|v_i) = softmax over the m anchors of u_j·k_i·scale."""
    return torch.softmax(keys @ u.T * scale, dim=-1)


def sq_dists(keys: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(P, m) squared Euclidean distances ‖k_i − u_j‖², clamped at 0 against rounding."""
    return ((keys * keys).sum(-1, keepdim=True) + (u * u).sum(-1) - 2 * keys @ u.T).clamp_min(0)


def eq5_objective(u: torch.Tensor, keys: torch.Tensor, scale: float) -> float:
    """Eq. 5: Σ_i Σ_j p(u_j|v_i) ‖u_j − k_i‖² with p from Eq. 4 at the same anchors."""
    return float((anchor_probs(u, keys, scale) * sq_dists(keys, u)).sum())


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
    u = kmeanspp(x.cpu(), m, torch.Generator().manual_seed(seed)).to(x.device)  # CPU generator
    p = anchor_probs(u, x, scale)                                       # (P, m)
    objective = [float((p * sq_dists(x, u)).sum())]
    updates = []
    key_norm = float(x.norm(dim=-1).max()) or 1.0
    for _ in range(iters):
        new = eq6_update(u, x, p)
        updates.append(float((new - u).norm(dim=-1).max()) / key_norm)
        u, p = new, anchor_probs(new, x, scale)
        objective.append(float((p * sq_dists(x, u)).sum()))
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


def adam_update(params: list[torch.Tensor], grads: tuple[torch.Tensor, ...],
                state: list[tuple[torch.Tensor, torch.Tensor]], t: int, lr: float,
                betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """One Adam step (Kingma & Ba, bias-corrected) in place; ``state`` holds (m, v) per parameter.

    Written out rather than torch.optim.Adam, whose first use imports torch._dynamo (seconds).
    """
    b1, b2 = betas
    with torch.no_grad():
        for p, g, (m, v) in zip(params, grads, state):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2 ** t)).sqrt_().add_(eps)
            p.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))


def distill(module: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            grid: tuple[int, int] | None, exact: torch.Tensor, steps: int = 200,
            lr: float = 5e-2) -> dict[str, Any] | None:
    """Adam on the module's parameters minimising mean (module(q,k,v) − exact)²; None if it has none.

    q, k, v, exact: (B, H, N, d) fitting data and its exact attention output.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return None
    target = exact.to(dtype=q.dtype)
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    losses = []
    with torch.enable_grad():
        for step in range(steps + 1):
            loss = torch.mean((module(q, k, v, grid=grid) - target) ** 2)
            losses.append(float(loss.detach()))
            if step == steps:
                break
            grads = torch.autograd.grad(loss, params)
            adam_update(params, grads, state, step + 1, lr)
    return {"applied": "distill", "steps": steps, "lr": lr, "loss_start": losses[0], "loss_end": losses[-1],
            "n_params": sum(p.numel() for p in params)}


def fit_module(mode: str, module: torch.nn.Module, fit_data: Any, exact_fit: Any, *, iters: int = 20,
               steps: int = 200, lr: float = 5e-2) -> dict[str, Any]:
    """Apply fitting ``mode`` to ``module`` in place; row fields fit_info and fit_time_s.

    ``fit_data()`` returns the fitting workload and ``exact_fit()`` its exact output (both
    lazily, so that ``none`` and methods without a closed form cost nothing).
    """
    if mode not in FIT_MODES:
        raise ValueError(f"fit must be one of {', '.join(FIT_MODES)}, got {mode!r}")
    if mode == "none":
        return {"fit_info": {"applied": "none"}, "fit_time_s": 0.0}
    from attnbench.methods.base import AttentionMethod

    has_closed = getattr(type(module), "fit_closed", None) is not getattr(AttentionMethod, "fit_closed")
    if mode == "closed" and not has_closed:
        return _no_fit(f"{type(module).__name__} has no closed-form fit")
    if mode == "distill" and not any(p.requires_grad for p in module.parameters()):
        return _no_fit("no trainable parameters")
    wl = fit_data()                                  # built (and cached) outside the fit time
    target = exact_fit() if mode == "distill" else None
    start = time.perf_counter()
    try:
        info = _apply(mode, module, wl, target, iters, steps, lr)
    except Exception as exc:  # the row becomes an error row that says fitting failed
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise RuntimeError(f"--fit {mode} failed: {type(exc).__name__}: {first}") from exc
    return {"fit_info": info, "fit_time_s": time.perf_counter() - start}


def _apply(mode: str, module: torch.nn.Module, wl: Any, target: torch.Tensor | None, iters: int,
           steps: int, lr: float) -> dict[str, Any]:
    if mode == "closed":
        with torch.no_grad():
            info = module.fit_closed(wl.q, wl.k, wl.v, wl.grid, iters=iters)
        info = {"applied": "closed", **info} if info is not None else \
            {"applied": "none", "reason": f"{type(module).__name__} has no closed-form fit"}
    else:
        info = distill(module, wl.q.float(), wl.k.float(), wl.v.float(), wl.grid, target, steps=steps, lr=lr)
    return info


def _no_fit(reason: str) -> dict[str, Any]:
    return {"fit_info": {"applied": "none", "reason": reason}, "fit_time_s": 0.0}
