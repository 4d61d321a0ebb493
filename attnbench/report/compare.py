"""``bench.py compare A B``: the rows of two run folders paired by identity minus the compared fields.

Two rows pair when they are equal in every identity field (attnbench.rows ``key_fields``)
except the fields named by ``on``: identity fields (``dtype``, ``device_name``, ``params``),
one key of an identity mapping (``params.backend``), or an environment value (``env.torch``,
``env.git_commit``), which is no part of the identity and is only shown. Without ``on``, the
identity fields whose values in A and B have nothing in common are used.

Per pair: latency ratio B/A with the band [p20(B)/p80(A), p80(B)/p20(A)] from the recorded
per-call percentiles of both rows (no timing samples are stored in a row), the peak-memory
ratio B/A and the error difference B − A. A pair is "faster" when the whole band lies below
1, "slower" when it lies above 1, else "within band".
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnbench import rows as R
from attnbench.report.load import read_run

ENV_VOLATILE = ("timestamp", "seed")   # env keys that differ between any two runs
INTERVAL_BASIS = "recorded p20/p80 of both rows: [p20(B)/p80(A), p80(B)/p20(A)]"
SERIES = ("method", "params", "m")


class CompareError(ValueError):
    """Nothing can be compared; the message is one line."""


@dataclass
class Pair:
    a: dict[str, Any]
    b: dict[str, Any]
    ratio: float | None = None        # latency B / A
    lo: float | None = None
    hi: float | None = None
    mem_ratio: float | None = None
    err_diff: float | None = None      # err_rel_fro B - A
    outcome: str = "not timed"         # faster | slower | within band | not timed

    label: str = ""                    # the series: method, the params that vary, m

    @property
    def series(self) -> str:
        return self.label or series_label(self.a)


@dataclass
class Comparison:
    a_path: Path
    b_path: Path
    on: list[str]
    on_found: bool                     # on was found from the rows (no --on given)
    pairs: list[Pair]
    only_a: list[dict[str, Any]]
    only_b: list[dict[str, Any]]
    env_diffs: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)

    def values(self, name: str) -> tuple[list[str], list[str]]:
        """The distinct values of ``name`` in A's and B's rows, as text."""
        return distinct(self.pairs_rows("a"), name), distinct(self.pairs_rows("b"), name)

    def pairs_rows(self, side: str) -> list[dict[str, Any]]:
        return [getattr(p, side) for p in self.pairs] or (self.only_a if side == "a" else self.only_b)


def lookup(row: dict[str, Any], name: str) -> Any:
    """A field or a dotted path into nested mappings (``env.torch``, ``params.backend``)."""
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    if name == "kind" and value is None:
        return "attention"
    return value


def text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def distinct(rows: list[dict[str, Any]], name: str) -> list[str]:
    return sorted({text(lookup(r, name)) for r in rows})


def load_side(path: Path, label: str) -> list[dict[str, Any]]:
    """The rows of one run folder de-duplicated by identity; a missing or empty folder raises."""
    problems: list[str] = []
    rows, _ = read_run(Path(path), problems)
    if problems:
        raise CompareError(f"{label}: {problems[0]}")
    kept, _ = R.dedup(rows)
    return kept


def identity_names(rows: list[dict[str, Any]]) -> list[str]:
    """Identity fields of the kinds present, in declaration order, without ``kind``."""
    kinds = {R.row_kind(r) for r in rows}
    return [f.name for f in R.FIELDS if f.key and f.name != "kind" and kinds & set(f.kinds)]


def check_on(on: list[str], rows: list[dict[str, Any]]) -> None:
    names = identity_names(rows)
    mappings = {f.name for f in R.FIELDS if f.key and f.type == R.MAPPING}
    for name in on:
        head = name.split(".", 1)[0]
        ok = name in names or head == "env" and "." in name or (head in mappings and head in names and "." in name)
        if not ok:
            raise CompareError(f"--on {name!r} is not an identity field of these rows; use one of "
                               f"{', '.join(names)}, a key of a mapping (params.KEY) or env.KEY (env.torch, env.git_commit)")


def find_on(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[str]:
    """Identity fields whose values in A and in B have nothing in common."""
    return [n for n in identity_names(a + b) if not set(distinct(a, n)) & set(distinct(b, n))]


def env_differences(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, tuple[list[str], list[str]]]:
    """env.KEY -> (A's values, B's values) for the env keys whose values differ between the runs."""
    keys = sorted({k for r in a + b for k in (r.get("env") or {}) if k not in ENV_VOLATILE
                   and not isinstance((r.get("env") or {}).get(k), dict)})
    out = {}
    for key in keys:
        va, vb = distinct(a, f"env.{key}"), distinct(b, f"env.{key}")
        if va != vb:
            out[f"env.{key}"] = (va, vb)
    return out


def pair_key(row: dict[str, Any], on: list[str]) -> str:
    """The row's identity with the ``on`` fields (or keys of them) left out."""
    whole = {n for n in on if "." not in n}
    parts = {}
    for name in key_names(row):
        if name in whole:
            continue
        value = row.get(name)
        drop = [n.split(".", 1)[1] for n in on if n.startswith(name + ".")]
        if drop and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in drop}
        parts[name] = value
    return json.dumps([R.row_kind(row), parts], sort_keys=True, default=str)


def key_names(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(n for n in R.key_fields(R.row_kind(row)) if n != "kind")


def index(rows: list[dict[str, Any]], on: list[str], label: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = pair_key(row, on)
        if key in out:
            varies = [n for n in on if text(lookup(row, n)) != text(lookup(out[key], n))]
            raise CompareError(f"{label} holds two rows that differ only in {', '.join(varies) or ', '.join(on)} "
                               f"({series_label(row)} at n={row.get('n')}), so a row of the other run would have "
                               "two partners: compare run folders that hold one value each")
        out[key] = row
    return out


def number(row: dict[str, Any], name: str) -> float | None:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def measure_pair(a: dict[str, Any], b: dict[str, Any]) -> Pair:
    """Ratios and band of one pair (see the module docstring)."""
    p = Pair(a, b)
    ta, tb = number(a, "latency_ms"), number(b, "latency_ms")
    ok = a.get("status") == "ok" and b.get("status") == "ok"
    if ok and ta and tb and ta > 0 and tb > 0:
        p.ratio = tb / ta
        a20, a80, b20, b80 = (number(r, f) for r in (a, b) for f in ("latency_p20_ms", "latency_p80_ms"))
        if all(v and v > 0 for v in (a20, a80, b20, b80)):
            p.lo, p.hi = b20 / a80, b80 / a20
        else:
            p.lo = p.hi = p.ratio
        p.outcome = "faster" if p.hi < 1 else "slower" if p.lo > 1 else "within band"
    ma, mb = number(a, "peak_mem_bytes"), number(b, "peak_mem_bytes")
    if ok and ma and mb:
        p.mem_ratio = mb / ma
    ea, eb = number(a, "err_rel_fro"), number(b, "err_rel_fro")
    if ok and ea is not None and eb is not None:
        p.err_diff = eb - ea
    return p


def varying_params(rows: list[dict[str, Any]]) -> dict[str, set[str]]:
    """method -> the parameter names whose values differ among its rows."""
    seen: dict[str, dict[str, set[str]]] = {}
    for r in rows:
        params = r.get("params") if isinstance(r.get("params"), dict) else {}
        for k, v in params.items():
            seen.setdefault(str(r.get("method")), {}).setdefault(k, set()).add(text(v))
    return {m: {k for k, vs in keys.items() if len(vs) > 1} for m, keys in seen.items()}


def series_label(row: dict[str, Any], shown: set[str] | None = None) -> str:
    """'anchor m=30', 'vanilla-sdpa backend=flash': the method, its parameters in ``shown`` (all
    when None) and m."""
    params = row.get("params") or {}
    keys = sorted(k for k in params if shown is None or k in shown) if isinstance(params, dict) else []
    extra = " ".join(f"{k}={params[k]}" for k in keys)
    m = row.get("m")
    return " ".join(s for s in (str(row.get("method")), extra, f"m={m}" if m is not None else "") if s)


def compare(a_path: Path, b_path: Path, on: list[str] | None = None) -> Comparison:
    """Pair the rows of two run folders (see the module docstring)."""
    a, b = load_side(a_path, "A"), load_side(b_path, "B")
    kinds_a, kinds_b = {R.row_kind(r) for r in a}, {R.row_kind(r) for r in b}
    if not kinds_a & kinds_b:
        raise CompareError(f"A holds {', '.join(sorted(kinds_a))} rows and B {', '.join(sorted(kinds_b))} rows: "
                           "nothing of the same kind to compare")
    found = on is None
    on = find_on(a, b) if on is None else list(on)
    check_on(on, a + b)
    ia, ib = index(a, on, "A"), index(b, on, "B")
    vary = varying_params(a + b)
    pairs = [measure_pair(ia[k], ib[k]) for k in ia if k in ib]
    for p in pairs:
        p.label = series_label(p.a, vary.get(str(p.a.get("method")), set()))
    if not pairs:
        raise CompareError(f"no row of A pairs with a row of B on {', '.join(on) or 'the full identity'} "
                           f"({len(a)} rows in A, {len(b)} in B)")
    pairs.sort(key=lambda p: (p.series, p.a.get("n") or 0, pair_key(p.a, on)))
    only_a = [ia[k] for k in ia if k not in ib]
    only_b = [ib[k] for k in ib if k not in ia]
    return Comparison(Path(a_path), Path(b_path), on, found, pairs, only_a, only_b, env_differences(a, b))


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def where_text(pairs: list[Pair], chosen: list[Pair]) -> str:
    """'window at n ≥ 4096, anchor m=30 at n = 196': the chosen pairs' series and their n."""
    parts = []
    for series in sorted({p.series for p in chosen}):
        ns = sorted({int(p.a["n"]) for p in chosen if p.series == series})
        every = sorted({int(p.a["n"]) for p in pairs if p.series == series and p.ratio is not None})
        if ns == every:
            where = "at every n" if len(every) > 1 else f"at n = {ns[0]}"
        elif ns == [n for n in every if n >= ns[0]]:
            where = f"at n ≥ {ns[0]}"
        else:
            where = "at n = " + ", ".join(map(str, ns))
        parts.append(f"{series} {where}")
    return ", ".join(parts)


def verdict(c: Comparison) -> str:
    """'B is 1.8× faster on 40 of 42 points; slower on window at n ≥ 4096; within the band on 1.'"""
    timed = [p for p in c.pairs if p.ratio is not None]
    if not timed:
        return f"No pair has an ok latency on both sides ({len(c.pairs)} pairs)."
    faster = [p for p in timed if p.outcome == "faster"]
    slower = [p for p in timed if p.outcome == "slower"]
    same = [p for p in timed if p.outcome == "within band"]
    if not faster and not slower:
        return (f"B and A agree within the p20–p80 band on all {len(timed)} points "
                f"(B/A latency: geometric mean {geomean([p.ratio for p in timed]):.3g}).")
    head, other, word, other_word = (faster, slower, "faster", "slower") if len(faster) >= len(slower) \
        else (slower, faster, "slower", "faster")
    factor = geomean([p.ratio for p in head])
    factor = 1 / factor if word == "faster" else factor
    out = f"B is {factor:.2g}× {word} on {len(head)} of {len(timed)} points"
    if other:
        out += f"; {other_word} on {where_text(timed, other)}"
    if same:
        out += f"; within the p20–p80 band on {len(same)}"
    return out + "."
