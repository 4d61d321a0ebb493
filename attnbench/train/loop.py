"""Train one (task, method, m, n) point into a ``kind: "train"`` row, and a run of such points.

Every point builds its model from ``seed`` (torch.manual_seed before construction), draws its
training batches from a generator seeded by (seed, task) and is scored on a held-out set from its
own seed, so a point's row is the same on every rerun on CPU.
"""
from __future__ import annotations

import datetime as _dt
import math
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from attnbench import registry, rows
from attnbench.measure.env import collect_env, device_label
from attnbench.measure.memory import peak_memory
from attnbench.spec import is_oom, one_line
from attnbench.train.model import Encoder, ModelSettings
from attnbench.train.tasks import IGNORE, TASKS, Task, chance

from attnbench.train.settings import DEFAULT_M, DEFAULT_STEPS, default_workers
HELD_OUT = {"recall": 256, "listops": 512, "grid": 512, "pathfinder": 512}
_TASK_SEED = {"recall": 11, "listops": 12, "grid": 13, "pathfinder": 14}
_HELD_OUT_SEED = 1_000_003


@dataclass(frozen=True)
class TrainPoint:
    task: str
    method: str
    params: dict[str, Any]
    m: int | None
    n: int


@dataclass(frozen=True)
class TrainConfig:
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    ns: dict[str, tuple[int, ...]]              # per task
    ms: tuple[int, ...] = (DEFAULT_M,)
    steps: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_STEPS))
    model: ModelSettings = ModelSettings()
    seed: int = 0
    device: str = "cpu"
    out: Path = Path("results/train")
    eval_every: int = 0                         # also score the held-out set every this many steps (0: only at the end)


def points(cfg: TrainConfig) -> list[TrainPoint]:
    """Every (task, n, method, m): budgeted methods once per m."""
    out = []
    for task in cfg.tasks:
        for n in cfg.ns[task]:
            for name in cfg.methods:
                info = registry.get_info(name)
                params = {k: v for k, v in info.defaults.items() if k != info.budget}
                for m in (cfg.ms if info.budget else (None,)):
                    out.append(TrainPoint(task, name, params, m, n))
    return out


def base_row(cfg: TrainConfig, p: TrainPoint) -> dict[str, Any]:
    """The row's identity and settings, every outcome null."""
    info = registry.get_info(p.method)
    task = TASKS[p.task]
    grid = task.grid(p.n)
    return {
        **rows.blank_row("train"), "task": p.task, "method": p.method, "family": info.family, "params": p.params,
        "m": p.m, "n": p.n, "batch": batch_size(cfg.model, p.n),
        "train_cfg": {**cfg.model.as_dict(), "held_out": HELD_OUT[p.task]},
        "steps": cfg.steps[p.task], "seed": cfg.seed, "device": cfg.device, "device_name": device_label(cfg.device),
        "dtype": "float32", "mode": "train",
        "grid": list(grid) if grid else ("near-square factorisation of N" if info.needs_grid else None),
    }


def batch_size(s: ModelSettings, n: int) -> int:
    """Sequences per step: ``s.batch``, else ``s.tokens // n`` (the same tokens per step at every n)."""
    return s.batch or max(1, s.tokens // n)


def held_out(task: Task, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng([seed, _HELD_OUT_SEED, _TASK_SEED[task.name], n])
    return task.batch(n, HELD_OUT[task.name], rng)


def loss_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE)


@torch.no_grad()
def accuracy(model: Encoder, x: torch.Tensor, y: torch.Tensor, grid, device: str, chunk: int = 128) -> float:
    """Share of labelled positions (recall: queries; else sequences) predicted right."""
    model.eval()
    right = total = 0
    for i in range(0, len(x), chunk):
        yy = y[i:i + chunk].to(device)
        pred = model(x[i:i + chunk].to(device), grid).argmax(-1)
        mask = yy != IGNORE
        right += int((pred[mask] == yy[mask]).sum())
        total += int(mask.sum())
    model.train()
    return right / total


def lr_at(step: int, steps: int, s: ModelSettings) -> float:
    """Linear warm-up over ``s.warmup`` steps, then cosine from lr down to 0.1 lr."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = (step - s.warmup) / max(1, steps - s.warmup)
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def build_model(cfg: TrainConfig, p: TrainPoint) -> Encoder:
    task = TASKS[p.task]
    torch.manual_seed(cfg.seed)
    return Encoder(p.method, p.params, p.m, cfg.model, task.vocab(p.n), p.n, task.classes(p.n),
                   task.per_token).to(cfg.device)


def train_point(cfg: TrainConfig, p: TrainPoint, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train and score one point; every failure becomes the row's status and message."""
    row = base_row(cfg, p)
    t0 = time.perf_counter()
    try:
        row.update(_train(cfg, p, row, echo))
    except Exception as exc:  # a method that cannot train is a row with its reason, not the end of the run
        row.update(status="oom" if is_oom(exc) else "error", message=one_line(exc))
    row["wall_s"] = time.perf_counter() - t0
    return row


def _train(cfg: TrainConfig, p: TrainPoint, row: dict[str, Any], echo) -> dict[str, Any]:
    task, s, steps = TASKS[p.task], cfg.model, cfg.steps[p.task]
    grid = task.grid(p.n)
    model = build_model(cfg, p)
    head_dim = s.width // s.heads
    reason = model.blocks[0].attn.unsupported_reason(cfg.device, "float32", p.n, head_dim)
    if reason:
        return {"status": "unsupported", "message": reason}
    hx, hy = held_out(task, p.n, cfg.seed)
    with torch.no_grad():                                     # parameters a method makes on its first call
        model(hx[:2].to(cfg.device), grid)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    rng = np.random.default_rng([cfg.seed, _TASK_SEED[p.task], p.n])
    times, losses, curve, memory = [], [], [], {}
    for step in range(steps):
        x, y = (t.to(cfg.device) for t in task.batch(p.n, row["batch"], rng))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, s)

        def one_step():
            opt.zero_grad(set_to_none=True)
            loss = loss_of(model(x, grid), y)
            loss.backward()
            opt.step()
            return loss.detach()

        if step == 1:                                         # measured, and left out of the step times
            holder: list[torch.Tensor] = []
            memory = peak_memory(lambda: holder.append(one_step()), cfg.device)
            loss = holder[0]
        else:
            _sync(cfg.device)
            start = time.perf_counter()
            loss = one_step()
            _sync(cfg.device)
            times.append(time.perf_counter() - start)
        value = float(loss)
        if not math.isfinite(value):
            return {"status": "error", "message": f"training loss became {value} at step {step}",
                    "steps_done": step + 1, "final_loss": None, **memory}
        losses.append(value)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < steps:
            curve.append([step + 1, accuracy(model, hx, hy, grid, cfg.device)])
    no_grad = [k for k, t in model.attention_parameters() if t.grad is None or not bool(t.grad.any())]
    acc = accuracy(model, hx, hy, grid, cfg.device)
    tail = losses[-max(1, min(20, len(losses) // 10)):]
    return {
        "status": "ok", "message": ("no task-loss gradient reaches the attention's own parameters "
                                    + ", ".join(sorted({k.split(".")[-1] for k in no_grad}))) if no_grad else None,
        "accuracy": acc, "chance": chance(task, p.n, hy),
        "final_loss": statistics.fmean(tail), "steps_done": steps,
        "step_ms": 1e3 * statistics.median(times) if times else None,
        "accuracy_curve": curve + [[steps, acc]],
        "param_count": sum(t.numel() for t in model.parameters()),
        "timing": {"step_ms": "median over the training steps of one step (forward, backward, AdamW step), "
                              "wall clock" + (", CUDA synchronised" if cfg.device == "cuda" else ""),
                   "steps_timed": len(times), "threads": torch.get_num_threads()},
        **memory,
    }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def record_invocation(cfg: TrainConfig, argv: list[str]) -> dict[str, Any]:
    """Append the command to OUT/runs.jsonl; returns the run_id and env every row carries."""
    from attnbench.results import RowWriter

    env = collect_env(cfg.device, cfg.seed)
    run_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    RowWriter(cfg.out / "runs.jsonl").append({"run_id": run_id, "argv": argv, "env": env,
                                              "timestamp": env["timestamp"]})
    return {"run_id": run_id, "env": env}


def run_train(cfg: TrainConfig, argv: list[str] | None = None, echo: Callable[[str], None] | None = None,
              executor: str = "inline", workers: int | None = None, plugins: tuple[str, ...] = (),
              ray_address: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """Train every point whose row is not already in OUT/rows.jsonl: in this process
    (``inline``), in ``workers`` spawned processes at once (``process``, default
    ``settings.default_workers``; a worker that
    dies makes its point an ``error`` row and the pool is restarted for the rest) or in Ray actors
    (``ray``: attnbench.train.ray_exec, on the cluster at ``ray_address`` or a local instance of
    ``workers`` slots). Only this process appends rows, each as it comes; returns the rows
    written and how many points were skipped as done."""
    from attnbench.results import FolderLock, RowWriter, measured_keys

    with FolderLock(cfg.out):
        done, every = measured_keys(cfg.out), points(cfg)
        todo = [p for p in every if rows.identity(base_row(cfg, p)) not in done]
        stamp = record_invocation(cfg, argv if argv is not None else sys.argv) if todo else {}
        writer, written = RowWriter(cfg.out / "rows.jsonl"), []

        def keep(row: dict[str, Any]) -> None:
            row.update(stamp, executor=executor, timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            writer.append(row)
            written.append(row)
            if echo is not None:
                echo(summary_line(row))

        if executor == "process" and todo:
            _run_in_processes(cfg, todo, workers or default_workers(cfg.device, torch.get_num_threads()), keep, plugins)
        elif executor == "ray" and todo:
            from attnbench.train.ray_exec import run_in_ray

            run_in_ray(train_point, cfg, todo, keep, lambda p, why: lost_row(cfg, p, why), workers, plugins,
                       ray_address, torch.get_num_threads())
        else:
            for p in todo:
                keep(train_point(cfg, p))
    return written, len(every) - len(todo)


def _worker_init(threads: int, plugins: tuple[str, ...]) -> None:
    """A spawned worker: the parent's torch threads and the methods its plugins registered."""
    torch.set_num_threads(threads)
    for spec in plugins:
        registry.load_plugin(spec)


def _spawn_pool(workers: int, plugins: tuple[str, ...]):
    """A pool of ``workers`` spawned processes, each with this process's torch threads and plugins."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(torch.get_num_threads(), plugins))


def _run_in_processes(cfg: TrainConfig, todo: list[TrainPoint], workers: int,
                      keep: Callable[[dict[str, Any]], None], plugins: tuple[str, ...] = ()) -> None:
    """Train ``todo`` in ``workers`` spawned processes, each with this process's torch threads."""
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    left = list(todo)
    while left:
        pool = _spawn_pool(workers, plugins)
        running: dict[Any, TrainPoint] = {}
        suspects: list[TrainPoint] = []
        try:
            while (left or running) and not suspects:
                broken = False
                while left and len(running) < workers:
                    try:
                        running[pool.submit(train_point, cfg, left[0])] = left[0]
                    except BrokenProcessPool:     # a worker died since the last wait: this point never ran
                        broken = True
                        break
                    left.pop(0)
                if broken and not running:        # nothing left to wait for: the next point runs alone
                    suspects.append(left.pop(0))
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    p = running.pop(fut)
                    try:
                        keep(fut.result())
                    except BrokenProcessPool:
                        suspects.append(p)
            suspects += running.values()       # a pool cannot say which worker died: every point it ran
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        for p in suspects:                     # each alone, where a point that kills its worker is its own row
            keep(_one_in_fresh_process(cfg, p, plugins))


def _one_in_fresh_process(cfg: TrainConfig, p: TrainPoint, plugins: tuple[str, ...] = ()) -> dict[str, Any]:
    """One point in its own spawned process; its death is the point's ``error`` row."""
    from concurrent.futures.process import BrokenProcessPool

    with _spawn_pool(1, plugins) as pool:
        try:
            return pool.submit(train_point, cfg, p).result()
        except BrokenProcessPool:
            return lost_row(cfg, p, "the worker process died while training this point")


def lost_row(cfg: TrainConfig, p: TrainPoint, message: str) -> dict[str, Any]:
    """The ``error`` row of a point whose worker died."""
    return {**base_row(cfg, p), "status": "error", "message": message}


def summary_line(row: dict[str, Any]) -> str:
    head = f"{row['task']} n={row['n']} {row['method']}" + (f" m={row['m']}" if row["m"] is not None else "")
    if row["status"] != "ok":
        return f"{head}: {row['status']}: {row['message']}"
    return (f"{head}: accuracy {row['accuracy']:.3f} (chance {row['chance']:.3f}), loss {row['final_loss']:.3f}, "
            f"step {row['step_ms']:.1f} ms, {row['wall_s']:.0f} s")
