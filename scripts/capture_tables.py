"""Markdown tables of per-layer error (sweep rows of file: captures) and of model drift (drift rows).

    PYTHONPATH=. python scripts/capture_tables.py results/minilm-layers results/minilm-drift
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from attnbench.results import read_rows


def label(row: dict) -> str:
    m = f" m={row['m']}" if row.get("m") is not None else ""
    fit = f" ({row['fit']})" if row.get("fit") not in (None, "none") else ""
    return f"`{row['method']}`{m}{fit}"


def layer_tables(rows: list[dict]) -> str:
    """One table per n: err_rel_fro / err_skill per method and layer, and exact attention's entropy."""
    out = []
    for n in sorted({r["n"] for r in rows}):
        sub = [r for r in rows if r["n"] == n and r["status"] == "ok" and isinstance(r.get("layer"), int)]
        layers = sorted({r["layer"] for r in sub})
        cells: dict[str, dict[int, str]] = defaultdict(dict)
        entropy = {r["layer"]: r["attn_entropy_ratio"] for r in sub}
        for r in sub:
            cells[label(r)][r["layer"]] = f"{r['err_rel_fro']:.3f} / {r['err_skill']:+.3f}"
        batch = sub[0]["batch"] if sub else "?"
        out.append(f"n = {n} ({batch} sequences x {sub[0]['heads'] if sub else '?'} heads), "
                   "err_rel_fro / err_skill per layer:\n")
        out.append("| method | " + " | ".join(f"layer {i}" for i in layers) + " |")
        out.append("|---|" + "---|" * len(layers))
        out.append("| exact attention's entropy / log n | " + " | ".join(f"{entropy[i]:.2f}" for i in layers) + " |")
        for name in sorted(cells):
            out.append(f"| {name} | " + " | ".join(cells[name].get(i, "–") for i in layers) + " |")
        out.append("")
    return "\n".join(out)


def drift_table(rows: list[dict]) -> str:
    """Embedding cosine (mean, min over sequences) and the worst layer's mean hidden-state cosine, per n."""
    ns = sorted({r["n"] for r in rows})
    cells: dict[str, dict[int, str]] = defaultdict(dict)
    for r in rows:
        if r["status"] == "ok":
            cells[label(r)][r["n"]] = (f"{r['embedding_cos_mean']:.4f} / {r['embedding_cos_min']:.4f} / "
                                       f"{r['hidden_cos_min']:.4f}")
        else:
            cells[label(r)][r["n"]] = f"{r['status']}: {r['message']}"
    batches = {r["n"]: r["batch"] for r in rows}
    out = ["| attention in every layer | " + " | ".join(f"n = {n} ({batches[n]} sequences)" for n in ns) + " |",
           "|---|" + "---|" * len(ns)]
    for name in sorted(cells):
        out.append(f"| {name} | " + " | ".join(cells[name].get(n, "–") for n in ns) + " |")
    return "\n".join(out)


def main(argv: list[str]) -> None:
    layer_dir, drift_dir = (Path(a) for a in argv[1:3])
    print(layer_tables(read_rows(layer_dir / "rows.jsonl")))
    print(drift_table([r for r in read_rows(drift_dir / "rows.jsonl") if r.get("kind") == "drift"]))


if __name__ == "__main__":
    main(sys.argv)
