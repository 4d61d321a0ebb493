"""The settings of a measurement, declared once: small frozen groups (shape; workload and fit;
execution) that the sweep's ``SweepConfig`` and the other commands' configs are made of, the
fixed choices the command line offers, a sweep's ``Point`` and the grid expansion.

This module sits at the bottom of the package (it imports no torch): point.py, run/, the
commands and the CLI all import it, never the other way round. Its defaults are the CLI's:
``run_sweep(SweepConfig(methods=...))`` measures what ``bench.py sweep --methods ...`` does on CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from attnbench.choices import DEVICES, DTYPE_NAMES, EXECUTORS, FIT_MODES, MODES

__all__ = ["DEVICES", "DTYPE_NAMES", "EXECUTORS", "FIT_MODES", "MODES", "Execution", "FitSettings", "Inputs",
           "Point", "Shape", "SweepConfig", "expand_grid", "fit_settings"]

DEFAULT_N = {"cpu": "196,1024", "cuda": "196..16384"}   # --n when not given, per device
DEFAULT_M = (10, 30, 100)
SEED_MAX = 2**62  # torch generators take 64-bit seeds; the fitting split adds an offset


def default_dtype(device: str) -> str:
    """float32 on CPU, bfloat16 on CUDA."""
    return "bfloat16" if device == "cuda" else "float32"


@dataclass(frozen=True)
class Shape:
    """Where and at which size the inputs are made: q, k, v are (batch, heads, N, head_dim)."""

    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 1
    heads: int = 6
    head_dim: int = 64


@dataclass(frozen=True)
class FitSettings:
    """How learnable state is fitted (attnbench.fit): the budgets of ``closed`` and ``distill``."""

    fit_iters: int = 20        # closed: fixed-point iterations
    fit_steps: int = 200       # distill: Adam steps
    fit_lr: float = 5e-2       # distill: Adam learning rate


@dataclass(frozen=True)
class Inputs(FitSettings):
    """The workload the inputs come from, its seed, and the fitting done on its 'fit' split."""

    workload: str = "image"
    seed: int = 0
    fit: str = "closed"        # none | closed | distill, on the workload's 'fit' split


@dataclass(frozen=True)
class Execution:
    """Where points run (attnbench.run) and the limits the parent enforces on its workers."""

    executor: str = "process"  # inline | process | ray
    workers: int | None = None   # process/ray workers; None: one per GPU on CUDA, one on CPU
    point_timeout_s: float = 1200.0   # process/ray: seconds one whole point may take (10 x the call timeout)
    worker_mem_limit: int | None = None   # process: address-space limit of a worker (bytes, RLIMIT_AS)
    plugins: tuple[str, ...] = ()   # plugin files/modules workers import before measuring
    retry_failed: bool = False  # measure again points whose latest row is crashed/timeout/error/harness_error
    ray_address: str | None = None  # ray: cluster to join; None starts a local Ray instance


def _default_timing():
    from attnbench.measure.timing import TimingConfig

    return TimingConfig()


@dataclass(frozen=True, kw_only=True)
class SweepConfig(Shape, Inputs, Execution):
    """One sweep: the grid (ns x ms x methods x params) and the settings groups it inherits."""

    ns: tuple[int, ...] = (196, 1024)
    ms: tuple[int, ...] = DEFAULT_M
    methods: tuple[str, ...] = ()
    mode: str = "fwd"
    out: Path = Path("results/sweep-cpu")
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    timing: Any = field(default_factory=_default_timing)   # attnbench.measure.timing.TimingConfig
    count_flops: bool = True
    memory_guard: float = 0.8  # skip points whose scratch estimate exceeds this share of free RAM / device memory
    device_name: str | None = None  # GPU or CPU model (identity of a row); None: this machine's
    layers: tuple[int | str | None, ...] = (None,)  # file: with a layer axis: 0..L-1; without: "all"


@dataclass(frozen=True)
class Point:
    method: str
    params: dict[str, Any]
    n: int
    m: int | None
    layer: int | str | None = None


def fit_settings(cfg: Inputs) -> dict[str, Any] | None:
    """The fitting options that change a fitted row (part of its resume key); None without fitting."""
    if cfg.fit == "none":
        return None
    return {"iters": cfg.fit_iters} if cfg.fit == "closed" else {"steps": cfg.fit_steps, "lr": cfg.fit_lr}


def expand_grid(cfg: SweepConfig) -> list[Point]:
    """Every (method, params, n, m, layer) point: budgeted methods once per m, the others once per n,
    once per combination of the comma-list values given in --param, and once per layer of the
    workload (``cfg.layers``)."""
    return [replace(p, layer=layer) for layer in cfg.layers for p in _expand_methods(cfg)]


def _expand_methods(cfg: SweepConfig) -> list[Point]:
    from attnbench import registry
    from attnbench.spec import param_variants

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
