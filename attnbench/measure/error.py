"""Approximation error against float64 exact softmax attention on the same q, k, v."""
from __future__ import annotations

import torch

from attnbench.reference import ExactReference, exact_reference  # noqa: F401  (re-exported)


def error_metrics(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """err_rel_fro = ‖out − ref‖_F / ‖ref‖_F, err_max_abs, err_cos_mean (mean cosine per token)."""
    o = out.detach().to(device=ref.device, dtype=torch.float64)
    diff = o - ref
    ref_norm = float(torch.linalg.vector_norm(ref))
    cos = torch.nn.functional.cosine_similarity(o, ref, dim=-1, eps=1e-30)
    return {
        "err_rel_fro": float(torch.linalg.vector_norm(diff)) / ref_norm if ref_norm > 0 else float("nan"),
        "err_max_abs": float(diff.abs().max()),
        "err_cos_mean": float(cos.mean()),
        "out_finite": bool(torch.isfinite(o).all()),
    }
