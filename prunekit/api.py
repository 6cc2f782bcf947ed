"""The public Python surface: load, prune, evaluate."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.engine.residency import Streamed
from prunekit.errors import ModelNotFoundError, SettingsError
from prunekit.evaluation.perplexity import perplexity
from prunekit.export.per_layer import describe_layers
from prunekit.export.save import check_target, staging_dir, write_beside_weights
from prunekit.export.shards import DEFAULT_MAX_SHARD_SIZE, ShardWriter
from prunekit.export.streamed import PartWriter
from prunekit.methods.registry import Method, PruneSettings, get_method
from prunekit.models.dtype import resolve_dtype
from prunekit.models.lazy import LazyModel
from prunekit.models.loading import LoadedModel, default_device, load_model
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
) -> dict:
    """{dataset: PerplexityResult as dict} for each dataset."""
    return {
        name: perplexity(loaded, name, seqlen, max_windows, batch_size).to_dict()
        for name in datasets
    }


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


def prune(
    model: str | LoadedModel,
    method: str,
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
    **settings: Any,
) -> PruneResult:
    """Prune ``model`` with ``method`` and return the pruned model, its plan and its report.

    ``settings`` are the fields of ``PruneSettings`` that ``method`` takes (``prunekit methods``
    lists them; any other one is refused). With ``out`` the run directory is written (plan.json,
    report.json, report.md); an ``out`` that already holds a run is refused unless ``resume``
    (an unfinished search) or ``overwrite`` (replace it) is given. With ``eval_datasets``
    (perplexity) and/or ``eval_tasks`` (zero-shot, lm-eval) the dense and the pruned model are
    both evaluated in this run and both recorded.
    """
    chosen = get_method(method)
    options = checked_settings(chosen, settings, out, overwrite)
    check_inputs(options if "calib" in chosen.takes else None, eval_datasets, eval_tasks, task_data)
    if not isinstance(model, LoadedModel):
        log.info("loading %s", model)
    loaded = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, dtype=dtype, device=device, attn_implementation=attn_implementation)
    )
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
    plan = chosen.prune(loaded, options)
    timings["prune"] = time.perf_counter() - started
    after = parameter_counts(loaded.model, loaded.adapter)
    if wants_eval:
        run_eval("pruned")

    report = run_report(
        chosen, loaded, identity, options, pruning_ratios(before, after), evals, timings
    )
    run_dir = write_run_dir(out, plan, report) if out else None
    return PruneResult(loaded, plan, report, run_dir)


def streaming_refusal(method: Method) -> str | None:
    """Why ``method`` cannot run streamed (None when it can)."""
    if not method.streams:
        return f"{method.name} cannot run streamed: {method.no_stream_reason}"
    return None


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
    max_memory: int | None = None,
    **settings: Any,
) -> PruneResult:
    """Prune ``model`` (a spec with safetensors shards) one decoder layer at a time, exporting
    the pruned model to ``save`` as it goes: memory holds about one layer, never the model.

    The weights stay in their shards (``LazyModel``); each layer is onloaded, calibrated,
    pruned, written to ``save``'s shards and released (``prunekit.engine.residency``). ``save``
    is the exported model (the formats ``export_model`` writes; it appears only once complete);
    ``out`` the run directory (plan.json, report.json). The result's model is the skeleton on
    the meta device, in its pruned shapes: load ``save`` to use the pruned model.
    ``max_memory`` (bytes): the memory budget; the depth search sizes its chunks of windows
    from it (``engine/layer_major.py``).
    """
    chosen = get_method(method)
    refusal = streaming_refusal(chosen)
    if refusal:
        raise SettingsError(refusal)
    options = checked_settings(chosen, settings, out, overwrite)
    if max_memory is not None:
        options.options["max_memory"] = max_memory
    check_target(save, overwrite)
    check_inputs(options if "calib" in chosen.takes else None, None, None, None)
    device = device or default_device()
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
        with ShardWriter(tmp, dtype=torch_dtype, max_shard_size=max_shard_size) as writer:
            residency = Streamed(lazy, PartWriter(lazy, writer))
            loaded.residency = residency
            log.info("pruning %s with %s, streamed layer by layer", loaded.spec, chosen.name)
            plan = chosen.prune(loaded, options)
            residency.finish_outside_layers()
        timings = {"prune": time.perf_counter() - started}
        after = parameter_counts(loaded.model, loaded.adapter)
        params = pruning_ratios(before, after)
        report = run_report(chosen, loaded, plan.model, options, params, {}, timings, "streamed")
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
    mode: str | None = None,
) -> dict:
    """report.json of one pruning run (``mode``: "streamed" when the model never sat in memory)."""
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
        extra={"mode": mode} if mode else None,
    )
