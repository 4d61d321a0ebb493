"""Grid expansion and the row loop: one JSON row per measured point, appended and flushed.

A killed sweep loses at most the row in flight; running it again skips what is measured.
"""
from __future__ import annotations

import datetime as _dt
import gc
import sys
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from attnbench import registry, rows
from attnbench.measure.env import collect_env, device_label
from attnbench.measure.error import ExactReference, exact_reference
from attnbench.measure.roofline import device_peaks, roofline_columns
from attnbench.measure.timing import TimingConfig, timing_config_dict
from attnbench.results import RowWriter, measured_keys
from attnbench.point import base_row, fit_settings, measure_point, point_data  # noqa: F401  (re-exported)
from attnbench.spec import DTYPES, param_variants
from attnbench.workloads import file_dims, make_workload

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
    device_name: str | None = None  # GPU or CPU model (identity of a row); None: this machine's
    layers: tuple[int | str | None, ...] = (None,)  # file: with a layer axis: 0..L-1; without: "all"


@dataclass(frozen=True)
class Point:
    method: str
    params: dict[str, Any]
    n: int
    m: int | None
    layer: int | str | None = None


def expand_grid(cfg: SweepConfig) -> list[Point]:
    """Every (method, params, n, m, layer) point: budgeted methods once per m, the others once per n,
    once per combination of the comma-list values given in --param, and once per layer of the
    workload (``cfg.layers``)."""
    return [replace(p, layer=layer) for layer in cfg.layers for p in _expand_methods(cfg)]


def _expand_methods(cfg: SweepConfig) -> list[Point]:
    points = []
    for n in cfg.ns:
        for name in cfg.methods:
            info = registry.get_info(name)
            user = {k: v for k, v in cfg.params.get(name, {}).items() if k != info.budget}
            budgets = cfg.ms if info.budget else (None,)
            for variant in param_variants(user):  # a comma list in --param: one series per value
                params = {k: v for k, v in {**info.defaults, **variant}.items() if k != info.budget}
                points += [Point(name, params, n, m) for m in budgets]
    return points


def resolve_workload_dims(cfg: SweepConfig) -> tuple[SweepConfig, list[str]]:
    """For ``file:PATH`` the file defines batch, heads, N and head_dim: the config takes them.

    Returns the config to run and notes naming the options that were overridden.
    """
    if not cfg.workload.startswith("file:"):
        return cfg, []
    dims = file_dims(cfg.workload.partition(":")[2])
    wanted = {"batch": cfg.batch, "heads": cfg.heads, "head_dim": cfg.head_dim, "n": cfg.ns}
    layers = tuple(range(dims["layers"])) if dims["layers"] is not None else ("all",)
    new = replace(cfg, ns=(dims["n"],), batch=dims["batch"], heads=dims["heads"], head_dim=dims["head_dim"],
                  layers=layers)
    changed = [f"{k}={dims[k]}" for k in ("batch", "heads", "n", "head_dim")
               if (wanted[k] != (dims[k],) if k == "n" else wanted[k] != dims[k])]
    notes = [f"{cfg.workload}: the file defines {', '.join(changed)}; the sweep uses them"] if changed else []
    return new, notes


@dataclass
class SweepSummary:
    out: Path
    written: int = 0
    skipped_existing: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_sweep(cfg: SweepConfig, argv: list[str] | None = None, progress: bool = True) -> SweepSummary:
    """Measure every point of the grid not already in ``cfg.out/rows.jsonl``."""
    cfg, notes = resolve_workload_dims(cfg)
    if cfg.fit != "none" and cfg.workload.startswith("file:"):   # fail early: no fitting split
        make_workload(cfg.workload, cfg.batch, cfg.heads, cfg.ns[0], cfg.head_dim, dtype=torch.float32,
                      device="cpu", seed=cfg.seed, split="fit", layer=_layer_arg(cfg.layers[0]))
    cfg = replace(cfg, device_name=device_label(cfg.device))
    done = measured_keys(cfg.out)
    summary = SweepSummary(out=cfg.out, notes=notes)
    run_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    env = collect_env(cfg.device, cfg.seed)
    env["roofline"] = device_peaks(cfg.device, cfg.dtype)
    _record_invocation(cfg, run_id, argv, env)
    points = expand_grid(cfg)
    todo = [p for p in points if rows.identity(base_row(cfg, p)) not in done]
    summary.skipped_existing = len(points) - len(todo)
    writer = RowWriter(cfg.out / "rows.jsonl")
    bar = _progress(len(todo), progress)
    for n, layer in sorted({(p.n, p.layer) for p in todo}, key=lambda nl: (nl[0], str(nl[1]).zfill(6))):
        wl = make_workload(cfg.workload, cfg.batch, cfg.heads, n, cfg.head_dim,
                           dtype=DTYPES[cfg.dtype], device=cfg.device, seed=cfg.seed, layer=_layer_arg(layer))
        cache: list[ExactReference] = []

        def ref() -> ExactReference:
            if not cache:
                cache.append(exact_reference(wl.q, wl.k, wl.v))
            return cache[0]

        extra = point_data(cfg, wl, n, ref)

        for p in (p for p in todo if p.n == n and p.layer == layer):
            if bar is not None:
                bar.set_description(f"{p.method} n={p.n}" + (f" m={p.m}" if p.m is not None else "")
                                    + (f" layer={p.layer}" if isinstance(p.layer, int) else ""))
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


def _layer_arg(layer: int | str | None) -> int | None:
    """The ``make_workload(layer=...)`` value of a point's layer ("all" and None: no layer axis)."""
    return layer if isinstance(layer, int) else None


def _record_invocation(cfg: SweepConfig, run_id: str, argv: list[str] | None, env: dict[str, Any]) -> None:
    entry = {"run_id": run_id, "argv": argv if argv is not None else sys.argv,
             "timing": timing_config_dict(cfg.timing), "env": env,
             "timestamp": env["timestamp"]}
    RowWriter(cfg.out / "runs.jsonl").append(entry)


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="row", file=sys.stderr, dynamic_ncols=True,
                bar_format="{desc:<32} {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")
