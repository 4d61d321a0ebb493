"""Model-level numbers for one (arch, attention, m): parameters, MACs two ways, images per second.

Rows share the sweep's format (``method``, ``n``, ``status``, ``device``, ``dtype``, ``mode``)
plus ``kind: "model"``, so ``attnbench.results`` validates them and ``report`` renders them.
MACs are counted for one image (batch 1), matrix products only (convolution, linear, matmul,
attention); LayerNorm, GELU, softmax and other elementwise work count zero, as in the sweep.
"""
from __future__ import annotations

import datetime as _dt
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnbench import registry, rows
from attnbench.measure.allocator import steady_allocator
from attnbench.measure.env import collect_env, device_label
from attnbench.measure.flops import fvcore_count, torch_flops
from attnbench.models.vit import ViT, count_params, vit_config
from attnbench.results import RowWriter, measured_keys, read_rows
from attnbench.spec import is_oom, one_line


@dataclass(frozen=True)
class ModelConfig:
    """One model audit; ``m`` is ignored by attentions without a budget."""

    arch: str
    attention: str
    img: int = 224
    m: int | None = 30
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    batch: int = 8
    iters: int = 3          # timed forward passes (iterations, not seconds), after one warm-up
    timing: bool = True
    seed: int = 0


def attention_params(cfg: ModelConfig) -> dict[str, Any]:
    """Constructor parameters of the attention: user params plus the budget set to ``m``."""
    info = registry.get_info(cfg.attention)
    params = {**info.defaults, **cfg.params}
    if info.budget and cfg.m is not None:
        params[info.budget] = cfg.m
    return params


def build_model(cfg: ModelConfig) -> ViT:
    torch.manual_seed(cfg.seed)
    return ViT(vit_config(cfg.arch, cfg.attention, cfg.img, **attention_params(cfg))).eval()


def fvcore_model_macs(model: torch.nn.Module, images: torch.Tensor) -> dict[str, Any]:
    """fvcore multiply-adds of ``model(images)`` with the sweep's extra op handles."""
    return fvcore_count(model, (images,))


def images_per_second(model: torch.nn.Module, images: torch.Tensor, iters: int) -> dict[str, Any]:
    """Forward throughput: one warm-up pass, then ``iters`` timed passes (wall clock)."""
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    with torch.no_grad():
        model(images)
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            model(images)
        sync()
        elapsed = time.perf_counter() - t0
    return {"images_per_s": images.shape[0] * iters / elapsed,
            "timing": {"unit": "iterations", "warmup_iters": 1, "iters": iters, "seconds": elapsed}}


def base_model_row(cfg: ModelConfig) -> dict[str, Any]:
    """The model row of ``cfg`` before measuring: identity filled in, outcomes null."""
    info = registry.get_info(cfg.attention)
    return {
        **rows.blank_row("model"), "method": cfg.attention, "family": info.family, "arch": cfg.arch,
        "attention": cfg.attention, "img": cfg.img, "n": (cfg.img // 16) ** 2 + 1,
        "m": cfg.m if info.budget else None, "batch": cfg.batch,
        "params": {k: v for k, v in attention_params(cfg).items() if k != info.budget},
        "dtype": "float32", "device": cfg.device, "device_name": device_label(cfg.device), "mode": "fwd",
        "seed": cfg.seed, "timed": cfg.timing,
    }


def unsupported(model: ViT, cfg: ModelConfig) -> str | None:
    attn = model.blocks[0].attn
    n = model.cfg.tokens - (1 if attn.grid is not None else 0)  # grid methods see the patches only
    return attn.core.unsupported_reason(cfg.device, "float32", n, attn.core.head_dim)


def measure_model(cfg: ModelConfig) -> dict[str, Any]:
    """One row; a failure becomes a row with its status and message."""
    row = base_model_row(cfg)
    try:
        model = build_model(cfg).to(cfg.device)
        row["param_count"] = count_params(model)
        reason = unsupported(model, cfg)
        if reason:
            return {**row, "status": "unsupported", "message": reason}
        one = torch.randn(1, 3, cfg.img, cfg.img, device=cfg.device)
        row.update(fvcore_model_macs(model, one))
        row.update(torch_flops(lambda: model(one)))
        if cfg.timing:
            images = torch.randn(cfg.batch, 3, cfg.img, cfg.img, device=cfg.device)
            row.update(images_per_second(model, images, cfg.iters))
        row["status"] = "ok"
    except Exception as exc:  # every failure becomes a row
        row.update(status="oom" if is_oom(exc) else "error", message=one_line(exc))
    return row


def run_models(cfgs: list[ModelConfig], out: Path, argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Measure each config not yet in ``out/rows.jsonl`` and append its row; record the invocation.

    Returns the rows of ``cfgs``: the new ones, and for configs measured before, the stored ones.
    """
    steady_allocator()                       # the heap policy of every timing process
    done = measured_keys(out)
    run_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    env = collect_env(cfgs[0].device if cfgs else "cpu", cfgs[0].seed if cfgs else None)
    RowWriter(out / "runs.jsonl").append({"run_id": run_id, "argv": argv if argv is not None else sys.argv,
                                          "env": env, "timestamp": env["timestamp"]})
    writer, stored = RowWriter(out / "rows.jsonl"), None
    result = []
    for cfg in cfgs:
        key = rows.identity(base_model_row(cfg))
        if key in done:
            stored = stored or {rows.identity(r): r for r in read_rows(out / "rows.jsonl")}
            result.append({**stored[key], "resumed": True})
            continue
        row = measure_model(cfg)
        row.update(run_id=run_id, env=env,
                   timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        writer.append(row)
        result.append(row)
    return result
