"""``prunekit export``: replay a run's plan and save the pruned model."""

from __future__ import annotations

from pathlib import Path

import typer

from prunekit.cli.application import app, console
from prunekit.cli.options import (
    AttnOpt,
    DeviceOpt,
    ForceOpt,
    check_device,
)
from prunekit.cli.tables import print_gguf


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="Run directory written by `prunekit prune --out`."),
    out: Path = typer.Option(
        ..., "--out", help="Model directory to write (a .gguf file with --format gguf)."
    ),
    fmt: str = typer.Option(
        "auto",
        "--format",
        help="auto (hf when every layer has the same shape), hf, prunekit, or gguf (one file "
        "for llama.cpp/ollama).",
    ),
    gguf_type: str = typer.Option(
        "f16", "--gguf-type", help="--format gguf: matrix type f32, f16, bf16 or q8_0."
    ),
    save_dtype: str = typer.Option(
        None, "--dtype", help="Dtype of the saved weights: bf16, fp16 or fp32 (default: the run's)."
    ),
    model: str = typer.Option(None, help="Base model, when the run's one has moved."),
    device: str = DeviceOpt,
    attn_implementation: str = AttnOpt,
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing --out directory."
    ),
    force: bool = ForceOpt,
) -> None:
    """Replay a run's plan on its base model and save the pruned model (safetensors + config)."""
    from prunekit.export.from_run import export_run

    check_device(device)
    saved = export_run(
        run_dir,
        out,
        model=model,
        fmt=fmt,
        dtype=save_dtype,
        device=device,
        overwrite=overwrite,
        force=force,
        attn_implementation=attn_implementation,
        gguf_type=gguf_type,
    )
    if fmt == "gguf":
        print_gguf(saved)
        return
    console.print(
        f"model saved: {saved.path} ({saved.format} format, {saved.dtype}, "
        f"{saved.weight_bytes / 2**20:.1f} MiB of weights)"
    )
