"""``prunekit profile``: the model's latency table."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from prunekit.cli.application import app, console
from prunekit.cli.options import (
    DeviceOpt,
    DtypeOpt,
    check_device,
    not_a_dir,
    split_commas,
)


@app.command("profile")
def profile_command(
    model: str = typer.Argument(..., help="Model spec, export or run directory (its base model)."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    batch: int = typer.Option(1, min=1, help="Sequences per prefill and decode run."),
    prompt_len: int = typer.Option(128, min=1, help="Prompt tokens (prefill; decode's prompt)."),
    gen_len: int = typer.Option(32, min=1, help="Decode: tokens generated per run."),
    phases: str = typer.Option("prefill,decode", help="Phases to time: prefill, decode."),
    multiple_of: int = typer.Option(64, min=1, help="Kernel-friendly MLP width multiple."),
    grid_steps: int = typer.Option(8, min=1, help="Widths at every 1/N of the full width."),
    layers_per_probe: int = typer.Option(4, min=1, help="Layer copies per timed probe."),
    runs: int = typer.Option(3, min=1, help="Timed runs per probe (median kept)."),
    out: Path = typer.Option(
        None, help="Table file (default RUN/latency.json or ./latency-*.json)."
    ),
) -> None:
    """Time one attention and one MLP block at a grid of widths: the model's latency table."""
    from prunekit.latency.command import run_profile, table_rows
    from prunekit.latency.profile import ProfileSettings

    not_a_dir(out, "--out")
    check_device(device)
    settings = ProfileSettings(
        batch=batch,
        prompt_len=prompt_len,
        gen_len=gen_len,
        phases=tuple(split_commas(phases)),
        multiple_of=multiple_of,
        grid_steps=grid_steps,
        layers_per_probe=layers_per_probe,
        runs=runs,
    )
    with console.status("profiling") as status:

        def progress(label: str, done: int, total: int) -> None:
            status.update(f"profiling: run {done}/{total} ({label})")

        table, path = run_profile(
            model, settings, dtype=dtype, device=device, out=out, progress=progress
        )
    shown = Table(title=f"latency of {table.model} ({table.dtype}, {table.device})")
    for col in ("phase", "entry", "width", "ms"):
        shown.add_column(col, justify="right" if col in ("width", "ms") else "left")
    for row in table_rows(table):
        shown.add_row(*row)
    console.print(shown)
    console.print(f"latency table saved: {path}")
