"""``prunekit eval``: perplexity and zero-shot of a model, a run directory or an export."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from prunekit.cli.application import app
from prunekit.cli.options import (
    AttnOpt,
    DeviceOpt,
    DtypeOpt,
    ForceOpt,
    LimitOpt,
    TaskDataOpt,
    TasksOpt,
    check_device,
    not_a_dir,
    split_commas,
)
from prunekit.cli.tables import print_eval
from prunekit.errors import SettingsError


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
    seqlen: int = typer.Option(2048, min=2, help="Window length in tokens (docs/protocol.md)."),
    max_windows: int = typer.Option(
        None, min=1, help="Use only the first N windows (quick checks; recorded in the output)."
    ),
    ppl_batch_size: int = typer.Option(1, min=1, help="Perplexity: windows per forward pass."),
    tasks: str = TasksOpt,
    limit: int = LimitOpt,
    batch_size: int = typer.Option(16, min=1, help="Zero-shot: requests per forward pass."),
    task_data: Path = TaskDataOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
    attn_implementation: str = AttnOpt,
    json_out: Path = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    force: bool = ForceOpt,
    stream: bool = typer.Option(
        False,
        "--stream",
        help="For models bigger than memory: perplexity layer by layer from the weight files, "
        "zero-shot on the model dispatched by accelerate (weights beyond --max-memory offloaded).",
    ),
    max_memory: str = typer.Option(
        None,
        "--max-memory",
        help="Memory budget on the compute device, e.g. 24GB or 200MB (implies --stream): bounds "
        "the windows evaluated per layer read and the weights accelerate keeps on the device.",
    ),
    offload_folder: Path = typer.Option(
        None,
        "--offload-folder",
        help="With --stream and --tasks: where accelerate writes weights it cannot read from the "
        "checkpoint itself (default: a temporary directory, removed afterwards).",
    ),
) -> None:
    """Perplexity and zero-shot accuracy of a model, a run directory or an exported model."""
    import time

    from prunekit.api import evaluate
    from prunekit.loader import load, origin_record

    spec = target or model
    if not spec:
        raise SettingsError("name a model or run directory: prunekit eval MODEL_OR_RUN_DIR")
    stream = stream or max_memory is not None
    task_list = split_commas(tasks)
    datasets = split_commas(ppl) if ppl is not None else ([] if task_list else ["wikitext2"])
    if ppl is not None and not datasets and not task_list:
        raise SettingsError("--ppl names no dataset; give e.g. --ppl wikitext2")
    not_a_dir(json_out, "--json")
    # Fail on a bad dataset or task name, or missing task data, before loading anything.
    from prunekit.data import check_dataset

    for dataset in datasets:
        check_dataset(dataset)
    if task_list:
        from prunekit.evaluation.zeroshot import check_tasks

        check_tasks(task_list, task_data)
    check_device(device)
    started = time.perf_counter()
    # Under torchrun: every rank computes its share of the perplexity windows on its own device;
    # rank 0 writes --json (pipeline/ranks.py).
    from prunekit.pipeline.ranks import rank_device, run_world

    world = run_world(spec, device, None)
    device = rank_device(device, world)
    if not world.is_main:
        json_out = None
    if stream:
        _eval_streamed(
            spec,
            model if target else None,
            ppl=datasets,
            seqlen=seqlen,
            max_windows=max_windows,
            ppl_batch_size=ppl_batch_size,
            tasks=task_list,
            limit=limit,
            batch_size=batch_size,
            task_data=task_data,
            max_memory=max_memory,
            offload_folder=offload_folder,
            dtype=dtype,
            device=device,
            attn_implementation=attn_implementation,
            json_out=json_out,
            started=started,
            world=world,
        )
        return
    if offload_folder is not None:
        raise SettingsError("--offload-folder applies to --stream (or --max-memory) only")
    loaded = load(
        spec,
        base=model if target else None,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        force=force,
    )
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
        world=world,
    )
    print_eval(f"{loaded.spec} ({loaded.dtype_name}, {loaded.device})", result)
    if json_out:
        from prunekit.report.versions import library_versions

        record = {
            "model": {**origin_record(loaded), "dtype": loaded.dtype_name},
            **result,
            **_forced_record(loaded),
            "seconds": time.perf_counter() - started,
            "versions": library_versions(),
        }
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(record, indent=2) + "\n")


def _eval_streamed(
    spec: str, base: str | None, *, json_out: Path | None, started: float, **options
) -> None:
    """``eval --stream``: a model or an export evaluated without ever holding it whole."""
    import time

    from prunekit.api import evaluate
    from prunekit.loader import spec_kind

    if spec_kind(spec) == "run":
        raise SettingsError(
            f"--stream evaluates a model or an exported directory; {spec} is a run directory "
            "(its plan is replayed in memory): export it first, or evaluate without --stream"
        )
    if base is not None and base != spec:
        raise SettingsError("--model with a target applies to a run directory, not to --stream")
    result = evaluate(spec, stream=True, **options)
    device = options["device"] or "default device"
    budget = options["max_memory"] or "no budget"
    print_eval(f"{spec} (streamed, {options['dtype']}, {device}, {budget})", result)
    if json_out:
        from prunekit.report.versions import library_versions

        record = {
            "model": {"spec": spec, "kind": "streamed", "dtype": options["dtype"]},
            "mode": "streamed",
            "max_memory": options["max_memory"],
            **result,
            "seconds": time.perf_counter() - started,
            "versions": library_versions(),
        }
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(record, indent=2) + "\n")


def _forced_record(loaded) -> dict:
    """The eval JSON's record of a plan replayed with --force onto other weights (else empty)."""
    mismatch = loaded.forced_model_mismatch
    return {"forced_model_mismatch": mismatch} if mismatch else {}
