"""The shared vocabulary of every command: option specs, dtypes, modes, one-line errors.

Nothing here measures anything; sweep, check, profile, model and report import from here.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from attnbench.choices import MODES  # noqa: F401  (spec.MODES, as before)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MESSAGE_LIMIT = 300  # characters of an exception's first line kept in a row or an error line


class SpecError(ValueError):
    """A malformed command-line specification; the message is one line."""


def one_line(exc: BaseException, limit: int = MESSAGE_LIMIT) -> str:
    """'TypeName: first line of the message', cut to ``limit`` characters."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")[:limit]


def is_oom(exc: BaseException) -> bool:
    """True for out-of-memory failures of the host or the device."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def parse_n_spec(spec: str) -> list[int]:
    """'196..16384' -> 196, the powers of two strictly between, 16384; commas join parts."""
    if spec is None or not str(spec).strip():
        raise SpecError("--n is empty: give token counts like 196,1024 or a range like 196..16384")
    values: list[int] = []
    for part in str(spec).split(","):
        values += _n_part(part.strip(), spec)
    if any(x <= 0 for x in values):
        raise SpecError(f"--n {spec!r}: token counts must be positive")
    return sorted(set(values))


def _n_part(part: str, spec: str) -> list[int]:
    try:
        if ".." not in part:
            return [int(part)]
        lo_s, hi_s = part.split("..")
        lo, hi = int(lo_s), int(hi_s)
    except ValueError:
        raise SpecError(f"--n {spec!r} is malformed: expected integers like 196,1024 "
                        "or a range like 196..16384") from None
    if lo <= 0 or hi < lo:
        raise SpecError(f"--n range {part!r} needs 0 < A <= B")
    values, p = [lo], 1
    while p <= lo:
        p *= 2
    while p < hi:
        values.append(p)
        p *= 2
    return values + ([hi] if hi != lo else [])


def parse_m_spec(spec: str | None) -> list[int]:
    """'10,30,100' -> [10, 30, 100]; None or '' -> []."""
    if spec is None or str(spec).strip() == "":
        return []
    try:
        values = [int(x) for x in str(spec).split(",") if x.strip()]
    except ValueError:
        raise SpecError(f"--m {spec!r} is malformed: expected integers like 10,30,100") from None
    bad = [x for x in values if x <= 0]
    if bad:
        raise SpecError(f"--m must be positive, got {bad[0]}")
    return sorted(set(values))


def parse_value(text: str) -> Any:
    """'true' -> True, '3' -> 3, '0.5' -> 0.5, anything else stays a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_params(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """['anchor.shared=true'] -> {'anchor': {'shared': True}}; a comma list is a list of variants:
    'vanilla-sdpa.backend=flash,math' -> {'vanilla-sdpa': {'backend': ['flash', 'math']}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        head, eq, value = item.partition("=")
        method, dot, key = head.rpartition(".")
        if not eq or not dot or not method or not key:
            raise SpecError(f"--param {item!r} is malformed: expected METHOD.KEY=VALUE")
        variants = [parse_value(v.strip()) for v in value.split(",")] if "," in value else None
        if variants is not None and "" in variants:
            raise SpecError(f"--param {item!r} has an empty value in its comma list")
        out.setdefault(method, {})[key] = variants if variants is not None else parse_value(value)
    return out


def param_variants(params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the list-valued entries (from comma lists); [params] when there are none."""
    combos: list[dict[str, Any]] = [{}]
    for key, value in params.items():
        combos = [{**c, key: v} for c in combos for v in (value if isinstance(value, list) else [value])]
    return combos


def positive(name: str, value: float) -> float:
    """``value`` if it is a finite number > 0, else SpecError naming the option."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise SpecError(f"{name} must be a positive finite number, got {value}")
    return value
