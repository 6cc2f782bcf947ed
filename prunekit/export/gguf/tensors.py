"""The GGUF file's tensors, one at a time, made from the pruned model only when written.

Each ``TensorSpec`` knows its name and shape up front (the header lists every tensor before
any data) and builds its float32 data lazily, so the writer holds one tensor at a time, never a
second copy of the model. q/k rows get llama.cpp's rotary layout (its ``llama``/``deci`` RoPE
rotates adjacent pairs; transformers rotates halves), with *that layer's* head counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.errors import UnsupportedArchitectureError
from prunekit.export.gguf.layout import GgufLayer, GgufLayout
from prunekit.export.gguf.names import global_name, layer_name


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # torch order: (out_features, in_features) for a matrix
    make: Callable[[], torch.Tensor]


def rope_interleave(rows: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows (or bias entries) from rotate-half to adjacent-pair order."""
    head_dim = rows.shape[0] // n_heads
    grouped = rows.reshape(n_heads, 2, head_dim // 2, *rows.shape[1:])
    return grouped.transpose(1, 2).reshape(rows.shape)


def _as_is(rows: torch.Tensor, n_heads: int) -> torch.Tensor:
    return rows


def pad_head_rows(rows: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """v_proj rows (or bias) [n_heads * d, ...] -> [n_heads * head_dim, ...], zeros appended."""
    grouped = rows.reshape(n_heads, -1, *rows.shape[1:])
    padded = rows.new_zeros(n_heads, head_dim, *rows.shape[1:])
    padded[:, : grouped.shape[1]] = grouped
    return padded.reshape(n_heads * head_dim, *rows.shape[1:])


def pad_head_columns(weight: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """o_proj [hidden, n_heads * d] -> [hidden, n_heads * head_dim], zero columns appended."""
    return pad_head_rows(weight.T, n_heads, head_dim).T.contiguous()


def as_f32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(device="cpu", dtype=torch.float32)


def tensor_spec(name: str, shape: tuple[int, ...], make: Callable[[], torch.Tensor]) -> TensorSpec:
    return TensorSpec(name, tuple(int(d) for d in shape), make)


def _constant(name: str, shape: tuple[int, ...], value: float) -> TensorSpec:
    return tensor_spec(name, shape, lambda: torch.full(shape, value, dtype=torch.float32))


def norm_spec(name: str, weight: torch.Tensor) -> TensorSpec:
    """An RMS norm weight as it is (llama.cpp multiplies by it, as Llama does)."""
    return tensor_spec(name, tuple(weight.shape), lambda: as_f32(weight))


def attention_weights(
    index: int, g: GgufLayer, attn: Any, head_dim: int, interleave: bool
) -> Iterator[TensorSpec]:
    """q/k/v/o and their biases; narrowed value heads zero-padded to ``head_dim``. With
    ``interleave`` q/k rows are reordered for llama.cpp's adjacent-pair RoPE (``llama``,
    ``deci``); NEOX-order graphs (``gemma3``) rotate halves, as transformers does."""
    hidden = attn.q_proj.in_features
    q_rows, kv_rows = g.n_head * head_dim, g.n_head_kv * head_dim
    order = rope_interleave if interleave else _as_is
    yield tensor_spec(
        layer_name("q", index),
        (q_rows, hidden),
        lambda: order(as_f32(attn.q_proj.weight), g.n_head),
    )
    yield tensor_spec(
        layer_name("k", index),
        (kv_rows, hidden),
        lambda: order(as_f32(attn.k_proj.weight), g.n_head_kv),
    )
    yield tensor_spec(
        layer_name("v", index),
        (kv_rows, hidden),
        lambda: pad_head_rows(as_f32(attn.v_proj.weight), g.n_head_kv, head_dim),
    )
    if attn.q_proj.bias is not None:
        yield tensor_spec(
            layer_name("q", index, "bias"),
            (q_rows,),
            lambda: order(as_f32(attn.q_proj.bias), g.n_head),
        )
    if attn.k_proj.bias is not None:
        yield tensor_spec(
            layer_name("k", index, "bias"),
            (kv_rows,),
            lambda: order(as_f32(attn.k_proj.bias), g.n_head_kv),
        )
    if attn.v_proj.bias is not None:
        yield tensor_spec(
            layer_name("v", index, "bias"),
            (kv_rows,),
            lambda: pad_head_rows(as_f32(attn.v_proj.bias), g.n_head_kv, head_dim),
        )
    yield tensor_spec(
        layer_name("o", index),
        (hidden, q_rows),
        lambda: pad_head_columns(as_f32(attn.o_proj.weight), g.n_head, head_dim),
    )
    if attn.o_proj.bias is not None:
        yield tensor_spec(
            layer_name("o", index, "bias"), (hidden,), lambda: as_f32(attn.o_proj.bias)
        )


def _kept_attention(
    index: int, layer: nn.Module, g: GgufLayer, attn: Any, head_dim: int
) -> Iterator[TensorSpec]:
    yield norm_spec(layer_name("attn_norm", index), layer.input_layernorm.weight)
    yield from attention_weights(index, g, attn, head_dim, interleave=True)


def _zero_attention(index: int, hidden: int, head_dim: int) -> Iterator[TensorSpec]:
    """One zero query head over one zero KV head: the attention output is exactly zero."""
    yield _constant(layer_name("attn_norm", index), (hidden,), 1.0)
    for role in ("q", "k", "v"):
        yield _constant(layer_name(role, index), (head_dim, hidden), 0.0)
    yield _constant(layer_name("o", index), (hidden, head_dim), 0.0)


def mlp_weights(index: int, mlp: Any) -> Iterator[TensorSpec]:
    """gate, up and down, and their biases."""
    (gate, up), down = mlp.producers, mlp.consumer
    for role, linear in (("gate", gate), ("up", up), ("down", down)):
        yield tensor_spec(
            layer_name(role, index),
            tuple(linear.weight.shape),
            lambda linear=linear: as_f32(linear.weight),
        )
        if linear.bias is not None:
            yield tensor_spec(
                layer_name(role, index, "bias"),
                tuple(linear.bias.shape),
                lambda linear=linear: as_f32(linear.bias),
            )


def _kept_mlp(index: int, layer: nn.Module, mlp: Any) -> Iterator[TensorSpec]:
    yield norm_spec(layer_name("ffn_norm", index), layer.post_attention_layernorm.weight)
    yield from mlp_weights(index, mlp)


def _zero_mlp(index: int, hidden: int, width: int) -> Iterator[TensorSpec]:
    yield _constant(layer_name("ffn_norm", index), (hidden,), 1.0)
    yield _constant(layer_name("gate", index), (width, hidden), 0.0)
    yield _constant(layer_name("up", index), (width, hidden), 0.0)
    yield _constant(layer_name("down", index), (hidden, width), 0.0)


def layer_tensors(
    index: int, g: GgufLayer, layer: nn.Module, adapter: Any, config: Any, head_dim: int
) -> Iterator[TensorSpec]:
    hidden = config.hidden_size
    if g.attn == "kept":
        attn = adapter.attention_channels(layer, config)
        yield from _kept_attention(index, layer, g, attn, head_dim)
    elif g.attn == "zero":
        yield from _zero_attention(index, hidden, head_dim)
    if g.mlp == "kept":
        yield from _kept_mlp(index, layer, adapter.mlp_channels(layer))
    elif g.mlp == "zero":
        yield from _zero_mlp(index, hidden, g.n_ff)


def rope_settings(config: Any) -> dict:
    """theta and scaling of the model's RoPE, transformers 4 and 5 config layouts alike."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in ("default", "linear", "llama3"):
        raise UnsupportedArchitectureError(f"RoPE scaling {kind!r} is not written to GGUF yet")
    return {**params, "rope_type": kind}


def llama3_rope_factors(rope: dict, head_dim: int) -> torch.Tensor:
    """Llama 3.1's per-frequency RoPE divisors (llama.cpp's ``rope_freqs`` tensor)."""
    base = rope["rope_theta"]
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = (old_context / wavelen - low) / (high - low)
    middle = 1 / ((1 - smooth) / factor + smooth)
    factors = torch.where(wavelen < old_context / high, torch.ones_like(wavelen), middle)
    factors = torch.where(wavelen > old_context / low, torch.full_like(wavelen, factor), factors)
    return factors.to(torch.float32)


def decoder_tensors(
    model: nn.Module,
    adapter: Any,
    layout: GgufLayout,
    layer_tensors: Callable[[int, GgufLayer, nn.Module], Iterator[TensorSpec]],
    norm: Callable[[str, torch.Tensor], TensorSpec] = norm_spec,
    extra: Iterable[TensorSpec] = (),
) -> Iterator[TensorSpec]:
    """A decoder's tensors in file order: the embedding, ``extra`` (global tensors such as
    ``rope_freqs``), each GGUF layer's ``layer_tensors(index, g, pruned layer)``, the final
    norm through ``norm``, and the output head unless it is tied to the embedding."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    yield tensor_spec(global_name("embedding"), tuple(embedding.shape), lambda: as_f32(embedding))
    yield from extra
    pruned_layers = adapter.layers(model)
    for index, g in enumerate(layout.layers):
        yield from layer_tensors(index, g, pruned_layers[g.source])
    yield norm(global_name("final_norm"), adapter.decoder(model).norm.weight)
    if head is not embedding:  # a tied head is llama.cpp's default (token_embd reused)
        yield tensor_spec(global_name("lm_head"), tuple(head.shape), lambda: as_f32(head))


def model_tensors(model: nn.Module, adapter: Any, layout: GgufLayout) -> Iterator[TensorSpec]:
    """Every tensor of the ``llama`` / ``deci`` file, in file order, each built only when its
    ``make`` runs."""
    config = model.config
    rope = rope_settings(config)
    extra = []
    if rope["rope_type"] == "llama3":
        factors = llama3_rope_factors(rope, layout.head_dim)
        extra.append(tensor_spec(global_name("rope_freqs"), tuple(factors.shape), lambda: factors))

    def one_layer(index: int, g: GgufLayer, layer: nn.Module) -> Iterator[TensorSpec]:
        return layer_tensors(index, g, layer, adapter, config, layout.head_dim)

    yield from decoder_tensors(model, adapter, layout, one_layer, extra=extra)
