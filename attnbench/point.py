"""Measure one point (method, params, n, m) into a row: the pipeline sweep, check, profile and
model share. Fitting, counting and error metrics happen outside every timed region."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from attnbench import registry
from attnbench.fit import fit_module
from attnbench.measure.attnmap import attn_map_metrics
from attnbench.measure.error import ExactReference, error_metrics, exact_reference
from attnbench.measure.flops import fvcore_macs, torch_flops
from attnbench.measure.memory import peak_memory
from attnbench.measure.timing import CallTimeout, time_fn
from attnbench.methods.uniform import uniform_attention
from attnbench.spec import DTYPES, is_oom, one_line
from attnbench.workloads import Workload, make_workload

if TYPE_CHECKING:
    from attnbench.sweep import Point, SweepConfig


def make_call(module: torch.nn.Module, wl: Workload, mode: str) -> Callable[[], Any]:
    """The zero-argument timed call: a no-grad forward, or forward plus backward."""
    if mode == "fwd":
        fwd = module.bench_fn(wl.q, wl.k, wl.v, wl.grid)

        def call_fwd():
            with torch.no_grad():
                return fwd()
        return call_fwd
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (wl.q, wl.k, wl.v))
    fwd = module.bench_fn(q, k, v, wl.grid)
    leaves = [q, k, v] + [p for p in module.parameters() if p.requires_grad]
    grad_out = torch.randn_like(fwd())

    def call_fwdbwd():
        out = fwd()
        return torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    return call_fwdbwd


def available_ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass
class PointData:
    """Lazily computed per-n inputs shared by the points of one n (each computed at most once)."""

    uniform_err: Callable[[], float]                  # err_rel_fro of the uniform null model
    fit_data: Callable[[], Workload] | None = None    # the workload's 'fit' split
    exact_fit: Callable[[], torch.Tensor] | None = None  # float64 exact output on the fit split


def measure_point(cfg: SweepConfig, p: Point, wl: Workload, ref: Callable[[], ExactReference],
                  extra: PointData | None = None) -> dict[str, Any]:
    """Measure one point into a row; failures become rows with their status and message.

    Fitting (``cfg.fit``) happens before and outside every timed region.
    """
    from attnbench.sweep import base_row

    row = base_row(cfg, p)
    row["workload_params"] = wl.params
    try:
        module = registry.build(p.method, heads=cfg.heads, head_dim=cfg.head_dim, params=p.params, m=p.m)
        module = module.to(cfg.device).eval()
        reason = module.unsupported_reason(cfg.device, cfg.dtype, p.n, cfg.head_dim)
        if reason:
            return {**row, "status": "unsupported", "message": reason}
        too_big = _memory_guard(cfg, module, p.n)
        if too_big:
            return {**row, "status": "oom", "message": too_big}
        if extra is not None:
            row.update(fit_module(cfg.fit, module, extra.fit_data, extra.exact_fit, iters=cfg.fit_iters,
                                  steps=cfg.fit_steps, lr=cfg.fit_lr))
        row["macs_analytic"] = int(module.macs(cfg.batch, p.n, wl.grid))
        call = make_call(module, wl, cfg.mode)
        row.update(time_fn(call, cfg.device, cfg.timing))
        row.update(peak_memory(call, cfg.device))
        if cfg.count_flops:
            row.update(_count_flops(module, wl))
        with torch.no_grad():
            out = module(wl.q, wl.k, wl.v, grid=wl.grid)
        exact = ref()
        row.update(error_metrics(out, exact.out))
        row["attn_entropy_ratio"] = exact.entropy_ratio
        if extra is not None:
            row.update(skill_fields(row["err_rel_fro"], extra.uniform_err()))
        row.update(attn_map_metrics(module, wl.q, wl.k, wl.v, wl.grid))
        row["impl"] = module.backend_info(wl.q, wl.k, wl.v, wl.grid)
        if "macs_analytic" in row["impl"]:  # an input-dependent pattern counts what this input made
            row["macs_analytic"] = int(row["impl"].pop("macs_analytic"))
        row["status"] = "ok"
    except CallTimeout as exc:
        row.update(status="timeout", message=str(exc))
    except Exception as exc:  # every failure becomes a row, never a crash of the sweep
        row.update(status="oom" if is_oom(exc) else "error", message=one_line(exc))
    return row


def skill_fields(err: float | None, err_uniform: float) -> dict[str, Any]:
    """err_skill = 1 − err / err_uniform (0: no better than averaging v, 1: exact)."""
    ok = err is not None and err_uniform is not None and err_uniform > 0 and err_uniform == err_uniform
    return {"err_uniform_rel_fro": err_uniform, "err_skill": 1.0 - err / err_uniform if ok else None}


def point_data(cfg: SweepConfig, wl: Workload, n: int, ref: Callable[[], ExactReference]) -> PointData:
    """Per-n lazy caches: the uniform model's error, the fitting split and its exact output."""
    cache: dict[str, Any] = {}

    def once(key: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def get() -> Any:
            if key not in cache:
                cache[key] = fn()
            return cache[key]
        return get

    def uniform_err() -> float:
        return error_metrics(uniform_attention(wl.v), ref().out)["err_rel_fro"]

    fit_wl = once("fit_wl", lambda: make_workload(cfg.workload, cfg.batch, cfg.heads, n, cfg.head_dim,
                                                  dtype=DTYPES[cfg.dtype], device=cfg.device,
                                                  seed=cfg.seed, split="fit"))
    exact_fit = once("exact_fit", lambda: exact_reference(fit_wl().q, fit_wl().k, fit_wl().v).out)
    return PointData(uniform_err=once("uniform", uniform_err), fit_data=fit_wl, exact_fit=exact_fit)


def _memory_guard(cfg: SweepConfig, module, n: int) -> str | None:
    if cfg.device != "cpu":
        return None
    need = module.workspace_bytes(cfg.batch, n, torch.tensor([], dtype=DTYPES[cfg.dtype]).element_size())
    free = available_ram_bytes()
    if need and free and need > cfg.memory_guard * free:
        return (f"not run: its scratch memory (about {need / 2**30:.1f} GiB by its workspace_bytes bound) "
                f"exceeds {cfg.memory_guard:.0%} of the {free / 2**30:.1f} GiB of free RAM")
    return None


def _count_flops(module, wl: Workload) -> dict[str, Any]:
    out: dict[str, Any] = {}
    notes = []
    try:
        out.update(fvcore_macs(module, wl.q, wl.k, wl.v, wl.grid))
    except Exception as exc:
        notes.append(f"fvcore: {one_line(exc)}")
    try:
        out.update(torch_flops(lambda: module(wl.q, wl.k, wl.v, grid=wl.grid)))
    except Exception as exc:
        notes.append(f"FlopCounterMode: {one_line(exc)}")
    out["flop_notes"] = "; ".join(notes) or None
    return out


