"""How many windows a chunk of a whole-layer trunk pass may hold under a byte budget.

The executor (``engine/executor.py``) runs a chunk of windows through every layer before the next
chunk starts, so a streamed model is read once per chunk and the chunk's hidden states are what
grows with it. ``chunk_memory`` estimates the terms of a whole-layer pass (the streamed
perplexity's: ``LayerExecutor.run_layers`` then the fp32 head) from the skeleton's shapes;
``chunk_windows_for_budget`` turns a budget into windows per chunk. (A depth search's chunks hold
several branches' states: ``LayerExecutor.chunk_windows``.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunekit.errors import SettingsError
from prunekit.models.lazy import EMBEDDINGS, HEAD, REST, LazyModel

# Logits are computed this many tokens at a time (``evaluation.nll.DEFAULT_CHUNK``), in fp32.
LOGIT_TOKENS = 128


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
    """The memory terms of a whole-layer trunk pass over windows of ``seqlen`` tokens.

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
    logits = 3 * batch_size * min(LOGIT_TOKENS, seqlen) * head.shape[0] * 4
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
