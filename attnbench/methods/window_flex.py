"""``window-flex``: Swin W-MSA / SW-MSA (attnbench.methods.window) through FlexAttention.

Same parameters, geometry and learnable bias table as ``window`` (it subclasses it). The tokens
are laid out as the reference lays them out (``to_windows``: padding of uneven grids, the cyclic
shift, windows in row-major order), flattened to one sequence of n_windows · T slots, and
flex_attention runs over that sequence with

* a mask_mod "same window, and allowed by ``window_mask``" (the shifted region mask, padded keys
  masked for real queries), looked up from the reference's own (n_windows, T, T) mask;
* ``rel_pos_bias=True``: a score_mod adding ``bias_table[relative_position_index[slot_q, slot_k], h]``;
* a BlockMask from that token mask, built once per geometry outside the timed call.

Padded slots' outputs are dropped by ``from_windows`` as in the reference. MACs count the
computed blocks of the slot sequence; ``impl.macs_needed_pairs`` counts the real
(query, key) pairs inside shared windows and regions.
"""
from __future__ import annotations

import torch

from attnbench.methods._flex import (BlockStats, FlexMixin, block_kinds, block_stats, expand_stats, flex_reason,
                                     make_block_mask)
from attnbench.methods.window import WindowAttention, WindowGeometry, to_windows, from_windows, window_mask, window_token_ids
from attnbench.registry import register


def slot_mask(g: WindowGeometry) -> torch.Tensor:
    """(n_windows, T, T) bool "may attend" between the slots of one window (all True if unmasked)."""
    allowed = window_mask(g)
    return torch.ones(g.n_windows, g.tokens, g.tokens, dtype=torch.bool) if allowed is None else allowed


def sequence_mask(g: WindowGeometry) -> torch.Tensor:
    """(L, L) bool over the flattened slot sequence, L = n_windows · T: block-diagonal windows."""
    allowed = slot_mask(g)
    full = torch.zeros(g.n_windows * g.tokens, g.n_windows * g.tokens, dtype=torch.bool)
    for w in range(g.n_windows):
        s = w * g.tokens
        full[s:s + g.tokens, s:s + g.tokens] = allowed[w]
    return full


def needed_pairs(g: WindowGeometry) -> int:
    """Allowed (real query, real key) slot pairs: the pairs the pattern needs."""
    real = window_token_ids(g) >= 0                               # (nW, T)
    return int((slot_mask(g) & real[:, :, None] & real[:, None, :]).sum())


@register("window-flex", default_sweep=("cuda",), family="window", needs_grid=True,
          defaults=dict(WindowAttention.info.defaults),
          description="Swin window attention (W-MSA / SW-MSA) as a FlexAttention block mask")
class WindowFlex(FlexMixin, WindowAttention):
    """``window`` with flex_attention over the window-ordered slot sequence; see the module docstring."""

    @staticmethod
    def availability() -> str | None:
        return flex_reason()

    @property
    def _flex_cache(self) -> dict:
        return self.__dict__.setdefault("_flex_state", {})

    def _pattern(self, g: WindowGeometry, device):
        """(BlockMask, BlockStats per (batch, head)), cached per geometry and device."""
        key = ("flex", g, device)
        if key not in self._flex_cache:
            allowed = slot_mask(g).to(device)                      # (nW, T, T)
            t = g.tokens

            def mask_mod(b, h, q_idx, kv_idx):
                wq = q_idx // t
                return (wq == kv_idx // t) & allowed[wq, q_idx % t, kv_idx % t]

            partial, full, stats = self._blocks(g)
            length = g.n_windows * t
            self._flex_cache[key] = make_block_mask(partial.to(device), full.to(device), mask_mod, length, length)
        return self._flex_cache[key], self._blocks(g)[2]

    def _blocks(self, g: WindowGeometry):
        """(partial, full) block maps (1, 1, nq, nk) of the slot sequence and their BlockStats."""
        key = ("flex-blocks", g)
        if key not in self._flex_cache:
            length = g.n_windows * g.tokens
            partial, full = block_kinds(sequence_mask(g)[None, None])
            self._flex_cache[key] = (partial, full, block_stats(partial, full, needed_pairs(g), g.h * g.w, length, length))
        return self._flex_cache[key]

    def _score_mod(self, g: WindowGeometry, device):
        if self.bias_table is None:
            return None
        idx, table, t = self._bias_index(g, device), self.bias_table, g.tokens

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + table[idx[q_idx % t, kv_idx % t], h].to(score.dtype)
        return score_mod

    def prepare(self, batch, n, grid, device):
        self._pattern(self.geometry(n, grid), device)

    def forward(self, q, k, v, grid=None):
        g = self.geometry(q.shape[-2], grid)
        block_mask, _ = self._pattern(g, q.device)
        b, h, d = q.shape[0], q.shape[1], q.shape[-1]
        seq = [to_windows(x, g).reshape(b, h, -1, d) for x in (q, k, v)]   # (B, H, nW·T, d)
        out = self.attend(*seq, block_mask=block_mask, score_mod=self._score_mod(g, q.device))
        return from_windows(out.reshape(b, h, g.n_windows, g.tokens, d), g)  # (B, H, N, d)

    def stats(self, batch: int, n: int, grid=None) -> BlockStats:
        stats = self._blocks(self.geometry(n, grid))[2]
        return expand_stats(stats, batch * self.heads)

    def macs(self, batch, n, grid=None):
        return 2 * self.head_dim * self.stats(batch, n, grid).macs_blocks

    def flex_impl(self, q, k, v, grid=None):
        return self.stats(q.shape[0], q.shape[-2], grid).impl(self.head_dim)
