"""The ``ray`` executor: points measured by Ray actors, one per device, across a cluster.

On CUDA each actor holds one GPU (``num_gpus=1``). On CPU each actor holds one unit of the
custom resource ``attnbench_timing``; a node started with ``--resources '{"attnbench_timing": 1}'``
runs at most one timing worker at a time (a local instance is started with ``--workers`` units,
default 1). A cluster without that resource gets one actor per alive node, pinned to it.
Rows come back to the driver as each point finishes; the driver alone writes them.

An actor that dies (its process crashed, its node was lost) makes its point a ``crashed`` row
and is replaced while its node lives. A point running longer than ``cfg.point_timeout_s``, or
whose current call has run longer than ``cfg.timing.timeout_s``, is a ``timeout`` row; its
actor is killed and replaced.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from attnbench.run.common import OnRow, Progress, failure_row
from attnbench.run.schedule import Schedule
from attnbench.settings import Point, SweepConfig

RESOURCE = "attnbench_timing"
POLL_S = 0.2


class PointActor:
    """A Ray actor measuring points with a PointRunner (made a Ray actor class on first use)."""

    def __init__(self, cfg: SweepConfig, peaks: dict[str, Any]) -> None:
        import ray

        from attnbench import registry
        from attnbench.run.runner import PointRunner, worker_fields

        for spec in cfg.plugins:
            registry.load_plugin(spec)
        self.watch = _Clock()
        node = ray.get_runtime_context().get_node_id()
        self.runner = PointRunner(cfg, peaks, worker_fields("ray", cfg.device, ray_node_id=node), self.watch)

    def where(self) -> dict[str, Any]:
        return self.runner.where

    def measure(self, p: Point) -> dict[str, Any]:
        return self.runner.measure(p)

    def call_started(self) -> float:
        """time.time() when the running timed call began; 0 between calls."""
        return self.watch.value


class _Clock:
    value = 0.0


@dataclass
class Slot:
    name: str
    options: dict[str, Any]
    node: str | None = None          # pinned node (clusters without the custom resource)


@dataclass
class Actor:
    slot: Slot
    handle: Any
    where: dict[str, Any]
    point: Point | None = None
    ref: Any = None
    started: float = 0.0


class RayPool:
    """Actors fed points by a Schedule; rows streamed to ``on_row``."""

    def __init__(self, cfg: SweepConfig, peaks: dict[str, Any], progress: Progress) -> None:
        self.cfg, self.peaks, self.progress = cfg, peaks, progress

    def run(self, todo: list[Point], on_row: OnRow) -> None:
        try:
            import ray
        except ImportError:
            from attnbench.run.process import WorkerStartError

            raise WorkerStartError("--executor ray needs Ray: pip install -e \".[ray]\"") from None

        if not todo:
            return
        started_here = not ray.is_initialized()
        if started_here:
            self._init(ray)
        self.remote_cls = ray.remote(max_restarts=0, max_concurrency=2)(PointActor)
        schedule = Schedule(todo)
        actors = self._start_all(ray, self._slots(ray)[: len(todo)])
        try:
            while schedule or any(a.point for a in actors):
                if not actors:
                    raise RuntimeError("no Ray worker left to measure the remaining points")
                for a in actors:
                    self._feed(a, schedule)
                ready, _ = ray.wait([a.ref for a in actors if a.ref is not None], num_returns=1, timeout=POLL_S)
                actors = [b for a in actors for b in self._check(ray, a, ready, on_row, schedule)]
        finally:
            for a in actors:
                ray.kill(a.handle)
            if started_here:
                ray.shutdown()

    def _init(self, ray) -> None:
        if self.cfg.ray_address:
            ray.init(address=self.cfg.ray_address, log_to_driver=False)
        else:
            units = self.cfg.workers or 1
            ray.init(resources={RESOURCE: units}, include_dashboard=False, log_to_driver=False)

    def _slots(self, ray) -> list[Slot]:
        total = ray.cluster_resources()
        if self.cfg.device == "cuda":
            count = self.cfg.workers or int(total.get("GPU", 0))
            return [Slot(f"gpu{i}", {"num_gpus": 1, "num_cpus": 1}) for i in range(count)]
        if total.get(RESOURCE):
            count = self.cfg.workers or int(total[RESOURCE])
            return [Slot(f"r{i}", {"resources": {RESOURCE: 1}, "num_cpus": 0}) for i in range(count)]
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        return [Slot(f"node{i}", {"num_cpus": 0}, node) for i, node in enumerate(nodes)]

    def _start_all(self, ray, slots: list[Slot], wait_s: float | None = None) -> list[Actor]:
        """Actors for ``slots``, all created before any is waited on: they start up together."""
        handles = [self._launch(slot) for slot in slots]
        wheres = ray.get([h.where.remote() for h in handles], timeout=wait_s)
        return [Actor(slot, h, where) for slot, h, where in zip(slots, handles, wheres)]

    def _launch(self, slot: Slot) -> Any:
        options = dict(slot.options)
        if slot.node:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(slot.node, soft=False)
        return self.remote_cls.options(**options).remote(self.cfg, self.peaks)

    def _feed(self, a: Actor, schedule: Schedule) -> None:
        if a.point is None and schedule:
            held = a.where.get("held_n")
            a.point = schedule.next_for(a.slot.name, held)
            a.where["held_n"] = a.point.n
            a.ref, a.started = a.handle.measure.remote(a.point), time.monotonic()
            self.progress.start(a.slot.name, a.point)

    def _check(self, ray, a: Actor, ready: list, on_row: OnRow, schedule: Schedule) -> list[Actor]:
        """``[a]`` while it lives, ``[replacement]`` or ``[]`` after its death or a kill."""
        if a.ref is None:
            return [a]
        if any(r == a.ref for r in ready):
            try:
                row = ray.get(a.ref)
            except ray.exceptions.RayActorError as exc:
                if _node_alive(ray, a.where.get("ray_node_id")):
                    self._fail(a, "crashed", f"Ray worker died: {_first_line(exc)}", on_row, schedule)
                else:                                    # its node was lost: measured elsewhere
                    schedule.forget(a.slot.name)
                    schedule.requeue(a.point)
                    self.progress.stop(a.slot.name)
                    a.point = a.ref = None
                return self._replace(ray, a)
            p, a.point, a.ref = a.point, None, None
            self.progress.stop(a.slot.name)
            on_row(p, row)
            return [a]
        limit = self._over_limit(ray, a)
        if limit:
            ray.kill(a.handle)
            self._fail(a, "timeout", limit, on_row, schedule)
            return self._replace(ray, a)
        return [a]

    def _over_limit(self, ray, a: Actor) -> str | None:
        elapsed = time.monotonic() - a.started
        if elapsed > self.cfg.point_timeout_s:
            return f"the point still running after the {self.cfg.point_timeout_s:g} s --point-timeout: its worker was killed"
        timeout = self.cfg.timing.timeout_s
        if elapsed > timeout:
            try:
                call_start = ray.get(a.handle.call_started.remote(), timeout=10)
            except Exception:
                return None
            if call_start and time.time() - call_start > timeout:
                return f"one call still running after the {timeout:g} s --timeout: its worker was killed"
        return None

    def _fail(self, a: Actor, status: str, message: str, on_row: OnRow, schedule: Schedule) -> None:
        p, a.point, a.ref = a.point, None, None
        schedule.forget(a.slot.name)
        self.progress.stop(a.slot.name)
        where = {k: v for k, v in a.where.items() if k != "held_n"}
        on_row(p, failure_row(self.cfg, p, status, message, where))

    def _replace(self, ray, a: Actor) -> list[Actor]:
        if a.slot.node and not _node_alive(ray, a.slot.node):
            return []
        if not a.slot.node and not _node_alive(ray, a.where.get("ray_node_id")):
            return []               # the cluster is smaller now: one actor fewer
        try:
            return self._start_all(ray, [a.slot], wait_s=120)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return []               # its node or its resource is gone: the others go on


def _node_alive(ray, node_id: str | None) -> bool:
    return any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
