"""The residency each stage of a streamed combined method runs under.

A streamed run holds one layer at a time and hands each layer once, final, to the export (the
pipeline's residency and its sink). A combined method prunes the model twice, so the stage
before the last must not write to the export, and the next stage must read what it left:

- a depth stage ends with the surgery on the skeleton (blocks deleted, layers renumbered) and
  changes no weight: it runs without a sink, and the next stage reads the surviving layers from
  the input shards (``LazyModel.follow_skeleton`` finds them under their new names);
- a width stage changes weights (kept channels, restored consumers, biases): its finished
  layers are spilled to temporary shards (beside the export's staging directory when there is
  one) and the next stage reads them from there. The spill is one copy of the layers on disk,
  removed when the stages are over.

The last stage runs under the pipeline's own residency, so each layer reaches the export once,
in its final shape. The combined method is lent ``StreamedStages.run_stage`` as its stage
runner: it wraps ``pipeline.apply.run_stage`` (which carries each stage's decision out).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from prunekit.engine.residency import Streamed
from prunekit.export.shards import ShardWriter
from prunekit.export.streamed import PartWriter
from prunekit.methods.registry import Method
from prunekit.methods.settings import MethodSettings
from prunekit.models.lazy import Part
from prunekit.models.loading import LoadedModel
from prunekit.pipeline.apply import run_method, run_stage
from prunekit.plan import PruningPlan

# A combined method is one depth and one width method (methods/combined.py).
COMBINED_STAGES = 2


def run_streamed_method(
    method: Method, loaded: LoadedModel, settings: MethodSettings
) -> PruningPlan:
    """``pipeline.apply.run_method`` for a streamed model: a combined method's stages each run
    under their own residency."""
    if method.family != "combined":
        return run_method(method, loaded, settings)
    with StreamedStages(loaded, COMBINED_STAGES) as stages:
        return method.prune(loaded, settings, run_stage=stages.run_stage)


class StreamedStages:
    """``with StreamedStages(loaded, n) as stages:`` then ``stages.run_stage`` for each of the
    ``n`` stages in order; the pipeline's residency is back on ``loaded`` and the spill removed
    however the block ends.

    ``n`` None: no stage is the last, so every stage spills and the skeleton follows each one
    (the speed target's trial builds: the pruned layers are read back from the spill to be
    scored inside the block, never written to an export)."""

    def __init__(self, loaded: LoadedModel, count: int | None):
        self.loaded = loaded
        self.count = count
        self.started = 0
        self.final: Streamed = loaded.residency
        self.lazy = self.final.lazy
        self._temporary: tempfile.TemporaryDirectory | None = None
        self._spill: ShardWriter | None = None

    def __enter__(self) -> StreamedStages:
        return self

    def __exit__(self, *exc) -> None:
        self.loaded.residency = self.final
        if self._spill is not None and self._spill.written is None:
            self._spill.abort()
        if self._temporary is not None:
            self._temporary.cleanup()

    def run_stage(
        self, method: Method, loaded: LoadedModel, settings: MethodSettings
    ) -> PruningPlan:
        """A ``StageRunner``: the next stage, under its residency, its decision carried out."""
        self.started += 1
        last = self.started == self.count
        self.begin(method, last)
        plan = run_stage(method, loaded, settings)
        self.end(last)
        return plan

    def begin(self, method: Method, last: bool) -> None:
        """Give ``loaded`` the residency ``method``'s stage runs under."""
        if last:
            self.loaded.residency = self.final
            return
        sink = None
        if method.family == "width":
            self._spill = ShardWriter(
                self._spill_directory(), dtype=self.lazy.dtype, max_shard_size=self._shard_size()
            )
            sink = LayerSpill(PartWriter(self.lazy, self._spill))
        self.loaded.residency = Streamed(
            self.lazy,
            sink,
            row_slice_bytes=self.final.row_slice_bytes,
            offload_activations=self.final.offload_activations,
            scratch_dir=self.final.scratch_dir,
        )

    def end(self, last: bool) -> None:
        """After a stage that is not the last: the skeleton's parts follow what it pruned."""
        if last:
            return
        spill = None
        if self._spill is not None:
            self._spill.close()
            spill = self._spill.directory
        self.lazy.follow_skeleton(spill)

    def _spill_directory(self) -> Path:
        writer = getattr(self.final.sink, "writer", None)  # the export's, when it is a PartWriter
        parent = writer.directory.parent if writer is not None else self.final.scratch_dir
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)  # where rank 0 will stage the export
        self._temporary = tempfile.TemporaryDirectory(prefix=".prunekit-stage-", dir=parent)
        return Path(self._temporary.name)

    def _shard_size(self) -> int | str:
        writer = getattr(self.final.sink, "writer", None)
        return writer.max_shard_size if writer is not None else "1GB"


class LayerSpill:
    """A width stage's sink: its finished layers only (the embeddings and the head are the next
    stage's to write, from the input shards)."""

    def __init__(self, writer: PartWriter):
        self.writer = writer

    def __call__(self, part: Part, module: nn.Module) -> None:
        if isinstance(part, int):
            self.writer(part, module)
