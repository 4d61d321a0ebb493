"""A method that misbehaves at chosen token counts (tests of the isolated executors).

n = 24: os.abort(); n = 40: a segfault; n = 48: sleeps an hour; n = 56: allocates until
MemoryError. At every other n it returns v.
"""
import ctypes
import os
import time

import attnbench
from attnbench.methods.base import AttentionMethod


def _allocate_until_memory_error():
    import numpy as np

    held = []
    while True:                       # untouched pages: address space, not resident memory
        held.append(np.empty(2 ** 28, dtype=np.float64))


@attnbench.register("misbehave", family="test", replace=True)
class Misbehave(AttentionMethod):
    def forward(self, q, k, v, grid=None):      # (B, H, N, d) in and out
        n = q.shape[2]
        if n == 24:
            os.abort()
        if n == 40:
            ctypes.string_at(0)
        if n == 48:
            time.sleep(3600)
        if n == 56:
            _allocate_until_memory_error()
        return v

    def macs(self, batch, n, grid=None):
        return 0
