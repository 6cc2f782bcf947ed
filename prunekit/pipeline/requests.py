"""What a run is asked to do besides pruning (evaluate, save) and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunekit.export.save import ExportResult
from prunekit.export.shards import DEFAULT_MAX_SHARD_SIZE
from prunekit.models.loading import LoadedModel
from prunekit.plan import PruningPlan


@dataclass
class EvalRequest:
    """Perplexity datasets and zero-shot tasks measured on the dense and the pruned model."""

    datasets: list[str] = field(default_factory=list)
    seqlen: int = 2048
    max_windows: int | None = None
    tasks: list[str] = field(default_factory=list)
    limit: int | None = None
    batch_size: int = 16
    task_data: str | Path | None = None

    @property
    def wanted(self) -> bool:
        return bool(self.datasets or self.tasks)

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``evaluate``."""
        return {
            "ppl": self.datasets,
            "seqlen": self.seqlen,
            "max_windows": self.max_windows,
            "tasks": self.tasks,
            "limit": self.limit,
            "batch_size": self.batch_size,
            "task_data": self.task_data,
        }


@dataclass
class SaveRequest:
    """Where and how the pruned model is exported (``export_model``'s settings)."""

    path: Path
    format: str = "auto"
    dtype: str | None = None
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE


@dataclass
class PruneResult:
    loaded: LoadedModel  # the pruned model (pruned in place; a meta skeleton when streamed)
    plan: PruningPlan
    report: dict
    run_dir: Path | None
    saved: ExportResult | None = None  # the export, when the run was asked to save

    @property
    def model(self) -> Any:
        return self.loaded.model
