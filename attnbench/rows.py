"""THE row: one typed definition of every field a rows.jsonl line may hold.

The resume key of a sweep, the report's grouping and de-duplication, the model rows and the
row table in docs/rows.md all derive from ``FIELDS`` here. A field is declared once,
with its unit, its meaning, which kinds of row carry it and whether it is part of the row's
identity (two rows with the same identity measured the same thing).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

from attnbench.measure.roofline import ROOFLINE_FIELDS
from attnbench.measure.telemetry import TELEMETRY_KEYS

KINDS = ("attention", "model", "drift", "train")
STATUSES = ("ok", "oom", "error", "unsupported", "timeout", "crashed", "harness_error")
RETRY_STATUSES = ("crashed", "timeout", "error", "harness_error")   # what --retry-failed measures again
NUMBER, INT, TEXT, FLAG, MAPPING, LIST, ANY = "number", "int", "text", "flag", "mapping", "list", "any"
_TYPES = {NUMBER: (int, float), INT: (int,), TEXT: (str,), FLAG: (bool,), MAPPING: (dict,), LIST: (list,)}
BOTH = KINDS          # fields every kind of row carries
SWEPT = ("attention", "drift")


@dataclass(frozen=True)
class Field:
    """One row field: name, type, unit ('' if none), meaning, kinds carrying it, identity."""

    name: str
    type: str
    unit: str
    doc: str
    kinds: tuple[str, ...] = ("attention",)
    key: bool = False            # part of the identity key of the kinds that carry it
    group: str = ""              # docs/rows.md: fields sharing a group are described on one line

    def accepts(self, value: Any) -> bool:
        """True for None or a value of the declared type (bool is not a number here)."""
        if value is None or self.type == ANY:
            return True
        if isinstance(value, bool) and self.type in (NUMBER, INT):
            return False
        return isinstance(value, _TYPES[self.type])


def _f(name, type_, unit, doc, kinds=("attention",), key=False, group=""):
    return Field(name, type_, unit, doc, tuple(kinds), key, group or name)


_IDENTITY = [
    _f("kind", TEXT, "", "`attention` (a sweep point), `model` (a whole-model audit), `drift` (a pretrained "
       "model with its attention replaced) or `train` (a small model trained with it on a generated task)",
       BOTH, True),
    _f("method", TEXT, "", "registry name of the attention", BOTH, True),
    _f("family", TEXT, "", "the method's family (vanilla, anchor, window, ...)", BOTH),
    _f("params", MAPPING, "", "constructor parameters other than the budget", BOTH, True),
    _f("n", INT, "tokens", "token count N (models: tokens a block attends over, cls included)", BOTH, True),
    _f("m", INT, "", "budget (anchors, landmarks, agents); null for methods without one", BOTH, True),
    _f("batch", INT, "", "batch size", BOTH, True),
    _f("heads", INT, "", "attention heads", SWEPT, True, "heads"),
    _f("head_dim", INT, "", "head dimension d", SWEPT, True, "heads"),
    _f("dtype", TEXT, "", "input dtype", BOTH, True),
    _f("device", TEXT, "", "cpu or cuda", BOTH, True),
    _f("device_name", TEXT, "", "GPU model or CPU model: rows from different machines are never duplicates", BOTH, True),
    _f("mode", TEXT, "", "fwd (no-grad forward) or fwdbwd (forward plus backward)", BOTH, True),
    _f("workload", TEXT, "", "q, k, v generator: gaussian, image, file:PATH", ("attention",), True),
    _f("seed", INT, "", "workload and method seed", BOTH, True),
    _f("fit", TEXT, "", "learnable state before measuring: none, closed or distill", SWEPT, True, "fit"),
    _f("fit_cfg", MAPPING, "", "the fitting options that change a fitted row", SWEPT, True, "fit"),
    _f("timing_mode", TEXT, "", "eager, or cuda_graph (replays of one captured graph)", ("attention",), True),
    _f("layer", ANY, "", "layer of a captured-model workload (`all` for the whole file); null otherwise",
       ("attention",), True),
    _f("arch", TEXT, "", "model architecture (deit-tiny, deit-small, deit-base)", ("model",), True),
    _f("img", INT, "pixels", "image side", ("model",), True),
    _f("timed", FLAG, "", "whether images per second were measured", ("model",), True),
    _f("model", TEXT, "", "the pretrained model (minilm, hf:..., timm:...)", ("drift",), True, "drift_model"),
    _f("revision", TEXT, "", "its weights' revision", ("drift",), True, "drift_model"),
    _f("inputs", MAPPING, "", "the held-out inputs compared on (text or images, windows)", ("drift",), True),
    _f("task", TEXT, "", "the generated task trained on (recall, listops, grid)", ("train",), True, "train_id"),
    _f("train_cfg", MAPPING, "", "model and optimiser settings (layers, width, heads, mlp_ratio, lr, weight_decay, "
       "warmup, held_out) and the training steps asked for", ("train",), True, "train_id"),
    _f("steps", INT, "", "", ("train",), True, "train_id"),
]

_OUTCOME = [
    _f("status", TEXT, "", "one of " + ", ".join(f"`{s}`" for s in STATUSES), BOTH),
    _f("message", TEXT, "", "why a row is not ok (one line), or a note", BOTH),
    _f("latency_ms", NUMBER, "ms", "median of one call", group="latency"),
    _f("latency_p20_ms", NUMBER, "ms", "20th percentile of one call", group="latency"),
    _f("latency_p80_ms", NUMBER, "ms", "80th percentile of one call", group="latency"),
    _f("latency_iqr_rel", NUMBER, "", "interquartile range / median", group="latency"),
    _f("timing", MAPPING, "", "how it was timed: method, budgets with their units, calls; CPU: "
       "torch.utils.benchmark blocked_autorange; CUDA: CUDA events, L2 flushed before each call", BOTH),
    _f("peak_mem_bytes", INT, "bytes", "peak bytes allocated during one call above the live inputs, output "
       "included (CUDA allocator statistics; CPU: the profiler's allocation events summed in time order); "
       "train rows: during one training step", ("attention", "train"), group="memory"),
    _f("peak_mem_method", TEXT, "", "which of the two measured it", ("attention", "train"), group="memory"),
    _f("macs_analytic", INT, "MACs", "forward multiply-adds by the method's formula (matrix products only)",
       group="macs"),
    _f("macs_fvcore", INT, "MACs", "forward multiply-adds by fvcore (the papers' \"FLOPs\")", BOTH, group="macs"),
    _f("flops_torch", INT, "FLOPs", "forward floating-point operations (2 x MACs) by FlopCounterMode", BOTH,
       group="macs"),
    _f("flops_scope", TEXT, "", "what the counts cover (fwd)", group="macs"),
    _f("fvcore_uncounted_ops", LIST, "", "operators fvcore saw but could not count", BOTH, group="macs"),
    _f("flop_notes", TEXT, "", "why a count is missing", group="macs"),
    _f("err_rel_fro", NUMBER, "", "‖out − ref‖_F / ‖ref‖_F against float64 exact attention on the same q, k, v",
       group="error"),
    _f("err_max_abs", NUMBER, "", "max |out − ref|", group="error"),
    _f("err_cos_mean", NUMBER, "", "mean per-token cosine of out and ref", group="error"),
    _f("out_finite", FLAG, "", "whether the output has no inf or NaN", group="error"),
    _f("attn_entropy_ratio", NUMBER, "", "mean row entropy of exact attention / log n: near 1 means "
       "near-uniform attention, where every approximation looks good"),
    _f("workload_params", MAPPING, "", "the workload's own settings (logit_std, images, file shape, ...)"),
    _f("impl", MAPPING, "", "what actually ran, e.g. `sdpa_backend`, Triton configs, compile time"),
    _f("fit_info", ANY, "", "what fitting did (objective, losses, or why nothing; drift: one per layer)", SWEPT,
       group="fit_info"),
    _f("fit_time_s", NUMBER, "s", "time spent fitting, outside every timed region", SWEPT, group="fit_info"),
    _f("err_uniform_rel_fro", NUMBER, "", "error of `uniform` (out = mean of v) on the same inputs",
       group="skill"),
    _f("err_skill", NUMBER, "", "1 − err_rel_fro / err_uniform_rel_fro: 1 exact, 0 no better than averaging v",
       group="skill"),
    _f("attn_kl_mean", NUMBER, "nats", "mean row KL(exact ‖ method) of the implied N×N matrix (N ≤ 4096)",
       group="attnmap"),
    _f("attn_tv_mean", NUMBER, "", "mean row total variation of the implied matrix", group="attnmap"),
    _f("attn_map_reason", TEXT, "", "why the attention-map metrics are null", group="attnmap"),
]

_TELEMETRY = [_f(k, ANY if k.endswith("throttle_before") or k.endswith("throttle_after") else
                 (TEXT if k == "telemetry_reason" else NUMBER),
                 "", "NVML telemetry around the CUDA timed loop: clocks (MHz), temperature (C), power (W), "
                 "throttle reasons, utilisation (%), energy per call (J) from the total-energy counter; "
                 "null with `telemetry_reason` elsewhere", group="telemetry") for k in TELEMETRY_KEYS]

_ROOFLINE = [_f(k, TEXT if k == "roofline_flops_basis" else NUMBER, "",
                "compulsory bytes (inputs read once, output written once), achieved GB/s and TFLOP/s, and "
                "their fractions of the device's measured copy bandwidth and matmul throughput",
                group="roofline") for k in ROOFLINE_FIELDS]

_MODEL = [
    _f("attention", TEXT, "", "the attention in every block (registry name)", ("model",)),
    _f("param_count", INT, "", "model parameters", ("model", "train")),
    _f("images_per_s", NUMBER, "images/s", "forward throughput at `batch`", ("model",)),
]

_DRIFT = [
    _f("layers", INT, "", "layers whose attention was replaced (all of them)", ("drift",), group="drift"),
    _f("grid", ANY, "", "token grid given to grid methods, or how they factorise N without one", ("drift", "train"),
       group="drift"),
    _f("embedding_cos_mean", NUMBER, "", "mean / min cosine of the pooled embeddings, swapped vs exact model "
       "(encoders)", ("drift",), group="embedding"),
    _f("embedding_cos_min", NUMBER, "", "", ("drift",), group="embedding"),
    _f("hidden_cos_mean", LIST, "", "per layer: mean cosine of the hidden states; the smallest layer mean; the "
       "smallest single token's", ("drift",), group="hidden"),
    _f("hidden_cos_min", NUMBER, "", "", ("drift",), group="hidden"),
    _f("hidden_token_cos_min", NUMBER, "", "", ("drift",), group="hidden"),
    _f("top1_agreement", NUMBER, "", "ViT classifiers: share of images whose top-1 class is unchanged; mean and "
       "max KL(exact ‖ swapped) of the logits", ("drift",), group="logits"),
    _f("logit_kl", NUMBER, "nats", "", ("drift",), group="logits"),
    _f("logit_kl_max", NUMBER, "nats", "", ("drift",), group="logits"),
]

_TRAIN = [
    _f("accuracy", NUMBER, "", "held-out accuracy after training (a fraction; recall: of the queries); its "
       "chance level (recall: 1 / pairs, else the most common held-out label's share)", ("train",),
       group="accuracy"),
    _f("chance", NUMBER, "", "", ("train",), group="accuracy"),
    _f("accuracy_curve", LIST, "", "[step, held-out accuracy] pairs during training", ("train",), group="accuracy"),
    _f("final_loss", NUMBER, "nats", "mean training loss of the last steps; steps trained; median time of one "
       "step (forward, backward, optimiser); wall time of the whole point", ("train",), group="train_time"),
    _f("steps_done", INT, "", "", ("train",), group="train_time"),
    _f("step_ms", NUMBER, "ms", "", ("train",), group="train_time"),
    _f("wall_s", NUMBER, "s", "", ("train",), group="train_time"),
]

_PROVENANCE = [
    _f("run_id", TEXT, "", "the invocation that measured the row (see runs.jsonl)", BOTH, group="provenance"),
    _f("timestamp", TEXT, "", "UTC time the row was measured", BOTH, group="provenance"),
    _f("env", MAPPING, "", "device, CPU model, torch/CUDA/triton/xformers versions, git commit, seed, TF32 "
       "flags, NVML driver, clocks and power limit (nulls with `nvml_reason` off-GPU)", BOTH, group="env"),
]

# Where a row was measured: the executor and its worker (filled by attnbench.run).
_WORKER = [
    _f("executor", TEXT, "", "inline (the sweep's own process), process (an isolated worker process) or ray",
       ("attention", "train"), group="worker"),
    _f("worker_host", TEXT, "", "host name of the worker", group="worker"),
    _f("worker_pid", INT, "", "process id of the worker", group="worker"),
    _f("device_index", INT, "", "index of the CUDA device in the machine's numbering (null on CPU)", group="worker"),
    _f("device_uuid", TEXT, "", "UUID of the CUDA device (null on CPU)", group="worker"),
    _f("ray_node_id", TEXT, "", "Ray node ID of the worker (null off Ray)", group="worker"),
]

FIELDS: tuple[Field, ...] = tuple(_IDENTITY + _OUTCOME + _TELEMETRY + _ROOFLINE + _MODEL + _DRIFT + _TRAIN
                                   + _PROVENANCE + _WORKER)
BY_NAME = {f.name: f for f in FIELDS}
REQUIRED = ("method", "n", "status", "device", "dtype", "mode")
POSITIVE = ("n", "m", "batch", "heads", "head_dim", "img")


def fields_of(kind: str) -> tuple[Field, ...]:
    return tuple(f for f in FIELDS if kind in f.kinds)


def key_fields(kind: str = "attention") -> tuple[str, ...]:
    """Names of the identity fields of rows of ``kind``, in declaration order."""
    return tuple(f.name for f in fields_of(kind) if f.key)


def blank_row(kind: str = "attention") -> dict[str, Any]:
    """Every field of ``kind`` as null, except ``kind`` itself."""
    if kind not in KINDS:
        raise ValueError(f"unknown row kind {kind!r}; use {', '.join(KINDS)}")
    return {**{f.name: None for f in fields_of(kind)}, "kind": kind}


def row_kind(row: dict[str, Any]) -> str:
    """The row's kind; rows written before the field existed are attention rows."""
    return row.get("kind") or "attention"


def identity(row: dict[str, Any]) -> str:
    """The identity key of a row as a canonical JSON string (equal for rows of the same point)."""
    kind = row_kind(row)
    values = [kind] + [row.get(k) for k in key_fields(kind) if k != "kind"]
    return json.dumps(values, sort_keys=True, default=str)


def type_problem(row: dict[str, Any]) -> str | None:
    """None when every declared field of the row has its declared type, else a sentence naming one."""
    missing = [f for f in REQUIRED if f not in row]
    if missing:
        return f"lacks field(s) {', '.join(missing)}"
    if row.get("status") not in STATUSES:
        return f"has unknown status {row.get('status')!r}"
    if row_kind(row) not in KINDS:
        return f"has unknown kind {row.get('kind')!r}"
    for name, value in row.items():
        f = BY_NAME.get(name)
        if f is not None and not f.accepts(value):
            return f"field {name!r} is {type(value).__name__} {_short(value)}, expected {f.type}"
        if name in POSITIVE and value is not None and value <= 0:
            return f"field {name!r} is {value}, expected a positive {f.type}"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def dedup(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Rows with one row per identity, the last one written winning; and how many were dropped."""
    latest: dict[str, dict[str, Any]] = {}
    count = 0
    for row in rows:
        count += 1
        latest[identity(row)] = row
    return list(latest.values()), count - len(latest)


def markdown_table() -> str:
    """The "What a row holds" table of docs/rows.md: one line per field group."""
    lines = ["| field | kinds | unit | meaning |", "|---|---|---|---|"]
    groups: dict[str, list[Field]] = {}
    for f in FIELDS:
        groups.setdefault(f.group, []).append(f)
    for members in groups.values():
        names = ", ".join(f"`{f.name}`" for f in members)
        if len(members) > 6:
            names = ", ".join(f"`{f.name}`" for f in members[:3]) + f", … ({len(members)} fields)"
        kinds = "/".join(sorted({k for f in members for k in f.kinds}))
        units = ", ".join(dict.fromkeys(f.unit for f in members if f.unit)) or "–"
        key = " *Identity.*" if any(f.key for f in members) else ""
        docs = "; ".join(dict.fromkeys(f.doc for f in members if f.doc)).replace("|", "\\|")
        lines.append(f"| {names} | {kinds} | {units} | {docs.rstrip('.')}.{key} |")
    return "\n".join(lines)


if __name__ == "__main__":   # python -m attnbench.rows: the row table of docs/rows.md
    print(markdown_table())
