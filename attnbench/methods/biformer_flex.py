"""``biformer-flex``: BiFormer bi-level routing (attnbench.methods.biformer) through FlexAttention.

Same parameters and routing as ``biformer`` (region means, q̄ k̄ᵀ summed over heads, top-k). The
tokens are gathered region by region (the reference's slot layout without its padding slots), so
each region is a run of consecutive positions, and scattered back after attention; the mask_mod
looks up "key's region is routed from the query's region" in a (B, R, R) boolean table. The routing
depends on the input, so inside every timed call it is
computed, written into that table, and turned into a BlockMask (shared by the heads) from
per-block region counts: a block pair's allowed-pair count is C_q A C_kᵀ, with C the tokens of
each region in each block and A the routed table, so nothing N × N is formed.

``macs_analytic`` of a row counts the routing (R² · heads · d) and the blocks computed on that
row's input; ``impl.macs_needed_pairs`` the routed token pairs.
"""
from __future__ import annotations

import torch

from attnbench.methods._flex import (FLEX_BLOCK, BlockStats, FlexMixin, block_kinds_from_counts, block_stats,
                                     flex_reason, make_block_mask)
from attnbench.methods._grid import checked_grid
from attnbench.methods.biformer import BiFormerAttention, region_layout, region_means, route
from attnbench.registry import register


def token_regions(idx: torch.Tensor, valid: torch.Tensor, n: int) -> torch.Tensor:
    """(N,) long region of every token from the reference's slot layout (R, t)."""
    regions = torch.arange(idx.shape[0], device=idx.device)[:, None].expand_as(idx)
    out = torch.empty(n, dtype=torch.long, device=idx.device)
    out[idx[valid]] = regions[valid]
    return out


def block_region_counts(reg: torch.Tensor, r: int, block: int = FLEX_BLOCK) -> torch.Tensor:
    """(n_blocks, R) float: tokens of each region in each block of ``block`` consecutive tokens."""
    n = reg.shape[0]
    counts = torch.zeros((n + block - 1) // block, r, device=reg.device)
    return counts.index_put_((torch.arange(n, device=reg.device) // block, reg), torch.ones(n, device=reg.device),
                             accumulate=True)


@register("biformer-flex", default_sweep=("cuda",), family="biformer", needs_grid=True,
          defaults=dict(BiFormerAttention.info.defaults),
          description="BiFormer bi-level routing with the routed regions as a FlexAttention block mask")
class BiFormerFlex(FlexMixin, BiFormerAttention):
    """``biformer`` with flex_attention over the routed regions; see the module docstring."""

    @staticmethod
    def availability() -> str | None:
        return flex_reason()

    def _tables(self, batch: int, n: int, grid, device):
        """Per shape, built once: slot layout, token regions, block counts, the routed-table buffer
        (B, R, R) and the mask_mod reading it."""
        cache = self.__dict__.setdefault("_flex_cache", {})
        key = (batch, n, checked_grid(n, grid), device)
        if key not in cache:
            _, idx, valid = self.layout(n, grid, device)
            order = idx[valid]                                     # (N,) tokens region by region
            reg = token_regions(idx, valid, n)[order]              # (N,) non-decreasing
            routed = torch.zeros(batch, idx.shape[0], idx.shape[0], dtype=torch.bool, device=device)

            def mask_mod(b, h, q_idx, kv_idx):
                return routed[b, reg[q_idx], reg[kv_idx]]

            sizes = valid.sum(-1).float()                          # (R,)
            cache[key] = (idx, valid, order, block_region_counts(reg, idx.shape[0]), routed, mask_mod, sizes)
        return cache[key]

    def prepare(self, batch, n, grid, device):
        self._tables(batch, n, grid, device)

    def routed_table(self, q, k, idx, valid) -> torch.Tensor:
        """(B, R, R) bool: region j is among query region i's routed regions (the reference's routing)."""
        r = idx.shape[0]
        routes = route(region_means(q[..., idx, :], valid), region_means(k[..., idx, :], valid), min(self.topk, r))
        table = torch.zeros(q.shape[0], r, r, dtype=torch.bool, device=q.device)
        return table.scatter_(-1, routes, True)

    def forward(self, q, k, v, grid=None):
        b, n = q.shape[0], q.shape[-2]
        idx, valid, order, counts, routed, mask_mod, sizes = self._tables(b, n, grid, q.device)
        routed.copy_(self.routed_table(q, k, idx, valid))
        pairs = counts @ routed.to(counts.dtype) @ counts.transpose(0, 1)   # (B, nq, nk) allowed pairs
        partial, full = block_kinds_from_counts(pairs[:, None], n, n)      # (B, 1, nq, nk)
        self._last = (partial, full, routed, sizes, n)   # counted later, outside the timed call
        seq = [x[..., order, :] for x in (q, k, v)]                         # (B, H, N, d) region order
        o = self.attend(*seq, block_mask=make_block_mask(partial, full, mask_mod, n, n))
        return torch.empty_like(o).index_copy_(-2, order, o)               # (B, H, N, d) token order

    def last_stats(self) -> BlockStats:
        """Block and pair counts of the last call, over batch and heads."""
        partial, full, routed, sizes, n = self._last
        pairs = float(((sizes @ routed.to(sizes.dtype)) * sizes).sum())  # per head, over the batch
        s = block_stats(partial, full, pairs, n, n, n)                        # the mask is shared by the heads
        return BlockStats(s.block_density, s.pair_density, s.macs_blocks * self.heads, s.macs_pairs * self.heads)

    def routing_macs(self, batch: int, n: int, grid=None) -> int:
        r = region_layout(checked_grid(n, grid), self.regions)[0].shape[0]
        return batch * r * r * self.heads * self.head_dim

    def macs(self, batch, n, grid=None):
        """Before any call: routing plus every block (an upper bound; rows carry the input's count)."""
        nb = -(-n // FLEX_BLOCK)
        dense = min(n * n, nb * nb * FLEX_BLOCK ** 2)
        return self.routing_macs(batch, n, grid) + 2 * self.head_dim * batch * self.heads * dense

    def flex_impl(self, q, k, v, grid=None):
        with torch.no_grad():
            self(q, k, v, grid=grid)
        stats = self.last_stats()
        routing = self.routing_macs(q.shape[0], q.shape[-2], grid)
        return {**stats.impl(self.head_dim), "macs_analytic": routing + 2 * self.head_dim * stats.macs_blocks,
                "macs_routing": routing}

    def attention_matrix(self, q, k, v, grid=None):
        return None  # the reference's matrix is the same pattern; not formed twice
