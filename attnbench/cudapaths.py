"""One short call of every device code path a GPU run takes, each against a plain reference.

``python -m attnbench.cudapaths --device cuda`` prints the environment (JSON), then one line per path (``ok``, ``FAILED`` or
``skipped``, and why) and exits 1 when a path failed. Paths: CUDA-event timing against a host
clock, allocator peak statistics against a known allocation, a CUDA graph replay against the eager
call, ``sdpa_kernel`` with each SDPA backend against float64 exact attention, FlexAttention
(``create_block_mask`` + ``flex_attention``) against it too, the fused-anchor Triton kernels
(on CPU its chunked PyTorch
version) against plain anchor attention, forward and gradients, and NVML through pynvml. On CPU the paths
that need CUDA say so and the CPU ones still run.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

import torch

from attnbench.reference import softmax_attention
from attnbench.spec import one_line

BF16_TOL = 3e-2  # bfloat16 operands: relative Frobenius error of a correct kernel lands near 4e-3


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref))


def qkv(device: str, dtype: torch.dtype, n: int = 256, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(2, 2, n, 64, generator=gen) * (2.0 if i == 0 else 1.0)).to(device, dtype)
                 for i in range(3))


def exact(q, k, v) -> torch.Tensor:
    return softmax_attention(q.double().cpu(), k.double().cpu(), v.double().cpu())


def check_events(device: str) -> str:
    from attnbench.measure.timing import TimingConfig, time_fn

    a = torch.randn(2048, 2048, device=device)
    res = time_fn(lambda: a @ a, device, TimingConfig(cpu_min_run_time_s=0.05))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    host_ms = (time.perf_counter() - t0) * 100
    ev = res["latency_ms"]
    assert 0 < ev < 3 * host_ms + 1, f"event median {ev:.3f} ms against host clock {host_ms:.3f} ms per call"
    return f"event median {ev:.3f} ms, host clock {host_ms:.3f} ms per call"


def check_memory(device: str) -> str:
    from attnbench.measure.memory import cuda_peak_bytes

    nbytes = 64 * 2**20
    peak = cuda_peak_bytes(lambda: torch.empty(nbytes, dtype=torch.uint8, device=device))
    assert nbytes <= peak < 2 * nbytes, f"peak {peak} bytes for a {nbytes}-byte allocation"
    return f"peak {peak} bytes for a {nbytes}-byte allocation"


def check_graph(device: str) -> str:
    from attnbench.measure.timing import capture_cuda_graph

    x = torch.randn(512, 512, device=device)
    graph, out = capture_cuda_graph(lambda: torch.tanh(x @ x))
    x.copy_(torch.randn(512, 512, device=device))  # fresh input: the replay must recompute
    graph.replay()
    torch.cuda.synchronize()
    err = rel_err(out, torch.tanh(x @ x))
    assert err < 1e-5, f"replay differs from the eager call by {err:.2e}"
    return f"replay vs eager {err:.1e}"


def sdpa_check(backend: str) -> Callable[[str], str]:
    def run(device: str) -> str:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        name = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                "math": "MATH"}[backend]
        member = getattr(SDPBackend, name, None)
        if member is None:
            raise AssertionError(f"torch {torch.__version__} has no SDPBackend.{name}")
        q, k, v = qkv(device, dtype)
        with sdpa_kernel(member):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        err = rel_err(out, exact(q, k, v))
        assert err < BF16_TOL, f"error {err:.2e} against exact attention"
        return f"error {err:.1e} against exact attention ({str(dtype)[6:]})"
    return run


def check_flex(device: str) -> str:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q, k, v = qkv(device, torch.bfloat16)
    n = q.shape[-2]
    mask = create_block_mask(lambda b, h, i, j: j <= i, None, None, n, n, device=device)
    out = torch.compile(flex_attention)(q, k, v, block_mask=mask)
    causal = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    ref = torch.softmax(q.double().cpu() @ k.double().cpu().transpose(-1, -2) / 8.0 + causal, -1) @ v.double().cpu()
    err = rel_err(out, ref)
    assert err < BF16_TOL, f"causal flex_attention error {err:.2e} against exact attention"
    return f"causal flex_attention (compiled) error {err:.1e}"


def check_fused_anchor(device: str) -> str:
    from attnbench.methods.anchor import anchor_attention
    from attnbench.methods.fused_anchor import FusedAnchor

    module = FusedAnchor(heads=2, head_dim=64, m=30, seed=3).to(device)
    _, k, v = qkv(device, torch.bfloat16, n=300, seed=1)
    k, v = k.requires_grad_(True), v.requires_grad_(True)
    out = module(None, k, v)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (k, v, module.anchors), g)
    kr, vr, ur = (t.detach().double().requires_grad_(True) for t in (k, v, module.anchors.to(torch.bfloat16)))
    ref = anchor_attention(ur, kr, vr, module.scale)
    ref_grads = torch.autograd.grad(ref, (kr, vr, ur), g.double())
    errs = [rel_err(out, ref)] + [rel_err(a, b) for a, b in zip(grads, ref_grads)]
    text = "errors (out, dk, dv, d anchors) " + ", ".join(f"{e:.1e}" for e in errs)
    assert max(errs) < BF16_TOL, text
    return f"{module.impls(k.device)[0]} forward, {module.impls(k.device)[2]} backward: {text}"


def check_nvml(device: str) -> str:
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        energy = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        power = pynvml.nvmlDeviceGetPowerUsage(handle)
        assert energy > 0 and power > 0, f"energy {energy} mJ, power {power} mW"
        return f"{pynvml.nvmlDeviceGetName(handle)}: energy counter {energy} mJ, power {power / 1000:.0f} W"
    finally:
        pynvml.nvmlShutdown()


# name -> (needs CUDA, check)
PATHS: dict[str, tuple[bool, Callable[[str], str]]] = {
    "cuda-events": (True, check_events),
    "cuda-memory-stats": (True, check_memory),
    "cuda-graph": (True, check_graph),
    **{f"sdpa-{b}": (b != "math", sdpa_check(b)) for b in ("flash", "efficient", "cudnn", "math")},
    "flex-attention": (True, check_flex),
    "fused-anchor": (False, check_fused_anchor),
    "nvml": (True, check_nvml),
}


def run_paths(device: str, echo: Callable[[str], None] = print) -> int:
    """Run every path; 1 when one failed."""
    failed = 0
    for name, (needs_cuda, fn) in PATHS.items():
        if needs_cuda and device != "cuda":
            echo(f"skipped {name}: needs CUDA")
            continue
        t0 = time.perf_counter()
        try:
            detail: Any = fn(device)
            echo(f"ok {name}: {detail} ({time.perf_counter() - t0:.1f} s)")
        except Exception as exc:  # each path is reported, the next one still runs
            failed = 1
            echo(f"FAILED {name}: {type(exc).__name__}: {one_line(exc)}")
    return failed


def main(argv: list[str]) -> int:
    """``--device D``; ``--list FILE``: also write the registry's methods on D (JSON) to FILE."""
    import argparse
    import json

    from attnbench import registry
    from attnbench.measure.env import collect_env

    parser = argparse.ArgumentParser(prog="python -m attnbench.cudapaths")
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--list", default=None)
    args = parser.parse_args(argv)
    print(json.dumps(collect_env(args.device), default=str))
    if args.list:
        with open(args.list, "w") as fh:
            json.dump(registry.list_methods(args.device), fh, default=str)
    return run_paths(args.device)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
