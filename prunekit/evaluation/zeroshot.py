"""Zero-shot accuracy through lm-evaluation-harness, on the model object already in memory.

lm-eval is given the loaded ``nn.Module`` (``HFLM(pretrained=model)``), never a path: a pruned
model with removed blocks or per-layer widths only exists in memory (or behind prunekit's own
loader), so this is the one way every model prunekit makes can be evaluated the same way. A model
bigger than memory is given the same way, dispatched by accelerate (``evaluation.dispatched``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from prunekit.errors import MissingExtraError
from prunekit.evaluation.baselines import AnswerBaselines, answer_baselines
from prunekit.evaluation.dispatched import is_dispatched
from prunekit.evaluation.tasks import (
    TaskSpec,
    check_offline_files,
    materialise_task_yamls,
    offline_tasks_dir,
    resolve_tasks,
)
from prunekit.models.loading import LoadedModel

NUM_FEWSHOT = 0


@dataclass
class TaskResult:
    """acc / acc_norm of one task; ``acc_norm`` is None where the task has none (winogrande)."""

    task: str
    lm_eval_task: str
    acc: float
    acc_stderr: float | None
    acc_norm: float | None
    acc_norm_stderr: float | None
    samples: int
    seconds: float
    chance: float | None = None  # accuracy of random guessing on these items
    majority: float | None = None  # accuracy of always giving the most frequent gold answer

    @property
    def average_metric(self) -> str:
        """BlockPruner's choice: acc_norm where the task has it, else acc."""
        return "acc_norm" if self.acc_norm is not None else "acc"

    @property
    def score(self) -> float:
        return self.acc_norm if self.acc_norm is not None else self.acc

    def to_dict(self) -> dict:
        return {**asdict(self), "average_metric": self.average_metric}


@dataclass
class ZeroShotResult:
    tasks: dict[str, TaskResult]
    limit: int | None
    batch_size: int
    source: str  # "local files: <dir>" or "hub"
    lm_eval_version: str
    num_fewshot: int = NUM_FEWSHOT
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def average(self) -> float:
        """Mean over tasks of acc_norm (where the task has it) else acc, as BlockPruner reports."""
        return sum(t.score for t in self.tasks.values()) / len(self.tasks)

    def to_dict(self) -> dict:
        return {
            "tasks": {name: t.to_dict() for name, t in self.tasks.items()},
            "average": self.average,
            "limit": self.limit,
            "num_fewshot": self.num_fewshot,
            "batch_size": self.batch_size,
            "source": self.source,
            "lm_eval_version": self.lm_eval_version,
            "seconds": self.seconds,
        }


def lm_eval_version() -> str | None:
    try:
        return importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        return None


def require_lm_eval() -> None:
    """Raise the one-line 'install the extra' error when lm-eval is absent."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise MissingExtraError("lm-eval", "eval", "zero-shot evaluation (--tasks)") from None


def check_tasks(tasks: list[str], task_data: str | Path | None = None) -> list[TaskSpec]:
    """Everything that can fail before a model runs: lm-eval present, names known, files there."""
    require_lm_eval()
    specs = resolve_tasks(tasks)
    tasks_dir = offline_tasks_dir(task_data)
    if tasks_dir is not None:
        check_offline_files(tasks_dir, specs)
    return specs


def _metric(results: dict, name: str) -> float | None:
    value = results.get(f"{name},none")
    return None if value is None or value == "N/A" else float(value)


def _task_result(spec: TaskSpec, task_name: str, out: dict, seconds: float) -> TaskResult:
    metrics = out["results"][task_name]
    acc = _metric(metrics, "acc")
    if acc is None:
        raise RuntimeError(f"lm-eval returned no acc for {task_name}: {sorted(metrics)}")
    samples = out.get("n-samples", {}).get(task_name, {}).get("effective")
    return TaskResult(
        task=spec.name,
        lm_eval_task=task_name,
        acc=acc,
        acc_stderr=_metric(metrics, "acc_stderr"),
        acc_norm=_metric(metrics, "acc_norm"),
        acc_norm_stderr=_metric(metrics, "acc_norm_stderr"),
        samples=int(samples) if samples is not None else -1,
        seconds=seconds,
    )


@contextlib.contextmanager
def _task_manager(tasks_dir: Path | None) -> Iterator[Any]:
    """lm-eval's TaskManager: offline (``tasks_dir``) over materialised copies of the local
    YAMLs, removed afterwards; online over lm-eval's own tasks."""
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if tasks_dir is None:
        yield TaskManager()
        return
    include = materialise_task_yamls(tasks_dir)
    try:
        yield TaskManager(include_path=str(include), include_defaults=False)
    finally:
        shutil.rmtree(include, ignore_errors=True)


def zeroshot(
    loaded: LoadedModel,
    tasks: list[str],
    *,
    limit: int | None = None,
    batch_size: int = 16,
    task_data: str | Path | None = None,
) -> ZeroShotResult:
    """0-shot acc / acc_norm of ``loaded`` on ``tasks`` (plain names: piqa, arc_easy, ...).

    Offline when ``task_data`` or ``$PRUNEKIT_DATA_DIR`` is set (local JSONL + YAMLs), otherwise
    lm-eval's hub tasks. ``limit`` keeps the first N items of each task (recorded), and each
    task's chance and majority baselines over those items are recorded beside its accuracy.
    """
    specs = check_tasks(tasks, task_data)
    tasks_dir = offline_tasks_dir(task_data)

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import get_task_dict

    from prunekit.report.versions import quiet_lm_eval_git

    with _task_manager(tasks_dir) as manager, quiet_lm_eval_git():
        lm = HFLM(
            pretrained=loaded.model,
            tokenizer=loaded.tokenizer,
            batch_size=batch_size,
            device=loaded.device,
        )
        if is_dispatched(loaded.model):
            # lm-eval takes an instance's device from ``model.device``, which is ``meta`` when
            # the first weights are offloaded; inputs go to the compute device, where
            # accelerate's hooks expect them.
            lm._device = torch.device(loaded.device)
        results: dict[str, TaskResult] = {}
        total = time.perf_counter()
        for spec in specs:
            task_name = spec.lm_eval_task(offline=tasks_dir is not None)
            started = time.perf_counter()
            task = get_task_dict([task_name], manager)[task_name]
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=[task],
                num_fewshot=NUM_FEWSHOT,
                limit=limit,
                task_manager=manager,
                log_samples=False,
            )
            result = _task_result(spec, task_name, out, time.perf_counter() - started)
            baselines = answer_baselines(task, limit)
            if baselines is not None:
                result.chance, result.majority = baselines.chance, baselines.majority
            results[spec.name] = result
    return ZeroShotResult(
        tasks=results,
        limit=limit,
        batch_size=batch_size,
        source=f"local files: {tasks_dir}" if tasks_dir is not None else "hub (lm-eval tasks)",
        lm_eval_version=lm_eval_version() or "unknown",
        seconds=time.perf_counter() - total,
    )


def task_baselines(
    tasks: list[str], *, limit: int | None = None, task_data: str | Path | None = None
) -> dict[str, AnswerBaselines | None]:
    """Chance and majority baselines of ``tasks`` without running a model (reads the items)."""
    specs = check_tasks(tasks, task_data)
    tasks_dir = offline_tasks_dir(task_data)
    from lm_eval.tasks import get_task_dict

    with _task_manager(tasks_dir) as manager:
        names = {spec.name: spec.lm_eval_task(offline=tasks_dir is not None) for spec in specs}
        loaded = get_task_dict(list(names.values()), manager)
        return {name: answer_baselines(loaded[task], limit) for name, task in names.items()}


def add_task_baselines(entries: dict[str, dict], limit: int | None) -> None:
    """Write ``chance`` and ``majority`` into recorded per-task results (``entries``: task name
    -> its result dict, scored on the first ``limit`` items), for results recorded before
    ``zeroshot`` kept them. Reads the task items; runs no model."""
    for name, baselines in task_baselines(list(entries), limit=limit).items():
        if baselines is not None:
            entries[name].update(baselines.to_dict())
