"""The public Python surface: load, prune, evaluate. Where the model lives while it is pruned
or evaluated (in memory, or streamed one layer at a time from its files) is a parameter; the
steps themselves are in ``prunekit.pipeline``."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from prunekit.engine.world import World
from prunekit.errors import SettingsError
from prunekit.export.save import check_target
from prunekit.export.shards import DEFAULT_MAX_SHARD_SIZE
from prunekit.loader import load, spec_kind
from prunekit.memory import MemoryBudget
from prunekit.methods.catalogue import get_method
from prunekit.models.loading import LoadedModel
from prunekit.pipeline.checks import check_inputs, checked_settings, speed_request
from prunekit.pipeline.evaluation import (
    check_streamable,
    evaluate_from_files,
    evaluate_loaded,
    evaluate_ppl,
)
from prunekit.pipeline.lazy import lazy_loaded
from prunekit.pipeline.mode import (
    choose_mode,
    import_model_code,
    streaming_refusal,
    streams_for_budget,
)
from prunekit.pipeline.ranks import rank_device, run_world
from prunekit.pipeline.requests import EvalRequest, PruneResult, RunRequest, SaveRequest
from prunekit.pipeline.resident import prune_resident
from prunekit.pipeline.run_report import run_report
from prunekit.pipeline.streamed import prune_streamed_run

log = logging.getLogger(__name__)

__all__ = [
    "EvalRequest",
    "PruneResult",
    "check_inputs",
    "check_streamable",
    "checked_settings",
    "choose_mode",
    "evaluate",
    "evaluate_ppl",
    "evaluate_streamed",
    "import_model_code",
    "lazy_loaded",
    "load",
    "open_streamed",
    "prune",
    "prune_streamed",
    "run_report",
    "speed_request",
    "streaming_refusal",
]


def prune(
    model: str | LoadedModel,
    method: str | None = None,
    *,
    stream: bool | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    save: str | Path | None = None,
    save_format: str = "auto",
    save_dtype: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    eval_datasets: list[str] | None = None,
    eval_seqlen: int = 2048,
    eval_max_windows: int | None = None,
    eval_tasks: list[str] | None = None,
    eval_limit: int | None = None,
    eval_batch_size: int = 16,
    task_data: str | Path | None = None,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
    budget: MemoryBudget | None = None,
    offload_activations: bool | None = None,
    target_speedup: float | None = None,
    phase: str | None = None,
    latency_table: str | Path | None = None,
    latency_workload: dict | None = None,
    measure_speedup: bool = True,
    world: World | None = None,
    **settings: Any,
) -> PruneResult:
    """Prune ``model`` with ``method`` and return the pruned model, its plan and its report.

    ``settings`` are fields of ``method``'s settings class (``Method.settings_type``,
    ``prunekit/methods/settings.py``): the prune flags ``prunekit methods`` lists, and the
    benchmark and engine knobs some methods add (BlockPruner's ``naive``, the greedy searches'
    ``windows``, FASP's ``allocation_cost``, the depth runner's ``state_bytes`` and
    ``max_memory``); any other one is refused, and so is the old ``options=`` dict. With
    ``out`` the run directory is written (plan.json, report.json, report.md); an ``out`` that
    already holds a run is refused unless ``resume`` (an unfinished search) or ``overwrite``
    (replace it) is given. With ``save`` the pruned
    model is exported there (``save_format`` auto, hf or prunekit; ``save_dtype``;
    ``max_shard_size``), as ``export_model`` writes it; the result's ``saved`` describes it.
    With ``eval_datasets`` (perplexity) and/or ``eval_tasks`` (zero-shot, lm-eval) the dense
    and the pruned model are both evaluated in this run and both recorded.

    ``stream``: None (the default) decides from ``budget`` as the CLI does without
    ``--stream``: in memory unless the run is predicted not to fit ``budget`` in memory but
    to fit streamed (``pipeline.mode.streams_for_budget``); a model already loaded, or no budget,
    runs in memory. report.json's ``memory.mode`` records which. False holds the whole model in
    memory. True reads ``model`` (a spec with
    safetensors shards) one decoder layer at a time and writes each finished layer straight to
    ``save`` (required): memory holds about one layer, never the model. The result's model is
    then the skeleton on the meta device in its pruned shapes (load ``save`` to use it); the
    evaluations are streamed too (perplexity layer by layer, zero-shot on the model dispatched
    by accelerate), and a pruned perplexity needs a stock-format (hf) export. ``choose_mode``
    says which mode a budget needs.

    ``budget`` (bytes the run may add on the compute device and the host): refused in one line
    before any weight is read when the run cannot fit it; streamed, it also sizes the output
    shards, the row slices of the big tensors and the depth search's chunks of calibration
    windows. With ``offload_activations`` (None: as the budget needs, on a GPU) the calibration
    states wait on the host. report.json's ``memory`` records the mode, the budget, the
    predicted and the measured peaks.

    ``target_speedup`` S (``method`` blockpruner+fasp, its default; in memory or streamed): the
    split of removed blocks and narrowed widths predicted S× faster in ``phase`` (decode or prefill)
    by ``latency_table`` (a ``prunekit profile`` file; None: profiled now with
    ``latency_workload``, saved as RUN/latency.json) at the lowest calibration loss
    (docs/speed_target.md); report.json's ``speed_target`` records it, with the speed-up
    measured against the dense model on this machine (in memory; ``measure_speedup=False``: not
    timed). Streamed, the table is profiled from one layer and nothing is timed.

    ``world`` (``prunekit.engine.world.World``): the processes sharing the run; None: the
    launcher's (``torchrun``: each rank runs its share of the calibration windows, the plan is
    the one-process plan, rank 0 alone writes ``out`` and ``save``; docs/design.md, "Many
    processes"), else one process.
    """
    from prunekit.speedtarget.prune import SPEED_METHOD, check_speed_request

    speed = speed_request(target_speedup, phase, latency_table, latency_workload, measure_speedup)
    if method is None and speed is None:
        raise SettingsError("name a pruning method (prunekit methods lists them)")
    chosen = get_method(method or SPEED_METHOD)
    if not isinstance(model, LoadedModel) and spec_kind(model) == "run":
        raise SettingsError(
            f"{model} is a run directory (a plan, no weights): export it (prunekit export) and "
            "prune the export"
        )
    budget = budget or MemoryBudget()
    world = run_world(model, device, world)
    device = rank_device(device, world)
    if stream is None:
        stream = stream_needed(
            model, chosen, settings, budget, dtype, device, offload_activations, save, world.size
        )
    if stream:
        check_streamed_run(model, chosen, save, save_format, eval_datasets)
    if speed is not None:
        check_speed_request(chosen, settings, speed)
    options = checked_settings(chosen, settings, out, overwrite)
    if save is not None:
        check_target(save, overwrite)  # fail before the search, not after it
    check_inputs(options if "calib" in chosen.takes else None, eval_datasets, eval_tasks, task_data)
    evals = EvalRequest(
        list(eval_datasets or []),
        eval_seqlen,
        eval_max_windows,
        list(eval_tasks or []),
        eval_limit,
        eval_batch_size,
        task_data,
    )
    saving = (
        None if save is None else SaveRequest(Path(save), save_format, save_dtype, max_shard_size)
    )
    run = RunRequest(
        evals,
        saving,
        out,
        overwrite,
        dtype,
        device,
        attn_implementation,
        budget,
        offload_activations,
        world,
    )
    if stream:
        return prune_streamed_run(model, chosen, options, run, speed=speed)
    return prune_resident(model, chosen, options, run, speed=speed)


def stream_needed(
    model, chosen, settings, budget, dtype, device, offload_activations, save, nproc=1
) -> bool:
    """``stream=None``: whether ``budget`` needs the run streamed (predicted from the config
    before any weight is read, as the CLI decides it); logs the line saying so."""
    choice = streams_for_budget(
        model,
        chosen,
        settings,
        budget,
        save=save,
        save_name="save",
        dtype=dtype,
        device=device,
        offload_activations=offload_activations,
        nproc=nproc,
    )
    if choice is None:
        return False
    log.info(choice.message)
    return choice.streamed


def check_streamed_run(model, chosen, save, save_format, eval_datasets) -> None:
    """The refusals of ``stream=True`` that need no model."""
    refusal = streaming_refusal(chosen)
    if refusal:
        raise SettingsError(refusal)
    if isinstance(model, LoadedModel):
        raise SettingsError("stream=True reads the model from its files: pass its spec")
    if save is None:
        raise SettingsError("stream=True needs save: the pruned model is written as it is made")
    if eval_datasets and save_format == "prunekit":
        raise SettingsError(
            "streamed perplexity reads stock-format (hf) exports only, not save_format "
            "'prunekit'; evaluate the export in memory after"
        )


def evaluate(
    model: str | LoadedModel,
    *,
    stream: bool | None = None,
    ppl: list[str] | None = None,
    seqlen: int = 2048,
    max_windows: int | None = None,
    ppl_batch_size: int = 1,
    tasks: list[str] | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    task_data: str | Path | None = None,
    max_memory: int | str | None = None,
    offload_folder: str | Path | None = None,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
    world: World | None = None,
) -> dict:
    """{"ppl": {dataset: ...}, "zeroshot": {...}} of one model: the report's ``eval`` entry.

    ``model``: a loaded model, or anything ``prunekit.load`` takes (an alias, hub id, directory,
    .gguf file, export or run directory; loaded with ``dtype``, ``device``,
    ``attn_implementation``). Zero-shot tasks are resolved (and their offline files checked)
    before any perplexity runs, so a typo in a task name fails in a second, not after a long
    perplexity pass.

    ``stream``: None (the default) decides as ``prunekit eval`` does: a spec with a
    ``max_memory`` is streamed, anything else (a loaded model included) is evaluated in memory.
    Streamed (a spec only) never holds the whole model: perplexity runs layer by layer from
    the shards (chunks of windows from ``max_memory``; stock-format exports only); zero-shot
    runs in lm-eval on the model dispatched by accelerate (at most ``max_memory`` of weights on
    ``device``, the rest offloaded: read from the checkpoint or written to ``offload_folder``,
    a temporary directory by default). A model loaded with ``residency="streamed"`` is
    evaluated layer by layer as well, within ``max_memory``.

    ``world``: as ``prune``'s (None: the launcher's). Each rank computes the perplexity of its
    share of the windows and every rank gets the one-process sums; zero-shot runs on rank 0.
    """
    world = run_world(model, device, world)
    device = rank_device(device, world)
    request = EvalRequest(
        datasets=list(ppl or []),
        seqlen=seqlen,
        max_windows=max_windows,
        tasks=list(tasks or []),
        limit=limit,
        batch_size=batch_size,
        task_data=task_data,
        ppl_batch_size=ppl_batch_size,
    )
    load_options = {"dtype": dtype, "device": device, "attn_implementation": attn_implementation}
    if stream is None:
        stream = not isinstance(model, LoadedModel) and max_memory is not None
    if stream:
        if isinstance(model, LoadedModel):
            raise SettingsError("stream=True reads the model from its files: pass its spec")
        return evaluate_from_files(
            str(model),
            request,
            max_memory=max_memory,
            offload_folder=offload_folder,
            world=world,
            **load_options,
        )
    if offload_folder is not None:
        raise SettingsError("offload_folder applies to a streamed evaluation only")
    if not isinstance(model, LoadedModel):
        model = load(model, **load_options)
    if world.distributed:
        model.world = world
    return evaluate_loaded(model, request, max_memory=max_memory)


def open_streamed(
    model: str,
    *,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Deprecated: ``prunekit.load(model, residency="streamed", ...)``."""
    warnings.warn(
        "open_streamed is deprecated; use prunekit.load(model, residency='streamed')",
        DeprecationWarning,
        2,
    )
    return load(
        model,
        residency="streamed",
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
    )


def prune_streamed(
    model: str, method: str, *, save: str | Path, fmt: str = "auto", **options: Any
) -> PruneResult:
    """Deprecated: ``prune(model, method, stream=True, save=save, save_format=fmt, ...)``."""
    warnings.warn(
        "prune_streamed is deprecated; use prune(..., stream=True)", DeprecationWarning, 2
    )
    return prune(model, method, stream=True, save=save, save_format=fmt, **options)


def evaluate_streamed(model: str, **options: Any) -> dict:
    """Deprecated: ``evaluate(model, stream=True, ...)``."""
    warnings.warn(
        "evaluate_streamed is deprecated; use evaluate(..., stream=True)", DeprecationWarning, 2
    )
    return evaluate(model, stream=True, **options)
