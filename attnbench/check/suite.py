"""The suite: which (method, n, m) configurations the gate measures, and how."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from attnbench import registry

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
    check_workload: str = ""   # the inputs of the correctness part ("": ``workload``, older baselines)
    fit: str = "none"          # how learnable state is fitted before the correctness part: none | closed
                               #   (on check_workload's 'fit' split, outside timing)


def correctness_workload(s: Settings) -> str:
    """The workload the correctness part runs on (the speed part always uses ``s.workload``)."""
    return s.check_workload or s.workload


def _suite(methods: Iterable[tuple[str, bool]], ns: Iterable[int], m: int) -> tuple[SuiteEntry, ...]:
    return tuple(SuiteEntry(name, n, None if exact else m, {}, exact)
                 for name, exact in methods for n in ns)


# Methods named here but not registered (yet) are reported as skipped, not errors.
SUITE_METHODS = (("vanilla-math", True), ("vanilla-sdpa", True), ("anchor", False), ("anchor-select", False),
                 ("fused-anchor", False), ("nystrom", False), ("window", False))
CUDA_SUITE_METHODS = SUITE_METHODS + (("vanilla-xformers", True),)
DEFAULT_SUITES = {
    "cpu": (_suite(SUITE_METHODS, (196, 576), 30), Settings(check_workload="image", fit="closed")),
    "cuda": (_suite(CUDA_SUITE_METHODS, (1024, 4096, 16384), 64),
             Settings(device="cuda", dtype="bfloat16", repeats=10, processes=1, check_workload="image",
                      fit="closed")),
}



def entry_of(config: dict[str, Any]) -> SuiteEntry:
    return SuiteEntry(str(config["method"]), int(config["n"]),
                      None if config.get("m") is None else int(config["m"]),
                      dict(config.get("params") or {}), bool(config.get("exact", False)))



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

