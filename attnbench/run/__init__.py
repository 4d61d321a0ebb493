"""Executors: where the points of a sweep are measured.

* ``inline``: in the sweep's own process (a crash of a method ends the sweep);
* ``process``: in spawned worker processes, one per device (attnbench.run.process);
* ``ray``: in Ray actors, one per device, across a cluster (attnbench.run.ray_exec).

Every executor calls ``on_row(point, row)`` in the sweep's process, which alone writes rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from attnbench.sweep import Point, SweepConfig

EXECUTORS = ("inline", "process", "ray")
OnRow = Callable[["Point", dict], None]


@dataclass
class Progress:
    """What is in flight where: ``shown`` is called with one line each time it changes."""

    shown: Callable[[str], None] = lambda line: None
    inflight: dict[str, str] = field(default_factory=dict)

    def start(self, worker: str, p: Point) -> None:
        self.inflight[worker] = point_label(p)
        self.shown(self.line())

    def stop(self, worker: str) -> None:
        self.inflight.pop(worker, None)
        self.shown(self.line())

    def line(self) -> str:
        return " | ".join(f"{w}: {label}" for w, label in sorted(self.inflight.items())) or "idle"


def point_label(p: Point) -> str:
    return f"{p.method} n={p.n}" + (f" m={p.m}" if p.m is not None else "")


def failure_row(cfg: SweepConfig, p: Point, status: str, message: str, where: dict[str, Any]) -> dict[str, Any]:
    """The row of a point whose worker died or passed a time limit."""
    from attnbench.sweep import base_row

    return {**base_row(cfg, p), "status": status, "message": message, **where}


def run_points(cfg: SweepConfig, todo: list[Point], peaks: dict[str, Any], on_row: OnRow,
               progress: Progress) -> None:
    """Measure ``todo`` with ``cfg.executor``; each row goes to ``on_row`` as it is finished."""
    if cfg.executor == "inline":
        from attnbench.run.runner import PointRunner, worker_fields

        runner = PointRunner(cfg, peaks, worker_fields("inline", cfg.device))
        for p in sorted(todo, key=lambda p: p.n):
            progress.start("main", p)
            on_row(p, runner.measure(p))
            progress.stop("main")
    elif cfg.executor == "process":
        from attnbench.run.process import ProcessPool

        ProcessPool(cfg, peaks, progress).run(todo, on_row)
    elif cfg.executor == "ray":
        from attnbench.run.ray_exec import RayPool

        RayPool(cfg, peaks, progress).run(todo, on_row)
    else:
        raise ValueError(f"unknown executor {cfg.executor!r}; use {', '.join(EXECUTORS)}")
