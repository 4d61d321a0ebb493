"""``vanilla-flex``: exact softmax attention through FlexAttention with no mask (the dense baseline
of the ``*-flex`` members). Compiled by inductor in benchmarks; see attnbench.methods._flex."""
from __future__ import annotations

from attnbench.methods._flex import FlexMixin, dense_stats, flex_reason
from attnbench.methods.vanilla import VanillaMath
from attnbench.registry import register


@register("vanilla-flex", default_sweep=("cuda",), family="vanilla",
          description="flex_attention with no mask (dense FlexAttention)")
class VanillaFlex(FlexMixin, VanillaMath):
    """flex_attention(q, k, v): every block computed; same math as ``vanilla-math``."""

    @staticmethod
    def availability() -> str | None:
        return flex_reason()

    def forward(self, q, k, v, grid=None):
        return self.attend(q, k, v)                                  # (B, H, N, d)

    def flex_impl(self, q, k, v, grid=None):
        return dense_stats(q.shape[0], self.heads, q.shape[-2]).impl(self.head_dim)

    def workspace_bytes(self, batch, n, dtype_bytes):
        return None if self.compiled is not None else super().workspace_bytes(batch, n, dtype_bytes)
