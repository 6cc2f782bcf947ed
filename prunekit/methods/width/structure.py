"""The prunable units of a model's layers and what each costs in parameters.

Used to turn a target ``ratio_total`` into a column sparsity, and by FLAP to weigh its global
threshold. Also checks, before any work, that every layer has the coupled structure we prune.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from prunekit.errors import UnsupportedArchitectureError
from prunekit.models.adapters import AttentionChannels, MLPChannels
from prunekit.models.loading import LoadedModel


@dataclass(frozen=True)
class LayerUnits:
    """Widths of one layer's prunable groups and the parameters one unit of each carries."""

    mlp_width: int
    mlp_unit_params: int  # one intermediate channel: producer rows (+ biases) + consumer column
    num_kv_heads: int
    v_head_dim: int
    value_unit_params: int  # one value channel: v_proj row (+ bias) + its o_proj columns
    group_unit_params: int  # one kv group: q/k/v rows (+ biases) + o_proj columns


def _bias(linear: nn.Linear) -> int:
    return 1 if linear.bias is not None else 0


def mlp_unit_params(mlp: MLPChannels) -> int:
    rows = sum(p.in_features + _bias(p) for p in mlp.producers)
    return rows + mlp.consumer.out_features


def value_unit_params(attn: AttentionChannels) -> int:
    return (
        attn.v_proj.in_features
        + _bias(attn.v_proj)
        + attn.queries_per_kv * attn.o_proj.out_features
    )


def group_unit_params(attn: AttentionChannels) -> int:
    q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
    per_kv = attn.queries_per_kv
    return (
        per_kv * attn.head_dim * (q.in_features + _bias(q))
        + attn.head_dim * (k.in_features + _bias(k))
        + attn.v_head_dim * (v.in_features + _bias(v))
        + per_kv * attn.v_head_dim * attn.o_proj.out_features
    )


def layer_units(loaded: LoadedModel) -> list[LayerUnits]:
    """Every layer's units; a clear error naming the module of a layer that is not coupled.

    A block a depth stage removed (a combined plan) has no units: its widths and unit
    parameters are 0, so no sparsity removes anything from it."""
    model, adapter = loaded.model, loaded.adapter
    units = []
    for index, layer in enumerate(adapter.layers(model)):
        mlp, attn = _channels(loaded, index, layer)
        units.append(
            LayerUnits(
                mlp_width=mlp.width if mlp else 0,
                mlp_unit_params=mlp_unit_params(mlp) if mlp else 0,
                num_kv_heads=attn.num_kv_heads if attn else 0,
                v_head_dim=attn.v_head_dim if attn else 0,
                value_unit_params=value_unit_params(attn) if attn else 0,
                group_unit_params=group_unit_params(attn) if attn else 0,
            )
        )
    return units


def _channels(
    loaded: LoadedModel, index: int, layer: nn.Module
) -> tuple[MLPChannels | None, AttentionChannels | None]:
    """The layer's coupled MLP and attention channels (None for a block depth pruning removed)."""
    adapter = loaded.adapter
    where = f"{adapter.family} layer {index}"
    has_mlp, has_attn = adapter.has_block(layer, "mlp"), adapter.has_block(layer, "attn")
    try:
        mlp = adapter.mlp_channels(layer) if has_mlp else None
        attn = adapter.attention_channels(layer, loaded.model.config) if has_attn else None
    except AttributeError as exc:
        raise UnsupportedArchitectureError(
            f"{where} lacks the coupled modules width pruning needs: {exc}"
        ) from None
    for producer in mlp.producers if mlp else ():
        if producer.out_features != mlp.width:
            raise UnsupportedArchitectureError(
                f"{where}: MLP producer {producer} has {producer.out_features} rows but the "
                f"consumer {mlp.consumer} reads {mlp.width} columns: not a coupled structure"
            )
    if attn is not None and (
        attn.num_heads % attn.num_kv_heads
        or attn.v_proj.out_features != attn.num_kv_heads * attn.v_head_dim
        or attn.o_proj.in_features != attn.num_heads * attn.v_head_dim
    ):
        raise UnsupportedArchitectureError(
            f"{where}: v_proj {tuple(attn.v_proj.weight.shape)} and o_proj "
            f"{tuple(attn.o_proj.weight.shape)} do not couple over {attn.num_heads} query / "
            f"{attn.num_kv_heads} kv heads"
        )
    return mlp, attn
