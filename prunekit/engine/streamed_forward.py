"""The model's forward pass layer-major: each decoder layer applied to a chunk of windows at once.

A model too big for memory is evaluated by reading each layer once per *chunk* of windows: the
chunk's embeddings are computed, every layer is onloaded, applied to all of the chunk's hidden
states and released, and the final norm and LM head run last. Only the chunk's hidden states
(and one part's weights) are ever held, so the chunk size is what a memory budget bounds
(``chunk_windows_for_budget``). The per-layer keyword arguments (masks, rotary tables) are
captured once from the model's own forward (``capture_layer_context``) and replayed, so the
arithmetic is the stock forward's, layer for layer.

The engine stops at the final hidden states: what is computed from them (token NLL in fp32,
``prunekit.evaluation.streamed``) is the caller's, handed the states while the head is onloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.engine.layerwise import batches, capture_layer_context, embed, run_layer
from prunekit.engine.residency import Residency
from prunekit.errors import SettingsError
from prunekit.models.lazy import EMBEDDINGS, HEAD, REST, LazyModel
from prunekit.models.loading import LoadedModel
from prunekit.progress import progress

# (token ids of a batch, its final hidden states): what a chunk hands to its consumer.
FinalBatches = Iterator[tuple[torch.Tensor, torch.Tensor]]
ChunkConsumer = Callable[[FinalBatches], None]

# Logits are computed this many tokens at a time (``evaluation.nll.DEFAULT_CHUNK``), in fp32.
_LOGIT_TOKENS = 128


@torch.inference_mode()
def forward_layer_major(
    loaded: LoadedModel,
    windows: torch.Tensor,
    residency: Residency,
    consume: ChunkConsumer,
    *,
    chunk_windows: int,
    batch_size: int = 1,
) -> None:
    """Run ``windows`` ([N, T] token ids) through the model ``chunk_windows`` at a time.

    For each chunk, ``consume`` is called once with the chunk's (ids, final hidden) batches, while
    the final norm and the LM head are onloaded (so it may build its logits from the head). The
    final hidden states are made one batch at a time as ``consume`` iterates.
    """
    if chunk_windows < 1:
        raise ValueError(f"chunk_windows must be positive, got {chunk_windows}")
    model, adapter = loaded.model, loaded.adapter
    layers = adapter.layers(model)
    with residency.onloaded(EMBEDDINGS, REST):
        context = capture_layer_context(model, adapter, windows[:1])
    chunks = list(batches(windows, chunk_windows))
    for chunk in progress(chunks, desc="layer-major forward", unit="chunk"):
        ids = list(batches(chunk, batch_size))
        with residency.onloaded(EMBEDDINGS, REST):
            hidden = [embed(model, adapter, batch) for batch in ids]
        for index, layer in enumerate(layers):
            with residency.onloaded(index):
                for i, states in enumerate(hidden):
                    # In place: the chunk's states exist once, plus one batch's output.
                    hidden[i] = run_layer(layer, states, context.kwargs[index])
        with residency.onloaded(REST, HEAD):
            consume(_final_batches(model, adapter, ids, hidden))


def _final_batches(
    model: nn.Module, adapter, ids: list[torch.Tensor], hidden: list[torch.Tensor]
) -> FinalBatches:
    for i, batch in enumerate(ids):
        states, hidden[i] = hidden[i], None  # the pre-norm states are not needed again
        yield batch, adapter.final_hidden(model, states)


@dataclass(frozen=True)
class ChunkMemory:
    """What a layer-major pass holds, in bytes: fixed (weights, one batch's work) and per window."""

    weights: int  # the largest set of parts onloaded at once (head in fp32 included)
    batch_work: int  # activations inside one layer, and one batch's logits, for one batch
    per_window: int  # one window's hidden states, kept across the layers

    @property
    def fixed(self) -> int:
        return self.weights + self.batch_work


def chunk_memory(lazy: LazyModel, seqlen: int, batch_size: int) -> ChunkMemory:
    """The memory terms of ``forward_layer_major`` over windows of ``seqlen`` tokens.

    Estimates from the skeleton's shapes, not measurements: the widest linear output of a layer
    (an MLP's intermediate width) bounds the MLP's activations, the attention scores count as
    materialised (eager attention; fused kernels need less).
    """
    item = lazy.dtype.itemsize
    hidden_size = lazy.config.hidden_size
    tokens = batch_size * seqlen
    layer_bytes = max(lazy.part_bytes(i) for i in range(lazy.num_layers))
    head = lazy.module(HEAD).weight
    head_fp32 = 0 if lazy.dtype == torch.float32 else head.numel() * 4  # Fp32LmHead's copy
    weights = max(
        layer_bytes,
        lazy.part_bytes(EMBEDDINGS, REST),
        lazy.part_bytes(REST, HEAD) + head_fp32,
    )
    widest = max(m.out_features for m in lazy.module(0).modules() if isinstance(m, nn.Linear))
    heads = lazy.config.num_attention_heads
    layer_work = tokens * (3 * widest + 4 * hidden_size) * item + batch_size * heads * seqlen**2 * 4
    # Logits, their log-softmax and a copy, for one token chunk of one batch (fp32).
    logits = 3 * batch_size * min(_LOGIT_TOKENS, seqlen) * head.shape[0] * 4
    return ChunkMemory(
        weights=weights,
        batch_work=max(layer_work, logits) + tokens * hidden_size * item,
        per_window=seqlen * hidden_size * item,
    )


def chunk_windows_for_budget(
    lazy: LazyModel, seqlen: int, batch_size: int, budget: int, windows: int
) -> int:
    """The most windows per chunk that keep a layer-major pass within ``budget`` bytes (a
    multiple of ``batch_size``, at most ``windows``); a clear error when not even one batch fits.
    """
    memory = chunk_memory(lazy, seqlen, batch_size)
    fitting = (budget - memory.fixed) // memory.per_window
    if fitting < batch_size:
        needed = memory.fixed + batch_size * memory.per_window
        raise SettingsError(
            f"a memory budget of {_mb(budget)} cannot hold one layer-major batch of this model "
            f"(about {_mb(needed)}: the largest part's weights, one batch's activations); "
            "raise --max-memory or lower the batch size or window length"
        )
    return int(min(windows, fitting - fitting % batch_size))


def _mb(size: int) -> str:
    """Bytes in the decimal units --max-memory takes."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 10**3:.0f} KB"
