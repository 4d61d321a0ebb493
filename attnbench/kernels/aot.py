"""What a kernel module declares so that its Triton kernels can be compiled ahead of time.

Each kernel module lists its kernels as ``KernelSpec`` values (``AOT_KERNELS``); the audit
(``attnbench.kernels.audit``) compiles every declared kernel for GPUs this machine need not have.
Importing this module does not import triton.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

TRITON_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
DIVISIBLE = [["tt.divisibility", 16]]  # what a launch infers for 16-aligned pointers and ints


@dataclass(frozen=True)
class KernelSpec:
    """One Triton kernel and how its launches are typed.

    kernel: the ``@triton.autotune``-wrapped or plain ``@triton.jit`` function.
    io_pointers: pointer arguments in the input dtype; other ``*_ptr`` arguments are float32.
    floats: float32 scalar arguments. units: integer arguments that are 1 at every launch (a
    contiguous last dimension's stride; a launch makes them constants). aligned: integer
    arguments that are multiples of 16 at the audited shapes (a launch marks them so).
    constexprs(m_pad, d_pad, dtype): the constexpr arguments other than the tuned ones.
    dots: the kernel multiplies tiles (tl.dot), so 16-bit inputs should use tensor cores.
    launch: (num_warps, num_stages) of a kernel that is not autotuned.
    """

    name: str
    kernel: Any
    io_pointers: frozenset[str]
    floats: frozenset[str] = frozenset()
    units: frozenset[str] = frozenset()
    aligned: frozenset[str] = frozenset()
    constexprs: Callable[[int, int, str], dict[str, Any]] = field(default=lambda m_pad, d_pad, dtype: {})
    dots: bool = True
    launch: tuple[int, int] = (4, 2)

    @property
    def jit_fn(self) -> Any:
        """The ``JITFunction`` beneath any autotuner."""
        return self.kernel.fn if hasattr(self.kernel, "configs") else self.kernel


@dataclass(frozen=True)
class TuneConfig:
    """One configuration a launch may use: tuned constexprs, warps, pipeline stages."""

    kwargs: tuple[tuple[str, Any], ...]
    num_warps: int
    num_stages: int
    kept: bool = True  # False: the prune function drops it for this shape

    def label(self) -> str:
        tuned = " ".join(f"{k}={v}" for k, v in self.kwargs)
        return f"{tuned} w{self.num_warps} s{self.num_stages}".strip()


def configs_for(spec: KernelSpec, m_pad: int, d_pad: int, dtype: str, include_pruned: bool = False
                ) -> list[TuneConfig]:
    """The configurations the autotuner may pick for this shape (its prune function applied);
    with ``include_pruned`` also the dropped ones, marked ``kept=False``."""
    kernel = spec.kernel
    if not hasattr(kernel, "configs"):
        return [TuneConfig((), *spec.launch)]
    consts = spec.constexprs(m_pad, d_pad, dtype)
    prune = getattr(kernel, "early_config_prune", None)
    kept = prune(kernel.configs, {}, **consts) if prune else kernel.configs
    out = []
    for cfg in kernel.configs:
        if cfg in kept or include_pruned:
            out.append(TuneConfig(tuple(sorted(cfg.kwargs.items())), cfg.num_warps, cfg.num_stages, cfg in kept))
    return out


def signature(spec: KernelSpec, m_pad: int, d_pad: int, dtype: str, config: TuneConfig
              ) -> tuple[dict[str, str], dict[str, Any], dict[tuple[int], list]]:
    """(signature, constexprs, attrs) for ``triton.compile(ASTSource(...))`` as a launch infers them."""
    fn = spec.jit_fn
    consts = {**spec.constexprs(m_pad, d_pad, dtype), **dict(config.kwargs)}
    consts.update({name: 1 for name in spec.units})
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + (TRITON_DTYPES[dtype] if name in spec.io_pointers else "fp32")
            attrs[(i,)] = DIVISIBLE
        elif name in spec.floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name in spec.aligned:
                attrs[(i,)] = DIVISIBLE
    missing = set(consts) - set(fn.arg_names)
    if missing:
        raise ValueError(f"{spec.name}: constexprs {sorted(missing)} are not arguments of the kernel")
    return sig, consts, attrs
