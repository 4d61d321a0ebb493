"""Sparsifiner (Wei et al., CVPR 2023): instance-dependent sparse attention from a cheap predictor.

Connectivity predictor, per head h (all weights fixed-seed initialised module parameters):
  q_c = q W_q[h] + b_q[h], k_c = k W_k[h] + b_k[h]       channel reduction d -> c = d/``reduce_c`` (2)
  k_r = k_cᵀ P_n                                       token reduction N -> N_r = N/``reduce_n`` (6)
  C = softmax(q_c k_r / √c)                            (N, N_r) coefficients of a low-rank basis
  S = C |P_back|ᵀ                                      (N, N) predicted connectivity
Each query keeps its top ``keep``·N keys of S (ceil, default 25 %) and takes the softmax of
q kᵀ/√d over those keys only.

Two registered implementations sharing the predictor and its top-k indices:
``sparsifiner-dense`` masks the full N×N logits (what the authors run; no speed gain), and
``sparsifiner`` gathers the kept keys and values and computes only N·keep·N logits. Both walk
the queries in the same predictor blocks, so they select identical keys. keep = 1 is exact attention.
The gathered form copies keep·N·d key and value numbers per query (the dense form writes N
logits), so without a fused kernel it trades arithmetic for memory traffic.

P_n and P_back are (N, N_r) matrices, so they exist per token count: they are created on the
first call with a new N (trunc-normal, std 0.02, seed derived from ``seed`` and N) and kept as
parameters. The predictor is untrained here (the paper distils it from dense attention), so
its selection is close to arbitrary and the error column reflects that.

``predictor`` selects the predictor's details. ``"plain"`` (default): the formulas above, with
per-head channel projections. ``"official"``, as the authors' code and default configuration
at inference: one channel projection shared by all heads, the scale heads^-½ in place of
1/√c, basis entries |P_back| <= 0.02 set to zero, and only the 8 largest coefficients of each
row of C kept (the others zero, no renormalisation) before S = C |P_back|ᵀ. The top-k of S,
the keep count ⌈keep·N⌉ and the masked softmax are the same in both. Left out in both: the
class-token row (the authors' class token always attends to every key) and token pruning
(off in the authors' default configuration).
"""
from __future__ import annotations

import math

import torch

from attnbench.methods.base import AttentionMethod
from attnbench.registry import register

SCORE_BLOCK_ELEMENTS = 1 << 22   # predictor: B·H·b·N predicted scores per query block
GATHER_BLOCK_ELEMENTS = 1 << 21  # gathered form: B·H·b·kept·d gathered keys (and values) per block


def query_blocks(n: int, per_query: int, budget: int) -> list[tuple[int, int]]:
    """[(start, end)] blocks of queries, each holding at most ``budget`` elements (at least 1 query)."""
    size = min(n, max(1, budget // max(per_query, 1)))
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def gather_rows(x_flat: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Rows of x (B·H·N, d) picked by idx (B, H, b, kept) within each (batch, head): (B, H, b, kept, d)."""
    b, h = idx.shape[:2]
    base = (torch.arange(b * h, device=idx.device) * n).view(b, h, 1, 1)
    return x_flat.index_select(0, (idx + base).reshape(-1)).view(*idx.shape, x_flat.shape[-1])


PREDICTORS = ("plain", "official")
OFFICIAL_BASIS_THRESHOLD = 2e-2  # the authors' default configuration: |P_back| <= this is zeroed
OFFICIAL_COEF_TOPK = 8           # ... and the 8 largest coefficients per row of C are kept


def keep_top_coefficients(coef: torch.Tensor, k: int) -> torch.Tensor:
    """coef (..., N_r) with all but its ``k`` largest entries per row set to zero."""
    if k >= coef.shape[-1]:
        return coef
    top = coef.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(coef).scatter_(-1, top.indices, top.values)


class _SparsifinerBase(AttentionMethod):
    """Shared predictor; subclasses implement the attention over the kept keys."""

    def __init__(self, heads: int, head_dim: int, keep: float = 0.25, reduce_n: int = 6,
                 reduce_c: int = 2, seed: int = 0, predictor: str = "plain"):
        super().__init__(heads, head_dim)
        if not 0 < float(keep) <= 1 or int(reduce_n) < 1 or int(reduce_c) < 1:
            raise ValueError(f"need 0 < keep <= 1, reduce_n >= 1, reduce_c >= 1; got {keep}, {reduce_n}, {reduce_c}")
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {', '.join(PREDICTORS)}, got {predictor!r}")
        self.keep, self.reduce_n, self.reduce_c, self.seed = float(keep), int(reduce_n), int(reduce_c), int(seed)
        self.predictor = predictor
        self.reduced_c = max(1, head_dim // self.reduce_c)
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(head_dim)  # nn.Linear's default uniform range
        def uniform(*shape):
            return torch.nn.Parameter(torch.empty(shape).uniform_(-bound, bound, generator=gen))
        groups = 1 if predictor == "official" else heads   # one projection shared by all heads, or one per head
        self.w_q, self.b_q = uniform(groups, head_dim, self.reduced_c), uniform(groups, 1, self.reduced_c)
        self.w_k, self.b_k = uniform(groups, head_dim, self.reduced_c), uniform(groups, 1, self.reduced_c)
        official = predictor == "official"
        self.predictor_scale = heads ** -0.5 if official else self.reduced_c ** -0.5
        self.proj_n = torch.nn.ParameterDict()       # str(N) -> (N, N_r)
        self.proj_back_n = torch.nn.ParameterDict()  # str(N) -> (N, N_r)

    def kept(self, n: int) -> int:
        return min(n, max(1, math.ceil(self.keep * n)))

    def reduced_n(self, n: int) -> int:
        return max(1, n // self.reduce_n)

    def token_projections(self, n: int, device) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
        """(P_n, P_back), each (N, N_r), created once per N with a seed derived from (seed, N)."""
        n = int(n)  # a traced shape arrives as a tensor
        key = str(n)
        if key not in self.proj_n:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + n)
            shape = (n, self.reduced_n(n))
            for table in (self.proj_n, self.proj_back_n):
                w = torch.nn.init.trunc_normal_(torch.empty(shape), std=0.02, generator=gen)
                table[key] = torch.nn.Parameter(w.to(device))
        return self.proj_n[key], self.proj_back_n[key]

    def predictor_state(self, q, k):
        """q_c (B, H, N, c), k_r (B, H, c, N_r) and the basis |P_back|ᵀ (N_r, N)."""
        p_n, p_back = self.token_projections(q.shape[-2], q.device)
        q_c = q @ self.w_q.to(q.dtype) + self.b_q.to(q.dtype)
        k_c = k @ self.w_k.to(k.dtype) + self.b_k.to(k.dtype)
        k_r = k_c.transpose(-1, -2) @ p_n.to(k.dtype)
        basis = p_back.to(q.dtype).abs().transpose(0, 1)                        # (N_r, N)
        if self.predictor == "official":
            basis = basis.masked_fill(basis <= OFFICIAL_BASIS_THRESHOLD, 0.0)
        return q_c, k_r, basis

    def block_indices(self, q_c_blk, k_r, basis, kept):
        """Indices (B, H, b, kept) of the top predicted keys for a block of queries."""
        coef = torch.softmax((q_c_blk @ k_r) * self.predictor_scale, dim=-1)     # (B, H, b, N_r)
        if self.predictor == "official":
            coef = keep_top_coefficients(coef, OFFICIAL_COEF_TOPK)
        scores = coef @ basis                                                      # (B, H, b, N)
        return scores.topk(kept, dim=-1, sorted=False).indices

    def selected(self, q, k):
        """Yields (start, end, indices (B, H, b, kept)) over the query blocks."""
        n, kept = q.shape[-2], self.kept(q.shape[-2])
        q_c, k_r, basis = self.predictor_state(q, k)
        for s, e in query_blocks(n, q.shape[0] * self.heads * n, SCORE_BLOCK_ELEMENTS):
            yield s, e, self.block_indices(q_c[..., s:e, :], k_r, basis, kept)

    def bench_fn(self, q, k, v, grid=None):
        self.token_projections(q.shape[-2], q.device)  # create parameters outside the timed call
        return super().bench_fn(q, k, v, grid)

    def predictor_macs(self, n: int) -> int:
        c, r, d = self.reduced_c, self.reduced_n(n), self.head_dim
        # q W_q, k W_k: 2·N·d·c; k_cᵀ P_n: c·N·N_r; q_c k_r: N·c·N_r; C |P_back|ᵀ: N·N_r·N
        return 2 * n * d * c + 2 * c * n * r + n * r * n

    def keep_mask(self, q, k) -> torch.Tensor:
        """Boolean (B, H, N, N): True where a query keeps a key."""
        n = q.shape[-2]
        mask = torch.zeros(*q.shape[:-1], n, dtype=torch.bool, device=q.device)
        for s, e, idx in self.selected(q, k):
            mask[..., s:e, :].scatter_(-1, idx, torch.ones_like(idx, dtype=torch.bool))
        return mask

    def masked_probs(self, q, k) -> torch.Tensor:
        """(B, H, N, N) softmax of q kᵀ/√d over the kept keys, exactly 0 elsewhere."""
        logits = (q @ k.transpose(-1, -2)) * self.scale                           # (B, H, N, N)
        logits = logits.masked_fill(~self.keep_mask(q, k), float("-inf"))
        return torch.softmax(logits, dim=-1)


@register("sparsifiner-dense", family="sparsifiner", defaults={"keep": 0.25, "predictor": "plain"},
          description="Sparsifiner, dense N×N logits masked to the predicted top-keep keys")
class SparsifinerDense(_SparsifinerBase):
    """Dense masked form: all N² logits, softmax restricted to the kept keys."""

    def forward(self, q, k, v, grid=None):
        return self.masked_probs(q, k) @ v                                        # (B, H, N, d)

    def attention_matrix(self, q, k, v, grid=None):
        return self.masked_probs(q, k)

    def macs(self, batch, n, grid=None):
        return batch * self.heads * (self.predictor_macs(n) + 2 * n * n * self.head_dim)

    def workspace_bytes(self, batch, n, dtype_bytes):
        return batch * self.heads * n * n * (3 * dtype_bytes + 1)


@register("sparsifiner", family="sparsifiner", defaults={"keep": 0.25, "predictor": "plain"},
          description="Sparsifiner, only the predicted top-keep keys gathered and computed")
class Sparsifiner(_SparsifinerBase):
    """Gathered form: per query block, gather the kept keys/values and attend to those only."""

    def block_attention(self, q_blk, k_flat, v_flat, idx, n):
        """Probabilities (B, H, b, kept) and outputs (B, H, b, d) for one query block."""
        k_sel, v_sel = gather_rows(k_flat, idx, n), gather_rows(v_flat, idx, n)  # (B, H, b, kept, d)
        logits = (q_blk.unsqueeze(-2) @ k_sel.transpose(-1, -2)).squeeze(-2) * self.scale
        p = torch.softmax(logits, dim=-1)                                          # (B, H, b, kept)
        return p, (p.unsqueeze(-2) @ v_sel).squeeze(-2)

    def _run(self, q, k, v, probs: torch.Tensor | None = None) -> torch.Tensor:
        b, h, n, d = q.shape
        k_flat, v_flat = k.reshape(-1, d), v.reshape(-1, v.shape[-1])
        out = torch.empty(b, h, n, v.shape[-1], dtype=q.dtype, device=q.device)
        per_query = b * h * self.kept(n) * max(d, v.shape[-1])
        for s, e, idx in self.selected(q, k):
            for s2, e2 in query_blocks(e - s, per_query, GATHER_BLOCK_ELEMENTS):
                rows, sub = slice(s + s2, s + e2), idx[..., s2:e2, :]
                p, out[..., rows, :] = self.block_attention(q[..., rows, :], k_flat, v_flat, sub, n)
                if probs is not None:
                    probs[..., rows, :].scatter_(-1, sub, p)
        return out

    def forward(self, q, k, v, grid=None):
        return self._run(q, k, v)                                                  # (B, H, N, d)

    def attention_matrix(self, q, k, v, grid=None):
        probs = torch.zeros(*q.shape[:-1], q.shape[-2], dtype=q.dtype, device=q.device)
        self._run(q, k, v, probs)
        return probs

    def macs(self, batch, n, grid=None):
        return batch * self.heads * (self.predictor_macs(n) + 2 * n * self.kept(n) * self.head_dim)
