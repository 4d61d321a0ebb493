"""A DeiT-style ViT (patch 16, cls token, pre-norm blocks) whose every block uses one attention.

Query-using methods get the DeiT projection ``qkv = Linear(dim, 3·dim, bias=True)``. Methods
that ignore the queries (``uses_query=False``, e.g. ``anchor``) follow the AnchorFormer design:
a single bias-free projection producing k and v, ``kv = Linear(dim, 2·dim, bias=False)``, and
no query projection at all.

Methods that need a 2-D token grid (``needs_grid``) attend over the patch tokens on their
(img/16, img/16) grid; the cls token attends exactly (softmax over all tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnbench import registry


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of one DeiT variant; ``attention`` is a registry name."""

    dim: int
    heads: int
    depth: int = 12
    patch: int = 16
    img: int = 224
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    attention: str = "vanilla-math"
    attention_params: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        """Sequence length seen by attention: patches plus the cls token."""
        return (self.img // self.patch) ** 2 + 1


ARCHS = {
    "deit-tiny": {"dim": 192, "heads": 3},
    "deit-small": {"dim": 384, "heads": 6},
    "deit-base": {"dim": 768, "heads": 12},
}


def vit_config(arch: str, attention: str, img: int = 224, **attention_params: Any) -> ViTConfig:
    """The named DeiT preset with ``attention`` in every block."""
    if arch not in ARCHS:
        raise KeyError(f"unknown arch {arch!r}; use {', '.join(ARCHS)}")
    return ViTConfig(**ARCHS[arch], img=img, attention=attention, attention_params=dict(attention_params))


class ViTAttention(nn.Module):
    """Projections around a registered attention core: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, heads: int, method: str, params: dict[str, Any],
                 grid: tuple[int, int] | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        info = registry.get_info(method)
        self.uses_query = info.uses_query
        self.grid = grid if info.needs_grid else None
        if self.uses_query:
            self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        else:
            self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.core = registry.create(method, heads=heads, head_dim=self.head_dim, **params)
        self.proj = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v each (B, H, N, d); q is k for methods that ignore the queries."""
        b, n, _ = x.shape
        if self.uses_query:
            q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            return q, k, v
        k, v = self.kv(x).reshape(b, n, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape                                          # (B, N, C)
        q, k, v = self.split(x)                                    # (B, H, N, d)
        out = self.attend(q, k, v)                                 # (B, H, N, d)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, H, N, d) -> (B, H, N, d); token 0 is the cls token."""
        if self.grid is None:
            return self.core(q, k, v, grid=None)
        patches = self.core(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], grid=self.grid)  # (B, H, N-1, d)
        cls = torch.nn.functional.scaled_dot_product_attention(q[:, :, :1], k, v)    # (B, H, 1, d)
        return torch.cat([cls, patches], dim=2)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN x), then x + MLP(LN x)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-6)
        side = cfg.img // cfg.patch
        self.attn = ViTAttention(cfg.dim, cfg.heads, cfg.attention, cfg.attention_params, grid=(side, side))
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Linear(hidden, cfg.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Images (B, 3, img, img) -> logits (B, num_classes), classified from the cls token."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.tokens, cfg.dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, P, C)
        cls = self.cls_token.expand(x.shape[0], -1, -1)           # (B, 1, C)
        x = torch.cat([cls, x], dim=1) + self.pos_embed           # (B, N, C)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])                                 # (B, classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
