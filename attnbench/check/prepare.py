"""Preparing the suite: seeded workloads, each configuration built, run once and its error measured."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from attnbench import registry
from attnbench.check.suite import Settings, SuiteEntry
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
        registry.get_info(entry.method)
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



def prepare_suite(entries: Iterable[SuiteEntry], s: Settings) -> tuple[list[Measured], dict[int, Any]]:
    """The error of every entry, nothing timed yet.

    Returns the entries and, per token count, (workload, exact output, plain error)."""
    entries = list(entries)
    wls = workloads_for(entries, s)
    return [prepare(e, s, *wls[e.n]) for e in entries], wls

