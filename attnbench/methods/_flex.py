"""FlexAttention plumbing shared by the ``*-flex`` members (torch.nn.attention.flex_attention).

A member describes its pattern as a token-level "may attend" mask; this module turns it into a
``BlockMask`` (blocks of ``FLEX_BLOCK`` queries × ``FLEX_BLOCK`` keys, each empty, partial or
full), counts what is computed, and runs flex_attention eagerly or compiled:

* ``block_density``: computed (partial + full) block pairs / all block pairs of the sequence
  flex runs on, averaged over batch and heads.
* ``pair_density``: token pairs the pattern needs (real query, real key) / N².
* ``macs_blocks``: q kᵀ and P v over every computed block (its true extent at the sequence end);
  ``macs_pairs``: the same products over the needed pairs only.

Both densities are counted here from the mask, never taken from ``BlockMask.sparsity()``.

Eager flex_attention (no torch.compile) materialises the full score matrix: it is the tested
path at small N. ``FlexMixin.bench_fn`` compiles (inductor, ``dynamic=False``) before returning
the timed closure, so compilation never sits inside a timed call; its duration goes to
``impl.compile_time_s`` and later calls of ``forward`` use the compiled kernel. Compiled flex on CPU
is inference only in torch 2.13 (inductor's CPU template has no backward): fwdbwd rows on CPU are
error rows saying so; a CPU that inductor refuses (no AVX2) makes the rows unsupported.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

FLEX_BLOCK = 128  # query and key block side of every BlockMask built here


def flex_reason() -> str | None:
    """None when torch.nn.attention.flex_attention is importable, else a sentence."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except Exception as exc:  # an old torch, or a broken build raising at import
        return f"torch {torch.__version__} has no usable FlexAttention ({type(exc).__name__}: {str(exc)[:120]})."
    return None


@dataclass(frozen=True)
class BlockStats:
    """What a block mask computes, summed over batch and heads (see the module docstring)."""

    block_density: float
    pair_density: float
    macs_blocks: int      # per unit of (2 · head_dim): multiply by 2·d for q kᵀ and P v
    macs_pairs: int       # likewise, over the needed pairs

    def impl(self, head_dim: int) -> dict[str, Any]:
        return {"block_size": FLEX_BLOCK, "block_density": self.block_density, "pair_density": self.pair_density,
                "macs_computed_blocks": 2 * head_dim * self.macs_blocks,
                "macs_needed_pairs": 2 * head_dim * self.macs_pairs}


def block_extents(length: int, block: int = FLEX_BLOCK, device=None) -> torch.Tensor:
    """(ceil(length / block),) tokens in each block; the last one may be short."""
    starts = torch.arange(0, length, block, device=device)
    return torch.clamp(length - starts, max=block)


def block_kinds(allowed: torch.Tensor, block: int = FLEX_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) bool (B, H, nq, nk) block maps of a token mask ``allowed`` (B, H, L, L)."""
    b, h, lq, lk = allowed.shape
    nq, nk = math.ceil(lq / block), math.ceil(lk / block)
    padded = torch.zeros(b, h, nq * block, nk * block, dtype=torch.bool, device=allowed.device)
    padded[..., :lq, :lk] = allowed
    counts = padded.view(b, h, nq, block, nk, block).sum((3, 5))            # (B, H, nq, nk)
    return block_kinds_from_counts(counts, lq, lk, block)


def block_kinds_from_counts(counts: torch.Tensor, lq: int, lk: int,
                            block: int = FLEX_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) block maps from allowed-pair counts per block (..., nq, nk)."""
    area = block_extents(lq, block, counts.device)[:, None] * block_extents(lk, block, counts.device)[None, :]
    full = counts == area
    return (counts > 0) & ~full, full


def _ordered(kinds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts (B, H, nq) int32, indices (B, H, nq, nk) int32 with the set blocks first)."""
    order = torch.argsort((~kinds).to(torch.int8), dim=-1, stable=True)
    return kinds.sum(-1).to(torch.int32), order.to(torch.int32)


def make_block_mask(partial: torch.Tensor, full: torch.Tensor, mask_mod: Callable | None,
                    lq: int, lk: int, block: int = FLEX_BLOCK):
    """A flex BlockMask over (lq, lk) tokens from partial/full block maps (B, H, nq, nk).

    Partial blocks apply ``mask_mod`` token by token; full blocks skip it."""
    from torch.nn.attention.flex_attention import BlockMask

    kv_num, kv_idx = _ordered(partial)
    full_num, full_idx = _ordered(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=mask_mod, seq_lengths=(lq, lk))


def block_stats(partial: torch.Tensor, full: torch.Tensor, pairs: int | float, n: int,
                lq: int, lk: int, block: int = FLEX_BLOCK) -> BlockStats:
    """Densities and MAC units of a block map; ``pairs``: needed token pairs summed over (B, H)."""
    bh = partial.shape[0] * partial.shape[1]
    computed = partial | full
    area = block_extents(lq, block, computed.device)[:, None] * block_extents(lk, block, computed.device)[None, :]
    return BlockStats(block_density=float(computed.float().mean()),
                      pair_density=float(pairs) / (bh * n * n),
                      macs_blocks=int((computed * area).sum()), macs_pairs=int(pairs))


def dense_stats(batch: int, heads: int, n: int) -> BlockStats:
    """No mask: every block and every pair."""
    return BlockStats(1.0, 1.0, batch * heads * n * n, batch * heads * n * n)


def expand_stats(stats: BlockStats, factor: int) -> BlockStats:
    """A pattern shared by ``factor`` (batch, head) pairs counted once for each of them."""
    return BlockStats(stats.block_density, stats.pair_density, stats.macs_blocks * factor, stats.macs_pairs * factor)


def eager_flex(q, k, v, block_mask=None, score_mod=None, scale=None):
    """flex_attention without torch.compile (the unfused path: full score matrix), warning silenced."""
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)


CPU_INFERENCE_ONLY = ("compiled FlexAttention on CPU is inference only in this torch (inductor's CPU template "
                      "has no backward); fwdbwd rows need CUDA")


def cpu_compile_reason() -> str | None:
    """None when inductor can compile flex_attention on this CPU, else its requirement as a sentence."""
    try:
        from torch._inductor.kernel.flex.flex_cpu import check_cpu_supported
    except Exception:  # a torch without that module: let compilation itself say what fails
        return None
    if check_cpu_supported():
        return None
    return ("compiled FlexAttention on CPU needs AVX2 (and ATEN_CPU_CAPABILITY other than 'default'), "
            "no XPU and not macOS; inductor refuses this machine")


def block_mask_macs(block_mask, batch: int, heads: int, qk_dim: int, v_dim: int) -> int:
    """Multiply-adds of q kᵀ and P v over the blocks ``block_mask`` computes (partial and full),
    each at its true extent at the sequence end, for ``batch`` x ``heads`` (the mask may broadcast)."""
    import numpy as np

    lq, lk = (int(x) for x in block_mask.seq_lengths)
    bq, bk = (int(x) for x in block_mask.BLOCK_SIZE)
    kinds = [(block_mask.kv_num_blocks, block_mask.kv_indices)]
    if block_mask.full_kv_num_blocks is not None:
        kinds.append((block_mask.full_kv_num_blocks, block_mask.full_kv_indices))
    q_ext = np.array([min(bq, lq - s) for s in range(0, lq, bq)], dtype=np.float64)
    k_ext = np.array([min(bk, lk - s) for s in range(0, lk, bk)], dtype=np.float64)
    total = 0.0
    for num, idx in kinds:   # plain numpy (from .tolist()): nothing here enters a counter's trace
        nq = q_ext.shape[0]
        num = np.array(num.tolist(), dtype=np.int64)[..., :nq]                  # (b, h, nq)
        idx = np.array(idx.tolist(), dtype=np.int64)[..., :nq, :]               # (b, h, nq, nk)
        used = np.arange(idx.shape[-1])[None, None, None, :] < num[..., None]
        keys = np.where(used, k_ext[np.minimum(idx, k_ext.shape[0] - 1)], 0.0)
        per_mask = float((keys.sum(-1) * q_ext).sum())                          # summed over the mask's (b, h)
        total += per_mask * (batch * heads) / (num.shape[0] * num.shape[1])
    return int(round(total * (qk_dim + v_dim)))


FLEX_FLOPS_SCOPE = "fwd; flex_attention counted from its block mask (computed blocks), the rest by the counters"
FLEX_FLOP_NOTE = ("FlexAttention member: the counters ran on an uncompiled copy of the module whose "
                  "flex_attention call is counted from its block mask (q kᵀ and P v over the computed blocks, as "
                  "the compiled kernel does); neither counter can trace flex_attention itself")


class CompileError(RuntimeError):
    """torch.compile of flex_attention failed for this method and shape."""


class FlexMixin:
    """Eager or compiled flex_attention for a member; put it before the reference in the bases.

    Subclasses call ``self.attend(q, k, v, block_mask=..., score_mod=...)`` inside ``forward``
    and implement ``flex_impl(q, k, v, grid)`` (densities and MAC counts for the row)."""

    compiled: Callable | None = None
    compile_time_s: float | None = None

    counted_macs: int | None = None   # set on a counting copy: flex_attention work seen so far

    def attend(self, q, k, v, block_mask=None, score_mod=None) -> torch.Tensor:
        """flex_attention with the reference's logit scale (compiled once ``bench_fn`` has run)."""
        if self.counted_macs is not None:
            return self._counted_attend(q, k, v, block_mask)
        if self.compiled is not None:
            return self.compiled(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=self.scale)
        return eager_flex(q, k, v, block_mask=block_mask, score_mod=score_mod, scale=self.scale)

    def _counted_attend(self, q, k, v, block_mask) -> torch.Tensor:
        """On a counting copy: add flex_attention's multiply-adds over its computed blocks and return
        an output of the right shape (B, H, Lq, dv) without running flex_attention (which neither
        fvcore nor FlopCounterMode can trace); the counters see the member's other work."""
        b, h, lq, lk, d, dv = (int(x) for x in (*q.shape[:2], q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]))
        if block_mask is None:   # (sizes are ints again: a jit trace hands them out as tensors)
            macs = b * h * lq * lk * (d + dv)
        else:
            macs = block_mask_macs(block_mask, b, h, d, dv)
        self.counted_macs += macs
        return v.new_zeros(b, h, lq, v.shape[-1])

    def counting_copy(self) -> torch.nn.Module:
        """A copy for the FLOP counters: uncompiled, counting flex_attention from its block mask, so
        the counters never touch this module's compiled function (see ``count_extra``)."""
        memo = {id(self.compiled): None} if self.compiled is not None else {}
        dup = copy.deepcopy(self, memo)     # caches and buffers too: the copy's forward writes its own
        dup.compiled, dup.counted_macs = None, 0
        return dup

    def count_extra(self) -> dict[str, Any]:
        """After a counter ran on a counting copy: flex_attention's multiply-adds it did not see
        (then reset), and the row's scope and note."""
        macs, self.counted_macs = self.counted_macs, 0
        return {"macs": macs, "flops_scope": FLEX_FLOPS_SCOPE, "flop_note": FLEX_FLOP_NOTE}

    def compile_flex(self, run_once: Callable[[], torch.Tensor]) -> None:
        """Compile flex_attention (inductor, static shapes) and time the first call through it."""
        from torch.nn.attention.flex_attention import flex_attention

        torch._dynamo.reset()
        self.compiled = torch.compile(flex_attention, dynamic=False, fullgraph=True)
        t0 = time.perf_counter()
        try:
            run_once()
        except Exception as exc:
            self.compiled = None
            text = str(exc).strip().splitlines()
            raise CompileError(f"torch.compile(flex_attention) failed: {type(exc).__name__}: "
                               f"{text[0][:300] if text else ''}") from exc
        self.compile_time_s = time.perf_counter() - t0

    def extra_unsupported_reason(self, device, dtype, n, head_dim):
        reason = super().extra_unsupported_reason(device, dtype, n, head_dim)
        return reason or (cpu_compile_reason() if device == "cpu" else None)

    def bench_fn(self, q, k, v, grid=None):
        """Compiles (outside the timed call), then returns the zero-argument forward."""
        self.prepare(q.shape[0], q.shape[-2], grid, q.device)
        grad = q.requires_grad or k.requires_grad or v.requires_grad
        if grad and q.device.type == "cpu":
            raise NotImplementedError(CPU_INFERENCE_ONLY)
        with torch.set_grad_enabled(grad):
            self.compile_flex(lambda: self(q, k, v, grid=grid))
        return lambda: self(q, k, v, grid=grid)

    def prepare(self, batch: int, n: int, grid, device) -> None:
        """Build what does not depend on the input (block masks, lookup tables) before timing."""

    def flex_impl(self, q, k, v, grid=None) -> dict[str, Any]:
        raise NotImplementedError

    def backend_info(self, q, k, v, grid=None) -> dict[str, Any]:
        """The row's ``impl``; an input-dependent pattern also gives ``macs_analytic`` (its computed
        blocks on this input), which replaces the row's count."""
        return {"kernel": "flex_attention", "compiled": self.compiled is not None,
                "compile_time_s": self.compile_time_s, **self.flex_impl(q, k, v, grid)}
