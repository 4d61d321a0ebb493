"""Base class shared by every attention method (the exact reference is attnbench.reference)."""
from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch


def near_square_grid(n: int) -> tuple[int, int]:
    """(H, W) with H * W == n and H <= W as close to sqrt(n) as the divisors allow."""
    if n <= 0:
        raise ValueError(f"token count must be positive, got {n}")
    h = int(math.isqrt(n))
    while n % h:
        h -= 1
    return h, n // h


def resolve_grid(n: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    """The token grid to use: ``grid`` if given (checked), else a near-square factorisation."""
    if grid is None:
        return near_square_grid(n)
    h, w = int(grid[0]), int(grid[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"grid sides must be positive, got {grid}")
    return h, w


class AttentionMethod(torch.nn.Module):
    """Common plumbing: capability checks, the timed closure and the analytic MAC count.

    Subclasses implement ``forward(q, k, v, grid=None)`` on (B, heads, N, head_dim) tensors
    and ``macs(batch, n, grid=None)``: the forward pass's multiply-adds counted the fvcore
    way (matrix products only; softmax and elementwise work count zero).
    """

    info: Any = None          # set by @register
    method_name: str = "?"

    def __init__(self, heads: int, head_dim: int) -> None:
        super().__init__()
        if heads <= 0 or head_dim <= 0:
            raise ValueError(f"heads and head_dim must be positive, got {heads}, {head_dim}")
        self.heads = int(heads)
        self.head_dim = int(head_dim)
        self.scale = 1.0 / math.sqrt(head_dim)

    # -- capabilities ---------------------------------------------------------------
    def budget_value(self) -> int | None:
        """The value of the budget parameter (anchors, landmarks, ...), if the method has one."""
        budget = self.info.budget if self.info is not None else None
        return None if budget is None else int(getattr(self, budget))

    def unsupported_reason(self, device: str, dtype: str | torch.dtype, n: int,
                           head_dim: int) -> str | None:
        """None when this instance can run the shape, else one sentence saying why not."""
        info = self.info
        dtype_name = str(dtype).replace("torch.", "")
        reason = info.availability(device) if info is not None else None
        if reason:
            return reason
        if info is not None and dtype_name not in info.dtypes:
            return f"{info.name} supports dtypes {', '.join(info.dtypes)}, not {dtype_name}."
        if info is not None and not (info.head_dims[0] <= head_dim <= info.head_dims[1]):
            lo, hi = info.head_dims
            return f"{info.name} supports head_dim {lo}..{hi}, not {head_dim}."
        if head_dim != self.head_dim:
            return f"module was built for head_dim {self.head_dim}, inputs have {head_dim}."
        m = self.budget_value()
        if m is not None and m > n:
            return f"budget {info.budget}={m} exceeds the token count n={n}."
        return self.extra_unsupported_reason(device, dtype_name, n, head_dim)

    def extra_unsupported_reason(self, device: str, dtype: str, n: int, head_dim: int) -> str | None:
        """Hook for method-specific limits; None means supported."""
        return None

    # -- measurement hooks ----------------------------------------------------------
    def bench_fn(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 grid: tuple[int, int] | None = None) -> Callable[[], torch.Tensor]:
        """A zero-argument closure running the forward; layout changes belong outside it."""
        return lambda: self(q, k, v, grid=grid)

    def backend_info(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     grid: tuple[int, int] | None = None) -> dict[str, Any]:
        """Which implementation actually ran (e.g. the SDPA backend); stored in the row."""
        return {}

    def macs(self, batch: int, n: int, grid: tuple[int, int] | None = None) -> int:
        raise NotImplementedError

    def counting_copy(self) -> torch.nn.Module:
        """The module the FLOP counters trace: a copy, so that they leave this one as they found it."""
        return copy.deepcopy(self)

    def count_extra(self) -> dict[str, Any]:
        """Called on the counting copy after each counter: multiply-adds the counter could not see
        (``macs``), the row's ``flops_scope`` and a ``flop_note``; nothing for most methods."""
        return {}

    def attention_matrix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         grid: tuple[int, int] | None = None) -> torch.Tensor | None:
        """The implied (B, H, N, N) token-token matrix P with out = P v, where the method has one
        and it can be formed (small N only); None otherwise. Used for attention-map metrics."""
        return None

    def fit_closed(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   grid: tuple[int, int] | None = None, iters: int = 20) -> dict[str, Any] | None:
        """Set the method's tokens (anchors, landmarks, agents) in closed form from fitting data
        shaped (B, H, N, d). Returns a dict describing the fit, or None when the method has no
        closed form (the caller then falls back to the parameters as initialised)."""
        return None

    def workspace_bytes(self, batch: int, n: int, dtype_bytes: int) -> int | None:
        """A rough upper bound of the forward's scratch memory, used only to avoid launching a
        run that cannot fit in host memory (never reported as a measurement)."""
        return None

