"""Argument handling and printing for ``bench.py model`` (the click function stays thin)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from attnbench.models.audit import ModelConfig
from attnbench.models.vit import ARCHS
from attnbench.options import check_params
from attnbench.spec import SpecError, parse_m_spec, parse_params


def model_configs(arch_spec: str, attentions: tuple[str, ...], img: int, m_spec: str, param_items,
                  device: str, batch: int | None, iters: int, timing: bool, bad) -> list[ModelConfig]:
    """Every (arch, attention, m) to audit; ``bad`` is the exception class for bad input."""
    archs = [a.strip() for a in arch_spec.split(",") if a.strip()]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown or not archs:
        raise bad(f"unknown arch {(unknown or [arch_spec])[0]!r}; use {', '.join(ARCHS)}")
    if img <= 0 or img % 16:
        raise bad(f"--img must be a positive multiple of the patch size 16, got {img}")
    if iters <= 0 or (batch is not None and batch <= 0):
        raise bad("--iters and --batch must be positive")
    try:
        ms = parse_m_spec(m_spec) or [30]
        params = parse_params(q for item in param_items for q in _qualified(item, attentions))
    except SpecError as exc:
        raise bad(str(exc)) from None
    check_params(params, attentions)
    batch = batch or (64 if device == "cuda" else 8)
    return [ModelConfig(arch=a, attention=att, img=img, m=m, params=params.get(att, {}), device=device, batch=batch,
                        iters=iters, timing=timing)
            for a in archs for att in attentions for m in _budgets(att, ms)]


def _qualified(item: str, attentions: tuple[str, ...]) -> list[str]:
    """``KEY=VALUE`` (the old spelling, for every attention) as ``METHOD.KEY=VALUE`` items; the
    others unchanged."""
    head = item.partition("=")[0]
    if "." in head or "=" not in item or not head:
        return [item]
    return [f"{att}.{item}" for att in attentions]


def _budgets(attention: str, ms: list[int]) -> list[int | None]:
    from attnbench import registry

    return ms if registry.get_info(attention).budget else [None]


def print_model_rows(rows: list[dict[str, Any]], out: Path) -> None:
    """One line per row: parameters in millions, fvcore GMACs, images/s."""
    for r in rows:
        label = f"{r['arch']} {r['attention']}" + (f" m={r['m']}" if r["m"] is not None else "")
        if r["status"] != "ok":
            click.echo(f"{label}: {r['status']}: {r['message']}")
            continue
        ips = f", {r['images_per_s']:.1f} images/s at batch {r['batch']}" if r["images_per_s"] else ""
        ips += " (measured before; rerun skipped it)" if r.get("resumed") else ""
        click.echo(f"{label}: {r['param_count'] / 1e6:.2f} M params, {r['macs_fvcore'] / 1e9:.3f} GMACs (fvcore), "
                   f"{r['flops_torch'] / 2e9:.3f} GMACs (FlopCounterMode/2){ips}")
    new = sum(not r.get("resumed") for r in rows)
    click.echo(f"{new} rows written to {out / 'rows.jsonl'}; {len(rows) - new} already measured")
