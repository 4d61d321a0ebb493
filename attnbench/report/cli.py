"""Argument handling for ``bench.py report`` (the click function stays thin)."""
from __future__ import annotations

from pathlib import Path

import click

from attnbench.report.build import build_report
from attnbench.report.load import ReportError, latest_run


def run_report(runs: tuple[str, ...], out: str | None, at_n: int | None, fit_points: int, bad) -> None:
    """Build the report; problems end in one ``bad`` line (exit 2) after writing what could be."""
    if fit_points < 2:
        raise bad(f"--fit-points must be at least 2, got {fit_points}")
    try:
        paths = [Path(r) for r in runs] or [latest_run(Path("results"))]
        target = Path(out) if out else (paths[0] if paths[0].is_dir() else paths[0].parent) / "report"
        result = build_report(paths, target, at_n=at_n, fit_points=fit_points)
    except ReportError as exc:
        raise bad(str(exc)) from None
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"report written to {result.out / 'report.md'} and report.html "
               f"({len(result.files)} files)")
    if result.problems:
        shown = "; ".join(result.problems[:3])
        more = f"; and {len(result.problems) - 3} more" if len(result.problems) > 3 else ""
        raise bad(f"{shown}{more}; the other outputs were written to {result.out}")
