"""The command line: ``python bench.py <command>`` or the ``attnbench`` console script.

Bad input prints one line on stderr and exits with status 2; no traceback.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from attnbench import __version__
from attnbench.options import (BadInput, best_device, check_device, check_params, device_option, fit_budget_options,
                               executor_options, executor_settings, inputs_options,
                               inputs_settings, methods_option, mode_option, model_options, param_option, plugin_option,
                               plugins_of_context, positive_values, resolve_methods, shape_options,
                               shape_settings, spec_errors, timing_options)
from attnbench.settings import DEFAULT_M, DEFAULT_N, SEED_MAX
from attnbench.train.cli import run_train_cmd, train_options

DEFAULT_M_TEXT = ",".join(str(m) for m in DEFAULT_M)

__all__ = ["BadInput", "best_device", "check_device", "check_params", "cli", "executor_options",
           "executor_settings", "main", "plugin_option", "resolve_methods", "SEED_MAX"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="attnbench", message="%(prog)s %(version)s")
def cli() -> None:
    """attnbench: efficient attention side by side: latency, memory, FLOPs, error."""


def argv() -> list[str]:
    """The command line as typed, stored with the rows."""
    return ["bench.py"] + sys.argv[1:]


@cli.command("list")
@plugin_option
@device_option()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_cmd(device: str | None, as_json: bool) -> None:
    """Registered methods with family, budget and availability on this machine."""
    from attnbench import registry

    device = check_device(device or best_device())
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
@device_option()
def env_cmd(device: str | None) -> None:
    """Print the environment stored with every row."""
    from attnbench.measure.env import collect_env

    click.echo(json.dumps(collect_env(check_device(device or best_device())), indent=2, default=str))


@cli.command("sweep")
@plugin_option
@click.option("--n", "n_spec", default=None,
              help=f"Token counts: A..B (A, powers of two between, B) or a comma list. "
                   f"Default {DEFAULT_N['cpu']} on CPU, {DEFAULT_N['cuda']} on CUDA.")
@click.option("--m", "m_spec", default=DEFAULT_M_TEXT, show_default=True, help="Budgets (anchors, landmarks...).")
@methods_option()
@shape_options
@mode_option
@inputs_options
@param_option
@click.option("--out", default=None, help="Run folder (default results/sweep-<device>); rerun to resume.")
@timing_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
@executor_options
def sweep_cmd(n_spec, m_spec, methods_spec, device, dtype, batch, heads, head_dim, mode, workload,
              seed, param_items, out, min_run_time, timeout_s, no_flops, cuda_graphs, quiet, fit, fit_iters,
              fit_steps, fit_lr, **run_opts) -> None:
    """Measure every method over token counts and budgets into OUT/rows.jsonl."""
    from attnbench import registry
    from attnbench.run.process import WorkerStartError
    from attnbench.sweep import run_sweep

    cfg = sweep_config(n_spec, m_spec, methods_spec, shape_settings(device, dtype, batch, heads, head_dim), mode,
                       inputs_settings(workload, seed, fit, fit_iters, fit_steps, fit_lr), param_items, out,
                       min_run_time, timeout_s, no_flops, cuda_graphs, run_opts)
    if any(registry.get_info(mm).budget for mm in cfg.methods) and not cfg.ms:
        raise BadInput("--m is empty but budgeted methods were chosen; give --m like 10,30,100")
    try:
        summary = run_sweep(cfg, argv=argv(), progress=not quiet)
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


def sweep_config(n_spec, m_spec, methods_spec, shape, mode, inputs, param_items, out, min_run_time, timeout_s,
                 no_flops, cuda_graphs, run_opts):
    """The checked SweepConfig of the sweep command's options (tests compare it with SweepConfig())."""
    from dataclasses import asdict

    from attnbench.measure.timing import TimingConfig
    from attnbench.spec import parse_m_spec, parse_n_spec, parse_params
    from attnbench.sweep import SweepConfig

    if cuda_graphs and shape.device != "cuda":
        raise BadInput("--cuda-graphs needs --device cuda")
    positive_values(min_run_time=min_run_time, timeout=timeout_s)
    ns = spec_errors(parse_n_spec, DEFAULT_N[shape.device] if n_spec is None else n_spec)
    ms, params = spec_errors(parse_m_spec, m_spec), spec_errors(parse_params, param_items)
    methods = resolve_methods(methods_spec, shape.device)
    check_params(params, methods, shape.heads, shape.head_dim)
    return SweepConfig(
        ns=tuple(ns), ms=tuple(ms), methods=methods, mode=mode, out=Path(out or f"results/sweep-{shape.device}"),
        params=params, timing=TimingConfig(cpu_min_run_time_s=min_run_time, timeout_s=timeout_s,
                                           cuda_graphs=cuda_graphs),
        count_flops=not no_flops, **asdict(shape), **asdict(inputs), **executor_settings(run_opts, timeout_s))


@cli.command("merge")
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder to write (rows are appended).")
@click.option("--keep", default=None, type=click.Choice(["newest", "oldest"]),
              help="Which of two different measurements of one point wins.")
def merge_cmd(folders, out, keep) -> None:
    """Union of run folders, de-duplicated by the row identity key."""
    from attnbench.run.merge import merge_runs

    s = merge_runs(list(folders), out, keep)
    resolved = f", {s.conflicts_resolved} conflicts resolved by --keep {keep}" if keep else ""
    click.echo(f"{s.rows} rows in {out / 'rows.jsonl'} from {len(folders)} folders ({s.duplicates} duplicates "
               f"dropped{resolved}); {s.runs} runs in runs.jsonl")


@cli.command("profile")
@plugin_option
@methods_option(help="The registered method to profile (one name).")
@click.option("--n", type=int, required=True, help="Token count.")
@click.option("--m", type=int, default=None, help="Budget (anchors, landmarks...); default: the method's.")
@param_option
@shape_options
@mode_option
@click.option("--active", default=5, show_default=True, type=int, help="Profiled calls.")
@click.option("--top", default=15, show_default=True, type=int, help="Lines in the table.")
@click.option("--out", default=None, help="Output folder (default results/profile-METHOD-nN-DEVICE).")
def profile_cmd(methods_spec, n, m, param_items, device, dtype, batch, heads, head_dim, mode, active, top,
                out) -> None:
    """torch.profiler trace (trace.json) and top kernels/operators table of one configuration."""
    from dataclasses import asdict

    from attnbench.point import MethodFailure
    from attnbench.profiling import ProfileConfig, ProfileError, markdown, run_profile, timing_line
    from attnbench.spec import one_line, parse_params
    from attnbench.workloads import WorkloadError

    if methods_spec is None:
        raise BadInput("--methods is required: name the method to profile, e.g. --methods anchor")
    shape = shape_settings(device, dtype, batch, heads, head_dim)
    methods = resolve_methods(methods_spec, shape.device)
    if len(methods) != 1:
        raise BadInput(f"profile takes one method, got {len(methods)}: {', '.join(methods)}")
    method = methods[0]
    params = spec_errors(parse_params, param_items)
    check_params(params, methods, shape.heads, shape.head_dim)
    cfg = ProfileConfig(method=method, n=n, m=m, params=params.get(method, {}), mode=mode, active=active, top=top,
                        out=Path(out or f"results/profile-{method}-n{n}-{shape.device}"), **asdict(shape))
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
@methods_option(default="vanilla-math", help="Attention in every block (registered names, comma list).")
@click.option("--img", default=224, show_default=True, type=int, help="Image side in pixels (patch 16).")
@click.option("--m", "m_spec", default="30", show_default=True,
              help="Budget of budgeted attentions (anchors...), or a comma list.")
@param_option
@device_option()
@click.option("--batch", default=None, type=int, help="Throughput batch (default 64 on CUDA, 8 on CPU).")
@click.option("--iters", default=3, show_default=True, type=int, help="Timed forward passes after one warm-up.")
@click.option("--no-timing", is_flag=True, help="Count parameters and MACs only.")
@click.option("--out", default=None, help="Run folder (default results/model-<device>); rows are appended.")
def model_cmd(arch, methods_spec, img, m_spec, param_items, device, batch, iters, no_timing, out) -> None:
    """Parameters, MACs (fvcore; FlopCounterMode/2) and images/s of DeiT-style ViTs."""
    from attnbench.models.audit import run_models
    from attnbench.models.cli import model_configs, print_model_rows

    device = check_device(device or best_device())
    cfgs = model_configs(arch, resolve_methods(methods_spec, device), img, m_spec, param_items, device,
                         batch, iters, not no_timing, BadInput)
    rows = run_models(cfgs, Path(out or f"results/model-{device}"), argv=argv())
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


from attnbench.compare_cli import compare_cmd, export_cmd  # noqa: E402  (registered after the group exists)

cli.add_command(compare_cmd)
cli.add_command(export_cmd)


@cli.command("check")
@plugin_option
@click.option("--baseline", "baseline_path", default=None,
              help="Baseline file (default baselines/ci/<device-class>.json).")
@click.option("--tolerance", default=None, type=float,
              help="Allowed slowdown, a fraction (default 0.15 against the baseline, 0.10 with --base).")
@click.option("--base", default=None, help="Git revision to compare with side by side on this machine.")
@methods_option(help="Comma list narrowing the suite.")
@click.option("--update", is_flag=True, help="Measure the suite and rewrite the baseline.")
@device_option()
@click.option("--repeats", default=None, type=int, help="Interleaved repetitions (default: the baseline's).")
@click.option("--n", "n_spec", default=None, help="With --update: token counts, a comma list.")
@click.option("--m", "m_value", default=None, type=int, help="With --update: budget of budgeted methods.")
@click.option("--heads", default=None, type=int, help="With --update: heads.")
@click.option("--head-dim", default=None, type=int, help="With --update: head dim.")
@click.option("--block-ms", default=None, type=float, help="With --update: CPU milliseconds per timed block.")
@click.option("--accept", "accept_spec", default=None, help="Methods whose output may differ from the base's "
              "(an intended change), a comma list; see docs/check-outputs.md.")
def check_cmd(baseline_path, tolerance, base, methods_spec, update, device, repeats, n_spec, m_value, heads,
              head_dim, block_ms, accept_spec) -> None:
    """CI gate: correctness, then speed against the stored baseline (exit 1 on failure)."""
    from attnbench import check
    from attnbench.spec import parse_n_spec

    device = check_device(device or best_device())
    if (tolerance is not None and not (0 <= tolerance < float("inf"))) or (repeats is not None and repeats < 3):
        raise BadInput("--tolerance must be a number >= 0 and --repeats >= 3")
    shape = {"--n": n_spec, "--m": m_value, "--heads": heads, "--head-dim": head_dim, "--block-ms": block_ms}
    if update and base:
        raise BadInput("--base compares with a revision; it does not apply with --update")
    if update and accept_spec is not None:
        raise BadInput("--accept applies to a check; --update rewrites the baseline and accepts everything")
    if not update and any(v is not None for v in shape.values()):
        raise BadInput(f"{', '.join(k for k, v in shape.items() if v is not None)} apply only with --update")
    if any(v is not None and v <= 0 for v in (m_value, heads, head_dim, block_ms)):
        raise BadInput("--m, --heads, --head-dim and --block-ms must be positive")
    ns = tuple(spec_errors(parse_n_spec, n_spec)) if n_spec else None
    opts = check.CheckOptions(
        plugins=plugins_of_context(),
        device=device, baseline=Path(baseline_path) if baseline_path else check.default_baseline_path(device),
        tolerance=tolerance, methods=resolve_methods(methods_spec, device) if methods_spec else None,
        repeats=repeats, ns=ns, m=m_value, heads=heads, head_dim=head_dim, block_ms=block_ms, base=base,
        accept=resolve_methods(accept_spec, device) if accept_spec is not None else ())
    try:
        code = (check.run_update(opts, click.echo, argv()) if update
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
    from attnbench.capture.cli import run_capture_cmd

    run_capture_cmd(BadInput, model, weights, random_weights, seed, text, images, n, batch, fit_batch, out)


@cli.command("drift")
@plugin_option
@model_options
@methods_option(required=True, help="Registered method(s) replacing every layer's attention, comma list.")
@click.option("--m", "m_spec", default="30", show_default=True, help="Budgets of budgeted methods, comma list.")
@param_option
@click.option("--fit", default="none", show_default=True, help="none, closed or distill (comma list), per layer.")
@fit_budget_options
@device_option("cpu")
@click.option("--out", default=None, help="Run folder (default results/drift-<model>); rerun to resume.")
def drift_cmd(model, weights, random_weights, seed, text, images, n, batch, fit_batch, methods_spec, m_spec,
              param_items, fit, fit_iters, fit_steps, fit_lr, device, out) -> None:
    """Swap a pretrained model's attention in every layer; compare its outputs with the exact model's."""
    from attnbench.capture.cli import run_drift_cmd

    run_drift_cmd(BadInput, model, methods_spec, m_spec, param_items, fit, fit_iters, fit_steps, fit_lr, weights,
                  random_weights, seed, text, images, n, batch, fit_batch, check_device(device), out)


@cli.command("train")
@plugin_option
@train_options
def train_cmd(task, methods, n_spec, m_spec, steps, layers, width, heads, batch, lr, seed, threads, device,
              eval_every, out, executor, workers, ray_address) -> None:
    """Train a small encoder with each attention on generated tasks: held-out accuracy beside step time."""
    plugins = click.get_current_context().meta.get("attnbench.plugins", ())
    run_train_cmd(BadInput, task, methods, n_spec, m_spec, steps, layers, width, heads, batch, lr, seed, threads,
                  check_device(device), eval_every, out, executor, workers, plugins, ray_address)


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
@click.option("--budget", default="300", show_default=True, help="Seconds for the whole run (a hard deadline).")
@click.option("--out", default=None, help="Output folder (default results/selftest-<device>).")
@click.option("--install-log", default=None, hidden=True, help="run.sh: log of the install that came first.")
@click.option("--install-seconds", default=0.0, type=float, hidden=True, help="run.sh: how long it took.")
@click.option("--started", default=None, type=float, hidden=True, help="run.sh: when the budget began (epoch s).")
def selftest_cmd(device, budget, out, install_log, install_seconds, started) -> None:
    """Validate this machine within a budget: code paths, fused-anchor table, CUDA tests, every method,
    check, kernels, profiles; one summary page (exit 1 on a failed step)."""
    from attnbench.kit import parse_budget
    from attnbench.selftest import run_selftest

    seconds = parse_budget(budget, BadInput)
    device = check_device(device or best_device())
    install = (Path(install_log), install_seconds) if install_log else None
    code = run_selftest(device, Path(out or f"results/selftest-{device}"), click.echo, seconds, install,
                        started)
    if code:
        raise click.exceptions.Exit(code)


@cli.command("kit")
@click.option("--out", default=".kit", show_default=True, help="Folder of wheels and run.sh to build or refresh.")
def kit_cmd(out) -> None:
    """Wheels and run.sh for a GPU lease on an offline machine (`bash OUT/run.sh --help`)."""
    from attnbench.kit import KitError, build_kit

    try:
        build_kit(Path(out), click.echo)
    except KitError as exc:
        raise BadInput(str(exc)) from None


def _bad_input_errors() -> tuple[type, ...]:
    """The exceptions that mean bad input (one line, exit 2), from the modules imported so far
    (an exception of a module not imported cannot have been raised)."""
    names = {"attnbench.spec": "SpecError", "attnbench.workloads": "WorkloadError",
             "attnbench.results": "RowsFileError", "attnbench.registry": "PluginError"}
    return tuple(getattr(sys.modules[m], name) for m, name in names.items() if m in sys.modules)


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
    except OSError as exc:  # an output folder that cannot be made or written, a full disk
        click.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        return 2
    except Exception as exc:
        if not isinstance(exc, _bad_input_errors()):
            raise
        click.echo(f"error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted; rows measured so far are kept", err=True)
        return 130
    return rc if isinstance(rc, int) else 0


def entry() -> None:
    sys.exit(main())
