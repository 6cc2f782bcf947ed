"""Qwen3 (transformers ``qwen3``): Llama wiring plus per-head RMS norms of queries and keys.

Everything prunekit knows about Qwen3 is in this file:

- the adapter: Llama's blocks and channel groups; queries and keys pass through ``q_norm`` /
  ``k_norm`` (RMS over ``head_dim``, one weight shared by every head) before RoPE. The norms
  act within a head, so value-channel pruning (v_proj rows, o_proj columns) and whole-head
  removal leave them as they are;
- the record: parameter counts (no biases by default, two head_dim-sized norms per attention
  block), a tiny config whose explicit ``head_dim`` (24) is not hidden / heads (16), as in the
  released models (Qwen3-0.6B: 1024 / 16 heads, head_dim 128);
- the heterogeneous export through the Llama shim, told to build the q/k norms (``qk_norm``);
- GGUF as llama.cpp's ``qwen3``: NEOX RoPE (q/k rows as they are), ``attn_q_norm`` /
  ``attn_k_norm`` per layer, one head count and FFN width for every layer. Whole layers removed
  and uniform widths export (narrowed value heads zero-padded, as for ``llama``); single
  removed blocks, per-layer widths, biases and sliding windows are refused, one line each.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.export.shim.spec import LLAMA_SHIM
from prunekit.models.adapters.llama import LlamaAdapter
from prunekit.models.families.base import Family, gguf_module
from prunekit.models.shapes import ModelShapes, gated_shapes

TINY_HEAD_DIM = 24


class Qwen3Adapter(LlamaAdapter):
    family = "qwen3"
    model_types = ("qwen3",)

    def normalize_query_key(
        self, attn: nn.Module, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return attn.q_norm(query), attn.k_norm(key)


def tiny_qwen3() -> Any:
    from transformers import Qwen3Config

    from prunekit.models.tiny_sizes import TINY_COMMON, TINY_GQA

    return Qwen3Config(**TINY_GQA, head_dim=TINY_HEAD_DIM, **TINY_COMMON)


def qwen3_shapes(config: Any) -> ModelShapes:
    return gated_shapes(config, "qwen3", qk_norms=True)


QWEN3 = Family(
    adapter=Qwen3Adapter,
    shapes=qwen3_shapes,
    tiny={"qwen3": tiny_qwen3},
    tiny_norm=(1.0, 0.2),  # norms that are not all ones, so a dropped q/k norm shows
    tiny_matrix=False,  # tests/unit/test_qwen3.py: the family suite's paths, at a fraction
    shim=LLAMA_SHIM,
    shim_settings={"qk_norm": True},
    gguf=gguf_module("prunekit.export.gguf.qwen3"),
    display_name="Qwen3",
)
