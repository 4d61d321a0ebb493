"""Executors: where the points of a sweep are measured.

* ``inline``: in the sweep's own process (a crash of a method ends the sweep);
* ``process``: in spawned worker processes, one per device (attnbench.run.process);
* ``ray``: in Ray actors, one per device, across a cluster (attnbench.run.ray_exec).

Every executor calls ``on_row(point, row)`` in the sweep's process, which alone writes rows.
"""
from __future__ import annotations

from typing import Any

from attnbench.run.common import OnRow, Progress, failure_row, point_label
from attnbench.settings import EXECUTORS, Point, SweepConfig

__all__ = ["EXECUTORS", "OnRow", "Progress", "failure_row", "point_label", "run_points"]


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
