"""How many distinct anchors does the Eq. 6 fixed point ("--fit closed") leave?

Fits `anchor` on the `image` workload's fitting split at n = 1024 and counts, per head, groups of
anchors lying within 1 % of the largest anchor norm of one another.

    python scripts/count_distinct_anchors.py [--iters 20]
"""
import argparse

import torch

import attnbench
from attnbench.workloads import make_workload


def distinct(u: torch.Tensor, rel_tol: float = 1e-2) -> int:
    """Greedy count of groups of rows of u (m, d) closer than rel_tol * max row norm."""
    d = torch.cdist(u, u)
    tol = rel_tol * u.norm(dim=-1).max()
    left, groups = set(range(u.shape[0])), 0
    while left:
        i = left.pop()
        groups += 1
        left -= {j for j in list(left) if d[i, j] < tol}
    return groups


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--n", type=int, default=1024)
    args = ap.parse_args()
    wl = make_workload("image", 1, 6, args.n, 64, dtype=torch.float32, device="cpu", seed=0, split="fit")
    for m in (10, 30, 100):
        mod = attnbench.create("anchor", heads=6, head_dim=64, m=m)
        mod.fit_closed(wl.q, wl.k, wl.v, wl.grid, iters=args.iters)
        counts = [distinct(mod.anchors[h].detach()) for h in range(6)]
        print(f"m={m}: distinct anchors per head after {args.iters} iterations: {counts}")


if __name__ == "__main__":
    main()
