"""Token-grid helpers shared by the grid methods (window, pvt, pvt-linear, agent, biformer)."""
from __future__ import annotations

import torch

from attnbench.methods.base import resolve_grid


def checked_grid(n: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    """The (H, W) grid for n tokens; ValueError when a given grid does not hold exactly n tokens."""
    n = int(n)  # a traced shape arrives as a tensor
    h, w = resolve_grid(n, grid)
    if h * w != n:
        raise ValueError(f"grid {h}x{w} holds {h * w} tokens but the inputs have N={n}; "
                         "pass a grid with H*W == N or grid=None")
    return h, w


def to_image(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, heads, N, d) tokens in row-major grid order -> (B, heads*d, h, w) channels-first image."""
    b, heads, n, d = x.shape
    return x.transpose(-1, -2).reshape(b, heads * d, h, w)


def from_image(img: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, heads*d, h', w') -> (B, heads, h'*w', d) tokens in row-major order."""
    b, c, hh, ww = img.shape
    return img.reshape(b, heads, c // heads, hh * ww).transpose(-1, -2)


def pooling_matrix(pool, n: int, h: int, w: int, dtype: torch.dtype, device) -> torch.Tensor:
    """R (M, N) with pool(x) == R x for a linear, channel-wise pooling ``pool`` on the h x w grid.

    Built by pooling the N one-hot images, so R is exactly what ``pool`` computes.
    """
    eye = torch.eye(n, dtype=dtype, device=device).reshape(n, 1, h, w)  # one image per token
    return pool(eye).reshape(n, -1).transpose(0, 1)                     # (M, N)
