"""``bench.py check``: a noise-aware CI gate on kernel correctness and speed.

A small fixed suite of (method, params, n, m) configurations is measured and compared with a
baseline stored under ``baselines/ci/<device-class>.json``.

* Correctness first: every configuration's error against float64 exact attention must stay
  within its tolerance, or the check fails whatever the speed.
* Against a stored baseline, CPU speed is a ratio to plain softmax attention at the same token
  count, timed in the same process in alternation with each configuration (every repetition
  visits every configuration once, in a rotating order); on a GPU the per-repetition medians
  (milliseconds) are compared directly, and the baseline is keyed by the device name.
* Off the baseline's machine class, or with ``--base REV``, the working tree is measured side by
  side with a git revision instead: fresh pairs of worker processes, time(head) / time(base).
* A configuration regresses only when the 95% bootstrap interval of its statistic lies entirely
  above ``1 + tolerance``; a configuration that looks slower is measured again in fresh
  processes, and only the second measurement decides.

Modules: ``suite`` (the configurations and settings), ``baselines`` (files), ``device`` (machine
class), ``prepare`` (workloads, building, errors), ``timing`` (one process), ``processes`` (fresh
processes), ``stats`` (bootstrap), ``verdict`` (correctness and speed rows), ``output`` (printing),
``modes`` (which comparison), ``revision`` (git), ``ab``/``abcheck``/``worker`` (the A/B run) and
``entry`` (``run_check``, ``run_update``).
"""
from attnbench.check.baselines import (BASELINE_DIR, FORMAT, BaselineError, default_baseline_path, device_class,
                                       device_name, load_baseline)
from attnbench.check.entry import CheckOptions, run_check, run_update
from attnbench.check.modes import AB_TOLERANCE, DEFAULT_TOLERANCE, FALLBACK_TOLERANCE
from attnbench.check.prepare import Measured, plain_attention_error, prepare_suite
from attnbench.check.stats import ratio_of_medians_ci, speed_verdict
from attnbench.check.suite import DEFAULT_SUITES, Settings, SuiteEntry, entry_of
from attnbench.check.verdict import ERR_RTOL, EXACT_FACTOR, Row, error_tolerance

__all__ = ["BASELINE_DIR", "FORMAT", "BaselineError", "default_baseline_path", "device_class", "device_name",
           "load_baseline", "DEFAULT_TOLERANCE", "AB_TOLERANCE", "FALLBACK_TOLERANCE", "CheckOptions",
           "run_check", "run_update", "Measured", "plain_attention_error", "prepare_suite", "ratio_of_medians_ci",
           "speed_verdict", "DEFAULT_SUITES", "Settings", "SuiteEntry", "entry_of", "ERR_RTOL", "EXACT_FACTOR",
           "Row", "error_tolerance"]
