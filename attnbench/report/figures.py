"""Seaborn figures, each written as PNG and SVG with fixed metadata (same rows, same bytes)."""
from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator  # noqa: E402

from attnbench.report.stats import pareto_mask  # noqa: E402

plt.rcParams.update({"svg.hashsalt": "attnbench", "svg.fonttype": "none", "figure.dpi": 100})
PLAIN = FuncFormatter(lambda value, _: f"{value:g}")


def plain_log_ticks(ax) -> None:
    """Major ticks as plain numbers (no mathtext), at 1-2-5 steps when the axis spans under
    two decades; no labels on minor ticks."""
    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() not in ("log", "symlog"):
            continue
        if axis.get_scale() == "log" and min(lim) > 0 and max(lim) / min(lim) < 100 \
                and not isinstance(axis.get_major_locator(), FixedLocator):
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(PLAIN)
        axis.set_minor_formatter(NullFormatter())


def data_ticks(ax, values) -> None:
    """x ticks exactly at the measured values (n or m), without minor ticks."""
    ticks = sorted({float(v) for v in values})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())


def save(fig, folder: Path, name: str) -> list[Path]:
    """PNG and SVG without dates or version strings; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    for ax in fig.axes:
        plain_log_ticks(ax)
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    fig.savefig(paths[0], dpi=110, metadata={"Software": None})
    fig.savefig(paths[1], metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return paths


def _axes(title: str, figsize=(7.5, 4.8)):
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    ax.set_title(title, fontsize=9)
    return fig, ax


def _legend(ax) -> None:
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def line_vs_n(ok: pd.DataFrame, y: str, ylabel: str, title: str, labels: dict[str, str] | None = None,
              scale: float = 1.0):
    """One log-log line per series; ``labels`` may extend series names (e.g. fitted slopes)."""
    data = ok[["series", "n", y]].copy()
    data[y] = pd.to_numeric(data[y], errors="coerce") * scale
    data = data[data[y] > 0]
    data["label"] = [labels.get(s, s) if labels else s for s in data["series"]]
    fig, ax = _axes(title)
    sns.lineplot(data=data, x="n", y=y, hue="label", hue_order=sorted(data["label"].unique()), marker="o",
                 estimator=None, errorbar=None, sort=True, ax=ax)
    ax.set(xscale="log", yscale="log", xlabel="tokens n", ylabel=ylabel)
    data_ticks(ax, data["n"])
    _legend(ax)
    return fig


def macs_vs_n(ok: pd.DataFrame, title: str):
    """Analytic and counted MACs per series: solid analytic, markers for fvcore and torch."""
    long = ok.melt(id_vars=["series", "n"], value_vars=["macs_analytic", "macs_fvcore", "macs_torch"],
                   var_name="count", value_name="macs")
    long["macs"] = pd.to_numeric(long["macs"], errors="coerce")
    long = long[long["macs"] > 0]
    fig, ax = _axes(title)
    sns.lineplot(data=long, x="n", y="macs", hue="series", style="count", markers=True, dashes=True,
                 hue_order=sorted(long["series"].unique()), style_order=["macs_analytic", "macs_fvcore", "macs_torch"],
                 estimator=None, errorbar=None, sort=True, ax=ax)
    ax.set(xscale="log", yscale="log", xlabel="tokens n", ylabel="forward multiply-adds (MACs)")
    data_ticks(ax, long["n"])
    _legend(ax)
    return fig


def error_vs_m(ok: pd.DataFrame, title: str):
    """Relative error vs budget m, one line per (method, params) and n."""
    bud = ok[ok["m"].notna()].copy()
    bud["method_params"] = [f"{m} {p}".strip() for m, p in zip(bud["method"], bud["params_key"])]
    bud["n"] = bud["n"].astype(int).astype(str)
    fig, ax = _axes(title)
    sns.lineplot(data=bud, x="m", y="err_rel_fro", hue="method_params", style="n", markers=True,
                 hue_order=sorted(bud["method_params"].unique()), style_order=sorted(bud["n"].unique(), key=int),
                 estimator=None, errorbar=None, sort=True, ax=ax)
    ax.set(xscale="log", yscale="log", xlabel="budget m", ylabel="relative Frobenius error")
    data_ticks(ax, bud["m"])
    _legend(ax)
    return fig


def pareto(ok: pd.DataFrame, n: int, title: str):
    """Error against latency at one n; the non-dominated points joined by a step line."""
    at = ok[ok["n"] == n].copy()
    at = at[(pd.to_numeric(at["latency_ms"], errors="coerce") > 0) & pd.to_numeric(at["err_rel_fro"], errors="coerce").notna()]
    x, y = list(at["latency_ms"].astype(float)), list(at["err_rel_fro"].astype(float))
    fig, ax = _axes(title)
    sns.scatterplot(data=at, x="latency_ms", y="err_rel_fro", hue="series", hue_order=sorted(at["series"].unique()),
                    s=50, ax=ax)
    front = sorted((xi, yi) for xi, yi, k in zip(x, y, pareto_mask(x, y)) if k)
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", lw=1, label="Pareto front")
    ax.set(xscale="log", yscale="symlog" if min(y, default=1) <= 0 else "log", xlabel=f"latency (ms) at n={n}",
           ylabel="relative Frobenius error")
    _legend(ax)
    return fig


def speedup_heatmap(ok: pd.DataFrame, reference: str, title: str):
    """Reference latency / series latency per (series, n); colour on a log2 scale."""
    ref = ok[ok["method"] == reference]
    ref = ref[ref["series"] == min(ref["series"])].set_index("n")["latency_ms"].astype(float)
    data = ok[ok["n"].isin(ref.index)].copy()
    data["speedup"] = [ref[n] / float(t) for n, t in zip(data["n"], data["latency_ms"])]
    grid = data.pivot(index="series", columns="n", values="speedup").sort_index()
    fig, ax = _axes(title, figsize=(1.2 + 0.9 * grid.shape[1], 1.0 + 0.4 * grid.shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # seaborn's cmap.set_bad
        sns.heatmap(np.log2(grid), annot=grid, fmt=".3g", cmap="RdBu", center=0, ax=ax,
                    cbar_kws={"label": f"log2 speedup vs {reference}"}, annot_kws={"fontsize": 7})
    ax.set(xlabel="tokens n", ylabel="")
    return fig
