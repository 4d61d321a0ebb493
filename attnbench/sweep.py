"""Grid expansion and the row loop: one JSON row per measured point, appended and flushed.

A killed sweep loses at most the row in flight; running it again skips what is measured.
"""
from __future__ import annotations

import datetime as _dt
import sys
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from attnbench import registry, rows
from attnbench.measure.env import collect_env, device_label
from attnbench.measure.roofline import device_peaks
from attnbench.measure.timing import timing_config_dict
from attnbench.point import base_row
from attnbench.results import FolderLock, RowWriter, measured_keys
from attnbench.run import Progress, run_points
from attnbench.settings import Point, SweepConfig, expand_grid
from attnbench.spec import DTYPES, SpecError
from attnbench.workloads import check_workload_spec, file_dims, make_workload

__all__ = ["Point", "SweepConfig", "SweepSummary", "expand_grid", "run_sweep"]


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
    failed: list[str] = field(default_factory=list)   # crashed, timeout, oom, error, harness_error rows
    notes: list[str] = field(default_factory=list)

    def add(self, p: Point, row: dict[str, Any]) -> None:
        status = row["status"]
        self.written += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        label = f"{p.method} n={p.n} m={p.m}: "
        if status == "unsupported":
            self.unsupported.append(label + str(row["message"]))
        elif status != "ok":
            self.failed.append(label + f"{status} ({row['message']})")


MAX_INPUT_BYTES = 2 ** 50   # q, k, v larger than this (1 PiB) exceed any machine by orders: refused


def check_sizes(cfg: SweepConfig) -> None:
    """Refuse token counts whose q, k, v cannot be described (int64 overflow) or exceed any memory."""
    item = torch.tensor([], dtype=DTYPES[cfg.dtype]).element_size()
    for n in cfg.ns:
        elements = cfg.batch * cfg.heads * n * cfg.head_dim
        if elements >= 2 ** 63 or 3 * elements * item > MAX_INPUT_BYTES:
            raise SpecError(f"--n {n}: q, k, v of shape ({cfg.batch}, {cfg.heads}, {n}, {cfg.head_dim}) would take "
                            f"{3 * elements * item / 2 ** 50:.3g} PiB; no machine holds that")


def run_sweep(cfg: SweepConfig, argv: list[str] | None = None, progress: bool = True) -> SweepSummary:
    """Measure every point of the grid not already in ``cfg.out/rows.jsonl`` (``cfg.executor`` runs them)."""
    check_workload_spec(cfg.workload)
    cfg, notes = resolve_workload_dims(cfg)
    check_sizes(cfg)
    if cfg.workload.startswith("file:") and needs_fit_split(cfg):   # fail early: no fitting split
        make_workload(cfg.workload, cfg.batch, cfg.heads, cfg.ns[0], cfg.head_dim, dtype=torch.float32,
                      device="cpu", seed=cfg.seed, split="fit", layer=_layer_arg(cfg.layers[0]))
    cfg = replace(cfg, device_name=device_label(cfg.device))
    with FolderLock(cfg.out):
        done = measured_keys(cfg.out, retry=rows.RETRY_STATUSES if cfg.retry_failed else ())
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

        def record(p: Point, row: dict[str, Any]) -> None:
            row.update(run_id=run_id, env=env,
                       timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            writer.append(row)
            summary.add(p, row)
            if bar is not None:
                bar.update(1)

        shown = (lambda line: bar.set_description_str(line)) if bar is not None else (lambda line: None)
        run_points(cfg, todo, env["roofline"], record, Progress(shown))
        if bar is not None:
            bar.close()
    return summary


def needs_fit_split(cfg: SweepConfig) -> bool:
    """Whether ``cfg.fit`` fits any chosen method: ``closed`` a method with a closed-form fit,
    ``distill`` one with trainable parameters (the others are measured as they are built)."""
    if cfg.fit == "none":
        return False
    from attnbench.methods.base import AttentionMethod

    for name in cfg.methods:
        info = registry.get_info(name)
        if cfg.fit == "closed" and getattr(info.cls, "fit_closed", None) is not AttentionMethod.fit_closed:
            return True
        if cfg.fit == "distill":
            try:
                module = registry.build(name, heads=cfg.heads, head_dim=cfg.head_dim, params=cfg.params.get(name),
                                        m=cfg.ms[0] if cfg.ms else None)
            except Exception:
                return True         # cannot tell: ask for the split as before
            if any(p.requires_grad for p in module.parameters()):
                return True
    return False


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
                bar_format="{n_fmt}/{total_fmt} [{elapsed}<{remaining}] {desc}")
