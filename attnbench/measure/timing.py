"""Latency: CUDA events with an L2 flush before every call, or torch.utils.benchmark on CPU.

Every result states its budgets and their units in ``timing``; latencies are milliseconds.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from attnbench.measure.telemetry import EnergyBudget, LoopTelemetry, cpu_telemetry, null_telemetry
from attnbench.spec import one_line


@dataclass(frozen=True)
class TimingConfig:
    cpu_min_run_time_s: float = 0.2   # blocked_autorange budget, seconds of measured calls
    cuda_warmup_ms: float = 25.0      # warm-up budget, milliseconds of calls
    cuda_rep_ms: float = 100.0        # measured budget, milliseconds of calls
    cuda_min_reps: int = 5
    cuda_max_reps: int = 1000
    l2_flush_bytes: int = 256 * 2**20
    timeout_s: float = 120.0          # a single warm-up call slower than this is not repeated
    cuda_graphs: bool = False         # time replays of one captured CUDA graph (timing.mode)
    telemetry: bool = True            # NVML readings and energy around the CUDA timed loop
    energy: EnergyBudget = field(default_factory=EnergyBudget)


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
        "threads": torch.get_num_threads(), "mode": "eager",
    }
    return out


def time_cuda(fn: Callable[[], Any], cfg: TimingConfig, mode: str = "eager") -> dict[str, Any]:
    """CUDA events around each call, L2 flushed before each one; budgets in milliseconds.

    NVML telemetry is read before and after the timed loop, which is lengthened to span the
    energy counter's resolution (attnbench.measure.telemetry); ``mode`` is stored as timing.mode.
    """
    sync = torch.cuda.synchronize
    flush = torch.empty(cfg.l2_flush_bytes, dtype=torch.int8, device="cuda")
    tele = LoopTelemetry(torch.cuda.current_device(), cfg.energy) if cfg.telemetry else None
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
    n_rep = tele.lengthen(n_rep, est_ms) if tele else n_rep
    for _ in range(n_warm):
        fn()
    sync()
    if tele:
        tele.begin()
    times_ms = _event_loop(fn, flush, n_rep)  # synchronizes at its end
    if tele:
        tele.end()
        tele.flush_baseline(flush.zero_, n_rep, sync)
    out = summarize_ms(times_ms)
    out["timing"] = {
        "method": "cuda_events", "mode": mode, "unit": "ms", "l2_flush_bytes": cfg.l2_flush_bytes,
        "warmup_budget_ms": cfg.cuda_warmup_ms, "rep_budget_ms": cfg.cuda_rep_ms,
        "warmup_calls": n_warm, "reps": n_rep,
    }
    out.update(tele.fields(n_rep) if tele else null_telemetry("telemetry switched off"))
    del flush
    return out


def _event_loop(fn: Callable[[], Any], flush: torch.Tensor, n_rep: int) -> list[float]:
    """Per-call milliseconds of ``n_rep`` calls, the L2 flushed (outside the events) before each."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def capture_cuda_graph(fn: Callable[[], Any], warmup_calls: int = 3) -> tuple[Any, Any]:
    """(graph, outputs): ``fn`` captured once into a CUDA graph, after warm-up calls on a side
    stream (as capture requires). Each ``graph.replay()`` rewrites ``outputs`` in place; keep
    them referenced as long as the graph is replayed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_calls):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            outputs = fn()
    except Exception as exc:
        raise RuntimeError(f"CUDA graph capture failed: {one_line(exc)}") from exc
    return graph, outputs


def time_cuda_graph(fn: Callable[[], Any], cfg: TimingConfig) -> dict[str, Any]:
    """Like time_cuda, but each timed call is one replay of ``fn`` captured in a CUDA graph.

    The L2 flush stays outside the graph: an eager ``zero_`` before every replay, outside the
    events, exactly as in eager mode; only the launch overhead of ``fn`` changes.
    """
    _first_call(fn, torch.cuda.synchronize, cfg)  # the timeout check, eagerly
    graph, outputs = capture_cuda_graph(fn)
    out = time_cuda(graph.replay, cfg, mode="cuda_graph")
    out["timing"]["l2_flush"] = "eager, outside the graph, before every replay"
    del graph, outputs
    return out


def time_fn(fn: Callable[[], Any], device: str, cfg: TimingConfig | None = None) -> dict[str, Any]:
    """Latency and (CUDA) telemetry of ``fn``; ``cfg.cuda_graphs`` replays a captured graph."""
    cfg = cfg or TimingConfig()
    if device == "cuda":
        return time_cuda_graph(fn, cfg) if cfg.cuda_graphs else time_cuda(fn, cfg)
    if cfg.cuda_graphs:
        raise ValueError("CUDA graphs need --device cuda")
    out = time_cpu(fn, cfg)
    out.update(cpu_telemetry())
    return out


def timing_config_dict(cfg: TimingConfig) -> dict[str, Any]:
    return asdict(cfg)
