"""Measuring in fresh processes: re-measuring suspects, and the repetitions of a baseline."""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from attnbench import registry
from attnbench.check.prepare import Measured, prepare_suite
from attnbench.check.suite import Settings, SuiteEntry
from attnbench.check.timing import measure_speed
from attnbench.measure.allocator import steady_allocator


def remeasure(items: list[Measured], s: Settings, wls: dict[int, Any], plugins: tuple[str, ...]) -> str:
    """New speed samples for ``items``, taken in a fresh process (a process can be persistently
    slow or fast at small kernels, which repetitions inside it do not reveal); in this process
    when no other can be started. Returns where the samples were taken."""
    try:
        fresh = in_fresh_process(items, s, plugins)
        for it in items:
            it.samples, it.latency_ms = fresh[it.entry.key]
        return "in a fresh process"
    except Exception:  # no subprocess here (or it died): fall back, and say so in the table
        measure_speed(items, s, wls)
        return "in the same process"


def in_fresh_process(items: list[Measured], s: Settings, plugins: tuple[str, ...]) -> dict[str, tuple[list, list]]:
    """speed_samples of the items' entries, run in a newly spawned Python process."""
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(speed_samples, [it.entry for it in items], s, plugins).result()


def measure_for_baseline(items: list[Measured], s: Settings, wls: dict[int, Any],
                         plugins: tuple[str, ...]) -> None:
    """The repetitions split over ``s.processes`` processes (this one first), samples pooled."""
    per = max(3, math.ceil(s.repeats / s.processes))
    part = Settings(**{**asdict(s), "repeats": per})
    measure_speed(items, part, wls)
    for _ in range(s.processes - 1):
        fresh = in_fresh_process(items, part, plugins)
        for it in items:
            it.samples += fresh[it.entry.key][0]
            it.latency_ms += fresh[it.entry.key][1]


def speed_samples(entries: list[SuiteEntry], s: Settings, plugins: tuple[str, ...]) -> dict[str, tuple[list, list]]:
    """Run in a fresh process: load the plugins, build the entries and time them."""
    steady_allocator()
    for spec in plugins:
        registry.load_plugin(spec)
    items, wls = prepare_suite(entries, s, correctness=False)   # speed only: nothing fitted or judged
    bad = [it for it in items if it.status != "ok"]
    if bad:
        raise RuntimeError(f"{bad[0].entry.key} did not run in the fresh process: {bad[0].message}")
    measure_speed(items, s, wls)
    return {it.entry.key: (it.samples, it.latency_ms) for it in items}

