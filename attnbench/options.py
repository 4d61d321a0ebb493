"""The command line's option groups, each declared once as a click decorator, and their
conversion into the frozen settings of attnbench.settings (bad values: ``BadInput``, one line,
exit status 2). Nothing here imports torch: ``--help`` stays fast; what needs torch (the
registry, CUDA) is imported when a command runs.

A command takes a group by stacking its decorator::

    @cli.command("mine")
    @shape_options
    @methods_option()
    def mine_cmd(device, dtype, batch, heads, head_dim, methods_spec): ...
"""
from __future__ import annotations

import functools
import inspect
import math
import os
from typing import Any, Callable

import click

from attnbench.settings import (DEVICES, DTYPE_NAMES, EXECUTORS, FIT_MODES, MODES, SEED_MAX, Execution,
                                FitSettings, Inputs, Shape, default_dtype)

_SHAPE, _INPUTS, _EXEC = Shape(), Inputs(), Execution()
CLI_MIN_RUN_TIME_S = 0.2     # equal to TimingConfig's defaults (tests/test_settings.py compares them)
CLI_TIMEOUT_S = 120.0


class BadInput(click.ClickException):
    """Reported as one line and exit status 2."""

    exit_code = 2


def _stack(fn: Callable, options: list[Callable]) -> Callable:
    for option in reversed(options):
        fn = option(fn)
    return fn


def plugins_of_context() -> tuple[str, ...]:
    """The --plugin values of the running command (for work done in a fresh process)."""
    return click.get_current_context().meta.get("attnbench.plugins", ())


def plugin_option(fn: Callable) -> Callable:
    """``--plugin FILE_OR_MODULE`` (repeatable): import user code registering more methods."""

    def load(ctx, param, values):
        if values:
            from attnbench import registry

            for spec in values:
                if os.path.isdir(spec):
                    raise BadInput(f"--plugin {spec!r} is a folder; give a .py file or a dotted module name")
                try:
                    registry.load_plugin(spec)
                except registry.PluginError as exc:
                    raise BadInput(str(exc)) from None
        ctx.meta["attnbench.plugins"] = tuple(values or ())
        return values

    return click.option("--plugin", "plugins", multiple=True, callback=load, expose_value=False,
                        is_eager=True, metavar="FILE_OR_MODULE",
                        help="Import user code that registers methods (repeatable).")(fn)


def device_option(default: str | None = None) -> Callable:
    """``--device cpu|cuda``; None: the best present (resolved when the command runs)."""
    text = "Device (default: best present)." if default is None else "Device."
    return click.option("--device", default=default, show_default=default is not None,
                        type=click.Choice(DEVICES), help=text)


def dtype_option(fn: Callable) -> Callable:
    return click.option("--dtype", default=None, type=click.Choice(DTYPE_NAMES),
                        help="Default float32 on CPU, bfloat16 on CUDA.")(fn)


def mode_option(fn: Callable) -> Callable:
    return click.option("--mode", default="fwd", show_default=True, type=click.Choice(MODES),
                        help="Forward, or forward plus backward.")(fn)


def shape_options(fn: Callable) -> Callable:
    """--device, --dtype, --batch, --heads, --head-dim (attnbench.settings.Shape)."""
    return _stack(fn, [
        device_option(), dtype_option,
        click.option("--batch", default=_SHAPE.batch, show_default=True, type=int),
        click.option("--heads", default=_SHAPE.heads, show_default=True, type=int),
        click.option("--head-dim", default=_SHAPE.head_dim, show_default=True, type=int),
    ])


def fit_budget_options(fn: Callable) -> Callable:
    """--fit-iters, --fit-steps, --fit-lr (attnbench.settings.FitSettings)."""
    fit = FitSettings()
    return _stack(fn, [
        click.option("--fit-iters", default=fit.fit_iters, show_default=True, type=int,
                     help="closed: fixed-point iterations."),
        click.option("--fit-steps", default=fit.fit_steps, show_default=True, type=int, help="distill: Adam steps."),
        click.option("--fit-lr", default=fit.fit_lr, show_default=True, type=float,
                     help="distill: Adam learning rate."),
    ])


def inputs_options(fn: Callable) -> Callable:
    """--workload, --seed, --fit and its budgets (attnbench.settings.Inputs)."""
    return _stack(fn, [
        click.option("--workload", default=_INPUTS.workload, show_default=True,
                     help="gaussian, image, or file:PATH (q, k, v captured from a model)."),
        click.option("--seed", default=_INPUTS.seed, show_default=True, type=int),
        click.option("--fit", default=_INPUTS.fit, show_default=True, type=click.Choice(FIT_MODES),
                     help="Learnable state before measuring: none, closed (fixed point) or distill (Adam), "
                          "on the workload's fitting split."),
        fit_budget_options,
    ])


def timing_options(fn: Callable) -> Callable:
    """--min-run-time, --timeout, --no-flops, --cuda-graphs (attnbench.measure.timing.TimingConfig)."""
    return _stack(fn, [
        click.option("--min-run-time", default=CLI_MIN_RUN_TIME_S, show_default=True, type=float,
                     help="CPU timing budget per row, seconds of measured calls."),
        click.option("--timeout", "timeout_s", default=CLI_TIMEOUT_S, show_default=True, type=float,
                     help="Seconds one call may take; a longer call gives a timeout row (process/ray: it is killed)."),
        click.option("--no-flops", is_flag=True, help="Skip the fvcore and FlopCounterMode counts."),
        click.option("--cuda-graphs", is_flag=True, help="Time replays of the call captured in a CUDA graph."),
    ])


def executor_options(fn: Callable) -> Callable:
    """--executor, --workers, --point-timeout, --worker-mem-limit, --retry-failed, --ray-address."""
    return _stack(fn, [
        click.option("--executor", default=lambda: os.environ.get("ATTNBENCH_EXECUTOR", _EXEC.executor),
                     show_default=f"{_EXEC.executor}, or $ATTNBENCH_EXECUTOR", type=click.Choice(EXECUTORS),
                     help="Where points run: inline (this process), process (isolated workers), ray."),
        click.option("--workers", default=None, type=int,
                     help="Worker processes (default: one per visible GPU on CUDA, one on CPU)."),
        click.option("--point-timeout", "point_timeout_s", default=None, type=float,
                     help="Seconds one whole point may take (default 10 x --timeout); process/ray only."),
        click.option("--worker-mem-limit", default=None, type=float, metavar="GIB",
                     help="Address-space limit of each worker in GiB (RLIMIT_AS); process only."),
        click.option("--retry-failed", is_flag=True,
                     help="Measure again the points whose rows are crashed, timeout, error or harness_error."),
        click.option("--ray-address", default=None, help="Ray cluster to join (default: start a local one)."),
    ])


def methods_option(required: bool = False, default: str | None = None,
                   help: str = "Comma list of registered methods (default: all available).") -> Callable:
    """``--methods NAME,...`` passed as ``methods_spec``; ``--method`` and ``--attention`` are
    hidden aliases kept for old command lines."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, methods_spec: str | None = None, alias_method: str | None = None,
                    alias_attention: str | None = None, **kwargs: Any) -> Any:
            given = [v for v in (methods_spec, alias_method, alias_attention) if v is not None]
            if len(given) > 1:
                raise BadInput("give the methods once, with --methods")
            spec = given[0] if given else default
            if spec is None and required:
                raise BadInput("--methods is required: give registered names, e.g. vanilla-sdpa,anchor")
            return fn(*args, methods_spec=spec, **kwargs)

        return _stack(wrapper, [
            click.option("--methods", "methods_spec", default=None, metavar="NAME[,NAME...]",
                         help=help + (f" [default: {default}]" if default else "") + (" [required]" if required else "")),
            click.option("--method", "alias_method", default=None, hidden=True),
            click.option("--attention", "alias_attention", default=None, hidden=True),
        ])

    return deco


def param_option(fn: Callable) -> Callable:
    """``--param METHOD.KEY=VALUE`` (repeatable), passed as ``param_items``."""
    return click.option("--param", "param_items", multiple=True, metavar="METHOD.KEY=VALUE",
                        help="Method parameter, e.g. anchor.shared=true; a comma list of values gives one "
                             "series per value (repeatable).")(fn)


def model_options(fn: Callable) -> Callable:
    """The options capture and drift share: model, weights, inputs, sizes."""
    opts = [
        click.option("--model", required=True, help="minilm | hf:PATH_OR_NAME | timm:NAME"),
        click.option("--weights", default=None, help="timm: a weights file (.safetensors, .pth)."),
        click.option("--random-weights", is_flag=True, help="timm: random weights from --seed (no download)."),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--text", default=None, help="Text file (default: the public-domain text shipped)."),
        click.option("--images", default=None, help="Image folder (default: scikit-image photographs)."),
        click.option("--n", default=None, type=int, help="Text: tokens per sequence (default 256)."),
        click.option("--batch", default=None, type=int,
                     help="Evaluation sequences (default: every window not used for fitting) or images (3)."),
        click.option("--fit-batch", default=1, show_default=True, type=int,
                     help="Fitting sequences or images, disjoint from the evaluation ones."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


# -- from parsed options to settings --------------------------------------------------------
def spec_errors(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(...)``, its SpecError (attnbench.spec) raised as BadInput."""
    from attnbench.spec import SpecError

    try:
        return fn(*args, **kwargs)
    except SpecError as exc:
        raise BadInput(str(exc)) from None


def best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    import torch

    if device not in DEVICES:
        raise BadInput(f"unknown device {device!r}; use cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda asked for, but torch sees no CUDA device "
                       f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    return device


def positive_values(**values: float | int | None) -> None:
    """Each given value a positive finite number, else BadInput naming the option (``fit_lr``: --fit-lr)."""
    from attnbench.spec import positive

    for name, value in values.items():
        if value is not None:
            spec_errors(positive, f"--{name.replace('_', '-')}", value)


def shape_settings(device: str | None, dtype: str | None, batch: int, heads: int, head_dim: int) -> Shape:
    """The checked Shape of the parsed shape options (device resolved and checked for CUDA)."""
    device = check_device(device or best_device())
    positive_values(batch=batch, heads=heads, head_dim=head_dim)
    return Shape(device=device, dtype=dtype or default_dtype(device), batch=batch, heads=heads, head_dim=head_dim)


def inputs_settings(workload: str, seed: int, fit: str, fit_iters: int, fit_steps: int, fit_lr: float) -> Inputs:
    """The checked Inputs of the parsed input options; an unknown workload is refused here."""
    if not 0 <= seed <= SEED_MAX:
        raise BadInput(f"--seed must be an integer from 0 to {SEED_MAX}, got {seed}")
    positive_values(fit_iters=fit_iters, fit_steps=fit_steps, fit_lr=fit_lr)
    from attnbench.workloads import WorkloadError, check_workload_spec

    try:
        check_workload_spec(workload)
    except WorkloadError as exc:
        raise BadInput(str(exc)) from None
    return Inputs(workload=workload, seed=seed, fit=fit, fit_iters=fit_iters, fit_steps=fit_steps, fit_lr=fit_lr)


def execution_settings(opts: dict[str, Any], timeout_s: float, plugins: tuple[str, ...] | None = None) -> Execution:
    """The checked Execution of the parsed executor options (``--point-timeout`` defaults to 10 x ``timeout_s``)."""
    executor = opts["executor"]
    if executor not in EXECUTORS:
        raise BadInput(f"unknown --executor {executor!r}; use {', '.join(EXECUTORS)}")
    for name in ("workers", "point_timeout_s", "worker_mem_limit"):
        value = opts[name]
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise BadInput(f"--{name.replace('_s', '').replace('_', '-')} must be a positive finite number, got {value}")
    if opts["ray_address"] and executor != "ray":
        raise BadInput("--ray-address needs --executor ray")
    limit = opts["worker_mem_limit"]
    return Execution(executor=executor, workers=opts["workers"],
                     point_timeout_s=opts["point_timeout_s"] or 10 * timeout_s,
                     worker_mem_limit=int(limit * 2 ** 30) if limit else None,
                     plugins=tuple(plugins_of_context() if plugins is None else plugins),
                     retry_failed=opts["retry_failed"], ray_address=opts["ray_address"])


def executor_settings(opts: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """The Execution fields as a dict (for configs built with keyword arguments)."""
    ex = execution_settings(opts, timeout_s)
    return {f: getattr(ex, f) for f in Execution.__dataclass_fields__}


def resolve_methods(spec: str | None, device: str) -> tuple[str, ...]:
    """Comma list of names, or every available method of the device's default sweep."""
    from attnbench import registry

    if spec is not None:
        try:
            names = registry.names_from_spec(spec)
        except KeyError as exc:
            raise BadInput(exc.args[0]) from None
        if not names:
            raise BadInput(f"--methods {spec!r} names no method; give names like anchor,vanilla-sdpa")
        return names
    return tuple(m["name"] for m in registry.list_methods(device) if m["available"] and m["default_sweep"])


def check_params(params: dict[str, dict[str, Any]], methods: tuple[str, ...], heads: int = 2,
                 head_dim: int = 8) -> None:
    """--param names a method among ``methods`` and a keyword its constructor takes (not its
    budget), with a value of the declared default's type that the constructor accepts."""
    from attnbench import registry
    from attnbench.spec import param_variants

    for method, values in params.items():
        if method not in methods:
            raise BadInput(f"--param names {method!r}, which is not among the chosen methods")
        info = registry.get_info(method)
        sig = inspect.signature(info.cls.__init__).parameters
        accepted = set(sig) - {"self", "heads", "head_dim"}
        open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values())
        for key, value in values.items():
            if key == info.budget:
                raise BadInput(f"--param {method}.{key}: {key} is the budget of {method}; set it with --m")
            if key not in accepted and not open_kwargs:
                raise BadInput(f"--param {method}.{key}: {method} takes {', '.join(sorted(accepted)) or 'no parameters'}")
            declared = info.defaults.get(key, sig[key].default if key in sig else inspect.Parameter.empty)
            for v in value if isinstance(value, list) else [value]:
                _check_type(method, key, v, declared)
        _check_construction(info, values, heads, head_dim, param_variants)


def _check_type(method: str, key: str, value: Any, declared: Any) -> None:
    kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}
    want = kinds.get(type(declared))
    if want is None:
        return
    if not isinstance(value, want) or (type(declared) is not bool and isinstance(value, bool)):
        raise BadInput(f"--param {method}.{key}={value!r}: expected {type(declared).__name__} "
                       f"(its default is {declared!r})")


def _check_construction(info: Any, values: dict[str, Any], heads: int, head_dim: int, variants: Callable) -> None:
    """Build the method with each variant of the given values: a constructor refusing them (that
    builds with its defaults) refuses the option before anything is measured."""
    from attnbench import registry

    m = 4 if info.budget else None
    try:
        registry.build(info.name, heads=heads, head_dim=head_dim, m=m)
    except Exception:
        return          # not buildable here at all: the point's row will say why
    for variant in variants(values):
        try:
            registry.build(info.name, heads=heads, head_dim=head_dim, params=variant, m=m)
        except Exception as exc:
            shown = ", ".join(f"{info.name}.{k}={v}" for k, v in variant.items())
            raise BadInput(f"--param {shown}: {' '.join(str(exc).split())}") from None
