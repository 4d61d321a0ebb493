"""BiFormer bi-level routing attention (Zhu et al., CVPR 2023), per query region over routed regions.

1. The token grid (H, W) is cut into S_h × S_w regions, S_h = min(``regions``, H) (default 7),
   S_w likewise. Region borders are ⌊i·H/S_h⌋ (and ⌊j·W/S_w⌋), so when S does not divide a side
   the regions differ by one row/column. Every region is laid out in t = ⌈H/S_h⌉·⌈W/S_w⌉ slots;
   the slots a smaller region does not fill are padding: masked to -inf as keys (exactly zero
   weight) and dropped as queries. (The authors pad the feature map at its bottom/right instead,
   which can leave regions with no real token and lets padding take part in attention.)
2. Routing: region means of q and of k (over real tokens only), region-to-region affinity
   q̄ k̄ᵀ summed over heads (the authors route on the full channel dimension, shared by all
   heads), and the ``topk`` most affine regions per query region (default 4; capped at S_h·S_w).
3. Each query attends with softmax(s·q kᵀ) to the tokens of its region's routed regions.
   ``scale`` sets s: ``"head"`` (default) s = head_dim^-½, as softmax attention; ``"channels"``
   s = (heads·head_dim)^-½, the total query/key channels, as the authors' code does (their
   newer file keeps it "to be consistent with old models"). Routing is unaffected (a positive
   factor does not change the top-k).
With ``topk`` = S_h·S_w every query sees every token: exact attention. The authors' local
context term (a 5×5 depthwise conv of v) is not included. Needs H·W = N.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from attnbench.methods._grid import checked_grid
from attnbench.methods.base import AttentionMethod
from attnbench.registry import register


def _borders(side: int, parts: int) -> torch.Tensor:
    return torch.div(torch.arange(parts + 1) * side, parts, rounding_mode="floor")


@lru_cache(maxsize=64)
def region_layout(grid: tuple[int, int], regions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token index (R, t) of every region slot (0 for padding) and its validity mask (R, t)."""
    (gh, gw), (sh, sw) = grid, (min(regions, grid[0]), min(regions, grid[1]))
    rb, cb = _borders(gh, sh), _borders(gw, sw)
    th, tw = -(-gh // sh), -(-gw // sw)
    rows = rb[:-1, None] + torch.arange(th)                      # (S_h, th)
    cols = cb[:-1, None] + torch.arange(tw)                      # (S_w, tw)
    row_ok, col_ok = rows < rb[1:, None], cols < cb[1:, None]
    tok = rows[:, None, :, None] * gw + cols[None, :, None, :]   # (S_h, S_w, th, tw)
    ok = row_ok[:, None, :, None] & col_ok[None, :, None, :]
    r, t = sh * sw, th * tw
    return torch.where(ok, tok, 0).reshape(r, t), ok.reshape(r, t)


def region_means(x_reg: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, H, R, t, d) region slots -> (B, H, R, d) means over the real tokens."""
    w = valid.to(x_reg.dtype)                                    # (R, t)
    return (x_reg * w[..., None]).sum(-2) / w.sum(-1)[:, None]


def route(q_mean: torch.Tensor, k_mean: torch.Tensor, topk: int) -> torch.Tensor:
    """(B, R, topk) routed regions per query region, by q̄ k̄ᵀ summed over heads."""
    b, h, r, d = q_mean.shape
    qf = q_mean.transpose(1, 2).reshape(b, r, h * d)             # (B, R, H·d)
    kf = k_mean.transpose(1, 2).reshape(b, r, h * d)
    return (qf @ kf.transpose(-1, -2)).topk(topk, dim=-1).indices


def gather_regions(x_reg: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
    """(B, H, R, t, d) and routes (B, R, k) -> (B, H, R, k·t, d): the routed regions' slots."""
    b, h, r, t, d = x_reg.shape
    base = (torch.arange(b * h, device=routes.device) * r).view(b, h, 1, 1)
    flat = (routes.unsqueeze(1) + base).reshape(-1)              # (B·H·R·k,)
    return x_reg.reshape(b * h * r, t * d).index_select(0, flat).view(b, h, r, -1, d)


SCALES = ("head", "channels")


def attention_scale(heads: int, head_dim: int, scale: str = "head") -> float:
    """The logit factor: head_dim^-½ (``head``) or (heads·head_dim)^-½ (``channels``)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    return (head_dim if scale == "head" else heads * head_dim) ** -0.5


@register("biformer", family="biformer", needs_grid=True,
          defaults={"regions": 7, "topk": 4, "scale": "head"},
          description="BiFormer bi-level routing: top-k regions per region, token attention inside")
class BiFormerAttention(AttentionMethod):
    """``regions``×``regions`` regions, ``topk`` routed regions per query region.

    ``scale="head"`` (default): logits times head_dim^-½; ``"channels"``: times
    (heads·head_dim)^-½, as the authors' code.
    """

    def __init__(self, heads: int, head_dim: int, regions: int = 7, topk: int = 4, scale: str = "head"):
        super().__init__(heads, head_dim)
        if int(regions) <= 0 or int(topk) <= 0:
            raise ValueError(f"regions and topk must be positive, got {regions}, {topk}")
        self.regions, self.topk, self.scale_rule = int(regions), int(topk), scale
        self.scale = attention_scale(heads, head_dim, scale)

    def layout(self, n, grid, device):
        """(grid, slot token index (R, t), slot validity (R, t)) on ``device``."""
        g = checked_grid(n, grid)
        idx, valid = region_layout(g, self.regions)
        return g, idx.to(device), valid.to(device)

    def region_probs(self, q, k, grid):
        """Slot token ids (R, t), validity (R, t), routes (B, R, k) and the probabilities
        (B, H, R, t, k·t) of every query slot over its routed key slots."""
        _, idx, valid = self.layout(q.shape[-2], grid, q.device)
        q_reg, k_reg = q[..., idx, :], k[..., idx, :]            # (B, H, R, t, d)
        routes = route(region_means(q_reg, valid), region_means(k_reg, valid), min(self.topk, idx.shape[0]))
        k_sel = gather_regions(k_reg, routes)                    # (B, H, R, k·t, d)
        key_ok = valid[routes].flatten(-2)                       # (B, R, k·t)
        logits = (q_reg @ k_sel.transpose(-1, -2)) * self.scale  # (B, H, R, t, k·t)
        logits = logits.masked_fill(~key_ok[:, None, :, None, :], float("-inf"))
        return idx, valid, routes, torch.softmax(logits, dim=-1)

    def forward(self, q, k, v, grid=None):
        idx, valid, routes, p = self.region_probs(q, k, grid)
        o_reg = p @ gather_regions(v[..., idx, :], routes)       # (B, H, R, t, d)
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=o_reg.dtype, device=q.device)
        out[..., idx[valid], :] = o_reg[..., valid, :]
        return out                                               # (B, H, N, d)

    def attention_matrix(self, q, k, v, grid=None):
        idx, valid, routes, p = self.region_probs(q, k, grid)
        b, h, n = q.shape[0], q.shape[1], q.shape[-2]
        key_tok = idx[routes].flatten(-2)                        # (B, R, k·t)
        pos = idx[None, :, :, None] * n + key_tok[:, :, None, :]  # (B, R, t, k·t) flat row·N + col
        p = p * valid[:, :, None].to(p.dtype)                    # padding query slots write nothing
        mat = torch.zeros(b, h, n * n, dtype=p.dtype, device=q.device)
        mat.scatter_add_(-1, pos.unsqueeze(1).expand_as(p).reshape(b, h, -1), p.reshape(b, h, -1))
        return mat.view(b, h, n, n)

    def macs(self, batch, n, grid=None):
        idx, _ = region_layout(checked_grid(n, grid), self.regions)
        r, t = idx.shape
        k = min(self.topk, r)
        # routing q̄ k̄ᵀ over all heads' channels: R²·H·d; q kᵀ and P v over padded slots: 2·R·t·k·t·d per head
        return batch * (r * r * self.heads * self.head_dim + 2 * self.heads * r * t * k * t * self.head_dim)
