"""Per-process timing of plain attention with and without the heap policy of measure/allocator.py.

Starts ``--processes`` fresh Python processes of each kind, alternating, each timing plain
softmax attention (the gate's speed reference) at ``--n`` tokens, 6 heads of 64, float32, one
thread: 3 warm-up calls, then the median of ``--calls`` calls. Prints each process's median
and, per kind, the range over processes:

    python scripts/allocator_modes.py [--n 576] [--processes 10] [--calls 30]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from attnbench.measure.allocator import steady_env  # noqa: E402

CHILD = """
import statistics, sys, time, torch
sys.path.insert(0, {root!r})
from attnbench.reference import softmax_attention
torch.set_num_threads(1)
torch.manual_seed(0)
q, k, v = (torch.randn(1, 6, {n}, 64) for _ in range(3))
def call():
    with torch.no_grad():
        return softmax_attention(q, k, v, precision=None, block=None)
for _ in range(3):
    call()
times = []
for _ in range({calls}):
    t0 = time.perf_counter(); call(); times.append((time.perf_counter() - t0) * 1e3)
print(statistics.median(times))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=576)
    ap.add_argument("--processes", type=int, default=10)
    ap.add_argument("--calls", type=int, default=30)
    a = ap.parse_args()
    code = CHILD.format(root=str(ROOT), n=a.n, calls=a.calls)
    medians: dict[str, list[float]] = {"default heap": [], "steady policy": []}
    for i in range(a.processes):
        for kind, env in (("default heap", None), ("steady policy", steady_env())):
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            medians[kind].append(float(out.stdout))
            print(f"process {i + 1:2d} {kind:13s} median {medians[kind][-1]:6.2f} ms per call", flush=True)
    for kind, ms in medians.items():
        print(f"{kind}: {min(ms):.2f}-{max(ms):.2f} ms over {len(ms)} processes (max/min {max(ms) / min(ms):.2f})")


if __name__ == "__main__":
    main()
