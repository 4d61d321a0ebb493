"""Report tables as pandas DataFrames of raw values (rendering happens elsewhere).

Rows are only ever placed side by side within one group (same source run folder, device,
dtype, mode, shape and workload); nothing is averaged.
"""
from __future__ import annotations

import math
import re

import pandas as pd

from attnbench.measure.roofline import mfu, tflops_on_basis
from attnbench.report.load import GROUP_FIELDS
from attnbench.report.stats import crossover, fit_exponent, mac_range

REFERENCE = "vanilla-sdpa"
NAMED_OPTIONAL = ("err_skill", "attn_kl_mean", "attn_tv_mean", "fit_time_s", "energy_j_per_call",
                  "achieved_gbps", "achieved_tflops", "mfu", "achieved_tflops_fa", "mfu_fa", "kernel_efficiency")
TELEMETRY = re.compile(r"^(gpu_.*|.*_(w|mhz|watts|clock))$")
BASE_COLUMNS = ("latency_ms", "latency_p20_ms", "latency_p80_ms", "peak_mem_mib", "macs_analytic",
                "macs_fvcore", "macs_torch", "err_rel_fro", "err_cos_mean")


def add_series(df: pd.DataFrame) -> pd.DataFrame:
    """``series``: the method, its parameters where several sets share a group, and m."""
    df = df.copy()
    keys = list(GROUP_FIELDS) + ["method"]
    variants = df.groupby(keys, dropna=False)["params_key"].transform("nunique") if len(df) else []
    df["series"] = [
        str(method) + (f" {pk}" if nv > 1 and pk else "") + (f" m={int(m)}" if pd.notna(m) else "")
        for method, pk, nv, m in zip(df["method"], df["params_key"], variants, df["m"])
    ]
    return df


def ok_attention(df: pd.DataFrame) -> pd.DataFrame:
    """ok attention rows with derived columns (duplicates were dropped by identity on loading)."""
    ok = derive(add_series(df[(df["kind"] == "attention") & (df["status"] == "ok")]))
    ok = ok.assign(kernel_efficiency=kernel_efficiency(ok), **throughput(ok))
    return ok.sort_values(list(GROUP_FIELDS) + ["series", "n"], key=_sort_key, kind="stable")


def _peak(env, key):
    roof = env.get("roofline") if isinstance(env, dict) else None
    return roof.get(key) if isinstance(roof, dict) else None


def _num(value) -> float | None:
    value = pd.to_numeric(value, errors="coerce")
    return None if pd.isna(value) else float(value)


def throughput(ok: pd.DataFrame) -> dict[str, pd.Series]:
    """``matmul_peak_tflops`` and ``copy_peak_gbps`` (env.roofline), ``mfu`` (achieved TFLOP/s over the
    measured matmul peak, fwd+bwd = 3 x fwd) and FlashAttention's basis beside it (fwd+bwd = 3.5 x
    fwd): ``achieved_tflops_fa``, ``mfu_fa``. NaN where a row lacks a figure."""
    env = ok["env"] if "env" in ok else pd.Series([None] * len(ok), index=ok.index)
    tflops = ok["achieved_tflops"] if "achieved_tflops" in ok else pd.Series([None] * len(ok), index=ok.index)
    peak = [_num(_peak(e, "matmul_tflops")) for e in env]
    fa = [tflops_on_basis(_num(t), m, "flash-attn") for t, m in zip(tflops, ok["mode"])]
    cols = {"matmul_peak_tflops": peak, "copy_peak_gbps": [_num(_peak(e, "copy_gbps")) for e in env],
            "mfu": [mfu(_num(t), p) for t, p in zip(tflops, peak)], "achieved_tflops_fa": fa,
            "mfu_fa": [mfu(f, p) for f, p in zip(fa, peak)]}
    return {k: pd.to_numeric(pd.Series(v, index=ok.index, dtype=object), errors="coerce") for k, v in cols.items()}


def _impl(row_impl, key):
    return row_impl.get(key) if isinstance(row_impl, dict) else None


def kernel_efficiency(ok: pd.DataFrame) -> pd.Series:
    """Per CUDA row with a sparse pattern (``impl.macs_needed_pairs``): its TFLOP/s counting only the
    needed pairs, over the TFLOP/s of ``vanilla-sdpa`` backend=flash at the same n in the same group
    (run folder, device, dtype, mode, batch, shape, workload). NaN where either is missing."""
    out = pd.Series(float("nan"), index=ok.index)
    if ok.empty:
        return out
    impl = ok["impl"] if "impl" in ok else pd.Series([None] * len(ok), index=ok.index)
    needed = pd.to_numeric(pd.Series([_impl(i, "macs_needed_pairs") for i in impl], index=ok.index), errors="coerce")
    latency = pd.to_numeric(ok["latency_ms"], errors="coerce")
    flash = (ok["method"] == REFERENCE) & pd.Series([isinstance(p, dict) and p.get("backend") == "flash"
                                                    for p in ok["params"]], index=ok.index)
    keys = [tuple(r) for r in ok[list(GROUP_FIELDS) + ["n"]].astype(str).itertuples(index=False)]
    ref_rate = {}
    for key, is_flash, macs, lat in zip(keys, flash, pd.to_numeric(ok["macs_analytic"], errors="coerce"), latency):
        if is_flash and lat > 0:
            ref_rate[key] = macs / lat
    cuda = ok["device"].astype(str).str.startswith("cuda") if "device" in ok else pd.Series(False, index=ok.index)
    for i, key, use in zip(ok.index, keys, cuda & needed.notna()):
        if use and key in ref_rate and latency[i] > 0:
            out[i] = (needed[i] / latency[i]) / ref_rate[key]
    return out


def _sort_key(col: pd.Series) -> pd.Series:
    return col.astype(str) if col.dtype == object else col


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """Unit conversions as pure functions of each row: MiB, torch MACs (= FLOPs / 2)."""
    df = df.copy()
    for f in ("latency_ms", "latency_p20_ms", "latency_p80_ms", "peak_mem_bytes", "macs_analytic",
              "macs_fvcore", "flops_torch", "err_rel_fro", "err_cos_mean"):
        if f not in df:
            df[f] = None
    df["peak_mem_mib"] = pd.to_numeric(df["peak_mem_bytes"], errors="coerce") / 2**20
    df["macs_torch"] = pd.to_numeric(df["flops_torch"], errors="coerce") / 2
    return df


def optional_columns(df: pd.DataFrame) -> list[str]:
    """Named optional fields and GPU telemetry columns that hold at least one number."""
    names = [c for c in NAMED_OPTIONAL if c in df] + sorted(c for c in df.columns if TELEMETRY.match(str(c)))
    return [c for c in dict.fromkeys(names) if pd.to_numeric(df[c], errors="coerce").notna().any()]


def groups(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per group, in a fixed order; the label names what sets the group apart."""
    return [(group_label(dict(zip(GROUP_FIELDS, key))), sub)
            for key, sub in df.groupby(list(GROUP_FIELDS), dropna=False, sort=True)]


def group_label(key: dict) -> str:
    """'run: cpu (model), float32, fwd, batch 1, 6 heads × 64, gaussian, seed 0'; unknown parts left out."""
    k = {f: _int(v) for f, v in key.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    parts = [k.get("device_name"), k.get("dtype"), k.get("mode"),
             f"batch {k['batch']}" if "batch" in k else None,
             f"{k['heads']} heads × {k.get('head_dim', '?')}" if "heads" in k else None,
             k.get("workload"), f"seed {k['seed']}" if "seed" in k else None,
             f"fit {k['fit']}" if k.get("fit") not in (None, "none") else None,
             f"fit options {k['fit_cfg']}" if k.get("fit_cfg") else None,
             f"timing {k['timing_mode']}" if k.get("timing_mode") not in (None, "eager") else None]
    return f"{k.get('source', '?')}: " + ", ".join(str(p) for p in parts if p is not None)


def _int(value):
    """Integral floats (pandas' view of an int column with gaps) back to int."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def measurements_table(ok: pd.DataFrame) -> pd.DataFrame:
    """Every ok attention row."""
    cols = ["series", "n", "m"] + list(BASE_COLUMNS) + optional_columns(ok)
    return ok[cols].reset_index(drop=True)


def pick_n(ok: pd.DataFrame, at_n: int | None = None) -> int | None:
    """``at_n`` if measured, else the n with the most ok series (the largest on ties)."""
    if ok.empty:
        return None
    if at_n is not None and at_n in set(ok["n"]):
        return int(at_n)
    counts = ok.groupby("n")["series"].nunique()
    return int(max(counts.index, key=lambda n: (counts[n], n)))


def reference_rows(ok: pd.DataFrame) -> pd.DataFrame:
    """Rows of the reference method; of several parameter sets, the first series by name."""
    ref = ok[ok["method"] == REFERENCE]
    return ref[ref["series"] == min(ref["series"])] if len(ref) else ref


def scaling_table(ok: pd.DataFrame, points: int = 4) -> pd.DataFrame:
    """Fitted latency exponent over the largest n per series, and the crossover n vs the reference."""
    ref = reference_rows(ok)
    out = []
    for series, sub in ok.groupby("series", sort=True):
        fit = fit_exponent(sub["n"], pd.to_numeric(sub["latency_ms"], errors="coerce"), points)
        if ref.empty:
            cross, note = None, f"no {REFERENCE} rows"
        elif (sub["method"] == REFERENCE).all():
            cross, note = None, "the reference"
        else:
            cross, note = crossover(list(sub["n"]), list(sub["latency_ms"]), list(ref["n"]), list(ref["latency_ms"]))
        out.append({"series": series, "slope": fit["slope"], "ci95_low": fit["ci_low"], "ci95_high": fit["ci_high"],
                    "n_fitted": ",".join(str(n) for n in fit["n_used"]), f"crossover_n_vs_{REFERENCE}": cross,
                    "crossover_note": note})
    return pd.DataFrame(out)


def table1(ok: pd.DataFrame, n: int) -> pd.DataFrame:
    """Methods at one n grouped by MAC decade: MACs, latency, peak memory, error."""
    at = ok[ok["n"] == n].copy()
    at["mac_range"] = [mac_range(pd.to_numeric(x, errors="coerce")) for x in at["macs_analytic"]]
    cols = ["mac_range", "series", "macs_analytic", "macs_fvcore", "latency_ms", "peak_mem_mib", "err_rel_fro"]
    at = at.sort_values(["macs_analytic", "series"], key=_sort_key, kind="stable")
    return at[cols + optional_columns(at)].reset_index(drop=True)


def ablation_m(ok: pd.DataFrame) -> pd.DataFrame:
    """Budgeted methods over m (the Table 5 analogue): one row per (method, params, n, m)."""
    bud = ok[ok["m"].notna()].copy()
    bud["method_params"] = [f"{m} {p}".strip() for m, p in zip(bud["method"], bud["params_key"])]
    cols = ["method_params", "n", "m", "macs_analytic", "latency_ms", "peak_mem_mib", "err_rel_fro"]
    bud = bud.sort_values(["method_params", "n", "m"], kind="stable")
    return bud[cols + optional_columns(bud)].reset_index(drop=True)


def failed_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every row whose status is not ok, with its reason."""
    bad = df[df["status"] != "ok"].copy()
    for f in ("message", "arch"):
        if f not in bad:
            bad[f] = None
    cols = ["source", "kind", "method", "arch", "n", "m", "device", "dtype", "mode", "status", "message"]
    return bad[cols].sort_values(["source", "kind", "method", "n"], key=_sort_key, kind="stable").reset_index(drop=True)


def models_table(df: pd.DataFrame) -> pd.DataFrame:
    """Model rows that ran: parameters (M), GMACs by fvcore and FlopCounterMode/2, images/s."""
    mod = df[(df["kind"] == "model") & (df["status"] == "ok")].copy()
    if mod.empty:
        return pd.DataFrame()
    for f in ("images_per_s", "flops_torch", "macs_fvcore", "img", "param_count"):
        if f not in mod:
            mod[f] = None
    mod["params_m"] = pd.to_numeric(mod["param_count"], errors="coerce") / 1e6
    mod["gmacs_fvcore"] = pd.to_numeric(mod["macs_fvcore"], errors="coerce") / 1e9
    mod["gmacs_torch"] = pd.to_numeric(mod["flops_torch"], errors="coerce") / 2e9
    cols = ["source", "arch", "attention", "m", "img", "params_m", "gmacs_fvcore", "gmacs_torch",
            "images_per_s", "batch", "device_name"]
    return mod[cols].sort_values(["source", "arch", "attention", "m"], key=_sort_key, kind="stable").reset_index(drop=True)
