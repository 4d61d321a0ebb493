"""q, k, v generators. Each returns a ``Workload`` with tensors shaped (B, heads, N, head_dim).

``gaussian``: i.i.d. standard normal k and v, and q scaled by ``logit_std`` so that the
logits q·k/√d have standard deviation ``logit_std`` (default 3). At logit_std 1 exact
attention over thousands of keys is near-uniform and every approximation looks good; the
row stores the resulting structure (mean row entropy of exact attention / log N).

``image``: patch tokens of photographs bundled with scikit-image, embedded by fixed-seed
projections (see ``image``); the 'eval' and 'fit' splits show different photographs.

``file:PATH``: the user's own q, k, v from a .safetensors or .pt file; the file defines
B, heads, N and head_dim (see ``file``). A file may carry a leading layer axis, q shaped
(L, B, heads, N, head_dim) as ``bench.py capture`` writes it: ``make_workload(layer=i)`` then
gives layer i (the sweep measures every layer as its own row).

Every workload has a 'fit' split for fitting learnable state (``make_workload(split=...)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
import functools
import inspect
from typing import Any, Callable

import torch

from attnbench.methods.base import near_square_grid
from attnbench.spec import one_line


class WorkloadError(ValueError):
    """A workload specification or file that cannot be used; the message is one line."""


@dataclass
class Workload:
    name: str
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    grid: tuple[int, int]
    params: dict[str, Any] = field(default_factory=dict)


SPLITS = ("eval", "fit")
WorkloadFn = Callable[..., Workload]
_WORKLOADS: dict[str, WorkloadFn] = {}


def register_workload(name: str) -> Callable[[WorkloadFn], WorkloadFn]:
    def deco(fn: WorkloadFn) -> WorkloadFn:
        _WORKLOADS[name] = fn
        return fn
    return deco


def workload_names() -> list[str]:
    return sorted(_WORKLOADS)


@register_workload("gaussian")
def gaussian(batch: int, heads: int, n: int, head_dim: int, *, seed: int = 0,
             logit_std: float = 3.0) -> Workload:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, heads, n, head_dim)
    q = torch.randn(shape, generator=gen) * logit_std
    k = torch.randn(shape, generator=gen)
    v = torch.randn(shape, generator=gen)
    return Workload("gaussian", q, k, v, near_square_grid(n), {"logit_std": logit_std})


FIT_SEED_OFFSET = 1_000_003


def check_workload_spec(spec: str) -> None:
    """WorkloadError (one line) for a spec naming no workload or giving one an argument it does not
    take; ``file:PATH`` is checked further when the file is read."""
    name, colon, arg = spec.partition(":")
    if name not in _WORKLOADS:
        raise WorkloadError(f"unknown workload {spec!r}; known: {', '.join(workload_names())}")
    if colon and "path" not in inspect.signature(_WORKLOADS[name]).parameters:
        raise WorkloadError(f"workload {name!r} takes no ':' argument, got {spec!r}")


def make_workload(spec: str, batch: int, heads: int, n: int, head_dim: int, *, dtype: torch.dtype,
                  device: str, seed: int = 0, split: str = "eval", layer: int | None = None) -> Workload:
    """Build workload ``spec`` ("name" or "name:arg") on CPU with ``seed``, then move it.

    ``split='fit'`` gives the data that fitting uses, never the data the error is measured on:
    workloads taking a ``split`` argument choose it themselves (image: other photographs; file:
    the q_fit, k_fit, v_fit tensors); the others get the seed ``seed + FIT_SEED_OFFSET``.
    ``layer`` picks one layer of a workload with a layer axis (``file:`` with 5-D tensors).
    """
    name, _, arg = spec.partition(":")
    if name not in _WORKLOADS:
        raise WorkloadError(f"unknown workload {spec!r}; known: {', '.join(workload_names())}")
    if split not in SPLITS:
        raise WorkloadError(f"split must be eval or fit, got {split!r}")
    fn = _WORKLOADS[name]
    accepted = inspect.signature(fn).parameters
    if arg and "path" not in accepted:
        raise WorkloadError(f"workload {name!r} takes no ':' argument, got {spec!r}")
    kwargs: dict[str, Any] = {"path": arg} if arg else {}
    if layer is not None:
        if "layer" not in accepted:
            raise WorkloadError(f"workload {name!r} has no layer axis, got layer={layer!r}")
        kwargs["layer"] = layer
    if "split" in accepted:
        kwargs["split"] = split
    elif split == "fit":
        seed = seed + FIT_SEED_OFFSET
    wl = fn(batch, heads, n, head_dim, seed=seed, **kwargs)
    wl.q, wl.k, wl.v = (t.to(device=device, dtype=dtype).contiguous() for t in (wl.q, wl.k, wl.v))
    return wl


# -- image: patch tokens of photographs bundled with scikit-image ----------------------------

EVAL_IMAGES = ("astronaut", "coffee", "chelsea")
FIT_IMAGES = ("rocket", "camera", "coins")


def load_sample_image(name: str) -> torch.Tensor:
    """A scikit-image sample photograph as float (3, H, W) in [0, 1]; grey images get 3 channels.

    Only the images shipped inside the scikit-image wheel are used, so nothing is downloaded.
    """
    return _decoded_image(name).clone()


@functools.lru_cache(maxsize=8)
def _decoded_image(name: str) -> torch.Tensor:
    import numpy as np
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    img = torch.from_numpy(arr[..., :3].copy()).permute(2, 0, 1)   # (3, H, W)
    return img / 255.0 if float(img.max()) > 1.0 else img


def crop_resize(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre-crop (3, H, W) to the aspect ratio height:width, then resize (antialiased)."""
    _, h, w = img.shape
    if h * width > w * height:                       # too tall: crop rows
        ch, cw = max(1, round(w * height / width)), w
    else:                                            # too wide: crop columns
        ch, cw = h, max(1, round(h * width / height))
    top, left = (h - ch) // 2, (w - cw) // 2
    img = img[:, top:top + ch, left:left + cw]
    return torch.nn.functional.interpolate(img[None], size=(height, width), mode="bilinear",
                                           antialias=True, align_corners=False)[0]


def patch_tokens(img: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """(3, H, W) image -> (N, 3·patch²) patch vectors on ``grid``, per-channel standardised."""
    gh, gw = grid
    img = crop_resize(img, gh * patch, gw * patch)
    img = (img - img.mean(dim=(1, 2), keepdim=True)) / (img.std(dim=(1, 2), keepdim=True) + 1e-6)
    cols = torch.nn.functional.unfold(img[None], kernel_size=patch, stride=patch)  # (1, 3p², N)
    return cols[0].T.contiguous()                                                  # (N, 3p²)


def sincos_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """(N, dim) 2-D sine-cosine position encoding: half the channels for rows, half for columns."""
    if dim % 4:
        raise WorkloadError(f"image embed_dim must be a multiple of 4, got {dim}")
    gh, gw = grid
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))   # (dim/4,)
    rows = torch.arange(gh, dtype=torch.float32).repeat_interleave(gw)[:, None] * freqs  # (N, dim/4)
    cols = torch.arange(gw, dtype=torch.float32).repeat(gh)[:, None] * freqs
    return torch.cat([rows.sin(), rows.cos(), cols.sin(), cols.cos()], dim=-1)          # (N, dim)


def image_projections(in_dim: int, embed_dim: int, heads: int, head_dim: int, qk_align: float,
                      seed: int) -> dict[str, torch.Tensor]:
    """Fixed-seed weights: patch embedding (in_dim, D) and per-head q, k, v maps (H, D, d).

    W_k = a·W_q + √(1−a²)·W_noise with a = ``qk_align``, so that q·k is partly a similarity of
    the two tokens' embeddings, as in trained attention; a = 0 gives independent maps.
    """
    gen = torch.Generator().manual_seed(seed)
    embed = torch.randn(in_dim, embed_dim, generator=gen) / in_dim ** 0.5
    wq, wn, wv = (torch.randn(heads, embed_dim, head_dim, generator=gen) / embed_dim ** 0.5 for _ in range(3))
    wk = qk_align * wq + (1.0 - qk_align ** 2) ** 0.5 * wn
    return {"embed": embed, "wq": wq, "wk": wk, "wv": wv}


@register_workload("image")
def image(batch: int, heads: int, n: int, head_dim: int, *, seed: int = 0, split: str = "eval",
          patch: int = 8, embed_dim: int = 256, qk_align: float = 0.7, logit_gain: float = 3.0) -> Workload:
    """Patch tokens of real photographs; batch element b shows image b of the split (cycling).

    Tokens x = LayerNorm(patches · W_embed + sincos_2d) (no affine); per head q = gain·x W_q,
    k = x W_k, v = x W_v. The projection weights depend on ``seed`` only, the images on
    ``split`` only ('eval' and 'fit' use different photographs).
    """
    if split not in SPLITS:
        raise WorkloadError(f"image split must be eval or fit, got {split!r}")
    names = EVAL_IMAGES if split == "eval" else FIT_IMAGES
    grid = near_square_grid(n)
    w = image_projections(3 * patch * patch, embed_dim, heads, head_dim, qk_align, seed)
    pos = sincos_2d(grid, embed_dim)                                           # (N, D)
    xs = [patch_tokens(load_sample_image(names[b % len(names)]), grid, patch) for b in range(batch)]
    x = torch.stack(xs) @ w["embed"] + pos                                     # (B, N, D)
    x = torch.nn.functional.layer_norm(x, (embed_dim,))[:, None]              # (B, 1, N, D)
    q, k, v = (x @ w[key] for key in ("wq", "wk", "wv"))                      # (B, H, N, d)
    params = {"split": split, "images": [names[b % len(names)] for b in range(batch)], "patch": patch,
              "embed_dim": embed_dim, "qk_align": qk_align, "logit_gain": logit_gain}
    return Workload("image", q * logit_gain, k, v, grid, params)


# -- file: the user's own activations --------------------------------------------------------

FILE_SUFFIXES = (".safetensors", ".pt", ".pth")


def _read_tensor_dict(path: str) -> dict[str, Any]:
    """The file's top-level name -> value mapping (.safetensors, or a dict saved by torch.save)."""
    import os

    if not path:
        raise WorkloadError("file workload needs a path: --workload file:PATH")
    if not os.path.isfile(path):
        raise WorkloadError(f"workload file {path!r} does not exist")
    if not path.endswith(FILE_SUFFIXES):
        raise WorkloadError(f"workload file {path!r} must end in .safetensors, .pt or .pth")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            data = load_file(path)
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WorkloadError(f"cannot read workload file {path!r}: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise WorkloadError(f"workload file {path!r} must hold a dict of tensors, got {type(data).__name__}")
    return data


def _check_qkv(path: str, data: dict[str, Any], keys: tuple[str, str, str]) -> tuple[torch.Tensor, ...]:
    """Validate three same-shaped finite floating tensors, 4-D (B, heads, N, head_dim) or with a
    layer axis 5-D (L, B, heads, N, head_dim); one-line WorkloadError otherwise."""
    for key in keys:
        if key not in data:
            raise WorkloadError(f"workload file {path!r} has no tensor {key!r} "
                                f"(needs {', '.join(keys)} shaped (B, heads, N, head_dim))")
        t = data[key]
        if not isinstance(t, torch.Tensor):
            raise WorkloadError(f"workload file {path!r}: {key!r} is a {type(t).__name__}, not a tensor")
        if t.dim() not in (4, 5) or 0 in t.shape:
            raise WorkloadError(f"workload file {path!r}: {key!r} has shape {tuple(t.shape)}; expected "
                                "non-empty (B, heads, N, head_dim) or (layers, B, heads, N, head_dim)")
        if not t.is_floating_point():
            raise WorkloadError(f"workload file {path!r}: {key!r} has dtype {str(t.dtype).replace('torch.', '')}; "
                                "expected a floating-point dtype")
    shape = tuple(data[keys[0]].shape)
    for key in keys[1:]:
        if tuple(data[key].shape) != shape:
            raise WorkloadError(f"workload file {path!r}: {key!r} has shape {tuple(data[key].shape)} but "
                                f"{keys[0]!r} has {shape}; they must match")
    for key in keys:
        bad = int((~torch.isfinite(data[key].float())).sum())
        if bad:
            raise WorkloadError(f"workload file {path!r}: {key!r} has {bad} non-finite values (NaN or inf)")
    return tuple(data[key].float() for key in keys)


def _file_grid(path: str, data: dict[str, Any], n: int) -> tuple[int, int]:
    """The optional ``grid`` entry (two positive ints, product N), else a near-square grid."""
    if "grid" not in data:
        return near_square_grid(n)
    g = data["grid"]
    values = g.flatten().tolist() if isinstance(g, torch.Tensor) else list(g) if isinstance(g, (list, tuple)) else None
    if (values is None or len(values) != 2 or any(int(x) != x or x <= 0 for x in values)
            or int(values[0]) * int(values[1]) != n):
        raise WorkloadError(f"workload file {path!r}: grid must be two positive integers (H, W) "
                            f"with H*W = N = {n}, got {values if values is not None else type(g).__name__}")
    return int(values[0]), int(values[1])


def file_dims(path: str) -> dict[str, Any]:
    """batch, heads, n, head_dim of the file's evaluation tensors (the file defines them), and
    ``layers``: the number of layers of a file with a layer axis, else None."""
    q, _, _ = _check_qkv(path, _read_tensor_dict(path), ("q", "k", "v"))
    b, h, n, d = q.shape[-4:]
    return {"batch": b, "heads": h, "n": n, "head_dim": d, "layers": q.shape[0] if q.dim() == 5 else None}


def _pick_layer(path: str, tensors: tuple[torch.Tensor, ...], layer: int | None) -> tuple[torch.Tensor, ...]:
    """The (B, heads, N, head_dim) tensors of one layer; 4-D tensors take no layer."""
    if tensors[0].dim() == 4:
        if layer is not None:
            raise WorkloadError(f"workload file {path!r} has no layer axis, got layer={layer}")
        return tensors
    if layer is None or not 0 <= layer < tensors[0].shape[0]:
        raise WorkloadError(f"workload file {path!r} has {tensors[0].shape[0]} layers; "
                            f"pick one with layer=0..{tensors[0].shape[0] - 1}, got {layer}")
    return tuple(t[layer] for t in tensors)


def _capture_meta(path: str) -> dict[str, Any] | None:
    """The JSON metadata ``bench.py capture`` stores in a .safetensors header, if any."""
    if not path.endswith(".safetensors"):
        return None
    import json

    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata() or {}
    try:
        value = json.loads(meta["attnbench.capture"]) if "attnbench.capture" in meta else None
    except json.JSONDecodeError:
        return None                       # someone else's header: the tensors are still usable
    return value if isinstance(value, dict) else None


@register_workload("file")
def file(batch: int, heads: int, n: int, head_dim: int, *, seed: int = 0, path: str = "",
         split: str = "eval", layer: int | None = None) -> Workload:
    """q, k, v (and optional grid) from a .safetensors or .pt file; shapes come from the file.

    The 'fit' split reads q_fit, k_fit, v_fit (any batch, same heads, N and head_dim), so
    fitting never sees the evaluation tensors; a file without them cannot be fitted on.
    With a layer axis (5-D tensors) ``layer`` picks the layer, for both splits.
    The requested batch/heads/n/head_dim are ignored: the sweep takes them from the file.
    """
    data = _read_tensor_dict(path)
    q, k, v = _pick_layer(path, _check_qkv(path, data, ("q", "k", "v")), layer)
    grid = _file_grid(path, data, q.shape[2])
    if split == "fit":
        keys = ("q_fit", "k_fit", "v_fit")
        if not all(key in data for key in keys):
            raise WorkloadError(f"workload file {path!r} has no q_fit, k_fit, v_fit tensors; "
                                "--fit closed|distill needs a fitting split the error is not measured on")
        fit = _check_qkv(path, data, keys)
        if fit[0].dim() != data["q"].dim():
            raise WorkloadError(f"workload file {path!r}: q_fit has {fit[0].dim()} dimensions and q "
                                f"{data['q'].dim()}; both need the layer axis or neither")
        q_f, k_f, v_f = _pick_layer(path, fit, layer)
        if q_f.shape[1:] != q.shape[1:]:
            raise WorkloadError(f"workload file {path!r}: q_fit has shape {tuple(q_f.shape)}; "
                                f"heads, N and head_dim must match q's {tuple(q.shape)}")
        q, k, v = q_f, k_f, v_f
    params = {"path": path, "split": split, "shape": list(q.shape), "layer": layer, "grid": list(grid),
              "grid_source": "file" if "grid" in data else "near-square factorisation of N"}
    meta = _capture_meta(path)
    if meta is not None:
        params["capture"] = {key: meta.get(key) for key in ("model", "revision", "kind", "token_grid")}
    return Workload("file", q, k, v, grid, params)
