"""``bench.py profile``: one configuration under torch.profiler.

Writes, in the output folder:
  trace.json      Chrome trace (open in https://ui.perfetto.dev or chrome://tracing)
  top_ops.csv/md  the top kernels (CUDA) or operators (CPU) by self time over the profiled calls
  summary.json    the configuration, device, totals, the table, and on CUDA the latency and
                  energy per call timed as `sweep` does (outside the profiler)

Calls are run as in ``sweep`` (the same zero-argument closure, no-grad forward or forward plus
backward): ``warmup`` unprofiled calls, then a profiler schedule of 1 warm-up step and
``active`` recorded steps, one call per step. Times in the table are per call (recorded time /
``active``). On CUDA each kernel's self time is its duration on the device; the ``(whole call)``
line gives the device time per call and the achieved bandwidth over the bytes known to move
(q, k, v read once and the output written once: a lower bound on the traffic). Per-kernel byte
counts are not known, so their bandwidth column stays empty. ``calls`` is per call too.
"""
from __future__ import annotations

import csv
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from attnbench import registry
from attnbench.measure.memory import quiet_native_stderr
from attnbench.measure.roofline import bytes_min
from attnbench.settings import Shape

TABLE_COLUMNS = ("rank", "name", "calls", "self_ms_per_call", "share_pct", "bytes", "gbps")
SKIP_PREFIXES = ("ProfilerStep",)  # the profiler's own step markers, not work


class ProfileError(ValueError):
    """A configuration that cannot be profiled; the message is one line."""


@dataclass(frozen=True, kw_only=True)
class ProfileConfig(Shape):
    """One profiled configuration: the shape (attnbench.settings.Shape), the method and its point."""

    method: str
    n: int
    m: int | None = None
    params: dict[str, Any] = field(default_factory=dict)   # constructor parameters over the defaults
    mode: str = "fwd"
    workload: str = "gaussian"
    seed: int = 0
    out: Path = Path("results/profile")
    warmup: int = 3      # unprofiled calls before the profiler starts
    active: int = 5      # recorded calls
    top: int = 15        # lines of the table


# -- pure table arithmetic ----------------------------------------------------------------
@dataclass(frozen=True)
class OpRecord:
    """One operator or kernel aggregated over the profiled calls; times in microseconds."""

    name: str
    count: int
    self_us: float


def top_table(records: Iterable[OpRecord], calls: int, top: int) -> list[dict[str, Any]]:
    """The ``top`` records by self time: per-call times (ms), calls per call, share of the total (%)."""
    recs = [r for r in records if r.self_us > 0 and not r.name.startswith(SKIP_PREFIXES)]
    total = sum(r.self_us for r in recs)
    recs.sort(key=lambda r: r.self_us, reverse=True)
    return [{"rank": i + 1, "name": r.name, "calls": r.count / calls,
             "self_ms_per_call": r.self_us / 1e3 / calls, "share_pct": 100.0 * r.self_us / total,
             "bytes": None, "gbps": None} for i, r in enumerate(recs[:top])]


def whole_call_line(records: Iterable[OpRecord], calls: int, bytes_moved: int | None) -> dict[str, Any]:
    """Sum of every record's self time per call, with bandwidth = bytes / that time (GB/s = 1e9 B/s)."""
    total_us = sum(r.self_us for r in records if not r.name.startswith(SKIP_PREFIXES))
    ms = total_us / 1e3 / calls
    gbps = bytes_moved / (ms * 1e-3) / 1e9 if bytes_moved and ms > 0 else None
    return {"rank": None, "name": "(whole call)", "calls": None, "self_ms_per_call": ms,
            "share_pct": 100.0 if total_us > 0 else None, "bytes": bytes_moved, "gbps": gbps}


def markdown(table: list[dict[str, Any]]) -> str:
    """The top-ops table as GitHub markdown (the report's table writer)."""
    import pandas as pd

    from attnbench.report.render import markdown_table

    return markdown_table(pd.DataFrame(table, columns=list(TABLE_COLUMNS)))


# -- reading the profiler -------------------------------------------------------------------
def op_records(averages: Any, device: str) -> list[OpRecord]:
    """CUDA: device-side events (kernels, memcpy/memset) and their durations. CPU: operators
    and their self CPU time. ``averages`` is ``profiler.key_averages()``."""
    if device == "cuda":
        kernels = [OpRecord(e.key, int(e.count), float(_self_device_us(e)))
                   for e in averages if e.device_type == torch.autograd.DeviceType.CUDA]
        if kernels:
            return kernels
        # Older profilers attribute kernel time to the operator that launched it.
        return [OpRecord(e.key, int(e.count), float(_self_device_us(e))) for e in averages]
    return [OpRecord(e.key, int(e.count), float(e.self_cpu_time_total)) for e in averages
            if e.device_type == torch.autograd.DeviceType.CPU]


def _self_device_us(evt: Any) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, attr):
            return getattr(evt, attr)
    return 0.0


# -- the run ------------------------------------------------------------------------------
def build(cfg: ProfileConfig):
    """(module, zero-argument call, workload) for ``cfg``; ProfileError when it cannot run."""
    from attnbench.point import make_call
    from attnbench.spec import DTYPES
    from attnbench.workloads import make_workload

    module = registry.build(cfg.method, heads=cfg.heads, head_dim=cfg.head_dim, params=cfg.params, m=cfg.m)
    module = module.to(cfg.device).eval()
    reason = module.unsupported_reason(cfg.device, cfg.dtype, cfg.n, cfg.head_dim)
    if reason:
        raise ProfileError(f"{cfg.method} cannot run this configuration: {reason}")
    wl = make_workload(cfg.workload, cfg.batch, cfg.heads, cfg.n, cfg.head_dim,
                       dtype=DTYPES[cfg.dtype], device=cfg.device, seed=cfg.seed)
    return module, make_call(module, wl, cfg.mode), wl


def validate(cfg: ProfileConfig) -> None:
    """One-line ProfileError for a configuration that makes no sense before anything is built."""
    from attnbench.spec import DTYPES, MODES

    try:
        info = registry.get_info(cfg.method)
    except KeyError as exc:
        raise ProfileError(exc.args[0]) from None
    if cfg.dtype not in DTYPES:
        raise ProfileError(f"unknown dtype {cfg.dtype!r}; use {', '.join(DTYPES)}")
    if cfg.mode not in MODES:
        raise ProfileError(f"unknown mode {cfg.mode!r}; use fwd or fwdbwd")
    for name in ("n", "batch", "heads", "head_dim", "active", "top"):
        if getattr(cfg, name) <= 0:
            raise ProfileError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.m is not None and not info.budget:
        raise ProfileError(f"--m given, but {cfg.method} has no budget parameter")
    if cfg.m is not None and not 0 < cfg.m <= cfg.n:
        raise ProfileError(f"--m must be in 1..n={cfg.n}, got {cfg.m}")


def record(call, device: str, warmup: int, active: int, trace: Path):
    """Run ``call`` ``warmup`` times, then 1 + ``active`` profiler steps; export the trace.

    Returns ``key_averages()`` of the active steps."""
    from torch.profiler import ProfilerActivity, profile, schedule

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        call()
    sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    seen: dict[str, Any] = {}

    def ready(prof) -> None:
        prof.export_chrome_trace(str(trace))
        seen["averages"] = prof.key_averages()

    with warnings.catch_warnings(), quiet_native_stderr():
        warnings.simplefilter("ignore")
        with profile(activities=acts, schedule=schedule(wait=0, warmup=1, active=active),
                     on_trace_ready=ready, record_shapes=True) as prof:
            for _ in range(1 + active):
                call()
                sync()
                prof.step()
    return seen["averages"]


def run_profile(cfg: ProfileConfig) -> dict[str, Any]:
    """Profile ``cfg``; write trace.json, top_ops.csv, top_ops.md, summary.json. Returns the summary."""
    validate(cfg)
    module, call, wl = build(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    averages = record(call, cfg.device, cfg.warmup, cfg.active, cfg.out / "trace.json")
    records, level = op_records(averages, cfg.device), "kernels" if cfg.device == "cuda" else "operators"
    if not any(r.self_us > 0 for r in records):  # e.g. no CUPTI: no kernel activity recorded
        records, level = op_records(averages, "cpu"), "operators (no device activity recorded)"
    table = top_table(records, cfg.active, cfg.top)
    nbytes = bytes_min(cfg.batch, cfg.heads, cfg.n, cfg.head_dim, wl.q.element_size(),
                       registry.get_info(cfg.method).uses_query, cfg.mode)
    table.append(whole_call_line(records, cfg.active, nbytes if level == "kernels" else None))
    write_table(table, cfg.out)
    summary = {"config": {**asdict(cfg), "out": str(cfg.out)}, "device_name": device_name(cfg.device),
               "level": level, "profiled_calls": cfg.active,
               "impl": module.backend_info(wl.q, wl.k, wl.v, wl.grid), "table": table,
               "timing": cuda_timing(call) if cfg.device == "cuda" else None}
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def cuda_timing(call) -> dict[str, Any]:
    """Latency and NVML telemetry/energy of the call, measured as ``sweep`` does (outside the
    profiler, L2 flushed before every call)."""
    from attnbench.measure.timing import time_fn

    return time_fn(call, "cuda")


def timing_line(timing: dict[str, Any] | None) -> str | None:
    """One line: median latency and energy per call, or why energy is missing."""
    if not timing:
        return None
    energy, power = timing.get("energy_j_per_call"), timing.get("gpu_power_avg_w")
    parts = [f"timed outside the profiler: median {timing['latency_ms']:.4g} ms"]
    parts.append(f"{energy:.4g} J per call" if energy is not None
                 else f"energy unavailable ({timing.get('telemetry_reason')})")
    if power is not None:
        parts.append(f"average power {power:.4g} W")
    return ", ".join(parts)


def write_table(table: list[dict[str, Any]], out: Path) -> None:
    with open(out / "top_ops.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    (out / "top_ops.md").write_text(markdown(table) + "\n", encoding="utf-8")


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    from attnbench.measure.env import cpu_model

    return cpu_model()
