"""The ``process`` executor: each point is measured in a spawned worker process.

One worker per device: on CUDA one per visible GPU, pinned with CUDA_VISIBLE_DEVICES; on CPU
one unless ``cfg.workers`` says more. A worker keeps its n's inputs between points. The parent
watches every worker: one that dies (a signal, a non-zero exit) or passes a time limit (one
call over ``cfg.timing.timeout_s``, a point over ``cfg.point_timeout_s``) is killed and
replaced, and its point becomes a ``crashed`` or ``timeout`` row. Only the parent writes rows.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from attnbench.run.common import OnRow, Progress, failure_row, point_label
from attnbench.run.schedule import Schedule
from attnbench.settings import Point, SweepConfig

POLL_S = 0.2


@dataclass(frozen=True)
class Slot:
    """One device a worker is pinned to: its name in progress lines and its environment."""

    name: str
    env: dict[str, str]
    device_index: int | None = None


def device_slots(cfg: SweepConfig) -> list[Slot]:
    """CUDA: one slot per visible GPU (CUDA_VISIBLE_DEVICES honoured); CPU: ``cfg.workers`` slots."""
    if cfg.device == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            import torch

            ids = [str(i) for i in range(torch.cuda.device_count())]
        else:
            ids = [s.strip() for s in visible.split(",") if s.strip()]
        ids = ids[: cfg.workers] if cfg.workers else ids
        return [Slot(f"gpu{i}", {"CUDA_VISIBLE_DEVICES": i}, int(i) if i.isdigit() else None) for i in ids]
    count = cfg.workers or 1
    threads = max(1, (os.cpu_count() or 1) // count)
    return [Slot(f"w{i}", {"ATTNBENCH_WORKER_THREADS": str(threads)} if count > 1 else {}) for i in range(count)]


def worker_main(conn: Connection, cfg: SweepConfig, peaks: dict[str, Any], slot: Slot, watch: Any,
                stderr_path: str) -> None:
    """A worker's life: set up, then measure each point it is sent until it is sent None."""
    _redirect_stderr(stderr_path)
    _die_with_parent()
    if cfg.worker_mem_limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (cfg.worker_mem_limit, cfg.worker_mem_limit))
    from attnbench import registry
    from attnbench.run.runner import PointRunner, worker_fields

    for spec in cfg.plugins:
        registry.load_plugin(spec)
    _set_threads()
    runner = PointRunner(cfg, peaks, worker_fields("process", cfg.device, slot.device_index), watch)
    conn.send(("ready", runner.where))
    while True:
        try:
            p = conn.recv()
        except EOFError:
            p = None
        if p is None:                    # done: skip the interpreter's slow teardown
            _exit_quietly()
        conn.send(("start", point_label(p)))
        conn.send(("row", runner.measure(p)))


def _exit_quietly() -> None:
    """Exit without the interpreter's teardown, after multiprocessing's own exit handler: a
    spawned worker's default start method is spawn, so a lock or pool that compiled code made
    (torch.compile's compile workers) holds a named semaphore, and skipping its finalizer made the
    resource tracker warn of a leaked semaphore at the end of every sweep."""
    from multiprocessing import util

    try:
        util._exit_function()
    except Exception:
        pass
    sys.stderr.flush()
    os._exit(0)


def _redirect_stderr(path: str) -> None:
    import faulthandler

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    faulthandler.enable()            # a fatal signal names itself on the last lines of stderr


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the sweep's process dies (PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _set_threads() -> None:
    threads = os.environ.get("ATTNBENCH_WORKER_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


@dataclass
class Worker:
    """The parent's handle on one worker process."""

    slot: Slot
    proc: Any
    conn: Connection
    watch: Any
    stderr_path: str
    where: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    point: Point | None = None       # sent, not yet finished
    started: float | None = None     # when the worker began the point
    held_n: int | None = None


class ProcessPool:
    """Spawned workers, one per slot, fed points by a Schedule; rows go to ``on_row``."""

    def __init__(self, cfg: SweepConfig, peaks: dict[str, Any], progress: Progress) -> None:
        self.cfg, self.peaks, self.progress = cfg, peaks, progress
        self.ctx = mp.get_context("spawn")
        self.tmp = tempfile.TemporaryDirectory(prefix="attnbench-workers-")
        self.started = 0

    def run(self, todo: list[Point], on_row: OnRow) -> None:
        schedule = Schedule(todo)
        workers = [self._spawn(slot) for slot in device_slots(self.cfg)[: len(todo)]]
        try:
            while schedule or any(w.point for w in workers):
                for w in workers:
                    self._feed(w, schedule)
                self._wait(workers)
                for i, w in enumerate(workers):
                    if self._check(w, on_row, schedule):
                        workers[i] = self._spawn(w.slot)
        finally:
            self._stop_all(workers)
            self.tmp.cleanup()

    def _spawn(self, slot: Slot) -> Worker:
        parent_end, child_end = self.ctx.Pipe()
        watch = self.ctx.Value("d", 0.0, lock=False)
        self.started += 1
        stderr_path = str(Path(self.tmp.name) / f"{slot.name}-{self.started}.stderr")
        saved = {k: os.environ.get(k) for k in slot.env}
        os.environ.update(slot.env)             # the child's environment is copied at start
        try:
            proc = self.ctx.Process(target=worker_main, args=(child_end, self.cfg, self.peaks, slot, watch,
                                                              stderr_path), daemon=True)
            proc.start()
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        child_end.close()
        return Worker(slot, proc, parent_end, watch, stderr_path)

    def _feed(self, w: Worker, schedule: Schedule) -> None:
        if w.point is None and schedule:
            p = schedule.next_for(w.slot.name, w.held_n)
            try:
                w.conn.send(p)
            except OSError:                # it died between points: _check replaces it
                schedule.requeue(p)
                return
            w.point, w.held_n, w.started = p, p.n, None

    def _wait(self, workers: list[Worker]) -> None:
        wait([w.conn for w in workers] + [w.proc.sentinel for w in workers], timeout=POLL_S)

    def _check(self, w: Worker, on_row: OnRow, schedule: Schedule) -> bool:
        """Handle what ``w`` said; True when it must be replaced (died, or killed at a limit)."""
        try:
            while w.conn.poll():
                self._message(w, w.conn.recv(), on_row)
        except (EOFError, OSError):
            pass
        if not w.proc.is_alive():
            return self._died(w, on_row, schedule)
        limit = self._over_limit(w)
        if limit:
            self._kill(w)
            self._fail(w, "timeout", limit, on_row, schedule)
            return True
        return False

    def _message(self, w: Worker, msg: tuple[str, Any], on_row: OnRow) -> None:
        kind, value = msg
        if kind == "ready":
            w.ready, w.where = True, value
        elif kind == "start":
            w.started = time.monotonic()
            self.progress.start(w.slot.name, w.point)
        elif kind == "row":
            p, w.point, w.started = w.point, None, None
            self.progress.stop(w.slot.name)
            on_row(p, value)

    def _over_limit(self, w: Worker) -> str | None:
        call_start = w.watch.value
        timing = self.cfg.timing
        if call_start and time.time() - call_start > timing.timeout_s:
            return (f"one call still running after the {timing.timeout_s:g} s --timeout: "
                    f"its worker was killed")
        if w.started is not None and time.monotonic() - w.started > self.cfg.point_timeout_s:
            return (f"the point still running after the {self.cfg.point_timeout_s:g} s --point-timeout: "
                    f"its worker was killed")
        return None

    def _died(self, w: Worker, on_row: OnRow, schedule: Schedule) -> bool:
        w.proc.join()
        if not w.ready:
            raise WorkerStartError(f"a worker process failed to start ({_exit_text(w.proc.exitcode)}): "
                                   f"{last_line(w.stderr_path) or 'no output'}")
        if w.point is not None:
            message = f"worker process died ({_exit_text(w.proc.exitcode)})"
            tail = last_line(w.stderr_path)
            self._fail(w, "crashed", message + (f"; last stderr line: {tail}" if tail else ""), on_row, schedule)
        return True

    def _fail(self, w: Worker, status: str, message: str, on_row: OnRow, schedule: Schedule) -> None:
        where = {**w.where, "worker_pid": w.where.get("worker_pid") or w.proc.pid}
        p, w.point = w.point, None
        schedule.forget(w.slot.name)
        self.progress.stop(w.slot.name)
        on_row(p, failure_row(self.cfg, p, status, message, where))

    def _kill(self, w: Worker) -> None:
        w.proc.kill()
        w.proc.join()

    def _stop_all(self, workers: list[Worker], grace_s: float = 10.0) -> None:
        """Tell every worker to exit, wait for them together, kill the ones still alive."""
        for w in workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + grace_s
        for w in workers:
            w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                self._kill(w)
            w.conn.close()


class WorkerStartError(RuntimeError):
    """A worker died before it was ready: nothing could be measured."""


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"signal {-code}, {name}"
    return f"exit code {code}"


def last_line(path: str) -> str:
    """The last non-empty line of a worker's stderr file ('' if none); Python's own report of a
    fatal signal ("Fatal Python error: ...") is preferred to the lines faulthandler adds after it."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    fatal = [ln for ln in lines if ln.startswith("Fatal Python error")]
    return (fatal or lines or [""])[-1][:300]
