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
ForceOpt = typer.Option(
    False,
    "--force",
    help="Replay the plan even on a base model whose weights differ from the ones it was made "
    "for (recorded in the output as forced_model_mismatch).",
)


def _zeroshot_table(title: str, result: dict) -> Table:
    table = Table(title=title)
    for col in ("task", "items", "acc", "acc_norm", "majority answer", "seconds"):
        table.add_column(col, justify="left" if col == "task" else "right")

    def pct(value: float | None, err: float | None = None) -> str:
        if value is None:
            return "–"
        return f"{100 * value:.1f}" + ("" if err is None else f" ± {100 * err:.1f}")

    for name, t in result["tasks"].items():
        table.add_row(
            name,
            str(t["samples"]),
            pct(t["acc"], t["acc_stderr"]),
            pct(t["acc_norm"], t["acc_norm_stderr"]),
            pct(t.get("majority")),
            f"{t['seconds']:.0f}",
        )
    table.add_row("average", "", "", f"{100 * result['average']:.1f}", "", "")
    table.caption = (
        f"lm-eval {result['lm_eval_version']}, {result['source']}, limit {result['limit']}; "
        "average: acc_norm where the task has it, else acc; majority answer: the accuracy of "
        "always giving the most frequent gold answer"
    )
    return table


def _print_eval(title: str, result: dict) -> None:
    if result.get("ppl"):
        console.print(_ppl_table(f"perplexity: {title}", result["ppl"]))
    if result.get("zeroshot"):
        console.print(_zeroshot_table(f"zero-shot: {title}", result["zeroshot"]))


TasksOpt = typer.Option(
    None,
    help="Zero-shot tasks (lm-eval, 0-shot), comma-separated: piqa, winogrande, hellaswag, "
    "arc_easy, arc_challenge, boolq. Needs the 'eval' extra.",
)
LimitOpt = typer.Option(None, help="Zero-shot: only the first N items of each task (recorded).")
TaskDataOpt = typer.Option(
    None,
    help="Offline task files (the tasks/ folder, or a data folder holding it); "
    "default $PRUNEKIT_DATA_DIR/tasks, else lm-eval's hub tasks.",
)


@app.command("eval")
def eval_command(
    target: str = typer.Argument(
        None,
        metavar="[MODEL_OR_RUN_DIR]",
        help="A model (as --model), a run directory (its plan is replayed on the base model) or "
        "an exported model directory.",
    ),
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help="Model: smollm2-135m, a hub id, a local directory or a .gguf file. With a run "
        "directory: the base model to replay the plan on (default: the one the plan names).",
    ),
    ppl: str = typer.Option(
        None,
        help="Comma-separated datasets: wikitext2, ptb, c4, or paths to .txt/.jsonl/.parquet "
        "files. Default wikitext2 unless --tasks is given.",
    ),
    seqlen: int = typer.Option(2048, help="Window length in tokens (PROTOCOL.md)."),
    max_windows: int = typer.Option(
        None, help="Use only the first N windows (quick checks; recorded in the output)."
    ),
    ppl_batch_size: int = typer.Option(1, help="Perplexity: windows per forward pass."),
    tasks: str = TasksOpt,
    limit: int = LimitOpt,
    batch_size: int = typer.Option(16, help="Zero-shot: requests per forward pass."),
    task_data: Path = TaskDataOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
    json_out: Path = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    force: bool = ForceOpt,
) -> None:
    """Perplexity and zero-shot accuracy of a model, a run directory or an exported model."""
    import time

    from prunekit.api import evaluate
    from prunekit.runs import load_for_eval

    spec = target or model
    if not spec:
        raise SettingsError("name a model or run directory: prunekit eval MODEL_OR_RUN_DIR")
    task_list = _split(tasks)
    datasets = _split(ppl) if ppl is not None else ([] if task_list else ["wikitext2"])
    # Fail on a bad dataset or task name, or missing task data, before loading anything.
    from prunekit.data import check_dataset

    for dataset in datasets:
        check_dataset(dataset)
    if task_list:
        from prunekit.evaluation.zeroshot import check_tasks

        check_tasks(task_list, task_data)
    started = time.perf_counter()
    loaded_target = load_for_eval(
        spec, base=model if target else None, dtype=dtype, device=device, force=force
    )
    loaded = loaded_target.loaded
    result = evaluate(
        loaded,
        ppl=datasets,
        seqlen=seqlen,
        max_windows=max_windows,
        ppl_batch_size=ppl_batch_size,
        tasks=task_list,
        limit=limit,
        batch_size=batch_size,
        task_data=task_data,
    )
    _print_eval(f"{loaded.spec} ({loaded.dtype_name}, {loaded.device})", result)
    if json_out:
        from prunekit.report.versions import library_versions

        record = {
            "model": {**loaded_target.describe(), "dtype": loaded.dtype_name},
            **result,
            **_forced_record(loaded),
            "seconds": time.perf_counter() - started,
            "versions": library_versions(),
        }
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(record, indent=2) + "\n")


def _forced_record(loaded) -> dict:
    """The eval JSON's record of a plan replayed with --force onto other weights (else empty)."""
    mismatch = loaded.forced_model_mismatch
    return {"forced_model_mismatch": mismatch} if mismatch else {}


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
    tasks: str = TasksOpt,
    limit: int = LimitOpt,
    eval_batch_size: int = typer.Option(16, help="Zero-shot: requests per forward pass."),
    task_data: Path = TaskDataOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
    save: Path = typer.Option(
        None, help="Also export the pruned model to this directory (as `prunekit export`)."
    ),
    save_format: str = typer.Option("auto", help="--save format: auto, hf or prunekit."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --save directory."),
) -> None:
    """Prune a model and write the run directory."""
    from prunekit.api import prune
    from prunekit.export.save import check_target

    if not model:
        raise SettingsError("name a model with --model")
    if save:
        check_target(save, force)  # fail before the search, not after it
    protect = [int(v) for v in _split(protect_layers)]
    result = prune(
        model,
        method,
        out=out,
        eval_datasets=_split(eval_ppl),
        eval_seqlen=eval_seqlen,
        eval_max_windows=eval_max_windows,
        eval_tasks=_split(tasks),
        eval_limit=limit,
        eval_batch_size=eval_batch_size,
        task_data=task_data,
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
            _print_eval(side, result.report["eval"][side])
    if result.run_dir:
        console.print(f"run directory: {result.run_dir}")
    if save:
        from prunekit.export.save import export_model

        saved = export_model(
            result.loaded,
            save,
            fmt=save_format,
            plan=result.plan,
            report=result.report,
            overwrite=force,
        )
        console.print(f"model saved: {saved.path} ({saved.format} format, {saved.dtype})")


@app.command("report")
def report_command(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...", help="Run directories."),
    out: Path = typer.Option(
        Path("."), help="Where comparison.md, comparison.csv and ppl_vs_ratio.png go."
    ),
) -> None:
    """Compare runs: one table (markdown + CSV) and a WikiText-2 ppl vs ratio_total plot."""
    from prunekit.report.compare import write_comparison

    for kind, path in write_comparison(list(run_dirs), out).items():
        console.print(f"{kind}: {path}")


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="Run directory written by `prunekit prune --out`."),
    out: Path = typer.Option(..., "--out", help="Model directory to write."),
    fmt: str = typer.Option(
        "auto", "--format", help="auto (hf when every layer has the same shape), hf or prunekit."
    ),
    save_dtype: str = typer.Option(
        None, "--dtype", help="Dtype of the saved weights: bf16, fp16 or fp32 (default: the run's)."
    ),
    model: str = typer.Option(None, help="Base model, when the run's one has moved."),
    device: str = DeviceOpt,
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing --out directory."
    ),
    force: bool = ForceOpt,
) -> None:
    """Replay a run's plan on its base model and save the pruned model (safetensors + config)."""
    from prunekit.export.from_run import export_run

    saved = export_run(
        run_dir,
        out,
        model=model,
        fmt=fmt,
        dtype=save_dtype,
        device=device,
        overwrite=overwrite,
        force=force,
    )
    console.print(
        f"model saved: {saved.path} ({saved.format} format, {saved.dtype}, "
        f"{saved.weight_bytes / 2**20:.1f} MiB of weights)"
    )


@app.command("bench-speed")
def bench_speed_command(
    model_dir: str = typer.Argument(..., help="Pruned model directory (or any model spec)."),
    baseline: str = typer.Option(
        None, help="Dense model to compare with (default: the base model named in report.json)."
    ),
    prefill: str = typer.Option("1x2048,8x512", help="Prefill shapes, BATCHxTOKENS."),
    decode_batches: str = typer.Option("1,16", help="Decode batch sizes."),
    new_tokens: int = typer.Option(128, help="Decode: tokens generated per sequence."),
    runs: int = typer.Option(5, help="Timed prefill runs per model (median reported)."),
    decode_runs: int = typer.Option(5, help="Timed decode runs per model."),
    dtype: str = typer.Option(None, help="Compute dtype (default: the pruned model's saved one)."),
    device: str = DeviceOpt,
    json_out: Path = typer.Option(None, "--json", help="Also write the results to this JSON file."),
) -> None:
    """Prefill and decode throughput of a pruned model and its dense baseline, interleaved."""
    from prunekit.evaluation.speed import SPEED_COLUMNS, SpeedSettings, bench_speed, speed_rows

    settings = SpeedSettings(
        prefill_shapes=[_shape(v) for v in _split(prefill)],
        decode_batches=[int(v) for v in _split(decode_batches)],
        new_tokens=new_tokens,
        runs=runs,
        decode_runs=decode_runs,
    )
    report = bench_speed(model_dir, baseline, settings, dtype=dtype, device=device)
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
        raise SettingsError(f"prefill shape {text!r} is not BATCHxTOKENS, e.g. 1x2048") from None
    return batch, tokens


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
