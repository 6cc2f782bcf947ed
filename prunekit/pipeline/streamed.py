"""A prune run one decoder layer at a time: the weights stay in their shards, each layer is
onloaded, calibrated, pruned, written to the export and released (``engine/residency.py``).
Evaluation is streamed too: the dense model from its files, the pruned one from the export."""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import ExitStack
from pathlib import Path

from prunekit.engine.residency import Streamed
from prunekit.engine.world import World
from prunekit.errors import SettingsError
from prunekit.export.per_layer import describe_layers
from prunekit.export.save import ExportResult, staging_dir, write_beside_weights
from prunekit.export.shards import ShardWriter, parse_shard_size
from prunekit.export.streamed import PartWriter
from prunekit.loader import load
from prunekit.memory import memory_record, row_slice_bytes_for, shard_size_for
from prunekit.memory_usage import PeakMemory
from prunekit.methods.combined import combined_record
from prunekit.methods.registry import Method
from prunekit.methods.settings import ChunkedExecutionSettings, MethodSettings
from prunekit.models.dtype import dtype_name, resolve_dtype
from prunekit.models.loading import default_device, load_config
from prunekit.pipeline.evaluation import evaluate_from_files
from prunekit.pipeline.export_check import check_streamed_export
from prunekit.pipeline.mode import choose_mode, import_model_code, offloads
from prunekit.pipeline.ranks import join_run, world_record
from prunekit.pipeline.requests import EvalRequest, PruneResult, RunRequest
from prunekit.pipeline.run_report import run_report
from prunekit.pipeline.streamed_stages import run_streamed_method
from prunekit.report.accounting import parameter_counts, pruning_ratios
from prunekit.report.run_dir import clear_run, write_run_dir

log = logging.getLogger(__name__)


def prune_streamed_run(
    model: str, chosen: Method, options: MethodSettings, run: RunRequest, *, speed=None
) -> PruneResult:
    """``prunekit.api.prune(stream=True)``, its inputs already checked (``pipeline.checks``);
    ``run.save`` is required (the pruned model exists only as the export). ``speed``: a
    ``--target-speedup`` request (``speedtarget/prune.py``), which chooses the plan.

    The measured memory peaks cover the pruning only: the evaluations before and after it hold
    one layer and a chunk of windows (``max_memory``) of their own."""
    from prunekit.speedtarget.prune import prune_for_speed, save_profiled_table

    save, budget, evals = run.save, run.budget, run.evals
    check_streamed_export(load_config(model), chosen, options, save.format)
    device = run.device or default_device()
    limit = budget.compute_limit(device)
    if limit is not None:  # the depth runner's chunks of windows, unless the caller chose them
        options = chunked_within(options, limit)
    choice = choose_mode(
        model,
        chosen,
        options,
        budget,
        dtype=run.dtype,
        device=device,
        stream=True,
        offload_activations=run.offload_activations,
        max_shard_size=save.max_shard_size,
        nproc=run.world.size,
    )
    shard_size = shard_size_for(budget, device, parse_shard_size(save.max_shard_size))
    load_options = {**run.load_options(), "device": device}
    eval_options = {"max_memory": budget.compute_limit(device), **load_options}
    timings: dict[str, float] = {}
    results: dict[str, dict] = {}
    if evals.wanted:
        started = time.perf_counter()
        results["dense"] = evaluate_from_files(model, evals, world=run.world, **eval_options)
        timings["eval_dense"] = time.perf_counter() - started
    import_model_code(model)
    unevaluated = None  # the refusal of a pruned model streamed perplexity cannot read
    world = run.world
    with PeakMemory(device) as peaks:  # stopped on any exit, read once the pruning is done
        loaded = load(model, residency="streamed", **load_options)
        options = join_run(loaded, options, world)
        lazy = loaded.residency.lazy
        if run.overwrite and run.out is not None and world.is_main:
            clear_run(run.out)
        save_dtype = save.dtype
        torch_dtype = lazy.dtype if save_dtype in (None, "auto") else resolve_dtype(save_dtype)
        before = parameter_counts(loaded.model, loaded.adapter)
        started = time.perf_counter()
        # Rank 0 alone writes the export; the other ranks prune the same way, writing nothing.
        with ExitStack() as staged:
            tmp = writer = None
            if world.is_main:
                tmp = staged.enter_context(staging_dir(Path(save.path), run.overwrite))
                writer = staged.enter_context(
                    ShardWriter(tmp, dtype=torch_dtype, max_shard_size=shard_size)
                )
            residency = Streamed(
                lazy,
                None if writer is None else PartWriter(lazy, writer),
                row_slice_bytes=row_slice_bytes_for(budget, device),
                offload_activations=offloads(choice, run.offload_activations),
                scratch_dir=Path(save.path).expanduser().resolve().parent,
            )
            loaded.residency = residency
            log.info("pruning %s with %s, streamed layer by layer", loaded.spec, chosen.name)
            world.forget()  # the pruning's own records
            if speed is not None:
                speed_run = prune_for_speed(loaded, options, speed)
                plan = speed_run.plan
            else:
                speed_run, plan = None, run_streamed_method(chosen, loaded, options)
            if writer is not None:
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
            if world.distributed:
                report["distributed"] = world_record(world)
            shapes = describe_layers(loaded.model, loaded.adapter)
            fmt = None
            if writer is not None:
                written = writer.close()
                fmt = write_beside_weights(
                    tmp, loaded, shapes, save.format, torch_dtype, written, plan, report
                )
                if evals.wanted:
                    unevaluated = pruned_eval_refusal(fmt, evals, save.path)
            # Every rank evaluates its share of the pruned model's windows from rank 0's staged
            # export (a directory every rank must see: one host, or a shared filesystem).
            staged_export, unevaluated = world.broadcast((tmp and str(tmp), unevaluated))
            eval_world = world if everyone_sees(world, staged_export) else None  # else rank 0
            if evals.wanted and unevaluated is None and (eval_world or world.is_main):
                # The staged export is a complete model directory: evaluated before it is
                # renamed, so its report.json and model card hold the pruned numbers too.
                started = time.perf_counter()
                results["pruned"] = evaluate_from_files(
                    staged_export, evals, world=eval_world, **eval_options
                )
                timings["eval_pruned"] = time.perf_counter() - started
                report.update(eval=results, timings=timings)
                if writer is not None:
                    write_beside_weights(
                        tmp, loaded, shapes, fmt, torch_dtype, written, plan, report
                    )
            world.barrier()  # the others have read the staged export before it is renamed
    if not world.is_main:
        return PruneResult(loaded, plan, report, None)
    weight_bytes = sum(p.stat().st_size for p in Path(save.path).glob("*.safetensors"))
    saved = ExportResult(Path(save.path), fmt, dtype_name(torch_dtype), weight_bytes, shapes)
    if speed_run:
        save_profiled_table(speed_run, run.out)
    run_dir = write_run_dir(run.out, plan, report) if run.out else None
    if unevaluated:
        raise SettingsError(unevaluated)
    return PruneResult(loaded, plan, report, run_dir, saved)


def everyone_sees(world: World, directory: str | None) -> bool:
    """Whether every rank can read ``directory`` (rank 0's staged export): one host, or a
    shared filesystem. When some cannot, rank 0 evaluates the pruned model alone."""
    if not world.distributed or directory is None:
        return True
    seen = world.gather({world.rank: Path(directory).is_dir()})
    if not all(seen.values()):
        log.warning("the staged export is not visible on every rank: rank 0 evaluates it alone")
        return False
    return True


def chunked_within(settings: MethodSettings, limit: int) -> MethodSettings:
    """``settings`` with the depth runner's chunks of windows fitting ``limit`` bytes, where the
    method has a depth runner (``ChunkedExecutionSettings``; a combined method's depth stage)
    and no ``max_memory`` of its own."""
    if isinstance(settings, ChunkedExecutionSettings) and settings.max_memory is None:
        return dataclasses.replace(settings, max_memory=limit)
    return settings


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
