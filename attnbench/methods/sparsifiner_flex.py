"""``sparsifiner-flex``: Sparsifiner (attnbench.methods.sparsifiner) through FlexAttention.

Same parameters, predictor weights and kept keys as ``sparsifiner`` (it subclasses it and uses
its ``keep_mask``). Inside every timed call the predictor's (B, H, N, N) kept-key mask is
computed, copied into a boolean buffer that the mask_mod reads, and turned into a BlockMask
(a block pair is computed when it holds a kept pair, full when all its pairs are kept). The keys
a query keeps are scattered over the sequence, so most block pairs hold one.

``macs_analytic`` of a row counts the predictor and the blocks computed on that row's input;
``impl.macs_needed_pairs`` the B · heads · N · kept pairs.
"""
from __future__ import annotations

import torch

from attnbench.methods._flex import FlexMixin, block_kinds, block_stats, flex_reason, make_block_mask
from attnbench.methods.sparsifiner import Sparsifiner
from attnbench.registry import register


@register("sparsifiner-flex", default_sweep=("cuda",), family="sparsifiner", defaults=dict(Sparsifiner.info.defaults),
          description="Sparsifiner's predicted top-keep keys as a FlexAttention mask_mod")
class SparsifinerFlex(FlexMixin, Sparsifiner):
    """``sparsifiner`` with flex_attention over the kept keys; see the module docstring."""

    @staticmethod
    def availability() -> str | None:
        return flex_reason()

    def _buffer(self, shape, device):
        """The (B, H, N, N) bool buffer and the mask_mod reading it, one per shape."""
        cache = self.__dict__.setdefault("_flex_cache", {})
        key = (tuple(shape), device)
        if key not in cache:
            kept = torch.zeros(shape, dtype=torch.bool, device=device)

            def mask_mod(b, h, q_idx, kv_idx):
                return kept[b, h, q_idx, kv_idx]
            cache[key] = (kept, mask_mod)
        return cache[key]

    def prepare(self, batch, n, grid, device):
        self.token_projections(n, device)
        self._buffer((batch, self.heads, n, n), device)

    def forward(self, q, k, v, grid=None):
        n = q.shape[-2]
        kept, mask_mod = self._buffer((*q.shape[:-1], n), q.device)
        kept.copy_(self.keep_mask(q, k))                            # (B, H, N, N)
        partial, full = block_kinds(kept)                           # (B, H, nq, nk)
        self._last = (partial, full, n)
        return self.attend(q, k, v, block_mask=make_block_mask(partial, full, mask_mod, n, n))

    def macs(self, batch, n, grid=None):
        """Before any call: predictor plus every pair (an upper bound; rows carry the input's count)."""
        return batch * self.heads * (self.predictor_macs(n) + 2 * n * n * self.head_dim)

    def flex_impl(self, q, k, v, grid=None):
        with torch.no_grad():
            self(q, k, v, grid=grid)
        partial, full, n = self._last
        b = q.shape[0]
        stats = block_stats(partial, full, b * self.heads * n * self.kept(n), n, n, n)
        predictor = b * self.heads * self.predictor_macs(n)
        return {**stats.impl(self.head_dim), "macs_analytic": predictor + 2 * self.head_dim * stats.macs_blocks,
                "macs_predictor": predictor}

    def attention_matrix(self, q, k, v, grid=None):
        return None  # the reference's matrix is the same pattern; not formed twice
