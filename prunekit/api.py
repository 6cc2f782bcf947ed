"""The public Python surface: load, prune, evaluate."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.evaluation.perplexity import perplexity
from prunekit.methods.registry import PruneSettings, get_method
from prunekit.models.loading import LoadedModel, load_model
from prunekit.plan import PruningPlan
from prunekit.report.accounting import parameter_counts, pruning_ratios
from prunekit.report.markdown import render_report_md
from prunekit.report.run_dir import write_run_dir
from prunekit.report.versions import library_versions


@dataclass
class PruneResult:
    loaded: LoadedModel  # the pruned model (pruned in place)
    plan: PruningPlan
    report: dict
    run_dir: Path | None

    @property
    def model(self) -> Any:
        return self.loaded.model


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


def prune(
    model: str | LoadedModel,
    method: str,
    *,
    out: str | Path | None = None,
    eval_datasets: list[str] | None = None,
    eval_seqlen: int = 2048,
    eval_max_windows: int | None = None,
    dtype: str = "auto",
    device: str | None = None,
    **settings: Any,
) -> PruneResult:
    """Prune ``model`` with ``method`` and return the pruned model, its plan and its report.

    ``settings`` are the fields of ``PruneSettings`` (ratio, blocks, sparsity, calib, n_samples,
    seqlen, seed, ...). With ``out`` the run directory is written (plan.json, report.json,
    report.md); with ``eval_datasets`` the dense and the pruned model are both evaluated.
    """
    loaded = (
        model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device)
    )
    chosen = get_method(method)
    options = PruneSettings(**settings)
    if out is not None:
        options.run_dir = str(out)
    options.validate()
    timings: dict[str, float] = {}
    before = parameter_counts(loaded.model, loaded.adapter)
    identity = loaded.identity()
    evals: dict[str, dict] = {}
    if eval_datasets:
        started = time.perf_counter()
        evals["dense"] = {"ppl": evaluate_ppl(loaded, eval_datasets, eval_seqlen, eval_max_windows)}
        timings["eval_dense"] = time.perf_counter() - started

    started = time.perf_counter()
    plan = chosen.prune(loaded, options)
    timings["prune"] = time.perf_counter() - started
    after = parameter_counts(loaded.model, loaded.adapter)

    if eval_datasets:
        started = time.perf_counter()
        evals["pruned"] = {
            "ppl": evaluate_ppl(loaded, eval_datasets, eval_seqlen, eval_max_windows)
        }
        timings["eval_pruned"] = time.perf_counter() - started

    report = {
        "method": chosen.name,
        "family": chosen.family,
        "model": {
            **identity,
            "source": loaded.source,
            "dtype": loaded.dtype_name,
            "device": loaded.device,
        },
        "settings": dataclasses.asdict(options),
        "params": pruning_ratios(before, after),
        "eval": evals,
        "timings": timings,
        "versions": library_versions(),
    }
    run_dir = write_run_dir(out, plan, report, render_report_md(report)) if out else None
    return PruneResult(loaded, plan, report, run_dir)
