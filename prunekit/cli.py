"""The ``prunekit`` command line. Errors print one line and exit 2 (``--debug`` for tracebacks).

Heavy libraries (torch, transformers) are imported inside the commands, so ``--help`` and
usage errors answer at once.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from prunekit.demo import DEMO_MODEL, demo_argv, full_size_notes
from prunekit.errors import PrunekitError, SettingsError
from prunekit.methods.registry import SETTING_NAMES, PruneSettings, flag

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Training-free structured pruning of Hugging Face causal LMs.",
    pretty_exceptions_enable=False,
)
console = Console()
_state = {"debug": False, "verbose": False}


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show prunekit's progress messages (INFO log) on stderr."
    ),
) -> None:
    _state["debug"] = debug
    _state["verbose"] = verbose
    configure_logging(verbose)


def configure_logging(verbose: bool) -> None:
    """prunekit.* loggers to stderr: INFO with --verbose, else warnings only."""
    logger = logging.getLogger("prunekit")
    for handler in [h for h in logger.handlers if getattr(h, "prunekit_cli", False)]:
        logger.removeHandler(handler)  # a second invocation in one process (tests)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.prunekit_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _ints(value: str | None, option: str, *, positive: bool = False) -> list[int]:
    """Comma-separated integers, or a one-line error naming ``option``."""
    try:
        numbers = [int(v) for v in _split(value)]
    except ValueError:
        raise SettingsError(f"{option} takes comma-separated integers, got {value!r}") from None
    if positive and any(n < 1 for n in numbers):
        raise SettingsError(f"{option} takes positive integers, got {value!r}")
    return numbers


def _not_a_file(path: Path | None, option: str) -> None:
    """A directory option pointed at an existing file: refuse before any work."""
    if path is not None and path.exists() and not path.is_dir():
        raise SettingsError(f"{option} {path} is a file, not a directory")


def _not_a_dir(path: Path | None, option: str) -> None:
    if path is not None and path.is_dir():
        raise SettingsError(f"{option} {path} is a directory; name a file")


def _check_device(device: str | None) -> None:
    """A device torch does not know, or CUDA on a machine without it: one line, before loading."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise SettingsError(f"--device {device!r} is not a device; use cpu or cuda[:N]") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"--device {device}: CUDA is not available on this machine")


def _default(setting: str):
    """The PruneSettings default of ``setting`` (one source of truth for help and behaviour)."""
    value = PruneSettings.__dataclass_fields__[setting]
    return value.default_factory() if callable(value.default_factory) else value.default


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user passed option ``name`` (command line or environment), not its default."""
    source = ctx.get_parameter_source(name)
    # By name: typer vendors its own click, whose ParameterSource is not click's.
    return source is not None and source.name != "DEFAULT"


def _deprecated(ctx: typer.Context, old: str, new: str):
    """The value of option ``new`` (a flag), or of its deprecated spelling ``old`` with a
    one-line notice; both at once is an error."""
    old_param, new_param = (OPTION_PARAMS[flag] for flag in (old, new))
    if not _given(ctx, old_param):
        return ctx.params[new_param]
    if _given(ctx, new_param):
        raise SettingsError(f"{old} is the old spelling of {new}; give only {new}")
    print(f"warning: {old} is deprecated; use {new}", file=sys.stderr)
    return ctx.params[old_param]


# Deprecated prune spellings and their replacements: flag -> parameter name.
OPTION_PARAMS = {
    "--eval": "eval_ppl",
    "--ppl": "ppl",
    "--eval-seqlen": "eval_seqlen",
    "--ppl-seqlen": "ppl_seqlen",
    "--eval-max-windows": "eval_max_windows",
    "--ppl-max-windows": "ppl_max_windows",
}


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
AttnOpt = typer.Option(
    None,
    "--attn-implementation",
    help="Attention kernel: sdpa, eager, flash_attention_2 ... (default: transformers' choice).",
)
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
LimitOpt = typer.Option(
    None, min=1, help="Zero-shot: only the first N items of each task (recorded)."
)
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
    from prunekit.runs import load_for_eval

    spec = target or model
    if not spec:
        raise SettingsError("name a model or run directory: prunekit eval MODEL_OR_RUN_DIR")
    stream = stream or max_memory is not None
    task_list = _split(tasks)
    datasets = _split(ppl) if ppl is not None else ([] if task_list else ["wikitext2"])
    if ppl is not None and not datasets and not task_list:
        raise SettingsError("--ppl names no dataset; give e.g. --ppl wikitext2")
    _not_a_dir(json_out, "--json")
    # Fail on a bad dataset or task name, or missing task data, before loading anything.
    from prunekit.data import check_dataset

    for dataset in datasets:
        check_dataset(dataset)
    if task_list:
        from prunekit.evaluation.zeroshot import check_tasks

        check_tasks(task_list, task_data)
    _check_device(device)
    started = time.perf_counter()
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
        )
        return
    if offload_folder is not None:
        raise SettingsError("--offload-folder applies to --stream (or --max-memory) only")
    loaded_target = load_for_eval(
        spec,
        base=model if target else None,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        force=force,
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


def _eval_streamed(
    spec: str, base: str | None, *, json_out: Path | None, started: float, **options
) -> None:
    """``eval --stream``: a model or an export evaluated without ever holding it whole."""
    import time

    from prunekit.api import evaluate_streamed
    from prunekit.report.run_dir import PARTIAL_PLAN_FILE, is_run_dir

    path = Path(spec).expanduser()
    # An export holds plan.json and report.json beside its weights: a model, not a run.
    is_export = (path / "config.json").is_file()
    if (
        path.is_dir()
        and not is_export
        and (is_run_dir(path) or (path / PARTIAL_PLAN_FILE).is_file())
    ):
        raise SettingsError(
            f"--stream evaluates a model or an exported directory; {spec} is a run directory "
            "(its plan is replayed in memory): export it first, or evaluate without --stream"
        )
    if base is not None and base != spec:
        raise SettingsError("--model with a target applies to a run directory, not to --stream")
    result = evaluate_streamed(spec, **options)
    device = options["device"] or "default device"
    budget = options["max_memory"] or "no budget"
    _print_eval(f"{spec} (streamed, {options['dtype']}, {device}, {budget})", result)
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
        "(keeps a dense copy meanwhile).",
    ),
    calib: str = typer.Option(
        _default("calib"), help="Calibration text: c4, wikitext2, ptb or a file."
    ),
    n_samples: int = typer.Option(_default("n_samples"), help="Calibration windows."),
    seqlen: int = typer.Option(_default("seqlen"), help="Calibration window length in tokens."),
    seed: int = typer.Option(_default("seed"), help="Seed of the calibration sampling."),
    batch_size: int = typer.Option(
        _default("batch_size"), help="Width: calibration windows per forward (the statistics)."
    ),
    candidates: str = typer.Option(
        _default("candidates"),
        help="Block-level depth: attn, mlp, blocks (= both), layers, or blocks+layers "
        "(BlockPruner's default: every block and every whole layer; the paper's is blocks).",
    ),
    protect_layers: str = typer.Option(None, help="Depth: layers never removed, e.g. 0,-1."),
    criterion: str = typer.Option(
        _default("criterion"),
        help="Greedy depth search: ppl (the papers'; SLEB's default), ppl-per-param, kl (KL "
        "from the dense model's next-token distribution) or kl-per-param (BlockPruner's "
        "default; ppl-per-param when streaming).",
    ),
    exhaustive: bool = typer.Option(
        False, help="Greedy depth search: score every candidate on every window (no bound)."
    ),
    angular: bool = typer.Option(False, help="ShortGPT, BI: angular distance instead of 1-cos."),
    resume: bool = typer.Option(False, help="Continue an interrupted greedy search in --out."),
    targets: str = typer.Option(
        ",".join(_default("targets")), help="Width: groups to prune (mlp, attn)."
    ),
    no_restore: bool = typer.Option(
        False, "--no-restore", help="FASP: skip the least-squares restoration (ablation)."
    ),
    multiple_of: int = typer.Option(
        _default("multiple_of"), help="Uniform width: round kept widths up to a multiple of this."
    ),
    allocation: str = typer.Option(
        _default("allocation"),
        help="FASP: cost (per-group widths from measured cost; the default) or uniform (one "
        "fraction everywhere: the paper's).",
    ),
    damping: float = typer.Option(
        _default("damping"), help="FASP: restoration damping, as a fraction of mean(diag H)."
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
        help="Width: one layer in memory at a time, read from the shards; needs --save.",
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
    from prunekit.methods.registry import get_method

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
        _check_device(device)
        stream = _stream_for_budget(
            model, chosen, settings, budget, dtype, device, offload_activations, save
        )
    if stream:
        _check_stream(chosen, save, ctx)
    ppl = _deprecated(ctx, "--eval", "--ppl")
    ppl_seqlen = _deprecated(ctx, "--eval-seqlen", "--ppl-seqlen")
    ppl_max_windows = _deprecated(ctx, "--eval-max-windows", "--ppl-max-windows")
    _not_a_file(out, "--out")
    _not_a_file(task_data, "--task-data")
    _check_device(device)
    if save_format not in ("auto", "hf", "prunekit"):
        raise SettingsError(f"--save-format must be auto, hf or prunekit, got {save_format!r}")
    if save:
        from prunekit.export.save import check_target

        check_target(save, overwrite)  # fail before the search, not after it
    if save_gguf:
        _check_save_gguf(save_gguf, gguf_type, overwrite, stream)
    if stream:
        _prune_streamed(
            model,
            method,
            out,
            save,
            save_format,
            overwrite,
            dtype,
            device,
            attn_implementation,
            settings,
            budget,
            offload_activations,
        )
        return
    from prunekit.api import prune

    result = prune(
        model,
        method,
        out=out,
        overwrite=overwrite,
        eval_datasets=_split(ppl),
        eval_seqlen=ppl_seqlen,
        eval_max_windows=ppl_max_windows,
        eval_tasks=_split(tasks),
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
    _print_params(method, result.report["params"])
    if "speed_target" in result.report:
        from prunekit.speedtarget.prune import speed_summary

        for line in speed_summary(result.report["speed_target"]):
            console.print(line, soft_wrap=True)
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
            overwrite=overwrite,
        )
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
        _print_gguf(gguf)


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


def _print_gguf(result) -> None:
    console.print(
        f"model saved: {result.path} (gguf, {result.arch} architecture, {result.gguf_type}, "
        f"{result.file_bytes / 2**20:.1f} MiB; report {result.report_path.name})"
    )


def _print_params(title: str, params: dict) -> None:
    console.print(
        f"[bold]{title}[/]: {params['before'] / 1e6:.2f} M -> {params['after'] / 1e6:.2f} M "
        f"parameters (ratio_total {params['ratio_total']:.4f})"
    )


def _check_stream(chosen, save: Path | None, ctx: typer.Context) -> None:
    """--stream is a run option: refused for methods that cannot stream, without --save (the
    pruned model exists only as the export) and with evaluation (not streamed yet)."""
    from prunekit.api import streaming_refusal

    refusal = streaming_refusal(chosen)
    if refusal:
        raise SettingsError(f"--stream: {refusal}")
    if save is None:
        raise SettingsError("--stream needs --save DIR: the pruned model is written as it is made")
    evals = ("ppl", "eval_ppl", "tasks")
    if any(_given(ctx, name) and ctx.params.get(name) for name in evals):
        raise SettingsError("--stream does not evaluate yet; evaluate the --save directory after")


def _stream_for_budget(
    model, chosen, settings, budget, dtype, device, offload_activations, save
) -> bool:
    """Whether the run must stream to fit ``budget`` (predicted from the config, before any
    weight is read); prints the one line saying so. Streaming needs --save."""
    from prunekit.api import choose_mode

    options = PruneSettings(**settings)
    options.validate()
    choice = choose_mode(
        model,
        chosen,
        options,
        budget,
        dtype=dtype,
        device=device,
        offload_activations=offload_activations,
    )
    if choice is None or choice.message is None:
        return False
    if choice.streamed and save is None:
        raise SettingsError(
            f"{choice.message} needs --save DIR (the pruned model is written as it is made)"
        )
    logging.getLogger("prunekit.cli").info(choice.message)
    console.print(choice.message, soft_wrap=True)
    return choice.streamed


def _prune_streamed(
    model,
    method,
    out,
    save,
    save_format,
    overwrite,
    dtype,
    device,
    attn_implementation,
    settings,
    budget=None,
    offload_activations=None,
):
    from prunekit.api import prune_streamed

    result = prune_streamed(
        model,
        method,
        save=save,
        out=out,
        overwrite=overwrite,
        fmt=save_format,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        budget=budget,
        offload_activations=offload_activations,
        **settings,
    )
    _print_params(f"{method} (streamed)", result.report["params"])
    if result.run_dir:
        console.print(f"run directory: {result.run_dir}")
    console.print(f"model saved: {save}")


# The prune options that are method settings: option name -> PruneSettings field.
SETTING_OPTIONS = {name: name for name in SETTING_NAMES} | {"no_restore": "restore"}


def _given_settings(ctx: typer.Context, takes: tuple[str, ...]) -> dict:
    """The method settings the user passed (raw option values), by PruneSettings field name."""
    return {
        SETTING_OPTIONS[name]: value
        for name, value in ctx.params.items()
        if name in SETTING_OPTIONS and _given(ctx, name)
    }


def _parse_settings(raw: dict) -> dict:
    """Option strings to PruneSettings values (lists, the restore switch)."""
    settings = dict(raw)
    if "protect_layers" in settings:
        settings["protect_layers"] = _ints(settings["protect_layers"], "--protect-layers")
    if "targets" in settings:
        settings["targets"] = _split(settings["targets"])
    if "restore" in settings:
        settings["restore"] = not settings["restore"]
    return settings


@app.command("report")
def report_command(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...", help="Run directories."),
    out: Path = typer.Option(
        Path("."), help="Where comparison.md, comparison.csv and ppl_vs_ratio.png go."
    ),
) -> None:
    """Compare runs: one table (markdown + CSV) and a WikiText-2 ppl vs ratio_total plot."""
    from prunekit.report.compare import write_comparison

    _not_a_file(out, "--out")
    for kind, path in write_comparison(list(run_dirs), out).items():
        console.print(f"{kind}: {path}")


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

    _check_device(device)
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
        _print_gguf(saved)
        return
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

    _not_a_dir(json_out, "--json")
    _check_device(device)
    settings = SpeedSettings(
        prefill_shapes=[_shape(v) for v in _split(prefill)],
        decode_batches=_ints(decode_batches, "--decode-batches", positive=True),
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

    _not_a_dir(out, "--out")
    _check_device(device)
    settings = ProfileSettings(
        batch=batch,
        prompt_len=prompt_len,
        gen_len=gen_len,
        phases=tuple(_split(phases)),
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
    from prunekit.methods.registry import get_method

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
    global_options = (["--debug"] if _state["debug"] else []) + (
        ["--verbose"] if _state["verbose"] else []
    )
    app([*global_options, *argv], standalone_mode=False)
    for line in full_size_notes(model, out):
        console.print(line, markup=False, soft_wrap=True)


@app.command("methods")
def methods_command() -> None:
    """List the pruning methods and the settings (prune flags) each one takes."""
    from prunekit.methods.registry import all_methods

    table = Table(
        title="methods",
        caption="Combine a depth and a width method with + (e.g. blockpruner+fasp, fasp+sleb): "
        "the stages run in that order; --depth-share splits --ratio between them.",
    )
    for col in ("name", "family", "settings", "what it does"):
        table.add_column(col)
    for m in all_methods():
        table.add_row(m.name, m.family, " ".join(flag(name) for name in m.takes), m.summary)
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
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # usage errors and anything unexpected
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # `prunekit` or `prunekit prune` alone: the help text
            sys.exit(exc.exit_code)
        if _is_usage_error(exc):
            # One line, like prunekit's own errors ("Invalid value for '--ratio': ...").
            print(f"error: {exc.format_message()}", file=sys.stderr)
            sys.exit(exc.exit_code)
        if _state["debug"]:
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        sys.exit(1)


def _is_usage_error(exc: Exception) -> bool:
    """A click usage error, whether typer's vendored click or click itself raised it."""
    return hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)


if __name__ == "__main__":
    main()
