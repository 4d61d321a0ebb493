"""Roofline columns: compulsory bytes, achieved GB/s and TFLOP/s, and their fractions of the
device's measured copy bandwidth and matmul throughput.

Conventions (also in docs/kernels.md, "Roofline columns"):

* ``bytes_min``: every input read once plus every output written once, in the row's dtype;
  nothing else. Forward: q (only for methods that use the queries; ``uses_query=False``
  methods such as ``anchor`` never read q), k, v and the output, each B·H·N·d elements.
  Forward+backward: additionally dout read and dk, dv (and dq for methods that use q) written.
  Method parameters (anchors, ...) are left out: m·d per head, small next to N·d.
* ``achieved_gbps`` = bytes_min / latency (1 GB = 1e9 bytes); ``achieved_tflops`` =
  2 · macs_analytic / latency for the forward; forward+backward rows use 3 · macs_analytic
  (backward ≈ 2 × forward, the usual convention) and say so in ``roofline_flops_basis``.
  FlashAttention's benchmarks count the backward as 2.5 × forward: ``tflops_on_basis`` gives a
  row's figure on that basis (the report's ``achieved_tflops_fa`` and ``mfu_fa`` columns).
* Peaks, measured once per process and per (device, dtype) and stored in ``env["roofline"]``:
  copy bandwidth = 2 · buffer bytes / time of one device-to-device copy (bytes read + bytes
  written, like bytes_min) and matmul throughput = 2·n³ / time of an n×n matmul in the row's
  dtype. CUDA: a 1 GiB copy, n = 8192, CUDA events, best of several calls. CPU: a 64 MiB copy
  and n = 1024 (512 for 16-bit dtypes), torch.utils.benchmark medians: on a busy CPU these are
  rough, so CPU fractions are indicative only.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from attnbench.spec import one_line

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
ROOFLINE_FIELDS = ("bytes_min", "achieved_gbps", "achieved_tflops", "frac_copy_bw", "frac_matmul_peak",
                   "roofline_flops_basis")


def bytes_min(batch: int, heads: int, n: int, head_dim: int, dtype_bytes: int,
              uses_query: bool = True, mode: str = "fwd") -> int:
    """Compulsory bytes: inputs read once, outputs written once (see the module docstring)."""
    tensor = batch * heads * n * head_dim * dtype_bytes
    inputs = (3 if uses_query else 2) * tensor        # q?, k, v
    total = inputs + tensor                           # + out
    if mode == "fwdbwd":
        total += tensor + inputs                      # + dout read, + dq?, dk, dv written
    return int(total)


def achieved(bytes_: int, flops: float, latency_ms: float) -> dict[str, float]:
    """{'achieved_gbps', 'achieved_tflops'} for a call of ``latency_ms`` milliseconds."""
    seconds = latency_ms * 1e-3
    return {"achieved_gbps": bytes_ / seconds / 1e9, "achieved_tflops": flops / seconds / 1e12}


def roofline_columns(row: dict[str, Any], uses_query: bool, peaks: dict[str, Any] | None) -> dict[str, Any]:
    """The roofline fields of a measured row (a pure function of the row and the peaks).

    Rows without a latency (errors, unsupported...) get ``bytes_min`` only; missing peaks give
    null fractions.
    """
    out: dict[str, Any] = dict.fromkeys(ROOFLINE_FIELDS)
    mode = row.get("mode", "fwd")
    out["bytes_min"] = bytes_min(row["batch"], row["heads"], row["n"], row["head_dim"],
                                 DTYPE_BYTES[row["dtype"]], uses_query, mode)
    latency, macs = row.get("latency_ms"), row.get("macs_analytic")
    if not latency or latency <= 0 or macs is None:
        return out
    factor = 3 if mode == "fwdbwd" else 1
    out["roofline_flops_basis"] = "2*macs_analytic" if factor == 1 else "3*2*macs_analytic (bwd = 2 x fwd)"
    out.update(achieved(out["bytes_min"], factor * 2 * macs, latency))
    peaks = peaks or {}
    if peaks.get("copy_gbps"):
        out["frac_copy_bw"] = out["achieved_gbps"] / peaks["copy_gbps"]
    if peaks.get("matmul_tflops"):
        out["frac_matmul_peak"] = out["achieved_tflops"] / peaks["matmul_tflops"]
    return out


# Forward+backward FLOPs as a multiple of the forward's, per counting convention. attnbench's rows
# (``achieved_tflops``) count the backward as 2 x the forward; FlashAttention's benchmarks count it
# as 2.5 x (their ``flops(..., mode="bwd")``), so its fwd+bwd figures are 3.5 / 3 times larger.
FLOPS_BASES = {"attnbench": 3.0, "flash-attn": 3.5}


def tflops_on_basis(achieved_tflops: float | None, mode: str | None, basis: str) -> float | None:
    """A row's ``achieved_tflops`` (attnbench's basis) counted on ``basis``; forward rows are equal."""
    if achieved_tflops is None:
        return None
    if mode != "fwdbwd":
        return achieved_tflops
    return achieved_tflops * FLOPS_BASES[basis] / FLOPS_BASES["attnbench"]


def mfu(achieved_tflops: float | None, matmul_tflops: float | None) -> float | None:
    """Achieved TFLOP/s over the device's measured matmul TFLOP/s (env.roofline), or None."""
    if achieved_tflops is None or not matmul_tflops:
        return None
    return achieved_tflops / matmul_tflops


def arithmetic_intensity(achieved_tflops: float | None, achieved_gbps: float | None) -> float | None:
    """FLOPs per compulsory byte: (FLOP/s) / (byte/s) of the same call."""
    if achieved_tflops is None or not achieved_gbps:
        return None
    return achieved_tflops * 1e12 / (achieved_gbps * 1e9)


def _cuda_best_ms(fn: Callable[[], Any], reps: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return min(times)


def _cpu_median_ms(fn: Callable[[], Any], min_run_time: float = 0.1) -> float:
    from torch.utils.benchmark import Timer

    return Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median * 1e3


def _copy_peak(device: str) -> dict[str, Any]:
    nbytes = 2**30 if device == "cuda" else 64 * 2**20
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    timer = _cuda_best_ms if device == "cuda" else _cpu_median_ms
    ms = timer(lambda: dst.copy_(src))
    return {"copy_gbps": 2 * nbytes / (ms * 1e-3) / 1e9, "copy_buffer_bytes": nbytes,
            "copy_stat": "best of 10" if device == "cuda" else "median"}


def _matmul_peak(device: str, dtype: str) -> dict[str, Any]:
    n = 8192 if device == "cuda" else (1024 if dtype == "float32" else 512)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen).to(getattr(torch, dtype))
    b = torch.randn(n, n, device=device, generator=gen).to(getattr(torch, dtype))
    timer = _cuda_best_ms if device == "cuda" else _cpu_median_ms
    ms = timer(lambda: a @ b)
    return {"matmul_tflops": 2 * n**3 / (ms * 1e-3) / 1e12, "matmul_n": n, "matmul_dtype": dtype,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32 if dtype == "float32" else None}


@functools.lru_cache(maxsize=None)
def _device_peaks(device: str, dtype: str) -> tuple[tuple[str, Any], ...]:
    peaks: dict[str, Any] = {"device": device}
    for name, measure in (("copy", lambda: _copy_peak(device)), ("matmul", lambda: _matmul_peak(device, dtype))):
        try:
            peaks.update(measure())
        except Exception as exc:  # a failed probe leaves null fractions with the reason
            peaks[f"{name}_error"] = one_line(exc)
    if device == "cuda":
        torch.cuda.empty_cache()  # hand the probe buffers back before the measured rows
    return tuple(peaks.items())


def device_peaks(device: str, dtype: str) -> dict[str, Any]:
    """Measured copy bandwidth (GB/s) and matmul throughput (TFLOP/s), cached per process."""
    return dict(_device_peaks(device, dtype))
