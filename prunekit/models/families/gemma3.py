"""Gemma 3 (text): its record. Sandwich and q/k norms, local and global attention layers; the
stock export only (per-layer shapes are refused), GGUF as llama.cpp's ``gemma3``."""

from __future__ import annotations

from typing import Any

from prunekit.models.adapters.gemma3 import Gemma3Adapter
from prunekit.models.families.base import Family, gguf_module
from prunekit.models.shapes import ModelShapes, gated_shapes


def tiny_gemma3() -> Any:
    """Sliding-window and global layers alternating (window 8)."""
    from transformers import Gemma3TextConfig

    from prunekit.models.tiny_sizes import TINY_COMMON, TINY_GQA, TINY_SLIDING_WINDOW

    return Gemma3TextConfig(
        **TINY_GQA,
        head_dim=16,
        sliding_window=TINY_SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"] * 2,
        **TINY_COMMON,
    )


def gemma3_shapes(config: Any) -> ModelShapes:
    return gated_shapes(config, "gemma3", qk_norms=True, sandwich_norms=True, attention_kinds=2)


GEMMA3 = Family(
    adapter=Gemma3Adapter,
    shapes=gemma3_shapes,
    tiny={"gemma3": tiny_gemma3},
    tiny_norm=(0.0, 0.1),  # Gemma norms scale by (1 + w)
    gguf=gguf_module("prunekit.export.gguf.gemma3"),
    display_name="Gemma 3",
)
