"""The executor options of the commands that measure points, and their SweepConfig fields."""
from __future__ import annotations

import os
from typing import Any

import click

from attnbench.run import EXECUTORS
from attnbench.spec import SpecError

OPTIONS = [
    click.option("--executor", default=lambda: os.environ.get("ATTNBENCH_EXECUTOR", "process"),
                 show_default="process, or $ATTNBENCH_EXECUTOR",
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
]


def settings(opts: dict[str, Any], timeout_s: float, plugins: tuple[str, ...]) -> dict[str, Any]:
    """Checked SweepConfig fields from the parsed options."""
    executor = opts["executor"]
    if executor not in EXECUTORS:
        raise SpecError(f"unknown --executor {executor!r}; use {', '.join(EXECUTORS)}")
    for name in ("workers", "point_timeout_s", "worker_mem_limit"):
        if opts[name] is not None and opts[name] <= 0:
            raise SpecError(f"--{name.replace('_s', '').replace('_', '-')} must be positive, got {opts[name]}")
    if opts["ray_address"] and executor != "ray":
        raise SpecError("--ray-address needs --executor ray")
    limit = opts["worker_mem_limit"]
    return {"executor": executor, "workers": opts["workers"],
            "point_timeout_s": opts["point_timeout_s"] or 10 * timeout_s,
            "worker_mem_limit": int(limit * 2 ** 30) if limit else None, "plugins": tuple(plugins),
            "retry_failed": opts["retry_failed"], "ray_address": opts["ray_address"]}
