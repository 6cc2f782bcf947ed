"""The Llama family (Llama 2/3, Mistral, SmolLM2) and Qwen2: records beside their adapters."""

from __future__ import annotations

from typing import Any

from prunekit.export.shim.spec import LLAMA_SHIM
from prunekit.models.adapters.llama import LlamaAdapter, Qwen2Adapter
from prunekit.models.families.base import Family, gguf_module
from prunekit.models.shapes import ModelShapes, gated_shapes


def tiny_llama() -> Any:
    from transformers import LlamaConfig

    from prunekit.models.tiny_sizes import TINY_COMMON, TINY_GQA

    return LlamaConfig(**TINY_GQA, **TINY_COMMON)


def tiny_mistral() -> Any:
    """Mistral: the sliding window on every layer (8 tokens, shorter than the test sequences)."""
    from transformers import MistralConfig

    from prunekit.models.tiny_sizes import TINY_COMMON, TINY_GQA, TINY_SLIDING_WINDOW

    return MistralConfig(**TINY_GQA, sliding_window=TINY_SLIDING_WINDOW, **TINY_COMMON)


def tiny_qwen2() -> Any:
    from transformers import Qwen2Config

    from prunekit.models.tiny_sizes import TINY_COMMON, TINY_GQA

    return Qwen2Config(**TINY_GQA, **TINY_COMMON)


def qwen2_shapes(config: Any) -> ModelShapes:
    return gated_shapes(config, "qwen2", qkv_bias=True, o_bias=False)  # never an o_proj bias


LLAMA = Family(
    adapter=LlamaAdapter,
    shapes=lambda config: gated_shapes(config, "llama"),
    tiny={"llama": tiny_llama, "mistral": tiny_mistral},
    shim=LLAMA_SHIM,
    gguf=gguf_module("prunekit.export.gguf.llama"),
    display_name="the Llama family",
)
# The shim reads which projections carry biases from the per-layer config, so Qwen2's q/k/v
# biases need no setting of their own.
QWEN2 = Family(
    adapter=Qwen2Adapter,
    shapes=qwen2_shapes,
    tiny={"qwen2": tiny_qwen2},
    shim=LLAMA_SHIM,
    gguf=gguf_module("prunekit.export.gguf.llama"),
    display_name="Qwen2",
)
