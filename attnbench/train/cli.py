"""Option handling of ``bench.py train``; attnbench/cli.py holds only the click registration.
Every problem raises ``bad`` (one line, exit status 2)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import click

from attnbench.train.settings import DEFAULT_M, DEFAULT_N, DEFAULT_STEPS, DEFAULT_TASKS, TASK_NAMES, ModelSettings

# In the CPU default sweep, but its forward is the eager `anchor` (it compiles only the timed
# closure of a sweep point): training it would repeat `anchor` under another name.
NOT_TRAINED_BY_DEFAULT = ("anchor-compiled",)
TRAIN_EXECUTORS = ("inline", "process", "ray")


def default_methods(device: str) -> tuple[str, ...]:
    """The default sweep's methods on ``device`` (compiled FlexAttention members are left out on CPU)."""
    from attnbench import registry

    return tuple(m["name"] for m in registry.list_methods(device)
                 if m["available"] and m["default_sweep"] and m["name"] not in NOT_TRAINED_BY_DEFAULT)


def _tasks(bad, spec: str | None) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(s.strip() for s in (spec or ",".join(DEFAULT_TASKS)).split(",") if s.strip()))
    unknown = [t for t in names if t not in TASK_NAMES]
    if not names or unknown:
        raise bad(f"unknown --task {spec!r}; use {', '.join(TASK_NAMES)} (comma list allowed)")
    return names


def _methods(bad, spec: str | None, device: str) -> tuple[str, ...]:
    """Named methods are parsed as on every command (``options.resolve_methods``, one line on bad
    names); the default is the default sweep's, less what ``NOT_TRAINED_BY_DEFAULT`` leaves out."""
    if spec is None:
        return default_methods(device)
    from attnbench.options import resolve_methods

    return resolve_methods(spec, device)


def _ns(bad, spec: str | None, tasks: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    from attnbench.spec import SpecError, parse_n_spec
    from attnbench.train.tasks import TASKS

    try:
        given = parse_n_spec(spec) if spec is not None else None
    except SpecError as exc:
        raise bad(str(exc)) from None
    out = {t: tuple(given) if given else DEFAULT_N[t] for t in tasks}
    for t, ns in out.items():
        for n in ns:
            problem = TASKS[t].n_problem(n)
            if problem:
                raise bad(f"--n {n}: {problem}")
    return out


def _positive(bad, **values: float | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise bad(f"--{name.replace('_', '-')} must be positive, got {value}")


def run_train_cmd(bad: Callable[[str], Exception], task, methods, n_spec, m_spec, steps, layers, width, heads,
                  batch, lr, seed, threads, device, eval_every, out, executor="process", workers=None,
                  plugins: tuple[str, ...] = (), ray_address: str | None = None) -> None:
    """Check the options, train every point not yet in OUT, one line each, then where the rows went."""
    import torch

    from attnbench import registry
    from attnbench.spec import SpecError, parse_m_spec
    from attnbench.train.loop import TrainConfig, run_train
    from attnbench.train.ray_exec import RayRunError

    _positive(bad, steps=steps, layers=layers, width=width, heads=heads, batch=batch, lr=lr, threads=threads,
              workers=workers)
    if executor not in TRAIN_EXECUTORS:
        raise bad(f"unknown --executor {executor!r} for train; use {', '.join(TRAIN_EXECUTORS)}")
    if workers is not None and executor == "inline":
        raise bad("--workers needs --executor process or ray")
    if ray_address and executor != "ray":
        raise bad("--ray-address needs --executor ray")
    if executor == "ray":
        _need_ray(bad)
    if eval_every is not None and eval_every < 0:
        raise bad(f"--eval-every must be 0 or positive, got {eval_every}")
    if width % heads:
        raise bad(f"--width {width} is not a multiple of --heads {heads}")
    tasks = _tasks(bad, task)
    names = _methods(bad, methods, device)
    ns = _ns(bad, n_spec, tasks)
    try:
        ms = tuple(parse_m_spec(m_spec)) or (DEFAULT_M,)
    except SpecError as exc:
        raise bad(str(exc)) from None
    smallest = min(min(v) for v in ns.values())
    if any(registry.get_info(x).budget for x in names) and max(ms) > smallest:
        raise bad(f"--m {max(ms)} is larger than n = {smallest}: a budget must be at most the token count")
    cfg = TrainConfig(tasks=tasks, methods=names, ns=ns, ms=ms,
                      steps={t: steps or DEFAULT_STEPS[t] for t in tasks},
                      model=ModelSettings(layers=layers, width=width, heads=heads, batch=batch, lr=lr),
                      seed=seed, device=device, out=Path(out or "results/train"), eval_every=eval_every or 0)
    torch.set_num_threads(threads)
    try:
        written, skipped = run_train(cfg, argv=["bench.py"] + sys.argv[1:], echo=click.echo, executor=executor,
                                     workers=workers, plugins=plugins, ray_address=ray_address)
    except RayRunError as exc:
        click.echo(f"error: {exc}; the rows trained so far are in {cfg.out / 'rows.jsonl'}", err=True)
        raise click.exceptions.Exit(1) from None
    if skipped:
        click.echo(f"{skipped} point(s) already in {cfg.out / 'rows.jsonl'} were skipped (resume)")
    click.echo(f"{len(written)} train rows written to {cfg.out / 'rows.jsonl'}; "
               f"`bench.py report --run {cfg.out}` writes their report")


def _need_ray(bad) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        from attnbench.train.ray_exec import INSTALL_HINT

        raise bad(INSTALL_HINT) from None


def train_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The click options of ``bench.py train``."""
    d = ModelSettings()
    steps = ", ".join(f"{t} {s}" for t, s in DEFAULT_STEPS.items())
    opts = [
        click.option("--task", default=None,
                     help=f"Tasks, comma list of {', '.join(TASK_NAMES)} (default: {','.join(DEFAULT_TASKS)})."),
        click.option("--methods", default=None, help="Registered methods (default: the default sweep's, "
                     "compiled ones left out on CPU)."),
        click.option("--n", "n_spec", default=None,
                     help="Token counts (default per task: recall 64,128; listops 64,256; grid and pathfinder 8x8, 16x16)."),
        click.option("--m", "m_spec", default=None, help=f"Budgets of budgeted methods (default {DEFAULT_M})."),
        click.option("--steps", default=None, type=int, help=f"Training steps (default per task: {steps})."),
        click.option("--layers", default=d.layers, show_default=True, type=int),
        click.option("--width", default=d.width, show_default=True, type=int),
        click.option("--heads", default=d.heads, show_default=True, type=int),
        click.option("--batch", default=None, type=int, help=f"Sequences per step (default {d.tokens} // n)."),
        click.option("--lr", default=d.lr, show_default=True, type=float, help="AdamW peak learning rate."),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--threads", default=1, show_default=True, type=int, help="torch CPU threads (of each worker)."),
        click.option("--device", default="cpu", show_default=True, help="cpu or cuda."),
        click.option("--eval-every", default=None, type=int, help="Also score the held-out set every S steps."),
        click.option("--out", default=None, help="Run folder (default results/train); rerun to resume."),
        click.option("--executor", default="process", show_default=True, help="process (--workers spawned processes "
                     "train points at once, each with --threads threads), inline (this process) or ray "
                     "(Ray actors, one GPU each on CUDA; see docs/train.md)."),
        click.option("--workers", default=None, type=int, help="Processes of --executor process (default: on CPU the "
                     "cores // --threads, at most 8; on CUDA 1); "
                     "actors of --executor ray (default: a local instance of 2, or as many as the cluster holds)."),
        click.option("--ray-address", default=None, help="Ray cluster to join (default: start a local one)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn
