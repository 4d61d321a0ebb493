"""Fused anchor attention: the math of ``anchor`` without ever storing A (N×m) or anything N×N.

Two passes over the tokens (per batch and head, U the m anchors, s = Δ the column sums):

1. for each token tile: A_t = softmax(K_t Uᵀ/√d) over anchors; M1 += A_tᵀ V_t, s += A_tᵀ 1;
   then M2 = M1 / s (0 where s == 0: an empty anchor column contributes nothing);
2. for each token tile: recompute A_t, write out_t = A_t M2.

On CUDA both passes are Triton kernels (attnbench/kernels/anchor_triton.py); on CPU the same
algorithm runs in PyTorch over token chunks, so the memory beyond inputs and output is
O(chunk·m + m·d). Recomputing A in pass 2 costs one more N·m·d product than ``anchor`` (4 instead
of 3 per token, anchor and feature) in exchange for never writing A to memory.

The backward pass (``FusedAnchorFunction``) also works tile by tile, A recomputed: pass 1
accumulates dM2 = Aᵀ dout, pass 2 writes dk, dv and accumulates d(anchors). On CUDA it is Triton
(``backward=auto``) or chunked PyTorch (``backward=pytorch``); on CPU chunked PyTorch.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from attnbench.methods.anchor import AnchorAttention
from attnbench.registry import register
from attnbench.spec import one_line

Triple = "tuple[torch.Tensor, torch.Tensor, torch.Tensor]"
ForwardImpl = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], Triple]  # (k, v, anchors, scale) -> out, M2, s
BackwardImpl = Callable[..., Triple]  # (g, k, v, anchors, M2, s, scale) -> dk, dv, d anchors


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for 16-bit and float32 inputs, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def chunk_weights(k_c: torch.Tensor, u: torch.Tensor, scale: float) -> torch.Tensor:
    """A for one chunk in u's dtype: k_c (B, H, c, d), u (B, H, m, d) -> (B, H, c, m)."""
    return torch.softmax((k_c.to(u.dtype) @ u.transpose(-1, -2)) * scale, dim=-1)


def _safe(s: torch.Tensor) -> torch.Tensor:
    """Column sums as divisors: empty columns (s == 0) divide by 1 (their numerators are 0)."""
    return torch.where(s > 0, s, torch.ones_like(s))


def chunked_forward(k: torch.Tensor, v: torch.Tensor, anchors: torch.Tensor, scale: float,
                    chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-pass anchor attention over token chunks, accumulating in float32 (float64 inputs: float64).

    k, v: (B, H, N, d); anchors: (B, H, m, d), an expanded view is fine. Returns out
    (B, H, N, d) in v's dtype, M2 = Δ⁻¹ Aᵀ v (B, H, m, d) and s = Aᵀ 1 (B, H, m), both in the
    accumulation dtype.
    """
    acc = acc_dtype(k.dtype)
    u = anchors.to(k.dtype).to(acc)                                  # rounded like ``anchor``
    b, h, n, d = v.shape
    m1 = torch.zeros(b, h, u.shape[-2], d, dtype=acc, device=v.device)  # (B, H, m, d)
    s = torch.zeros(b, h, u.shape[-2], dtype=acc, device=v.device)      # (B, H, m)
    for lo in range(0, n, chunk):
        a = chunk_weights(k[..., lo:lo + chunk, :], u, scale)        # (B, H, c, m)
        m1 += a.transpose(-1, -2) @ v[..., lo:lo + chunk, :].to(acc)
        s += a.sum(dim=-2)
    m2 = m1 / _safe(s).unsqueeze(-1)                                 # (B, H, m, d)
    out = torch.empty_like(v)
    for lo in range(0, n, chunk):
        out[..., lo:lo + chunk, :] = chunk_weights(k[..., lo:lo + chunk, :], u, scale) @ m2
    return out, m2, s


def chunked_backward(g: torch.Tensor, k: torch.Tensor, v: torch.Tensor, anchors: torch.Tensor,
                     m2: torch.Tensor, s: torch.Tensor, scale: float, chunk: int = 512
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dk, dv, d anchors) of out = A (M1 / s) given dout ``g`` (B, H, N, d).

    With dM2 = Aᵀ g, dM1 = dM2 / s, ds = -Σ_d dM2 ⊙ M2 / s (0 for empty columns, like
    ``anchor``'s guarded divisor), per chunk: dA = g M2ᵀ + v dM1ᵀ + ds, dL = A ⊙ (dA − rowsum(A ⊙ dA)),
    dk = √d⁻¹ dL U, dv = A dM1, d anchors += √d⁻¹ dLᵀ k. d anchors is (B, H, m, d).
    """
    acc = acc_dtype(k.dtype)
    u = anchors.to(k.dtype).to(acc)                                  # (B, H, m, d)
    m2, s = m2.to(acc), s.to(acc)
    n = k.shape[-2]
    dm2 = torch.zeros_like(m2)                                       # (B, H, m, d)
    for lo in range(0, n, chunk):
        a = chunk_weights(k[..., lo:lo + chunk, :], u, scale)
        dm2 += a.transpose(-1, -2) @ g[..., lo:lo + chunk, :].to(acc)
    safe = _safe(s)
    dm1 = dm2 / safe.unsqueeze(-1)
    ds = torch.where(s > 0, -(dm2 * m2).sum(-1) / safe, torch.zeros_like(s)).unsqueeze(-2)  # (B, H, 1, m)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    du = torch.zeros_like(u)
    for lo in range(0, n, chunk):
        k_c = k[..., lo:lo + chunk, :].to(acc)                        # (B, H, c, d)
        a = chunk_weights(k_c, u, scale)                              # (B, H, c, m)
        da = g[..., lo:lo + chunk, :].to(acc) @ m2.transpose(-1, -2) \
            + v[..., lo:lo + chunk, :].to(acc) @ dm1.transpose(-1, -2) + ds
        dl = a * (da - (a * da).sum(-1, keepdim=True)) * scale       # (B, H, c, m)
        dk[..., lo:lo + chunk, :] = dl @ u
        dv[..., lo:lo + chunk, :] = a @ dm1
        du += dl.transpose(-1, -2) @ k_c
    return dk, dv, du.to(anchors.dtype)


class FusedAnchorFunction(torch.autograd.Function):
    """out = fused anchor attention; saves only k, v, anchors, M2 (m×d) and s (m) per head."""

    @staticmethod
    def forward(ctx, k, v, anchors, scale: float, forward_impl: ForwardImpl, backward_impl: BackwardImpl):
        out, m2, s = forward_impl(k, v, anchors, scale)
        ctx.save_for_backward(k, v, anchors, m2, s)
        ctx.scale, ctx.backward_impl = scale, backward_impl
        return out

    @staticmethod
    def backward(ctx, g):
        k, v, anchors, m2, s = ctx.saved_tensors
        dk, dv, du = ctx.backward_impl(g.contiguous(), k, v, anchors, m2, s, ctx.scale)
        return dk, dv, du.to(anchors.dtype), None, None, None


def fused_anchor(k: torch.Tensor, v: torch.Tensor, anchors: torch.Tensor, scale: float,
                 forward_impl: ForwardImpl, backward_impl: BackwardImpl) -> torch.Tensor:
    """Anchor attention through ``forward_impl``, differentiable when autograd needs it.

    anchors: (m, d), (H, m, d) or (B, H, m, d); k, v, out: (B, H, N, d).
    """
    while anchors.dim() < k.dim():
        anchors = anchors.unsqueeze(0)
    anchors = anchors.expand(*k.shape[:-2], *anchors.shape[-2:])     # (B, H, m, d), a view
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (k, v, anchors))
    if not needs_grad:
        return forward_impl(k, v, anchors, scale)[0]
    return FusedAnchorFunction.apply(k, v, anchors, scale, forward_impl, backward_impl)


def _triton_reason() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising at import
        return f"triton is not importable ({one_line(exc)})."
    return None


@register("fused-anchor", family="anchor", budget="m", uses_query=False,
          defaults={"m": 30, "chunk": 512, "deterministic": True, "backward": "auto"},
          description="anchor attention, two fused passes, A never stored (Triton on CUDA, chunked on CPU)")
class FusedAnchor(AnchorAttention):
    """Same parameters and anchors as ``anchor`` (same seed, same values). ``chunk``: the CPU
    token chunk; ``deterministic=False``: the CUDA kernels reduce with atomics; ``backward``:
    ``auto`` (Triton on CUDA, chunked PyTorch on CPU) or ``pytorch`` (chunked everywhere)."""

    def __init__(self, heads: int, head_dim: int, m: int = 30, shared: bool = False, seed: int = 0,
                 chunk: int = 512, deterministic: bool = True, backward: str = "auto"):
        super().__init__(heads, head_dim, m=m, shared=shared, seed=seed)
        if int(chunk) <= 0:
            raise ValueError(f"chunk must be positive, got {chunk}")
        if backward not in ("auto", "pytorch"):
            raise ValueError(f"backward must be auto or pytorch, got {backward!r}")
        self.chunk, self.deterministic, self.backward_choice = int(chunk), bool(deterministic), backward

    def impls(self, device: torch.device) -> tuple[str, ForwardImpl, str, BackwardImpl]:
        """(forward name, forward, backward name, backward) for tensors on ``device``."""
        chunk, det = self.chunk, self.deterministic

        def cpu_bwd(g, k, v, u, m2, s, scale):
            return chunked_backward(g, k, v, u, m2, s, scale, chunk)

        if device.type != "cuda":
            return ("pytorch-chunked", lambda k, v, u, scale: chunked_forward(k, v, u, scale, chunk),
                    "pytorch-chunked", cpu_bwd)
        from attnbench.kernels.anchor_triton import anchor_backward, anchor_forward

        def fwd(k, v, u, scale):
            return anchor_forward(k, v, u, scale, deterministic=det)

        def triton_bwd(g, k, v, u, m2, s, scale):
            return anchor_backward(g, k, v, u, m2, s, scale, deterministic=det)

        if self.backward_choice == "pytorch":
            return "triton", fwd, "pytorch-chunked", cpu_bwd
        return "triton", fwd, "triton", triton_bwd

    def forward(self, q, k, v, grid=None):
        _, fwd, _, bwd = self.impls(k.device)
        return fused_anchor(k, v, self.anchors.to(dtype=k.dtype), self.scale, fwd, bwd)

    def macs(self, batch, n, grid=None):
        return 4 * batch * self.heads * n * self.m * self.head_dim  # logits twice, Aᵀv, A·M2

    def extra_unsupported_reason(self, device, dtype, n, head_dim):
        if device != "cuda":
            return None
        if not 16 <= head_dim <= 128 or self.m > 128:
            return f"fused-anchor on CUDA supports head_dim 16..128 and m <= 128, not {head_dim} and {self.m}."
        return _triton_reason()

    def backend_info(self, q, k, v, grid=None) -> dict[str, Any]:
        fwd_name, _, bwd_name, _ = self.impls(k.device)
        info: dict[str, Any] = {"forward": fwd_name, "backward": bwd_name}
        if fwd_name == "triton":
            from attnbench.kernels.anchor_triton import tuned_configs

            info.update(deterministic=self.deterministic, triton_configs=tuned_configs())
        else:
            info["chunk"] = self.chunk
        return info
