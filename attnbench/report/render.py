"""A report page as a list of blocks, written as Markdown, one self-contained HTML file,
and booktabs LaTeX plus CSV for each table."""
from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.results import naming


@dataclass(frozen=True)
class Link:
    """A table cell that links to the rows behind it: ``row`` is the HTML id of a measurements
    row, ``section`` the anchor of the heading above that table (where Markdown links)."""

    text: str
    row: str
    section: str

    def __str__(self) -> str:
        return self.text


@dataclass
class Block:
    kind: str                         # h1 | h2 | h3 | p | table | figure
    text: str = ""                    # heading, paragraph or caption
    name: str = ""                    # file stem of a table or figure; the anchor of a heading
    frame: pd.DataFrame | None = None
    row_ids: list[str] | None = None  # HTML ids of a table's rows


@dataclass
class Page:
    blocks: list[Block] = field(default_factory=list)

    def add(self, kind: str, text: str = "", name: str = "", frame: pd.DataFrame | None = None,
            row_ids: list[str] | None = None) -> None:
        self.blocks.append(Block(kind, text, name, frame, row_ids))

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


def cells(frame: pd.DataFrame) -> list[list[Any]]:
    """Formatted cells; Link cells stay links (their text is already formatted)."""
    return [[v if isinstance(v, Link) else fmt(v) for v in row] for row in frame.astype(object).itertuples(index=False)]


_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")


def md_escape(text: Any) -> str:
    """Text that Markdown shows as written: HTML characters as entities, the characters of
    links, emphasis and table cells backslash-escaped, line breaks as spaces."""
    text = html.escape(str(text), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\r", " ").replace("\n", " ")


def md_cell(cell: Any) -> str:
    if isinstance(cell, Link):
        return f"[{md_escape(cell.text)}](#{cell.section})"
    return md_escape(cell)


def markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(md_escape(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in cells(frame)]
    return "\n".join(lines)


def to_markdown(page: Page) -> str:
    out = []
    for b in page.blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + md_escape(b.text))
        elif b.kind == "p":
            out.append(md_escape(b.text))
        elif b.kind == "table":
            out.append(f"*{md_escape(b.text)}* (`tables/{b.name}.csv`)\n\n" + markdown_table(b.frame))
        elif b.kind == "figure":
            out.append(f"![{md_escape(b.text)}](figures/{b.name}.png)\n\n*{md_escape(b.text)}*")
    return "\n\n".join(out) + "\n"


def html_cell(cell: Any) -> str:
    if isinstance(cell, Link):
        return f"<a href='#{html.escape(cell.row)}'>{html.escape(cell.text)}</a>"
    return html.escape(cell)


def html_table(frame: pd.DataFrame, row_ids: list[str] | None = None, name: str = "") -> str:
    """A table whose header cells sort it when clicked (see SORT_SCRIPT)."""
    head = "".join(f"<th title='click to sort'>{html.escape(str(c))}</th>" for c in frame.columns)
    ids = row_ids or [None] * len(frame)
    body = "".join((f"<tr id='{html.escape(i)}'>" if i else "<tr>") + "".join(f"<td>{html_cell(c)}</td>" for c in row)
                   + "</tr>" for i, row in zip(ids, cells(frame)))
    return (f"<table class='sortable' data-name='{html.escape(name)}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:0.8em auto;padding:0 1em;font-size:14px}"
         "h1{font-size:20px;margin:0.2em 0}h2{font-size:17px;margin:0.9em 0 0.3em}h3{font-size:15px}"
         "table{border-collapse:collapse;margin:0.3em 0;font-size:12px}"
         "th,td{border-bottom:1px solid #ccc;padding:2px 8px;text-align:left}"
         "th{cursor:pointer;background:#f4f4f4}th.asc:after{content:' \\25B2'}th.desc:after{content:' \\25BC'}"
         "tr:target{background:#ffe98a}.verdict td,.verdict th{font-size:13px}"
         "img{max-width:100%}figcaption,.cap{font-style:italic;color:#444;margin:0.2em 0}")

# Click a header: sort the body rows by that column, numbers numerically ('–' last), again to reverse.
SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
    var asc = !th.classList.contains('asc');
    table.querySelectorAll('th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
    th.classList.add(asc ? 'asc' : 'desc');
    var key = function (tr) {
      var t = tr.cells[col].textContent.trim(), x = parseFloat(t);
      return isNaN(x) || !/^[-+]?[0-9.]/.test(t) ? [1, t] : [0, x];
    };
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var ka = key(a), kb = key(b);
      if (ka[0] !== kb[0]) return ka[0] - kb[0];
      var c = ka[1] < kb[1] ? -1 : ka[1] > kb[1] ? 1 : 0;
      return asc ? c : -c;
    });
    rows.forEach(function (tr) { body.appendChild(tr); });
  });
});
"""


def to_html(page: Page, figures: Path, title: str = "attnbench report") -> str:
    """One page; figures are embedded as base64 PNG so the file stands alone."""
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{STYLE}</style></head><body>"]
    for b in page.blocks:
        if b.kind in ("h1", "h2", "h3"):
            anchor = f" id='{html.escape(b.name)}'" if b.name else ""
            out.append(f"<{b.kind}{anchor}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{html.escape(b.text)}</p>")
        elif b.kind == "table":
            out.append(f"<div class='{html.escape(b.name.split('-')[0])}'><p class='cap'>{html.escape(b.text)}</p>"
                       + html_table(b.frame, b.row_ids, b.name) + "</div>")
        elif b.kind == "figure":
            data = base64.b64encode((figures / f"{b.name}.png").read_bytes()).decode("ascii")
            out.append(f"<figure id='fig-{html.escape(b.name)}'>"
                       f"<img alt='{html.escape(b.text)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(b.text)}</figcaption></figure>")
    return "\n".join(out) + f"\n<script>{SORT_SCRIPT}</script>\n</body></html>\n"


TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "–": "--"}


def tex_escape(text: str) -> str:
    return "".join(TEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_booktabs(frame: pd.DataFrame, caption: str) -> str:
    """A booktabs tabular inside a table float (needs \\usepackage{booktabs})."""
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_escape(caption)}}}",
             r"\begin{tabular}{" + "l" * len(frame.columns) + "}", r"\toprule",
             " & ".join(tex_escape(c) for c in frame.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(tex_escape(str(c)) for c in row) + r" \\" for row in cells(frame)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_tables(page: Page, folder: Path) -> list[Path]:
    """tables/NAME.csv (raw values) and tables/NAME.tex (formatted) for every table block."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for b in page.tables():
        csv, tex = folder / f"{b.name}.csv", folder / f"{b.name}.tex"
        with naming(csv):
            csv_safe(b.frame).to_csv(csv, index=False, lineterminator="\n")
        with naming(tex):
            tex.write_text(to_booktabs(b.frame, b.text), encoding="utf-8")
        paths += [csv, tex]
    return paths


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: Any) -> Any:
    """A text cell that a spreadsheet will not run and a page will not render: '<', '>' and '&'
    as HTML entities, a leading = + - @ (a formula) behind a quote. Numbers pass unchanged."""
    if isinstance(value, Link):
        value = value.text
    if not isinstance(value, str):
        return value
    value = html.escape(value, quote=False)
    return "'" + value if value.startswith(FORMULA_START) else value


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every text cell passed through csv_text (column names too)."""
    out = frame.astype(object).map(csv_text) if len(frame) else frame.copy()
    out.columns = [csv_text(str(c)) for c in frame.columns]
    return out
