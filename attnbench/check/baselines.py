"""Baseline files: where they live, reading and validating them, writing and diffing them."""
from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnbench.check.suite import Settings
from attnbench.check.device import machine_class
from attnbench.check.outputs import fingerprint_difference
from attnbench.check.prepare import Measured

from attnbench.measure.env import collect_env, git_commit
from attnbench.spec import DTYPES

FORMAT = "attnbench-ci-baseline/2"          # /2: per configuration an output fingerprint on the
OLD_FORMATS = ("attnbench-ci-baseline/1",)    #     correctness inputs; /1 (none) is still read
BASELINE_DIR = Path("baselines/ci")


class BaselineError(Exception):
    """A baseline file that is missing or cannot be used; the message is one line."""



def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def device_class(device: str) -> str:
    """'cpu', or the GPU model sanitized to a file name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def default_baseline_path(device: str, root: Path | None = None) -> Path:
    return (root or Path.cwd()) / BASELINE_DIR / f"{device_class(device)}.json"


def load_baseline(path: Path) -> dict[str, Any]:
    """The parsed baseline; BaselineError with a one-line reason when missing or malformed."""
    if not path.exists():
        raise BaselineError(f"baseline {path} is missing; create it with `bench.py check --update`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"baseline {path} is corrupt: {str(exc).splitlines()[0]}") from None
    _validate_baseline(path, data)
    return data


def _validate_baseline(path: Path, data: Any) -> None:
    if not isinstance(data, dict) or data.get("format") not in (FORMAT, *OLD_FORMATS):
        raise BaselineError(f"baseline {path} is corrupt: not a {FORMAT} file")
    if not isinstance(data.get("configs"), list) or not isinstance(data.get("settings"), dict):
        raise BaselineError(f"baseline {path} is corrupt: 'configs' or 'settings' missing")
    try:
        check_settings(data["settings"])
        for c in data["configs"]:
            check_config(c)
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise BaselineError(f"baseline {path} is corrupt: {type(exc).__name__}: {exc}") from None


def _is_number(v: Any, kind: type) -> bool:
    """An int (not a bool) for ``kind`` int; an int or float for ``kind`` float."""
    return not isinstance(v, bool) and isinstance(v, (int, float) if kind is float else kind)


def check_settings(raw: dict[str, Any]) -> None:
    """ValueError/TypeError naming the first setting of the wrong type or out of range."""
    s = Settings(**raw)
    for f in fields(Settings):
        v, kind = getattr(s, f.name), type(f.default)
        if not (_is_number(v, kind) if kind in (int, float) else isinstance(v, kind)):
            raise ValueError(f"settings.{f.name} = {v!r} is not a{'n' if kind is int else ''} {kind.__name__}")
        if kind in (int, float) and f.name != "seed" and not v > 0:
            raise ValueError(f"settings.{f.name} = {v!r} is not positive")
    if s.dtype not in DTYPES:
        raise ValueError(f"settings.dtype = {s.dtype!r} is not one of {', '.join(DTYPES)}")
    if s.fit not in ("none", "closed"):
        raise ValueError(f"settings.fit = {s.fit!r} is not none or closed")
    if s.device not in ("cpu", "cuda"):
        raise ValueError(f"settings.device = {s.device!r} is not cpu or cuda")


def check_config(c: dict[str, Any]) -> None:
    """ValueError/TypeError when one configuration's fields are of the wrong type or out of range."""
    if not isinstance(c.get("method"), str) or not c["method"]:
        raise ValueError(f"a configuration has no method name: {c.get('method')!r}")
    for name in ("n", "m"):
        v = c.get(name)
        if (name == "n" or v is not None) and not (_is_number(v, int) and v > 0):
            raise ValueError(f"{c['method']}: {name} = {v!r} is not a positive integer")
    if not isinstance(c.get("params") or {}, dict):
        raise ValueError(f"{c['method']}: params = {c['params']!r} is not an object")
    if c.get("status") == "ok":
        samples = c["samples"]
        if not samples or not all(_is_number(s, float) and s > 0 for s in samples):
            raise ValueError(f"{c['method']} has no positive samples")
        if not _is_number(c["err_rel_fro"], float):
            raise ValueError(f"{c['method']}: err_rel_fro = {c['err_rel_fro']!r} is not a number")
        if c.get("fingerprint") is not None:
            check_fingerprint(c["method"], c["fingerprint"])


def check_fingerprint(method: str, fp: Any) -> None:
    if not (isinstance(fp, dict) and _is_number(fp.get("norm"), float) and isinstance(fp.get("proj"), list)
            and fp["proj"] and all(_is_number(x, float) for x in fp["proj"]) and isinstance(fp.get("shape"), list)):
        raise ValueError(f"{method}: fingerprint is not {{shape, norm, proj: [numbers]}}")


def has_fingerprints(baseline: dict[str, Any]) -> bool:
    """Whether the baseline stores output fingerprints (format /2 and later)."""
    return any(c.get("fingerprint") for c in baseline["configs"] if c.get("status") == "ok")


def measured_env(s: Settings) -> dict[str, Any]:
    """collect_env, with the thread count the CPU timings ran under."""
    env = collect_env(s.device, s.seed)
    env["torch_threads"] = s.threads if s.device == "cpu" else env["torch_threads"]
    return env


def baseline_dict(items: list[Measured], s: Settings, argv: list[str] | None) -> dict[str, Any]:
    env = measured_env(s)
    return {
        "format": FORMAT,
        "device_class": device_class(s.device),
        "machine_class": machine_class(s.device),
        "unit": "ms" if s.device == "cuda" else "ratio to plain attention at the same n",
        "provenance": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       "commit": git_commit(), "command": argv, "env": env},
        "settings": asdict(s),
        "configs": [config_dict(it) for it in items],
    }


def config_dict(it: Measured) -> dict[str, Any]:
    e = it.entry
    out = {"key": e.key, "method": e.method, "n": e.n, "m": e.m, "params": e.params, "exact": e.exact,
           "status": it.status, "message": it.message, "err_rel_fro": it.err_rel_fro,
           "plain_err_rel_fro": it.plain_err, "fingerprint": it.fingerprint, "fit": it.fit_info}
    if it.status == "ok":
        out.update(median=float(np.median(it.samples)), median_ms=float(np.median(it.latency_ms)),
                   samples=[round(x, 6) for x in it.samples])
    return out



def baseline_diff(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """One line per configuration added, removed or changed between two baselines."""
    if old is None:
        return [f"new baseline with {len(new['configs'])} configurations"]
    before = {c["key"]: c for c in old.get("configs", []) if isinstance(c, dict) and "key" in c}
    after = {c["key"]: c for c in new["configs"]}
    lines = [f"- {k}" for k in before if k not in after] + [f"+ {k}" for k in after if k not in before]
    for k in (k for k in after if k in before):
        a, b = before[k], after[k]
        moved = (f", output differs from the old baseline's by "
                 f"{_fmt(fingerprint_difference(b['fingerprint'], a['fingerprint']))}"
                 if a.get("fingerprint") and b.get("fingerprint") else "")
        lines.append(f"~ {k}: median {_fmt(a.get('median'))} -> {_fmt(b.get('median'))}, "
                     f"err {_fmt(a.get('err_rel_fro'))} -> {_fmt(b.get('err_rel_fro'))}, "
                     f"status {a.get('status')} -> {b.get('status')}{moved}")
    return lines


def _fmt(x: Any) -> str:
    return "-" if x is None else (f"{x:.4g}" if isinstance(x, (int, float)) else str(x))


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
