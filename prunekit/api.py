"""The public Python surface: load, prune, evaluate."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.evaluation.perplexity import perplexity
from prunekit.methods.registry import PruneSettings, get_method
from prunekit.models.loading import LoadedModel, load_model
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
    chosen.check_settings(settings, spell=str)
    options = PruneSettings(**settings)
    if out is not None:
        options.run_dir = str(out)
    options.validate()
    check_run_target(out, resume=options.resume, overwrite=overwrite)
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

    report = build_report(
        method=chosen.name,
        family=chosen.family,
        model={
            **identity,
            "source": loaded.source,
            "dtype": loaded.dtype_name,
            "device": loaded.device,
        },
        settings=dataclasses.asdict(options),
        params=pruning_ratios(before, after),
        evals=evals,
        timings=timings,
        versions=library_versions(),
    )
    run_dir = write_run_dir(out, plan, report) if out else None
    return PruneResult(loaded, plan, report, run_dir)
