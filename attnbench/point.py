"""Measure one point (method, params, n, m) into a row: the pipeline sweep, check, profile and
model share. Fitting, counting and error metrics happen outside every timed region."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from attnbench import registry, rows
from attnbench.measure.env import device_label
from attnbench.measure.telemetry import null_telemetry
from attnbench.fit import fit_module
from attnbench.measure.attnmap import attn_map_metrics
from attnbench.measure.error import ExactReference, error_metrics, exact_reference
from attnbench.measure.flops import fvcore_macs, torch_flops
from attnbench.measure.memory import peak_memory
from attnbench.measure.timing import CallTimeout, time_fn
from attnbench.methods.uniform import uniform_attention
from attnbench.settings import Point, SweepConfig, fit_settings
from attnbench.spec import DTYPES, is_oom, one_line
from attnbench.workloads import Workload, make_workload


def base_row(cfg: SweepConfig, p: Point) -> dict[str, Any]:
    """The row of point ``p`` before measuring: its identity filled in, every outcome null."""
    info = registry.get_info(p.method)
    return {
        **rows.blank_row("attention"), **null_telemetry("not timed"),
        "method": p.method, "family": info.family, "params": p.params, "n": p.n, "m": p.m,
        "batch": cfg.batch, "heads": cfg.heads, "head_dim": cfg.head_dim, "dtype": cfg.dtype,
        "device": cfg.device, "device_name": cfg.device_name or device_label(cfg.device), "mode": cfg.mode,
        "workload": cfg.workload, "seed": cfg.seed, "flops_scope": "fwd", "impl": {},
        "fit": cfg.fit, "fit_cfg": fit_settings(cfg), "timing_mode": "cuda_graph" if cfg.timing.cuda_graphs else "eager",
        "layer": p.layer,
    }


def make_call(module: torch.nn.Module, wl: Workload, mode: str) -> Callable[[], Any]:
    """The zero-argument timed call: a no-grad forward, or forward plus backward. An exception
    the method raises inside it is a MethodFailure (so measuring code can tell it apart)."""
    if mode == "fwd":
        fwd = module.bench_fn(wl.q, wl.k, wl.v, wl.grid)

        def call_fwd():
            with torch.no_grad():
                return method_code(fwd)
        return call_fwd
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (wl.q, wl.k, wl.v))
    fwd = module.bench_fn(q, k, v, wl.grid)
    leaves = [q, k, v] + [p for p in module.parameters() if p.requires_grad]
    grad_out = torch.randn_like(fwd())

    def call_fwdbwd():
        return method_code(lambda: torch.autograd.grad(fwd(), leaves, grad_out, allow_unused=True))
    return call_fwdbwd


def watched(call: Callable[[], Any], watch: Any) -> Callable[[], Any]:
    """``call`` writing its start time (time.time()) into ``watch.value`` and 0 when it returns:
    the parent of a worker reads it to kill a call that passes the call time limit."""
    def watched_call():
        watch.value = time.time()
        try:
            return call()
        finally:
            watch.value = 0.0
    return watched_call


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


class MethodFailure(Exception):
    """An exception raised by the method's own code (construction, forward, fit, macs...)."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.original = exc


class HarnessFailure(Exception):
    """An exception raised by attnbench's measuring code in the named step."""

    def __init__(self, step: str, exc: BaseException) -> None:
        super().__init__(f"{step}: {exc}")
        self.step, self.original = step, exc


def strict_harness() -> bool:
    """In tests (ATTNBENCH_STRICT=1) a harness failure raises instead of becoming a row."""
    return os.environ.get("ATTNBENCH_STRICT") == "1"


def method_code(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run the method's own code; its exceptions become MethodFailure (timeouts pass through)."""
    try:
        return fn(*args, **kwargs)
    except (CallTimeout, MethodFailure):
        raise
    except Exception as exc:
        raise MethodFailure(exc) from exc


def harness(step: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run measuring code that may call into the method: the method's failures stay theirs."""
    try:
        return fn(*args, **kwargs)
    except (CallTimeout, MethodFailure, HarnessFailure):
        raise
    except Exception as exc:
        if is_oom(exc):
            raise MethodFailure(exc) from exc     # the point does not fit: an oom row either way
        raise HarnessFailure(step, exc) from exc


def measure_point(cfg: SweepConfig, p: Point, wl: Workload, ref: Callable[[], ExactReference],
                  extra: PointData | None = None, watch: Any = None) -> dict[str, Any]:
    """Measure one point into a row; failures become rows with their status and message.

    A failure of the method's own code is an ``error`` (or ``oom``) row; a failure of attnbench's
    measuring code is a ``harness_error`` row naming the step, or raises under ATTNBENCH_STRICT=1.
    Fitting (``cfg.fit``) happens before and outside every timed region. ``watch``: an object
    whose ``value`` each timed call sets to its start time (see ``watched``), or None.
    """
    row = base_row(cfg, p)
    row["workload_params"] = wl.params
    try:
        try:   # the method's own constructor: its failure is the method's
            module = registry.build(p.method, heads=cfg.heads, head_dim=cfg.head_dim, params=p.params, m=p.m)
        except Exception as exc:
            raise MethodFailure(exc) from exc
        _measure(cfg, p, module, wl, ref, extra, row, watch)
    except CallTimeout as exc:
        row.update(status="timeout", message=str(exc))
    except MethodFailure as exc:
        row.update(status="oom" if is_oom(exc.original) else "error", message=one_line(exc.original))
    except HarnessFailure as exc:
        if strict_harness():
            raise exc.original
        row.update(status="harness_error", message=f"harness error in {exc.step}: {one_line(exc.original)}")
    return row


def _measure(cfg: SweepConfig, p: Point, module: torch.nn.Module, wl: Workload,
             ref: Callable[[], ExactReference], extra: PointData | None, row: dict[str, Any],
             watch: Any = None) -> None:
    """The steps of one point, filling ``row``; returns early for unsupported or too-big points."""
    module = method_code(lambda: module.to(cfg.device).eval())
    reason = method_code(module.unsupported_reason, cfg.device, cfg.dtype, p.n, cfg.head_dim)
    if reason:
        row.update(status="unsupported", message=reason)
        return
    too_big = method_code(_memory_guard, cfg, module, p.n)
    if too_big:
        row.update(status="oom", message=too_big)
        return
    if extra is not None:
        row.update(method_code(fit_module, cfg.fit, module, extra.fit_data, extra.exact_fit,
                               iters=cfg.fit_iters, steps=cfg.fit_steps, lr=cfg.fit_lr))
    row["macs_analytic"] = int(method_code(module.macs, cfg.batch, p.n, wl.grid))
    call = method_code(make_call, module, wl, cfg.mode)
    if watch is not None:
        call = watched(call, watch)
    row.update(harness("timing", time_fn, call, cfg.device, cfg.timing))
    row.update(harness("peak memory", peak_memory, call, cfg.device))
    touched = []   # harness steps that had the module since the timed call last worked
    if cfg.count_flops:
        touched.append("flop counting")
        row.update(harness("flop counting", _count_flops, module, wl))
    out = _error_forward(module, wl, call, touched)
    exact = harness("exact reference", ref)
    row.update(harness("error metrics", error_metrics, out, exact.out))
    row["attn_entropy_ratio"] = exact.entropy_ratio
    if extra is not None:
        row.update(skill_fields(row["err_rel_fro"], harness("uniform reference", extra.uniform_err)))
    row.update(harness("attention-map metrics", attn_map_metrics, module, wl.q, wl.k, wl.v, wl.grid))
    row["impl"] = method_code(module.backend_info, wl.q, wl.k, wl.v, wl.grid)
    if "macs_analytic" in row["impl"]:  # an input-dependent pattern counts what this input made
        row["macs_analytic"] = int(row["impl"].pop("macs_analytic"))
    row["status"] = "ok"


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
                                                  seed=cfg.seed, split="fit",
                                                  layer=wl.params.get("layer")))  # fit on the same layer
    exact_fit = once("exact_fit", lambda: exact_reference(fit_wl().q, fit_wl().k, fit_wl().v).out)
    return PointData(uniform_err=once("uniform", uniform_err), fit_data=fit_wl, exact_fit=exact_fit)


def _memory_guard(cfg: SweepConfig, module, n: int) -> str | None:
    """Why a point is not tried: its scratch bound exceeds a share of the free RAM (CPU) or of the
    free device memory (CUDA, torch.cuda.mem_get_info); None when it may fit."""
    if cfg.device == "cpu":
        free, where = available_ram_bytes(), "free RAM"
    elif cfg.device == "cuda" and torch.cuda.is_available():
        free, where = torch.cuda.mem_get_info()[0], "free device memory"
    else:
        return None
    need = module.workspace_bytes(cfg.batch, n, torch.tensor([], dtype=DTYPES[cfg.dtype]).element_size())
    if need and free and need > cfg.memory_guard * free:
        return (f"not run: its scratch memory (about {need / 2**30:.1f} GiB by its workspace_bytes bound) "
                f"exceeds {cfg.memory_guard:.0%} of the {free / 2**30:.1f} GiB of {where}")
    return None


def _error_forward(module, wl: Workload, call: Callable[[], Any], touched: list[str]) -> torch.Tensor:
    """The no-grad forward whose output is measured for error. When it fails after harness steps
    had the module (``touched``) and the timed call, which ran before them, now fails too, those
    steps broke the module: a harness error naming them, not the method's error."""
    try:
        with torch.no_grad():
            return method_code(module, wl.q, wl.k, wl.v, grid=wl.grid)
    except MethodFailure as exc:
        if touched and not _still_runs(call):
            broken = RuntimeError(f"the method no longer runs after this step ({one_line(exc.original)})")
            raise HarnessFailure(", ".join(touched), broken) from exc
        raise


def _still_runs(call: Callable[[], Any]) -> bool:
    try:
        call()
    except Exception:
        return False
    return True


def _count_flops(module, wl: Workload) -> dict[str, Any]:
    """fvcore and FlopCounterMode on the module's counting copy, never on the module itself (a
    compiled member's copy is uncompiled and counts flex_attention from its block mask)."""
    target = method_code(module.counting_copy)
    out: dict[str, Any] = {}
    notes, extra = [], {}
    counters = (("fvcore", "macs_fvcore", 1, lambda: fvcore_macs(target, wl.q, wl.k, wl.v, wl.grid)),
                ("FlopCounterMode", "flops_torch", 2, lambda: torch_flops(lambda: target(wl.q, wl.k, wl.v, grid=wl.grid))))
    for name, field, per_mac, count in counters:
        target.count_extra()                      # start from nothing unseen
        try:
            out.update(count())
        except Exception as exc:
            notes.append(f"{name}: {one_line(exc)}")
            continue
        extra = target.count_extra()
        out[field] += per_mac * extra.get("macs", 0)
    if extra.get("flops_scope"):
        out["flops_scope"] = extra["flops_scope"]
    notes += [extra["flop_note"]] if extra.get("flop_note") else []
    out["flop_notes"] = "; ".join(notes) or None
    return out


