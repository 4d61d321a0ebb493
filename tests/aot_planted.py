"""Deliberately bad kernels for the ahead-of-time audit's own tests (not part of the package).

_planted_spill keeps a 128 × 64 float32 tile live in one warp across a column reduction
(256 values a thread, above the 255-register maximum); _planted_error fails its static assertion for the configured tile;
_planted_no_tc multiplies 16-bit tiles by broadcasting instead of tl.dot (no tensor cores).
"""
import triton
import triton.language as tl

from attnbench.kernels.aot import KernelSpec


@triton.jit
def _planted_spill(x_ptr, y_ptr, ROWS: tl.constexpr, COLS: tl.constexpr):
    rows, cols = tl.arange(0, ROWS), tl.arange(0, COLS)
    x = tl.load(x_ptr + rows[:, None] * COLS + cols[None, :])          # (ROWS, COLS)
    p = x - tl.max(x, axis=0)[None, :]
    tl.store(y_ptr + rows[:, None] * COLS + cols[None, :], p / tl.sum(p, axis=0)[None, :])


@triton.jit
def _planted_error(x_ptr, BLOCK: tl.constexpr):
    tl.static_assert(BLOCK <= 64, "tile too large")
    tl.store(x_ptr + tl.arange(0, BLOCK), tl.zeros((BLOCK,), dtype=tl.float32))


@triton.jit
def _planted_no_tc(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + offs[:, None] * BLOCK + offs[None, :])
    b = tl.load(b_ptr + offs[:, None] * BLOCK + offs[None, :])
    c = tl.sum(a[:, :, None].to(tl.float32) * b[None, :, :].to(tl.float32), axis=1)   # a @ b, no tl.dot
    tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], c)


AOT_KERNELS = (
    KernelSpec("_planted_spill", _planted_spill, frozenset({"x_ptr"}), constexprs=lambda m, d, t: {"ROWS": 128, "COLS": 64},
               dots=False, launch=(1, 1)),
    KernelSpec("_planted_error", _planted_error, frozenset(), constexprs=lambda m, d, t: {"BLOCK": 128},
               dots=False, launch=(4, 1)),
    KernelSpec("_planted_no_tc", _planted_no_tc, frozenset({"a_ptr", "b_ptr"}),
               constexprs=lambda m, d, t: {"BLOCK": 16}, dots=True, launch=(4, 1)),
)
