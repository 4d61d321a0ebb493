"""Peak memory above the live inputs, measured (never estimated).

CUDA: allocator statistics around one call. CPU: the allocation and free events that the
torch profiler records during one call, summed in time order; the peak of that running sum.
"""
from __future__ import annotations

import contextlib
import gc
import os
from typing import Any, Callable, Iterator

import torch


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what native code (the profiler's C++ side) writes straight to file descriptor 2."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_from_events(events: list[tuple[int, int]]) -> int:
    """Highest running total of (time, bytes) allocation events, bytes < 0 being frees."""
    total = peak = 0
    for _, nbytes in sorted(events):
        total += nbytes
        peak = max(peak, total)
    return peak


def cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    return peak_from_events(events)


def cuda_peak_bytes(fn: Callable[[], Any]) -> int:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return int(peak)


def peak_memory(fn: Callable[[], Any], device: str) -> dict[str, Any]:
    """{'peak_mem_bytes': int, 'peak_mem_method': str} for one call of ``fn``."""
    if device == "cuda":
        return {"peak_mem_bytes": cuda_peak_bytes(fn), "peak_mem_method": "cuda_allocator_max_allocated"}
    return {"peak_mem_bytes": cpu_peak_bytes(fn), "peak_mem_method": "torch_profiler_cpu_alloc_events"}
