"""``prunekit plan-memory``: a run's predicted peak memory, from the config alone."""

from __future__ import annotations

import json
from dataclasses import replace

import typer
from rich.table import Table

from prunekit.cli.application import app, console


@app.command("plan-memory")
def plan_memory_command(
    model: str = typer.Argument(..., help="Model spec: alias, local directory, hub id, .gguf."),
    method: str = typer.Option("fasp", help="Pruning method (prunekit methods)."),
    stream: bool = typer.Option(False, "--stream", help="Plan a streamed run (one layer)."),
    n_samples: int = typer.Option(16, min=1, help="Calibration windows."),
    seqlen: int = typer.Option(1024, min=1, help="Tokens per calibration window."),
    dtype: str = typer.Option("bf16", help="Compute dtype: bf16, fp16 or fp32."),
    batch_size: int | None = typer.Option(
        None,
        min=1,
        help="Windows per forward (default: as prune picks it: 1 on a CPU, up to 8 on a GPU, "
        "the largest that fits --max-memory).",
    ),
    device: str = typer.Option("cpu", help="Compute device: cpu or cuda[:i]."),
    sparsity: float = typer.Option(0.2, min=0.0, max=0.99, help="Fraction of columns removed."),
    max_shard_size: str = typer.Option("2GB", help="Shard size of the streamed export."),
    max_memory: str | None = typer.Option(
        None, help="The budget the default batch size must fit (as prune --max-memory)."
    ),
    nproc: int = typer.Option(
        1,
        "--nproc",
        min=1,
        help="Processes sharing the calibration windows (torchrun --nproc-per-node x nodes): "
        "the peak is one rank's.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON instead."),
) -> None:
    """Predict peak host and device memory of a prune run from the model's config (no weights)."""
    from prunekit.engine.executor import default_batch_size
    from prunekit.export.shards import parse_shard_size
    from prunekit.memory import MemoryBudget, MemorySettings, batch_fits, plan_memory
    from prunekit.methods.catalogue import get_method
    from prunekit.models.loading import load_config

    takes_batch = "batch_size" in get_method(method).takes  # unknown names: one-line error
    budget = MemoryBudget.parse(max_memory)
    config = load_config(model)
    settings = MemorySettings(
        method=method,
        streamed=stream,
        n_samples=n_samples,
        seqlen=seqlen,
        dtype=dtype,
        batch_size=batch_size or 1,
        device=device,
        sparsity=sparsity,
        max_shard_size=parse_shard_size(max_shard_size),
        nproc=nproc,
    )
    if batch_size is None and takes_batch:  # the default prune would pick
        fits = batch_fits(config, settings, budget)
        settings = replace(settings, batch_size=default_batch_size(device, n_samples, fits))
    plan = plan_memory(config, settings)
    if json_out:
        print(json.dumps(plan.as_dict(), indent=2))
        return
    console.print(_memory_table(model, plan))


def _memory_table(model: str, plan) -> Table:
    mode = "streamed" if plan.settings.streamed else "in memory"
    ranks = plan.settings.nproc
    per_rank = f", each of {ranks} ranks" if ranks > 1 else ""
    table = Table(title=f"{model}: {plan.settings.method}, {mode}{per_rank}")
    for col in ("term", "where", "phase", "GiB", "what"):
        table.add_column(col, justify="right" if col == "GiB" else "left")
    for term in plan.terms:
        table.add_row(term.name, term.where, term.phase, f"{term.bytes / 2**30:.3f}", term.note)
    for where in ("host", "device"):
        peak = plan.peak(where)
        if peak is not None:
            phase = plan.peak_phase(where) or ""
            table.add_row(f"[bold]peak {where}[/bold]", where, phase, f"{peak / 2**30:.2f}", "")
    if not plan.on_gpu:
        table.caption = "compute device: cpu (the host)"
    return table
