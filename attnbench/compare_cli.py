"""The ``compare`` and ``export`` commands (options and messages; the work is in compare*.py and
attnbench.frame)."""
from __future__ import annotations

from pathlib import Path

import click


class Refused(click.ClickException):
    """One line on stderr, exit status 2."""

    exit_code = 2


def default_out(a: Path, b: Path) -> Path:
    return Path("results") / f"compare-{Path(a).name}-vs-{Path(b).name}"


@click.command("compare")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--on", "on_spec", default=None, metavar="FIELD[,FIELD]",
              help="Fields A and B differ in: identity fields (dtype, device_name, params, ...), params.KEY or "
                   "env.KEY (env.torch, env.git_commit). Default: the identity fields that differ.")
@click.option("--out", default=None, type=click.Path(path_type=Path),
              help="Output folder (default results/compare-<A>-vs-<B>).")
def compare_cmd(a: Path, b: Path, on_spec: str | None, out: Path | None) -> None:
    """Pair the rows of run folders A and B; B/A latency, memory and error per pair, with a verdict."""
    from attnbench.report.compare import CompareError, compare, verdict
    from attnbench.report.compare_page import on_text, write_comparison

    on = [f.strip() for f in on_spec.split(",") if f.strip()] if on_spec is not None else None
    if on is not None and not on:
        raise Refused("--on names no field; give e.g. --on dtype or --on env.torch")
    try:
        c = compare(a, b, on)
    except CompareError as exc:
        raise Refused(str(exc)) from None
    target = out or default_out(a, b)
    click.echo(on_text(c))
    click.echo(verdict(c))
    files = write_comparison(c, target)
    click.echo(f"{len(c.pairs)} pairs, {len(c.only_a)} rows only in A, {len(c.only_b)} only in B; "
               f"written to {target / 'compare.md'}, compare.html, compare.csv ({len(files)} files)")


@click.command("export")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="csv", show_default=True, type=click.Choice(["csv", "parquet"]))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="File to write.")
def export_cmd(runs: tuple[Path, ...], fmt: str, out: Path) -> None:
    """Rows of run folders as one flat table (dotted columns such as env.torch), CSV or Parquet."""
    from attnbench.frame import ExportError, export

    for run in runs:
        if not run.exists() or (run.is_dir() and not (run / "rows.jsonl").exists()):
            raise Refused(f"run {run} has no rows.jsonl")
    try:
        count = export(list(runs), fmt, out)
    except ExportError as exc:
        raise Refused(str(exc)) from None
    click.echo(f"{count} rows from {len(runs)} run folder(s) written to {out}")
