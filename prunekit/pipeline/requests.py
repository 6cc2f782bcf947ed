"""What a run is asked to do besides pruning (evaluate, save) and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunekit.engine.world import SINGLE, World
from prunekit.export.save import ExportResult
from prunekit.export.shards import DEFAULT_MAX_SHARD_SIZE
from prunekit.memory import MemoryBudget
from prunekit.models.loading import LoadedModel
from prunekit.plan import PruningPlan


@dataclass
class EvalRequest:
    """What an evaluation measures: perplexity datasets and zero-shot tasks, with their settings.
    ``api.evaluate`` builds one from its keywords, ``api.prune`` one for the dense and the
    pruned model; ``pipeline.evaluation`` reads it, in memory or streamed."""

    datasets: list[str] = field(default_factory=list)
    seqlen: int = 2048
    max_windows: int | None = None
    tasks: list[str] = field(default_factory=list)
    limit: int | None = None
    batch_size: int = 16  # zero-shot requests per forward
    task_data: str | Path | None = None
    ppl_batch_size: int = 1  # perplexity windows per forward

    @property
    def wanted(self) -> bool:
        return bool(self.datasets or self.tasks)


@dataclass
class SaveRequest:
    """Where and how the pruned model is exported (``export_model``'s settings)."""

    path: Path
    format: str = "auto"
    dtype: str | None = None
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE


@dataclass
class RunRequest:
    """How a prune run is carried out, whatever the method: where the model is loaded (dtype,
    device, attention), the memory budget, what is evaluated and saved, and the run directory."""

    evals: EvalRequest
    save: SaveRequest | None = None
    out: str | Path | None = None
    overwrite: bool = False
    dtype: str = "auto"
    device: str | None = None
    attn_implementation: str | None = None
    budget: MemoryBudget = field(default_factory=MemoryBudget)
    offload_activations: bool | None = None
    world: World = SINGLE  # the processes sharing the run (pipeline/ranks.py)

    def load_options(self) -> dict[str, Any]:
        """The keyword arguments of ``prunekit.load`` (and of the streamed evaluation)."""
        return {
            "dtype": self.dtype,
            "device": self.device,
            "attn_implementation": self.attn_implementation,
        }


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
