"""The vocabulary every engine pass declares its memory in: a request (``MemorySettings``), named
terms (``MemoryTerm``), the phases they are held in, and a pass's declaration (``PassMemory``).

Each pass declares its own terms beside its code (``engine/residency.py``: weights resident or
streamed, the export sink; ``engine/sequential.py``: the width statistics, replay, restoration
and slicing; ``engine/chunking.py``: the depth branches, one-shot scores and the whole-layer
forward); ``engine/passes.py`` names them; a method's record lists the passes it runs
(``Method.passes``) and ``prunekit.memory.plan_memory`` adds up what they declare. Nothing here
reads a weight: shapes come from the config (``prunekit.models.shapes``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prunekit.errors import SettingsError
from prunekit.models.shapes import ModelShapes

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}

# Phases: terms of one phase are held together; phases do not overlap. ALWAYS terms are held
# from the start of the run to its end.
ALWAYS = "whole run"
START = "start"  # the weight fingerprint, the loading of an in-memory model
EMBEDDING = "embedding"
ATTENTION = "attention block"
MLP = "MLP block"
LM_HEAD = "head"  # the LM head (the logits, or its copy to the export)
SEARCH = "search"  # a depth pass over chunks of windows
EXPORT = "export"  # the streamed copy of the model a depth plan leaves, through the sink


@dataclass(frozen=True)
class MemorySettings:
    """What a run is asked to do, as far as its memory goes (the request every pass sizes)."""

    method: str = "fasp"
    streamed: bool = False
    n_samples: int = 16
    seqlen: int = 1024
    dtype: str = "bf16"
    batch_size: int = 1
    device: str = "cpu"  # cpu, or cuda[:i]: where the model computes
    sparsity: float = 0.2  # fraction of columns removed (sizes the restoration and slicing)
    targets: tuple[str, ...] = ("mlp", "attn")
    max_shard_size: int = 2 * 10**9  # the export's shard size (ShardWriter's default "2GB")
    attn_implementation: str = "sdpa"
    # Calibration hidden states kept on the host, one batch at a time on the device (GPU only).
    offload_activations: bool = False
    # Rows of the embedding/head read at a time where a streamed run reads them whole otherwise
    # (the weight fingerprint): bytes of one row slice.
    row_slice_bytes: int = 64 * 2**20  # DEFAULT_ROW_SLICE_BYTES
    # Processes sharing the calibration windows (torchrun): each holds its share's states.
    nproc: int = 1

    @property
    def rank_samples(self) -> int:
        """Windows the busiest rank holds: its share of the fixed batches (engine/world.py)."""
        batches = -(-self.n_samples // self.batch_size)
        return min(self.n_samples, -(-batches // self.nproc) * self.batch_size)

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def compute(self) -> str:
        """Where the model computes, as a term's ``where``: the host on a CPU."""
        return "device" if self.on_gpu else "host"

    @property
    def item(self) -> int:
        """Bytes of one value in the compute dtype."""
        return dtype_bytes(self.dtype)


@dataclass(frozen=True)
class MemoryTerm:
    name: str
    bytes: int
    where: str  # "host" or "device"
    phase: str  # ALWAYS, or the phase holding it
    note: str


# (the model's shapes, the request) -> the terms a pass holds
TermsOf = Callable[[ModelShapes, MemorySettings], list[MemoryTerm]]


@dataclass(frozen=True)
class PassMemory:
    """One engine pass's memory declaration.

    ``terms``: what the pass itself holds (states, statistics, activations). ``layer_phases``:
    the phases in which a streamed run has one decoder layer onloaded for it (the residency adds
    that weight); ``sink_phases``: the phases in which a streamed run's export sink holds its
    shard buffer for it (the width loop writes each layer as it finishes; a depth plan's model
    is copied after the search)."""

    terms: TermsOf
    layer_phases: tuple[str, ...] = ()
    sink_phases: tuple[str, ...] = ()


def dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise SettingsError(f"--dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    return DTYPE_BYTES[dtype]


def layer_context_bytes(s: ModelShapes, settings: MemorySettings) -> int:
    """``engine.layerwise.capture_layer_context``: the rotary cos/sin tables (2 × seqlen ×
    head_dim, one set per rotary kind) shared by every layer, and with eager attention the
    seqlen² mask (one per mask kind); SDPA needs no mask tensor."""
    b = settings.item
    kinds = s.attention_kinds  # Gemma 3: local and global rotary tables and masks
    rotary = kinds * 2 * settings.seqlen * s.head_dim * b if s.rotary else 0
    mask = kinds * settings.seqlen**2 * b if settings.attn_implementation == "eager" else 0
    return rotary + mask


def layer_context_term(s: ModelShapes, settings: MemorySettings) -> MemoryTerm:
    bytes_ = layer_context_bytes(s, settings)
    return MemoryTerm("layer kwargs", bytes_, settings.compute, ALWAYS, "rotary, mask")
