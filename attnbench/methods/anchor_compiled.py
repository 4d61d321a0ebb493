"""``anchor`` through torch.compile: the compiler-fused counterpart of ``fused-anchor``.

Same parameters, anchors and math as ``anchor``. The timed closure (``bench_fn``) runs the
compiled forward; compiling happens in ``bench_fn`` before the closure is returned, so it is
never inside a timed call, and its duration is stored in the row as ``impl.compile_time_s``.
Each row compiles afresh (``torch._dynamo.reset()`` first, ``dynamic=False``): the compile time
is that of the row's shape, and sweeps over many shapes never hit dynamo's recompile limit
(beyond which it would silently run eager). A failing compile raises, which the sweep turns
into an error row carrying the compiler's message.

``forward`` (used for FLOP counts and the error columns) is the eager ``anchor`` math; the
row's ``impl.compiled_vs_eager_max_abs`` says how far the compiled output is from it.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from attnbench.methods.anchor import AnchorAttention, anchor_attention
from attnbench.registry import register
from attnbench.spec import one_line


class CompileError(RuntimeError):
    """torch.compile failed for this method and shape."""


@register("anchor-compiled", family="anchor", budget="m", uses_query=False,
          defaults={"m": 30, "backend": "inductor"},
          description="torch.compile of the anchor forward (compiler-fused)")
class AnchorCompiled(AnchorAttention):
    """``anchor`` compiled with ``torch.compile(backend=..., mode=...)``, one compile per row."""

    def __init__(self, heads: int, head_dim: int, m: int = 30, shared: bool = False, seed: int = 0,
                 backend: str = "inductor", mode: str | None = None):
        super().__init__(heads, head_dim, m=m, shared=shared, seed=seed)
        self.backend, self.mode = str(backend), mode
        self.compile_time_s: float | None = None
        self.compiled_vs_eager_max_abs: float | None = None
        self.compiled_with_grad: bool | None = None

    def _eager(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return anchor_attention(self.anchors.to(dtype=k.dtype), k, v, self.scale)

    def compile_forward(self, k: torch.Tensor, v: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Compile for (k, v)'s shapes and run once (and its backward if k or v needs a grad)."""
        torch._dynamo.reset()
        try:
            fn = torch.compile(self._eager, backend=self.backend, mode=self.mode, dynamic=False, fullgraph=True)
            t0 = time.perf_counter()
            out = self._warm_up(fn, k, v)
            self.compile_time_s = time.perf_counter() - t0
        except Exception as exc:
            raise CompileError(f"torch.compile(backend={self.backend!r}) failed: {one_line(exc)}") from exc
        with torch.no_grad():
            self.compiled_vs_eager_max_abs = float((out.detach() - self._eager(k, v)).abs().max())
        return fn

    def _warm_up(self, fn, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One call in the grad mode of the timed calls: fwdbwd inputs require grad, fwd ones don't."""
        leaves = [t for t in (k, v, self.anchors) if t.requires_grad]
        self.compiled_with_grad = k.requires_grad or v.requires_grad
        if not self.compiled_with_grad:
            with torch.no_grad():
                return fn(k, v)
        out = fn(k, v)
        torch.autograd.grad(out, leaves, torch.ones_like(out))  # compiles the backward graph too
        return out

    def bench_fn(self, q, k, v, grid=None):
        fn = self.compile_forward(k, v)
        return lambda: fn(k, v)

    def backend_info(self, q, k, v, grid=None) -> dict[str, Any]:
        return {"compiler": "torch.compile", "backend": self.backend, "mode": self.mode, "dynamic": False,
                "fullgraph": True, "compile_time_s": self.compile_time_s,
                "compile_includes_backward": self.compiled_with_grad,
                "compiled_vs_eager_max_abs": self.compiled_vs_eager_max_abs}
