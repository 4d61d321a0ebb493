"""The two entry points: ``run_check`` (measure and judge) and ``run_update`` (rewrite the baseline)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from attnbench.check.abcheck import ab_settings, compare_ab, rounds_and_reps
from attnbench.check.baselines import (BaselineError, baseline_dict, baseline_diff, device_name, has_fingerprints,
                                       load_baseline, measured_env, write_json)
from attnbench.check.modes import Mode, absolute_plugins, choose_mode, head_root
from attnbench.check.output import env_line, format_table, summarize
from attnbench.check.prepare import prepare_suite
from attnbench.check.processes import measure_for_baseline
from attnbench.check.suite import (DEFAULT_SUITES, Settings, correctness_workload, entry_of, select_entries,
                                   update_suite)
from attnbench.check.revision import worktree
from attnbench.check.verdict import OutputCheck, compare, update_problems
from attnbench.measure.allocator import steady_allocator


@dataclass(frozen=True)
class CheckOptions:
    """The command line of ``check`` as data; the shape options apply to ``--update`` only."""

    device: str
    baseline: Path
    tolerance: float | None = None     # None: the mode's default (DEFAULT_TOLERANCE, AB_TOLERANCE, ...)
    methods: tuple[str, ...] | None = None
    repeats: int | None = None
    ns: tuple[int, ...] | None = None
    m: int | None = None
    heads: int | None = None
    head_dim: int | None = None
    block_ms: float | None = None
    plugins: tuple[str, ...] = ()      # loaded again by the process that re-measures suspects
    base: str | None = None            # a git revision: A/B against it instead of the stored baseline
    accept: tuple[str, ...] = ()       # methods whose output may differ from the base's (an intended change)


def settings_for_check(baseline: dict[str, Any], opts: CheckOptions, ab: bool) -> Settings:
    """The baseline's settings (repeats overridable); BaselineError if it belongs elsewhere."""
    s = Settings(**baseline["settings"])
    if s.device != opts.device:
        raise BaselineError(f"baseline {opts.baseline} was measured on {s.device}, this check runs on {opts.device}")
    if s.device == "cuda" and not ab:
        stored = (baseline.get("provenance") or {}).get("env", {}).get("device_name")
        if stored != device_name("cuda"):
            raise BaselineError(f"baseline {opts.baseline} is for {stored!r}, this GPU is {device_name('cuda')!r}")
    return Settings(**{**asdict(s), "repeats": opts.repeats or s.repeats})


def run_check(opts: CheckOptions, echo: Callable[[str], None]) -> int:
    """Measure the baseline's configurations, here against the baseline or side by side with a
    revision (``choose_mode``), and print the verdict table; 0 pass, 1 fail."""
    steady_allocator()                 # the heap policy of every process that times (measure/allocator.py)
    baseline = load_baseline(opts.baseline)
    entries = select_entries((entry_of(c) for c in baseline["configs"]), opts.methods)
    if not entries:
        raise BaselineError(f"baseline {opts.baseline} has no configuration of {', '.join(opts.methods or ())}")
    mode = choose_mode(opts, baseline, echo)
    s = settings_for_check(baseline, opts, mode.sha is not None)
    if mode.sha is not None:
        return run_ab(opts, ab_settings(s, opts.repeats), entries, mode, echo)
    if not has_fingerprints(baseline):
        echo(f"baseline {opts.baseline} has no output fingerprints (older format): outputs not compared, "
             "only the error check; refresh it with `bench.py check --update`")
    items, wls = prepare_suite(entries, s)
    oc = OutputCheck("baseline", s.dtype, frozenset(opts.accept))
    rows = compare(items, baseline, s, mode.tolerance, wls, opts.plugins, oc)
    echo(f"check against {opts.baseline} (tolerance {mode.tolerance:g}, {s.repeats} interleaved repetitions; "
         f"correctness on {correctness_workload(s)}, fit {s.fit})")
    accepted_line(opts, echo)
    for line in format_table(rows, baseline.get("unit", "?")):
        echo(line)
    echo(f"now:      {env_line(measured_env(s))}")
    echo(f"baseline: {env_line((baseline.get('provenance') or {}).get('env', {}))}, "
         f"date={(baseline.get('provenance') or {}).get('date')}")
    return summarize(rows, echo)


def run_ab(opts: CheckOptions, s: Settings, entries: list, mode: Mode, echo: Callable[[str], None]) -> int:
    """The working tree against ``mode.sha`` in a temporary worktree, side by side."""
    rounds, reps = rounds_and_reps(s)
    echo(f"check: this tree against {mode.label} ({mode.sha[:12]}) side by side on this machine "
         f"(tolerance {mode.tolerance:g}, {rounds} pair{'s' * (rounds != 1)} of fresh processes x {reps} repetitions)")
    with worktree(mode.repo, mode.sha) as base_root:
        try:
            rows = compare_ab(entries, s, mode.tolerance, {"head": head_root(), "base": base_root},
                              absolute_plugins(opts.plugins), OutputCheck(mode.label, s.dtype, frozenset(opts.accept)))
        except RuntimeError as exc:  # a worker process died: the check cannot pass
            echo(f"check FAILED: {exc}")
            return 1
    for line in format_table(rows, f"ms per call at {mode.label} (baseline) and in this tree (now); "
                                   "ratio: median of time(now) / time(baseline)"):
        echo(line)
    accepted_line(opts, echo)
    echo(f"now:      {env_line(measured_env(s))}")
    return summarize(rows, echo)


def accepted_line(opts: CheckOptions, echo: Callable[[str], None]) -> None:
    if opts.accept:
        echo(f"accepted output changes (--accept): {', '.join(opts.accept)}")


def settings_for_update(opts: CheckOptions) -> Settings:
    _, s = DEFAULT_SUITES["cuda" if opts.device == "cuda" else "cpu"]
    given = {"repeats": opts.repeats, "heads": opts.heads, "head_dim": opts.head_dim, "block_ms": opts.block_ms}
    return Settings(**{**asdict(s), **{k: v for k, v in given.items() if v is not None}})


def run_update(opts: CheckOptions, echo: Callable[[str], None], argv: list[str] | None = None) -> int:
    """Measure the suite and rewrite the baseline, printing the diff; refuse if exact methods are wrong."""
    try:
        old = load_baseline(opts.baseline)
    except BaselineError as exc:
        old = None
        echo(f"note: previous baseline not used: {exc}")
    s = settings_for_update(opts)
    steady_allocator()
    items, wls = prepare_suite(update_suite(opts.device, opts.methods, opts.ns, opts.m), s)
    problems = update_problems(items)
    if problems:
        for line in format_table(problems, "-"):
            echo(line)
        echo(f"baseline not written: {len(problems)} configuration(s) wrong or failing")
        return 1
    try:
        measure_for_baseline([it for it in items if it.status == "ok"], s, wls, opts.plugins)
    except Exception as exc:  # a process that could not start or died: nothing is written
        echo(f"baseline not written: measuring in a fresh process failed: {type(exc).__name__}: {exc}")
        return 1
    new = baseline_dict(items, s, argv)
    write_json(opts.baseline, new)
    for line in baseline_diff(old, new):
        echo(line)
    for it in items:
        if it.status != "ok":
            echo(f"skipped: {it.entry.key}: {it.message}")
    echo(f"baseline written to {opts.baseline}")
    return 0


