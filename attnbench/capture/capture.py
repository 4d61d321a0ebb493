"""``bench.py capture``: real q, k, v of every layer of a pretrained model, into a file ``file:`` reads.

File layout (.safetensors), float32:

* ``q``, ``k``, ``v``: (layers, B, heads, N, head_dim), the evaluation inputs;
* ``q_fit``, ``k_fit``, ``v_fit``: (layers, B_fit, heads, N, head_dim), other text or images,
  for ``--fit closed|distill``;
* ``grid``: (2,) the patch grid, only when every token is a patch (a ViT without class token);
* ``input_ids`` / ``input_ids_fit`` (text, int64 (B, N)) for provenance;
* header metadata ``attnbench.capture``: JSON with model, revision, kind, inputs, token_grid
  (ViT: ``{"grid": [H, W], "prefix_tokens": P}``; text: null), layout and scale convention.

q carries the layer's own score scale: softmax(q kᵀ/√head_dim) v is the layer's attention
output, head by head, with nothing padded (every sequence holds exactly N real tokens).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnbench.capture.errors import CaptureError
from attnbench.capture.models import LoadedModel, load_model, record
from attnbench.capture.sources import Inputs, image_splits, read_text, text_splits

LAYOUT = "q, k, v: (layers, B, heads, N, head_dim); *_fit: (layers, B_fit, heads, N, head_dim)"
SCALE_NOTE = "q is multiplied by the layer's scale·√head_dim: softmax(q kᵀ/√head_dim) v is the layer's attention"


@dataclass(frozen=True)
class CaptureConfig:
    model: str
    out: Path
    weights: str | None = None
    random_weights: bool = False
    seed: int = 0
    text: str | None = None
    images: str | None = None
    n: int | None = None            # text: tokens per sequence (default 256); vit: must match the model
    batch: int | None = None        # evaluation sequences/images (default: text, all but the fit ones; images 3)
    fit_batch: int = 1


def model_inputs(loaded: LoadedModel, cfg: Any) -> tuple[Inputs, Inputs]:
    """(eval, fit) inputs for the model from ``cfg.text`` / ``cfg.images`` (or the shipped defaults)."""
    if loaded.kind == "text":
        if cfg.images is not None:
            raise CaptureError(f"{cfg.model} reads text; --images applies to timm models")
        n = cfg.n or 256
        if loaded.max_tokens is not None and n > loaded.max_tokens:
            raise CaptureError(f"--n {n} exceeds the {loaded.max_tokens} tokens {loaded.name} takes")
        text, source = read_text(cfg.text)
        return text_splits(loaded.tokenizer, text, source, n, cfg.batch, cfg.fit_batch)
    if cfg.text is not None:
        raise CaptureError(f"{cfg.model} reads images; --text applies to text encoders")
    tokens = loaded.token_grid["grid"][0] * loaded.token_grid["grid"][1] + loaded.token_grid["prefix_tokens"]
    if cfg.n is not None and cfg.n != tokens:
        raise CaptureError(f"{cfg.model} sees {tokens} tokens per image; --n {cfg.n} cannot be used")
    return image_splits(cfg.images, loaded.image_size, loaded.mean, loaded.std, cfg.batch or 3, cfg.fit_batch)


def capture_qkv(loaded: LoadedModel, inputs: Inputs, contexts: bool = False) -> dict[str, torch.Tensor]:
    """q, k, v stacked over layers (L, B, H, N, d) from one forward; with ``contexts`` also
    ``ctx`` (L, B, N, C): each layer's own attention context, as the model computed it."""
    with record(loaded, contexts=contexts) as store:
        loaded.run(inputs.tensors)
    out = {key: torch.stack(store[key]) for key in "qkv"}
    if contexts:
        out["ctx"] = torch.stack(store["ctx"])
    return out


def metadata(loaded: LoadedModel, ev: Inputs, fit: Inputs, shape: tuple[int, ...]) -> dict[str, Any]:
    """The capture's JSON header: what model, which inputs, which layout."""
    return {"format": 1, "model": loaded.name, "revision": loaded.revision, "kind": loaded.kind,
            "layers": shape[0], "batch": shape[1], "heads": shape[2], "n": shape[3], "head_dim": shape[4],
            "token_grid": loaded.token_grid, "inputs": {"eval": ev.describe, "fit": fit.describe},
            "layout": LAYOUT, "scale": SCALE_NOTE}


def run_capture(cfg: CaptureConfig) -> dict[str, Any]:
    """Capture and write ``cfg.out``; returns the metadata written."""
    from safetensors.torch import save_file

    if cfg.out.suffix != ".safetensors":
        raise CaptureError(f"--out {str(cfg.out)!r} must end in .safetensors")
    loaded = load_model(cfg.model, cfg.weights, cfg.random_weights, cfg.seed)
    ev, fit = model_inputs(loaded, cfg)
    tensors = capture_qkv(loaded, ev)
    tensors.update({f"{key}_fit": t for key, t in capture_qkv(loaded, fit).items()})
    grid = loaded.token_grid
    if grid is not None and grid["prefix_tokens"] == 0:
        tensors["grid"] = torch.tensor(grid["grid"])
    for name, split in (("input_ids", ev), ("input_ids_fit", fit)):
        if "input_ids" in split.tensors:
            tensors[name] = split.tensors["input_ids"]
    meta = metadata(loaded, ev, fit, tuple(tensors["q"].shape))
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: t.contiguous() for k, t in tensors.items()}, str(cfg.out),
              metadata={"attnbench.capture": json.dumps(meta, default=str)})
    return meta
