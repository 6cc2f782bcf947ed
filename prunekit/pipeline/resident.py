"""A prune run with the whole model in memory: load, evaluate the dense model, prune, evaluate
the pruned one, report, write the run directory and the export."""

from __future__ import annotations

import logging
import time

from prunekit.engine.residency import Resident
from prunekit.export.save import export_model
from prunekit.loader import load
from prunekit.memory import memory_record
from prunekit.memory_usage import PeakMemory
from prunekit.methods.registry import Method
from prunekit.methods.settings import MethodSettings
from prunekit.models.loading import LoadedModel
from prunekit.pipeline.apply import run_method
from prunekit.pipeline.evaluation import evaluate_loaded
from prunekit.pipeline.mode import choose_mode, import_model_code, offloads, run_device
from prunekit.pipeline.ranks import join_run, world_record
from prunekit.pipeline.requests import PruneResult, RunRequest
from prunekit.pipeline.run_report import run_report
from prunekit.report.accounting import parameter_counts, pruning_ratios
from prunekit.report.run_dir import clear_run, write_run_dir

log = logging.getLogger(__name__)


def prune_resident(
    model: str | LoadedModel,
    chosen: Method,
    options: MethodSettings,
    run: RunRequest,
    *,
    speed=None,
) -> PruneResult:
    """``prunekit.api.prune`` in memory, its inputs already checked (``pipeline.checks``).
    Under many processes (``run.world``) every rank prunes its own copy the same way; rank 0
    alone writes the run directory and the export (pipeline/ranks.py)."""
    from prunekit.speedtarget.prune import prune_for_speed, save_profiled_table

    choice = choose_mode(
        model,
        chosen,
        options,
        run.budget,
        dtype=run.dtype,
        device=run.device,
        stream=False,
        offload_activations=run.offload_activations,
        nproc=run.world.size,
    )
    if not isinstance(model, LoadedModel):
        import_model_code(model)
    with PeakMemory(run_device(model, run.device)) as peaks:  # stopped on any exit
        if not isinstance(model, LoadedModel):
            log.info("loading %s", model)
        loaded = model if isinstance(model, LoadedModel) else load(model, **run.load_options())
        residency_before, world = loaded.residency, run.world
        options = join_run(loaded, options, world)
        if residency_before is None:
            loaded.residency = Resident(offloads(choice, run.offload_activations))
        if run.overwrite and run.out is not None and world.is_main:
            clear_run(run.out)
        timings: dict[str, float] = {}
        before = parameter_counts(loaded.model, loaded.adapter)
        identity = loaded.identity()
        results: dict[str, dict] = {}

        def run_eval(side: str) -> None:
            started = time.perf_counter()
            results[side] = evaluate_loaded(loaded, run.evals)
            timings[f"eval_{side}"] = time.perf_counter() - started

        if run.evals.wanted:
            run_eval("dense")
        log.info("pruning %s with %s", loaded.spec, chosen.name)
        started = time.perf_counter()
        world.forget()  # the pruning's own records
        try:
            speed_run = prune_for_speed(loaded, options, speed) if speed else None
            plan = speed_run.plan if speed_run else run_method(chosen, loaded, options)
        finally:
            loaded.residency = residency_before
        timings["prune"] = time.perf_counter() - started
        distributed = world_record(world) if world.distributed else None
        if speed_run and speed_run.profiled:
            timings["profile"] = speed_run.profile_s
        after = parameter_counts(loaded.model, loaded.adapter)
        if run.evals.wanted:
            run_eval("pruned")

        memory = memory_record("in-memory", choice, run.budget, peaks.stop())
    report = run_report(
        chosen, loaded, identity, options, pruning_ratios(before, after), results, timings, memory
    )
    if plan.stages:  # a combined method: the split and each stage's settings and ratios
        from prunekit.methods.combined import combined_record

        report.update(combined_record(plan))
    if distributed:
        report["distributed"] = distributed
    if not world.is_main:  # the same plan as rank 0's; rank 0 writes it
        return PruneResult(loaded, plan, report, None)
    if speed_run:
        report["speed_target"] = speed_run.record
        save_profiled_table(speed_run, run.out)
    run_dir = write_run_dir(run.out, plan, report) if run.out else None
    saved = None
    save = run.save
    if save is not None:
        saved = export_model(
            loaded,
            save.path,
            fmt=save.format,
            dtype=save.dtype,
            plan=plan,
            report=report,
            overwrite=run.overwrite,
            max_shard_size=save.max_shard_size,
        )
    return PruneResult(loaded, plan, report, run_dir, saved)
