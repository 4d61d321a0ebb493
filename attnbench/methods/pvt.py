"""PVT spatial-reduction attention (Wang et al., 2021) and PVTv2 linear SRA (Wang et al., 2022).

Both keep every query and attend to a reduced set of M keys and values pooled over the token
grid: out = softmax(q k_rᵀ/√d) v_r with k_r = R k, v_r = R v.

* ``pvt``: reduction ratio ``sr`` (default 4). ``reduce="avg"``: average pooling over sr x sr
  cells; ``reduce="conv"``: a learnable depthwise conv, kernel sr x sr, stride sr, no bias, one
  for k and one for v, initialised to the average (weights 1/sr²). ``sr=1`` with ``reduce="avg"``
  is exact attention.
* Grid sides that are not multiples of ``sr``, by ``rounding``:
  ``"floor"`` (default, as the authors' strided conv with no padding): the reduced grid is
  floor(H/sr) x floor(W/sr) and the leftover bottom rows and right columns are dropped from the
  keys and values (14x14 with sr=4 -> 3x3 cells over the top-left 12x12 tokens). Along a side
  shorter than sr (where the authors' conv would have no output) the cell is the whole side.
  ``"ceil"``: ceil pooling; with ``avg`` the last cell along such a side is the mean of the
  tokens it holds (fewer than sr), with ``conv`` the grid is zero-padded at the bottom and right
  up to the next multiple (as a conv with padding does). M = ceil(H/sr) * ceil(W/sr).
  No query is dropped in either case; every query attends to the M reduced keys.
* The authors' reduction is a dense sr x sr strided conv (with bias) followed by a LayerNorm,
  applied to the layer input before the k/v projection; here k and v are reduced after their
  projection, by averaging or (``reduce="conv"``) a depthwise conv, with no LayerNorm, so that
  every method sees the same q, k, v.
* ``pvt-linear``: keys and values adaptively average-pooled to ``pool`` x ``pool`` (default 7),
  M = pool². PVTv2 follows the pooling with a 1x1 conv, LayerNorm and GELU on the layer input;
  those belong to its projections and are left out here.

MACs: q k_rᵀ and P v_r (2 * B * heads * N * M * d), plus for ``conv`` the two depthwise convs
(B * heads * d * M * kernel area each, as fvcore counts a conv). Pooling counts zero.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attnbench.methods._grid import checked_grid, from_image, pooling_matrix, to_image
from attnbench.methods.base import AttentionMethod
from attnbench.registry import register


class ReducedKVAttention(AttentionMethod):
    """Softmax attention of all queries over keys and values reduced on the grid."""

    def reduced_count(self, h: int, w: int) -> int:
        raise NotImplementedError

    def pool(self, img: torch.Tensor) -> torch.Tensor:
        """The parameter-free linear pooling (C, h, w) -> (C, h', w'), applied per channel."""
        raise NotImplementedError

    def reduce_kv(self, k: torch.Tensor, v: torch.Tensor, h: int, w: int):
        """(B, H, N, d) k and v -> (B, H, M, d) each."""
        return (from_image(self.pool(to_image(x, h, w)), self.heads) for x in (k, v))

    def reduce_extra_macs(self, batch: int, h: int, w: int) -> int:
        return 0

    def probs(self, q, k, grid):
        """(B, H, N, M) softmax over the reduced keys, with the grid used."""
        h, w = checked_grid(q.shape[-2], grid)
        k_r, _ = self.reduce_kv(k, k, h, w)
        return torch.softmax((q @ k_r.transpose(-1, -2)) * self.scale, dim=-1), (h, w)

    def forward(self, q, k, v, grid=None):
        h, w = checked_grid(q.shape[-2], grid)
        k_r, v_r = self.reduce_kv(k, v, h, w)                     # (B, H, M, d)
        p = torch.softmax((q @ k_r.transpose(-1, -2)) * self.scale, dim=-1)  # (B, H, N, M)
        return p @ v_r

    def macs(self, batch, n, grid=None):
        h, w = checked_grid(n, grid)
        m = self.reduced_count(h, w)
        return 2 * batch * self.heads * n * m * self.head_dim + self.reduce_extra_macs(batch, h, w)

    def attention_matrix(self, q, k, v, grid=None):
        """(B, H, N, N) = softmax(q k_rᵀ/√d) R, with R (M, N) the pooling; rows sum to 1."""
        p, (h, w) = self.probs(q, k, grid)
        r = pooling_matrix(self.pool, q.shape[-2], h, w, p.dtype, p.device)  # (M, N)
        return p @ r


ROUNDINGS = ("floor", "ceil")


def reduction_cells(h: int, w: int, sr: int, rounding: str) -> tuple[int, int, int, int]:
    """(kh, kw, mh, mw): cell sides and reduced grid sides for an h x w grid and ratio ``sr``.

    ``floor``: cells of min(sr, side), floor(side / cell) of them (leftover tokens dropped);
    ``ceil``: cells of sr, ceil(side / sr) of them (the last one partial).
    """
    if rounding == "floor":
        kh, kw = min(sr, h), min(sr, w)
        return kh, kw, h // kh, w // kw
    if rounding != "ceil":
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    return sr, sr, math.ceil(h / sr), math.ceil(w / sr)


@register("pvt", family="pvt", needs_grid=True, defaults={"sr": 4, "reduce": "avg", "rounding": "floor"},
          description="PVT spatial-reduction attention: k, v pooled by sr x sr (avg or depthwise conv)")
class PVTAttention(ReducedKVAttention):
    """Spatial-reduction attention with ratio ``sr``; see the module docstring.

    ``rounding="floor"`` (default, as the authors' strided conv): leftover rows and columns of a
    grid not divisible by ``sr`` are dropped; ``"ceil"``: they form partial cells.
    """

    def __init__(self, heads: int, head_dim: int, sr: int = 4, reduce: str = "avg",
                 rounding: str = "floor"):
        super().__init__(heads, head_dim)
        if int(sr) <= 0:
            raise ValueError(f"sr must be positive, got {sr}")
        if reduce not in ("avg", "conv"):
            raise ValueError(f"reduce must be avg or conv, got {reduce!r}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        self.sr, self.reduce, self.rounding = int(sr), reduce, rounding
        if reduce == "conv":
            init = torch.full((heads * head_dim, 1, self.sr, self.sr), 1.0 / self.sr ** 2)
            self.conv_k = torch.nn.Parameter(init.clone())
            self.conv_v = torch.nn.Parameter(init.clone())

    def cells(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(kh, kw, mh, mw) cell and reduced-grid sides; see ``reduction_cells``."""
        return reduction_cells(h, w, self.sr, self.rounding)

    def reduced_count(self, h, w):
        _, _, mh, mw = self.cells(h, w)
        return mh * mw

    def pool(self, img):
        kh, kw, _, _ = self.cells(*img.shape[-2:])
        if kh == kw == 1:
            return img
        return F.avg_pool2d(img, (kh, kw), (kh, kw), ceil_mode=self.rounding == "ceil")

    def _conv(self, img: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        kh, kw, _, _ = self.cells(h, w)
        if self.rounding == "ceil":
            img = F.pad(img, (0, -w % self.sr, 0, -h % self.sr))  # zero-pad to multiples of sr
        weight = weight[..., :kh, :kw].to(img.dtype)               # (C, 1, kh, kw)
        return F.conv2d(img, weight, stride=(kh, kw), groups=img.shape[1])

    def reduce_kv(self, k, v, h, w):
        if self.reduce == "avg":
            return super().reduce_kv(k, v, h, w)
        k_r = from_image(self._conv(to_image(k, h, w), self.conv_k), self.heads)
        v_r = from_image(self._conv(to_image(v, h, w), self.conv_v), self.heads)
        return k_r, v_r

    def reduce_extra_macs(self, batch, h, w):
        if self.reduce == "avg":
            return 0
        kh, kw, mh, mw = self.cells(h, w)
        return 2 * batch * self.heads * self.head_dim * mh * mw * kh * kw

    def attention_matrix(self, q, k, v, grid=None):
        """As the base class for ``avg``; None for ``conv``, whose per-channel weights on v
        cannot be written as one token-token matrix per head."""
        return None if self.reduce == "conv" else super().attention_matrix(q, k, v, grid)


@register("pvt-linear", family="pvt", needs_grid=True, defaults={"pool": 7},
          description="PVTv2 linear SRA: k, v adaptively average-pooled to pool x pool")
class PVTLinearAttention(ReducedKVAttention):
    """Linear spatial-reduction attention over pool x pool pooled keys; see the module docstring."""

    def __init__(self, heads: int, head_dim: int, pool: int = 7):
        super().__init__(heads, head_dim)
        if int(pool) <= 0:
            raise ValueError(f"pool must be positive, got {pool}")
        self.pool_size = int(pool)

    def reduced_count(self, h, w):
        return self.pool_size ** 2

    def pool(self, img):
        return F.adaptive_avg_pool2d(img, self.pool_size)
