"""``bench.py drift``: a pretrained model with its attention swapped in every layer, against itself.

For each (attention, m, fit) setting every layer's attention is replaced by a registered method
(one module per layer, built with ``registry.build``; fitted per layer on that layer's q, k, v
of the fitting split, captured from the exact model), the model runs on held-out inputs and is
compared with the exact model on the same inputs. Nothing is trained.

Encoders: cosine of the mean-pooled last hidden state (the sentence embedding of all-MiniLM-L6-v2)
and, per layer, the mean over tokens of the cosine between hidden states. ViT classifiers: top-1
agreement and KL(exact ‖ swapped) of the softmax of the logits, plus the hidden-state cosines.

Rows (``kind: "drift"``) are appended to ``OUT/rows.jsonl``; a rerun skips settings already there.
"""
from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from attnbench import rows
from attnbench.measure.env import device_label
from attnbench import registry
from attnbench.capture.capture import capture_qkv, model_inputs
from attnbench.capture.models import LoadedModel, hidden_states, load_model, replaced
from attnbench.fit import fit_module
from attnbench.reference import exact_reference
from attnbench.settings import FitSettings
from attnbench.spec import is_oom, one_line
from attnbench.workloads import Workload


@dataclass(frozen=True, kw_only=True)
class DriftConfig(FitSettings):
    """One drift run; the fitting budgets are attnbench.settings.FitSettings."""

    model: str
    methods: tuple[str, ...]
    out: Path
    ms: tuple[int, ...] = (30,)
    params: dict[str, Any] = field(default_factory=dict)   # applied to every method that takes them
    fits: tuple[str, ...] = ("none",)
    text: str | None = None
    images: str | None = None
    n: int | None = None
    batch: int | None = None
    fit_batch: int = 1
    weights: str | None = None
    random_weights: bool = False
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class Setting:
    method: str
    params: dict[str, Any]
    m: int | None
    fit: str


@dataclass
class Reference:
    """The exact model's outputs on the evaluation inputs, and the fitting split's q, k, v."""

    out: torch.Tensor                        # text: (B, N, C) last hidden; vit: (B, classes) logits
    hidden: list[torch.Tensor]               # per layer (B, N, C)
    fit_qkv: Callable[[], dict[str, torch.Tensor]]   # (L, B_fit, H, N, d) each, computed once


def settings(cfg: DriftConfig) -> list[Setting]:
    """Every (method, m, fit): budgeted methods once per m; fitting modes for every method."""
    out = []
    for name in cfg.methods:
        info = registry.get_info(name)
        params = {**info.defaults, **cfg.params.get(name, {})}
        params.pop(info.budget, None) if info.budget else None
        for m in (cfg.ms if info.budget else (None,)):
            out += [Setting(name, params, m, fit) for fit in cfg.fits]
    return out


def fit_settings(cfg: DriftConfig, fit: str) -> dict[str, Any] | None:
    if fit == "none":
        return None
    return {"iters": cfg.fit_iters} if fit == "closed" else {"steps": cfg.fit_steps, "lr": cfg.fit_lr}


def drift_key(row: dict[str, Any]) -> str:
    return rows.identity(row)


def base_drift_row(cfg: DriftConfig, loaded: LoadedModel, s: Setting, n: int, batch: int,
                   inputs: dict[str, Any]) -> dict[str, Any]:
    info = registry.get_info(s.method)
    return {
        **rows.blank_row("drift"), "device_name": device_label(cfg.device),
        "kind": "drift", "model": loaded.name, "revision": loaded.revision, "method": s.method,
        "family": info.family, "params": s.params, "m": s.m, "fit": s.fit, "fit_cfg": fit_settings(cfg, s.fit),
        "n": n, "batch": batch, "heads": loaded.heads, "head_dim": loaded.head_dim, "layers": len(loaded.sites),
        "dtype": "float32", "device": cfg.device, "mode": "fwd", "seed": cfg.seed, "inputs": inputs,
        "grid": None, "status": None, "message": None, "fit_info": None, "fit_time_s": None,
        "embedding_cos_mean": None, "embedding_cos_min": None, "hidden_cos_mean": None, "hidden_cos_min": None,
        "hidden_token_cos_min": None, "top1_agreement": None, "logit_kl": None, "logit_kl_max": None,
    }


def method_grid(loaded: LoadedModel) -> tuple[int, int] | None:
    """The grid given to grid methods: the patch grid when every token is a patch, else None
    (text, or a class token: the methods' near-square factorisation of N)."""
    tg = loaded.token_grid
    return tuple(tg["grid"]) if tg is not None and tg["prefix_tokens"] == 0 else None


def build_layers(cfg: DriftConfig, loaded: LoadedModel, s: Setting, ref: Reference, n: int,
                 grid: tuple[int, int] | None) -> tuple[list[torch.nn.Module], dict[str, Any]]:
    """One module per layer, fitted on that layer's fitting q, k, v; fields fit_info, fit_time_s
    (or status unsupported with its message)."""
    mods, infos, seconds = [], [], 0.0
    for layer in range(len(loaded.sites)):
        mod = registry.build(s.method, heads=loaded.heads, head_dim=loaded.head_dim, params=s.params, m=s.m)
        mod = mod.to(cfg.device).eval()
        reason = mod.unsupported_reason(cfg.device, "float32", n, loaded.head_dim)
        if reason:
            return [], {"status": "unsupported", "message": reason}
        wl = lambda layer=layer: Workload("capture-fit", *(ref.fit_qkv()[x][layer] for x in "qkv"), grid)  # noqa: E731
        exact = lambda wl=wl: exact_reference(wl().q, wl().k, wl().v).out  # noqa: E731
        fitted = fit_module(s.fit, mod, wl, exact, iters=cfg.fit_iters, steps=cfg.fit_steps, lr=cfg.fit_lr)
        infos.append(fitted["fit_info"])
        seconds += fitted["fit_time_s"]
        mods.append(mod)
    return mods, {"fit_info": infos, "fit_time_s": seconds}


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last axis, in float64."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def compare(loaded: LoadedModel, ref: Reference, out: torch.Tensor, hidden: list[torch.Tensor]) -> dict[str, Any]:
    """The drift fields of one swapped run against the exact one."""
    per_layer = [cosine_rows(h, e) for h, e in zip(hidden, ref.hidden)]           # each (B, N)
    row: dict[str, Any] = {"hidden_cos_mean": [float(c.mean()) for c in per_layer]}
    row["hidden_cos_min"] = min(row["hidden_cos_mean"])
    row["hidden_token_cos_min"] = float(min(c.min() for c in per_layer))
    if loaded.kind == "text":
        emb = cosine_rows(out.mean(dim=1), ref.out.mean(dim=1))                    # (B,) mean-pooled
        row.update(embedding_cos_mean=float(emb.mean()), embedding_cos_min=float(emb.min()))
    else:
        logp, logq = torch.log_softmax(ref.out.double(), -1), torch.log_softmax(out.double(), -1)
        kl = (logp.exp() * (logp - logq)).sum(-1)                                  # (B,)
        row.update(top1_agreement=float((out.argmax(-1) == ref.out.argmax(-1)).double().mean()),
                   logit_kl=float(kl.mean()), logit_kl_max=float(kl.max()))
    return row


def measure_setting(cfg: DriftConfig, loaded: LoadedModel, s: Setting, ref: Reference,
                    ev: dict[str, torch.Tensor], row: dict[str, Any]) -> dict[str, Any]:
    """Fit, swap, run, compare; a failure becomes the row's status and message."""
    n = row["n"]
    grid = method_grid(loaded)
    row["grid"] = list(grid) if grid else "near-square factorisation of N"
    try:
        mods, fitted = build_layers(cfg, loaded, s, ref, n, grid)
        row.update(fitted)
        if row.get("status") == "unsupported":
            return row

        def attention(layer: int, q, k, v):
            return mods[layer](q, k, v, grid=grid)

        with torch.no_grad(), replaced(loaded, attention), hidden_states(loaded) as hidden:
            out = loaded.run(ev)
        row.update(compare(loaded, ref, out, hidden))
        row["status"] = "ok"
    except Exception as exc:  # every failure becomes a row, never the end of the run
        row.update(status="oom" if is_oom(exc) else "error", message=one_line(exc))
    return row


def reference(loaded: LoadedModel, ev: dict[str, torch.Tensor], fit_inputs: Any) -> Reference:
    with hidden_states(loaded) as hidden:
        out = loaded.run(ev)
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def fit_qkv() -> dict[str, torch.Tensor]:
        if "fit" not in cache:
            cache["fit"] = capture_qkv(loaded, fit_inputs)
        return cache["fit"]

    return Reference(out=out, hidden=list(hidden), fit_qkv=fit_qkv)


def done_keys(out: Path) -> set[str]:
    """Keys of the drift rows already in OUT/rows.jsonl (a cut-off last line is removed)."""
    from attnbench.results import read_rows

    out.mkdir(parents=True, exist_ok=True)
    path = out / "rows.jsonl"
    if not path.exists():
        return set()
    return {drift_key(r) for r in read_rows(path, repair_tail=True) if r.get("kind") == "drift"}


def run_drift(cfg: DriftConfig, argv: list[str] | None = None, echo: Callable[[str], None] | None = None,
              loaded: LoadedModel | None = None) -> list[dict[str, Any]]:
    """Measure every setting not already in ``cfg.out/rows.jsonl``; returns the rows written.

    ``loaded``: the model of ``cfg.model`` already loaded (it is not loaded again)."""
    from attnbench.results import RowWriter

    done = done_keys(cfg.out)
    loaded = loaded or load_model(cfg.model, cfg.weights, cfg.random_weights, cfg.seed)
    loaded.model.to(cfg.device)
    ev_inputs, fit_inputs = model_inputs(loaded, cfg)
    ev = {k: t.to(cfg.device) for k, t in ev_inputs.tensors.items()}
    fit_inputs.tensors = {k: t.to(cfg.device) for k, t in fit_inputs.tensors.items()}
    batch, n = _batch_and_tokens(loaded, ev)
    writer = RowWriter(cfg.out / "rows.jsonl")
    todo = [s for s in settings(cfg)
            if drift_key(base_drift_row(cfg, loaded, s, n, batch, ev_inputs.describe)) not in done]
    if todo:
        ref = reference(loaded, ev, fit_inputs)
    written = []
    stamp = record_invocation(cfg, argv if argv is not None else sys.argv) if todo else {}
    for s in todo:
        row = measure_setting(cfg, loaded, s, ref, ev, base_drift_row(cfg, loaded, s, n, batch, ev_inputs.describe))
        row.update(stamp, timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        writer.append(row)
        written.append(row)
        if echo is not None:
            echo(summary_line(row))
    return written


def record_invocation(cfg: DriftConfig, argv: list[str]) -> dict[str, Any]:
    """Append the command to OUT/runs.jsonl (as a sweep does); the run_id and env every row carries."""
    import uuid

    from attnbench.measure.env import collect_env
    from attnbench.results import RowWriter

    env = collect_env(cfg.device, cfg.seed)
    run_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    RowWriter(cfg.out / "runs.jsonl").append({"run_id": run_id, "argv": argv, "env": env,
                                              "timestamp": env["timestamp"]})
    return {"run_id": run_id, "env": env}


def _batch_and_tokens(loaded: LoadedModel, ev: dict[str, torch.Tensor]) -> tuple[int, int]:
    if loaded.kind == "text":
        return tuple(ev["input_ids"].shape)
    tg = loaded.token_grid
    return ev["pixel_values"].shape[0], tg["grid"][0] * tg["grid"][1] + tg["prefix_tokens"]


def summary_line(row: dict[str, Any]) -> str:
    """One line per row for the terminal."""
    head = f"{row['method']}" + (f" m={row['m']}" if row["m"] is not None else "") + f" fit={row['fit']}"
    if row["status"] != "ok":
        return f"{head}: {row['status']}: {row['message']}"
    if row["embedding_cos_mean"] is not None:
        return (f"{head}: embedding cos mean {row['embedding_cos_mean']:.4f} min {row['embedding_cos_min']:.4f}; "
                f"worst layer hidden cos {row['hidden_cos_min']:.4f}")
    return (f"{head}: top-1 agreement {row['top1_agreement']:.3f}, logit KL {row['logit_kl']:.4g}; "
            f"worst layer hidden cos {row['hidden_cos_min']:.4f}")
