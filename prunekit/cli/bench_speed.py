"""``prunekit bench-speed``: prefill and decode throughput, pruned vs dense."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from prunekit.cli.application import app, console
from prunekit.cli.options import (
    AttnOpt,
    DeviceOpt,
    check_device,
    comma_ints,
    not_a_dir,
    split_commas,
)
from prunekit.errors import SettingsError


@app.command("bench-speed")
def bench_speed_command(
    model_dir: str = typer.Argument(..., help="Pruned model directory (or any model spec)."),
    baseline: str = typer.Option(
        None, help="Dense model to compare with (default: the base model named in report.json)."
    ),
    prefill: str = typer.Option("1x2048,8x512", help="Prefill shapes, BATCHxTOKENS."),
    decode_batches: str = typer.Option("1,16", help="Decode batch sizes."),
    new_tokens: int = typer.Option(128, min=1, help="Decode: tokens generated per sequence."),
    runs: int = typer.Option(5, min=1, help="Timed prefill runs per model (median reported)."),
    decode_runs: int = typer.Option(5, min=1, help="Timed decode runs per model."),
    dtype: str = typer.Option(None, help="Compute dtype (default: the pruned model's saved one)."),
    device: str = DeviceOpt,
    attn_implementation: str = AttnOpt,
    json_out: Path = typer.Option(None, "--json", help="Also write the results to this JSON file."),
) -> None:
    """Prefill and decode throughput of a pruned model and its dense baseline, interleaved."""
    from prunekit.evaluation.speed import SPEED_COLUMNS, SpeedSettings, bench_speed, speed_rows

    not_a_dir(json_out, "--json")
    check_device(device)
    settings = SpeedSettings(
        prefill_shapes=[_shape(v) for v in split_commas(prefill)],
        decode_batches=comma_ints(decode_batches, "--decode-batches", positive=True),
        new_tokens=new_tokens,
        runs=runs,
        decode_runs=decode_runs,
    )
    if not settings.prefill_shapes and not settings.decode_batches:
        raise SettingsError("nothing to measure: --prefill and --decode-batches are both empty")
    report = bench_speed(
        model_dir,
        baseline,
        settings,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
    )
    table = Table(title=f"speed ({report['environment']['threads']} threads)")
    for col in SPEED_COLUMNS:
        table.add_column(col, justify="left" if col in ("case", "model") else "right")
    for row in speed_rows(report):
        table.add_row(*row)
    console.print(table)
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))


def _shape(text: str) -> tuple[int, int]:
    try:
        batch, tokens = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SettingsError(f"--prefill shape {text!r} is not BATCHxTOKENS, e.g. 1x2048") from None
    if batch < 1 or tokens < 1:
        raise SettingsError(f"--prefill shape {text!r} needs a positive batch and token count")
    return batch, tokens
