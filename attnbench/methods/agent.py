"""Agent attention (Han et al., ECCV 2024): m agent tokens A pooled from the queries, O(N·m·d).

out = softmax(q Aᵀ/√d + b_na) · (softmax(A kᵀ/√d + b_an) v)  [+ dwc(v)]

Agents: adaptive average pooling of the queries over the token grid (H, W) to an m-cell agent
grid (h_a, w_a) = the near-square factorisation of m (h_a ≤ w_a, e.g. 30 -> 5×6, 49 -> 7×7,
a prime m -> 1×m), turned so that its longer side follows the longer grid side. The
authors use square agent counts (pool_size² agents); other m are kept exact this way rather
than rounded. ``fit_closed`` replaces pooling by fixed per-head k-means centroids of fitting
queries. Needs a grid with H·W = N (no padding: pooling covers every token).

Options, off by default: ``dwc=True`` adds the depthwise 3×3 convolution of v over the grid
(weights per channel, with bias); ``bias=True`` adds the agent/token position biases as two
learnable per-head tables (heads, m, 7, 7), bilinearly resized to the grid, as the authors'
interpolated bias tables. ``pos_bias=True`` adds, in addition (independently of
``bias``), the authors' decomposed position biases: per head and agent a row bias over the grid
rows and a column bias over the grid columns, summed, for agent->token (m, H·W) and likewise
for token->agent (H·W, m). They are sized to the grid, so they are created (trunc-normal, std
0.02, seed derived from ``seed`` and the grid) on the first call with a new grid and kept as
parameters. The authors' module has ``bias``, ``pos_bias`` and ``dwc`` all on.
Learnable tensors use fixed-seed initialisation.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from attnbench.methods._cluster import heads_as_point_sets, kmeans
from attnbench.methods._grid import checked_grid, from_image, to_image
from attnbench.methods.base import AttentionMethod, near_square_grid
from attnbench.registry import register

BIAS_TABLE_SIDE = 7


def agent_grid(m: int, grid: tuple[int, int]) -> tuple[int, int]:
    """Near-square (h_a, w_a) with h_a·w_a = m, longer side along the grid's longer side."""
    a, b = near_square_grid(m)
    return (b, a) if grid[0] > grid[1] else (a, b)


def pool_agents(q: torch.Tensor, m: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, N, d) queries -> (B, H, m, d) agents by adaptive average pooling over the grid."""
    img = F.adaptive_avg_pool2d(to_image(q, *grid), agent_grid(m, grid))  # (B, H·d, h_a, w_a)
    return from_image(img, q.shape[1])


@register("agent", family="agent", budget="m", needs_grid=True, defaults={"m": 30, "pos_bias": False},
          description="Agent attention: m agents pooled from the queries, two softmax stages")
class AgentAttention(AttentionMethod):
    """m agent tokens; options ``dwc`` (depthwise 3×3 conv term), ``bias`` (interpolated position
    biases) and ``pos_bias`` (default False: the authors' decomposed row/column biases, both
    directions, in addition to ``bias``)."""

    def __init__(self, heads: int, head_dim: int, m: int = 30, dwc: bool = False, bias: bool = False,
                 seed: int = 0, pos_bias: bool = False):
        super().__init__(heads, head_dim)
        if int(m) <= 0:
            raise ValueError(f"m must be positive, got {m}")
        self.m, self.dwc, self.bias, self.seed = int(m), bool(dwc), bool(bias), int(seed)
        self.pos_bias = bool(pos_bias)
        self.grid_biases = torch.nn.ParameterDict()  # "HxW_ah" etc. -> decomposed biases of one grid
        gen = torch.Generator().manual_seed(seed)
        if self.dwc:
            conv = torch.nn.Conv2d(heads * head_dim, heads * head_dim, 3, padding=1, groups=heads * head_dim)
            with torch.no_grad():
                bound = 1.0 / 3.0  # fan_in = 9, as PyTorch's default uniform init
                conv.weight.uniform_(-bound, bound, generator=gen)
                conv.bias.uniform_(-bound, bound, generator=gen)
            self.conv = conv
        if self.bias:
            shape = (heads, self.m, BIAS_TABLE_SIDE, BIAS_TABLE_SIDE)
            self.an_bias = torch.nn.Parameter(torch.nn.init.trunc_normal_(torch.empty(shape), std=0.02, generator=gen))
            self.na_bias = torch.nn.Parameter(torch.nn.init.trunc_normal_(torch.empty(shape), std=0.02, generator=gen))
        self.register_buffer("fitted_agents", None)  # (H, m, d) after fit_closed

    def agents(self, q: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, H, m, d): fitted centroids if set, else queries pooled over the grid."""
        if self.fitted_agents is None:
            return pool_agents(q, self.m, grid)
        return self.fitted_agents.to(q.dtype).expand(q.shape[0], *self.fitted_agents.shape)

    def decomposed_biases(self, grid, device=None) -> tuple[torch.Tensor, ...]:
        """Row and column biases of one grid: agent->token ah (H, m, gh, 1), aw (H, m, 1, gw) and
        token->agent ha (H, gh, 1, m), wa (H, 1, gw, m); created on the first call with the grid."""
        gh, gw = int(grid[0]), int(grid[1])
        key = f"{gh}x{gw}"
        shapes = {"ah": (self.heads, self.m, gh, 1), "aw": (self.heads, self.m, 1, gw),
                  "ha": (self.heads, gh, 1, self.m), "wa": (self.heads, 1, gw, self.m)}
        if f"{key}_ah" not in self.grid_biases:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + gh * 10_007 + gw)
            for name, shape in shapes.items():
                table = torch.nn.init.trunc_normal_(torch.empty(shape), std=0.02, generator=gen)
                self.grid_biases[f"{key}_{name}"] = torch.nn.Parameter(table.to(device))
        return tuple(self.grid_biases[f"{key}_{name}"] for name in shapes)

    def _decomposed(self, grid, dtype, device):
        """(1, H, m, N) agent->token and (1, H, N, m) token->agent sums of row and column biases."""
        ah, aw, ha, wa = (t.to(dtype) for t in self.decomposed_biases(grid, device))
        n = grid[0] * grid[1]
        b_an = (ah + aw).reshape(self.heads, self.m, n)              # (H, m, N)
        b_na = (ha + wa).reshape(self.heads, n, self.m)              # (H, N, m)
        return b_an.unsqueeze(0), b_na.unsqueeze(0)

    def position_biases(self, grid, dtype, device=None):
        """(1, H, m, N) agent->token and (1, H, N, m) token->agent biases, or zeros (0.0)."""
        b_an, b_na = 0.0, 0.0
        if self.bias:
            def resize(table):
                return F.interpolate(table.to(dtype), size=grid, mode="bilinear", align_corners=False).flatten(-2)
            b_an, b_na = resize(self.an_bias).unsqueeze(0), resize(self.na_bias).transpose(-1, -2).unsqueeze(0)
        if self.pos_bias:
            d_an, d_na = self._decomposed(grid, dtype, device)
            b_an, b_na = b_an + d_an, b_na + d_na
        return b_an, b_na

    def bench_fn(self, q, k, v, grid=None):
        if self.pos_bias:  # create the grid's parameters outside the timed call
            self.decomposed_biases(checked_grid(q.shape[-2], grid), q.device)
        return super().bench_fn(q, k, v, grid)

    def weights(self, q, k, grid):
        """Q_attn (B, H, N, m) and A_attn (B, H, m, N), both row-stochastic."""
        grid = checked_grid(q.shape[-2], grid)
        agents = self.agents(q, grid)                                         # (B, H, m, d)
        b_an, b_na = self.position_biases(grid, q.dtype, q.device)
        a_attn = torch.softmax((agents @ k.transpose(-1, -2)) * self.scale + b_an, dim=-1)
        q_attn = torch.softmax((q @ agents.transpose(-1, -2)) * self.scale + b_na, dim=-1)
        return q_attn, a_attn

    def forward(self, q, k, v, grid=None):
        q_attn, a_attn = self.weights(q, k, grid)
        out = q_attn @ (a_attn @ v)                                           # (B, H, N, d)
        if self.dwc:
            g = checked_grid(q.shape[-2], grid)
            out = out + from_image(self.conv(to_image(v, *g)), self.heads)
        return out

    def attention_matrix(self, q, k, v, grid=None):
        """Q_attn A_attn (B, H, N, N); None with ``dwc`` (the conv term is per channel)."""
        if self.dwc:
            return None
        q_attn, a_attn = self.weights(q, k, grid)
        return q_attn @ a_attn

    def macs(self, batch, n, grid=None):
        # A kᵀ, A_attn v, q Aᵀ, Q_attn (A_attn v): 4·N·m·d; depthwise 3×3 conv: 9·N·d per head
        per_head = 4 * n * self.m * self.head_dim + (9 * n * self.head_dim if self.dwc else 0)
        return batch * self.heads * per_head

    def fit_closed(self, q, k, v, grid=None, iters=20) -> dict[str, Any]:
        """Agents := per-head k-means centroids (k-means++, ``iters`` Lloyd steps, ``seed``) of the
        fitting queries (B, H, N, d); later calls use them instead of pooling. ``reset_fit()`` undoes."""
        fit = kmeans(heads_as_point_sets(q), self.m, iters, self.seed)
        self.fitted_agents = fit.centroids.detach()
        return {"kind": "kmeans", "m": self.m, "iters": iters, "seed": self.seed, "iters_run": fit.iters,
                "fit_tokens": q.shape[0] * q.shape[2], "inertia": fit.inertia.tolist()}

    def reset_fit(self) -> None:
        self.fitted_agents = None
