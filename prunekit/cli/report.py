"""``prunekit report``: compare run directories."""

from __future__ import annotations

from pathlib import Path

import typer

from prunekit.cli.application import app, console
from prunekit.cli.options import (
    not_a_file,
)


@app.command("report")
def report_command(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...", help="Run directories."),
    out: Path = typer.Option(
        Path("."), help="Where comparison.md, comparison.csv and ppl_vs_ratio.png go."
    ),
) -> None:
    """Compare runs: one table (markdown + CSV) and a WikiText-2 ppl vs ratio_total plot."""
    from prunekit.report.compare import write_comparison

    not_a_file(out, "--out")
    for kind, path in write_comparison(list(run_dirs), out).items():
        console.print(f"{kind}: {path}")
