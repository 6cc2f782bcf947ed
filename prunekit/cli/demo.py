"""``prunekit demo``: the printed prune command, run."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from prunekit.cli.application import app, console, state
from prunekit.demo import DEMO_MODEL, demo_argv, full_size_notes


@app.command("demo")
def demo_command(
    model: str = typer.Option(DEMO_MODEL, "--model", "-m", help="Model to prune."),
    out: Path = typer.Option(Path("runs/demo"), help="Run directory (replaced if it exists)."),
) -> None:
    """The main job in minutes: BlockPruner on SmolLM2 to 10 % fewer parameters, then dense vs
    pruned WikiText-2 perplexity, at demo size (says what a full-size run changes)."""
    argv = demo_argv(model, out)
    console.print(shlex.join(["prunekit", *argv]), markup=False, soft_wrap=True, style="bold")
    # The same app again, so the demo is exactly the printed command; the global options go
    # first again, or the callback would reset --debug and --verbose to their defaults.
    global_options = (["--debug"] if state["debug"] else []) + (
        ["--verbose"] if state["verbose"] else []
    )
    app([*global_options, *argv], standalone_mode=False)
    for line in full_size_notes(model, out):
        console.print(line, markup=False, soft_wrap=True)
