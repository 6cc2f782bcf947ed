"""The ``prunekit`` command line. Errors print one line and exit 2 (``--debug`` for tracebacks)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from prunekit.errors import PrunekitError, SettingsError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Training-free structured pruning of Hugging Face causal LMs.",
    pretty_exceptions_enable=False,
)
console = Console()
_state = {"debug": False}


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _state["debug"] = debug


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _ppl_table(title: str, results: dict[str, dict]) -> Table:
    table = Table(title=title)
    for col in ("dataset", "ppl", "seqlen", "windows", "tokens", "seconds"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['ppl']:.3f}",
            str(r["seqlen"]),
            str(r["windows"]),
            str(r["tokens"]),
            f"{r['seconds']:.1f}",
        )
    return table


ModelOpt = typer.Option(
    None, "--model", "-m", help="Model: smollm2-135m, a hub id, a local directory or a .gguf file."
)
DtypeOpt = typer.Option(
    "auto", help="auto (bf16 where the CPU/GPU runs it natively, else fp32), fp32, bf16 or fp16."
)
DeviceOpt = typer.Option(None, help="cpu or cuda[:N]; default cuda when available.")


@app.command("eval")
def eval_command(
    target: str = typer.Argument(
        None, metavar="[MODEL]", help="Model to evaluate (same as --model)."
    ),
    model: str = ModelOpt,
    ppl: str = typer.Option(
        "wikitext2",
        help="Comma-separated datasets: wikitext2, ptb, c4, or "
        "paths to .txt/.jsonl/.parquet files.",
    ),
    seqlen: int = typer.Option(2048, help="Window length in tokens (PROTOCOL.md)."),
    max_windows: int = typer.Option(
        None, help="Use only the first N windows (quick checks; recorded in the output)."
    ),
    batch_size: int = typer.Option(1, help="Windows per forward pass."),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
    json_out: Path = typer.Option(None, "--json", help="Also write the results to this JSON file."),
) -> None:
    """Perplexity of a model on WikiText-2 / PTB / C4 (non-overlapping windows, fp32 NLL)."""
    from prunekit.api import evaluate_ppl
    from prunekit.data import check_dataset
    from prunekit.models.loading import load_model

    spec = target or model
    if not spec:
        raise SettingsError("name a model: prunekit eval MODEL (or --model MODEL)")
    for dataset in _split(ppl):
        check_dataset(dataset)
    loaded = load_model(spec, dtype=dtype, device=device)
    results = evaluate_ppl(loaded, _split(ppl), seqlen, max_windows, batch_size)
    console.print(_ppl_table(f"{spec} ({loaded.dtype_name}, {loaded.device})", results))
    if json_out:
        json_out.write_text(json.dumps({"model": loaded.identity(), "ppl": results}, indent=2))


@app.command("prune")
def prune_command(
    method: str = typer.Option(..., help="Pruning method (see `prunekit methods`)."),
    model: str = ModelOpt,
    out: Path = typer.Option(None, help="Run directory for plan.json, report.json, report.md."),
    ratio: float = typer.Option(
        None, help="Target ratio_total (fraction of all parameters removed, embeddings included)."
    ),
    blocks: int = typer.Option(None, help="Depth: number of blocks (or layers) to remove."),
    sparsity: float = typer.Option(None, help="Width: column ratio of the prunable groups."),
    calib: str = typer.Option("c4", help="Calibration text: c4, wikitext2, ptb or a file."),
    n_samples: int = typer.Option(16, help="Calibration windows."),
    seqlen: int = typer.Option(1024, help="Calibration window length in tokens."),
    seed: int = typer.Option(0, help="Seed of the calibration sampling."),
    candidates: str = typer.Option("both", help="Depth: attn, mlp or both."),
    protect_layers: str = typer.Option(None, help="Depth: layers never removed, e.g. 0,-1."),
    criterion: str = typer.Option("ppl", help="BlockPruner: ppl (paper) or ppl-per-param."),
    exhaustive: bool = typer.Option(
        False, help="BlockPruner: score every candidate on every window (no branch-and-bound)."
    ),
    angular: bool = typer.Option(False, help="ShortGPT: angular distance instead of 1-cos."),
    resume: bool = typer.Option(False, help="Continue an interrupted search in --out."),
    targets: str = typer.Option("mlp,attn", help="Width: groups to prune (mlp, attn)."),
    no_restore: bool = typer.Option(
        False, "--no-restore", help="FASP: skip the least-squares restoration (ablation)."
    ),
    multiple_of: int = typer.Option(1, help="Width: round kept widths up to a multiple of this."),
    damping: float = typer.Option(
        0.1, help="FASP: restoration damping, as a fraction of mean(diag H)."
    ),
    eval_ppl: str = typer.Option(
        None, "--eval", help="Evaluate dense and pruned perplexity on these datasets."
    ),
    eval_seqlen: int = typer.Option(2048, help="Window length for --eval."),
    eval_max_windows: int = typer.Option(None, help="Windows limit for --eval."),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Prune a model and write the run directory."""
    from prunekit.api import prune

    if not model:
        raise SettingsError("name a model with --model")
    protect = [int(v) for v in _split(protect_layers)]
    result = prune(
        model,
        method,
        out=out,
        eval_datasets=_split(eval_ppl),
        eval_seqlen=eval_seqlen,
        eval_max_windows=eval_max_windows,
        dtype=dtype,
        device=device,
        ratio=ratio,
        blocks=blocks,
        sparsity=sparsity,
        calib=calib,
        n_samples=n_samples,
        seqlen=seqlen,
        seed=seed,
        candidates=candidates,
        protect_layers=protect,
        criterion=criterion,
        exhaustive=exhaustive,
        angular=angular,
        resume=resume,
        targets=_split(targets),
        restore=not no_restore,
        multiple_of=multiple_of,
        damping=damping,
    )
    params = result.report["params"]
    console.print(
        f"[bold]{method}[/]: {params['before'] / 1e6:.2f} M -> {params['after'] / 1e6:.2f} M "
        f"parameters (ratio_total {params['ratio_total']:.4f})"
    )
    for side in ("dense", "pruned"):
        if side in result.report["eval"]:
            console.print(_ppl_table(side, result.report["eval"][side]["ppl"]))
    if result.run_dir:
        console.print(f"run directory: {result.run_dir}")


@app.command("methods")
def methods_command() -> None:
    """List the pruning methods."""
    from prunekit.methods.registry import all_methods

    table = Table(title="methods")
    for col in ("name", "family", "what it does"):
        table.add_column(col)
    for m in all_methods():
        table.add_row(m.name, m.family, m.summary)
    console.print(table)


def main() -> None:
    try:
        app(standalone_mode=False)
    except PrunekitError as exc:
        if _state["debug"]:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click usage errors and anything unexpected
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if _state["debug"]:
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
