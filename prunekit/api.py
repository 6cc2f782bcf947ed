"""The public Python surface: load, prune, evaluate."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.engine.residency import Resident, Streamed, is_streamed
from prunekit.errors import ModelNotFoundError, PrunekitError, SettingsError
from prunekit.evaluation.perplexity import perplexity
from prunekit.export.per_layer import describe_layers
from prunekit.export.save import check_target, staging_dir, write_beside_weights
from prunekit.export.shards import DEFAULT_MAX_SHARD_SIZE, ShardWriter, parse_shard_size
from prunekit.export.streamed import PartWriter
from prunekit.memory import (
    MemoryBudget,
    MemorySettings,
    RunChoice,
    choose_run,
    memory_record,
    row_slice_bytes_for,
    shard_size_for,
)
from prunekit.memory_usage import PeakMemory
from prunekit.methods.registry import Method, PruneSettings, get_method
from prunekit.models.dtype import dtype_name, resolve_dtype
from prunekit.models.lazy import LazyModel
from prunekit.models.loading import LoadedModel, default_device, load_config, load_model
from prunekit.plan import PruningPlan
from prunekit.report.accounting import parameter_counts, pruning_ratios
from prunekit.report.run_dir import check_run_target, clear_run, write_run_dir
from prunekit.report.schema import build_report
from prunekit.report.versions import library_versions

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    loaded: LoadedModel  # the pruned model (pruned in place)
    plan: PruningPlan
    report: dict
    run_dir: Path | None

    @property
    def model(self) -> Any:
        return self.loaded.model


def check_inputs(
    settings: PruneSettings | None,
    eval_datasets: list[str] | None,
    eval_tasks: list[str] | None,
    task_data: str | Path | None,
) -> None:
    """Fail on a bad calibration or evaluation dataset, or a bad task, before a model loads."""
    from prunekit.data import check_dataset

    for dataset in ([settings.calib] if settings else []) + list(eval_datasets or []):
        check_dataset(dataset)
    if eval_tasks:
        from prunekit.evaluation.zeroshot import check_tasks

        check_tasks(eval_tasks, task_data)


def evaluate_ppl(
    loaded: LoadedModel,
    datasets: list[str],
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    max_memory: int | str | None = None,
) -> dict:
    """{dataset: PerplexityResult as dict} for each dataset.

    A lazily loaded model (``open_streamed``) is evaluated layer by layer, holding at most
    ``max_memory`` (bytes, or a size such as "2GB"; None: every window in one chunk)."""
    if not is_streamed(loaded):  # in memory (Resident, or none)
        if max_memory is not None:
            raise SettingsError(
                "max_memory bounds a streamed evaluation: open the model with open_streamed"
            )
        return {
            name: perplexity(loaded, name, seqlen, max_windows, batch_size).to_dict()
            for name in datasets
        }
    from prunekit.evaluation.streamed import perplexity_streamed
    from prunekit.memory import parse_memory_size

    budget = None if max_memory is None else parse_memory_size(max_memory)
    return {
        name: perplexity_streamed(loaded, name, seqlen, max_windows, batch_size, budget).to_dict()
        for name in datasets
    }


def open_streamed(
    model: str,
    *,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """``model`` (a spec with safetensors shards) with its weights left in their files: the
    skeleton on meta, each part onloaded only while the engine runs it. ``evaluate_ppl`` then
    evaluates it layer by layer."""
    lazy = LazyModel.open(
        model,
        dtype=dtype,
        device=device or default_device(),
        attn_implementation=attn_implementation,
    )
    loaded = lazy_loaded(lazy, model)
    loaded.residency = Streamed(lazy)
    return loaded


def evaluate(
    loaded: LoadedModel,
    *,
    ppl: list[str] | None = None,
    seqlen: int = 2048,
    max_windows: int | None = None,
    ppl_batch_size: int = 1,
    tasks: list[str] | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    task_data: str | Path | None = None,
) -> dict:
    """{"ppl": {dataset: ...}, "zeroshot": {...}} of one model: the report's ``eval`` entry.

    Zero-shot tasks are resolved (and their offline files checked) before any perplexity runs, so
    a typo in a task name fails in a second, not after a long perplexity pass.
    """
    from prunekit.evaluation.zeroshot import check_tasks, zeroshot

    if tasks:
        check_tasks(tasks, task_data)
    result: dict = {}
    if ppl:
        result["ppl"] = evaluate_ppl(loaded, ppl, seqlen, max_windows, ppl_batch_size)
    if tasks:
        result["zeroshot"] = zeroshot(
            loaded, tasks, limit=limit, batch_size=batch_size, task_data=task_data
        ).to_dict()
    return result


def evaluate_streamed(
    model: str,
    *,
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
) -> dict:
    """``evaluate`` for a model bigger than memory (a spec or an exported directory): the same
    entries, computed without ever holding the whole model.

    Perplexity runs layer by layer from the shards (``open_streamed``, chunk of windows from
    ``max_memory``); zero-shot runs in lm-eval on the model dispatched by accelerate (at most
    ``max_memory`` of weights on ``device``, the rest offloaded: read from the checkpoint or
    written to ``offload_folder``, a temporary directory by default).
    """
    import tempfile

    from prunekit.evaluation.dispatched import load_dispatched
    from prunekit.evaluation.zeroshot import check_tasks, zeroshot
    from prunekit.memory import parse_memory_size

    if tasks:
        check_tasks(tasks, task_data)
    budget = None if max_memory is None else parse_memory_size(max_memory)
    common = {"dtype": dtype, "device": device, "attn_implementation": attn_implementation}
    result: dict = {}
    if ppl:
        check_streamable(model)
        result["ppl"] = evaluate_ppl(
            open_streamed(model, **common), ppl, seqlen, max_windows, ppl_batch_size, budget
        )
    if tasks:
        with tempfile.TemporaryDirectory(prefix="prunekit-offload-") as scratch:
            loaded = load_dispatched(
                model, max_memory=budget, offload_folder=offload_folder or scratch, **common
            )
            result["zeroshot"] = zeroshot(
                loaded, tasks, limit=limit, batch_size=batch_size, task_data=task_data
            ).to_dict()
    return result


def check_streamable(model: str) -> None:
    """Refuse, in one line, a model the lazy loader cannot read (a prunekit-format export)."""
    from prunekit.export.load import is_export_dir, read_config
    from prunekit.export.shim import shim_for_model_type

    path = Path(model).expanduser()
    exported = path.is_dir() and is_export_dir(path)
    if exported and shim_for_model_type(read_config(path).model_type) is not None:
        raise SettingsError(
            f"{model} is a prunekit-format export (per-layer widths): its perplexity cannot "
            "be computed layer by layer yet; evaluate it without --stream"
        )


def prune(
    model: str | LoadedModel,
    method: str | None = None,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
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
    **settings: Any,
) -> PruneResult:
    """Prune ``model`` with ``method`` and return the pruned model, its plan and its report.

    ``settings`` are the fields of ``PruneSettings`` that ``method`` takes (``prunekit methods``
    lists them; any other one is refused). With ``out`` the run directory is written (plan.json,
    report.json, report.md); an ``out`` that already holds a run is refused unless ``resume``
    (an unfinished search) or ``overwrite`` (replace it) is given. With ``eval_datasets``
    (perplexity) and/or ``eval_tasks`` (zero-shot, lm-eval) the dense and the pruned model are
    both evaluated in this run and both recorded.

    ``budget`` (bytes the run may add on the compute device and the host): refused in one line
    before any weight is read when the in-memory run cannot fit it (``prune_streamed`` can run
    in less; ``choose_mode`` says which); with ``offload_activations`` (None: as the budget
    needs, on a GPU) the calibration states wait on the host. report.json's ``memory`` records
    the mode, the budget, the predicted and the measured peaks.

    ``target_speedup`` S (``method`` blockpruner+fasp, its default): the split of removed blocks
    and narrowed widths predicted S× faster in ``phase`` (decode or prefill) by ``latency_table``
    (a ``prunekit profile`` file; None: profiled now with ``latency_workload``, saved as
    RUN/latency.json) at the lowest calibration loss (docs/speed_target.md); report.json's
    ``speed_target`` records it, with the speed-up measured against the dense model on this
    machine (``measure_speedup=False``: not timed, no dense copy kept meanwhile).
    """
    from prunekit.speedtarget.prune import (
        SPEED_METHOD,
        check_speed_request,
        prune_for_speed,
        save_profiled_table,
    )

    speed = speed_request(target_speedup, phase, latency_table, latency_workload, measure_speedup)
    if method is None and speed is None:
        raise SettingsError("name a pruning method (prunekit methods lists them)")
    chosen = get_method(method or SPEED_METHOD)
    if speed is not None:
        check_speed_request(chosen, settings, speed)
    options = checked_settings(chosen, settings, out, overwrite)
    check_inputs(options if "calib" in chosen.takes else None, eval_datasets, eval_tasks, task_data)
    budget = budget or MemoryBudget()
    choice = choose_mode(
        model,
        chosen,
        options,
        budget,
        dtype=dtype,
        device=device,
        stream=False,
        offload_activations=offload_activations,
    )
    if not isinstance(model, LoadedModel):
        import_model_code(model)
    with PeakMemory(_run_device(model, device)) as peaks:  # stopped on any exit
        if not isinstance(model, LoadedModel):
            log.info("loading %s", model)
        loaded = (
            model
            if isinstance(model, LoadedModel)
            else load_model(
                model, dtype=dtype, device=device, attn_implementation=attn_implementation
            )
        )
        residency_before = loaded.residency
        if residency_before is None:
            loaded.residency = Resident(_offloads(choice, offload_activations))
        if overwrite and out is not None:
            clear_run(out)
        timings: dict[str, float] = {}
        before = parameter_counts(loaded.model, loaded.adapter)
        identity = loaded.identity()
        evals: dict[str, dict] = {}
        wants_eval = bool(eval_datasets or eval_tasks)

        def run_eval(side: str) -> None:
            started = time.perf_counter()
            evals[side] = evaluate(
                loaded,
                ppl=eval_datasets,
                seqlen=eval_seqlen,
                max_windows=eval_max_windows,
                tasks=eval_tasks,
                limit=eval_limit,
                batch_size=eval_batch_size,
                task_data=task_data,
            )
            timings[f"eval_{side}"] = time.perf_counter() - started

        if wants_eval:
            run_eval("dense")
        log.info("pruning %s with %s", loaded.spec, chosen.name)
        started = time.perf_counter()
        try:
            speed_run = prune_for_speed(loaded, options, speed) if speed else None
            plan = speed_run.plan if speed_run else chosen.prune(loaded, options)
        finally:
            loaded.residency = residency_before
        timings["prune"] = time.perf_counter() - started
        if speed_run and speed_run.profiled:
            timings["profile"] = speed_run.profile_s
        after = parameter_counts(loaded.model, loaded.adapter)
        if wants_eval:
            run_eval("pruned")

        memory = memory_record("in-memory", choice, budget, peaks.stop())
    report = run_report(
        chosen, loaded, identity, options, pruning_ratios(before, after), evals, timings, memory
    )
    if plan.stages:  # a combined method: the split and each stage's settings and ratios
        from prunekit.methods.combined import combined_record

        report.update(combined_record(plan))
    if speed_run:
        report["speed_target"] = speed_run.record
        save_profiled_table(speed_run, out)
    run_dir = write_run_dir(out, plan, report) if out else None
    return PruneResult(loaded, plan, report, run_dir)


def speed_request(
    target: float | None,
    phase: str | None,
    table: str | Path | None,
    workload: dict | None,
    measure: bool = True,
) -> Any:
    """The ``--target-speedup`` request (a ``SpeedRequest``), or None; its options without a
    target are refused."""
    from prunekit.speedtarget.prune import DEFAULT_PHASE, SpeedRequest

    if target is None:
        given = [name for name, value in (("--phase", phase), ("--latency-table", table)) if value]
        given += [f"--{k.replace('_', '-')}" for k in workload or {}]
        if given:
            raise SettingsError(f"{given[0]} applies to --target-speedup, which was not given")
        return None
    return SpeedRequest(target, phase or DEFAULT_PHASE, table, dict(workload or {}), measure)


def streaming_refusal(method: Method) -> str | None:
    """Why ``method`` cannot run streamed (None when it can)."""
    if not method.streams:
        return f"{method.name} cannot run streamed: {method.no_stream_reason}"
    return None


def choose_mode(
    model: str | LoadedModel,
    method: Method,
    options: PruneSettings,
    budget: MemoryBudget,
    *,
    dtype: str = "auto",
    device: str | None = None,
    stream: bool | None = None,
    offload_activations: bool | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> RunChoice | None:
    """In memory or streamed, calibration states offloaded or not: decided from the config and
    the memory model before any weight is read (``prunekit.memory.choose_run``).

    ``stream``/``offload_activations``: True or False force, None lets the budget decide. A model
    already in memory runs in memory. None when the memory model cannot describe the model and no
    budget asks for it (the run then records no prediction).
    """
    device = _run_device(model, device)
    if offload_activations and not device.startswith("cuda"):
        log.warning(
            "--offload-activations has no effect on %s: the calibration states are already in "
            "host memory",
            device,
        )
    if isinstance(model, LoadedModel):
        config, torch_dtype, stream = model.model.config, model.dtype, False
    else:
        config, torch_dtype = load_config(model), resolve_dtype(dtype, device)
    settings = MemorySettings(
        method=method.name,
        n_samples=options.n_samples,
        seqlen=options.seqlen,
        dtype=dtype_name(torch_dtype),
        batch_size=options.batch_size,
        device=device,
        sparsity=options.sparsity if options.sparsity is not None else options.ratio or 0.2,
        targets=tuple(options.targets),
        max_shard_size=shard_size_for(budget, device, parse_shard_size(max_shard_size)),
        row_slice_bytes=row_slice_bytes_for(budget, device),
    )
    try:
        return choose_run(
            config,
            settings,
            budget,
            stream=stream,
            offload_activations=offload_activations,
            stream_refusal=streaming_refusal(method),
        )
    except PrunekitError:
        if budget.given:
            raise
        return None  # no prediction for this model; without a budget nothing depends on one


def import_model_code(spec: str) -> None:
    """Import the model's transformers code and the tokenizer classes before a run measures its
    memory: imports are the framework's cost (~100 MB of a process's anonymous memory), not the
    run's, and the memory model counts them apart (its ``framework`` term)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    # A model transformers resolves otherwise (remote code) is measured with its import.
    with contextlib.suppress(PrunekitError, KeyError, AttributeError, ImportError):
        AutoModelForCausalLM._model_mapping[type(load_config(spec))]


def _offloads(choice: RunChoice | None, requested: bool | None) -> bool:
    return choice.offload_activations if choice else bool(requested)


def _run_device(model: str | LoadedModel, device: str | None) -> str:
    if isinstance(model, LoadedModel):
        return str(model.device)
    return device or default_device()


def prune_streamed(
    model: str,
    method: str,
    *,
    save: str | Path,
    out: str | Path | None = None,
    overwrite: bool = False,
    fmt: str = "auto",
    save_dtype: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
    budget: MemoryBudget | None = None,
    offload_activations: bool | None = None,
    **settings: Any,
) -> PruneResult:
    """Prune ``model`` (a spec with safetensors shards) one decoder layer at a time, exporting
    the pruned model to ``save`` as it goes: memory holds about one layer, never the model.

    The weights stay in their shards (``LazyModel``); each layer is onloaded, calibrated,
    pruned, written to ``save``'s shards and released (``prunekit.engine.residency``). ``save``
    is the exported model (the formats ``export_model`` writes; it appears only once complete);
    ``out`` the run directory (plan.json, report.json). The result's model is the skeleton on
    the meta device, in its pruned shapes: load ``save`` to use the pruned model.

    ``budget``: refused in one line, before any weight is read, when even this run cannot fit;
    it sizes the output shards, the row slices of the big tensors and the depth search's chunks
    of calibration windows (``engine/layer_major.py``). ``offload_activations`` as for
    ``prune``. report.json's ``memory`` records the prediction and the measured peaks.
    """
    chosen = get_method(method)
    refusal = streaming_refusal(chosen)
    if refusal:
        raise SettingsError(refusal)
    options = checked_settings(chosen, settings, out, overwrite)
    check_target(save, overwrite)
    check_inputs(options if "calib" in chosen.takes else None, None, None, None)
    device = device or default_device()
    budget = budget or MemoryBudget()
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
        max_shard_size=max_shard_size,
    )
    shard_size = shard_size_for(budget, device, parse_shard_size(max_shard_size))
    import_model_code(model)
    with PeakMemory(device) as peaks:  # stopped on any exit, read once the pruning is done
        lazy = LazyModel.open(
            model, dtype=dtype, device=device, attn_implementation=attn_implementation
        )
        loaded = lazy_loaded(lazy, model)
        if overwrite and out is not None:
            clear_run(out)
        torch_dtype = lazy.dtype if save_dtype in (None, "auto") else resolve_dtype(save_dtype)
        before = parameter_counts(loaded.model, loaded.adapter)
        started = time.perf_counter()
        with staging_dir(Path(save), overwrite) as tmp:
            with ShardWriter(tmp, dtype=torch_dtype, max_shard_size=shard_size) as writer:
                residency = Streamed(
                    lazy,
                    PartWriter(lazy, writer),
                    row_slice_bytes=row_slice_bytes_for(budget, device),
                    offload_activations=_offloads(choice, offload_activations),
                )
                loaded.residency = residency
                log.info("pruning %s with %s, streamed layer by layer", loaded.spec, chosen.name)
                plan = chosen.prune(loaded, options)
                residency.finish_outside_layers()
            timings = {"prune": time.perf_counter() - started}
            after = parameter_counts(loaded.model, loaded.adapter)
            params = pruning_ratios(before, after)
            memory = memory_record("streamed", choice, budget, peaks.stop(), shard_size)
            report = run_report(chosen, loaded, plan.model, options, params, {}, timings, memory)
            shapes = describe_layers(loaded.model, loaded.adapter)
            written = writer.close()
            write_beside_weights(tmp, loaded, shapes, fmt, torch_dtype, written, plan, report)
    run_dir = write_run_dir(out, plan, report) if out else None
    return PruneResult(loaded, plan, report, run_dir)


def lazy_loaded(lazy: LazyModel, spec: str) -> LoadedModel:
    """A LoadedModel around a lazy model's skeleton (weights on meta until onloaded)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(lazy.directory))
    except Exception as exc:
        raise ModelNotFoundError(
            f"cannot load the tokenizer of {spec!r}: {str(exc).splitlines()[0]}"
        ) from exc
    return LoadedModel(
        lazy.model, tokenizer, lazy.adapter, spec, str(lazy.directory), lazy.dtype, str(lazy.device)
    )


def checked_settings(
    chosen: Method, settings: dict[str, Any], out: str | Path | None, overwrite: bool
) -> PruneSettings:
    """The method's settings, refused before any model loads: a setting the method does not
    take, a bad value, or an ``out`` holding a run the flags do not allow to touch."""
    chosen.check_settings(settings, spell=str)
    options = PruneSettings(**settings)
    if out is not None:
        options.run_dir = str(out)
    options.validate()
    check_run_target(out, resume=options.resume, overwrite=overwrite)
    return options


def run_report(
    chosen: Method,
    loaded: LoadedModel,
    identity: dict,
    options: PruneSettings,
    params: dict,
    evals: dict,
    timings: dict,
    memory: dict | None = None,
) -> dict:
    """report.json of one pruning run; ``memory`` (``prunekit.memory.memory_record``) also sets
    the top-level ``mode`` to "streamed" when the model never sat in memory."""
    extra: dict[str, Any] = {}
    if memory is not None:
        extra["memory"] = memory
        if memory["mode"] == "streamed":
            extra["mode"] = "streamed"
    return build_report(
        method=chosen.name,
        family=chosen.family,
        model={
            **identity,
            "source": loaded.source,
            "dtype": loaded.dtype_name,
            "device": loaded.device,
        },
        settings=dataclasses.asdict(options),
        params=params,
        evals=evals,
        timings=timings,
        versions=library_versions(),
        extra=extra or None,
    )
