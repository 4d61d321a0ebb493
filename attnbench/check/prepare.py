"""Preparing the suite: seeded workloads, each configuration built, fitted, run once and its
error and output fingerprint measured on the correctness inputs; its timed call on the speed inputs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple

import torch

from attnbench import registry
from attnbench.check.outputs import fingerprint, module_state
from attnbench.check.suite import Settings, SuiteEntry, correctness_workload
from attnbench.fit import fit_module
from attnbench.measure.error import error_metrics, exact_reference
from attnbench.point import make_call
from attnbench.reference import softmax_attention
from attnbench.spec import DTYPES, one_line
from attnbench.workloads import Workload, make_workload


def plain_attention_error(wl: Workload, ref: torch.Tensor) -> float:
    """err_rel_fro of plain softmax(q kᵀ/√d) v computed in the workload's dtype: the precision floor."""
    with torch.no_grad():
        out = softmax_attention(wl.q, wl.k, wl.v, precision=None, block=None)  # (B, H, N, d)
    return error_metrics(out, ref)["err_rel_fro"]


@dataclass
class Measured:
    """One configuration: status, error, and the repeated speed samples."""

    entry: SuiteEntry
    status: str = "ok"                   # ok | skipped | error
    message: str | None = None
    err_rel_fro: float | None = None
    plain_err: float | None = None
    out_finite: bool | None = None
    out: torch.Tensor | None = None      # (B, H, N, d) on the correctness inputs, on CPU
    fingerprint: dict[str, Any] | None = None
    state: dict[str, Any] | None = None  # outputs.module_state after fitting (shared in A/B mode)
    fit_info: dict[str, Any] | None = None
    out_diff: float | None = None        # relative difference from the base's output, once compared
    call: Callable[[], Any] | None = None
    number: int = 1                      # calls per timed block (CPU)
    samples: list[float] = field(default_factory=list)      # ratio to the reference (CPU) or ms (GPU)
    latency_ms: list[float] = field(default_factory=list)


class SuiteInputs(NamedTuple):
    """Per token count: what the speed part times on, and what the correctness part judges on."""

    speed: Workload               # timed calls (and the CPU speed reference)
    ref: torch.Tensor             # float64 exact output on ``check``, (B, H, N, d)
    plain_err: float              # plain attention's error on ``check``: the precision floor
    check: Workload               # the correctness inputs (the same object as ``speed`` when alike)
    fit: Callable[[], Workload]   # the fitting split of the correctness workload, built lazily


def _workload(spec: str, s: Settings, n: int, split: str = "eval") -> Workload:
    return make_workload(spec, s.batch, s.heads, n, s.head_dim, dtype=DTYPES[s.dtype], device=s.device,
                         seed=s.seed, split=split)


def workloads_for(entries: Iterable[SuiteEntry], s: Settings, correctness: bool = True) -> dict[int, SuiteInputs]:
    """Per token count: the seeded speed workload and (with ``correctness``) the correctness
    workload, its float64 exact output and plain attention's error on it."""
    out = {}
    cw = correctness_workload(s)
    for n in sorted({e.n for e in entries}):
        speed = _workload(s.workload, s, n)
        fit: dict[str, Workload] = {}

        def fit_split(n=n, fit=fit):
            if "wl" not in fit:
                fit["wl"] = _workload(cw, s, n, split="fit")
            return fit["wl"]
        if not correctness:
            out[n] = SuiteInputs(speed, None, None, speed, fit_split)
            continue
        check = speed if cw == s.workload else _workload(cw, s, n)
        ref = exact_reference(check.q, check.k, check.v).out                  # (B, H, N, d) float64
        out[n] = SuiteInputs(speed, ref, plain_attention_error(check, ref), check, fit_split)
    return out


def prepare(entry: SuiteEntry, s: Settings, inputs: SuiteInputs, correctness: bool = True) -> Measured:
    """Build the module, check it can run, fit it (``s.fit``), measure its error and output
    fingerprint on the correctness inputs, and make its timed call; failures become a status."""
    res = Measured(entry, plain_err=inputs.plain_err)
    try:
        registry.get_info(entry.method)
    except KeyError:
        return _fail(res, "skipped", f"{entry.method} is not registered")
    try:
        module = registry.build(entry.method, heads=s.heads, head_dim=s.head_dim, params=entry.params,
                                m=entry.m).to(s.device).eval()
        reason = module.unsupported_reason(s.device, s.dtype, entry.n, s.head_dim)
        if reason:
            return _fail(res, "skipped", reason)
        if correctness:
            _judge_outputs(res, module, s, inputs)
        res.call = make_call(module, inputs.speed, "fwd")
    except Exception as exc:  # a failing method is a result of the check, not a crash
        return _fail(res, "error", one_line(exc))
    return res


def _judge_outputs(res: Measured, module: torch.nn.Module, s: Settings, inputs: SuiteInputs) -> None:
    """Fit (outside any timing), then the output on the correctness inputs: error, fingerprint, state."""
    saved = torch.get_num_threads()
    if s.device == "cpu":
        torch.set_num_threads(s.threads)   # the same reduction order wherever the baseline is compared
    try:
        res.fit_info = fit_module(s.fit, module, inputs.fit, None)["fit_info"]
        wl = inputs.check
        with torch.no_grad():
            out = module(wl.q, wl.k, wl.v, grid=wl.grid)                     # (B, H, N, d)
    finally:
        torch.set_num_threads(saved)
    err = error_metrics(out, inputs.ref)
    res.err_rel_fro, res.out_finite = err["err_rel_fro"], err["out_finite"]
    res.out = out.detach().cpu()
    res.fingerprint = fingerprint(res.out)
    res.state = module_state(module)


def _fail(res: Measured, status: str, message: str) -> Measured:
    res.status, res.message = status, message
    return res



def prepare_suite(entries: Iterable[SuiteEntry], s: Settings,
                  correctness: bool = True) -> tuple[list[Measured], dict[int, SuiteInputs]]:
    """The error and output of every entry (without ``correctness``: only its timed call), nothing
    timed yet. Returns the entries and, per token count, their SuiteInputs."""
    entries = list(entries)
    wls = workloads_for(entries, s, correctness)
    return [prepare(e, s, wls[e.n], correctness) for e in entries], wls

