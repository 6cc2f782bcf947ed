"""The shape of every decoder layer of a (pruned) model, read from its modules.

An export describes what the weights *are*, not what a plan meant them to be: each layer's kept
blocks, MLP width, head counts, value head size and biases are read from the modules through the
adapter. From that description come transformers' sparse ``per_layer_config`` (only what differs
from the global config) and the decision whether the stock architecture can hold the model.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from prunekit.models.adapters import Adapter

# Names the shim uses in ``skip`` for the two residual blocks (its stock child-module names).
SKIP_NAMES = {"attn": "self_attn", "mlp": "mlp"}


@dataclass(frozen=True)
class LayerShape:
    """One decoder layer as it physically is. ``None`` fields belong to a removed block."""

    has_attn: bool
    has_mlp: bool
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    v_head_dim: int | None = None
    qkv_bias: bool | None = None
    o_proj_bias: bool | None = None
    intermediate_size: int | None = None
    gate_up_bias: bool | None = None
    down_proj_bias: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# Per-layer attributes, in the order they are written (skip is handled separately).
ATTN_FIELDS = (
    "num_attention_heads",
    "num_key_value_heads",
    "v_head_dim",
    "qkv_bias",
    "o_proj_bias",
)
MLP_FIELDS = ("intermediate_size", "gate_up_bias", "down_proj_bias")


def describe_layer(layer: nn.Module, adapter: Adapter, config: Any) -> LayerShape:
    """Read one layer's shape from its modules (works for stock and blockwise layers alike)."""
    fields: dict[str, Any] = {
        "has_attn": adapter.has_block(layer, "attn"),
        "has_mlp": adapter.has_block(layer, "mlp"),
    }
    if fields["has_attn"]:
        attn = adapter.attention_channels(layer, config)
        fields.update(
            num_attention_heads=attn.num_heads,
            num_key_value_heads=attn.num_kv_heads,
            head_dim=attn.head_dim,
            v_head_dim=attn.v_head_dim,
            qkv_bias=attn.q_proj.bias is not None,
            o_proj_bias=attn.o_proj.bias is not None,
        )
    if fields["has_mlp"]:
        mlp = adapter.mlp_channels(layer)
        fields.update(
            intermediate_size=mlp.width,
            gate_up_bias=all(p.bias is not None for p in mlp.producers),
            down_proj_bias=mlp.consumer.bias is not None,
        )
    return LayerShape(**fields)


def describe_layers(model: nn.Module, adapter: Adapter) -> list[LayerShape]:
    return [describe_layer(layer, adapter, model.config) for layer in adapter.layers(model)]


def is_uniform(shapes: list[LayerShape]) -> bool:
    """Every layer has both blocks, the same widths and biases, and v_head_dim == head_dim."""
    return (
        len(set(shapes)) <= 1
        and all(s.has_attn and s.has_mlp for s in shapes)
        and all(s.v_head_dim == s.head_dim for s in shapes)
    )


def _most_common(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return Counter(present).most_common(1)[0][0] if present else None


def global_defaults(shapes: list[LayerShape]) -> dict[str, Any]:
    """The value most layers share, per attribute: it goes in the global config."""
    return {
        name: _most_common([getattr(s, name) for s in shapes]) for name in ATTN_FIELDS + MLP_FIELDS
    }


def per_layer_overrides(shapes: list[LayerShape], defaults: dict[str, Any]) -> dict[int, dict]:
    """transformers' sparse ``per_layer_config``: {layer: {attribute: value, "skip": [...]}}."""
    overrides: dict[int, dict] = {}
    for index, shape in enumerate(shapes):
        entry: dict[str, Any] = {}
        kept = {"attn": shape.has_attn, "mlp": shape.has_mlp}
        skip = [SKIP_NAMES[kind] for kind, present in kept.items() if not present]
        if skip:
            entry["skip"] = skip
        for name in (ATTN_FIELDS if shape.has_attn else ()) + (MLP_FIELDS if shape.has_mlp else ()):
            value = getattr(shape, name)
            if value != defaults[name]:
                entry[name] = value
        if entry:
            overrides[index] = entry
    return overrides


def describe_for_report(shapes: list[LayerShape]) -> list[dict]:
    """A compact, human-readable per-layer table for export.json."""
    return [{"layer": i, **s.to_dict()} for i, s in enumerate(shapes)]
