"""The streamed export: each part of a lazily loaded model written to the output shards once final.

The engine hands a part over (``prunekit.engine.residency.Streamed``) while it is still onloaded:
a decoder layer right after its last decision, the embeddings once the calibration windows are
embedded, the rest (final norm, positions) and the LM head at the end. The tensors are copied
into a ``ShardWriter`` (at most one shard buffered) and the part is released, so the host never
holds the pruned model. The config, tokenizer and shim are written at the end from the skeleton,
which by then carries every layer's pruned shapes on the meta device (``write_beside_weights``).

A depth-pruned model is written once its search is over (``write_depth_pruned``): each surviving
layer onloaded from the input shards and written under its new number, removed blocks left out;
the surgery then reshapes the skeleton, so the config describes what was written. A residency
without a sink (the depth stage of a streamed combined run that is not the last) writes nothing:
the surgery reshapes the skeleton and the next stage reads the surviving layers from the input
shards (``pipeline/streamed_stages.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn

from prunekit.engine.residency import Streamed
from prunekit.errors import ExportError
from prunekit.export.formats import tensor_shapes
from prunekit.export.shards import ShardWriter
from prunekit.models.adapters import BLOCK_KINDS, BlockRef
from prunekit.models.lazy import EMBEDDINGS, LazyModel, Part


class PartWriter:
    """The sink of a streamed run: a finished part's tensors go to ``writer``."""

    def __init__(self, lazy: LazyModel, writer: ShardWriter):
        self.lazy = lazy
        self.writer = writer
        # What from_pretrained reads: tied duplicates (an LM head tied to the embedding) dropped.
        self.saved_names = set(tensor_shapes(lazy.model))
        self.written: set[str] = set()  # a tied embedding is a tensor of two parts: once

    def __call__(self, part: Part, module: nn.Module) -> None:
        if isinstance(part, int):
            # A pruned layer: its own tensors as they are now (shapes and new biases included).
            # Its name now: an earlier stage of a combined run may have renumbered the layers.
            prefix = _module_name(self.lazy.model, module) + "."
            for name, tensor in module.state_dict(prefix=prefix).items():
                self.writer.add(name, tensor)
            return
        state = self.lazy.model.state_dict(keep_vars=True)  # references, no copies
        for name in self._to_write(part):
            if name in state:
                self.writer.add(name, state[name])
                self.written.add(name)

    def write_from_checkpoint(self, part: Part, row_slice_bytes: int) -> None:
        """Copy a part the engine never changed (the LM head) from the checkpoint to the export a
        row slice at a time: neither the device nor the host holds the whole tensor."""
        for name in self._to_write(part):
            shape = tuple(self.lazy.model.get_parameter(name).shape)
            row_bytes = max(1, math.prod(shape[1:]) * self.lazy.dtype.itemsize)
            rows = max(1, row_slice_bytes // row_bytes)
            slices = (r for _, r in self.lazy.row_slices(name, rows))
            self.writer.add_rows(name, shape, self.lazy.dtype, slices)
            self.written.add(name)

    def _to_write(self, part: Part) -> list[str]:
        """The part's names from_pretrained reads, not written yet (an LM head tied to the
        embedding is the embedding's tensor, already written with it)."""
        return [
            name
            for name in self.lazy.tensor_names(part)
            if name in self.saved_names and name not in self.written
        ]

    def write_layer(self, part: int, new_index: int, layer: nn.Module, skip: set[str]) -> None:
        """Layer ``part``'s tensors under the name of layer ``new_index``, leaving out those of
        the child modules in ``skip`` (a depth-pruned model's removed blocks)."""
        parent = _module_name(self.lazy.model, layer).rpartition(".")[0]
        for name, tensor in layer.state_dict().items():
            if name.split(".", 1)[0] not in skip:
                self.writer.add(f"{parent}.{new_index}.{name}", tensor)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


def write_depth_pruned(residency: Streamed, removed: Iterable[BlockRef]) -> list[int]:
    """Write a depth-pruned streamed model's embeddings and surviving layers; returns the original
    indices of the layers written.

    The rule is the surgery's (``surgery/depth.remove_blocks``): a layer with no block left is not
    written, the others are renumbered in order, and a removed block's modules (its norm
    included) are left out, so the names are the ones the in-memory pruned model saves. The
    final norm and the LM head follow at the end (``Streamed.finish_outside_layers``).
    """
    lazy, sink = residency.lazy, residency.sink
    if sink is not None and not isinstance(sink, PartWriter):
        raise ExportError("a depth-pruned streamed model needs the export's PartWriter sink")
    adapter = lazy.adapter
    gone: dict[int, set[str]] = {}
    for block in removed:
        gone.setdefault(block.layer, set()).add(block.kind)
    if sink is not None:
        with residency.onloaded(EMBEDDINGS):
            residency.finished(EMBEDDINGS, lazy.module(EMBEDDINGS))
    kept: list[int] = []
    for index, layer in enumerate(adapter.layers(lazy.model)):
        kinds = [k for k in BLOCK_KINDS if adapter.has_block(layer, k)]
        dropped = gone.get(index, set())
        if not [k for k in kinds if k not in dropped]:
            continue
        if sink is not None:  # None: a first stage of a combined run; the last one writes
            skip = {name for kind in dropped for name in adapter.block_module_names(kind)}
            with residency.onloaded(index):
                sink.write_layer(index, len(kept), layer, skip)
        kept.append(index)
    return kept
