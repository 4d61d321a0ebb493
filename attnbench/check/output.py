"""Printing: the verdict table, the environment line and the closing summary."""
from __future__ import annotations

from typing import Any, Callable

from attnbench.check.baselines import _fmt
from attnbench.check.verdict import Row, needed_tolerance


def format_table(rows: list[Row], unit: str) -> list[str]:
    head = f"{'config':<30} {'baseline':>9} {'now':>9} {'ratio':>6} {'95% CI':>13}  verdict"
    lines = [f"speed unit: {unit}", head]
    for r in rows:
        ci = f"{r.lo:.2f}-{r.hi:.2f}" if r.lo is not None else "-"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        lines.append(f"{r.key:<30} {_fmt(r.base):>9} {_fmt(r.now):>9} {ratio:>6} {ci:>13}  {r.verdict}"
                     + (f"  ({r.note})" if r.note else ""))
    return lines


def env_line(env: dict[str, Any]) -> str:
    keys = ("device_name", "torch", "cuda", "torch_threads", "nvml_driver", "gpu_sm_clock_mhz",
            "gpu_max_sm_clock_mhz", "gpu_mem_clock_mhz", "gpu_power_limit_w", "gpu_temperature_c", "git_commit")
    return ", ".join(f"{k}={env.get(k)}" for k in keys if env.get(k) is not None)


def summarize(rows: list[Row], echo: Callable[[str], None]) -> int:
    failed = [r for r in rows if r.failed]
    echo(f"would pass at --tolerance >= {needed_tolerance(rows):.3f}")
    if failed:
        echo("check FAILED: " + "; ".join(f"{r.key} {r.verdict}" + (f" ({r.note})" if r.verdict == "WRONG" else "")
                                          for r in failed))
        return 1
    echo(f"check passed ({sum(r.verdict == 'skipped' for r in rows)} skipped)")
    return 0

