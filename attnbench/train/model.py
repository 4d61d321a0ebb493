"""A small pre-norm transformer encoder whose attention in every block is a registered method."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnbench import registry
from attnbench.train.settings import ModelSettings


class Block(nn.Module):
    """x + attn(LN x), then x + MLP(LN x); attention is the registered method ``attn``."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, attn: nn.Module) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.attn = attn
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
        b, n, c = x.shape                                                      # (B, N, C)
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        h = self.attn(q, k, v, grid=grid)                                      # (B, heads, N, d)
        x = x + self.proj(h.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.ln2(x))


class Encoder(nn.Module):
    """Token embedding (the embeddings of a token's channels summed) plus learned positions, L
    blocks, a final LayerNorm and a linear head: per token, or on the mean over tokens."""

    def __init__(self, method: str, params: dict[str, Any], m: int | None, s: ModelSettings, vocab: int,
                 n: int, classes: int, per_token: bool) -> None:
        super().__init__()
        if s.width % s.heads:
            raise ValueError(f"width {s.width} is not a multiple of heads {s.heads}")
        self.embed = nn.Embedding(vocab, s.width)
        self.pos = nn.Parameter(torch.randn(n, s.width) * 0.02)
        head_dim = s.width // s.heads
        self.blocks = nn.ModuleList(
            Block(s.width, s.heads, s.mlp_ratio, registry.build(method, heads=s.heads, head_dim=head_dim,
                                                                params=params, m=m))
            for _ in range(s.layers))
        self.norm = nn.LayerNorm(s.width)
        self.head = nn.Linear(s.width, classes)
        self.per_token = per_token

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """x: (B, N, channels) token ids -> logits (B, N, classes) per token or (B, classes)."""
        h = self.embed(x).sum(dim=2) + self.pos                                # (B, N, C)
        for block in self.blocks:
            h = block(h, grid)
        h = self.norm(h)
        return self.head(h if self.per_token else h.mean(dim=1))

    def attention_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The learnable parameters of the attention methods themselves (anchors, predictors, ...)."""
        return [(f"blocks.{i}.attn.{name}", p) for i, b in enumerate(self.blocks)
                for name, p in b.attn.named_parameters() if p.requires_grad]
