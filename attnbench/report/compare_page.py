"""What ``bench.py compare`` writes: compare.md, compare.html (the report's style), compare.csv
(one line per pair), one_sided.csv and figures/ratio_vs_n*.png|svg (B/A latency against n)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from attnbench.report import figures as F
from attnbench.report.compare import INTERVAL_BASIS, Comparison, Pair, lookup, series_label, text, verdict
from attnbench.report.render import Page, csv_safe, to_html, to_markdown, write_tables

STATUS_FIELDS = ("status", "latency_ms", "latency_p20_ms", "latency_p80_ms", "peak_mem_bytes", "err_rel_fro")


def label(c: Comparison, side: str) -> str:
    """'A = results/x (dtype float32)'."""
    path = c.a_path if side == "a" else c.b_path
    values = [f"{n} {', '.join(c.values(n)[0 if side == 'a' else 1])}" for n in c.on]
    return f"{side.upper()} = {path}" + (f" ({'; '.join(values)})" if values else "")


def on_text(c: Comparison) -> str:
    """How the rows were paired, as printed and written at the top of the page."""
    how = "found: the identity fields whose values in A and B have nothing in common" if c.on_found else "given"
    if not c.on:
        base = "pairing on the full identity (no identity field differs between the runs)"
    else:
        base = f"pairing on {', '.join(c.on)} ({how})"
    if c.env_diffs:
        diffs = "; ".join(f"{k}: {', '.join(a)} vs {', '.join(b)}" for k, (a, b) in c.env_diffs.items())
        base += f"; the runs' environments differ in {diffs}"
    return base


def _fmt_ratio(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def pairs_csv(c: Comparison) -> pd.DataFrame:
    """One line per pair: identity, the compared values of A and B, ratios, band, outcome."""
    out = []
    for p in c.pairs:
        line = {"kind": lookup(p.a, "kind"), "series": p.series}
        for name in key_columns(p.a, c.on):
            value = p.a.get(name)
            line[name] = text(value) if isinstance(value, (dict, list)) else value
        for name in c.on:
            line[f"a_{name}"], line[f"b_{name}"] = text(lookup(p.a, name)), text(lookup(p.b, name))
        for name in STATUS_FIELDS:
            line[f"a_{name}"], line[f"b_{name}"] = p.a.get(name), p.b.get(name)
        line.update({"latency_ratio_b_over_a": p.ratio, "ratio_low": p.lo, "ratio_high": p.hi,
                     "interval_basis": INTERVAL_BASIS if p.ratio is not None else None, "outcome": p.outcome,
                     "peak_mem_ratio_b_over_a": p.mem_ratio, "err_rel_fro_b_minus_a": p.err_diff})
        out.append(line)
    return pd.DataFrame(out)


def key_columns(row: dict, on: list[str]) -> list[str]:
    from attnbench import rows as R

    whole = {n for n in on if "." not in n}
    return [n for n in R.key_fields(R.row_kind(row)) if n != "kind" and n not in whole]


def pairs_table(c: Comparison) -> pd.DataFrame:
    """The page's table: series, n, the compared values, latencies, ratio and band, memory, error."""
    out = []
    for p in c.pairs:
        line = {"series": p.series, "n": p.a.get("n")}
        for name in c.on:
            line[f"{name} A → B"] = f"{text(lookup(p.a, name))} → {text(lookup(p.b, name))}"
        line.update({"A ms": p.a.get("latency_ms"), "B ms": p.b.get("latency_ms"), "B/A": _fmt_ratio(p.ratio),
                     "band": f"{p.lo:.3g}–{p.hi:.3g}" if p.ratio is not None else f"{p.a.get('status')} / {p.b.get('status')}",
                     "outcome": p.outcome, "memory B/A": _fmt_ratio(p.mem_ratio), "err B − A": p.err_diff})
        out.append(line)
    return pd.DataFrame(out)


def summary_table(c: Comparison) -> pd.DataFrame:
    """Per series: points, faster, slower, within band, geometric mean of B/A."""
    out = []
    for series in sorted({p.series for p in c.pairs}):
        ps = [p for p in c.pairs if p.series == series]
        timed = [p.ratio for p in ps if p.ratio is not None]
        out.append({"series": series, "points": len(ps),
                    "B faster": sum(p.outcome == "faster" for p in ps),
                    "B slower": sum(p.outcome == "slower" for p in ps),
                    "within band": sum(p.outcome == "within band" for p in ps),
                    "not timed": sum(p.outcome == "not timed" for p in ps),
                    "geomean B/A": round(math.exp(sum(map(math.log, timed)) / len(timed)), 4) if timed else None})
    return pd.DataFrame(out)


def one_sided_table(c: Comparison) -> pd.DataFrame:
    out = [{"only in": side, "series": series_label(r), "n": r.get("n"), "dtype": r.get("dtype"),
            "mode": r.get("mode"), "workload": r.get("workload"), "status": r.get("status")}
           for side, rows in (("A", c.only_a), ("B", c.only_b)) for r in rows]
    return pd.DataFrame(out, columns=["only in", "series", "n", "dtype", "mode", "workload", "status"])


def figure_frame(c: Comparison) -> pd.DataFrame:
    timed = [p for p in c.pairs if p.ratio is not None]
    return pd.DataFrame({"series": [p.series for p in timed], "method": [str(p.a.get("method")) for p in timed],
                         "family": [p.a.get("family") for p in timed], "n": [int(p.a["n"]) for p in timed],
                         "ratio": [p.ratio for p in timed], "lo": [p.lo for p in timed],
                         "hi": [p.hi for p in timed], "group": [group_of(p, c.on) for p in timed]})


GROUP_OF = ("dtype", "device_name", "mode", "batch", "heads", "head_dim", "workload", "seed", "fit", "timing_mode")


def group_of(p: Pair, on: list[str]) -> str:
    """What sets a figure apart: the identity fields other than the series and n, not compared."""
    return ", ".join(f"{n} {text(p.a.get(n))}" for n in GROUP_OF if n not in on and p.a.get(n) is not None)


def ratio_figure(data: pd.DataFrame, title: str):
    """B/A latency against n (log-log), one panel per family with the exact series in every panel;
    colour and marker by method as in the report; bars: the p20–p80 band; 1 = no change."""
    methods = dict(zip(data["series"], data["method"]))
    dashes = F.budget_dashes(F._m_of(s) for s in methods)
    layout = F.panels(data) or [("exact attention", [])]
    fig, axes = F._grid(len(layout), title)
    for ax, (name, series) in zip(axes, layout):
        for s in F.exact_series(data) + series:
            part = data[data["series"] == s].sort_values("n")
            colour, marker = F.method_style(methods[s])
            ax.errorbar(part["n"], part["ratio"], yerr=[part["ratio"] - part["lo"], part["hi"] - part["ratio"]],
                        color=colour, marker=marker, markersize=3.8, linewidth=1.2, capsize=2,
                        linestyle=dashes[F._m_of(s)], label=s)
        ax.axhline(1.0, color="0.4", lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", xlabel="tokens n", ylabel="latency B / A (below 1: B faster)",
               title=f"family: {name}")
        ax.title.set_fontsize(8)
        ax.yaxis.label.set_fontsize(7)
        F.data_ticks(ax, data["n"])
        ax.legend(fontsize=6, loc="best", frameon=True, framealpha=0.85, handlelength=2.6, labelspacing=0.25)
    return fig


def build_page(c: Comparison, figures: Path) -> tuple[Page, list[Path]]:
    page, files = Page(), []
    page.add("h1", "attnbench compare: B vs A")
    page.add("p", f"{label(c, 'a')}; {label(c, 'b')}.")
    page.add("h2", "Verdict", "verdict")
    page.add("p", verdict(c))
    page.add("table", f"Per series: how many points B is faster, slower or within the p20–p80 band "
             f"({on_text(c)})", "verdict", summary_table(c))
    data = figure_frame(c)
    for i, (group, sub) in enumerate(sorted(data.groupby("group"), key=lambda g: g[0]) if len(data) else []):
        name = "ratio_vs_n" + (f"-g{i + 1}" if data["group"].nunique() > 1 else "")
        caption = f"Latency B/A vs n, {group}: one panel per family, exact attention in every panel; bars: " \
                  "the band from the recorded p20/p80"
        files += F.save(ratio_figure(sub, f"B/A: {group}"), figures, name)
        page.add("figure", caption, name)
    page.add("h2", "Pairs", "pairs")
    page.add("table", f"Every pair (B/A latency; band: {INTERVAL_BASIS}; memory: peak_mem_bytes B/A; "
             "err: err_rel_fro B − A)", "pairs", pairs_table(c))
    page.add("h2", "One side only", "one-side-only")
    one = one_sided_table(c)
    if one.empty:
        page.add("p", "None: every row of A pairs with a row of B.")
    else:
        page.add("table", "Rows with no partner in the other run", "one_sided", one)
    return page, files


def write_comparison(c: Comparison, out: Path) -> list[Path]:
    """Write every output under ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    page, files = build_page(c, out / "figures")
    (out / "compare.md").write_text(to_markdown(page), encoding="utf-8")
    (out / "compare.html").write_text(to_html(page, out / "figures", title="attnbench compare"), encoding="utf-8")
    files += write_tables(page, out / "tables")
    csv_safe(pairs_csv(c)).to_csv(out / "compare.csv", index=False, lineterminator="\n")
    csv_safe(one_sided_table(c)).to_csv(out / "one_sided.csv", index=False, lineterminator="\n")
    return files + [out / n for n in ("compare.md", "compare.html", "compare.csv", "one_sided.csv")]
