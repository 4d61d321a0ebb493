"""Relative error of `nystrom` at m = n (where the Nystrom form is exact) per Newton-Schulz step count.

    PYTHONPATH=. python scripts/nystrom_pinv_iters.py
"""
import torch
import attnbench
from attnbench.measure.error import exact_reference, error_metrics
for n in (64, 197):
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, 2, n, 16, generator=g) for _ in range(3))
    ref = exact_reference(q, k, v).out
    errs = {}
    for it in (6, 10, 12, 15, 20):
        mod = attnbench.create("nystrom", heads=2, head_dim=16, m=n, pinv_iters=it)
        errs[it] = round(error_metrics(mod(q, k, v), ref)["err_rel_fro"], 5)
    print("n=m=", n, errs)
