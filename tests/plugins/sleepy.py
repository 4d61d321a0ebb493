"""A method whose call sleeps a fixed time (ATTNBENCH_SLEEPY_S, default 1 s): executor scaling."""
import os
import time

import attnbench
from attnbench.methods.base import AttentionMethod


@attnbench.register("sleepy", family="test", budget="m", defaults={"m": 1}, replace=True)
class Sleepy(AttentionMethod):
    def __init__(self, heads, head_dim, m=1):
        super().__init__(heads, head_dim)
        self.m = m

    def forward(self, q, k, v, grid=None):      # (B, H, N, d) in and out
        time.sleep(float(os.environ.get("ATTNBENCH_SLEEPY_S", "1")))
        return v

    def macs(self, batch, n, grid=None):
        return 0
