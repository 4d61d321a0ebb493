"""A method that makes a multiprocessing lock when built (as torch.compile's compile pool does)
and keeps it: a worker that exits without multiprocessing's finalizers leaks its semaphore."""
import multiprocessing

import attnbench
from attnbench.methods.base import AttentionMethod

HELD = []


@attnbench.register("lockholder", family="test", replace=True)
class LockHolder(AttentionMethod):
    def __init__(self, heads, head_dim):
        super().__init__(heads, head_dim)
        HELD.append(multiprocessing.Lock())

    def forward(self, q, k, v, grid=None):      # (B, H, N, d) in and out
        return v

    def macs(self, batch, n, grid=None):
        return 0
