"""Published numbers (baselines/paper/*.csv, installed as package data) next to measured model rows,
difference in percent."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from attnbench.report.load import ReportError

PAPER_PACKAGE = "attnbench.paper_tables"  # baselines/paper/ in the source tree, package data when installed
PAPER_IMG = 224  # ImageNet at 224 x 224 throughout the paper's Table 1 and Table 5
QUANTITIES = (("params_m", "params (M)", 1e6, "param_count"), ("macs_g", "MACs (G, fvcore)", 1e9, "macs_fvcore"))


class PaperTablesMissing(ReportError):
    """The published tables are not where the package says they are: a broken installation."""


def paper_files(folder: Path | None = None) -> list:
    """The published tables' CSV files (importlib.resources Traversables), from the package data
    ``attnbench.paper_tables`` or from ``folder``; PaperTablesMissing when there are none."""
    try:
        root = Path(folder) if folder is not None else resources.files(PAPER_PACKAGE)
    except ModuleNotFoundError:
        raise PaperTablesMissing(f"the published tables ({PAPER_PACKAGE}) are not installed; reinstall "
                                 "attnbench (pip install -e . in a source checkout)") from None
    files = sorted((f for f in root.iterdir() if f.name.endswith(".csv")), key=lambda f: f.name) \
        if root.is_dir() else []
    if not files:
        raise PaperTablesMissing(f"no published tables (*.csv) in {root}")
    return files


def load_paper(folder: Path | None = None) -> pd.DataFrame:
    """All published rows, in file order (files sorted by name)."""
    frames = []
    for f in paper_files(folder):
        with f.open("r") as fh:
            frames.append(pd.read_csv(fh))
    return pd.concat(frames, ignore_index=True)


def matching_rows(models: pd.DataFrame, paper_row: pd.Series) -> pd.DataFrame:
    """ok model rows of the paper row's arch whose attention matches (family for vanilla)."""
    same = models[(models["arch"] == paper_row["arch"]) & (pd.to_numeric(models["img"], errors="coerce") == PAPER_IMG)]
    if paper_row["attention"] == "vanilla":
        return same[same["family"] == "vanilla"]
    same = same[same["attention"] == paper_row["attention"]]
    if pd.notna(paper_row["m"]):
        same = same[pd.to_numeric(same["m"], errors="coerce") == float(paper_row["m"])]
    return same


def measured_label(row: pd.Series) -> str:
    extra = {k: v for k, v in (row.get("params") or {}).items() if k != "m"} \
        if isinstance(row.get("params"), dict) else {}
    m = f" m={int(row['m'])}" if pd.notna(row.get("m")) else ""
    params = "".join(f" {k}={v}" for k, v in sorted(extra.items()))
    return f"{row['arch']} + {row['attention']}{m}{params}, img {int(row['img'])}, {row['source']}"


def claim(model: str, source: str, quantity: str, published: float, measured: float, measured_as: str) -> dict:
    return {"model": model, "source": source, "quantity": quantity, "published": published, "measured": measured,
            "diff_pct": 100.0 * (measured - published) / published, "measured_as": measured_as}


def reduction_claims(models: pd.DataFrame, paper: pd.DataFrame) -> list[dict]:
    """Reduction (%) of each anchor model against the vanilla model of the same arch, published
    (from the same table) and measured (rows of the same run folder)."""
    out = []
    for _, p in paper[paper["attention"] != "vanilla"].iterrows():
        base = paper[(paper["table"] == p["table"]) & (paper["arch"] == p["arch"]) & (paper["attention"] == "vanilla")]
        if base.empty:
            continue
        b = base.iloc[0]
        vanilla = matching_rows(models, b)
        for _, r in matching_rows(models, p).iterrows():
            same = vanilla[vanilla["source"] == r["source"]].sort_values("attention")
            if same.empty:
                continue
            v = same.iloc[0]
            for col, label, _, field in QUANTITIES:
                published = 100.0 * (1 - float(p[col]) / float(b[col]))
                measured = 100.0 * (1 - float(r[field]) / float(v[field]))
                out.append(claim(f"{p['model']} vs {b['model']}", f"{p['table']}, page {p['page']}",
                                 f"{label.split(' ')[0]} reduction (%)", published, measured,
                                 f"{measured_label(r)} vs {v['attention']}"))
    return out


def claims_table(df: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """One line per (published row, matching measured row, quantity): published, measured, diff %;
    then the reductions of anchor models against their vanilla counterparts."""
    paper = load_paper() if paper is None else paper
    models = df[(df["kind"] == "model") & (df["status"] == "ok")] if "arch" in df else df.iloc[0:0]
    if paper.empty:
        return pd.DataFrame()
    out = []
    for _, p in paper.iterrows():
        for _, r in matching_rows(models, p).iterrows():
            for col, label, scale, field in QUANTITIES:
                measured = float(pd.to_numeric(r.get(field), errors="coerce")) / scale
                out.append(claim(p["model"], f"{p['table']}, page {p['page']}", label, float(p[col]), measured,
                                 measured_label(r)))
    return pd.DataFrame(out + reduction_claims(models, paper))
