"""Gemma 3 (transformers ``gemma3_text``) in llama.cpp's ``gemma3`` architecture.

What llama.cpp's gemma3 graph computes (``src/models/gemma3.cpp`` of the llama.cpp that
llama-cpp-python 0.3.36 bundles), and how the pruned model is written so that it computes the
same:

- Norms: llama.cpp's RMS norm multiplies by its weight, Gemma's by ``1 + weight``; every norm
  (the four sandwich norms of a layer, q/k norms, the final norm) is written as ``1 + weight``,
  as llama.cpp's own converter does (``Gemma3Model.norm_shift``).
- RoPE: gemma3 rotates halves (NEOX order), as transformers does: q/k rows are not permuted.
  Sliding layers use ``rope.freq_base_swa``, unscaled; global layers ``rope.freq_base`` with
  the model's linear scaling, if any.
- Sliding window: one flag per layer in ``gemma3.attention.sliding_window_pattern``, a bool
  array (without it llama.cpp assumes every 6th layer global, the unpruned Gemma 3 pattern).
  Whatever pattern is left after layers are removed is written as it is; a model with no
  sliding layer left gets no window at all.
- Query scale: the graph multiplies queries by ``1/sqrt(head size)`` (``1/sqrt(hidden / heads)``
  in a 62-layer file, which it takes for Gemma 3 27B) and reads no scale key; the model scales
  by ``query_pre_attn_scalar ** -0.5``. The ratio is folded into ``attn_q_norm`` (RoPE is a
  rotation, so scaling the normed query before it equals scaling it after) and listed in the
  report's ``adjustments``.
- Embeddings are scaled by ``sqrt(hidden)`` and the MLP is GELU(tanh)-gated inside llama.cpp,
  as in Gemma; a final logit soft-cap is written when the config has one.

llama.cpp's gemma3 has one head count and one FFN width for every layer and runs both blocks
of every layer: whole layers removed and uniform widths export (narrowed value heads
zero-padded as for ``llama``); single removed blocks and per-layer widths are refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import gguf
import torch
from torch import nn

from prunekit.errors import ExportError, UnsupportedArchitectureError
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
    as_f32,
    attention_weights,
    decoder_tensors,
    mlp_weights,
    tensor_spec,
)
from prunekit.export.per_layer import describe_layers
from prunekit.models.adapters import Adapter

ARCH = "gemma3"
# Gemma's RMSNorm scales by (1 + weight); llama.cpp's by weight.
NORM_SHIFT = 1.0
# llama.cpp reads a 62-layer gemma3 file as Gemma 3 27B and scales its queries differently.
LLAMA_CPP_27B_LAYERS = 62
GELU_TANH = "gelu_pytorch_tanh"


@dataclass
class Gemma3Layout(GgufLayout):
    rope_theta: float = 1_000_000.0
    rope_linear_factor: float | None = None  # global layers only
    rope_theta_local: float = 10_000.0
    query_norm_factor: float = 1.0  # folded into attn_q_norm (see the module docstring)
    final_logit_softcap: float | None = None


def rope_parameters(config: Any) -> tuple[dict, dict]:
    """(global, sliding) RoPE parameters, in transformers 5's nested or the older flat layout."""
    params = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in params:
        return dict(params["full_attention"]), dict(params.get("sliding_attention") or {})
    full = dict(getattr(config, "rope_scaling", None) or {})
    full.setdefault("rope_theta", getattr(config, "rope_theta", 1_000_000.0))
    local = {"rope_theta": getattr(config, "rope_local_base_freq", 10_000.0)}
    return full, local


def _rope_kind(params: dict) -> str:
    return params.get("rope_type") or params.get("type") or "default"


def llama_cpp_query_scale(n_layer: int, hidden: int, n_head: int, head_dim: int) -> float:
    """The factor llama.cpp's gemma3 graph multiplies queries by (``f_attention_scale``)."""
    if n_layer == LLAMA_CPP_27B_LAYERS:
        return 1.0 / math.sqrt(hidden // n_head)
    return 1.0 / math.sqrt(head_dim)


def _check_config(config: Any) -> None:
    act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    if act != GELU_TANH:
        raise UnsupportedArchitectureError(f"GGUF gemma3 uses GELU (tanh), not {act!r}")
    if getattr(config, "attn_logit_softcapping", None) is not None:
        raise UnsupportedArchitectureError("GGUF gemma3 has no attention logit soft-capping")
    if getattr(config, "use_bidirectional_attention", False):
        raise UnsupportedArchitectureError("GGUF gemma3 attention is causal, not bidirectional")


def _attention_kwargs(adapter: Adapter, layer: nn.Module, config: Any) -> dict:
    return adapter.attention_call_kwargs(adapter.attention_channels(layer, config).module)


def plan(model: nn.Module, adapter: Adapter) -> Gemma3Layout:
    """The gemma3 file's layout, or a one-line refusal naming what llama.cpp cannot run."""
    config = model.config
    _check_config(config)
    shapes = describe_layers(model, adapter)
    kept = kept_layers(shapes)
    for index, shape in kept:
        check_whole_layers(ARCH, index, shape)
    head_dim = common_head_dim(shapes)
    modules = adapter.layers(model)
    kwargs = [_attention_kwargs(adapter, modules[i], config) for i, _ in kept]
    layers = [
        replace(gguf_layer(i, s, head_dim, first=False), sliding=kw["sliding_window"] is not None)
        for (i, s), kw in zip(kept, kwargs, strict=True)
    ]
    check_one_shape(ARCH, layers)
    windows = sorted({kw["sliding_window"] for kw in kwargs} - {None})
    scales = sorted({kw["scaling"] for kw in kwargs})
    if len(windows) > 1 or len(scales) > 1:
        raise ExportError(
            f"GGUF gemma3 has one sliding window and one query scale, not {windows} / {scales}"
        )
    full, local = rope_parameters(config)
    if _rope_kind(full) not in ("default", "linear") or _rope_kind(local) != "default":
        raise UnsupportedArchitectureError(
            f"GGUF gemma3 writes default or linear RoPE on global layers and default on sliding "
            f"ones, not {_rope_kind(full)!r} / {_rope_kind(local)!r}"
        )
    first = layers[0]
    wanted = scales[0]
    applied = llama_cpp_query_scale(len(layers), config.hidden_size, first.n_head, head_dim)
    factor = wanted / applied
    adjustments = []
    if abs(factor - 1.0) > 1e-7:
        adjustments.append(
            {
                "kind": "query_scale",
                "detail": f"attn_q_norm multiplied by {factor:.6g}: llama.cpp scales queries by "
                f"{applied:.6g}, the model by {wanted:.6g}",
            }
        )
    return Gemma3Layout(
        arch=ARCH,
        head_dim=head_dim,
        layers=layers,
        padding=padding_records(layers, head_dim),
        adjustments=adjustments,
        sliding_window=windows[0] if windows else None,
        rope_theta=float(full.get("rope_theta", 1_000_000.0)),
        rope_linear_factor=float(full["factor"]) if _rope_kind(full) == "linear" else None,
        rope_theta_local=float(local.get("rope_theta", 10_000.0)),
        query_norm_factor=factor,
        final_logit_softcap=getattr(config, "final_logit_softcapping", None),
    )


def add_hparams(writer: gguf.GGUFWriter, config: Any, layout: GgufLayout) -> None:
    assert isinstance(layout, Gemma3Layout)
    first = layout.layers[0]
    writer.add_feed_forward_length(first.n_ff)
    writer.add_head_count(first.n_head)
    writer.add_head_count_kv(first.n_head_kv)
    writer.add_rope_freq_base(layout.rope_theta)
    if layout.rope_linear_factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(layout.rope_linear_factor)
    if layout.sliding_window is not None:
        writer.add_sliding_window(layout.sliding_window)
        writer.add_sliding_window_pattern([g.sliding for g in layout.layers])
        writer.add_rope_freq_base_swa(layout.rope_theta_local)
    if layout.final_logit_softcap is not None:
        writer.add_final_logit_softcapping(float(layout.final_logit_softcap))


def _norm(name: str, weight: torch.Tensor, factor: float = 1.0) -> TensorSpec:
    return tensor_spec(name, tuple(weight.shape), lambda: (as_f32(weight) + NORM_SHIFT) * factor)


def _layer_tensors(
    index: int, g: GgufLayer, layer: nn.Module, adapter: Adapter, config: Any, layout: Gemma3Layout
) -> Iterator[TensorSpec]:
    attn = adapter.attention_channels(layer, config)
    yield _norm(layer_name("attn_norm", index), layer.input_layernorm.weight)
    yield from attention_weights(index, g, attn, layout.head_dim, interleave=False)
    yield _norm(layer_name("q_norm", index), attn.module.q_norm.weight, layout.query_norm_factor)
    yield _norm(layer_name("k_norm", index), attn.module.k_norm.weight)
    yield _norm(layer_name("attn_post_norm", index), layer.post_attention_layernorm.weight)
    yield _norm(layer_name("ffn_norm", index), layer.pre_feedforward_layernorm.weight)
    yield from mlp_weights(index, adapter.mlp_channels(layer))
    yield _norm(layer_name("ffn_post_norm", index), layer.post_feedforward_layernorm.weight)


def model_tensors(model: nn.Module, adapter: Adapter, layout: GgufLayout) -> Iterator[TensorSpec]:
    """Every tensor of the gemma3 file, in file order, each built only when its ``make`` runs
    (a tied head, as in every released Gemma 3, reuses token_embd; an untied one is written)."""
    assert isinstance(layout, Gemma3Layout)

    def one_layer(index: int, g: GgufLayer, layer: nn.Module) -> Iterator[TensorSpec]:
        return _layer_tensors(index, g, layer, adapter, model.config, layout)

    yield from decoder_tensors(model, adapter, layout, one_layer, norm=_norm)


GGUF = GgufFamily(plan=plan, add_hparams=add_hparams, tensors=model_tensors)
