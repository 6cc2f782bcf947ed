"""``prunekit plan-memory``: a run's predicted peak memory, from the config alone."""

from __future__ import annotations

import json

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
    batch_size: int = typer.Option(1, min=1, help="Windows per forward."),
    device: str = typer.Option("cpu", help="Compute device: cpu or cuda[:i]."),
    sparsity: float = typer.Option(0.2, min=0.0, max=0.99, help="Fraction of columns removed."),
    max_shard_size: str = typer.Option("2GB", help="Shard size of the streamed export."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON instead."),
) -> None:
    """Predict peak host and device memory of a prune run from the model's config (no weights)."""
    from prunekit.export.shards import parse_shard_size
    from prunekit.memory import MemorySettings, plan_memory_for
    from prunekit.methods.catalogue import get_method

    get_method(method)  # unknown names: the registry's one-line error
    settings = MemorySettings(
        method=method,
        streamed=stream,
        n_samples=n_samples,
        seqlen=seqlen,
        dtype=dtype,
        batch_size=batch_size,
        device=device,
        sparsity=sparsity,
        max_shard_size=parse_shard_size(max_shard_size),
    )
    plan = plan_memory_for(model, settings)
    if json_out:
        print(json.dumps(plan.as_dict(), indent=2))
        return
    console.print(_memory_table(model, plan))


def _memory_table(model: str, plan) -> Table:
    mode = "streamed" if plan.settings.streamed else "in memory"
    table = Table(title=f"{model}: {plan.settings.method}, {mode}")
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
