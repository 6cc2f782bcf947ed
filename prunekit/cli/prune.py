"""``prunekit prune``: the method's settings from the flags, checks before any work, then the
resident or streamed run and its exports."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from prunekit.cli.application import app, console
from prunekit.cli.options import (
    AttnOpt,
    DeviceOpt,
    DtypeOpt,
    LimitOpt,
    ModelOpt,
    TaskDataOpt,
    TasksOpt,
    check_device,
    comma_ints,
    deprecated_option,
    given,
    not_a_file,
    split_commas,
)
from prunekit.cli.tables import print_eval, print_gguf, print_params
from prunekit.errors import SettingsError
from prunekit.launcher import launched
from prunekit.methods.settings import FLAG_NAMES, setting_default


@app.command("prune")
def prune_command(
    ctx: typer.Context,
    method: str = typer.Option(
        None,
        help="Pruning method (`prunekit methods` lists its settings), or a depth and a width "
        "method joined by + (e.g. blockpruner+fasp: depth first, then width on what it left); "
        "blockpruner+fasp with --target-speedup.",
    ),
    model: str = ModelOpt,
    out: Path = typer.Option(None, help="Run directory for plan.json, report.json, report.md."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the run in --out and the model in --save."
    ),
    ratio: float = typer.Option(
        None, help="Target ratio_total (fraction of all parameters removed, embeddings included)."
    ),
    blocks: int = typer.Option(
        None, help="Depth: number of removals (blocks, or layers; a layer counts as one)."
    ),
    sparsity: float = typer.Option(None, help="Width: column ratio of the prunable groups."),
    depth_share: float = typer.Option(
        None,
        help="Combined methods (depth+width): fraction of --ratio the depth stage removes "
        "(default 0.5); the width stage removes the rest.",
    ),
    target_speedup: float = typer.Option(
        None,
        help="Instead of --ratio: the blockpruner+fasp split predicted this many times faster "
        "(latency table) at the lowest calibration loss, e.g. 1.5.",
    ),
    phase: str = typer.Option(None, help="--target-speedup: decode (default) or prefill."),
    latency_table: Path = typer.Option(
        None, help="--target-speedup: a `prunekit profile` table (default: profile now)."
    ),
    batch: int = typer.Option(
        None, help="--target-speedup, table profiled now: sequences per run (default 1)."
    ),
    prompt_len: int = typer.Option(
        None, help="--target-speedup, table profiled now: prompt tokens (prefill 2048, decode 32)."
    ),
    gen_len: int = typer.Option(
        None, help="--target-speedup, table profiled now: decode tokens per run (default 32)."
    ),
    measure_speedup: bool = typer.Option(
        True,
        help="--target-speedup: time the pruned model against the dense one once built "
        "(in memory; a streamed run times nothing).",
    ),
    calib: str = typer.Option(
        setting_default("calib"), help="Calibration text: c4, wikitext2, ptb or a file."
    ),
    n_samples: int = typer.Option(setting_default("n_samples"), help="Calibration windows."),
    seqlen: int = typer.Option(
        setting_default("seqlen"), help="Calibration window length in tokens."
    ),
    seed: int = typer.Option(setting_default("seed"), help="Seed of the calibration sampling."),
    batch_size: int | None = typer.Option(
        setting_default("batch_size"),
        help="Calibration windows per forward (the width statistics and the depth search); "
        "default: 1 on a CPU; on a GPU the largest up to 8 that fits --max-memory. The plan does "
        "not depend on it.",
    ),
    candidates: str = typer.Option(
        setting_default("candidates"),
        help="Block-level depth: attn, mlp, blocks (= both), layers, or blocks+layers "
        "(BlockPruner's default: every block and every whole layer; the paper's is blocks).",
    ),
    protect_layers: str = typer.Option(None, help="Depth: layers never removed, e.g. 0,-1."),
    criterion: str = typer.Option(
        setting_default("criterion"),
        help="Greedy depth search: ppl (the papers'; SLEB's default), ppl-per-param, kl (KL "
        "from the dense model's next-token distribution) or kl-per-param (BlockPruner's "
        "default, in memory and streamed).",
    ),
    exhaustive: bool = typer.Option(
        False, help="Greedy depth search: score every candidate on every window (no bound)."
    ),
    angular: bool = typer.Option(False, help="ShortGPT, BI: angular distance instead of 1-cos."),
    resume: bool = typer.Option(False, help="Continue an interrupted greedy search in --out."),
    targets: str = typer.Option(
        ",".join(setting_default("targets")), help="Width: groups to prune (mlp, attn)."
    ),
    no_restore: bool = typer.Option(
        False, "--no-restore", help="FASP: skip the least-squares restoration (ablation)."
    ),
    multiple_of: int = typer.Option(
        setting_default("multiple_of"),
        help="Uniform width: round kept widths up to a multiple of this.",
    ),
    allocation: str = typer.Option(
        setting_default("allocation"),
        help="FASP: cost (per-group widths from measured cost; the default) or uniform (one "
        "fraction everywhere: the paper's).",
    ),
    damping: float = typer.Option(
        setting_default("damping"), help="FASP: restoration damping, as a fraction of mean(diag H)."
    ),
    ppl: str = typer.Option(
        None, help="Evaluate dense and pruned perplexity on these datasets (as `eval --ppl`)."
    ),
    ppl_seqlen: int = typer.Option(2048, min=2, help="Window length for --ppl."),
    ppl_max_windows: int = typer.Option(None, min=1, help="Windows limit for --ppl."),
    eval_ppl: str = typer.Option(None, "--eval", hidden=True, help="Deprecated: --ppl."),
    eval_seqlen: int = typer.Option(2048, min=2, hidden=True, help="Deprecated: --ppl-seqlen."),
    eval_max_windows: int = typer.Option(
        None, min=1, hidden=True, help="Deprecated: --ppl-max-windows."
    ),
    tasks: str = TasksOpt,
    limit: int = LimitOpt,
    eval_batch_size: int = typer.Option(16, min=1, help="Zero-shot: requests per forward pass."),
    task_data: Path = TaskDataOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
    attn_implementation: str = AttnOpt,
    save: Path = typer.Option(
        None, help="Also export the pruned model to this directory (as `prunekit export`)."
    ),
    save_format: str = typer.Option("auto", help="--save format: auto, hf or prunekit."),
    save_gguf: Path = typer.Option(
        None, help="Also export the pruned model to this .gguf file (llama.cpp, ollama)."
    ),
    gguf_type: str = typer.Option("f16", help="GGUF matrix type: f32, f16, bf16 or q8_0."),
    stream: bool = typer.Option(
        False,
        "--stream",
        help="One layer in memory at a time, read from the shards (every method, combined "
        "method and --target-speedup); needs --save.",
    ),
    max_memory: str = typer.Option(
        None,
        help="Compute-device budget, e.g. 80MB, 2GiB, 24GB (on a CPU: the process's memory). "
        "A model that does not fit is streamed layer by layer (needs --save).",
    ),
    max_host_memory: str = typer.Option(None, help="Host memory budget, e.g. 64GB."),
    offload_activations: bool = typer.Option(
        None,
        "--offload-activations",
        help="Keep the calibration states on the host (GPU; default: when the budget needs it).",
        show_default=False,
    ),
) -> None:
    """Prune a model and write the run directory. Flags the method does not take are refused."""
    from prunekit.methods.catalogue import get_method

    if not model:
        raise SettingsError("name a model with --model")
    if method is None and target_speedup is None:
        raise SettingsError(
            "Missing option '--method' (prunekit methods lists them; or --target-speedup)"
        )
    method = method or "blockpruner+fasp"
    chosen = get_method(method)
    settings = _given_settings(ctx, chosen.takes)
    chosen.check_settings(settings)  # before any value is parsed: the first error is the real one
    settings = _parse_settings(settings)
    workload = {"batch": batch, "prompt_len": prompt_len, "gen_len": gen_len}
    workload = {k: v for k, v in workload.items() if v is not None}
    _check_speed_target(chosen, settings, target_speedup, phase, latency_table, workload)
    from prunekit.memory import MemoryBudget

    budget = MemoryBudget.parse(max_memory, max_host_memory)
    if budget.given and not stream:
        check_device(device)
        stream = _stream_for_budget(
            model, chosen, settings, budget, dtype, device, offload_activations, save
        )
    ppl = deprecated_option(ctx, "--eval", "--ppl")
    ppl_seqlen = deprecated_option(ctx, "--eval-seqlen", "--ppl-seqlen")
    ppl_max_windows = deprecated_option(ctx, "--eval-max-windows", "--ppl-max-windows")
    if stream:
        _check_stream(chosen, save, save_format, split_commas(ppl))
    not_a_file(out, "--out")
    not_a_file(task_data, "--task-data")
    check_device(device)
    if save_format not in ("auto", "hf", "prunekit"):
        raise SettingsError(f"--save-format must be auto, hf or prunekit, got {save_format!r}")
    if save:
        from prunekit.export.save import check_target

        check_target(save, overwrite)  # fail before the search, not after it
    if save_gguf:
        _check_save_gguf(save_gguf, gguf_type, overwrite, stream)
    from prunekit.api import prune

    result = prune(
        model,
        method,
        stream=stream,
        out=out,
        overwrite=overwrite,
        save=save,
        save_format=save_format,
        eval_datasets=split_commas(ppl),
        eval_seqlen=ppl_seqlen,
        eval_max_windows=ppl_max_windows,
        eval_tasks=split_commas(tasks),
        eval_limit=limit,
        eval_batch_size=eval_batch_size,
        task_data=task_data,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        budget=budget,
        offload_activations=offload_activations,
        target_speedup=target_speedup,
        phase=phase,
        latency_table=latency_table,
        latency_workload=workload,
        measure_speedup=measure_speedup,
        **settings,
    )
    if result.loaded.world is not None and not result.loaded.world.is_main:
        return  # rank 0 prints and writes the GGUF file
    print_params(f"{method} (streamed)" if stream else method, result.report["params"])
    if "speed_target" in result.report:
        from prunekit.speedtarget.prune import speed_summary

        for line in speed_summary(result.report["speed_target"]):
            console.print(line, soft_wrap=True)
    for side in ("dense", "pruned"):
        if side in result.report["eval"]:
            print_eval(side, result.report["eval"][side])
    if result.run_dir:
        console.print(f"run directory: {result.run_dir}")
    if result.saved:
        saved = result.saved
        console.print(f"model saved: {saved.path} ({saved.format} format, {saved.dtype})")
    if save_gguf:
        from prunekit.export.gguf import export_gguf

        gguf = export_gguf(
            result.loaded,
            save_gguf,
            gguf_type=gguf_type,
            plan=result.plan,
            report=result.report,
            overwrite=overwrite,
        )
        print_gguf(gguf)


def _check_speed_target(chosen, settings, target, phase, table, workload) -> None:
    """--target-speedup and its options, refused in one line before anything else runs."""
    from prunekit.api import speed_request

    request = speed_request(target, phase, table, workload)
    if request is not None:
        from prunekit.speedtarget.prune import check_speed_request

        check_speed_request(chosen, settings, request)


def _check_save_gguf(path: Path, gguf_type: str, overwrite: bool, stream: bool) -> None:
    """--save-gguf: a writable .gguf path and a known type, checked before the search."""
    from prunekit.export.gguf import check_gguf_target
    from prunekit.export.gguf.encode import check_gguf_type

    if stream:
        raise SettingsError("--save-gguf does not stream; export the run after (`prunekit export`)")
    check_gguf_type(gguf_type)
    check_gguf_target(path, overwrite)


def _check_stream(chosen, save: Path | None, save_format: str, ppl: list[str]) -> None:
    """--stream is a run option: refused for methods that cannot stream, without --save (the
    pruned model exists only as the export), and with a perplexity of a prunekit-format export
    (streamed perplexity reads stock-format directories only)."""
    from prunekit.api import streaming_refusal

    refusal = streaming_refusal(chosen)
    if refusal:
        raise SettingsError(f"--stream: {refusal}")
    if save is None:
        raise SettingsError("--stream needs --save DIR: the pruned model is written as it is made")
    if ppl and save_format == "prunekit":
        raise SettingsError(
            "--stream --ppl reads a stock-format export only; use --save-format auto or hf, or "
            "evaluate the prunekit-format export in memory after"
        )


def _stream_for_budget(
    model, chosen, settings, budget, dtype, device, offload_activations, save
) -> bool:
    """Whether the run must stream to fit ``budget`` (predicted from the config, before any
    weight is read); prints the one line saying so. Streaming needs --save."""
    from prunekit.pipeline.mode import streams_for_budget

    launch = launched()
    choice = streams_for_budget(
        model,
        chosen,
        settings,
        budget,
        save=save,
        save_name="--save DIR",
        dtype=dtype,
        device=device,
        offload_activations=offload_activations,
        nproc=launch.size if launch else 1,  # under torchrun each rank prices its share
    )
    if choice is None:
        return False
    logging.getLogger("prunekit.cli").info(choice.message)
    console.print(choice.message, soft_wrap=True)
    return choice.streamed


# The prune options that are method settings: option name -> settings field (the flag fields
# of methods/settings.py; --max-memory is the run's budget, not the engine's ``max_memory``).
SETTING_OPTIONS = {name: name for name in FLAG_NAMES} | {"no_restore": "restore"}


def _given_settings(ctx: typer.Context, takes: tuple[str, ...]) -> dict:
    """The method settings the user passed (raw option values), by settings field name."""
    return {
        SETTING_OPTIONS[name]: value
        for name, value in ctx.params.items()
        if name in SETTING_OPTIONS and given(ctx, name)
    }


def _parse_settings(raw: dict) -> dict:
    """Option strings to settings values (lists, the restore switch)."""
    settings = dict(raw)
    if "protect_layers" in settings:
        settings["protect_layers"] = comma_ints(settings["protect_layers"], "--protect-layers")
    if "targets" in settings:
        settings["targets"] = split_commas(settings["targets"])
    if "restore" in settings:
        settings["restore"] = not settings["restore"]
    return settings
