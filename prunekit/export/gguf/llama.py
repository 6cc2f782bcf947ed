"""The Llama family (Llama 2/3, Mistral, SmolLM2) and Qwen2 in llama.cpp's ``llama`` / ``deci``.

The layout (which of the two, zero blocks, padded value heads) is ``layout.plan_layout``; the
tensors, with q/k rows in llama.cpp's adjacent-pair RoPE order, are ``tensors.model_tensors``.
Here: the plan with its refusals, and the hyper-parameters only these two architectures read.
"""

from __future__ import annotations

from typing import Any

import gguf
from torch import nn

from prunekit.export.gguf.families import GgufFamily
from prunekit.export.gguf.layout import GgufLayout, check_model_fits, plan_layout
from prunekit.export.gguf.tensors import model_tensors, rope_settings
from prunekit.export.per_layer import describe_layers
from prunekit.models.adapters import Adapter


def plan(model: nn.Module, adapter: Adapter) -> GgufLayout:
    layout = plan_layout(describe_layers(model, adapter))
    check_model_fits(model, adapter, layout)
    return layout


def add_hparams(writer: gguf.GGUFWriter, config: Any, layout: GgufLayout) -> None:
    def per_layer(values: list[int]) -> int | list[int]:
        return values[0] if layout.uniform else values

    layers = layout.layers
    writer.add_feed_forward_length(per_layer([g.n_ff for g in layers]))
    writer.add_head_count(per_layer([g.n_head for g in layers]))
    writer.add_head_count_kv(per_layer([g.n_head_kv for g in layers]))
    writer.add_rope_dimension_count(layout.head_dim)
    rope = rope_settings(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


GGUF = GgufFamily(plan=plan, add_hparams=add_hparams, tensors=model_tensors)
