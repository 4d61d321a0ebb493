"""``bench.py train --executor ray``: points trained by Ray actors, the driver alone writes rows.

Each actor sets the driver's torch thread count and loads the run's plugins once, then trains
points one at a time with the function it is given (``loop.train_point``, the one ``inline`` calls,
so on CPU its rows are the inline rows). This module sits below ``attnbench.train.loop``, which
calls it: it is handed that function and the row of a lost point, it imports neither. Where an
actor runs:

* CUDA: each actor holds one GPU (``num_gpus=1``; Ray sets its ``CUDA_VISIBLE_DEVICES``);
* CPU, on a cluster with the sweep's custom resource ``attnbench_timing``: one unit per actor
  (``num_cpus=0``), so a node started with ``--resources '{"attnbench_timing": 1}'`` trains one
  point at a time and its step times are not shared with another timed worker;
* CPU, on a cluster without it: ``num_cpus`` = the torch threads of each actor.

Without ``--ray-address`` a local instance is started with ``--workers`` units of
``attnbench_timing`` (default 2). An actor that dies makes its point an ``error`` row and is
replaced; the other points go on.
"""
from __future__ import annotations

from typing import Any, Callable

from attnbench.run.ray_exec import RESOURCE

Row = dict[str, Any]


class RayRunError(RuntimeError):
    """Ray could not be started or has no room for a worker: one line for the user."""

INSTALL_HINT = "--executor ray needs Ray: pip install -e \".[ray]\""
DIED = "the Ray worker died while training this point"
LOCAL_WORKERS = 2


class TrainActor:
    """Trains points in a Ray worker process (made a Ray actor class in ``run_in_ray``)."""

    def __init__(self, threads: int, plugins: tuple[str, ...]) -> None:
        import torch

        from attnbench import registry

        torch.set_num_threads(threads)
        for spec in plugins:
            registry.load_plugin(spec)

    def ready(self) -> bool:
        return True

    def train(self, fn: Callable[[Any, Any], Row], cfg: Any, p: Any) -> Row:
        return fn(cfg, p)


def run_in_ray(fn: Callable[[Any, Any], Row], cfg: Any, todo: list, keep: Callable[[Row], None],
               lost: Callable[[Any, str], Row], workers: int | None = None, plugins: tuple[str, ...] = (),
               address: str | None = None, threads: int = 1) -> None:
    """``keep(fn(cfg, p))`` for every point of ``todo``, ``fn`` run in Ray actors and ``keep`` in
    this process as each row comes; a point whose actor died is ``keep(lost(p, message))``."""
    try:
        import ray
    except ImportError:
        raise RayRunError(INSTALL_HINT) from None
    if not todo:
        return
    started_here = not ray.is_initialized()
    if started_here:
        try:
            _init(ray, address, workers)
        except Exception as exc:  # an address with no cluster behind it, a local start that failed
            raise RayRunError(f"could not {'join Ray at ' + address if address else 'start Ray'}: "
                              f"{_first_line(exc)}") from None
    live: list = []                                   # every actor started, killed at the end
    try:
        remote_cls = ray.remote(max_restarts=0)(TrainActor)
        total = ray.cluster_resources()
        options = _actor_options(total, cfg.device, threads)
        count = min(len(todo), _slots(total, cfg.device, threads, workers))
        if count < 1:
            raise RayRunError(f"the Ray cluster has no room for a training worker ({_need(options)} each)")

        def start():
            live.append(remote_cls.options(**options).remote(threads, plugins))
            return live[-1]

        actors = [start() for _ in range(count)]
        try:
            ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayError as exc:
            raise RayRunError(f"the Ray workers did not start: {_first_line(exc)}") from None
        _feed_loop(ray, actors, list(todo), lambda p: (fn, cfg, p), keep, lost, start)
    finally:
        for actor in live:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def _feed_loop(ray, idle: list, left: list, call, keep, lost, start) -> None:
    """Give each idle actor the next point; each finished row to ``keep``; a dead actor's point
    to ``lost`` and the actor replaced while points are left."""
    running: dict[Any, tuple[Any, Any]] = {}          # ref -> (actor, point)
    while left or running:
        while left and idle:
            actor, p = idle.pop(0), left.pop(0)
            running[actor.train.remote(*call(p))] = (actor, p)
        if not running:
            raise RayRunError("no Ray worker left to train the remaining points")
        (ref,), _ = ray.wait(list(running), num_returns=1)
        actor, p = running.pop(ref)
        try:
            row = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            keep(lost(p, f"{DIED} ({_first_line(exc)})"))
            if left:
                idle += _replacement(ray, start)
            continue
        keep(row)
        idle.append(actor)


def _replacement(ray, start) -> list:
    """A fresh actor for a dead one, or none where the cluster no longer has room for it."""
    actor = start()
    try:
        ray.get(actor.ready.remote(), timeout=120)
        return [actor]
    except (ray.exceptions.RayError, TimeoutError):
        return []


def _init(ray, address: str | None, workers: int | None) -> None:
    import logging

    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        units = workers or LOCAL_WORKERS
        ray.init(address="local", resources={RESOURCE: units}, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)


def _actor_options(total: dict[str, float], device: str, threads: int) -> dict[str, Any]:
    if device == "cuda":
        return {"num_gpus": 1, "num_cpus": 0}
    if total.get(RESOURCE):
        return {"resources": {RESOURCE: 1}, "num_cpus": 0}
    return {"num_cpus": threads}


def _slots(total: dict[str, float], device: str, threads: int, workers: int | None) -> int:
    """How many actors the cluster holds at once (at most ``workers`` when given)."""
    if device == "cuda":
        room = int(total.get("GPU", 0))
    elif total.get(RESOURCE):
        room = int(total[RESOURCE])
    else:
        room = int(total.get("CPU", 0)) // max(1, threads)
    return min(room, workers) if workers else room


def _need(options: dict[str, Any]) -> str:
    if "num_gpus" in options:
        return "one GPU"
    if "resources" in options:
        return f"one unit of {RESOURCE}"
    return f"{options['num_cpus']} CPU"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
