"""Swin window attention: W-MSA, and SW-MSA with ``shift=True`` (Liu et al., 2021).

The N tokens are an H x W grid in row-major order. It is split into non-overlapping windows of
``window`` x ``window`` tokens and softmax attention runs inside each window only.

* ``shift_rule`` says what happens on a grid with a side at most ``window``:
  ``"official"`` (default, as the Swin block of the authors' code): when the shorter side of the
  grid is <= ``window``, the window shrinks to a square of that shorter side and the shift is
  off; otherwise windows are ``window`` x ``window`` and ``shift=True`` shifts both axes.
  (So a 1 x N grid, the near-square factorisation of a prime N, has single-token windows.)
  ``"axis"``: each window side is clamped to its grid side separately and the shift applies only
  along axes longer than the window, so ``window`` >= both grid sides is exact attention (a 7x14
  grid with window 7 and ``shift=True`` then has 7x7 windows shifted along the columns only).
  ``effective_window`` gives the window sides and shifts of either rule for a grid.
* Sides that are not multiples of the window: the grid is padded at the bottom and right up to
  the next multiple. Padded tokens are keys with exactly zero weight (additive -inf mask) for
  every real query; their own outputs are computed and then dropped.
* ``shift=True``: the padded grid is cyclically shifted by window//2 (along the axes that
  ``shift_rule`` shifts), and Swin's region mask gives exactly zero weight between tokens
  that the cyclic shift brought together from different regions. This is the same as windows
  whose corners sit at offset -window//2 in the original grid, without wrap-around.
* ``rel_pos_bias=True`` adds Swin's learnable relative position bias table
  ((2*window-1)^2 entries per head, truncated-normal init, std 0.02) to the logits. When the
  window shrinks, its offsets index the same table (the authors size theirs to the shrunk window;
  with learned tables the two are the same function).

MACs: the two per-window products q kᵀ and P v, over all windows of the *padded* grid, since
that is what is multiplied: 2 * B * heads * n_windows * T^2 * d with T tokens per window.
Padded tokens therefore count, as queries and as keys; on grids whose sides are multiples of the
window there are none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnbench.methods._grid import checked_grid
from attnbench.methods.base import AttentionMethod
from attnbench.registry import register


@dataclass(frozen=True)
class WindowGeometry:
    """Grid h x w, window wh x ww, padded grid hp x wp, cyclic shift (sh, sw)."""

    h: int
    w: int
    wh: int
    ww: int
    hp: int
    wp: int
    sh: int
    sw: int

    @property
    def n_windows(self) -> int:
        return (self.hp // self.wh) * (self.wp // self.ww)

    @property
    def tokens(self) -> int:
        return self.wh * self.ww


SHIFT_RULES = ("official", "axis")


def effective_window(h: int, w: int, window: int, shift: bool,
                     shift_rule: str = "official") -> tuple[int, int, int, int]:
    """(wh, ww, sh, sw): window sides and cyclic shifts used on an h x w grid.

    ``official``: a grid whose shorter side is <= ``window`` gets square windows of that side and
    no shift; ``axis``: each side clamped to its axis, shift only along axes longer than the window.
    """
    if shift_rule == "official":
        if min(h, w) <= window:
            side = min(h, w)
            return side, side, 0, 0
        half = window // 2 if shift else 0
        return window, window, half, half
    if shift_rule != "axis":
        raise ValueError(f"shift_rule must be one of {', '.join(SHIFT_RULES)}, got {shift_rule!r}")
    wh, ww = min(window, h), min(window, w)
    sh = wh // 2 if shift and wh < h else 0
    sw = ww // 2 if shift and ww < w else 0
    return wh, ww, sh, sw


def window_geometry(h: int, w: int, window: int, shift: bool,
                    shift_rule: str = "official") -> WindowGeometry:
    """Window sides and shifts by ``shift_rule`` (see ``effective_window``) and the padded sides."""
    wh, ww, sh, sw = effective_window(h, w, window, shift, shift_rule)
    hp, wp = math.ceil(h / wh) * wh, math.ceil(w / ww) * ww
    return WindowGeometry(h, w, wh, ww, hp, wp, sh, sw)


def split_windows(xp: torch.Tensor, g: WindowGeometry) -> torch.Tensor:
    """(..., hp, wp, c) padded grid -> (..., n_windows, T, c), windows in row-major order."""
    lead, c = xp.shape[:-3], xp.shape[-1]
    x = xp.reshape(*lead, g.hp // g.wh, g.wh, g.wp // g.ww, g.ww, c)
    x = x.transpose(-4, -3)                                      # (..., nh, nw, wh, ww, c)
    return x.reshape(*lead, g.n_windows, g.tokens, c)


def merge_windows(xw: torch.Tensor, g: WindowGeometry) -> torch.Tensor:
    """Inverse of split_windows: (..., n_windows, T, c) -> (..., hp, wp, c)."""
    lead, c = xw.shape[:-3], xw.shape[-1]
    x = xw.reshape(*lead, g.hp // g.wh, g.wp // g.ww, g.wh, g.ww, c)
    x = x.transpose(-4, -3)                                      # (..., nh, wh, nw, ww, c)
    return x.reshape(*lead, g.hp, g.wp, c)


def to_windows(x: torch.Tensor, g: WindowGeometry) -> torch.Tensor:
    """(B, H, N, d) -> (B, H, n_windows, T, d): pad with zeros, cyclic shift, split."""
    b, heads, _, d = x.shape
    xp = F.pad(x.reshape(b, heads, g.h, g.w, d), (0, 0, 0, g.wp - g.w, 0, g.hp - g.h))
    if g.sh or g.sw:
        xp = torch.roll(xp, shifts=(-g.sh, -g.sw), dims=(2, 3))
    return split_windows(xp, g)


def from_windows(xw: torch.Tensor, g: WindowGeometry) -> torch.Tensor:
    """(B, H, n_windows, T, d) -> (B, H, N, d): merge, undo the shift, drop the padding."""
    xp = merge_windows(xw, g)
    if g.sh or g.sw:
        xp = torch.roll(xp, shifts=(g.sh, g.sw), dims=(2, 3))
    b, heads, d = xp.shape[0], xp.shape[1], xp.shape[-1]
    return xp[:, :, :g.h, :g.w].reshape(b, heads, g.h * g.w, d)


def window_token_ids(g: WindowGeometry) -> torch.Tensor:
    """(n_windows, T) long: the original token index at each window slot, -1 for padding."""
    ids = torch.full((g.hp, g.wp), -1, dtype=torch.long)
    ids[:g.h, :g.w] = torch.arange(g.h * g.w).reshape(g.h, g.w)
    return to_windows_ids(ids, g)


def to_windows_ids(ids: torch.Tensor, g: WindowGeometry) -> torch.Tensor:
    """(hp, wp) per-position values -> (n_windows, T), shifted and split as the tokens are."""
    if g.sh or g.sw:
        ids = torch.roll(ids, shifts=(-g.sh, -g.sw), dims=(0, 1))
    return split_windows(ids.unsqueeze(-1), g).squeeze(-1)


def _axis_regions(size: int, win: int, shift: int) -> torch.Tensor:
    """Swin's region label along one axis of the shifted frame: 0, 1, 2 (only 0 without shift)."""
    pos = torch.arange(size)
    if not shift:
        return torch.zeros(size, dtype=torch.long)
    return (pos >= size - win).long() + (pos >= size - shift).long()


def window_regions(g: WindowGeometry) -> torch.Tensor:
    """(n_windows, T) long region label of every slot (in the shifted frame)."""
    ry = _axis_regions(g.hp, g.wh, g.sh)
    rx = _axis_regions(g.wp, g.ww, g.sw)
    labels = ry[:, None] * 3 + rx[None, :]                       # (hp, wp)
    return split_windows(labels.unsqueeze(-1), g).squeeze(-1)


def window_mask(g: WindowGeometry) -> torch.Tensor | None:
    """(n_windows, T, T) bool "may attend": same region, and a real key unless the query is padding.

    Padded queries may attend to anything in their region (so no row is empty and nothing is
    NaN); their outputs are dropped. None when every pair is allowed.
    """
    if g.hp == g.h and g.wp == g.w and not (g.sh or g.sw):
        return None
    regions = window_regions(g)                                   # (nW, T)
    valid = window_token_ids(g) >= 0                              # (nW, T)
    same = regions[:, :, None] == regions[:, None, :]            # (nW, T, T)
    return same & (valid[:, None, :] | ~valid[:, :, None])


def relative_position_index(wh: int, ww: int, window: int) -> torch.Tensor:
    """(T, T) index into a (2*window-1)^2 table of the offset between two window slots."""
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)                      # (T,)
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


@register("window", family="window", needs_grid=True,
          defaults={"window": 7, "shift": False, "rel_pos_bias": False, "shift_rule": "official"},
          description="Swin window attention (W-MSA; shift=True for SW-MSA with the region mask)")
class WindowAttention(AttentionMethod):
    """Softmax attention inside non-overlapping windows of the token grid; see the module docstring.

    ``shift_rule="official"`` (default): no shift, and square windows of the shorter grid side,
    when that side is <= ``window``, as the authors' Swin block; ``"axis"``: per-axis clamping.
    """

    def __init__(self, heads: int, head_dim: int, window: int = 7, shift: bool = False,
                 rel_pos_bias: bool = False, seed: int = 0, shift_rule: str = "official"):
        super().__init__(heads, head_dim)
        if int(window) <= 0:
            raise ValueError(f"window must be positive, got {window}")
        if shift_rule not in SHIFT_RULES:
            raise ValueError(f"shift_rule must be one of {', '.join(SHIFT_RULES)}, got {shift_rule!r}")
        self.window, self.shift, self.rel_pos_bias = int(window), bool(shift), bool(rel_pos_bias)
        self.shift_rule = shift_rule
        self.bias_table = None
        if self.rel_pos_bias:
            gen = torch.Generator().manual_seed(seed)
            table = torch.empty((2 * self.window - 1) ** 2, heads)
            torch.nn.init.trunc_normal_(table, std=0.02, generator=gen)
            self.bias_table = torch.nn.Parameter(table)
        self._masks: dict = {}

    def geometry(self, n: int, grid: tuple[int, int] | None) -> WindowGeometry:
        h, w = checked_grid(n, grid)
        return window_geometry(h, w, self.window, self.shift, self.shift_rule)

    def _additive_mask(self, g: WindowGeometry, dtype, device) -> torch.Tensor | None:
        """(n_windows, T, T) 0 / -inf mask, cached per geometry, dtype and device."""
        key = (g, dtype, device)
        if key not in self._masks:
            allowed = window_mask(g)
            self._masks[key] = None if allowed is None else torch.zeros(
                allowed.shape, dtype=dtype).masked_fill_(~allowed, float("-inf")).to(device)
        return self._masks[key]

    def _bias_index(self, g: WindowGeometry, device) -> torch.Tensor:
        """(T, T) relative-position index, cached per window shape and device (outside the hot path)."""
        key = ("bias_index", g.wh, g.ww, device)
        if key not in self._masks:
            self._masks[key] = relative_position_index(g.wh, g.ww, self.window).to(device)
        return self._masks[key]

    def window_probs(self, q: torch.Tensor, k: torch.Tensor,
                     grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, WindowGeometry]:
        """Per-window probabilities (B, H, n_windows, T, T) and the geometry used."""
        g = self.geometry(q.shape[-2], grid)
        qw, kw = to_windows(q, g), to_windows(k, g)                # (B, H, nW, T, d)
        logits = (qw @ kw.transpose(-1, -2)) * self.scale         # (B, H, nW, T, T)
        if self.bias_table is not None:
            idx = self._bias_index(g, q.device)
            bias = self.bias_table.to(q.dtype)[idx].permute(2, 0, 1)  # (H, T, T)
            logits = logits + bias.unsqueeze(1)
        mask = self._additive_mask(g, q.dtype, q.device)
        if mask is not None:
            logits = logits + mask
        return torch.softmax(logits, dim=-1), g

    def forward(self, q, k, v, grid=None):
        p, g = self.window_probs(q, k, grid)
        return from_windows(p @ to_windows(v, g), g)               # (B, H, N, d)

    def macs(self, batch, n, grid=None):
        g = self.geometry(n, grid)
        return 2 * batch * self.heads * g.n_windows * g.tokens ** 2 * self.head_dim

    def attention_matrix(self, q, k, v, grid=None):
        """(B, H, N, N): the window probabilities scattered to token positions; zero elsewhere."""
        p, g = self.window_probs(q, k, grid)
        ids = window_token_ids(g).to(q.device)                     # (nW, T)
        pair = (ids[:, :, None] >= 0) & (ids[:, None, :] >= 0)    # (nW, T, T)
        wi, ii, jj = torch.nonzero(pair, as_tuple=True)
        n = q.shape[-2]
        out = torch.zeros(*q.shape[:2], n, n, dtype=p.dtype, device=p.device)
        out[..., ids[wi, ii], ids[wi, jj]] = p[..., wi, ii, jj]
        return out

    def workspace_bytes(self, batch, n, dtype_bytes):
        g = self.geometry(n, None)
        return 3 * batch * self.heads * g.n_windows * g.tokens ** 2 * dtype_bytes
