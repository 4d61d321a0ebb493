"""The command line: ``python bench.py <command>`` or the ``attnbench`` console script.

Bad input prints one line on stderr and exits with status 2; no traceback.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from attnbench import registry
from attnbench.capture.cli import model_options, run_capture_cmd, run_drift_cmd
from attnbench.results import RowsFileError
from attnbench.train.cli import run_train_cmd, train_options
from attnbench.spec import DTYPES, MODES, SpecError, one_line, parse_m_spec, parse_n_spec, parse_params, positive
from attnbench.workloads import WorkloadError

DEFAULT_N = {"cpu": "196,1024", "cuda": "196..16384"}
DEFAULT_M = "10,30,100"
SEED_MAX = 2**62  # torch generators take 64-bit seeds; the fitting split adds an offset


class BadInput(click.ClickException):
    """Reported as one line and exit status 2."""

    exit_code = 2


def plugin_option(fn: Callable) -> Callable:
    """``--plugin FILE_OR_MODULE`` (repeatable): import user code registering more methods."""

    def load(ctx, param, values):
        for spec in values or ():
            try:
                registry.load_plugin(spec)
            except registry.PluginError as exc:
                raise BadInput(str(exc)) from None
        ctx.meta["attnbench.plugins"] = tuple(values or ())  # for work done in a fresh process
        return values

    return click.option("--plugin", "plugins", multiple=True, callback=load, expose_value=False,
                        is_eager=True, metavar="FILE_OR_MODULE",
                        help="Import user code that registers methods (repeatable).")(fn)


def best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    import torch

    if device not in ("cpu", "cuda"):
        raise BadInput(f"unknown device {device!r}; use cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda asked for, but torch sees no CUDA device "
                       f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    return device


def resolve_methods(spec: str | None, device: str) -> tuple[str, ...]:
    """Comma list of names, or every available method of the device's default sweep."""
    if spec is not None:
        try:
            names = registry.names_from_spec(spec)
        except KeyError as exc:
            raise BadInput(exc.args[0]) from None
        if not names:
            raise BadInput(f"--methods {spec!r} names no method; give names like anchor,vanilla-sdpa")
        return names
    return tuple(m["name"] for m in registry.list_methods(device) if m["available"] and m["default_sweep"])


def check_params(params: dict[str, dict[str, Any]], methods: tuple[str, ...]) -> None:
    """--param names a method of the sweep and a keyword its constructor takes (not its budget)."""
    import inspect

    for method, values in params.items():
        if method not in methods:
            raise BadInput(f"--param names {method!r}, which is not among the swept methods")
        info = registry.get_info(method)
        sig = inspect.signature(info.cls.__init__).parameters
        accepted = set(sig) - {"self", "heads", "head_dim"}
        open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values())
        for key in values:
            if key == info.budget:
                raise BadInput(f"--param {method}.{key}: {key} is the budget of {method}; set it with --m")
            if key not in accepted and not open_kwargs:
                raise BadInput(f"--param {method}.{key}: {method} takes {', '.join(sorted(accepted)) or 'no parameters'}")


def executor_options(fn: Callable) -> Callable:
    """--executor, --workers, --point-timeout, --worker-mem-limit, --retry-failed, --ray-address."""
    from attnbench.run.options import OPTIONS

    for option in reversed(OPTIONS):
        fn = option(fn)
    return fn


def executor_settings(opts: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """SweepConfig fields from the executor options (bad values are one line, exit 2)."""
    from attnbench.run.options import settings

    try:
        return settings(opts, timeout_s, click.get_current_context().meta.get("attnbench.plugins", ()))
    except SpecError as exc:
        raise BadInput(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """attnbench: efficient attention side by side: latency, memory, FLOPs, error."""


@cli.command("list")
@plugin_option
@click.option("--device", default=None, help="Check availability on this device (default: best present).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_cmd(device: str | None, as_json: bool) -> None:
    """Registered methods with family, budget and availability on this machine."""
    device = device or best_device()
    if device not in ("cpu", "cuda"):
        raise BadInput(f"unknown device {device!r}; use cpu or cuda")
    methods = registry.list_methods(device)
    if as_json:
        click.echo(json.dumps(methods, indent=2, default=str))
        return
    click.echo(f"{'method':<20} {'family':<12} {'budget':<8} available on {device}")
    for m in methods:
        state = "yes" if m["available"] else f"no: {m['reason']}"
        state += "" if m["default_sweep"] or not m["available"] else " (not in the default sweep here: name it with --methods)"
        click.echo(f"{m['name']:<20} {m['family']:<12} {m['budget'] or '-':<8} {state}")


@cli.command("env")
@plugin_option
@click.option("--device", default=None, help="Device to describe (default: best present).")
def env_cmd(device: str | None) -> None:
    """Print the environment stored with every row."""
    from attnbench.measure.env import collect_env

    click.echo(json.dumps(collect_env(check_device(device or best_device())), indent=2, default=str))


@cli.command("sweep")
@plugin_option
@click.option("--n", "n_spec", default=None,
              help=f"Token counts: A..B (A, powers of two between, B) or a comma list. "
                   f"Default {DEFAULT_N['cpu']} on CPU, {DEFAULT_N['cuda']} on CUDA.")
@click.option("--m", "m_spec", default=DEFAULT_M, show_default=True, help="Budgets (anchors, landmarks...).")
@click.option("--methods", "methods_spec", default=None, help="Comma list (default: all available).")
@click.option("--device", default=None, help="cpu or cuda (default: best present).")
@click.option("--dtype", default=None, help="float32|float16|bfloat16 (default float32 on CPU, bfloat16 on CUDA).")
@click.option("--batch", default=1, show_default=True, type=int)
@click.option("--heads", default=6, show_default=True, type=int)
@click.option("--head-dim", default=64, show_default=True, type=int)
@click.option("--mode", default="fwd", show_default=True, help="fwd or fwdbwd.")
@click.option("--workload", default="image", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--param", "param_items", multiple=True, metavar="METHOD.KEY=VALUE",
              help="Method parameter, e.g. anchor.shared=true (repeatable).")
@click.option("--out", default=None, help="Run folder (default results/sweep-<device>); rerun to resume.")
@click.option("--min-run-time", default=0.2, show_default=True, type=float,
              help="CPU timing budget per row, seconds of measured calls.")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True, type=float,
              help="Seconds one call may take; a longer call gives a timeout row (process/ray: it is killed).")
@click.option("--no-flops", is_flag=True, help="Skip the fvcore and FlopCounterMode counts.")
@click.option("--cuda-graphs", is_flag=True, help="Time replays of the call captured in a CUDA graph.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--fit", default="closed", show_default=True,
              help="Learnable state before measuring: none, closed (fixed point) or distill (Adam), "
                   "on the workload's fitting split.")
@click.option("--fit-iters", default=20, show_default=True, type=int, help="closed: fixed-point iterations.")
@click.option("--fit-steps", default=200, show_default=True, type=int, help="distill: Adam steps.")
@click.option("--fit-lr", default=5e-2, show_default=True, type=float, help="distill: Adam learning rate.")
@executor_options
def sweep_cmd(n_spec, m_spec, methods_spec, device, dtype, batch, heads, head_dim, mode, workload,
              seed, param_items, out, min_run_time, timeout_s, no_flops, cuda_graphs, quiet, fit, fit_iters,
              fit_steps, fit_lr, **run_opts) -> None:
    """Measure every method over token counts and budgets into OUT/rows.jsonl."""
    from attnbench.measure.timing import TimingConfig
    from attnbench.sweep import SweepConfig, run_sweep

    device = check_device(device or best_device())
    if cuda_graphs and device != "cuda":
        raise BadInput("--cuda-graphs needs --device cuda")
    dtype = dtype or ("bfloat16" if device == "cuda" else "float32")
    if dtype not in DTYPES:
        raise BadInput(f"unknown dtype {dtype!r}; use {', '.join(DTYPES)}")
    if mode not in MODES:
        raise BadInput(f"unknown mode {mode!r}; use fwd or fwdbwd")
    if fit not in ("none", "closed", "distill"):
        raise BadInput(f"unknown --fit {fit!r}; use none, closed or distill")
    if not 0 <= seed <= SEED_MAX:
        raise BadInput(f"--seed must be an integer from 0 to {SEED_MAX}, got {seed}")
    try:
        for name, value in (("--batch", batch), ("--heads", heads), ("--head-dim", head_dim),
                            ("--fit-iters", fit_iters), ("--fit-steps", fit_steps), ("--fit-lr", fit_lr),
                            ("--min-run-time", min_run_time), ("--timeout", timeout_s)):
            positive(name, value)
        ns, ms = parse_n_spec(DEFAULT_N[device] if n_spec is None else n_spec), parse_m_spec(m_spec)
        params = parse_params(param_items)
    except SpecError as exc:
        raise BadInput(str(exc)) from None
    methods = resolve_methods(methods_spec, device)
    check_params(params, methods)
    cfg = SweepConfig(
        ns=tuple(ns), ms=tuple(ms), methods=methods, device=device, dtype=dtype, batch=batch,
        heads=heads, head_dim=head_dim, mode=mode, workload=workload, seed=seed,
        out=Path(out or f"results/sweep-{device}"), params=params,
        timing=TimingConfig(cpu_min_run_time_s=min_run_time, timeout_s=timeout_s, cuda_graphs=cuda_graphs),
        count_flops=not no_flops, fit=fit, fit_iters=fit_iters, fit_steps=fit_steps,
        fit_lr=fit_lr, **executor_settings(run_opts, timeout_s),
    )
    if any(registry.get_info(mm).budget for mm in methods) and not ms:
        raise BadInput("--m is empty but budgeted methods were chosen; give --m like 10,30,100")
    from attnbench.run.process import WorkerStartError

    try:
        summary = run_sweep(cfg, argv=["bench.py"] + sys.argv[1:], progress=not quiet)
    except WorkerStartError as exc:
        raise BadInput(str(exc)) from None
    for note in summary.notes:
        click.echo(note, err=True)
    for line in summary.unsupported:
        click.echo(f"skipped: {line}", err=True)
    for line in summary.failed:
        click.echo(f"failed: {line}", err=True)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(summary.statuses.items())) or "nothing new"
    click.echo(f"{summary.written} rows written to {summary.out / 'rows.jsonl'} ({counts}); "
               f"{summary.skipped_existing} already measured")


@cli.command("merge")
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder to write (rows are appended).")
@click.option("--keep", default=None, help="newest or oldest: which of two different measurements of one point wins.")
def merge_cmd(folders, out, keep) -> None:
    """Union of run folders, de-duplicated by the row identity key."""
    from attnbench.run.merge import merge_runs

    s = merge_runs(list(folders), out, keep)
    click.echo(f"{s.rows} rows in {out / 'rows.jsonl'} from {len(folders)} folders ({s.duplicates} duplicates dropped, "
               f"{s.conflicts_resolved} conflicts resolved by --keep {keep}); {s.runs} runs in runs.jsonl")


@cli.command("profile")
@plugin_option
@click.option("--method", required=True, help="Registered method name.")
@click.option("--n", type=int, required=True, help="Token count.")
@click.option("--m", type=int, default=None, help="Budget (anchors, landmarks...); default: the method's.")
@click.option("--device", default=None, help="cpu or cuda (default: best present).")
@click.option("--dtype", default=None, help="float32|float16|bfloat16 (default float32 on CPU, bfloat16 on CUDA).")
@click.option("--mode", default="fwd", show_default=True, help="fwd or fwdbwd.")
@click.option("--batch", default=1, show_default=True, type=int)
@click.option("--heads", default=6, show_default=True, type=int)
@click.option("--head-dim", default=64, show_default=True, type=int)
@click.option("--active", default=5, show_default=True, type=int, help="Profiled calls.")
@click.option("--top", default=15, show_default=True, type=int, help="Lines in the table.")
@click.option("--out", default=None, help="Output folder (default results/profile-METHOD-nN-DEVICE).")
def profile_cmd(method, n, m, device, dtype, mode, batch, heads, head_dim, active, top, out) -> None:
    """torch.profiler trace (trace.json) and top kernels/operators table of one configuration."""
    from attnbench.point import MethodFailure
    from attnbench.profiling import ProfileConfig, ProfileError, markdown, run_profile, timing_line

    device = check_device(device or best_device())
    cfg = ProfileConfig(method=method, n=n, m=m, device=device, dtype=dtype or ("bfloat16" if device == "cuda" else "float32"),
                        mode=mode, batch=batch, heads=heads, head_dim=head_dim, active=active, top=top,
                        out=Path(out or f"results/profile-{method}-n{n}-{device}"))
    try:
        summary = run_profile(cfg)
    except (ProfileError, WorkloadError) as exc:
        raise BadInput(str(exc)) from None
    except (RuntimeError, MemoryError, MethodFailure) as exc:  # e.g. inputs too large for this machine
        raise BadInput(f"profiling {method} at n={n} failed: {one_line(getattr(exc, 'original', exc))}") from None
    click.echo(f"{method} n={n} {summary['config']['dtype']} {mode} on {summary['device_name']}: "
               f"top {summary['level']} over {active} calls, times per call")
    click.echo(markdown(summary["table"]))
    if timing_line(summary["timing"]):
        click.echo(timing_line(summary["timing"]))
    click.echo(f"trace: {cfg.out / 'trace.json'} (open in https://ui.perfetto.dev); table: {cfg.out / 'top_ops.csv'}")


@cli.command("model")
@plugin_option
@click.option("--arch", default="deit-small", show_default=True,
              help="deit-tiny|deit-small|deit-base, or a comma list.")
@click.option("--attention", "attention_spec", default="vanilla-math", show_default=True,
              help="Attention in every block (registry name), or a comma list.")
@click.option("--img", default=224, show_default=True, type=int, help="Image side in pixels (patch 16).")
@click.option("--m", "m_spec", default="30", show_default=True,
              help="Budget of budgeted attentions (anchors...), or a comma list.")
@click.option("--param", "param_items", multiple=True, metavar="KEY=VALUE",
              help="Attention parameter, e.g. shared=true (repeatable).")
@click.option("--device", default=None, help="cpu or cuda (default: best present).")
@click.option("--batch", default=None, type=int, help="Throughput batch (default 64 on CUDA, 8 on CPU).")
@click.option("--iters", default=3, show_default=True, type=int, help="Timed forward passes after one warm-up.")
@click.option("--no-timing", is_flag=True, help="Count parameters and MACs only.")
@click.option("--out", default=None, help="Run folder (default results/model-<device>); rows are appended.")
def model_cmd(arch, attention_spec, img, m_spec, param_items, device, batch, iters, no_timing, out) -> None:
    """Parameters, MACs (fvcore; FlopCounterMode/2) and images/s of DeiT-style ViTs."""
    from attnbench.models.cli import model_configs, print_model_rows
    from attnbench.models.audit import run_models

    device = check_device(device or best_device())
    cfgs = model_configs(arch, resolve_methods(attention_spec, device), img, m_spec, param_items, device,
                         batch, iters, not no_timing, BadInput)
    rows = run_models(cfgs, Path(out or f"results/model-{device}"), argv=["bench.py"] + sys.argv[1:])
    print_model_rows(rows, Path(out or f"results/model-{device}"))


@cli.command("report")
@plugin_option
@click.option("--run", "runs", multiple=True, help="Run folder (repeatable; default: the latest under results/).")
@click.option("--out", default=None, help="Output folder (default: <first run>/report).")
@click.option("--at-n", default=None, type=int, help="n of the Table 1 analogue (default: the n "
              "with the most ok methods).")
@click.option("--fit-points", default=4, show_default=True, type=int, help="Largest n used for the scaling fit.")
def report_cmd(runs, out, at_n, fit_points) -> None:
    """Tables, figures and the claims audit from rows.jsonl alone (no measurement)."""
    from attnbench.report.cli import run_report

    run_report(runs, out, at_n, fit_points, BadInput)


@cli.command("check")
@plugin_option
@click.option("--baseline", "baseline_path", default=None,
              help="Baseline file (default baselines/ci/<device-class>.json).")
@click.option("--tolerance", default=None, type=float,
              help="Allowed slowdown, a fraction (default 0.15 against the baseline, 0.10 with --base).")
@click.option("--base", default=None, help="Git revision to compare with side by side on this machine.")
@click.option("--methods", "methods_spec", default=None, help="Comma list narrowing the suite.")
@click.option("--update", is_flag=True, help="Measure the suite and rewrite the baseline.")
@click.option("--device", default=None, help="cpu or cuda (default: best present).")
@click.option("--repeats", default=None, type=int, help="Interleaved repetitions (default: the baseline's).")
@click.option("--n", "n_spec", default=None, help="With --update: token counts, a comma list.")
@click.option("--m", "m_value", default=None, type=int, help="With --update: budget of budgeted methods.")
@click.option("--heads", default=None, type=int, help="With --update: heads.")
@click.option("--head-dim", default=None, type=int, help="With --update: head dim.")
@click.option("--block-ms", default=None, type=float, help="With --update: CPU milliseconds per timed block.")
def check_cmd(baseline_path, tolerance, base, methods_spec, update, device, repeats, n_spec, m_value, heads,
              head_dim, block_ms) -> None:
    """CI gate: correctness, then speed against the stored baseline (exit 1 on failure)."""
    from attnbench import check

    device = check_device(device or best_device())
    if (tolerance is not None and not (0 <= tolerance < float("inf"))) or (repeats is not None and repeats < 3):
        raise BadInput("--tolerance must be a number >= 0 and --repeats >= 3")
    shape = {"--n": n_spec, "--m": m_value, "--heads": heads, "--head-dim": head_dim, "--block-ms": block_ms}
    if update and base:
        raise BadInput("--base compares with a revision; it does not apply with --update")
    if not update and any(v is not None for v in shape.values()):
        raise BadInput(f"{', '.join(k for k, v in shape.items() if v is not None)} apply only with --update")
    if any(v is not None and v <= 0 for v in (m_value, heads, head_dim, block_ms)):
        raise BadInput("--m, --heads, --head-dim and --block-ms must be positive")
    try:
        ns = tuple(parse_n_spec(n_spec)) if n_spec else None
    except SpecError as exc:
        raise BadInput(str(exc)) from None
    opts = check.CheckOptions(
        plugins=click.get_current_context().meta.get("attnbench.plugins", ()),
        device=device, baseline=Path(baseline_path) if baseline_path else check.default_baseline_path(device),
        tolerance=tolerance, methods=resolve_methods(methods_spec, device) if methods_spec else None,
        repeats=repeats, ns=ns, m=m_value, heads=heads, head_dim=head_dim, block_ms=block_ms, base=base)
    try:
        code = (check.run_update(opts, click.echo, ["bench.py"] + sys.argv[1:]) if update
                else check.run_check(opts, click.echo))
    except check.BaselineError as exc:
        raise BadInput(str(exc)) from None
    if code:
        raise click.exceptions.Exit(code)


@cli.command("capture")
@model_options
@click.option("--out", required=True, help="Output .safetensors file (read by --workload file:OUT).")
def capture_cmd(model, weights, random_weights, seed, text, images, n, batch, fit_batch, out) -> None:
    """Record every layer's q, k, v of a pretrained model into a file the file: workload reads."""
    run_capture_cmd(BadInput, model, weights, random_weights, seed, text, images, n, batch, fit_batch, out)


@cli.command("drift")
@plugin_option
@model_options
@click.option("--attention", required=True, help="Registered method(s) replacing every layer's attention, comma list.")
@click.option("--m", "m_spec", default="30", show_default=True, help="Budgets of budgeted methods, comma list.")
@click.option("--param", "param_items", multiple=True, metavar="METHOD.KEY=VALUE", help="Method parameter (repeatable).")
@click.option("--fit", default="none", show_default=True, help="none, closed or distill (comma list), per layer.")
@click.option("--fit-iters", default=20, show_default=True, type=int, help="closed: fixed-point iterations.")
@click.option("--fit-steps", default=200, show_default=True, type=int, help="distill: Adam steps.")
@click.option("--fit-lr", default=5e-2, show_default=True, type=float, help="distill: Adam learning rate.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--out", default=None, help="Run folder (default results/drift-<model>); rerun to resume.")
def drift_cmd(model, weights, random_weights, seed, text, images, n, batch, fit_batch, attention, m_spec,
              param_items, fit, fit_iters, fit_steps, fit_lr, device, out) -> None:
    """Swap a pretrained model's attention in every layer; compare its outputs with the exact model's."""
    run_drift_cmd(BadInput, model, attention, m_spec, param_items, fit, fit_iters, fit_steps, fit_lr, weights,
                  random_weights, seed, text, images, n, batch, fit_batch, check_device(device), out)


@cli.command("train")
@plugin_option
@train_options
def train_cmd(task, methods, n_spec, m_spec, steps, layers, width, heads, batch, lr, seed, threads, device,
              eval_every, out) -> None:
    """Train a small encoder with each attention on generated tasks: held-out accuracy beside step time."""
    run_train_cmd(BadInput, task, methods, n_spec, m_spec, steps, layers, width, heads, batch, lr, seed, threads,
                  check_device(device), eval_every, out)


@cli.command("kernels")
@click.option("--arch", "archs", default="sm_80,sm_90", show_default=True, help="Targets: sm_80, sm_90, sm_100 (comma list).")
@click.option("--dtype", default=None, help="float32|float16|bfloat16, comma list (default: bfloat16; with --all: all three).")
@click.option("--all", "everything", is_flag=True, help="Every shape (m 10,30,100 x head_dim 32,64,128) and dtype.")
@click.option("--pruned", is_flag=True, help="Also compile the configurations the prune function drops (kept = no).")
@click.option("--format", "fmt", default="md", show_default=True, type=click.Choice(["md", "csv"]))
@click.option("--kernels", "names", default=None, help="Comma list of kernel names (default: all declared).")
@click.option("--module", "modules", multiple=True, help="Extra kernel module or .py file declaring AOT_KERNELS (repeatable).")
@click.option("--jobs", default=2, show_default=True, type=click.IntRange(1, 64), help="Compiler processes.")
@click.option("--out", default=None, help="Also write the table to this file.")
def kernels_cmd(archs, dtype, everything, pruned, fmt, names, modules, jobs, out) -> None:
    """Compile every Triton kernel ahead of time: registers, spills, shared memory, occupancy,
    tensor cores (exit 1 when a kept configuration fails, spills or exceeds shared memory)."""
    from attnbench.kernels import audit

    try:
        arch_list, dtypes, shapes = audit.selection(archs, dtype, everything)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    mods = audit.kernel_modules() + list(modules)
    try:
        rows = audit.audit(arch_list, dtypes, shapes, mods, names.split(",") if names else None, pruned, jobs)
    except RuntimeError as exc:
        raise BadInput(str(exc)) from None
    text = audit.markdown(rows) if fmt == "md" else audit.csv_text(rows)
    click.echo(text)
    if out:
        Path(out).write_text(text + "\n")
    found = audit.problems(rows)
    for line in found:
        click.echo(f"problem: {line}", err=True)
    click.echo(f"{len(rows)} compiles, {len(found)} problems", err=True)
    if found:
        raise click.exceptions.Exit(1)


@cli.command("selftest")
@click.option("--device", default=None, help="cpu or cuda (default: best present).")
@click.option("--out", default=None, help="Output folder (default results/selftest-<device>).")
def selftest_cmd(device, out) -> None:
    """Validate this machine: GPU-only tests, a sweep, check, profiles, one summary page (exit 1 on a failed step)."""
    from attnbench.selftest import run_selftest

    device = check_device(device or best_device())
    code = run_selftest(device, Path(out or f"results/selftest-{device}"), click.echo)
    if code:
        raise click.exceptions.Exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input becomes one stderr line and exit status 2."""
    try:
        rc = cli.main(args=argv, prog_name="bench.py", standalone_mode=False)  # a raised Exit's code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message().splitlines()[0]}", err=True)
        return 2
    except (SpecError, WorkloadError, RowsFileError, registry.PluginError) as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except OSError as exc:  # an output folder that cannot be made or written, a full disk
        click.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted; rows measured so far are kept", err=True)
        return 130
    return rc if isinstance(rc, int) else 0


def entry() -> None:
    sys.exit(main())
