"""A prune run one decoder layer at a time: the weights stay in their shards, each layer is
onloaded, calibrated, pruned, written to the export and released (``engine/residency.py``).
Evaluation is streamed too: the dense model from its files, the pruned one from the export."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from prunekit.engine.residency import Streamed
from prunekit.errors import SettingsError
from prunekit.export.per_layer import describe_layers
from prunekit.export.save import ExportResult, staging_dir, write_beside_weights
from prunekit.export.shards import ShardWriter, parse_shard_size
from prunekit.export.streamed import PartWriter
from prunekit.memory import MemoryBudget, memory_record, row_slice_bytes_for, shard_size_for
from prunekit.memory_usage import PeakMemory
from prunekit.methods.combined import combined_record
from prunekit.methods.registry import Method, PruneSettings
from prunekit.models.dtype import dtype_name, resolve_dtype
from prunekit.models.lazy import LazyModel
from prunekit.models.loading import default_device, load_config
from prunekit.pipeline.evaluation import evaluate_from_files
from prunekit.pipeline.export_check import check_streamed_export
from prunekit.pipeline.lazy import lazy_loaded
from prunekit.pipeline.mode import choose_mode, import_model_code, offloads
from prunekit.pipeline.requests import EvalRequest, PruneResult, SaveRequest
from prunekit.pipeline.run_report import run_report
from prunekit.pipeline.streamed_stages import run_streamed_method
from prunekit.report.accounting import parameter_counts, pruning_ratios
from prunekit.report.run_dir import clear_run, write_run_dir

log = logging.getLogger(__name__)


def prune_streamed_run(
    model: str,
    chosen: Method,
    options: PruneSettings,
    *,
    evals: EvalRequest,
    save: SaveRequest,
    out: str | Path | None,
    overwrite: bool,
    dtype: str,
    device: str | None,
    attn_implementation: str | None,
    budget: MemoryBudget,
    offload_activations: bool | None,
    speed=None,
) -> PruneResult:
    """``prunekit.api.prune(stream=True)``, its inputs already checked (``pipeline.checks``);
    ``speed``: a ``--target-speedup`` request (``speedtarget/prune.py``), which chooses the plan.

    The measured memory peaks cover the pruning only: the evaluations before and after it hold
    one layer and a chunk of windows (``max_memory``) of their own."""
    from prunekit.speedtarget.prune import prune_for_speed, save_profiled_table

    check_streamed_export(load_config(model), chosen, options, save.format)
    device = device or default_device()
    if budget.compute_limit(device) is not None:  # the depth search's chunks of windows
        options.options.setdefault("max_memory", budget.compute_limit(device))
    choice = choose_mode(
        model,
        chosen,
        options,
        budget,
        dtype=dtype,
        device=device,
        stream=True,
        offload_activations=offload_activations,
        max_shard_size=save.max_shard_size,
    )
    shard_size = shard_size_for(budget, device, parse_shard_size(save.max_shard_size))
    load_options = {"dtype": dtype, "device": device, "attn_implementation": attn_implementation}
    eval_options = {**evals.options(), "max_memory": budget.compute_limit(device), **load_options}
    timings: dict[str, float] = {}
    results: dict[str, dict] = {}
    if evals.wanted:
        started = time.perf_counter()
        results["dense"] = evaluate_from_files(model, **eval_options)
        timings["eval_dense"] = time.perf_counter() - started
    import_model_code(model)
    unevaluated = None  # the refusal of a pruned model streamed perplexity cannot read
    with PeakMemory(device) as peaks:  # stopped on any exit, read once the pruning is done
        lazy = LazyModel.open(model, **load_options)
        loaded = lazy_loaded(lazy, model)
        if overwrite and out is not None:
            clear_run(out)
        save_dtype = save.dtype
        torch_dtype = lazy.dtype if save_dtype in (None, "auto") else resolve_dtype(save_dtype)
        before = parameter_counts(loaded.model, loaded.adapter)
        started = time.perf_counter()
        with staging_dir(Path(save.path), overwrite) as tmp:
            with ShardWriter(tmp, dtype=torch_dtype, max_shard_size=shard_size) as writer:
                residency = Streamed(
                    lazy,
                    PartWriter(lazy, writer),
                    row_slice_bytes=row_slice_bytes_for(budget, device),
                    offload_activations=offloads(choice, offload_activations),
                )
                loaded.residency = residency
                log.info("pruning %s with %s, streamed layer by layer", loaded.spec, chosen.name)
                if speed is not None:
                    speed_run = prune_for_speed(loaded, options, speed)
                    plan = speed_run.plan
                else:
                    speed_run, plan = None, run_streamed_method(chosen, loaded, options)
                residency.finish_outside_layers()
            timings["prune"] = time.perf_counter() - started
            if speed_run and speed_run.profiled:
                timings["profile"] = speed_run.profile_s
            after = parameter_counts(loaded.model, loaded.adapter)
            params = pruning_ratios(before, after)
            memory = memory_record("streamed", choice, budget, peaks.stop(), shard_size)
            report = run_report(
                chosen, loaded, plan.model, options, params, results, timings, memory
            )
            if plan.stages:  # a combined method: the split and each stage's settings and ratios
                report.update(combined_record(plan))
            if speed_run:
                report["speed_target"] = speed_run.record
            shapes = describe_layers(loaded.model, loaded.adapter)
            written = writer.close()
            fmt = write_beside_weights(
                tmp, loaded, shapes, save.format, torch_dtype, written, plan, report
            )
            if evals.wanted:
                unevaluated = pruned_eval_refusal(fmt, evals, save.path)
            if evals.wanted and unevaluated is None:
                # The staged export is a complete model directory: evaluated before it is
                # renamed, so its report.json and model card hold the pruned numbers too.
                started = time.perf_counter()
                results["pruned"] = evaluate_from_files(str(tmp), **eval_options)
                timings["eval_pruned"] = time.perf_counter() - started
                report.update(eval=results, timings=timings)
                write_beside_weights(tmp, loaded, shapes, fmt, torch_dtype, written, plan, report)
    weight_bytes = sum(p.stat().st_size for p in Path(save.path).glob("*.safetensors"))
    saved = ExportResult(Path(save.path), fmt, dtype_name(torch_dtype), weight_bytes, shapes)
    if speed_run:
        save_profiled_table(speed_run, out)
    run_dir = write_run_dir(out, plan, report) if out else None
    if unevaluated:
        raise SettingsError(unevaluated)
    return PruneResult(loaded, plan, report, run_dir, saved)


def pruned_eval_refusal(fmt: str, evals: EvalRequest, save: Path) -> str | None:
    """Why the pruned export cannot be evaluated streamed (None when it can): streamed
    perplexity reads stock-format (hf) directories only."""
    if fmt != "prunekit" or not evals.datasets:
        return None
    return (
        f"the pruned model is saved in {save}, in the prunekit format (per-layer widths), whose "
        f"perplexity cannot be computed layer by layer yet: evaluate it in memory "
        f"(prunekit eval {save})"
    )
