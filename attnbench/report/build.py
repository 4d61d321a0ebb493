"""``bench.py report``: every table and figure from rows.jsonl alone, into one folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from attnbench.report import figures as F
from attnbench.report import tables as T
from attnbench.report import train as TR
from attnbench.report import verdict as V
from attnbench.report.claims import claims_table
from attnbench.report.energy import energy_frame
from attnbench.report.load import RunData, load_runs
from attnbench.report.render import Link, Page, to_html, to_markdown, write_tables
from attnbench.results import naming
from attnbench.spec import one_line

INTRO = ("Which attention to use at each measured n. err_skill = 1 − err / err of uniform attention on the same "
         "inputs (0: no better than averaging v, 1: exact). Every number below links to the measured row it "
         "comes from; figures, tables and the provenance of every row follow.")


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


def add_table(ctx: Context, name: str, caption: str, frame: pd.DataFrame, empty_note: str,
              row_ids: list[str] | None = None) -> None:
    if frame.empty:
        ctx.page.add("p", f"{caption}: {empty_note}")
        return
    ctx.page.add("table", caption, name, frame, row_ids)


def figures_section(ctx: Context, label: str, ok: pd.DataFrame, suffix: str) -> None:
    """Figures of one group of comparable rows."""
    ctx.page.add("h3", label)
    add_figure(ctx, ok, ("latency_ms",), f"latency_vs_n{suffix}", "Latency vs n (log-log), one panel per family, "
               "exact attention in every panel; colour and marker by method, line style by budget m",
               lambda: F.facet_vs_n(ok, "latency_ms", "latency (ms)", label), label)
    if (ok["method"] == T.REFERENCE).any():
        add_figure(ctx, ok, ("latency_ms",), f"speedup_heatmap{suffix}", f"Speedup vs {T.REFERENCE} "
                   f"(its latency / the series' latency)", lambda: F.speedup_heatmap(ok, T.REFERENCE, label), label)
    else:
        ctx.page.add("p", f"Speedup heatmap: no ok {T.REFERENCE} rows in this group.")
        ctx.result.notes.append(f"no {T.REFERENCE} rows in {label}: no speedup heatmap")
    col = F.error_column(ok)[0]
    add_figure(ctx, ok, ("latency_ms", "err_rel_fro"), f"pareto{suffix}",
               f"{col} vs latency at every n, Pareto front marked (Fig. 2 analogue, error in place of accuracy)",
               lambda: F.pareto(ok, label, V.skill(ok)), label)
    add_figure(ctx, ok, ("peak_mem_bytes",), f"memory_vs_n{suffix}", "Peak memory above the inputs vs n, one "
               "panel per family, exact attention in every panel", lambda: F.facet_vs_n(ok, "peak_mem_mib",
               "peak memory (MiB)", label), label)
    add_figure(ctx, ok, ("macs_analytic",), f"macs_vs_n{suffix}", "Forward MACs vs n: analytic (lines), fvcore (x), "
               "FlopCounterMode/2 (+)", lambda: F.macs_vs_n(ok, label), label)
    if "energy_j_per_call" in T.optional_columns(ok):
        add_figure(ctx, ok, ("energy_j_per_call",), f"energy_vs_n{suffix}", "Energy per call vs n",
                   lambda: F.facet_vs_n(ok, "energy_j_per_call", "energy per call (J)", label), label)
    if not lacking(ok, ("matmul_peak_tflops", "copy_peak_gbps", "achieved_tflops")):
        add_figure(ctx, ok, ("achieved_gbps",), f"roofline{suffix}", "Roofline: achieved TFLOP/s vs arithmetic "
                   "intensity (FLOPs per compulsory byte); the roof is the device's measured copy bandwidth and "
                   "matmul throughput (env.roofline)", lambda: F.roofline(ok, label), label)
    else:
        ctx.page.add("p", "Roofline: not drawn, the rows carry no measured device peaks (env.roofline).")
    bud = ok[ok["m"].notna()]
    if bud.empty:
        ctx.page.add("p", "Error vs m: no budgeted method in this group.")
        ctx.result.notes.append(f"no budgeted method in {label}")
    else:
        add_figure(ctx, bud, ("err_rel_fro",), f"error_vs_m{suffix}", f"{F.error_column(bud)[0]} vs budget m, one "
                   "panel per n (Table 5 analogue)", lambda: F.error_vs_m(bud, label), label)


def tables_section(ctx: Context, label: str, ok: pd.DataFrame, suffix: str, group: str) -> None:
    """Tables of one group; the measurements table's rows carry the anchors the verdict links to."""
    page = ctx.page
    page.add("h3", f"Measurements{group}", measurements_anchor(group))
    page.add("p", label)
    table = T.measurements_table(ok)
    add_table(ctx, f"measurements{suffix}", "Every ok row (latency ms, memory MiB, MACs)", table, "none",
              [V.row_anchor(suffix, s, n) for s, n in zip(ok["series"], ok["n"])])
    scaling = T.scaling_table(ok, ctx.fit_points) if not lacking(ok, ("latency_ms",)) else pd.DataFrame()
    add_table(ctx, f"scaling{suffix}", f"Latency exponent over the {ctx.fit_points} largest n (95% interval, t "
              f"distribution) and the n beyond which each series is faster than {T.REFERENCE}", scaling,
              "not computed, the rows lack latency_ms")
    bud = ok[ok["m"].notna()]
    if len(bud):
        add_table(ctx, f"ablation_m{suffix}", "Ablation over m: budgeted methods at every n", T.ablation_m(bud), "none")
    n = T.pick_n(ok, ctx.at_n)
    if ctx.at_n is not None and n != ctx.at_n:
        ctx.result.notes.append(f"n={ctx.at_n} not measured in {label}; n={n} used")
        page.add("p", f"n={ctx.at_n} was not measured in this group; n={n} is used below.")
    add_table(ctx, f"table1{suffix}", f"Table 1 analogue at n={n}: series grouped by MAC decade", T.table1(ok, n), "none")
    if "energy_j_per_call" in T.optional_columns(ok):
        add_table(ctx, f"energy{suffix}", "Energy per call (J, NVML counter) with the GPU's power, clocks and "
                  "throttle reasons other than idle", energy_frame(ok), "none")


def measurements_anchor(group: str) -> str:
    """The anchor of a group's measurements heading: GitHub's slug of the heading text."""
    return V.slug(f"Measurements{group}")


def verdict_section(ctx: Context, label: str, ok: pd.DataFrame, suffix: str, group: str) -> None:
    """The first screen of a group: the per-n verdict and the crossover of each family."""
    page = ctx.page
    page.add("h2", f"Verdict{group}", V.slug(f"Verdict{group}"))
    page.add("p", label)
    note = V.gaussian_note(ok)
    if note:
        page.add("p", note)
    section = measurements_anchor(group)
    add_table(ctx, f"verdict{suffix}", "Per n: the fastest approximate method reaching each err_skill bar, the "
              "smallest in memory at err_skill ≥ 0.5, and the exact baseline", verdict_frame(ok, suffix, section),
              "no ok rows")
    add_table(ctx, f"crossover{suffix}", "Where each approximate family's fastest method overtakes exact attention "
              "(bracketed by the measured n)", crossover_frame(ok, suffix, section),
              "no exact baseline (vanilla family) in this group, so no crossover")


def _ms(value: float | None) -> str:
    return "?" if value is None else (f"{value:.0f}" if value >= 100 else f"{value:.3g}")


def _link(text: str, pick: V.Pick, suffix: str, section: str) -> Link:
    return Link(text, V.row_anchor(suffix, pick.series, pick.n), section)


def _pick_cell(p: V.Pick | None, ref_ms: float | None, memory: bool, scored: bool, suffix: str, section: str):
    """'window: 37.2 ms, skill 0.68, 24× faster than exact' (or MiB), linked to its row."""
    if p is None:
        return "none" if scored else "err_skill not recorded"
    if memory:
        return _link(f"{p.series}: {p.peak_mem_mib:.3g} MiB, skill {p.skill:.2f}", p, suffix, section)
    speed = f", {ref_ms / p.latency_ms:.3g}× faster than exact" if ref_ms and p.latency_ms else ""
    return _link(f"{p.series}: {_ms(p.latency_ms)} ms, skill {p.skill:.2f}{speed}", p, suffix, section)


def _exact_cell(p: V.Pick | None, suffix: str, section: str):
    if p is None:
        return "not measured"
    mem = f", {p.peak_mem_mib:.3g} MiB" if p.peak_mem_mib is not None else ""
    return _link(f"{_ms(p.latency_ms)} ms{mem}", p, suffix, section)


def verdict_frame(ok: pd.DataFrame, suffix: str, section: str) -> pd.DataFrame:
    """The verdict as a table of linked cells, one line per n."""
    derived = V.with_derived(ok)
    scored, base = derived["skill"].notna().any(), V.baseline_series(derived)
    out = []
    for v in V.verdict(ok):
        ref = v.exact.latency_ms if v.exact else None
        line = {"n": v.n, f"exact ({base or 'none'})": _exact_cell(v.exact, suffix, section)}
        for bar, p in v.fastest.items():
            line[f"fastest, err_skill ≥ {bar:g}"] = _pick_cell(p, ref, False, scored, suffix, section)
        line[f"least memory, err_skill ≥ {V.SKILL_BARS[0]:g}"] = _pick_cell(v.smallest, ref, True, scored, suffix, section)
        out.append(line)
    return pd.DataFrame(out)


def crossover_frame(ok: pd.DataFrame, suffix: str, section: str) -> pd.DataFrame:
    """One line per approximate family: the crossover text, linked to the first faster row."""
    base = V.baseline_series(V.with_derived(ok))
    out = []
    for c in V.crossovers(ok):
        text = V.crossover_text(c)
        series, n = (c.high_series, c.high) if c.high is not None else (c.low_series, c.low)
        cell = Link(text, V.row_anchor(suffix, series, n), section) if series else text
        fastest = ", ".join(sorted({s for s in (c.low_series, c.high_series) if s}))
        out.append({"family": c.family, f"overtakes {base}": cell, "its fastest method there": fastest})
    return pd.DataFrame(out)


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


def train_section(ctx: Context, rows: pd.DataFrame) -> None:
    """Trained quality: per task accuracy against n, accuracy against step time, a verdict per task and n."""
    ok = TR.ok_train(rows)
    if ok.empty:
        return
    tasks = sorted(ok["task"].unique())
    ctx.page.add("h2", "Trained quality (tasks: " + ", ".join(tasks) + ")")
    ctx.page.add("p", "A small pre-norm encoder trained with each attention in every block on generated tasks; "
                      "held-out accuracy (a fraction) beside the median time of one training step. Verdict: the "
                      f"fastest method within {TR.TOLERANCE} accuracy of exact attention, or none.")
    falloff = TR.anchor_falloff(ok)
    if falloff:
        ctx.page.add("p", falloff)
    add_table(ctx, "train-verdict", "Verdict per task and n", TR.verdicts(ok), "none")
    for task in tasks:
        ctx.page.add("h3", f"Task {task}")
        add_table(ctx, f"train-{task}", f"{task}: held-out accuracy per method and n", TR.accuracy_table(ok, task),
                  "none")
        sub = ok[ok["task"] == task]
        add_figure(ctx, sub, ("accuracy", "n"), f"train-{task}-accuracy", f"{task}: held-out accuracy against n",
                   lambda task=task: TR.accuracy_figure(ok, task), f"train {task}")
        add_figure(ctx, sub, ("accuracy", "step_ms"), f"train-{task}-pareto",
                   f"{task}: held-out accuracy against training step time (exact attention starred)",
                   lambda task=task: TR.pareto_figure(ok, task), f"train {task}")


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
    result = ReportResult(out=out, problems=list(data.problems), notes=list(data.notes))
    if data.duplicates:
        result.notes.append(duplicates_note(data.duplicates).strip())
    ctx = Context(Page(), result, out / "figures", at_n, fit_points)
    ctx.page.add("h1", "attnbench report")
    ok = T.ok_attention(data.rows)
    grouped = sorted(T.groups(ok), key=lambda g: V.gaussian_note(g[1]) is not None)  # structured workloads first
    names = [("", "") if len(grouped) == 1 else (f"-g{i + 1}", f", group {i + 1}") for i in range(len(grouped))]
    if grouped or TR.ok_train(data.rows).empty:       # a folder of train rows alone opens with their verdicts
        ctx.page.add("p", INTRO)
        for (label, sub), (suffix, group) in zip(grouped, names):
            verdict_section(ctx, label, sub, suffix, group)
        ctx.page.add("h2", "Figures")
        for (label, sub), (suffix, _) in zip(grouped, names):
            figures_section(ctx, label, sub, suffix)
        ctx.page.add("h2", "Tables")
        for (label, sub), (suffix, group) in zip(grouped, names):
            tables_section(ctx, label, sub, suffix, group)
    model_section(ctx, data.rows)
    train_section(ctx, data.rows)
    failed_section(ctx, data.rows)
    provenance_section(ctx, data)
    write_outputs(ctx)
    return result


def write_outputs(ctx: Context) -> None:
    out = ctx.result.out
    out.mkdir(parents=True, exist_ok=True)
    ctx.result.files += write_tables(ctx.page, out / "tables")
    with naming(out / "report.md"):
        (out / "report.md").write_text(to_markdown(ctx.page), encoding="utf-8")
    with naming(out / "report.html"):
        (out / "report.html").write_text(to_html(ctx.page, ctx.figures), encoding="utf-8")
    ctx.result.files += [out / "report.md", out / "report.html"]
