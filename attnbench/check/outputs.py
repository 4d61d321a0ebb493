"""Comparing a configuration's output with its base: directly (A/B) or through a fingerprint (stored).

Both sides run with the same state (parameters, buffers and fitted tensors, fitted once) on the
same inputs, so an unchanged method gives the same output up to the dtype's rounding and, on a
GPU, nondeterministic reductions. The difference is relative, ‖head − base‖ / ‖base‖.

A stored baseline cannot hold whole outputs; it holds a fingerprint: the output's Frobenius norm
and its inner products with FINGERPRINT_DIRECTIONS fixed Gaussian directions (seeded, regenerated
on every machine). For any difference e, each inner product ⟨e, g⟩ with g ~ N(0, I) has variance
‖e‖², so the root mean square of the projection differences estimates ‖head − base‖ (with 64
directions its relative spread is about 9%); the norm difference is a second, direction-free view.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch

FINGERPRINT_DIRECTIONS = 64
FINGERPRINT_SEED = 20261207
OUTPUT_RTOL = {"float64": 1e-9, "float32": 1e-3, "float16": 5e-3, "bfloat16": 2e-2}
OUTPUT_PLAIN_FACTOR = 4.0   # the tolerance is never below this many times plain attention's error


def output_tolerance(dtype: str, plain_err: float | None) -> float:
    """Largest relative output difference an unchanged method may show: the dtype's floor (which
    holds between two machines of one class, and between two GPU runs), or EXACT_FACTOR x plain
    attention's own error in that dtype, whichever is larger."""
    return max(OUTPUT_RTOL.get(dtype, 2e-2), OUTPUT_PLAIN_FACTOR * (plain_err or 0.0))


def relative_difference(head: torch.Tensor, base: torch.Tensor) -> float:
    """‖head − base‖ / ‖base‖ in float64 (inf when the shapes differ or an output is not finite)."""
    if head.shape != base.shape:
        return math.inf
    h, b = head.detach().double().cpu(), base.detach().double().cpu()
    if not (torch.isfinite(h).all() and torch.isfinite(b).all()):
        return math.inf
    den = float(b.norm())
    return float((h - b).norm()) / den if den > 0 else (0.0 if float(h.norm()) == 0 else math.inf)


@functools.lru_cache(maxsize=4)
def _directions(numel: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(FINGERPRINT_SEED + numel)
    return torch.randn(FINGERPRINT_DIRECTIONS, numel, generator=gen, dtype=torch.float64)  # (K, numel)


def fingerprint(out: torch.Tensor) -> dict[str, Any]:
    """{'shape', 'norm', 'proj'}: what a stored baseline keeps of an output (B, H, N, d)."""
    flat = out.detach().double().cpu().reshape(-1)
    return {"shape": list(out.shape), "norm": float(flat.norm()),
            "proj": [float(x) for x in _directions(flat.numel()) @ flat]}


def fingerprint_difference(head: dict[str, Any], base: dict[str, Any]) -> float:
    """Estimated ‖head − base‖ / ‖base‖ from two fingerprints: the larger of the norm difference
    and the projections' root-mean-square difference, both relative to the base norm."""
    if list(head["shape"]) != list(base["shape"]) or len(head["proj"]) != len(base["proj"]):
        return math.inf
    values = [head["norm"], *head["proj"]]
    if not all(math.isfinite(x) for x in values):
        return math.inf
    den = base["norm"]
    if den <= 0:
        return 0.0 if head["norm"] == 0 else math.inf
    rms = math.sqrt(sum((a - b) ** 2 for a, b in zip(head["proj"], base["proj"])) / len(base["proj"]))
    return max(abs(head["norm"] - den), rms) / den


def module_state(module: torch.nn.Module) -> dict[str, Any]:
    """Everything that decides a built module's output besides its code: the state dict, and the
    tensors held as plain attributes (fitted landmarks, say) of the module and its submodules.
    Read back by ``worker.load_state``."""
    attrs = {}
    for prefix, sub in module.named_modules():
        names = set(dict(sub.named_parameters(recurse=False))) | set(dict(sub.named_buffers(recurse=False)))
        for name, value in vars(sub).items():
            if torch.is_tensor(value) and name not in names:
                attrs[f"{prefix}.{name}" if prefix else name] = value.detach().cpu().clone()
    return {"state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}, "attrs": attrs}
