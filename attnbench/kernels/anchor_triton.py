"""Fused anchor attention in Triton, forward and backward: passes over token tiles, A never stored.

Per (batch, head), with U the m anchors and K, V the N keys and values (see methods/anchor.py):
A = softmax over anchors of K Uᵀ/√d (N×m), M1 = Aᵀ V (m×d), s = Aᵀ 1 (m), M2 = M1 / s,
out = A M2.

* pass 1 (``_anchor_pass1``): each program walks a contiguous range of tokens ("split") in
  tiles of BLOCK_N, recomputes the tile's A in registers and accumulates the split's partial
  M1 and s in float32; the partials are written to a (BH, splits, M_PAD, D_PAD) buffer.
  With ``deterministic=False`` they are added atomically into one slot instead.
* reduce (``_anchor_reduce``): one program per (batch, head) sums the partials in split order
  (a fixed order, so results are bit-reproducible) and writes M2 = M1 / s (0 where s == 0)
  and s.
* pass 2 (``_anchor_pass2``): recomputes each tile's A and writes out = A M2. Heads are
  visited in reverse order, so the keys pass 1 read last are still in L2 when pass 2 starts.
* backward (``anchor_backward``): pass 1 and the reduction on (k, dout) give dM1 = Δ⁻¹ Aᵀ dout;
  ``_anchor_bwd`` recomputes each tile's A and writes dk, dv and per-split partials of
  d anchors, summed in split order.

m is padded to M_PAD (a power of two >= 16) and d to D_PAD the same way; padded anchors get
logit -inf (weight 0), padded features are loaded as 0 and never stored. Token tails are
masked. Accumulation is float32 for every input dtype; float32 inputs use IEEE products.

To run on CPU tensors, set ``TRITON_INTERPRET=1`` before triton is first imported in the
process (triton decorates its own library functions, and this module its kernels, at import
time; tests/conftest.py does this on machines without a GPU). Interpreted, a single
configuration is used instead of autotuning.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from attnbench.kernels.aot import KernelSpec



def _interpreting() -> bool:
    """Whether triton runs kernels in its interpreter (``triton.knobs`` where it exists, else the variable)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None and hasattr(knobs, "runtime"):
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


_INTERPRET = _interpreting()
SPLIT_ALIGN = 128  # token ranges per program are multiples of this (>= every BLOCK_N)
LOG2E = 1.4426950408889634


def _configs(stages):
    """32-token tiles (for m, d near 128) and 64/128-token tiles with 4 or 8 warps."""
    if _INTERPRET:
        return [triton.Config({"BLOCK_N": 128}, num_warps=4, num_stages=1)]  # few, large tiles: fast to interpret
    return [triton.Config({"BLOCK_N": 32}, num_warps=w, num_stages=2) for w in (4, 8)] + [
        triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bn in (64, 128) for w in (4, 8) for s in stages]


def _fits(c, m_pad: int, d_pad: int, kernel: str) -> bool:
    """Whether configuration ``c`` compiles without register spills at sm_80 and sm_90, by tile
    sizes: the rule follows the audit's bfloat16 compiles (``bench.py kernels --pruned``, triton 3.9;
    README, "Kernel resources"). Forward passes hold the (BLOCK_N × M_PAD) weights, the (M_PAD × D_PAD) anchors or
    accumulator and, in pass 2, the (BLOCK_N × D_PAD) output tile: at most 4096 float32 values a
    warp (128 a thread). At M_PAD = 128, where sm_80 keeps the anchors in registers for every warp,
    only 8 warps and (BLOCK_N + 2 · D_PAD) · M_PAD <= 16384. The backward pass holds three more tiles
    of each kind: BLOCK_N · D_PAD + M_PAD · D_PAD <= 8192 float32 values in all, whatever the warps,
    and M_PAD <= 64. The shapes where none fits (the backward above M_PAD = 32; pass 1 at M_PAD = 128,
    D_PAD >= 64) split the anchor axis instead (``anchor_block``, ``_fits_split``); where a prune keeps
    nothing, the configuration with the fewest values a thread is kept (and the audit says if it spills)."""
    bn, w = c.kwargs["BLOCK_N"], c.num_warps
    if kernel == "bwd":
        if w < 8 and bn * (m_pad + d_pad) > 6144:
            return False  # 128-token tiles at M_PAD = D_PAD = 32, 4 warps: sm_90 spills at 3 stages
        return bn * d_pad + m_pad * d_pad <= 8192 and m_pad <= 64
    if m_pad >= 128:
        return w >= 8 and (bn + 2 * d_pad) * m_pad <= 16384
    if kernel == "pass2" and bn == 32 and w == 4 and d_pad >= 128:
        return False  # ptxas holds it to 64 registers at sm_90, and it spills
    out_tile = bn * d_pad if kernel == "pass2" else 0
    return bn * m_pad + m_pad * d_pad + out_tile <= 4096 * w


def anchor_block(m_pad: int, d_pad: int, kernel: str) -> int:
    """BLOCK_M, the anchors one tile holds: all M_PAD of them, except where the tiles would not fit
    in registers (pass 1 at M_PAD = 128 with D_PAD >= 64; the backward pass above M_PAD = 32),
    where the anchor axis is split in blocks of BLOCK_M, one program each."""
    if kernel == "pass1" and m_pad >= 128 and d_pad >= 64:
        return 64
    if kernel == "bwd" and m_pad > 32:
        return 32
    return m_pad


def _fits_split(c, block_m: int, d_pad: int, kernel: str) -> bool:
    """``_fits`` for a split anchor axis (BLOCK_M < M_PAD): each program holds one anchor block,
    loops over the others for the softmax statistics and, in the backward pass, holds the tile's
    dk and dv as well."""
    bn, w = c.kwargs["BLOCK_N"], c.num_warps
    if kernel == "bwd":
        # at D_PAD = 32 the 32-token tile spills on sm_90 (255 registers) where 64 and 128 do not
        return w >= 8 and bn * d_pad + block_m * d_pad <= 8192 and (bn >= 64 or d_pad >= 64)
    if kernel == "pass1":
        # the loop over the other anchor blocks keeps a second (BLOCK_N x BLOCK_M) logit tile live:
        # sm_80 spills past 10240 values a program at 4 warps and past 12288 at 8 (bfloat16 compiles)
        return (bn + d_pad) * block_m <= (10240 if w < 8 else 12288) and _fits(c, block_m, d_pad, kernel)
    return _fits(c, block_m, d_pad, kernel)


def _smallest(configs):
    """The configuration with the fewest values a thread: the one kept where none fits."""
    return [min(configs, key=lambda c: (c.kwargs["BLOCK_N"] / c.num_warps, c.num_stages))]


def _pruner(kernel: str):
    def prune(configs, named_args, **kwargs):
        m_pad, d_pad = kwargs.get("M_PAD", 16), kwargs.get("D_PAD", 16)
        block_m = kwargs.get("BLOCK_M", m_pad)
        if block_m < m_pad:
            return [c for c in configs if _fits_split(c, block_m, d_pad, kernel)] or _smallest(configs)
        return [c for c in configs if _fits(c, m_pad, d_pad, kernel)] or _smallest(configs)
    prune.__name__ = f"_prune_{kernel}"
    prune.__doc__ = f"Keep the {kernel} configurations that fit in registers (``_fits``); at least one."
    return prune


_prune = _pruner("pass1")
_prune_pass2 = _pruner("pass2")
_prune_bwd = _pruner("bwd")


# Hopper: ten configurations a kernel (fewer after pruning for m, d near 128), so that the
# first call, which compiles and times them all, stays well under a minute.
PASS1_CONFIGS = _configs((2, 3))
PASS2_CONFIGS = _configs((2, 3))
BWD_CONFIGS = _configs((2, 3))
TUNE_KEY = ["M_PAD", "D_PAD", "N_BUCKET"]
REDUCE_LAUNCH = (8, 3)  # (num_warps, num_stages) of the one-program-a-head reduction


@triton.jit
def _tile_weights(kt, u, qk_scale, m_mask, row_mask, PRECISION: tl.constexpr):
    """A for one tile: (BLOCK_N, M_PAD) float32, softmax over valid anchors, zero padded rows."""
    logits = tl.dot(kt, tl.trans(u), input_precision=PRECISION) * qk_scale  # log2 units
    logits = tl.where(m_mask[None, :], logits, float("-inf"))
    p = tl.exp2(logits - tl.max(logits, axis=1)[:, None])
    a = p / tl.sum(p, axis=1)[:, None]
    return tl.where(row_mask[:, None], a, 0.0)


@triton.jit
def _load_rows(ptr, b, h, s_b, s_h, s_n, s_d, rows, offs_d, tile_mask):
    """The (BLOCK_N, D_PAD) tile of tokens ``rows`` of one (batch, head) of a (B, H, N, D) tensor."""
    return tl.load(ptr + b * s_b + h * s_h + rows[:, None] * s_n + offs_d[None, :] * s_d, mask=tile_mask, other=0.0)


@triton.jit
def _load_anchors(u_ptr, b, h, s_ub, s_uh, s_um, s_ud, offs_m, offs_d, m_mask, d_mask):
    ptrs = u_ptr + b * s_ub + h * s_uh + offs_m[:, None] * s_um + offs_d[None, :] * s_ud
    return tl.load(ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)  # (M_PAD, D_PAD)


@triton.jit
def _block_logits(kt, u_ptr, b, h, s_ub, s_uh, s_um, s_ud, blk, M, qk_scale, offs_d, d_mask,
                  BLOCK_M: tl.constexpr, PRECISION: tl.constexpr):
    """Logits of one tile against anchor block ``blk``: ((BLOCK_N, BLOCK_M) float32 in log2 units,
    -inf at padded anchors; the block's anchors (BLOCK_M, D_PAD))."""
    offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    u = _load_anchors(u_ptr, b, h, s_ub, s_uh, s_um, s_ud, offs_m, offs_d, m_mask, d_mask)
    logits = tl.dot(kt, tl.trans(u), input_precision=PRECISION) * qk_scale
    return tl.where(m_mask[None, :], logits, float("-inf")), u


@triton.jit
def _row_stats(kt, u_ptr, b, h, s_ub, s_uh, s_um, s_ud, M, qk_scale, offs_d, d_mask,
               BLOCK_N: tl.constexpr, M_PAD: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr):
    """Row maximum and Σ exp2(logit − maximum) of a tile over every anchor, BLOCK_M at a time."""
    mx = tl.full((BLOCK_N,), -1.0e30, tl.float32)  # finite: exp2(mx - new) stays 0, never NaN
    tot = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for blk in range(0, M_PAD // BLOCK_M):
        logits, _ = _block_logits(kt, u_ptr, b, h, s_ub, s_uh, s_um, s_ud, blk, M, qk_scale, offs_d, d_mask,
                                  BLOCK_M, PRECISION)
        new = tl.maximum(mx, tl.max(logits, axis=1))
        tot = tot * tl.exp2(mx - new) + tl.sum(tl.exp2(logits - new[:, None]), axis=1)
        mx = new
    return mx, tot


@triton.jit
def _block_weights(logits, mx, tot, row_mask):
    """A for one tile and anchor block from its logits and the row statistics; zero padded rows."""
    a = tl.exp2(logits - mx[:, None]) / tot[:, None]
    return tl.where(row_mask[:, None], a, 0.0)


@triton.autotune(configs=PASS1_CONFIGS, key=TUNE_KEY, prune_configs_by={"early_config_prune": _prune},
                 reset_to_zero=["part_ptr", "psum_ptr"])
@triton.jit
def _anchor_pass1(k_ptr, v_ptr, u_ptr, part_ptr, psum_ptr,
                  N, H, M, D, qk_scale, tokens_per_split, n_slots,
                  s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd, s_ub, s_uh, s_um, s_ud,
                  N_BUCKET, M_PAD: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_M: tl.constexpr, ATOMIC: tl.constexpr, PRECISION: tl.constexpr):
    """Program (split, bh, anchor block): the block's rows of the split's partial M1 and s. With
    BLOCK_M < M_PAD each tile's softmax statistics come from a loop over every anchor block."""
    split = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    if BLOCK_M == M_PAD:
        offs_m = tl.arange(0, M_PAD)
    else:
        offs_m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    d_mask = offs_d < D
    u = _load_anchors(u_ptr, b, h, s_ub, s_uh, s_um, s_ud, offs_m, offs_d, m_mask, d_mask)
    k_base = k_ptr + b * s_kb + h * s_kh
    v_base = v_ptr + b * s_vb + h * s_vh
    acc = tl.zeros((BLOCK_M, D_PAD), dtype=tl.float32)
    colsum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    lo = split * tokens_per_split
    hi = tl.minimum(lo + tokens_per_split, N)
    for start in range(lo, hi, BLOCK_N):
        rows = start + offs_n
        row_mask = rows < hi
        tile_mask = row_mask[:, None] & d_mask[None, :]
        kt = tl.load(k_base + rows[:, None] * s_kn + offs_d[None, :] * s_kd, mask=tile_mask, other=0.0)
        vt = tl.load(v_base + rows[:, None] * s_vn + offs_d[None, :] * s_vd, mask=tile_mask, other=0.0)
        if BLOCK_M == M_PAD:
            a = _tile_weights(kt, u, qk_scale, m_mask, row_mask, PRECISION)
        else:
            mx, tot = _row_stats(kt, u_ptr, b, h, s_ub, s_uh, s_um, s_ud, M, qk_scale, offs_d, d_mask,
                                 BLOCK_N, M_PAD, BLOCK_M, PRECISION)
            logits = tl.dot(kt, tl.trans(u), input_precision=PRECISION) * qk_scale
            a = _block_weights(tl.where(m_mask[None, :], logits, float("-inf")), mx, tot, row_mask)
        acc += tl.dot(tl.trans(a.to(vt.dtype)), vt, input_precision=PRECISION)
        colsum += tl.sum(a, axis=0)
    slot = bh.to(tl.int64) * n_slots
    if not ATOMIC:
        slot += split
    part = part_ptr + slot * (M_PAD * D_PAD) + offs_m[:, None] * D_PAD + offs_d[None, :]
    psum = psum_ptr + slot * M_PAD + offs_m
    if ATOMIC:
        tl.atomic_add(part, acc)
        tl.atomic_add(psum, colsum)
    else:
        tl.store(part, acc)
        tl.store(psum, colsum)


@triton.jit
def _anchor_reduce(part_ptr, psum_ptr, m2_ptr, s_ptr, n_slots,
                   M_PAD: tl.constexpr, D_PAD: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    offs_m = tl.arange(0, M_PAD)
    offs_md = offs_m[:, None] * D_PAD + tl.arange(0, D_PAD)[None, :]
    acc = tl.zeros((M_PAD, D_PAD), dtype=tl.float32)
    colsum = tl.zeros((M_PAD,), dtype=tl.float32)
    for i in range(0, n_slots):  # fixed order: deterministic
        slot = bh * n_slots + i
        acc += tl.load(part_ptr + slot * (M_PAD * D_PAD) + offs_md)
        colsum += tl.load(psum_ptr + slot * M_PAD + offs_m)
    safe = tl.where(colsum > 0, colsum, 1.0)
    m2 = tl.where(colsum[:, None] > 0, acc / safe[:, None], 0.0)  # empty column -> 0, never inf/NaN
    tl.store(m2_ptr + bh * (M_PAD * D_PAD) + offs_md, m2)
    tl.store(s_ptr + bh * M_PAD + offs_m, colsum)


@triton.autotune(configs=PASS2_CONFIGS, key=TUNE_KEY, prune_configs_by={"early_config_prune": _prune_pass2})
@triton.jit
def _anchor_pass2(k_ptr, u_ptr, m2_ptr, o_ptr,
                  N, H, BH, M, D, qk_scale, tokens_per_prog,
                  s_kb, s_kh, s_kn, s_kd, s_ub, s_uh, s_um, s_ud, s_ob, s_oh, s_on, s_od,
                  N_BUCKET, M_PAD: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                  PRECISION: tl.constexpr):
    part = tl.program_id(0)
    bh = BH - 1 - tl.program_id(1)  # reverse head order: reuse the keys pass 1 left in L2
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = tl.arange(0, M_PAD)
    offs_d = tl.arange(0, D_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    d_mask = offs_d < D
    u = _load_anchors(u_ptr, b, h, s_ub, s_uh, s_um, s_ud, offs_m, offs_d, m_mask, d_mask)
    m2 = tl.load(m2_ptr + bh.to(tl.int64) * (M_PAD * D_PAD) + offs_m[:, None] * D_PAD + offs_d[None, :])
    m2 = m2.to(u.dtype)  # float32 stays float32; 16-bit inputs use tensor-core products
    k_base = k_ptr + b * s_kb + h * s_kh
    o_base = o_ptr + b * s_ob + h * s_oh
    lo = part * tokens_per_prog
    hi = tl.minimum(lo + tokens_per_prog, N)
    for start in range(lo, hi, BLOCK_N):
        rows = start + offs_n
        row_mask = rows < hi
        tile_mask = row_mask[:, None] & d_mask[None, :]
        kt = tl.load(k_base + rows[:, None] * s_kn + offs_d[None, :] * s_kd, mask=tile_mask, other=0.0)
        a = _tile_weights(kt, u, qk_scale, m_mask, row_mask, PRECISION)
        o = tl.dot(a.to(m2.dtype), m2, input_precision=PRECISION)  # (BLOCK_N, D_PAD) float32
        tl.store(o_base + rows[:, None] * s_on + offs_d[None, :] * s_od,
                 o.to(o_ptr.dtype.element_ty), mask=tile_mask)


@triton.jit
def _block_grads(kt, gt, vt, m2_ptr, dm1_ptr, ds_ptr, md_base, blk, logits, mx, tot, row_mask,
                 D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr):
    """For one tile and anchor block: A, dA = g M2ᵀ + v dM1ᵀ + ds and the block's dM1."""
    offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    md = md_base + offs_m[:, None] * D_PAD + tl.arange(0, D_PAD)[None, :]
    m2 = tl.load(m2_ptr + md).to(kt.dtype)                                 # (BLOCK_M, D_PAD)
    dm1 = tl.load(dm1_ptr + md).to(kt.dtype)
    ds = tl.load(ds_ptr + md_base // D_PAD + offs_m)                       # (BLOCK_M,) float32
    a = _block_weights(logits, mx, tot, row_mask)
    da = tl.dot(gt, tl.trans(m2), input_precision=PRECISION) \
        + tl.dot(vt, tl.trans(dm1), input_precision=PRECISION) + ds[None, :]
    return a, da, dm1


@triton.jit
def _bwd_row_terms(kt, gt, vt, u_ptr, m2_ptr, dm1_ptr, ds_ptr, b, h, s_ub, s_uh, s_um, s_ud, md_base,
                   M, qk_scale, offs_d, d_mask, row_mask, BLOCK_N: tl.constexpr, M_PAD: tl.constexpr,
                   D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr):
    """A tile's softmax statistics and rowsum(A ⊙ dA), looping over the anchor blocks."""
    mx, tot = _row_stats(kt, u_ptr, b, h, s_ub, s_uh, s_um, s_ud, M, qk_scale, offs_d, d_mask,
                         BLOCK_N, M_PAD, BLOCK_M, PRECISION)
    r = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for i in range(0, M_PAD // BLOCK_M):
        logits, _ = _block_logits(kt, u_ptr, b, h, s_ub, s_uh, s_um, s_ud, i, M, qk_scale, offs_d, d_mask,
                                  BLOCK_M, PRECISION)
        a, da, _ = _block_grads(kt, gt, vt, m2_ptr, dm1_ptr, ds_ptr, md_base, i, logits, mx, tot, row_mask,
                                D_PAD, BLOCK_M, PRECISION)
        r += tl.sum(a * da, axis=1)
    return mx, tot, r


@triton.autotune(configs=BWD_CONFIGS, key=TUNE_KEY, prune_configs_by={"early_config_prune": _prune_bwd})
@triton.jit
def _anchor_bwd(g_ptr, k_ptr, v_ptr, u_ptr, m2_ptr, dm1_ptr, ds_ptr, dk_ptr, dv_ptr, du_ptr,
                N, H, M, D, scale, tokens_per_split,
                s_gb, s_gh, s_gn, s_gd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
                s_ub, s_uh, s_um, s_ud, s_dkb, s_dkh, s_dkn, s_dkd, s_dvb, s_dvh, s_dvn, s_dvd,
                N_BUCKET, M_PAD: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_M: tl.constexpr, PRECISION: tl.constexpr):
    """Per tile: dA = g M2ᵀ + v dM1ᵀ + ds, dL = A ⊙ (dA − rowsum(A ⊙ dA)), dk = dL U/√d,
    dv = A dM1, and this split's partial of d anchors = Σ dLᵀ k/√d.

    Program (split, bh, j). With BLOCK_M = M_PAD one program (j = 0) does all of it. With
    BLOCK_M < M_PAD, programs j < J = M_PAD / BLOCK_M write anchor block j's rows of the
    d-anchors partial, program J writes dk and program J + 1 dv; each loops over the anchor blocks
    for the softmax statistics and (but dv's) rowsum(A ⊙ dA)."""
    split = tl.program_id(0)
    bh = tl.program_id(1)
    blk = tl.program_id(2)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    if BLOCK_M == M_PAD:
        offs_m = tl.arange(0, M_PAD)
    else:
        offs_m = (blk % (M_PAD // BLOCK_M)) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    d_mask = offs_d < D
    qk_scale = scale * 1.4426950408889634
    u = _load_anchors(u_ptr, b, h, s_ub, s_uh, s_um, s_ud, offs_m, offs_d, m_mask, d_mask)
    md_base = bh.to(tl.int64) * (M_PAD * D_PAD)
    md = md_base + offs_m[:, None] * D_PAD + offs_d[None, :]
    m2 = tl.load(m2_ptr + md).to(u.dtype)                                 # (BLOCK_M, D_PAD)
    dm1 = tl.load(dm1_ptr + md).to(u.dtype)
    ds = tl.load(ds_ptr + bh.to(tl.int64) * M_PAD + offs_m)                # (BLOCK_M,) float32
    du = tl.zeros((BLOCK_M, D_PAD), dtype=tl.float32)
    lo = split * tokens_per_split
    hi = tl.minimum(lo + tokens_per_split, N)
    if BLOCK_M == M_PAD or blk < M_PAD // BLOCK_M:
        for start in range(lo, hi, BLOCK_N):
            rows = start + offs_n
            row_mask = rows < hi
            tile_mask = row_mask[:, None] & d_mask[None, :]
            kt = _load_rows(k_ptr, b, h, s_kb, s_kh, s_kn, s_kd, rows, offs_d, tile_mask)
            gt = _load_rows(g_ptr, b, h, s_gb, s_gh, s_gn, s_gd, rows, offs_d, tile_mask)
            vt = _load_rows(v_ptr, b, h, s_vb, s_vh, s_vn, s_vd, rows, offs_d, tile_mask)
            if BLOCK_M == M_PAD:
                a = _tile_weights(kt, u, qk_scale, m_mask, row_mask, PRECISION)
                da = tl.dot(gt, tl.trans(m2), input_precision=PRECISION) \
                    + tl.dot(vt, tl.trans(dm1), input_precision=PRECISION) + ds[None, :]
                dl = a * (da - tl.sum(a * da, axis=1)[:, None]) * scale          # (BLOCK_N, M_PAD)
                dk = tl.dot(dl.to(u.dtype), u, input_precision=PRECISION)
                dv = tl.dot(a.to(u.dtype), dm1, input_precision=PRECISION)
                tl.store(dk_ptr + b * s_dkb + h * s_dkh + rows[:, None] * s_dkn + offs_d[None, :] * s_dkd,
                         dk.to(dk_ptr.dtype.element_ty), mask=tile_mask)
                tl.store(dv_ptr + b * s_dvb + h * s_dvh + rows[:, None] * s_dvn + offs_d[None, :] * s_dvd,
                         dv.to(dv_ptr.dtype.element_ty), mask=tile_mask)
            else:
                mx, tot, r = _bwd_row_terms(kt, gt, vt, u_ptr, m2_ptr, dm1_ptr, ds_ptr, b, h, s_ub, s_uh, s_um,
                                            s_ud, md_base, M, qk_scale, offs_d, d_mask, row_mask, BLOCK_N,
                                            M_PAD, D_PAD, BLOCK_M, PRECISION)
                logits = tl.dot(kt, tl.trans(u), input_precision=PRECISION) * qk_scale
                a = _block_weights(tl.where(m_mask[None, :], logits, float("-inf")), mx, tot, row_mask)
                da = tl.dot(gt, tl.trans(m2), input_precision=PRECISION) \
                    + tl.dot(vt, tl.trans(dm1), input_precision=PRECISION) + ds[None, :]
                dl = a * (da - r[:, None]) * scale                            # (BLOCK_N, BLOCK_M)
            du += tl.dot(tl.trans(dl.to(u.dtype)), kt, input_precision=PRECISION)
        slot = bh.to(tl.int64) * tl.num_programs(0) + split
        tl.store(du_ptr + slot * (M_PAD * D_PAD) + offs_m[:, None] * D_PAD + offs_d[None, :], du)
    else:
        for start in range(lo, hi, BLOCK_N):
            rows = start + offs_n
            row_mask = rows < hi
            tile_mask = row_mask[:, None] & d_mask[None, :]
            kt = _load_rows(k_ptr, b, h, s_kb, s_kh, s_kn, s_kd, rows, offs_d, tile_mask)
            gt = _load_rows(g_ptr, b, h, s_gb, s_gh, s_gn, s_gd, rows, offs_d, tile_mask)
            vt = _load_rows(v_ptr, b, h, s_vb, s_vh, s_vn, s_vd, rows, offs_d, tile_mask)
            dx = tl.zeros((BLOCK_N, D_PAD), dtype=tl.float32)
            if blk == M_PAD // BLOCK_M:                                     # dk = Σ_i dL_i U_i
                mx, tot, r = _bwd_row_terms(kt, gt, vt, u_ptr, m2_ptr, dm1_ptr, ds_ptr, b, h, s_ub, s_uh, s_um,
                                            s_ud, md_base, M, qk_scale, offs_d, d_mask, row_mask, BLOCK_N, M_PAD,
                                            D_PAD, BLOCK_M, PRECISION)
                for i in range(0, M_PAD // BLOCK_M):
                    logits, ui = _block_logits(kt, u_ptr, b, h, s_ub, s_uh, s_um, s_ud, i, M, qk_scale, offs_d,
                                               d_mask, BLOCK_M, PRECISION)
                    ai, dai, _ = _block_grads(kt, gt, vt, m2_ptr, dm1_ptr, ds_ptr, md_base, i, logits, mx, tot,
                                              row_mask, D_PAD, BLOCK_M, PRECISION)
                    dx += tl.dot((ai * (dai - r[:, None]) * scale).to(ui.dtype), ui, input_precision=PRECISION)
                tl.store(dk_ptr + b * s_dkb + h * s_dkh + rows[:, None] * s_dkn + offs_d[None, :] * s_dkd,
                         dx.to(dk_ptr.dtype.element_ty), mask=tile_mask)
            else:                                                           # dv = Σ_i A_i dM1_i
                mx, tot = _row_stats(kt, u_ptr, b, h, s_ub, s_uh, s_um, s_ud, M, qk_scale, offs_d, d_mask,
                                     BLOCK_N, M_PAD, BLOCK_M, PRECISION)
                for i in range(0, M_PAD // BLOCK_M):
                    logits, _ = _block_logits(kt, u_ptr, b, h, s_ub, s_uh, s_um, s_ud, i, M, qk_scale, offs_d,
                                              d_mask, BLOCK_M, PRECISION)
                    offs_i = i * BLOCK_M + tl.arange(0, BLOCK_M)
                    dm1i = tl.load(dm1_ptr + md_base + offs_i[:, None] * D_PAD + offs_d[None, :]).to(kt.dtype)
                    ai = _block_weights(logits, mx, tot, row_mask)
                    dx += tl.dot(ai.to(kt.dtype), dm1i, input_precision=PRECISION)
                tl.store(dv_ptr + b * s_dvb + h * s_dvh + rows[:, None] * s_dvn + offs_d[None, :] * s_dvd,
                         dx.to(dv_ptr.dtype.element_ty), mask=tile_mask)


def pad_pow2(x: int, least: int = 16) -> int:
    """The smallest power of two >= max(x, least)."""
    return max(least, 1 << max(0, int(x) - 1).bit_length())


def _tokens_per_program(n: int, bh: int, programs: int) -> int:
    """Tokens per program, a multiple of SPLIT_ALIGN, giving about ``programs`` programs in all."""
    per_head = max(1, programs // max(bh, 1))
    tokens = triton.cdiv(n, per_head)
    return SPLIT_ALIGN * triton.cdiv(tokens, SPLIT_ALIGN)


def _target_programs(device: torch.device) -> tuple[int, int]:
    """(pass 1, pass 2) program counts: a few waves over the SMs; pass 2 has no reduction."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return 4 * sms, 16 * sms


def check_inputs(k: torch.Tensor, v: torch.Tensor, anchors: torch.Tensor) -> None:
    """Raise ValueError on shapes or dtypes the kernels do not handle."""
    if k.dim() != 4 or v.shape != k.shape or anchors.dim() != 4:
        raise ValueError(f"expected k, v (B, H, N, d) and anchors (B, H, m, d), got "
                         f"{tuple(k.shape)}, {tuple(v.shape)}, {tuple(anchors.shape)}")
    if k.dtype not in (torch.float32, torch.float16, torch.bfloat16) or v.dtype != k.dtype:
        raise ValueError(f"k and v must share a dtype among float32, float16, bfloat16; got {k.dtype}, {v.dtype}")
    if not 16 <= k.shape[-1] <= 128 or not 1 <= anchors.shape[-2] <= 128:
        raise ValueError(f"head_dim must be 16..128 and m 1..128, got {k.shape[-1]} and {anchors.shape[-2]}")


def _launch_shape(k: torch.Tensor, m: int, tokens: int | None, which: int) -> tuple[int, int, int, int]:
    """(M_PAD, D_PAD, tokens per program, programs per head) for pass ``which`` (0: 1, 1: 2)."""
    b, h, n, d = k.shape
    per_prog = tokens or _tokens_per_program(n, b * h, _target_programs(k.device)[which])
    if per_prog % SPLIT_ALIGN:
        raise ValueError(f"token ranges per program must be multiples of {SPLIT_ALIGN}, got {per_prog}")
    return pad_pow2(m), pad_pow2(d), per_prog, triton.cdiv(n, per_prog)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # "tf32" is ignored for 16-bit inputs


def _n_bucket(n: int) -> int:
    return max(0, n - 1).bit_length()  # autotuning key: N's magnitude


def reduce_over_tokens(k: torch.Tensor, v: torch.Tensor, u: torch.Tensor, scale: float,
                       deterministic: bool = True, tokens_per_split: int | None = None,
                       block_m: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 1 and the reduction: (Δ⁻¹ Aᵀ v as (BH, M_PAD, D_PAD), s = Aᵀ 1 as (BH, M_PAD)), float32.

    k, v: (B, H, N, d) (v may be any (B, H, N, d) tensor, e.g. the output gradient); u: (B, H, m, d)
    in k's dtype. Padded rows and columns are zero. ``block_m`` (a power of two <= M_PAD) overrides
    the anchors a program holds (``anchor_block``).
    """
    b, h, n, d = k.shape
    m = u.shape[-2]
    m_pad, d_pad, tps, splits = _launch_shape(k, m, tokens_per_split, 0)
    bh, slots = b * h, (splits if deterministic else 1)
    alloc = torch.empty if deterministic else torch.zeros
    part = alloc((bh, slots, m_pad, d_pad), dtype=torch.float32, device=k.device)
    psum = alloc((bh, slots, m_pad), dtype=torch.float32, device=k.device)
    block_m = block_m or anchor_block(m_pad, d_pad, "pass1")
    _anchor_pass1[(splits, bh, m_pad // block_m)](
        k, v, u, part, psum, n, h, m, d, float(scale) * LOG2E, tps, slots,
        *k.stride(), *v.stride(), *u.stride(),
        _n_bucket(n), M_PAD=m_pad, D_PAD=d_pad, BLOCK_M=block_m, ATOMIC=not deterministic,
        PRECISION=_precision(k.dtype))
    m2 = torch.empty((bh, m_pad, d_pad), dtype=torch.float32, device=k.device)
    s = torch.empty((bh, m_pad), dtype=torch.float32, device=k.device)
    _anchor_reduce[(bh,)](part, psum, m2, s, slots, M_PAD=m_pad, D_PAD=d_pad,
                         num_warps=REDUCE_LAUNCH[0], num_stages=REDUCE_LAUNCH[1])
    return m2, s


def anchor_forward(k: torch.Tensor, v: torch.Tensor, anchors: torch.Tensor, scale: float, *,
                   deterministic: bool = True, tokens_per_split: int | None = None,
                   tokens_per_prog: int | None = None, block_m: int | None = None,
                   out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused anchor attention forward.

    k, v: (B, H, N, d); anchors: (B, H, m, d) (an expanded view is fine), any strides.
    Returns out (B, H, N, d) in k's dtype, M2 = Δ⁻¹ Aᵀ v (B, H, m, d) float32 and the column
    sums s = Aᵀ 1 (B, H, m) float32 (the last two are what the backward pass needs).
    ``tokens_per_split`` / ``tokens_per_prog`` (multiples of 128) override the automatic
    split of the token axis in pass 1 / pass 2; ``block_m`` the anchors a pass-1 program holds.
    ``out`` (B, H, N, d), if given, is written in
    place and returned.
    """
    check_inputs(k, v, anchors)
    u = anchors.to(k.dtype)
    b, h, n, d = k.shape
    m = u.shape[-2]
    m2, s = reduce_over_tokens(k, v, u, scale, deterministic, tokens_per_split, block_m)
    m_pad, d_pad, tpp, progs = _launch_shape(k, m, tokens_per_prog, 1)
    if out is None:
        out = torch.empty((b, h, n, d), dtype=k.dtype, device=k.device)
    elif out.shape != k.shape or out.dtype != k.dtype or out.device != k.device:
        raise ValueError(f"out must be {tuple(k.shape)} {k.dtype} on {k.device}")
    _anchor_pass2[(progs, b * h)](
        k, u, m2, out, n, h, b * h, m, d, float(scale) * LOG2E, tpp,
        *k.stride(), *u.stride(), *out.stride(),
        _n_bucket(n), M_PAD=m_pad, D_PAD=d_pad, PRECISION=_precision(k.dtype))
    m2 = m2.view(b, h, m_pad, d_pad)[:, :, :m, :d]
    return out, m2, s.view(b, h, m_pad)[:, :, :m]


def _pad_to(x: torch.Tensor, m_pad: int, d_pad: int) -> torch.Tensor:
    """(B, H, m, d) -> zero-padded contiguous (B·H, M_PAD, D_PAD) float32."""
    b, h, m, d = x.shape
    out = torch.zeros((b, h, m_pad, d_pad), dtype=torch.float32, device=x.device)
    out[:, :, :m, :d] = x
    return out.view(b * h, m_pad, d_pad)


def anchor_backward(g: torch.Tensor, k: torch.Tensor, v: torch.Tensor, anchors: torch.Tensor,
                    m2: torch.Tensor, s: torch.Tensor, scale: float, *, deterministic: bool = True,
                    tokens_per_split: int | None = None, block_m: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dk, dv, d anchors) of the forward above, A recomputed per tile.

    g, k, v: (B, H, N, d); anchors: (B, H, m, d); m2 (B, H, m, d) and s (B, H, m) as returned by
    ``anchor_forward``. Pass 1 (the forward's kernels on (k, g)) gives dM1 = Δ⁻¹ Aᵀ g; then
    ds = -Σ_d dM1 ⊙ M2; pass 2 (``_anchor_bwd``) writes dk, dv and per-split partials of
    d anchors, summed in split order. d anchors is (B, H, m, d) float32. ``block_m`` overrides the
    anchors a program of either kernel holds (``anchor_block``).
    """
    check_inputs(k, v, anchors)
    u = anchors.to(k.dtype)
    b, h, n, d = k.shape
    m = u.shape[-2]
    dm1, _ = reduce_over_tokens(k, g, u, scale, deterministic, tokens_per_split, block_m)  # (BH, M_PAD, D_PAD)
    m_pad, d_pad, tps, splits = _launch_shape(k, m, tokens_per_split, 0)
    m2p = _pad_to(m2, m_pad, d_pad)
    ds = -(dm1 * m2p).sum(-1)                                                      # (BH, M_PAD)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    du = torch.empty((b * h, splits, m_pad, d_pad), dtype=torch.float32, device=k.device)
    bwd_block = block_m or anchor_block(m_pad, d_pad, "bwd")
    blocks = 1 if bwd_block == m_pad else m_pad // bwd_block + 2  # + 2: the programs writing dk and dv
    _anchor_bwd[(splits, b * h, blocks)](
        g, k, v, u, m2p, dm1, ds, dk, dv, du, n, h, m, d, float(scale), tps,
        *g.stride(), *k.stride(), *v.stride(), *u.stride(), *dk.stride(), *dv.stride(),
        _n_bucket(n), M_PAD=m_pad, D_PAD=d_pad, BLOCK_M=bwd_block, PRECISION=_precision(k.dtype))
    du = du.sum(1).view(b, h, m_pad, d_pad)[:, :, :m, :d]   # fixed-order sum over splits
    return dk, dv, du


def tuned_configs() -> dict[str, str | None]:
    """The configurations autotuning picked last (None before the first launch)."""
    def show(kernel):
        cfg = getattr(kernel, "best_config", None)
        return None if cfg is None else str(cfg)
    return {"pass1": show(_anchor_pass1), "pass2": show(_anchor_pass2), "backward": show(_anchor_bwd)}




def _aot_spec(name: str, kernel, io_pointers: tuple[str, ...], floats: tuple[str, ...],
              extra: dict | None = None, blocks: str | None = None, **kw) -> KernelSpec:
    """Typed as ``anchor_forward`` / ``anchor_backward`` launch it on contiguous (B, H, N, d)
    tensors with d a multiple of 16: last-dim strides 1, other strides and token ranges aligned."""
    args = (kernel.fn if hasattr(kernel, "configs") else kernel).arg_names
    strides = [a for a in args if a.startswith("s_")]
    units = frozenset(a for a in strides if a.endswith("d"))
    aligned = frozenset(set(strides) - units) | frozenset(a for a in args if a.startswith("tokens_per") or a == "D")

    def constexprs(m_pad: int, d_pad: int, dtype: str) -> dict:
        prec = {"PRECISION": "ieee" if dtype == "float32" else "tf32"} if "PRECISION" in args else {}
        block = {"BLOCK_M": anchor_block(m_pad, d_pad, blocks)} if blocks else {}
        return {"M_PAD": m_pad, "D_PAD": d_pad, **block, **prec, **(extra or {})}

    return KernelSpec(name, kernel, frozenset(io_pointers), frozenset(floats), units, aligned, constexprs, **kw)


# Every Triton kernel of this module, for the ahead-of-time audit (``bench.py kernels``).
AOT_KERNELS = (
    _aot_spec("_anchor_pass1", _anchor_pass1, ("k_ptr", "v_ptr", "u_ptr"), ("qk_scale",), {"ATOMIC": False},
              blocks="pass1"),
    _aot_spec("_anchor_reduce", _anchor_reduce, (), (), dots=False, launch=REDUCE_LAUNCH),
    _aot_spec("_anchor_pass2", _anchor_pass2, ("k_ptr", "u_ptr", "o_ptr"), ("qk_scale",)),
    _aot_spec("_anchor_bwd", _anchor_bwd, ("g_ptr", "k_ptr", "v_ptr", "u_ptr", "dk_ptr", "dv_ptr"), ("scale",),
              blocks="bwd"),
)
