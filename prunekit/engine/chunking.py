"""What a chunk of windows holds in a layer-major pass, and how many windows a byte budget allows.

The executor (``engine/executor.py``) runs a chunk of windows through every layer before the next
chunk starts, so a streamed model is read once per chunk and the chunk's hidden states are what
grows with it. ``chunk_memory`` is the one estimate of a chunk's memory, from the model's shapes
(the config): the executor sizes its chunks with it (``chunk_windows_for_budget`` for a
whole-layer trunk pass, ``LayerExecutor.chunk_windows`` for the depth branches) and the memory
model predicts the same numbers (the pass declarations below).
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.engine.memory_terms import (
    ALWAYS,
    EXPORT,
    LM_HEAD,
    SEARCH,
    MemorySettings,
    MemoryTerm,
    PassMemory,
    layer_context_term,
)
from prunekit.errors import SettingsError
from prunekit.models.families import model_shapes
from prunekit.models.lazy import LazyModel
from prunekit.models.shapes import ModelShapes

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


def chunk_memory_of(s: ModelShapes, item: int, seqlen: int, batch_size: int) -> ChunkMemory:
    """The memory of a layer-major pass over windows of ``seqlen`` tokens, values of ``item``
    bytes, ``batch_size`` windows per block call.

    Estimates from the shapes, not measurements: the widest linear output of a layer (an MLP's
    intermediate width) bounds the MLP's activations, the attention scores count as
    materialised (eager attention; fused kernels need less). The parts are onloaded one at a
    time: a layer, the embedding (with the small rest), or the final norm and LM head with its
    fp32 copy (``Fp32LmHead``) while the logits are computed.
    """
    hidden, tokens = s.hidden_size, batch_size * seqlen
    head = s.vocab_size * hidden  # the tied head is the embedding's tensor: as many values
    head_fp32 = 0 if item == 4 else head * 4
    weights = max(
        s.layer_params * item,
        (s.embedding_params + s.rest_params) * item,
        (s.rest_params + head) * item + head_fp32,
    )
    widest = max(hidden, s.attn_width, s.intermediate_size)
    scores = batch_size * s.num_heads * seqlen**2 * 4
    layer_work = tokens * (3 * widest + 4 * hidden) * item + scores
    # Logits, their log-softmax and a copy, for one token chunk of one batch (fp32).
    logits = 3 * batch_size * min(LOGIT_TOKENS, seqlen) * s.vocab_size * 4
    return ChunkMemory(
        weights=weights,
        batch_work=max(layer_work, logits) + tokens * hidden * item,
        per_window=seqlen * hidden * item,
    )


def chunk_memory(lazy: LazyModel, seqlen: int, batch_size: int) -> ChunkMemory:
    """``chunk_memory_of`` a lazily loaded model (its config and compute dtype)."""
    return chunk_memory_of(model_shapes(lazy.config), lazy.dtype.itemsize, seqlen, batch_size)


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


# ---- memory terms (engine/memory_terms.py) -------------------------------------------------------
def chunk_terms(
    s: ModelShapes, settings: MemorySettings, states_per_window: int
) -> list[MemoryTerm]:
    """A streamed layer-major pass at its smallest chunk, one batch of windows, holding
    ``states_per_window`` states per window: the chunk grows into whatever a budget leaves (1 GiB
    of states without one), so this is what a budget must at least allow."""
    memory = chunk_memory_of(s, settings.item, settings.seqlen, settings.batch_size)
    states = states_per_window * settings.batch_size * memory.per_window
    compute = settings.compute
    return [
        MemoryTerm(
            "weights (largest part)", memory.weights, compute, SEARCH, "layer, or head + fp32"
        ),
        MemoryTerm("one batch's work", memory.batch_work, compute, SEARCH, "activations, logits"),
        MemoryTerm(
            "calibration states", states, compute, SEARCH, f"{states_per_window}/window, 1 batch"
        ),
        layer_context_term(s, settings),
    ]


def depth_branch_terms(s: ModelShapes, settings: MemorySettings, branches: int) -> list[MemoryTerm]:
    """A depth pass with ``branches`` live branches besides the trunk (``run_chunk``): in memory,
    the cached states (in and out) of every window and one batch's fp32 logits; streamed, a chunk
    of (branches + 2) states per window (``LayerExecutor.chunk_windows``)."""
    if settings.streamed:
        return chunk_terms(s, settings, branches + 2)
    state = settings.n_samples * settings.seqlen * s.hidden_size * settings.item
    logits = settings.batch_size * settings.seqlen * s.vocab_size * 4
    compute = settings.compute
    return [
        MemoryTerm("calibration states", 2 * state, compute, ALWAYS, "cached in and out"),
        MemoryTerm("logits (one batch, fp32)", logits, compute, SEARCH, "LM head output"),
        layer_context_term(s, settings),
    ]


def depth_search_terms(s: ModelShapes, settings: MemorySettings) -> list[MemoryTerm]:
    """The greedy depth search: one branch per candidate block (attention and MLP of every
    layer; a KL criterion keeps the dense finals as one more, within this bound)."""
    return depth_branch_terms(s, settings, 2 * s.num_layers)


def one_shot_terms(s: ModelShapes, settings: MemorySettings) -> list[MemoryTerm]:
    """One-shot depth scores: the trunk alone, each block's inputs and outputs seen once."""
    return depth_branch_terms(s, settings, 0)


def layer_forward_terms(s: ModelShapes, settings: MemorySettings) -> list[MemoryTerm]:
    """The whole-layer trunk pass (``run_layers``: the streamed perplexity): one state per
    window."""
    return chunk_terms(s, settings, 1)


# After a depth decision the streamed model is copied through the export sink, a layer at a time.
DEPTH_SEARCH_MEMORY = PassMemory(depth_search_terms, (EXPORT,), (EXPORT, LM_HEAD))
ONE_SHOT_MEMORY = PassMemory(one_shot_terms, (EXPORT,), (EXPORT, LM_HEAD))
LAYER_FORWARD_MEMORY = PassMemory(layer_forward_terms)
