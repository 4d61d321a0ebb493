"""Timing in one process: CPU ratios to the reference in alternation, CUDA-event medians."""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from attnbench.check.prepare import Measured
from attnbench.check.suite import Settings
from attnbench.measure.timing import TimingConfig, time_fn
from attnbench.reference import softmax_attention
from attnbench.workloads import Workload


def reference_call(wl: Workload) -> Callable[[], Any]:
    """Plain softmax(q kᵀ/√d) v on the workload, written out here (a plugin cannot replace it):
    the CPU speed reference for every configuration with the same token count."""
    q, k, v = wl.q, wl.k, wl.v                                   # (B, H, N, d)

    def call():
        with torch.no_grad():
            return softmax_attention(q, k, v, precision=None, block=None)
    return call


def calls_per_block(fn: Callable[[], Any], block_ms: float) -> int:
    """Warm up, then the number of calls that fills ``block_ms`` milliseconds."""
    fn()
    t0 = time.perf_counter()
    fn()
    one_ms = (time.perf_counter() - t0) * 1e3
    return max(1, math.ceil(block_ms / max(one_ms, 1e-3)))


def time_pair(ref: Callable[[], Any], ref_number: int, fn: Callable[[], Any], number: int,
              parts: int) -> tuple[float, float]:
    """Milliseconds per call of ``ref`` and ``fn``: ``parts`` alternating runs of each (ref, fn,
    ref, fn, ...), the fastest run of each counting. Another process can only add time, so the
    minimum discards interrupted runs, and the alternation exposes both to the same machine state."""
    best = [math.inf, math.inf]
    for _ in range(parts):
        for i, (f, k) in enumerate(((ref, ref_number), (fn, number))):
            t0 = time.perf_counter()
            for _ in range(k):
                f()
            best[i] = min(best[i], (time.perf_counter() - t0) * 1e3 / k)
    return best[0], best[1]


def measure_cpu(items: list[Measured], refs: dict[int, Callable[[], Any]], s: Settings) -> None:
    """Interleaved repetitions: each visits every item once, in a rotating order, timing it in
    alternation with the reference at its token count; the sample is the item's time divided by
    the reference's. One unrecorded repetition warms everything up first."""
    part_ms = s.block_ms / s.parts
    ref_numbers = {n: calls_per_block(fn, part_ms) for n, fn in refs.items()}
    for it in items:
        it.number = calls_per_block(it.call, part_ms)
        it.samples, it.latency_ms = [], []
    for r in range(s.repeats + 1):
        shift = r % len(items)
        for it in items[shift:] + items[:shift]:
            n = it.entry.n
            ref_ms, ms = time_pair(refs[n], ref_numbers[n], it.call, it.number, s.parts)
            if r:
                it.latency_ms.append(ms)
                it.samples.append(ms / ref_ms)


def measure_cuda(items: list[Measured], s: Settings) -> None:
    """Interleaved repetitions of the CUDA-event timer; each sample is one repetition's median ms."""
    cfg = TimingConfig(cuda_warmup_ms=10.0, cuda_rep_ms=50.0)
    for it in items:
        it.samples, it.latency_ms = [], []
    for r in range(s.repeats):
        shift = r % len(items)
        for it in items[shift:] + items[:shift]:
            ms = time_fn(it.call, "cuda", cfg)["latency_ms"]
            it.samples.append(ms)
            it.latency_ms.append(ms)


def measure_speed(items: list[Measured], s: Settings, wls: dict[int, tuple[Workload, Any, Any]]) -> None:
    if not items:
        return
    if s.device == "cuda":
        measure_cuda(items, s)
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        measure_cpu(items, {n: reference_call(wls[n][0]) for n in sorted({it.entry.n for it in items})}, s)
    finally:
        torch.set_num_threads(saved)

