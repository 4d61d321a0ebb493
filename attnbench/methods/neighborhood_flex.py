"""``neighborhood-flex``: 2-D neighbourhood attention (attnbench.methods.neighborhood) through
FlexAttention, in the original token order.

The mask_mod tests, from index arithmetic, that the key's row and column fall inside the query's
slid kernel x kernel neighbourhood (start tables from the reference's ``window_starts``). The
BlockMask depends only on the grid and kernel: built once per shape outside the timed call.
MACs count the computed blocks; ``impl.macs_needed_pairs`` the N · kernel² needed pairs.
"""
from __future__ import annotations

from attnbench.methods._flex import BlockStats, FlexMixin, block_kinds, block_stats, expand_stats, flex_reason, make_block_mask
from attnbench.methods._grid import checked_grid
from attnbench.methods.neighborhood import NeighborhoodAttention, neighbour_mask, window_starts
from attnbench.registry import register


@register("neighborhood-flex", default_sweep=("cuda",), family="window", needs_grid=True,
          defaults=dict(NeighborhoodAttention.info.defaults),
          description="2-D neighbourhood attention as a FlexAttention block mask")
class NeighborhoodFlex(FlexMixin, NeighborhoodAttention):
    """``neighborhood`` with flex_attention; see the module docstring."""

    @staticmethod
    def availability() -> str | None:
        return flex_reason()

    def _mask_mod(self, h: int, w: int, device):
        kh, kw = min(self.kernel, h), min(self.kernel, w)
        rows, cols = window_starts(h, kh).to(device), window_starts(w, kw).to(device)

        def mask_mod(b, hh, q_idx, kv_idx):
            r0, c0 = rows[q_idx // w], cols[q_idx % w]
            kr, kc = kv_idx // w, kv_idx % w
            return (kr >= r0) & (kr < r0 + kh) & (kc >= c0) & (kc < c0 + kw)
        return mask_mod

    @property
    def _cache(self) -> dict:
        return self.__dict__.setdefault("_flex_cache", {})

    def _blocks(self, h: int, w: int):
        """(partial, full) block maps (1, 1, nq, nk) and BlockStats per (batch, head)."""
        key = ("blocks", h, w, self.kernel)
        if key not in self._cache:
            mask = neighbour_mask(h, w, self.kernel)
            partial, full = block_kinds(mask[None, None])
            self._cache[key] = (partial, full, block_stats(partial, full, int(mask.sum()), h * w, h * w, h * w))
        return self._cache[key]

    def _pattern(self, n: int, grid, device):
        h, w = checked_grid(n, grid)
        key = ("mask", h, w, self.kernel, device)
        if key not in self._cache:
            partial, full, _ = self._blocks(h, w)
            self._cache[key] = make_block_mask(partial.to(device), full.to(device), self._mask_mod(h, w, device), n, n)
        return self._cache[key]

    def prepare(self, batch, n, grid, device):
        self._pattern(n, grid, device)

    def forward(self, q, k, v, grid=None):
        return self.attend(q, k, v, block_mask=self._pattern(q.shape[-2], grid, q.device))  # (B, H, N, d)

    def stats(self, batch: int, n: int, grid=None) -> BlockStats:
        return expand_stats(self._blocks(*checked_grid(n, grid))[2], batch * self.heads)

    def macs(self, batch, n, grid=None):
        return 2 * self.head_dim * self.stats(batch, n, grid).macs_blocks

    def flex_impl(self, q, k, v, grid=None):
        return self.stats(q.shape[0], q.shape[-2], grid).impl(self.head_dim)

    def attention_matrix(self, q, k, v, grid=None):
        return None  # the reference's matrix is the same pattern; not formed twice
