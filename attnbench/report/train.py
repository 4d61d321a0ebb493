"""The report's section for ``kind: "train"`` rows: accuracy per task, n and method, accuracy
against step time (Pareto front, exact attention marked) and one verdict per task and n."""
from __future__ import annotations

from typing import Any

import pandas as pd

EXACT = ("vanilla-sdpa", "vanilla-math")       # exact softmax attention; the first present is the reference
TOLERANCE = 0.02                               # "matches exact": within this much held-out accuracy
LEARNED = 0.25     # exact attention learned the task: it closed more than this share of chance's gap to 1


def unlearned(ref: dict[str, Any]) -> bool:
    """Exact attention itself stayed near chance (closed at most LEARNED of the gap between chance
    and a perfect score): no method can be judged against it there."""
    chance = float(ref["chance"])
    return float(ref["accuracy"]) <= chance + LEARNED * (1.0 - chance)


def ok_train(rows: pd.DataFrame) -> pd.DataFrame:
    """ok train rows, with a ``series`` label (method and budget)."""
    if "task" not in rows:
        return rows.iloc[0:0]
    ok = rows[(rows["kind"] == "train") & (rows["status"] == "ok")].copy()
    ok["series"] = [s_label(r) for r in ok.to_dict("records")]
    return ok.sort_values(["task", "n", "series"], kind="stable")


def s_label(r: dict[str, Any]) -> str:
    m = r.get("m")
    return r["method"] + (f" m={int(m)}" if m is not None and pd.notna(m) else "")


def accuracy_table(ok: pd.DataFrame, task: str) -> pd.DataFrame:
    """One line per method, one column per n: held-out accuracy; chance as the last line."""
    sub = ok[ok["task"] == task]
    table = sub.pivot_table(index="series", columns="n", values="accuracy", aggfunc="last")
    table.columns = [f"n={int(c)}" for c in table.columns]
    chance = sub.groupby("n")["chance"].first()
    table.loc["(chance)"] = [float(chance[int(c[2:])]) for c in table.columns]
    return table.round(3).reset_index()


def exact_row(sub: pd.DataFrame) -> dict[str, Any] | None:
    for name in EXACT:
        hit = sub[sub["method"] == name]
        if len(hit):
            return hit.iloc[0].to_dict()
    return None


def verdicts(ok: pd.DataFrame) -> pd.DataFrame:
    """Per task and n: exact attention's accuracy, and the fastest method (median step time)
    within TOLERANCE of it, or none."""
    out = []
    for (task, n), sub in ok.groupby(["task", "n"], sort=True):
        ref = exact_row(sub)
        if ref is None:
            out.append({"task": task, "n": int(n), "exact accuracy": None,
                        "verdict": "no exact-attention row (vanilla-sdpa or vanilla-math) to compare with"})
            continue
        if unlearned(ref):
            out.append({"task": task, "n": int(n), "exact accuracy": round(float(ref["accuracy"]), 3),
                        "chance": round(float(ref["chance"]), 3),
                        "verdict": f"none: exact attention did not learn the task in this budget "
                                   f"({ref['method']} {float(ref['accuracy']):.3f}, chance {float(ref['chance']):.3f})"})
            continue
        close = sub[(sub["accuracy"] >= ref["accuracy"] - TOLERANCE) & (sub["method"] != ref["method"])]
        close = close[~close["method"].isin(EXACT)]
        if close.empty:
            text = f"none: no method is within {TOLERANCE} of {ref['method']}'s accuracy"
        else:
            best = close.sort_values("step_ms").iloc[0]
            text = (f"{best['series']}: accuracy {best['accuracy']:.3f} at {best['step_ms']:.1f} ms a step "
                    f"({ref['method']}: {ref['step_ms']:.1f} ms)")
        out.append({"task": task, "n": int(n), "exact accuracy": round(float(ref["accuracy"]), 3),
                    "chance": round(float(ref["chance"]), 3), "verdict": text})
    return pd.DataFrame(out)


def anchor_falloff(ok: pd.DataFrame) -> str | None:
    """One sentence: per task, the smallest n where anchor attention is more than TOLERANCE below exact."""
    parts = []
    for task, sub in ok.groupby("task", sort=True):
        falls = []
        for n, at in sub.groupby("n", sort=True):
            ref, anchor = exact_row(at), at[at["method"] == "anchor"]
            if ref is None or anchor.empty or unlearned(ref):
                continue
            gap = ref["accuracy"] - float(anchor["accuracy"].max())
            falls.append((int(n), gap))
        if falls:
            below = [n for n, gap in falls if gap > TOLERANCE]
            gaps = ", ".join(f"n={n}: {gap:+.3f}" for n, gap in falls)
            parts.append(f"{task}: " + (f"falls off from n={below[0]}" if below else "matches at every n") +
                         f" (exact minus anchor: {gaps})")
    return ("Anchor attention trained end to end against exact attention — " + "; ".join(parts) + ".") if parts else None


def accuracy_figure(ok: pd.DataFrame, task: str):
    import matplotlib.pyplot as plt

    sub = ok[ok["task"] == task]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = plt.get_cmap("tab20").colors
    markers = "osD^vP"
    for i, (series, s) in enumerate(sub.groupby("series", sort=True)):
        exact = s["method"].iloc[0] in EXACT
        ax.plot(s["n"], s["accuracy"], marker="*" if exact else markers[i % len(markers)], lw=2.5 if exact else 1,
                label=series, color="black" if exact else colours[i % len(colours)], zorder=3 if exact else 2)
    chance = sub.groupby("n")["chance"].first()
    ax.plot(chance.index, chance.values, ls=":", color="grey", label="chance")
    ax.set_xscale("log", base=2)
    ns = sorted(int(n) for n in sub["n"].unique())
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("n (tokens)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{task}: held-out accuracy after training, per attention")
    ax.legend(fontsize=6, ncol=2, loc="best")
    fig.tight_layout()
    return fig


def pareto_figure(ok: pd.DataFrame, task: str):
    """Accuracy against median step time, one panel per n; the front drawn, exact attention starred."""
    import matplotlib.pyplot as plt

    sub = ok[ok["task"] == task]
    ns = sorted(sub["n"].unique())
    fig, axes = plt.subplots(1, len(ns), figsize=(5.5 * len(ns), 4.5), squeeze=False)
    for ax, n in zip(axes[0], ns):
        at = sub[sub["n"] == n].sort_values("step_ms")
        front = at[at["accuracy"] >= at["accuracy"].cummax()]
        ax.step(front["step_ms"], front["accuracy"], where="post", color="tab:green", lw=1, label="Pareto front")
        for r in at.to_dict("records"):
            exact = r["method"] in EXACT
            ax.scatter(r["step_ms"], r["accuracy"], marker="*" if exact else "o", s=160 if exact else 25,
                       color="crimson" if exact else "tab:blue", zorder=3)
            ax.annotate(r["series"] + (" (exact)" if exact else ""), (r["step_ms"], r["accuracy"]), fontsize=6,
                        xytext=(3, 2), textcoords="offset points")
        ax.axhline(float(at["chance"].iloc[0]), ls=":", color="grey", label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("median training step (ms)")
        ax.set_ylabel("held-out accuracy")
        ax.set_title(f"{task}, n={int(n)}")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
