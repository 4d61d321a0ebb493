"""Seaborn figures, each written as PNG and SVG with fixed metadata (same rows, same bytes)."""
from __future__ import annotations

import io
import json
import re
import textwrap
import warnings
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
    with Image.open(buf) as img:
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                    dither=Image.Dither.NONE).save(paths[0], optimize=True)
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


def _legend(ax, title: str | None = None, entries: int | None = None, handles=None, labels=None) -> None:
    """Compact legend right of the axes: one column, two above 40 entries."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    count = entries if entries is not None else len(labels)
    ax.legend(handles, labels, fontsize=6.5, title=title, title_fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False, ncols=1 if count <= 40 else 2,
              handlelength=2.6, labelspacing=0.3, columnspacing=1.0, borderaxespad=0.0,
              alignment="left")


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


def _palette(keys) -> dict[str, tuple]:
    """Distinct colours for sorted keys: the ten dark tab20 colours first, then their light
    partners, so neighbours in sorted order never share a hue family; husl beyond 20."""
    keys = sorted(set(keys))
    if len(keys) <= 10:
        colours = sns.color_palette("tab10", 10)
    elif len(keys) <= 20:
        tab = sns.color_palette("tab20", 20)
        colours = tab[0::2] + tab[1::2]
    else:
        colours = sns.color_palette("husl", len(keys))
    return {k: colours[i] for i, k in enumerate(keys)}


DASHES = [(1, 1.5), (4, 1.5), (6, 1.5, 1, 1.5), (2, 1, 2, 3), (8, 2), (1, 3)]
M_MARKERS = ["v", "s", "^", "D", "P", "X"]
FAMILY_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*", "d", "8"]


def _budget_styles(ms) -> tuple[dict, dict]:
    """Dash pattern and marker per budget m (``None``: no budget, solid line with circles)."""
    levels = sorted({int(m) for m in ms if pd.notna(m)})
    dashes = {None: ""} | {m: DASHES[i % len(DASHES)] for i, m in enumerate(levels)}
    markers = {None: "o"} | {m: M_MARKERS[i % len(M_MARKERS)] for i, m in enumerate(levels)}
    return dashes, markers


def _series_styles(series) -> tuple[dict, dict, dict]:
    """Per series: colour by method (series without m), dashes and marker by budget m."""
    series = sorted(set(series))
    colours = _palette(_base(s) for s in series)
    ms = {s: (int(_M_SUFFIX.search(s).group(1)) if _M_SUFFIX.search(s) else None) for s in series}
    dashes, markers = _budget_styles(ms.values())
    return ({s: colours[_base(s)] for s in series}, {s: dashes[ms[s]] for s in series},
            {s: markers[ms[s]] for s in series})


def _shaded_by_m(series) -> dict[str, tuple]:
    """Colour by method; budget variants of one method as light-to-dark shades of it."""
    colours, _, _ = _series_styles(series)
    out = {}
    for base in sorted({_base(s) for s in series}):
        members = sorted((s for s in series if _base(s) == base),
                         key=lambda s: int(_M_SUFFIX.search(s).group(1)) if _M_SUFFIX.search(s) else 0)
        for i, s in enumerate(members):
            mix = 0.0 if len(members) == 1 else 0.55 * (1 - i / (len(members) - 1))  # 0.55 white .. pure
            out[s] = tuple(c + (1 - c) * mix for c in colours[s])
    return out


_CROSS = re.compile(r"beats (\S+) beyond n≈(\d+)")


def _short_label(label: str) -> tuple[str, str | None]:
    """'x (slope 0.97 [0.68, 1.26]; beats ref beyond n≈341)' -> 'x  0.97 [0.68, 1.26]; n×341', ref."""
    match = _CROSS.search(label)
    ref = match.group(1) if match else None
    label = _CROSS.sub(r"n×\2", label)
    label = re.sub(r" \(slope ([^)]*)\)$", r": \1", label)
    label = re.sub(r" \((n×\d+)\)$", r": \1", label)
    return label, ref


def line_vs_n(ok: pd.DataFrame, y: str, ylabel: str, title: str, labels: dict[str, str] | None = None,
              scale: float = 1.0):
    """One log-log line per series: colour by method, dashes and marker by budget m. ``labels``
    may extend series names (fitted slopes, crossovers); their wording is shortened here and
    explained in the legend title."""
    data = ok[["series", "n", y]].copy()
    data[y] = pd.to_numeric(data[y], errors="coerce") * scale
    data = data[data[y] > 0]
    series = sorted(data["series"].unique(), key=_series_key)
    short = {s: _short_label(labels.get(s, s) if labels else s) for s in series}
    data["label"] = [short[s][0] for s in data["series"]]
    colours, dashes, markers = _series_styles(series)
    refs = sorted({r for _, r in short.values() if r})
    fig, ax = _axes(title, figsize=(9.5, 5.6) if labels else (8.5, 5.4))
    order = [short[s][0] for s in series]
    sns.lineplot(data=data, x="n", y=y, hue="label", hue_order=order, style="label", style_order=order,
                 palette={short[s][0]: colours[s] for s in series},
                 dashes={short[s][0]: dashes[s] for s in series},
                 markers={short[s][0]: markers[s] for s in series}, markersize=4, linewidth=1.2,
                 estimator=None, errorbar=None, sort=True, ax=ax)
    ax.set(xscale="log", yscale="log", xlabel="tokens n", ylabel=ylabel)
    data_ticks(ax, data["n"])
    legend_title = None
    if labels and any(labels.get(s, s) != s for s in series):
        legend_title = "series: log-log slope [95% interval]"
        if refs:
            legend_title += f";\nn× = faster than {', '.join(refs)} beyond this n"
    _legend(ax, legend_title)
    return fig


def macs_vs_n(ok: pd.DataFrame, title: str):
    """Analytic MACs as lines (colour by method, dashes by m); fvcore and torch counts as
    ``x`` and ``+`` markers in the same colour."""
    long = ok.melt(id_vars=["series", "n"], value_vars=["macs_analytic", "macs_fvcore", "macs_torch"],
                   var_name="count", value_name="macs")
    long["macs"] = pd.to_numeric(long["macs"], errors="coerce")
    long = long[long["macs"] > 0]
    series = sorted(long["series"].unique())
    colours, dashes, markers = _series_styles(series)
    fig, ax = _axes(title, figsize=(8.5, 5.4))
    analytic = long[long["count"] == "macs_analytic"]
    if len(analytic):
        order = sorted(analytic["series"].unique(), key=_series_key)
        sns.lineplot(data=analytic, x="n", y="macs", hue="series", hue_order=order, style="series",
                     style_order=order, palette={s: colours[s] for s in order},
                     dashes={s: dashes[s] for s in order}, markers={s: markers[s] for s in order},
                     markersize=3.5, linewidth=1.2, estimator=None, errorbar=None, sort=True, ax=ax)
    handles, labels = ax.get_legend_handles_labels()
    for count, marker, size in (("macs_fvcore", "x", 28), ("macs_torch", "+", 40)):
        part = long[long["count"] == count]
        if len(part):
            sns.scatterplot(data=part, x="n", y="macs", hue="series", hue_order=sorted(part["series"].unique()),
                            palette=colours, marker=marker, s=size, linewidth=0.9, legend=False, ax=ax)
    keys = [Line2D([], [], color="0.2", lw=1.2, marker="o", markersize=3.5, label="analytic (line)"),
            Line2D([], [], color="0.2", lw=0, marker="x", markersize=5, label="fvcore"),
            Line2D([], [], color="0.2", lw=0, marker="+", markersize=6, label="FlopCounterMode/2")]
    ax.set(xscale="log", yscale="log", xlabel="tokens n", ylabel="forward multiply-adds (MACs)")
    data_ticks(ax, long["n"])
    _legend(ax, "series (analytic line; fvcore x, torch +)", handles=handles + keys, labels=labels + [k.get_label() for k in keys])
    return fig


def error_vs_m(ok: pd.DataFrame, title: str):
    """Relative error vs budget m: colour by (method, params), dashes and marker by n."""
    bud = ok[ok["m"].notna()].copy()
    bud["method_params"] = [f"{m} {_params(p)}".strip() for m, p in zip(bud["method"], bud["params_key"])]
    bud["n"] = bud["n"].astype(int).astype(str)
    bud["err_rel_fro"] = pd.to_numeric(bud["err_rel_fro"], errors="coerce")
    hue_order = sorted(bud["method_params"].unique())
    n_order = sorted(bud["n"].unique(), key=int)
    fig, ax = _axes(title, figsize=(8.5, 5.0))
    sns.lineplot(data=bud, x="m", y="err_rel_fro", hue="method_params", style="n", markers=True,
                 hue_order=hue_order, style_order=n_order, palette=_palette(hue_order),
                 dashes={n: ("" if i == len(n_order) - 1 else DASHES[i % len(DASHES)]) for i, n in enumerate(n_order)},
                 markersize=4.5, linewidth=1.2, estimator=None, errorbar=None, sort=True, ax=ax)
    err = bud["err_rel_fro"][bud["err_rel_fro"] > 0]
    narrow = len(err) and err.max() / err.min() < 5
    ax.set(xscale="log", yscale="linear" if narrow else "log", xlabel="budget m", ylabel="relative Frobenius error")
    data_ticks(ax, bud["m"])
    handles, labels = ax.get_legend_handles_labels()
    labels = [{"method_params": "method", "n": "tokens n"}.get(lab, lab) for lab in labels]
    _legend(ax, handles=handles, labels=labels)
    return fig


LABEL_OFFSETS = (12, -14, 24, -26, 36, -38, 48, -50)


def _label_points(fig, ax, points) -> None:
    """Label (x, y, text) points; each label takes the first of eight staggered offsets at which it
    overlaps no label placed before it (measured on the rendered figure, so deterministic)."""
    renderer = fig.canvas.get_renderer()
    placed = [ax.get_legend().get_window_extent(renderer)]
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


def pareto(ok: pd.DataFrame, n: int, title: str):
    """Error against latency at one n: colour by method, marker by family; the non-dominated
    points joined by a step line and labelled."""
    at = ok[ok["n"] == n].copy()
    at = at[(pd.to_numeric(at["latency_ms"], errors="coerce") > 0) & pd.to_numeric(at["err_rel_fro"], errors="coerce").notna()]
    at["latency_ms"] = at["latency_ms"].astype(float)
    at["err_rel_fro"] = at["err_rel_fro"].astype(float)
    at["family"] = at["family"].fillna(at["method"]).astype(str) if "family" in at else at["method"].astype(str)
    x, y = list(at["latency_ms"]), list(at["err_rel_fro"])
    series = sorted(at["series"].unique())
    colours = _shaded_by_m(series)
    families = sorted(at["family"].unique())
    fig, ax = _axes(title, figsize=(9.0, 5.4))
    sns.scatterplot(data=at, x="latency_ms", y="err_rel_fro", hue="series", hue_order=series, palette=colours,
                    style="family", style_order=families,
                    markers={f: FAMILY_MARKERS[i % len(FAMILY_MARKERS)] for i, f in enumerate(families)},
                    s=42, alpha=0.85, edgecolor="white", linewidth=0.4, legend=False, ax=ax)
    keep = pareto_mask(x, y)
    front = sorted((xi, yi, s) for xi, yi, s, k in zip(x, y, at["series"], keep) if k)
    ax.set(xscale="log", yscale="symlog" if min(y, default=1) <= 0 else "log", xlabel=f"latency (ms) at n={n}",
           ylabel="relative Frobenius error")
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", lw=1, zorder=1)
    family_of = dict(zip(at["series"], at["family"]))
    marker_of = {f: FAMILY_MARKERS[i % len(FAMILY_MARKERS)] for i, f in enumerate(families)}
    handles = [Line2D([], [], lw=0, marker=marker_of[family_of[s]], markersize=5, color=colours[s], label=s)
               for s in sorted(series, key=_series_key)]
    handles.append(Line2D([], [], lw=0, label=""))
    handles += [Line2D([], [], lw=0, marker=FAMILY_MARKERS[i % len(FAMILY_MARKERS)], markersize=5, color="0.3",
                       label=f"family: {f}") for i, f in enumerate(families)]
    handles.append(Line2D([], [], color="black", lw=1, label="Pareto front (labelled)"))
    _legend(ax, handles=handles, labels=[h.get_label() for h in handles])
    if front:
        plain_log_ticks(ax)
        fig.canvas.draw()  # settle the layout and limits, then place labels and freeze the layout
        fig.set_layout_engine("none")
        _label_points(fig, ax, front)
    return fig


def speedup_heatmap(ok: pd.DataFrame, reference: str, title: str):
    """Reference latency / series latency per (series, n); colour on a log2 scale."""
    ref = ok[ok["method"] == reference]
    ref = ref[ref["series"] == min(ref["series"])].set_index("n")["latency_ms"].astype(float)
    data = ok[ok["n"].isin(ref.index)].copy()
    data["speedup"] = [ref[n] / float(t) for n, t in zip(data["n"], data["latency_ms"])]
    grid = data.pivot(index="series", columns="n", values="speedup")
    grid = grid.reindex(sorted(grid.index, key=_series_key))
    fig, ax = _axes(title, figsize=(1.2 + 0.9 * grid.shape[1], 1.0 + 0.4 * grid.shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # seaborn's cmap.set_bad
        sns.heatmap(np.log2(grid), annot=grid, fmt=".3g", cmap="RdBu", center=0, ax=ax,
                    cbar_kws={"label": f"log2 speedup vs {reference}"}, annot_kws={"fontsize": 7})
    ax.set(xlabel="tokens n", ylabel="")
    return fig
