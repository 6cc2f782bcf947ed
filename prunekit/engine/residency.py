"""Where the model's weights are while the engine runs it: all resident, or streamed part by part.

The layer executor (``prunekit.engine.executor``) asks for a part before it runs it
(``onloaded``) and, in a pass that prunes, says when a part is final (``finished``: pruned,
nothing will change it again). For a model in memory both are no-ops. For a lazily loaded model
(``prunekit.models.lazy.LazyModel``) a part is read from the shards on entry, handed to a sink
when finished (the streamed export writes it to the output shards) and released on exit, so
memory holds about one layer at a time (docs/design.md, "Principles", 7). Parts are the lazy
model's: a layer index, EMBEDDINGS, REST, HEAD.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.engine.memory_terms import (
    ALWAYS,
    EMBEDDING,
    LM_HEAD,
    START,
    MemorySettings,
    MemoryTerm,
)
from prunekit.models.fingerprint import (
    SAMPLE_ELEMENTS,
    fingerprint_of_samples,
    fingerprint_tensors,
    sample_of_row_slices,
)
from prunekit.models.lazy import EMBEDDINGS, HEAD, REST, LazyModel, Part
from prunekit.models.loading import LoadedModel
from prunekit.models.shapes import ModelShapes

# What a streamed run writes once a part is final: (part, the part's module). A sink that also
# has ``write_from_checkpoint(part, row_slice_bytes)`` gets the parts the engine never changes
# (the LM head) without their being onloaded: copied from the checkpoint a row slice at a time.
PartSink = Callable[[Part, nn.Module], None]
DEFAULT_ROW_SLICE_BYTES = 64 * 2**20  # prunekit.memory.DEFAULT_ROW_SLICE_BYTES


class Resident:
    """Every weight is already in memory: nothing to onload, nothing to release.

    ``offload_activations``: the engine keeps the calibration hidden states on the host and
    moves one batch at a time to the compute device (a no-op when that device is the CPU).
    """

    streamed = False

    def __init__(self, offload_activations: bool = False):
        self.offload_activations = offload_activations

    @contextmanager
    def onloaded(self, *parts: Part) -> Iterator[None]:
        yield

    def finished(self, part: Part, module: nn.Module) -> None:
        pass

    def identity(self, loaded: LoadedModel) -> dict:
        """The model's identity (structure and weight fingerprint), as ``loaded.identity()``."""
        return loaded.identity()


class Streamed:
    """Weights read from the checkpoint's shards part by part and released after use.

    A released layer keeps meta tensors of its *pruned* shapes, so at the end the skeleton
    describes the pruned model (what the export's config and shape checks read) while holding
    no weight memory. ``row_slice_bytes`` bounds what the fingerprint and the LM head's copy read
    at a time; ``offload_activations`` as for ``Resident``.
    """

    streamed = True

    def __init__(
        self,
        lazy: LazyModel,
        sink: PartSink | None = None,
        row_slice_bytes: int = DEFAULT_ROW_SLICE_BYTES,
        offload_activations: bool = False,
        scratch_dir: str | Path | None = None,
    ):
        self.lazy = lazy
        self.sink = sink
        self.row_slice_bytes = row_slice_bytes
        self.offload_activations = offload_activations
        # Where a combined method's stages spill pruned layers when the sink names no export
        # directory (a rank other than 0 writes no export): beside the export, not in /tmp.
        self.scratch_dir = scratch_dir
        self.done: set[Part] = set()

    def identity(self, loaded: LoadedModel) -> dict:
        """``loaded.identity()`` with the weight fingerprint read from the shards one row slice
        at a time: the same fingerprint as the model in memory, never a whole part resident."""
        identity = loaded.identity()  # the structure; on meta the fingerprint is None
        identity["fingerprint"] = self.fingerprint()
        return identity

    def fingerprint(self) -> dict:
        model = self.lazy.model
        names = {id(p): name for name, p in model.named_parameters()}
        picks = fingerprint_tensors(model, self.lazy.adapter)
        samples = (
            (
                label,
                tuple(tensor.shape),
                sample_of_row_slices(tuple(tensor.shape), self.row_slices(names[id(tensor)])),
            )
            for label, tensor in picks
        )
        return fingerprint_of_samples(samples, self.lazy.dtype)

    def row_slices(self, name: str) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, rows) of a checkpoint tensor in the compute dtype, on the device, each at
        most ``row_slice_bytes`` (one row at least)."""
        shape = self.lazy.model.get_parameter(name).shape
        row_bytes = max(1, shape[1:].numel() * self.lazy.dtype.itemsize)
        return self.lazy.row_slices(name, max(1, self.row_slice_bytes // row_bytes))

    @contextmanager
    def onloaded(self, *parts: Part) -> Iterator[None]:
        todo = [p for p in parts if p not in self.done]
        self.lazy.onload(*todo)
        shapes = {}
        try:
            yield
        finally:
            for part in todo:
                if part in self.done and isinstance(part, int):  # layers are what gets pruned
                    shapes[part] = _meta_copies(self.lazy.module(part))
            self.lazy.release(*todo)
            for part, meta in shapes.items():
                _install_meta(self.lazy.module(part), meta)

    def finished(self, part: Part, module: nn.Module) -> None:
        """Hand the final part to the sink once (it stays in its pruned shape, on meta)."""
        if part in self.done:
            return
        if self.sink is not None:
            self.sink(part, module)
        self.done.add(part)

    def finish_outside_layers(self) -> None:
        """Write the parts the width engine never changes: what is left beside the layers."""
        write_rows = getattr(self.sink, "write_from_checkpoint", None)
        for part in (EMBEDDINGS, REST, HEAD):
            if part in self.done:
                continue
            if part == HEAD and write_rows is not None:
                write_rows(part, self.row_slice_bytes)
                self.done.add(part)
                continue
            with self.onloaded(part):
                self.finished(part, self.lazy.module(part))


def is_streamed(loaded: LoadedModel) -> bool:
    """Whether the model's weights stay in their shards (a lazily loaded skeleton); a model in
    memory has a ``Resident`` residency or none."""
    return bool(getattr(loaded.residency, "streamed", False))


def _meta_copies(module: nn.Module) -> dict[str, tuple[torch.Tensor, bool]]:
    """Meta stand-ins of a module's parameters in their current (pruned) shapes."""
    return {
        name: (torch.empty(p.shape, dtype=p.dtype, device="meta"), p.requires_grad)
        for name, p in module.named_parameters()
    }


def _install_meta(module: nn.Module, meta: dict[str, Any]) -> None:
    for name, (tensor, requires_grad) in meta.items():
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        owner._parameters[attr] = nn.Parameter(tensor, requires_grad=requires_grad)


Residency = Resident | Streamed


# ---- memory terms -------------------------------------------------------------------------------
# ``models.fingerprint.weight_fingerprint`` samples up to SAMPLE_ELEMENTS values of the embedding
# and of every matrix of the first and last layers, as bf16 samples, their bf16 concatenation and
# the ±1 sketch (int8; each chunk widened to fp32 on its own): about 5 bytes a sampled value.
FINGERPRINT_SAMPLES = SAMPLE_ELEMENTS
FINGERPRINT_BYTES_PER_SAMPLE = 5  # bf16 samples 2 + their concatenation 2 + signs (int8) 1


def weight_terms(
    s: ModelShapes, settings: MemorySettings, layer_phases: tuple[str, ...]
) -> list[MemoryTerm]:
    """What the weights hold: in memory (``load_model``) the whole model in the compute dtype
    for the whole run (read on the host first when it computes on a GPU); streamed (``Streamed``)
    row slices for the fingerprint at the start (``Streamed.identity``: read, then cast), the
    embedding with the small rest while it runs, and one decoder layer in each of
    ``layer_phases``. Both take the fingerprint's samples on the host at the start."""
    b, compute = settings.item, settings.compute
    terms = [
        MemoryTerm(
            "fingerprint samples",
            fingerprint_samples(s) * FINGERPRINT_BYTES_PER_SAMPLE,
            "host",
            START,
            "≤2^18 values per tensor, bf16 + fp32 + sketch",
        )
    ]
    if not settings.streamed:
        model = s.total_params * b
        if compute == "device":  # load_model reads the model on the host, then moves it
            terms.append(MemoryTerm("weights (loading)", model, "host", START, "before .to()"))
        return [MemoryTerm("weights (whole model)", model, compute, ALWAYS, "load_model"), *terms]
    row_slices = 2 * min(settings.row_slice_bytes, s.largest_tensor * b)
    terms.append(
        MemoryTerm("fingerprint row slices", row_slices, compute, START, "read, then cast")
    )
    embedding = s.embedding_params * b
    terms.append(MemoryTerm("weights (embedding)", embedding, compute, EMBEDDING, "+ rest"))
    for phase in layer_phases:
        terms.append(
            MemoryTerm("weights (one layer)", s.layer_params * b, compute, phase, "from the shards")
        )
    return terms


def sink_terms(
    s: ModelShapes, settings: MemorySettings, phases: tuple[str, ...]
) -> list[MemoryTerm]:
    """A streamed run's export sink (``export.shards.ShardWriter`` behind ``Streamed``'s sink):
    the current output shard (up to ``max_shard_size``) and one more tensor's worth while
    safetensors serializes it (a tensor larger than a shard is written alone, one row slice at a
    time), on the host, in each of ``phases``; an untied LM head is copied from the checkpoint
    in row slices (``write_from_checkpoint``), never whole. Nothing in memory."""
    if not settings.streamed:
        return []
    b = settings.item
    shard = min(settings.max_shard_size, s.total_params * b)
    terms = []
    if s.head_params:
        head_slice = min(s.head_params * b, shard)
        terms.append(
            MemoryTerm("LM head row slices", 2 * head_slice, settings.compute, LM_HEAD, "untied")
        )
    buffer = shard + min(s.largest_tensor * b, shard)
    for phase in phases:
        terms.append(
            MemoryTerm("shard buffer", buffer, "host", phase, "one output shard + a tensor copy")
        )
    return terms


def fingerprint_samples(s: ModelShapes) -> int:
    """Sampled values of the fingerprint: the embedding and each matrix of two layers."""
    h, i, q, kv = s.hidden_size, s.intermediate_size, s.attn_width, s.num_kv_heads * s.head_dim
    matrices = [h * q, h * kv, h * kv, q * h] + [h * i] * s.mlp_matrices
    per_layer = sum(min(m, FINGERPRINT_SAMPLES) for m in matrices)
    layers = 1 if s.num_layers == 1 else 2
    return min(s.embedding_params, FINGERPRINT_SAMPLES) + layers * per_layer
