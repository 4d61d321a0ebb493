"""A report page as a list of blocks, written as Markdown, one self-contained HTML file,
and booktabs LaTeX plus CSV for each table."""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class Block:
    kind: str                         # h1 | h2 | h3 | p | table | figure
    text: str = ""                    # heading, paragraph or caption
    name: str = ""                    # file stem of a table or figure
    frame: pd.DataFrame | None = None


@dataclass
class Page:
    blocks: list[Block] = field(default_factory=list)

    def add(self, kind: str, text: str = "", name: str = "", frame: pd.DataFrame | None = None) -> None:
        self.blocks.append(Block(kind, text, name, frame))

    def tables(self) -> list[Block]:
        return [b for b in self.blocks if b.kind == "table"]


def fmt(value: Any) -> str:
    """A cell as text: 4 significant digits for floats, an en dash for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)) and float(value).is_integer():
        return f"{value:.4g}" if abs(value) >= 1e6 else str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def cells(frame: pd.DataFrame) -> list[list[str]]:
    return [[fmt(v) for v in row] for row in frame.astype(object).itertuples(index=False)]


def markdown_table(frame: pd.DataFrame) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in cells(frame)]
    return "\n".join(lines)


def to_markdown(page: Page) -> str:
    out = []
    for b in page.blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "table":
            out.append(f"*{b.text}* (`tables/{b.name}.csv`)\n\n" + markdown_table(b.frame))
        elif b.kind == "figure":
            out.append(f"![{b.text}](figures/{b.name}.png)\n\n*{b.text}*")
    return "\n\n".join(out) + "\n"


def html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells(frame))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;font-size:14px}"
         "table{border-collapse:collapse;margin:0.5em 0;font-size:12px}"
         "th,td{border-bottom:1px solid #ccc;padding:2px 8px;text-align:left}"
         "img{max-width:100%}figcaption,.cap{font-style:italic;color:#444}")


def to_html(page: Page, figures: Path) -> str:
    """One page; figures are embedded as base64 PNG so the file stands alone."""
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>attnbench report</title>"
           f"<style>{STYLE}</style></head><body>"]
    for b in page.blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{html.escape(b.text)}</p>")
        elif b.kind == "table":
            out.append(f"<p class='cap'>{html.escape(b.text)}</p>" + html_table(b.frame))
        elif b.kind == "figure":
            data = base64.b64encode((figures / f"{b.name}.png").read_bytes()).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(b.text)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(b.text)}</figcaption></figure>")
    return "\n".join(out) + "\n</body></html>\n"


TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "–": "--"}


def tex_escape(text: str) -> str:
    return "".join(TEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_booktabs(frame: pd.DataFrame, caption: str) -> str:
    """A booktabs tabular inside a table float (needs \\usepackage{booktabs})."""
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_escape(caption)}}}",
             r"\begin{tabular}{" + "l" * len(frame.columns) + "}", r"\toprule",
             " & ".join(tex_escape(c) for c in frame.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(tex_escape(c) for c in row) + r" \\" for row in cells(frame)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_tables(page: Page, folder: Path) -> list[Path]:
    """tables/NAME.csv (raw values) and tables/NAME.tex (formatted) for every table block."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for b in page.tables():
        csv, tex = folder / f"{b.name}.csv", folder / f"{b.name}.tex"
        b.frame.to_csv(csv, index=False, lineterminator="\n")
        tex.write_text(to_booktabs(b.frame, b.text), encoding="utf-8")
        paths += [csv, tex]
    return paths
