"""llama.cpp's ``qwen3`` architecture: Llama's tensors plus per-head q/k RMSNorms (the family
record, ``prunekit.models.families.qwen3``, points here). Uniform layers only: whole layers may
be removed and widths narrowed alike (value heads zero-padded); single blocks, per-layer widths,
biases and sliding windows are refused in one line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gguf
from torch import nn

from prunekit.errors import UnsupportedArchitectureError
from prunekit.export.gguf.families import GgufFamily
from prunekit.export.gguf.layout import (
    GgufLayer,
    GgufLayout,
    check_one_shape,
    check_whole_layers,
    common_head_dim,
    gguf_layer,
    kept_layers,
    padding_records,
)
from prunekit.export.gguf.names import layer_name
from prunekit.export.gguf.tensors import (
    TensorSpec,
    attention_weights,
    decoder_tensors,
    mlp_weights,
    norm_spec,
    rope_settings,
)
from prunekit.export.per_layer import describe_layers
from prunekit.models.adapters.base import Adapter

GGUF_ARCH = "qwen3"


def _check_config(config: Any) -> None:
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise UnsupportedArchitectureError(f"GGUF qwen3 uses SiLU, not {act!r}")
    kind = rope_settings(config)["rope_type"]
    if kind not in ("default", "linear"):
        raise UnsupportedArchitectureError(
            f"GGUF qwen3 writes default or linear RoPE, not {kind!r}"
        )


def _check_attention(index: int, attention: dict, head_dim: int) -> None:
    if attention.get("sliding_window") is not None:
        raise UnsupportedArchitectureError(
            f"GGUF qwen3 has no sliding-window attention (layer {index})"
        )
    if abs(attention["scaling"] - head_dim**-0.5) > 1e-6:
        raise UnsupportedArchitectureError(
            f"GGUF qwen3 scales queries by 1/sqrt(head size), not {attention['scaling']}"
        )


def gguf_plan(model: nn.Module, adapter: Adapter) -> GgufLayout:
    """The qwen3 file's layout, or a one-line refusal naming what llama.cpp cannot run."""
    config = model.config
    _check_config(config)
    shapes = describe_layers(model, adapter)
    kept = kept_layers(shapes)
    head_dim = common_head_dim(shapes)
    modules = adapter.layers(model)
    for index, shape in kept:
        check_whole_layers(GGUF_ARCH, index, shape)
        attn = adapter.attention_channels(modules[index], config).module
        _check_attention(index, adapter.attention_call_kwargs(attn), head_dim)
    layers = [gguf_layer(i, s, head_dim, first=False) for i, s in kept]
    check_one_shape(GGUF_ARCH, layers)
    return GgufLayout(
        arch=GGUF_ARCH, head_dim=head_dim, layers=layers, padding=padding_records(layers, head_dim)
    )


def gguf_hparams(writer: gguf.GGUFWriter, config: Any, layout: GgufLayout) -> None:
    first = layout.layers[0]
    writer.add_feed_forward_length(first.n_ff)
    writer.add_head_count(first.n_head)
    writer.add_head_count_kv(first.n_head_kv)
    writer.add_rope_dimension_count(layout.head_dim)
    rope = rope_settings(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


def gguf_tensors(model: nn.Module, adapter: Adapter, layout: GgufLayout) -> Iterator[TensorSpec]:
    """Every tensor of the qwen3 file in file order, each built only when written."""
    config = model.config

    def one_layer(index: int, g: GgufLayer, layer: nn.Module) -> Iterator[TensorSpec]:
        attn = adapter.attention_channels(layer, config)
        yield norm_spec(layer_name("attn_norm", index), layer.input_layernorm.weight)
        # NEOX RoPE rotates halves, as transformers does: q/k rows keep their order.
        yield from attention_weights(index, g, attn, layout.head_dim, interleave=False)
        yield norm_spec(layer_name("q_norm", index), attn.module.q_norm.weight)
        yield norm_spec(layer_name("k_norm", index), attn.module.k_norm.weight)
        yield norm_spec(layer_name("ffn_norm", index), layer.post_attention_layernorm.weight)
        yield from mlp_weights(index, adapter.mlp_channels(layer))

    yield from decoder_tensors(model, adapter, layout, one_layer)


GGUF = GgufFamily(plan=gguf_plan, add_hparams=gguf_hparams, tensors=gguf_tensors)
