"""Grid expansion and the row loop: one JSON row per measured point, appended and flushed.

A killed sweep loses at most the row in flight; running it again skips what is measured.
"""
from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from attnbench import registry
from attnbench.fit import fit_module
from attnbench.measure.attnmap import attn_map_metrics
from attnbench.measure.env import collect_env
from attnbench.measure.error import ExactReference, error_metrics, exact_reference
from attnbench.measure.flops import fvcore_macs, torch_flops
from attnbench.measure.memory import peak_memory
from attnbench.measure.roofline import ROOFLINE_FIELDS, device_peaks, roofline_columns
from attnbench.measure.telemetry import null_telemetry
from attnbench.measure.timing import CallTimeout, TimingConfig, time_fn, timing_config_dict
from attnbench.methods.uniform import uniform_attention
from attnbench.results import RowsFileError, read_rows
from attnbench.workloads import Workload, file_dims, make_workload

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODES = ("fwd", "fwdbwd")
KEY_FIELDS = ("method", "params", "n", "m", "batch", "heads", "head_dim", "dtype", "device",
              "mode", "workload", "seed", "fit", "fit_cfg", "timing_mode")


class SpecError(ValueError):
    """A malformed command-line specification; the message is one line."""


def parse_n_spec(spec: str) -> list[int]:
    """'196..16384' -> 196, the powers of two strictly between, 16384; commas join parts."""
    values: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        try:
            if ".." in part:
                lo_s, hi_s = part.split("..")
                lo, hi = int(lo_s), int(hi_s)
                if lo <= 0 or hi < lo:
                    raise SpecError(f"--n range {part!r} needs 0 < A <= B")
                p = 1
                while p <= lo:
                    p *= 2
                values.append(lo)
                while p < hi:
                    values.append(p)
                    p *= 2
                if hi != lo:
                    values.append(hi)
            else:
                values.append(int(part))
        except ValueError as exc:
            if isinstance(exc, SpecError):
                raise
            raise SpecError(f"--n {spec!r} is malformed: expected integers like 196,1024 or a range like 196..16384") from None
    if any(x <= 0 for x in values):
        raise SpecError(f"--n {spec!r}: token counts must be positive")
    return sorted(set(values))


def parse_m_spec(spec: str | None) -> list[int]:
    if spec is None or str(spec).strip() == "":
        return []
    try:
        values = [int(x) for x in str(spec).split(",") if x.strip()]
    except ValueError:
        raise SpecError(f"--m {spec!r} is malformed: expected integers like 10,30,100") from None
    bad = [x for x in values if x <= 0]
    if bad:
        raise SpecError(f"--m must be positive, got {bad[0]}")
    return sorted(set(values))


def parse_value(text: str) -> Any:
    """'true' -> True, '3' -> 3, '0.5' -> 0.5, anything else stays a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_params(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """['anchor.shared=true'] -> {'anchor': {'shared': True}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        head, eq, value = item.partition("=")
        method, dot, key = head.rpartition(".")
        if not eq or not dot or not method or not key:
            raise SpecError(f"--param {item!r} is malformed: expected METHOD.KEY=VALUE")
        out.setdefault(method, {})[key] = parse_value(value)
    return out


@dataclass(frozen=True)
class SweepConfig:
    ns: tuple[int, ...]
    ms: tuple[int, ...] = (30,)
    methods: tuple[str, ...] = ()
    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 1
    heads: int = 6
    head_dim: int = 64
    mode: str = "fwd"
    workload: str = "gaussian"
    seed: int = 0
    out: Path = Path("results/sweep-cpu")
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    timing: TimingConfig = TimingConfig()
    count_flops: bool = True
    memory_guard: float = 0.8  # skip CPU runs whose scratch estimate exceeds this share of free RAM
    fit: str = "none"          # none | closed | distill (attnbench.fit), on the workload's 'fit' split
    fit_iters: int = 20        # closed: fixed-point iterations
    fit_steps: int = 200       # distill: Adam steps
    fit_lr: float = 5e-2       # distill: Adam learning rate


@dataclass(frozen=True)
class Point:
    method: str
    params: dict[str, Any]
    n: int
    m: int | None


def expand_grid(cfg: SweepConfig) -> list[Point]:
    """Every (method, n, m) point: budgeted methods once per m, the others once per n."""
    points = []
    for n in cfg.ns:
        for name in cfg.methods:
            info = registry.get_info(name)
            user = {k: v for k, v in cfg.params.get(name, {}).items() if k != info.budget}
            params = {k: v for k, v in {**info.defaults, **user}.items() if k != info.budget}
            budgets = cfg.ms if info.budget else (None,)
            points += [Point(name, params, n, m) for m in budgets]
    return points


def row_key(row: dict[str, Any]) -> str:
    return json.dumps([row.get(k) for k in KEY_FIELDS], sort_keys=True, default=str)


def fit_settings(cfg: SweepConfig) -> dict[str, Any] | None:
    """The fitting options that change a fitted row (part of its resume key); None without fitting."""
    if cfg.fit == "none":
        return None
    return {"iters": cfg.fit_iters} if cfg.fit == "closed" else {"steps": cfg.fit_steps, "lr": cfg.fit_lr}


def base_row(cfg: SweepConfig, p: Point) -> dict[str, Any]:
    info = registry.get_info(p.method)
    return {
        "method": p.method, "family": info.family, "params": p.params, "n": p.n, "m": p.m,
        "batch": cfg.batch, "heads": cfg.heads, "head_dim": cfg.head_dim, "dtype": cfg.dtype,
        "device": cfg.device, "mode": cfg.mode, "workload": cfg.workload, "seed": cfg.seed,
        "status": None, "message": None,
        "latency_ms": None, "latency_p20_ms": None, "latency_p80_ms": None, "latency_iqr_rel": None,
        "timing": None, "peak_mem_bytes": None, "peak_mem_method": None,
        "macs_analytic": None, "macs_fvcore": None, "flops_torch": None, "flops_scope": "fwd",
        "fvcore_uncounted_ops": None, "flop_notes": None,
        "err_rel_fro": None, "err_max_abs": None, "err_cos_mean": None, "out_finite": None,
        "attn_entropy_ratio": None, "workload_params": None, "impl": {},
        **null_telemetry("not timed"),
        "fit": cfg.fit, "fit_cfg": fit_settings(cfg), "timing_mode": "cuda_graph" if cfg.timing.cuda_graphs else "eager",
        "fit_info": None, "fit_time_s": None, "err_uniform_rel_fro": None, "err_skill": None,
        "attn_kl_mean": None, "attn_tv_mean": None, "attn_map_reason": None,
        **dict.fromkeys(ROOFLINE_FIELDS),
    }


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


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


def _available_ram_bytes() -> int | None:
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
    row = base_row(cfg, p)
    row["workload_params"] = wl.params
    try:
        params = dict(p.params)
        info = registry.get_info(p.method)
        if info.budget:
            params[info.budget] = p.m
        module = registry.create(p.method, heads=cfg.heads, head_dim=cfg.head_dim, **params)
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
        row["status"] = "ok"
    except CallTimeout as exc:
        row.update(status="timeout", message=str(exc))
    except Exception as exc:  # every failure becomes a row, never a crash of the sweep
        row.update(status="oom" if is_oom(exc) else "error",
                   message=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500])
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


def resolve_workload_dims(cfg: SweepConfig) -> tuple[SweepConfig, list[str]]:
    """For ``file:PATH`` the file defines batch, heads, N and head_dim: the config takes them.

    Returns the config to run and notes naming the options that were overridden.
    """
    if not cfg.workload.startswith("file:"):
        return cfg, []
    dims = file_dims(cfg.workload.partition(":")[2])
    wanted = {"batch": cfg.batch, "heads": cfg.heads, "head_dim": cfg.head_dim, "n": cfg.ns}
    new = replace(cfg, ns=(dims["n"],), batch=dims["batch"], heads=dims["heads"], head_dim=dims["head_dim"])
    changed = [f"{k}={dims[k]}" for k in ("batch", "heads", "n", "head_dim")
               if (wanted[k] != (dims[k],) if k == "n" else wanted[k] != dims[k])]
    notes = [f"{cfg.workload}: the file defines {', '.join(changed)}; the sweep uses them"] if changed else []
    return new, notes


def _memory_guard(cfg: SweepConfig, module, n: int) -> str | None:
    if cfg.device != "cpu":
        return None
    need = module.workspace_bytes(cfg.batch, n, torch.tensor([], dtype=DTYPES[cfg.dtype]).element_size())
    free = _available_ram_bytes()
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
        notes.append(f"fvcore: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    try:
        out.update(torch_flops(lambda: module(wl.q, wl.k, wl.v, grid=wl.grid)))
    except Exception as exc:
        notes.append(f"FlopCounterMode: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    out["flop_notes"] = "; ".join(notes) or None
    return out


@dataclass
class SweepSummary:
    out: Path
    written: int = 0
    skipped_existing: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class RowWriter:
    """Appends rows to rows.jsonl, one flushed line each."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def prepare_out(out: Path) -> set[str]:
    """Create the run folder; return the keys of rows already measured (resume)."""
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    if not rows_path.exists():
        return set()
    rows = read_rows(rows_path, repair_tail=True)
    return {row_key(r) for r in rows}


def run_sweep(cfg: SweepConfig, argv: list[str] | None = None, progress: bool = True) -> SweepSummary:
    """Measure every point of the grid not already in ``cfg.out/rows.jsonl``."""
    cfg, notes = resolve_workload_dims(cfg)
    if cfg.fit != "none" and cfg.workload.startswith("file:"):   # fail early: no fitting split
        make_workload(cfg.workload, cfg.batch, cfg.heads, cfg.ns[0], cfg.head_dim, dtype=torch.float32,
                      device="cpu", seed=cfg.seed, split="fit")
    done = prepare_out(cfg.out)
    summary = SweepSummary(out=cfg.out, notes=notes)
    run_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    env = collect_env(cfg.device, cfg.seed)
    env["roofline"] = device_peaks(cfg.device, cfg.dtype)
    _record_invocation(cfg, run_id, argv, env)
    points = expand_grid(cfg)
    todo = [p for p in points if row_key(base_row(cfg, p)) not in done]
    summary.skipped_existing = len(points) - len(todo)
    writer = RowWriter(cfg.out / "rows.jsonl")
    bar = _progress(len(todo), progress)
    for n in sorted({p.n for p in todo}):
        wl = make_workload(cfg.workload, cfg.batch, cfg.heads, n, cfg.head_dim,
                           dtype=DTYPES[cfg.dtype], device=cfg.device, seed=cfg.seed)
        cache: list[ExactReference] = []

        def ref() -> ExactReference:
            if not cache:
                cache.append(exact_reference(wl.q, wl.k, wl.v))
            return cache[0]

        extra = point_data(cfg, wl, n, ref)

        for p in (p for p in todo if p.n == n):
            if bar is not None:
                bar.set_description(f"{p.method} n={p.n}" + (f" m={p.m}" if p.m is not None else ""))
            row = measure_point(cfg, p, wl, ref, extra)
            row.update(roofline_columns(row, registry.get_info(p.method).uses_query, env["roofline"]))
            row.update(run_id=run_id, env=env,
                       timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            writer.append(row)
            summary.written += 1
            summary.statuses[row["status"]] = summary.statuses.get(row["status"], 0) + 1
            if row["status"] == "unsupported":
                summary.unsupported.append(f"{p.method} n={p.n} m={p.m}: {row['message']}")
            if bar is not None:
                bar.update(1)
            gc.collect()
        del wl, cache, extra
    if bar is not None:
        bar.close()
    return summary


def _record_invocation(cfg: SweepConfig, run_id: str, argv: list[str] | None, env: dict[str, Any]) -> None:
    entry = {"run_id": run_id, "argv": argv if argv is not None else sys.argv,
             "timing": timing_config_dict(cfg.timing), "env": env,
             "timestamp": env["timestamp"]}
    with open(cfg.out / "runs.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, default=str) + "\n")


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="row", file=sys.stderr, dynamic_ncols=True,
                bar_format="{desc:<32} {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")
