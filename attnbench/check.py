"""``bench.py check``: a noise-aware CI gate on kernel correctness and speed.

A small fixed suite of (method, params, n, m) configurations is measured and compared with a
baseline stored under ``baselines/ci/<device-class>.json``.

* Correctness first: every configuration's error against float64 exact attention must stay
  within its tolerance, or the check fails whatever the speed.
* CPU speed is measured as a ratio to plain softmax attention at the same token count, timed
  in the same process in alternation with each configuration (every repetition visits every
  configuration once, in a rotating order), so the gate does not depend on how fast the machine
  is today. On a GPU the per-repetition medians (milliseconds) are compared directly, and the
  baseline is keyed by the device name.
* A configuration regresses only when the 95% bootstrap interval of (median now / median in
  the baseline) lies entirely above ``1 + tolerance``; a configuration that looks slower is
  measured again, and only the second measurement decides.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from attnbench import registry
from attnbench.measure.env import collect_env, git_commit
from attnbench.measure.error import error_metrics, exact_reference
from attnbench.measure.timing import TimingConfig, time_fn
from attnbench.point import make_call
from attnbench.reference import softmax_attention
from attnbench.spec import DTYPES, one_line
from attnbench.workloads import Workload, make_workload

FORMAT = "attnbench-ci-baseline/1"
BASELINE_DIR = Path("baselines/ci")
DEFAULT_TOLERANCE = 0.15
EXACT_FACTOR = 4.0      # an exact method may err up to this many times plain math attention
ERR_RTOL = 0.01         # an approximate method may err 1% more than in its baseline
CONFIDENCE = 0.95
BOOTSTRAP = 2000


class BaselineError(Exception):
    """A baseline file that is missing or cannot be used; the message is one line."""


@dataclass(frozen=True)
class SuiteEntry:
    """One configuration of the suite; ``exact`` methods get a tolerance derived from the dtype."""

    method: str
    n: int
    m: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    exact: bool = False

    @property
    def key(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.method} n={self.n}" + (f" m={self.m}" if self.m is not None else "") + extra


@dataclass(frozen=True)
class Settings:
    """How a suite is measured; stored in the baseline and reused by every check against it."""

    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 1
    heads: int = 6
    head_dim: int = 64
    workload: str = "gaussian"
    seed: int = 0
    repeats: int = 15          # interleaved repetitions per configuration
    block_ms: float = 20.0     # CPU: each repetition times calls of a configuration (and as many of
    parts: int = 5             #   its reference) for at least this many ms, split into this many
                               #   alternating runs of which the fastest counts
    processes: int = 3         # --update: repetitions are split over this many processes, so that
                               #   the baseline holds the spread between processes too
    threads: int = 1           # CPU: torch intra-op threads while measuring


def _suite(methods: Iterable[tuple[str, bool]], ns: Iterable[int], m: int) -> tuple[SuiteEntry, ...]:
    return tuple(SuiteEntry(name, n, None if exact else m, {}, exact)
                 for name, exact in methods for n in ns)


# Methods named here but not registered (yet) are reported as skipped, not errors.
SUITE_METHODS = (("vanilla-math", True), ("vanilla-sdpa", True), ("anchor", False), ("anchor-select", False),
                 ("fused-anchor", False))
CUDA_SUITE_METHODS = SUITE_METHODS + (("vanilla-xformers", True),)
DEFAULT_SUITES = {
    "cpu": (_suite(SUITE_METHODS, (196, 576), 30), Settings()),
    "cuda": (_suite(CUDA_SUITE_METHODS, (1024, 4096, 16384), 64),
             Settings(device="cuda", dtype="bfloat16", repeats=10, processes=1)),
}


# -- device class and baseline files -----------------------------------------------------

def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def device_class(device: str) -> str:
    """'cpu', or the GPU model sanitized to a file name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def default_baseline_path(device: str, root: Path | None = None) -> Path:
    return (root or Path.cwd()) / BASELINE_DIR / f"{device_class(device)}.json"


def load_baseline(path: Path) -> dict[str, Any]:
    """The parsed baseline; BaselineError with a one-line reason when missing or malformed."""
    if not path.exists():
        raise BaselineError(f"baseline {path} is missing; create it with `bench.py check --update`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"baseline {path} is corrupt: {str(exc).splitlines()[0]}") from None
    _validate_baseline(path, data)
    return data


def _validate_baseline(path: Path, data: Any) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BaselineError(f"baseline {path} is corrupt: not a {FORMAT} file")
    if not isinstance(data.get("configs"), list) or not isinstance(data.get("settings"), dict):
        raise BaselineError(f"baseline {path} is corrupt: 'configs' or 'settings' missing")
    try:
        Settings(**data["settings"])
        for c in data["configs"]:
            entry_of(c)
            if c.get("status") == "ok":
                samples = c["samples"]
                if not samples or not all(isinstance(s, (int, float)) and s > 0 for s in samples):
                    raise ValueError(f"{c['method']} has no positive samples")
                float(c["err_rel_fro"])
    except (TypeError, KeyError, ValueError) as exc:
        raise BaselineError(f"baseline {path} is corrupt: {type(exc).__name__}: {exc}") from None


def entry_of(config: dict[str, Any]) -> SuiteEntry:
    return SuiteEntry(str(config["method"]), int(config["n"]),
                      None if config.get("m") is None else int(config["m"]),
                      dict(config.get("params") or {}), bool(config.get("exact", False)))


# -- statistics ----------------------------------------------------------------------------

def ratio_of_medians_ci(now: Iterable[float], base: Iterable[float], *, confidence: float = CONFIDENCE,
                        resamples: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float, float]:
    """median(now) / median(base) and its percentile-bootstrap interval (both samples resampled)."""
    a, b = np.asarray(list(now), float), np.asarray(list(base), float)
    rng = np.random.default_rng(seed)
    ra = np.median(rng.choice(a, (resamples, a.size)), axis=1)
    rb = np.median(rng.choice(b, (resamples, b.size)), axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(ra / rb, [alpha, 1 - alpha])
    return float(np.median(a) / np.median(b)), float(lo), float(hi)


def speed_verdict(ratio: float, lo: float, hi: float, tolerance: float) -> str:
    """'REGRESSION' when the whole interval is above 1+tol, 'faster' when it is below 1-tol."""
    if lo > 1 + tolerance:
        return "REGRESSION"
    if hi < 1 - tolerance:
        return "faster"
    return "ok"


def suspect(ratio: float, lo: float, tolerance: float) -> bool:
    """Worth measuring again: slower than the tolerance by the point estimate or the interval."""
    return ratio > 1 + tolerance or lo > 1 + tolerance


# -- correctness ---------------------------------------------------------------------------

def plain_attention_error(wl: Workload, ref: torch.Tensor) -> float:
    """err_rel_fro of plain softmax(q kᵀ/√d) v computed in the workload's dtype: the precision floor."""
    with torch.no_grad():
        out = softmax_attention(wl.q, wl.k, wl.v, precision=None, block=None)  # (B, H, N, d)
    return error_metrics(out, ref)["err_rel_fro"]


def error_tolerance(entry: SuiteEntry, plain_err: float, base_err: float | None) -> float | None:
    """Exact methods: EXACT_FACTOR x plain attention's error; approximate: baseline error + 1% + that floor."""
    floor = EXACT_FACTOR * plain_err
    if entry.exact:
        return floor
    if base_err is None:
        return None
    return base_err * (1 + ERR_RTOL) + floor


# -- measuring -----------------------------------------------------------------------------

@dataclass
class Measured:
    """One configuration: status, error, and the repeated speed samples."""

    entry: SuiteEntry
    status: str = "ok"                   # ok | skipped | error
    message: str | None = None
    err_rel_fro: float | None = None
    plain_err: float | None = None
    out_finite: bool | None = None
    call: Callable[[], Any] | None = None
    number: int = 1                      # calls per timed block (CPU)
    samples: list[float] = field(default_factory=list)      # ratio to the reference (CPU) or ms (GPU)
    latency_ms: list[float] = field(default_factory=list)


def workloads_for(entries: Iterable[SuiteEntry], s: Settings) -> dict[int, tuple[Workload, torch.Tensor, float]]:
    """Per token count: the seeded workload, its float64 exact output and plain attention's error."""
    out = {}
    for n in sorted({e.n for e in entries}):
        wl = make_workload(s.workload, s.batch, s.heads, n, s.head_dim, dtype=DTYPES[s.dtype],
                           device=s.device, seed=s.seed)
        ref = exact_reference(wl.q, wl.k, wl.v).out                  # (B, H, N, d) float64
        out[n] = (wl, ref, plain_attention_error(wl, ref))
    return out


def prepare(entry: SuiteEntry, s: Settings, wl: Workload, ref: torch.Tensor, plain_err: float) -> Measured:
    """Build the module, check it can run, and measure its error; failures become a status."""
    res = Measured(entry, plain_err=plain_err)
    try:
        info = registry.get_info(entry.method)
    except KeyError:
        return _fail(res, "skipped", f"{entry.method} is not registered")
    try:
        module = registry.build(entry.method, heads=s.heads, head_dim=s.head_dim, params=entry.params,
                                m=entry.m).to(s.device).eval()
        reason = module.unsupported_reason(s.device, s.dtype, entry.n, s.head_dim)
        if reason:
            return _fail(res, "skipped", reason)
        with torch.no_grad():
            out = module(wl.q, wl.k, wl.v, grid=wl.grid)
        err = error_metrics(out, ref)
        res.err_rel_fro, res.out_finite = err["err_rel_fro"], err["out_finite"]
        res.call = make_call(module, wl, "fwd")
    except Exception as exc:  # a failing method is a result of the check, not a crash
        return _fail(res, "error", one_line(exc))
    return res


def _fail(res: Measured, status: str, message: str) -> Measured:
    res.status, res.message = status, message
    return res


def reference_call(wl: Workload) -> Callable[[], Any]:
    """Plain softmax(q kᵀ/√d) v on the workload, written out here (a plugin cannot replace it):
    the CPU speed reference for every configuration with the same token count."""
    q, k, v = wl.q, wl.k, wl.v                                   # (B, H, N, d)

    def call():
        with torch.no_grad():
            return softmax_attention(q, k, v, precision=None, block=None)
    return call


def calls_per_block(fn: Callable[[], Any], block_ms: float) -> int:
    """Warm up, then the number of calls that fills ``block_ms`` milliseconds."""
    fn()
    t0 = time.perf_counter()
    fn()
    one_ms = (time.perf_counter() - t0) * 1e3
    return max(1, math.ceil(block_ms / max(one_ms, 1e-3)))


def time_pair(ref: Callable[[], Any], ref_number: int, fn: Callable[[], Any], number: int,
              parts: int) -> tuple[float, float]:
    """Milliseconds per call of ``ref`` and ``fn``: ``parts`` alternating runs of each (ref, fn,
    ref, fn, ...), the fastest run of each counting. Another process can only add time, so the
    minimum discards interrupted runs, and the alternation exposes both to the same machine state."""
    best = [math.inf, math.inf]
    for _ in range(parts):
        for i, (f, k) in enumerate(((ref, ref_number), (fn, number))):
            t0 = time.perf_counter()
            for _ in range(k):
                f()
            best[i] = min(best[i], (time.perf_counter() - t0) * 1e3 / k)
    return best[0], best[1]


def measure_cpu(items: list[Measured], refs: dict[int, Callable[[], Any]], s: Settings) -> None:
    """Interleaved repetitions: each visits every item once, in a rotating order, timing it in
    alternation with the reference at its token count; the sample is the item's time divided by
    the reference's. One unrecorded repetition warms everything up first."""
    part_ms = s.block_ms / s.parts
    ref_numbers = {n: calls_per_block(fn, part_ms) for n, fn in refs.items()}
    for it in items:
        it.number = calls_per_block(it.call, part_ms)
        it.samples, it.latency_ms = [], []
    for r in range(s.repeats + 1):
        shift = r % len(items)
        for it in items[shift:] + items[:shift]:
            n = it.entry.n
            ref_ms, ms = time_pair(refs[n], ref_numbers[n], it.call, it.number, s.parts)
            if r:
                it.latency_ms.append(ms)
                it.samples.append(ms / ref_ms)


def measure_cuda(items: list[Measured], s: Settings) -> None:
    """Interleaved repetitions of the CUDA-event timer; each sample is one repetition's median ms."""
    cfg = TimingConfig(cuda_warmup_ms=10.0, cuda_rep_ms=50.0)
    for it in items:
        it.samples, it.latency_ms = [], []
    for r in range(s.repeats):
        shift = r % len(items)
        for it in items[shift:] + items[:shift]:
            ms = time_fn(it.call, "cuda", cfg)["latency_ms"]
            it.samples.append(ms)
            it.latency_ms.append(ms)


def measure_speed(items: list[Measured], s: Settings, wls: dict[int, tuple[Workload, Any, Any]]) -> None:
    if not items:
        return
    if s.device == "cuda":
        measure_cuda(items, s)
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        measure_cpu(items, {n: reference_call(wls[n][0]) for n in sorted({it.entry.n for it in items})}, s)
    finally:
        torch.set_num_threads(saved)


def prepare_suite(entries: Iterable[SuiteEntry], s: Settings) -> tuple[list[Measured], dict[int, Any]]:
    """The error of every entry, nothing timed yet.

    Returns the entries and, per token count, (workload, exact output, plain error)."""
    entries = list(entries)
    wls = workloads_for(entries, s)
    return [prepare(e, s, *wls[e.n]) for e in entries], wls


# -- comparing -----------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the verdict table."""

    key: str
    verdict: str
    base: float | None = None
    now: float | None = None
    ratio: float | None = None
    lo: float | None = None
    hi: float | None = None
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict in ("WRONG", "REGRESSION", "ERROR")


def correctness_row(it: Measured, base: dict[str, Any] | None) -> Row | None:
    """A failing row when the entry errs beyond its tolerance (or cannot run); None when it passes."""
    key = it.entry.key
    if it.status == "skipped":
        return Row(key, "skipped", note=it.message or "")
    if it.status == "error":
        return Row(key, "ERROR", note=it.message or "")
    base_err = base.get("err_rel_fro") if base else None
    tol = error_tolerance(it.entry, it.plain_err, base_err)
    if not it.out_finite:
        return Row(key, "WRONG", note="output has inf or NaN")
    if tol is not None and not it.err_rel_fro <= tol:
        return Row(key, "WRONG", note=f"error {it.err_rel_fro:.3g} > tolerance {tol:.3g} vs exact attention")
    return None


def speed_row(it: Measured, base: dict[str, Any], tolerance: float) -> Row:
    ratio, lo, hi = ratio_of_medians_ci(it.samples, base["samples"])
    return Row(it.entry.key, speed_verdict(ratio, lo, hi, tolerance), float(np.median(base["samples"])),
               float(np.median(it.samples)), ratio, lo, hi, note=f"err {it.err_rel_fro:.3g}")


def compare(items: list[Measured], baseline: dict[str, Any], s: Settings, tolerance: float,
            wls: dict[int, Any], plugins: tuple[str, ...] = ()) -> list[Row]:
    """Correctness gate first; then the passing entries are timed together and compared, and
    suspected regressions are measured again in a fresh process; the second measurement decides."""
    base = {entry_of(c).key: c for c in baseline["configs"]}
    rows: dict[str, Row] = {}
    timed = []
    for it in items:
        b = base.get(it.entry.key)
        bad = correctness_row(it, b)
        if bad is not None:
            rows[it.entry.key] = bad
        elif b is None or b.get("status") != "ok":
            rows[it.entry.key] = Row(it.entry.key, "new", note="not measured in the baseline; refresh with --update")
        else:
            timed.append(it)
    measure_speed(timed, s, wls)
    for it in timed:
        rows[it.entry.key] = speed_row(it, base[it.entry.key], tolerance)
    again = [it for it in timed if suspect(rows[it.entry.key].ratio, rows[it.entry.key].lo, tolerance)]
    if again:
        where = remeasure(again, s, wls, plugins)
        for it in again:
            rows[it.entry.key] = speed_row(it, base[it.entry.key], tolerance)
            rows[it.entry.key].note += f"; measured again {where}"
    return [rows[it.entry.key] for it in items]


def remeasure(items: list[Measured], s: Settings, wls: dict[int, Any], plugins: tuple[str, ...]) -> str:
    """New speed samples for ``items``, taken in a fresh process (a process can be persistently
    slow or fast at small kernels, which repetitions inside it do not reveal); in this process
    when no other can be started. Returns where the samples were taken."""
    try:
        fresh = in_fresh_process(items, s, plugins)
        for it in items:
            it.samples, it.latency_ms = fresh[it.entry.key]
        return "in a fresh process"
    except Exception:  # no subprocess here (or it died): fall back, and say so in the table
        measure_speed(items, s, wls)
        return "in the same process"


def in_fresh_process(items: list[Measured], s: Settings, plugins: tuple[str, ...]) -> dict[str, tuple[list, list]]:
    """speed_samples of the items' entries, run in a newly spawned Python process."""
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(speed_samples, [it.entry for it in items], s, plugins).result()


def measure_for_baseline(items: list[Measured], s: Settings, wls: dict[int, Any],
                         plugins: tuple[str, ...]) -> None:
    """The repetitions split over ``s.processes`` processes (this one first), samples pooled."""
    per = max(3, math.ceil(s.repeats / s.processes))
    part = Settings(**{**asdict(s), "repeats": per})
    measure_speed(items, part, wls)
    for _ in range(s.processes - 1):
        fresh = in_fresh_process(items, part, plugins)
        for it in items:
            it.samples += fresh[it.entry.key][0]
            it.latency_ms += fresh[it.entry.key][1]


def speed_samples(entries: list[SuiteEntry], s: Settings, plugins: tuple[str, ...]) -> dict[str, tuple[list, list]]:
    """Run in a fresh process: load the plugins, build the entries and time them."""
    for spec in plugins:
        registry.load_plugin(spec)
    items, wls = prepare_suite(entries, s)
    bad = [it for it in items if it.status != "ok"]
    if bad:
        raise RuntimeError(f"{bad[0].entry.key} did not run in the fresh process: {bad[0].message}")
    measure_speed(items, s, wls)
    return {it.entry.key: (it.samples, it.latency_ms) for it in items}


def needed_tolerance(rows: list[Row]) -> float:
    """The smallest --tolerance at which no speed row would be a regression (0 if none is slower)."""
    return max([0.0] + [r.lo - 1 for r in rows if r.lo is not None])


# -- baseline writing ----------------------------------------------------------------------

def measured_env(s: Settings) -> dict[str, Any]:
    """collect_env, with the thread count the CPU timings ran under."""
    env = collect_env(s.device, s.seed)
    env["torch_threads"] = s.threads if s.device == "cpu" else env["torch_threads"]
    return env


def baseline_dict(items: list[Measured], s: Settings, argv: list[str] | None) -> dict[str, Any]:
    env = measured_env(s)
    return {
        "format": FORMAT,
        "device_class": device_class(s.device),
        "unit": "ms" if s.device == "cuda" else "ratio to plain attention at the same n",
        "provenance": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       "commit": git_commit(), "command": argv, "env": env},
        "settings": asdict(s),
        "configs": [config_dict(it) for it in items],
    }


def config_dict(it: Measured) -> dict[str, Any]:
    e = it.entry
    out = {"key": e.key, "method": e.method, "n": e.n, "m": e.m, "params": e.params, "exact": e.exact,
           "status": it.status, "message": it.message, "err_rel_fro": it.err_rel_fro,
           "plain_err_rel_fro": it.plain_err}
    if it.status == "ok":
        out.update(median=float(np.median(it.samples)), median_ms=float(np.median(it.latency_ms)),
                   samples=[round(x, 6) for x in it.samples])
    return out


def update_problems(items: list[Measured]) -> list[Row]:
    """Rows that forbid writing a baseline: exact methods that are wrong, or errors."""
    rows = [correctness_row(it, None) for it in items]
    return [r for r in rows if r is not None and r.failed]


def baseline_diff(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """One line per configuration added, removed or changed between two baselines."""
    if old is None:
        return [f"new baseline with {len(new['configs'])} configurations"]
    before = {c["key"]: c for c in old.get("configs", []) if isinstance(c, dict) and "key" in c}
    after = {c["key"]: c for c in new["configs"]}
    lines = [f"- {k}" for k in before if k not in after] + [f"+ {k}" for k in after if k not in before]
    for k in (k for k in after if k in before):
        a, b = before[k], after[k]
        lines.append(f"~ {k}: median {_fmt(a.get('median'))} -> {_fmt(b.get('median'))}, "
                     f"err {_fmt(a.get('err_rel_fro'))} -> {_fmt(b.get('err_rel_fro'))}, "
                     f"status {a.get('status')} -> {b.get('status')}")
    return lines


def _fmt(x: Any) -> str:
    return "-" if x is None else (f"{x:.4g}" if isinstance(x, (int, float)) else str(x))


# -- choosing the suite --------------------------------------------------------------------

def select_entries(entries: Iterable[SuiteEntry], methods: tuple[str, ...] | None) -> list[SuiteEntry]:
    """The entries of ``methods`` (all when None), in suite order."""
    return [e for e in entries if methods is None or e.method in methods]


def update_suite(device: str, methods: tuple[str, ...] | None, ns: tuple[int, ...] | None,
                 m: int | None) -> list[SuiteEntry]:
    """The default suite, narrowed to ``methods``; ``ns``/``m`` replace its shapes.

    A method named in ``methods`` but absent from the default suite joins it; it counts as
    exact when its family is 'vanilla'.
    """
    default, _ = DEFAULT_SUITES["cuda" if device == "cuda" else "cpu"]
    exact = {e.method: e.exact for e in default}
    names = methods or tuple(dict.fromkeys(e.method for e in default))
    ns = ns or tuple(sorted({e.n for e in default}))
    m = m or next(e.m for e in default if e.m is not None)
    out = []
    for name in names:
        is_exact = exact.get(name, _family(name) == "vanilla")
        out += [SuiteEntry(name, n, None if is_exact or not _budgeted(name) else m, {}, is_exact) for n in ns]
    return out


def _family(name: str) -> str | None:
    try:
        return registry.get_info(name).family
    except KeyError:
        return None


def _budgeted(name: str) -> bool:
    try:
        return registry.get_info(name).budget is not None
    except KeyError:
        return True


# -- printing ------------------------------------------------------------------------------

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


# -- the two entry points ------------------------------------------------------------------

@dataclass(frozen=True)
class CheckOptions:
    """The command line of ``check`` as data; the shape options apply to ``--update`` only."""

    device: str
    baseline: Path
    tolerance: float = DEFAULT_TOLERANCE
    methods: tuple[str, ...] | None = None
    repeats: int | None = None
    ns: tuple[int, ...] | None = None
    m: int | None = None
    heads: int | None = None
    head_dim: int | None = None
    block_ms: float | None = None
    plugins: tuple[str, ...] = ()      # loaded again by the process that re-measures suspects


def settings_for_check(baseline: dict[str, Any], opts: CheckOptions) -> Settings:
    """The baseline's settings (repeats overridable); BaselineError if it belongs elsewhere."""
    s = Settings(**baseline["settings"])
    if s.device != opts.device:
        raise BaselineError(f"baseline {opts.baseline} was measured on {s.device}, this check runs on {opts.device}")
    if s.device == "cuda":
        stored = (baseline.get("provenance") or {}).get("env", {}).get("device_name")
        if stored != device_name("cuda"):
            raise BaselineError(f"baseline {opts.baseline} is for {stored!r}, this GPU is {device_name('cuda')!r}")
    return Settings(**{**asdict(s), "repeats": opts.repeats or s.repeats})


def run_check(opts: CheckOptions, echo: Callable[[str], None]) -> int:
    """Measure the baseline's configurations and print the verdict table; 0 pass, 1 fail."""
    baseline = load_baseline(opts.baseline)
    s = settings_for_check(baseline, opts)
    entries = select_entries((entry_of(c) for c in baseline["configs"]), opts.methods)
    if not entries:
        raise BaselineError(f"baseline {opts.baseline} has no configuration of {', '.join(opts.methods or ())}")
    items, wls = prepare_suite(entries, s)
    rows = compare(items, baseline, s, opts.tolerance, wls, opts.plugins)
    echo(f"check against {opts.baseline} (tolerance {opts.tolerance:g}, {s.repeats} interleaved repetitions)")
    for line in format_table(rows, baseline.get("unit", "?")):
        echo(line)
    echo(f"now:      {env_line(measured_env(s))}")
    echo(f"baseline: {env_line((baseline.get('provenance') or {}).get('env', {}))}, "
         f"date={(baseline.get('provenance') or {}).get('date')}")
    return summarize(rows, echo)


def summarize(rows: list[Row], echo: Callable[[str], None]) -> int:
    failed = [r for r in rows if r.failed]
    echo(f"would pass at --tolerance >= {needed_tolerance(rows):.3f}")
    if failed:
        echo("check FAILED: " + "; ".join(f"{r.key} {r.verdict}" for r in failed))
        return 1
    echo(f"check passed ({sum(r.verdict == 'skipped' for r in rows)} skipped)")
    return 0


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


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
