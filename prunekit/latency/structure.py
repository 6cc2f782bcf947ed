"""The shape of a (pruned) model as the latency model sees it: per layer, what is left.

This is the contract between the latency table (``prunekit.latency.table``: what each shape costs
on this machine) and the speed-target search (``prunekit.speedtarget``: which shape to build). It
holds no weights, so the search can price a plan before building it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prunekit.models.loading import LoadedModel


@dataclass(frozen=True)
class LayerStructure:
    """One decoder layer after pruning. A removed block has 0 heads / 0 MLP width."""

    attn_heads: int  # query heads (0: the attention block is removed)
    kv_heads: int  # key/value heads (0 with attn_heads == 0)
    head_dim: int  # query/key head size
    v_head_dim: int  # value channels per KV head (FASP narrows them; head_dim when dense)
    mlp_width: int  # intermediate channels (0: the MLP block is removed)

    @property
    def has_attn(self) -> bool:
        return self.attn_heads > 0

    @property
    def has_mlp(self) -> bool:
        return self.mlp_width > 0


@dataclass(frozen=True)
class ModelStructure:
    """Every remaining layer in order (a layer with neither block is not listed)."""

    layers: tuple[LayerStructure, ...]
    hidden_size: int
    vocab_size: int

    def with_layer(self, index: int, **changes: int) -> ModelStructure:
        """A copy with layer ``index`` changed (e.g. ``mlp_width=0`` removes its MLP)."""
        layers = list(self.layers)
        layers[index] = replace(layers[index], **changes)
        return replace(self, layers=tuple(layers))


def structure_of(loaded: LoadedModel) -> ModelStructure:
    """The shape ``loaded``'s modules actually have: removed blocks, narrowed MLPs and values.

    Read through the family adapter (``prunekit.export.per_layer.describe_layers``), so a stock
    model, a depth- or width-pruned one in memory, and a reloaded export of either format alike
    describe themselves.
    """
    from prunekit.export.per_layer import describe_layers

    model = loaded.model
    layers = tuple(
        LayerStructure(
            attn_heads=shape.num_attention_heads or 0,
            kv_heads=shape.num_key_value_heads or 0,
            head_dim=shape.head_dim or 0,
            v_head_dim=shape.v_head_dim or 0,
            mlp_width=shape.intermediate_size or 0,
        )
        for shape in describe_layers(model, loaded.adapter)
        if shape.has_attn or shape.has_mlp
    )
    return ModelStructure(
        layers=layers, hidden_size=model.config.hidden_size, vocab_size=model.config.vocab_size
    )
