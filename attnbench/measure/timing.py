"""Latency: CUDA events with an L2 flush before every call, or torch.utils.benchmark on CPU.

Every result states its budgets and their units in ``timing``; latencies are milliseconds.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch


@dataclass(frozen=True)
class TimingConfig:
    cpu_min_run_time_s: float = 0.2   # blocked_autorange budget, seconds of measured calls
    cuda_warmup_ms: float = 25.0      # warm-up budget, milliseconds of calls
    cuda_rep_ms: float = 100.0        # measured budget, milliseconds of calls
    cuda_min_reps: int = 5
    cuda_max_reps: int = 1000
    l2_flush_bytes: int = 256 * 2**20
    timeout_s: float = 120.0          # a single warm-up call slower than this is not repeated


class CallTimeout(Exception):
    """A single call exceeded the configured time limit."""


def summarize_ms(times_ms: list[float] | np.ndarray) -> dict[str, float]:
    """Median, p20, p80 and IQR/median of per-call times given in milliseconds."""
    t = np.asarray(times_ms, dtype=float)
    p20, p25, p50, p75, p80 = np.percentile(t, [20, 25, 50, 75, 80])
    return {
        "latency_ms": float(p50), "latency_p20_ms": float(p20), "latency_p80_ms": float(p80),
        "latency_iqr_rel": float((p75 - p25) / p50) if p50 > 0 else None,
    }


def _first_call(fn: Callable[[], Any], sync: Callable[[], None], cfg: TimingConfig) -> float:
    t0 = time.perf_counter()
    fn()
    sync()
    elapsed = time.perf_counter() - t0
    if elapsed > cfg.timeout_s:
        raise CallTimeout(f"one call took {elapsed:.1f} s, over the {cfg.timeout_s:g} s limit")
    return elapsed


def time_cpu(fn: Callable[[], Any], cfg: TimingConfig) -> dict[str, Any]:
    """torch.utils.benchmark blocked_autorange: median and IQR over blocks of calls."""
    from torch.utils.benchmark import Timer

    first_s = _first_call(fn, lambda: None, cfg)  # warm-up, and the timeout check
    meas = Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=cfg.cpu_min_run_time_s)
    times_ms = [t * 1e3 for t in meas.times]  # each block's mean per-call time
    out = summarize_ms(times_ms)
    out["latency_ms"] = float(meas.median * 1e3)
    out["latency_iqr_rel"] = float(meas.iqr / meas.median) if meas.median > 0 else None
    out["timing"] = {
        "method": "torch.utils.benchmark.blocked_autorange", "unit": "ms",
        "min_run_time_s": cfg.cpu_min_run_time_s, "warmup_calls": 1, "first_call_ms": first_s * 1e3,
        "calls_per_block": int(meas.number_per_run), "blocks": len(meas.times),
        "threads": torch.get_num_threads(),
    }
    return out


def time_cuda(fn: Callable[[], Any], cfg: TimingConfig) -> dict[str, Any]:
    """CUDA events around each call, L2 flushed before each one; budgets in milliseconds."""
    sync = torch.cuda.synchronize
    flush = torch.empty(cfg.l2_flush_bytes, dtype=torch.int8, device="cuda")
    _first_call(fn, sync, cfg)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush.zero_()
        fn()
    end.record()
    sync()
    est_ms = max(start.elapsed_time(end) / 5, 1e-3)  # includes the flush: an over-estimate
    n_warm = max(1, int(cfg.cuda_warmup_ms / est_ms))
    n_rep = int(min(cfg.cuda_max_reps, max(cfg.cuda_min_reps, cfg.cuda_rep_ms / est_ms)))
    for _ in range(n_warm):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        fn()
        e.record()
    sync()
    out = summarize_ms([s.elapsed_time(e) for s, e in zip(starts, ends)])
    out["timing"] = {
        "method": "cuda_events", "unit": "ms", "l2_flush_bytes": cfg.l2_flush_bytes,
        "warmup_budget_ms": cfg.cuda_warmup_ms, "rep_budget_ms": cfg.cuda_rep_ms,
        "warmup_calls": n_warm, "reps": n_rep,
    }
    del flush
    return out


def time_fn(fn: Callable[[], Any], device: str, cfg: TimingConfig | None = None) -> dict[str, Any]:
    cfg = cfg or TimingConfig()
    return time_cuda(fn, cfg) if device == "cuda" else time_cpu(fn, cfg)


def timing_config_dict(cfg: TimingConfig) -> dict[str, Any]:
    return asdict(cfg)
