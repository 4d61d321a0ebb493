"""Fitting a method's learnable state before it is measured: closed form and distillation.

Closed form: the method's own ``fit_closed`` (anchor: the Eq. 4-6 fixed point in
methods/anchor_fit.py; nystrom, agent: k-means in methods/_cluster.py).

Distillation: Adam on the fitting split minimising mean (out − exact)² over all output entries.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from attnbench.choices import FIT_MODES
from attnbench.spec import one_line



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
        raise RuntimeError(f"--fit {mode} failed: {one_line(exc)}") from exc
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
