"""Seaborn figures, each written as PNG and SVG with fixed metadata (same rows, same bytes)."""
from __future__ import annotations

import io
import json
import re
import math
import textwrap
import warnings
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from PIL import Image  # noqa: E402

from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator  # noqa: E402

from attnbench.report.stats import pareto_mask  # noqa: E402
from attnbench.results import naming  # noqa: E402

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
    """PNG and SVG without dates or version strings; returns both paths. The PNG is reduced to
    a 256-colour palette (deterministic, no dithering) to keep committed figures small."""
    folder.mkdir(parents=True, exist_ok=True)
    for ax in fig.axes:
        plain_log_ticks(ax)
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    buf.seek(0)
    with Image.open(buf) as img, naming(paths[0]):
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                    dither=Image.Dither.NONE).save(paths[0], optimize=True)
    with naming(paths[1]):
        fig.savefig(paths[1], metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return paths


def _wrap(title: str, width: int) -> str:
    return "\n".join(textwrap.wrap(title, width=width, break_long_words=False)) or title


def _axes(title: str, figsize=(7.5, 4.8)):
    """Figure with constrained layout; the group description as a wrapped suptitle, so a legend
    outside the axes never pushes it off the canvas."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    fig.suptitle(_wrap(title, int(figsize[0] * 14)), fontsize=9)
    return fig, ax


def _params(params_key) -> str:
    """{"backend": "inductor"} -> backend=inductor."""
    if not isinstance(params_key, str) or not params_key:
        return ""
    try:
        items = json.loads(params_key)
    except ValueError:
        return params_key
    if not isinstance(items, dict):
        return params_key
    return ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in items.items())


_M_SUFFIX = re.compile(r" m=(\d+)$")


def _base(series: str) -> str:
    """A series without its budget: the method and, where several sets share a group, its params."""
    return _M_SUFFIX.sub("", str(series))


def _series_key(series: str):
    """Sort by method, then m numerically (m=10 < m=30 < m=100)."""
    match = _M_SUFFIX.search(series)
    return (_base(series), int(match.group(1)) if match else -1)


def _m_of(series: str) -> int | None:
    match = _M_SUFFIX.search(str(series))
    return int(match.group(1)) if match else None


_T20 = sns.color_palette("tab20", 20)
_NAMES = ("blue", "orange", "green", "red", "purple", "brown", "pink", "gray", "olive", "cyan")
TAB = dict(zip(_NAMES, _T20[0::2]))          # the ten dark tab20 colours
LIGHT = dict(zip(_NAMES, _T20[1::2]))        # their light partners
# One colour and marker per method in every figure; methods measured together in the default
# sweep never share a colour, and methods of one family never share a marker.
METHOD_STYLES = {
    "vanilla-sdpa": ((0.0, 0.0, 0.0), "o"), "vanilla-math": ((0.35, 0.35, 0.35), "s"),
    "vanilla-xformers": ((0.55, 0.55, 0.55), "D"), "vanilla-flex": ((0.2, 0.2, 0.2), "^"),
    "uniform": ((0.65, 0.65, 0.65), "X"),
    "anchor": (TAB["blue"], "o"), "anchor-select": (TAB["orange"], "s"), "fused-anchor": (TAB["green"], "^"),
    "anchor-compiled": (TAB["red"], "D"),
    "nystrom": (TAB["purple"], "v"), "agent": (TAB["olive"], "D"),
    "window": (TAB["brown"], "o"), "window-flex": (LIGHT["brown"], "s"), "neighborhood": (TAB["pink"], "^"),
    "neighborhood-flex": (LIGHT["pink"], "v"),
    "pvt": (TAB["cyan"], "o"), "pvt-linear": (LIGHT["cyan"], "s"),
    "linear": (LIGHT["green"], "P"), "castling": (LIGHT["red"], "s"), "performer": (LIGHT["purple"], "^"),
    "sparsifiner": (LIGHT["orange"], "o"), "sparsifiner-dense": (LIGHT["blue"], "s"),
    "sparsifiner-flex": (LIGHT["olive"], "v"),
    "biformer": ((0.72, 0.53, 0.04), "P"), "biformer-flex": ((0.45, 0.30, 0.0), "X"),
}
OTHER_COLOURS = [c for name, c in TAB.items() if name != "gray"]
OTHER_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]


def method_style(method: str) -> tuple[tuple, str]:
    """(colour, marker) of a method: fixed for the built-in ones, from a hash of the name otherwise."""
    if method in METHOD_STYLES:
        return METHOD_STYLES[method]
    h = zlib.crc32(str(method).encode("utf-8"))
    return OTHER_COLOURS[h % len(OTHER_COLOURS)], OTHER_MARKERS[(h // len(OTHER_COLOURS)) % len(OTHER_MARKERS)]


M_DASHES = [(0, (1, 1.2)), (0, (4, 1.5)), (0, (7, 1.5, 1, 1.5)), (0, (2, 1, 2, 3)), (0, (8, 2)), (0, (1, 3))]


def budget_dashes(ms) -> dict:
    """Line style per budget m, in increasing m (solid: no budget)."""
    levels = sorted({int(m) for m in ms if m is not None and pd.notna(m)})
    return {None: "-"} | {m: M_DASHES[i % len(M_DASHES)] for i, m in enumerate(levels)}


EXACT_FAMILY, NULL_FAMILY = "vanilla", "null"
PANEL_SERIES = 8  # approximate series per panel at most; the exact ones come on top


def _families(ok: pd.DataFrame) -> pd.Series:
    fam = ok["family"] if "family" in ok else pd.Series(None, index=ok.index, dtype=object)
    return fam.where(fam.notna(), ok["method"]).astype(str)


def panels(ok: pd.DataFrame, limit: int = PANEL_SERIES) -> list[tuple[str, list[str]]]:
    """(title, series) per panel: one panel per approximate family, methods packed whole into
    panels of at most ``limit`` series (a family with more becomes "family (1/2)", ...)."""
    fam = _families(ok)
    out = []
    for family in sorted(set(fam) - {EXACT_FAMILY, NULL_FAMILY}):
        sub = ok[fam == family]
        chunks: list[list[str]] = [[]]
        for method in sorted(sub["method"].astype(str).unique()):
            series = sorted(sub[sub["method"] == method]["series"].unique(), key=_series_key)
            for i in range(0, len(series), limit):
                part = series[i:i + limit]
                if chunks[-1] and len(chunks[-1]) + len(part) > limit:
                    chunks.append([])
                chunks[-1] += part
        for i, chunk in enumerate(chunks):
            out.append((f"{family}" + (f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""), chunk))
    return out


def exact_series(ok: pd.DataFrame) -> list[str]:
    return sorted(ok[_families(ok) == EXACT_FAMILY]["series"].unique(), key=_series_key)


def _grid(count: int, title: str, panel=(4.0, 2.9), ncols: int = 3):
    """Figure with ``count`` panels in rows of ``ncols``; unused cells hidden."""
    sns.set_theme(style="whitegrid", context="paper")
    ncols = max(1, min(ncols, count))
    nrows = max(1, math.ceil(count / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows + 0.5),
                             layout="constrained", squeeze=False)
    fig.suptitle(_wrap(title, int(panel[0] * ncols * 14)), fontsize=9)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _series_line(ax, data: pd.DataFrame, series: str, x: str, y: str, dashes: dict, method: str) -> None:
    part = data[data["series"] == series].sort_values(x)
    if part.empty:
        return
    colour, marker = method_style(method)
    ax.plot(part[x], part[y], color=colour, marker=marker, markersize=3.8, linewidth=1.2,
            linestyle=dashes[_m_of(series)], label=series)


def _family_panels(data: pd.DataFrame, title: str):
    """(method of each series, line style per budget, panel layout, figure, axes) of a per-family figure."""
    methods = dict(zip(data["series"], data["method"].astype(str)))
    dashes = budget_dashes(_m_of(s) for s in methods)
    layout = panels(data) or [("exact attention", [])]
    fig, axes = _grid(len(layout), title)
    return methods, dashes, layout, fig, axes


def _log_n_axes(ax, data: pd.DataFrame, ylabel: str, family: str) -> None:
    """Log-log axes over the measured n, titled by the family."""
    ax.set(xscale="log", yscale="log", xlabel="tokens n", ylabel=ylabel, title=f"family: {family}")
    ax.title.set_fontsize(8)
    data_ticks(ax, data["n"])
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)


def facet_vs_n(ok: pd.DataFrame, y: str, ylabel: str, title: str):
    """One log-log panel per approximate family (see ``panels``), the exact series in every panel;
    colour and marker by method, line style by budget m."""
    data = ok.copy()
    data[y] = pd.to_numeric(data[y], errors="coerce")
    data = data[data[y] > 0]
    methods, dashes, layout, fig, axes = _family_panels(data, title)
    for ax, (name, series) in zip(axes, layout):
        for s in exact_series(data) + series:
            _series_line(ax, data, s, "n", y, dashes, methods[s])
        _log_n_axes(ax, data, ylabel, name)
        ax.legend(fontsize=6, loc="upper left", frameon=True, framealpha=0.85, handlelength=2.6, labelspacing=0.25)
    return fig


def macs_vs_n(ok: pd.DataFrame, title: str):
    """Analytic MACs as lines, per family panel with the exact series; fvcore and torch counts as
    ``x`` and ``+`` markers in the method's colour."""
    data = ok.copy()
    for c in ("macs_analytic", "macs_fvcore", "macs_torch"):
        data[c] = pd.to_numeric(data[c], errors="coerce")
    data = data[data["macs_analytic"] > 0]
    methods, dashes, layout, fig, axes = _family_panels(data, title)
    for ax, (name, series) in zip(axes, layout):
        for s in exact_series(data) + series:
            _series_line(ax, data, s, "n", "macs_analytic", dashes, methods[s])
            part = data[data["series"] == s]
            colour, _ = method_style(methods[s])
            for col, marker, size in (("macs_fvcore", "x", 22), ("macs_torch", "+", 34)):
                pts = part[part[col] > 0]
                ax.scatter(pts["n"], pts[col], marker=marker, s=size, color=colour, linewidths=0.8)
        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="0.3", lw=0, marker="x", markersize=4.5, label="fvcore"),
                    Line2D([], [], color="0.3", lw=0, marker="+", markersize=5.5, label="FlopCounterMode/2")]
        _log_n_axes(ax, data, "forward MACs (multiply-adds)", name)
        ax.legend(handles=handles, fontsize=6, loc="upper left", framealpha=0.85, handlelength=2.6, labelspacing=0.25)
    return fig


def error_column(ok: pd.DataFrame) -> tuple[str, str]:
    """(column, axis label) of the error shown: err_skill where any row has it, else err_rel_fro."""
    if "err_skill" in ok and pd.to_numeric(ok["err_skill"], errors="coerce").notna().any():
        return "err_skill", "err_skill (ratio; 0 = uniform, 1 = exact)"
    return "err_rel_fro", "relative error ‖out − exact‖ / ‖exact‖ (ratio)"


def error_vs_m(ok: pd.DataFrame, title: str):
    """Error against budget m, one panel per n; colour and marker by (method, params)."""
    bud = ok[ok["m"].notna()].copy()
    col, ylabel = error_column(bud)
    bud[col] = pd.to_numeric(bud[col], errors="coerce")
    sets = bud.groupby("method")["params_key"].transform("nunique")
    bud["method_params"] = [f"{m} {_params(p)}".strip() if k > 1 else str(m)
                            for m, p, k in zip(bud["method"], bud["params_key"], sets)]
    ns = sorted(int(n) for n in bud["n"].unique())
    fig, axes = _grid(len(ns), title, panel=(4.2, 3.0))
    handles: dict[str, Line2D] = {}
    for ax, n in zip(axes, ns):
        at = bud[bud["n"] == n]
        for label in sorted(at["method_params"].unique()):
            part = at[at["method_params"] == label].sort_values("m")
            colour, marker = method_style(str(part["method"].iloc[0]))
            handles[label], = ax.plot(part["m"], part[col], color=colour, marker=marker, markersize=4,
                                      linewidth=1.2, label=label)
        ax.set(xscale="log", xlabel="budget m (anchors, landmarks, agents)", ylabel=ylabel, title=f"n = {n}")
        ax.yaxis.label.set_fontsize(7)
        ax.title.set_fontsize(8)
        data_ticks(ax, bud["m"])
    fig.legend(handles=[handles[k] for k in sorted(handles)], loc="outside right upper", fontsize=6.5, frameon=False)
    return fig


LABEL_OFFSETS = (12, -14, 24, -26, 36, -38, 48, -50)


def _label_points(fig, ax, points) -> None:
    """Label (x, y, text) points; each label takes the first of eight staggered offsets at which it
    overlaps no label placed before it (measured on the rendered figure, so deterministic)."""
    renderer = fig.canvas.get_renderer()
    placed = [ax.get_legend().get_window_extent(renderer)] if ax.get_legend() else []
    frame = ax.get_window_extent(renderer)
    for xi, yi, text in points:
        for dy in LABEL_OFFSETS:
            note = ax.annotate(text, (xi, yi), xytext=(0, dy), textcoords="offset points", fontsize=6.5,
                               ha="center", va="bottom" if dy > 0 else "top", color="black",
                               arrowprops={"arrowstyle": "-", "color": "0.4", "lw": 0.5, "shrinkA": 0, "shrinkB": 3},
                               bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
            note.update_positions(renderer)
            box = Text.get_window_extent(note, renderer).expanded(1.05, 1.1)  # the text, not its leader line
            inside = frame.y0 <= box.y0 and box.y1 <= frame.y1
            if (inside and not any(box.overlaps(other) for other in placed)) or dy == LABEL_OFFSETS[-1]:
                placed.append(box)
                break
            note.remove()


def pareto(ok: pd.DataFrame, title: str, skill: pd.Series | None = None):
    """Error against latency, one panel per n, colour and marker by method; the non-dominated
    points (faster or better than every other) joined by a step line and labelled. The error is
    err_skill (higher is better; uniform 0 and exact 1 drawn as lines) where the rows have it."""
    data = ok.copy()
    col, ylabel = error_column(data)
    if skill is not None and col == "err_skill":
        data["err_skill"] = skill
    data[col] = pd.to_numeric(data[col], errors="coerce")
    data["latency_ms"] = pd.to_numeric(data["latency_ms"], errors="coerce")
    data = data[(data["latency_ms"] > 0) & data[col].notna()]
    ns = sorted(int(n) for n in data["n"].unique())
    fig, axes = _grid(len(ns), title, panel=(5.4, 3.8), ncols=2)
    for ax, n in zip(axes, ns):
        _pareto_panel(fig, ax, data[data["n"] == n], col, ylabel, n)
    methods = sorted(data["method"].astype(str).unique())
    handles = [Line2D([], [], lw=0, marker=method_style(m)[1], markersize=5, color=method_style(m)[0], label=m)
               for m in methods]
    handles.append(Line2D([], [], color="black", lw=1, label="Pareto front (labelled)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=6.5, frameon=False)
    if ns:
        fig.canvas.draw()  # settle the layout and limits, then place labels and freeze the layout
        fig.set_layout_engine("none")
        for ax, n in zip(axes, ns):
            at = data[data["n"] == n]
            _label_points(fig, ax, _front(at, col))
    return fig


def _front(at: pd.DataFrame, col: str) -> list[tuple[float, float, str]]:
    """Non-dominated (latency, error, series) at one n, by increasing latency."""
    x, y = list(at["latency_ms"]), list(at[col])
    better = [-round(v, 4) for v in y] if col == "err_skill" else y  # lower is better; 1e-4 apart = equal
    keep = pareto_mask(x, better)
    return sorted((xi, yi, s) for xi, yi, s, k in zip(x, y, at["series"], keep) if k)


def _pareto_panel(fig, ax, at: pd.DataFrame, col: str, ylabel: str, n: int) -> None:
    for method, part in at.groupby("method", sort=True):
        colour, marker = method_style(str(method))
        ax.scatter(part["latency_ms"], part[col], color=colour, marker=marker, s=30, alpha=0.9,
                   edgecolor="white", linewidth=0.4)
    front = _front(at, col)
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", lw=1, zorder=1)
    if col == "err_skill":
        for level, text in ((0.0, "uniform"), (1.0, "exact")):
            ax.axhline(level, color="0.5", lw=0.8, ls=":", zorder=0)
            ax.annotate(text, (1.0, level), xycoords=("axes fraction", "data"), xytext=(-2, 2),
                        textcoords="offset points", ha="right", va="bottom", fontsize=6, color="0.4")
        low = min(-0.1, float(at[col].min()) - 0.05) if len(at) else -0.1
        ax.set_ylim(low, max(1.2, float(at[col].max()) + 0.1) if len(at) else 1.2)
    else:
        ax.set_yscale("log")
    ax.set(xscale="log", xlabel=f"latency (ms) at n = {n}", ylabel=ylabel, title=f"n = {n}")
    ax.yaxis.label.set_fontsize(7)
    ax.title.set_fontsize(8)
    plain_log_ticks(ax)


def speedup_heatmap(ok: pd.DataFrame, reference: str, title: str):
    """Reference latency / series latency per (series, n); colour on a log2 scale."""
    ref = ok[ok["method"] == reference]
    ref = ref[ref["series"] == min(ref["series"])].set_index("n")["latency_ms"].astype(float)
    data = ok[ok["n"].isin(ref.index)].copy()
    data["speedup"] = [ref[n] / float(t) for n, t in zip(data["n"], data["latency_ms"])]
    grid = data.pivot(index="series", columns="n", values="speedup")
    grid = grid.reindex(sorted(grid.index, key=_series_key))
    fig, ax = _axes(title, figsize=(max(5.5, 2.6 + 0.9 * grid.shape[1]), 1.0 + 0.3 * grid.shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # seaborn's cmap.set_bad
        sns.heatmap(np.log2(grid), annot=grid, fmt=".3g", cmap="RdBu", center=0, ax=ax,
                    cbar_kws={"label": f"log2 speedup vs {reference}"}, annot_kws={"fontsize": 7})
    ax.set(xlabel="tokens n", ylabel="")
    return fig


def roofline(ok: pd.DataFrame, title: str):
    """Achieved TFLOP/s against arithmetic intensity (FLOPs per compulsory byte), log-log, colour and
    marker by method; the roof of each measured peak pair: min(copy GB/s × intensity, matmul TFLOP/s)."""
    data = ok.copy()
    for c in ("achieved_tflops", "achieved_gbps", "copy_peak_gbps", "matmul_peak_tflops"):
        data[c] = pd.to_numeric(data[c], errors="coerce")
    data = data[(data["achieved_tflops"] > 0) & (data["achieved_gbps"] > 0)]
    data["intensity"] = data["achieved_tflops"] * 1e3 / data["achieved_gbps"]
    fig, ax = _axes(title, figsize=(7.5, 4.6))
    for method, part in data.groupby("method", sort=True):
        colour, marker = method_style(str(method))
        ax.scatter(part["intensity"], part["achieved_tflops"], color=colour, marker=marker, s=26,
                   edgecolor="white", linewidth=0.4, label=str(method))
    peaks = data[["copy_peak_gbps", "matmul_peak_tflops"]].dropna().drop_duplicates()
    lo = min(float(data["intensity"].min()), 1.0) / 2 if len(data) else 0.1
    hi = max(float(data["intensity"].max()), 1.0) * 2 if len(data) else 100.0
    for bw, peak in peaks.itertuples(index=False):
        ridge = peak * 1e3 / bw
        xs = np.array([lo, min(max(ridge, lo), hi), hi])
        ax.plot(xs, np.minimum(bw * xs / 1e3, peak), color="0.2", lw=1.1, zorder=0)
        ax.annotate(f"copy {bw:.3g} GB/s, matmul {peak:.3g} TFLOP/s", (xs[-1], peak), xytext=(-2, 3),
                    textcoords="offset points", ha="right", va="bottom", fontsize=6.5, color="0.3")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOPs per compulsory byte)",
           ylabel="achieved TFLOP/s (2 × MACs; fwd+bwd = 3 × fwd)")
    ax.legend(fontsize=6.5, loc="lower right", framealpha=0.85)
    return fig
