"""Option handling of ``bench.py capture`` and ``bench.py drift``; attnbench/cli.py holds the click
functions. Every problem raises ``bad`` (one line, exit status 2)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import click

from attnbench.capture.errors import CaptureError
from attnbench.choices import FIT_MODES
from attnbench.spec import SpecError, parse_m_spec, parse_params


def _positive(bad: Callable[[str], Exception], **values: int | float | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise bad(f"--{name.replace('_', '-')} must be positive, got {value}")


def _inputs(bad, text: str | None, images: str | None) -> None:
    if text is not None and images is not None:
        raise bad("give --text or --images, not both")


def run_capture_cmd(bad, model, weights, random_weights, seed, text, images, n, batch, fit_batch, out) -> None:
    """Capture, print one line naming the file and its shape."""
    from attnbench.capture.capture import CaptureConfig, run_capture

    _inputs(bad, text, images)
    _positive(bad, n=n, batch=batch, fit_batch=fit_batch)
    cfg = CaptureConfig(model=model, out=Path(out), weights=weights, random_weights=random_weights, seed=seed,
                        text=text, images=images, n=n, batch=batch, fit_batch=fit_batch)
    try:
        meta = run_capture(cfg)
    except CaptureError as exc:
        raise bad(str(exc)) from None
    click.echo(f"{meta['model']} ({meta['revision']}): q, k, v of {meta['layers']} layers x {meta['batch']} inputs "
               f"x {meta['heads']} heads x {meta['n']} tokens x {meta['head_dim']} written to {out}; "
               f"sweep it with --workload file:{out}")


def method_list(bad, spec: str) -> tuple[str, ...]:
    from attnbench import registry

    try:
        names = registry.names_from_spec(spec)
    except KeyError as exc:
        raise bad(exc.args[0]) from None
    if not names:
        raise bad("--methods is empty: give registered method names, e.g. vanilla-sdpa,anchor")
    return names


def fit_list(bad, spec: str) -> tuple[str, ...]:
    fits = tuple(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    unknown = [f for f in fits if f not in FIT_MODES]
    if not fits or unknown:
        raise bad(f"unknown --fit {spec!r}; use none, closed or distill (comma list allowed)")
    return fits


def run_drift_cmd(bad, model, attention, m_spec, param_items, fit, fit_iters, fit_steps, fit_lr, weights,
                  random_weights, seed, text, images, n, batch, fit_batch, device, out) -> None:
    """Measure the drift settings, one line each, then where the rows went."""
    from attnbench.capture.drift import DriftConfig, run_drift

    _inputs(bad, text, images)
    _positive(bad, n=n, batch=batch, fit_batch=fit_batch, fit_iters=fit_iters, fit_steps=fit_steps, fit_lr=fit_lr)
    try:
        ms, params = parse_m_spec(m_spec), parse_params(param_items)
    except SpecError as exc:
        raise bad(str(exc)) from None
    methods = method_list(bad, attention)
    from attnbench.options import check_params

    check_params(params, methods)
    out_dir = Path(out or f"results/drift-{model.replace(':', '-').replace('/', '-')}")
    cfg = DriftConfig(model=model, methods=methods, out=out_dir, ms=tuple(ms) or (30,), params=params,
                      fits=fit_list(bad, fit), fit_iters=fit_iters, fit_steps=fit_steps, fit_lr=fit_lr, text=text,
                      images=images, n=n, batch=batch, fit_batch=fit_batch, weights=weights,
                      random_weights=random_weights, seed=seed, device=device)
    try:
        rows = run_drift(cfg, argv=["bench.py"] + sys.argv[1:], echo=click.echo)
    except CaptureError as exc:
        raise bad(str(exc)) from None
    click.echo(f"{len(rows)} drift rows written to {out_dir / 'rows.jsonl'}")
