"""The worker side of every executor: measure points one at a time, keeping the current n's
workload and exact reference, and say where each row was measured."""
from __future__ import annotations

import gc
import os
import socket
from typing import Any, Callable

import torch

from attnbench import registry
from attnbench.measure.allocator import steady_allocator
from attnbench.measure.error import ExactReference, exact_reference
from attnbench.measure.roofline import roofline_columns
from attnbench.point import HarnessFailure, base_row, measure_point, point_data, strict_harness
from attnbench.settings import Point, SweepConfig
from attnbench.spec import DTYPES, is_oom, one_line
from attnbench.workloads import make_workload


def worker_fields(executor: str, device: str, device_index: int | None = None,
                  ray_node_id: str | None = None) -> dict[str, Any]:
    """The row fields naming this worker: executor, host, PID, CUDA device index and UUID, Ray node."""
    uuid = None
    if device == "cuda" and torch.cuda.is_available():
        uuid = str(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", "")) or None
        if device_index is None:
            device_index = torch.cuda.current_device()
    return {"executor": executor, "worker_host": socket.gethostname(), "worker_pid": os.getpid(),
            "device_index": device_index if device == "cuda" else None, "device_uuid": uuid,
            "ray_node_id": ray_node_id}


class PointRunner:
    """Measures points into rows; points of one n share one workload, reference and per-n data.

    The workload is made inside the point's error handling: inputs that do not fit give an
    ``oom`` row for every point of that n.
    """

    def __init__(self, cfg: SweepConfig, peaks: dict[str, Any], where: dict[str, Any], watch: Any = None) -> None:
        self.cfg, self.peaks, self.where, self.watch = cfg, peaks, where, watch  # watch: see point.watched
        steady_allocator()                       # the same heap policy in every timing process
        self.n: tuple[int, Any] | None = None   # (n, layer) of the inputs held
        self.state: tuple[Any, Callable[[], ExactReference], Any] | None = None
        self.failure: dict[str, Any] | None = None    # status and message when the n's workload failed

    def measure(self, p: Point) -> dict[str, Any]:
        if (p.n, p.layer) != self.n:
            self._load(p.n, p.layer)
        if self.failure is not None:
            row = {**base_row(self.cfg, p), **self.failure}
        else:
            wl, ref, extra = self.state
            row = measure_point(self.cfg, p, wl, ref, extra, self.watch)
            row.update(roofline_columns(row, registry.get_info(p.method).uses_query, self.peaks))
        row.update(self.where)
        gc.collect()
        return row

    def _load(self, n: int, layer: Any = None) -> None:
        """Drop the previous inputs; make those of this n and layer (lazily their reference and
        per-n data). ``layer``: a captured model's layer (an int), or None/"all" without a layer axis."""
        self.state = self.failure = None
        gc.collect()
        cfg = self.cfg
        self.n = (n, layer)
        try:
            wl = make_workload(cfg.workload, cfg.batch, cfg.heads, n, cfg.head_dim, dtype=DTYPES[cfg.dtype],
                               device=cfg.device, seed=cfg.seed, layer=layer if isinstance(layer, int) else None)
        except Exception as exc:
            if not is_oom(exc) and strict_harness():
                raise
            status = "oom" if is_oom(exc) else "harness_error"
            self.failure = {"status": status, "message": f"workload n={n}: {one_line(exc)}"}
            return
        cache: list[ExactReference] = []

        def ref() -> ExactReference:
            if not cache:
                cache.append(exact_reference(wl.q, wl.k, wl.v))
            return cache[0]

        self.state = (wl, ref, point_data(cfg, wl, n, ref))


__all__ = ["PointRunner", "worker_fields", "HarnessFailure"]
