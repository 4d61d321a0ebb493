"""``bench.py report``: every table and figure from rows.jsonl alone, into one folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from attnbench.report import figures as F
from attnbench.report import tables as T
from attnbench.report.claims import claims_table
from attnbench.report.energy import energy_frame
from attnbench.report.load import RunData, load_runs
from attnbench.report.render import Page, to_html, to_markdown, write_tables
from attnbench.spec import one_line


@dataclass
class ReportResult:
    out: Path
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # missing runs, rows lacking fields: exit 2
    notes: list[str] = field(default_factory=list)      # outputs that do not apply to these rows


@dataclass
class Context:
    page: Page
    result: ReportResult
    figures: Path
    at_n: int | None
    fit_points: int


def lacking(rows: pd.DataFrame, fields: tuple[str, ...]) -> list[str]:
    """Fields absent from ``rows`` or empty in every row."""
    return [f for f in fields if f not in rows or pd.to_numeric(rows[f], errors="coerce").isna().all()]


def add_figure(ctx: Context, rows: pd.DataFrame, fields: tuple[str, ...], name: str, caption: str,
               draw: Callable[[], object], where: str) -> None:
    """Draw and save one figure, or record which fields the rows lack / why drawing failed."""
    missing = lacking(rows, fields)
    if missing:
        ctx.result.problems.append(f"{name} not drawn for {where}: rows lack field(s) {', '.join(missing)}")
        ctx.page.add("p", f"{caption}: not drawn, the rows lack {', '.join(missing)}.")
        return
    try:
        ctx.result.files += F.save(draw(), ctx.figures, name)
    except Exception as exc:  # a figure that cannot be drawn is reported, the rest goes on
        ctx.result.problems.append(f"{name} failed for {where}: {one_line(exc)}")
        return
    ctx.page.add("figure", caption, name)


def add_table(ctx: Context, name: str, caption: str, frame: pd.DataFrame, empty_note: str) -> None:
    if frame.empty:
        ctx.page.add("p", f"{caption}: {empty_note}")
        return
    ctx.page.add("table", caption, name, frame)


def group_section(ctx: Context, label: str, ok: pd.DataFrame, suffix: str) -> None:
    """Figures and tables of one group of comparable rows."""
    page = ctx.page
    page.add("h2", f"Attention rows: {label}")
    add_table(ctx, f"measurements{suffix}", "Every ok row (latency ms, memory MiB, MACs)", T.measurements_table(ok), "none")
    scaling = T.scaling_table(ok, ctx.fit_points) if not lacking(ok, ("latency_ms",)) else pd.DataFrame()
    labels = scaling_labels(scaling)
    add_figure(ctx, ok, ("latency_ms",), f"latency_vs_n{suffix}", "Latency vs n (log-log); legend: fitted exponent "
               f"over the {ctx.fit_points} largest n with its 95% interval, and the crossover n vs {T.REFERENCE}",
               lambda: F.line_vs_n(ok, "latency_ms", "latency (ms)", label, labels), label)
    add_table(ctx, f"scaling{suffix}", f"Latency exponent over the {ctx.fit_points} largest n (95% interval, t "
              f"distribution) and the n beyond which each series is faster than {T.REFERENCE}", scaling,
              "not computed, the rows lack latency_ms")
    add_figure(ctx, ok, ("peak_mem_bytes",), f"memory_vs_n{suffix}", "Peak memory above the inputs vs n",
               lambda: F.line_vs_n(ok, "peak_mem_mib", "peak memory (MiB)", label), label)
    add_figure(ctx, ok, ("macs_analytic",), f"macs_vs_n{suffix}", "Forward MACs vs n: analytic, fvcore, "
               "FlopCounterMode/2", lambda: F.macs_vs_n(ok, label), label)
    if "energy_j_per_call" in T.optional_columns(ok):
        add_figure(ctx, ok, ("energy_j_per_call",), f"energy_vs_n{suffix}", "Energy per call vs n",
                   lambda: F.line_vs_n(ok, "energy_j_per_call", "energy per call (J)", label), label)
        add_table(ctx, f"energy{suffix}", "Energy per call (J, NVML counter) with the GPU's power, clocks and "
                  "throttle reasons other than idle", energy_frame(ok), "none")
    budget_section(ctx, label, ok, suffix)
    at_n_section(ctx, label, ok, suffix)


def scaling_labels(scaling: pd.DataFrame) -> dict[str, str]:
    """Legend entries: series (slope [95% interval], faster than the reference beyond n≈...)."""
    out = {}
    for r in scaling.to_dict("records"):
        parts = []
        if pd.notna(r["slope"]):
            ci = f" [{r['ci95_low']:.2f}, {r['ci95_high']:.2f}]" if pd.notna(r["ci95_low"]) else ""
            parts.append(f"slope {r['slope']:.2f}{ci}")
        cross = r[f"crossover_n_vs_{T.REFERENCE}"]
        if pd.notna(cross):
            parts.append(f"beats {T.REFERENCE} beyond n≈{cross:.0f}")
        out[r["series"]] = r["series"] + (f" ({'; '.join(parts)})" if parts else "")
    return out


def budget_section(ctx: Context, label: str, ok: pd.DataFrame, suffix: str) -> None:
    bud = ok[ok["m"].notna()]
    if bud.empty:
        ctx.page.add("p", "Error vs m and the ablation over m: no budgeted method in this group.")
        ctx.result.notes.append(f"no budgeted method in {label}")
        return
    add_figure(ctx, bud, ("err_rel_fro",), f"error_vs_m{suffix}", "Relative error vs budget m (Table 5 analogue)",
               lambda: F.error_vs_m(bud, label), label)
    add_table(ctx, f"ablation_m{suffix}", "Ablation over m: budgeted methods at every n", T.ablation_m(bud), "none")


def at_n_section(ctx: Context, label: str, ok: pd.DataFrame, suffix: str) -> None:
    n = T.pick_n(ok, ctx.at_n)
    if ctx.at_n is not None and n != ctx.at_n:
        ctx.result.notes.append(f"n={ctx.at_n} not measured in {label}; n={n} used")
        ctx.page.add("p", f"n={ctx.at_n} was not measured in this group; n={n} is used below.")
    add_figure(ctx, ok[ok["n"] == n], ("latency_ms", "err_rel_fro"), f"pareto{suffix}",
               f"Error vs latency at n={n}, Pareto front marked (Fig. 2 analogue, error in place of accuracy)",
               lambda: F.pareto(ok, n, label), label)
    if (ok["method"] == T.REFERENCE).any():
        add_figure(ctx, ok, ("latency_ms",), f"speedup_heatmap{suffix}", f"Speedup vs {T.REFERENCE} "
                   f"(its latency / the series' latency)", lambda: F.speedup_heatmap(ok, T.REFERENCE, label), label)
    else:
        ctx.page.add("p", f"Speedup heatmap: no ok {T.REFERENCE} rows in this group.")
        ctx.result.notes.append(f"no {T.REFERENCE} rows in {label}: no speedup heatmap")
    add_table(ctx, f"table1{suffix}", f"Table 1 analogue at n={n}: series grouped by MAC decade", T.table1(ok, n), "none")


def model_section(ctx: Context, rows: pd.DataFrame) -> None:
    models = T.models_table(rows)
    if models.empty:
        return
    ctx.page.add("h2", "Models")
    add_table(ctx, "models", "DeiT-style models: parameters (M), GMACs per image (fvcore; FlopCounterMode/2), "
              "images/s at the stated batch", models, "none")
    claims = claims_table(rows)
    add_table(ctx, "claims", "Published (AnchorFormer paper) vs measured; diff_pct = 100 (measured - published) "
              "/ published", claims, "no model row matches a published row.")


def provenance_section(ctx: Context, data: RunData) -> None:
    rows = data.rows
    stamps = sorted(str(t) for t in rows.get("timestamp", pd.Series(dtype=object)).dropna())
    ctx.page.add("h2", "Provenance")
    ctx.page.add("p", f"{len(rows)} rows from {rows['source'].nunique()} run folder(s); measured "
                      f"{stamps[0] if stamps else '?'} to {stamps[-1] if stamps else '?'} (UTC). "
                      "Generated from rows.jsonl alone; rows from different groups are never averaged."
                      + duplicates_note(data.duplicates))
    ctx.page.add("table", "Invocations (runs.jsonl) and their environment", "provenance", provenance_table(data))


def duplicates_note(duplicates: dict[str, int]) -> str:
    """' N duplicate rows (same identity) were dropped, the last one written kept: ...' or ''."""
    if not duplicates:
        return ""
    parts = ", ".join(f"{n} from {src}" for src, n in sorted(duplicates.items()))
    return f" {sum(duplicates.values())} duplicate row(s) (same identity key) were dropped, the last written kept: {parts}."


def provenance_table(data: RunData) -> pd.DataFrame:
    counts = data.rows.groupby(["source", "run_id"]).size() if "run_id" in data.rows else pd.Series(dtype=int)
    envs = {}
    for r in data.rows.itertuples():
        envs.setdefault((r.source, getattr(r, "run_id", None)), r.env if isinstance(getattr(r, "env", None), dict) else {})
    invs = {(i["source"], i.get("run_id")): i for i in data.invocations}
    out = []
    for key in sorted(set(envs) | set(invs), key=str):
        env = (invs.get(key) or {}).get("env") or envs.get(key) or {}
        argv = (invs.get(key) or {}).get("argv")
        out.append({"source": key[0], "run_id": key[1], "rows": int(counts.get(key, 0)) if len(counts) else 0,
                    "command": " ".join(argv) if argv else "(not recorded)", "device": env.get("device_name"),
                    "torch": env.get("torch"), "cuda": env.get("cuda"), "python": env.get("python"),
                    "git_commit": env.get("git_commit"), "started": (invs.get(key) or {}).get("timestamp")})
    return pd.DataFrame(out)


def failed_section(ctx: Context, rows: pd.DataFrame) -> None:
    ctx.page.add("h2", "Failed, unsupported, out-of-memory and timed-out rows")
    add_table(ctx, "failed", "Every row whose status is not ok, with its reason", T.failed_table(rows),
              "none: every row is ok.")


def build_report(runs: list[Path], out: Path, at_n: int | None = None, fit_points: int = 4) -> ReportResult:
    """Write report.md, report.html, figures/ and tables/ under ``out``; see ReportResult."""
    data = load_runs(runs)
    result = ReportResult(out=out, problems=list(data.problems))
    if data.duplicates:
        result.notes.append(duplicates_note(data.duplicates).strip())
    ctx = Context(Page(), result, out / "figures", at_n, fit_points)
    ctx.page.add("h1", "attnbench report")
    provenance_section(ctx, data)
    ok = T.ok_attention(data.rows)
    grouped = T.groups(ok)
    for i, (label, sub) in enumerate(grouped):
        group_section(ctx, label, sub, "" if len(grouped) == 1 else f"-g{i + 1}")
    model_section(ctx, data.rows)
    failed_section(ctx, data.rows)
    write_outputs(ctx)
    return result


def write_outputs(ctx: Context) -> None:
    out = ctx.result.out
    out.mkdir(parents=True, exist_ok=True)
    ctx.result.files += write_tables(ctx.page, out / "tables")
    (out / "report.md").write_text(to_markdown(ctx.page), encoding="utf-8")
    (out / "report.html").write_text(to_html(ctx.page, ctx.figures), encoding="utf-8")
    ctx.result.files += [out / "report.md", out / "report.html"]
