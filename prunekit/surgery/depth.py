"""Physical removal of residual blocks (depth pruning).

A removed block's modules and its norm are deleted. A layer left with no block is deleted and the
layers after it are renumbered, so the KV cache (indexed by ``layer_idx``) and the per-layer config
(``num_hidden_layers``, ``layer_types``) stay consistent and ``generate()`` works. A layer that lost
only one block is replaced by a :class:`BlockwiseDecoderLayer` that keeps the stock child modules
under their stock names, so state_dict keys do not change (the export relies on that).

Because layers are renumbered, anything made on the depth-pruned model (a combined plan's width
stage, its restored weights' module names) refers to the new numbers; ``kept_layers`` in the
config maps them back to the base model's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.errors import PlanError
from prunekit.models.adapters import BLOCK_KINDS, Adapter, BlockKind, BlockRef
from prunekit.models.loading import LoadedModel
from prunekit.plan import PruningPlan

# Where the surviving structure is recorded on the model config (and therefore in config.json).
CONFIG_KEY = "prunekit_depth"


class BlockwiseDecoderLayer(nn.Module):
    """A decoder layer that kept only some of its blocks, computed through the adapter.

    It adopts the stock layer's children under the same attribute names (minus the removed
    block's modules) and its plain attributes (``attention_type``, ``layer_idx``...), so the
    decoder's own loop, the state_dict keys and the adapter's branch functions all still apply.
    """

    def __init__(self, layer: nn.Module, adapter: Adapter, kinds: tuple[BlockKind, ...]) -> None:
        super().__init__()
        removed_names = {
            name
            for kind in BLOCK_KINDS
            if kind not in kinds
            for name in adapter.block_module_names(kind)
        }
        for name, child in layer.named_children():
            if name not in removed_names:
                setattr(self, name, child)
        for key, value in vars(layer).items():
            if not key.startswith("_") and key != "training" and not hasattr(self, key):
                setattr(self, key, value)
        self.kept_kinds = tuple(kinds)
        self.adapter = adapter
        # Only used when the layer has no attention: its cache slot is still filled (see below).
        self.cache_slot = getattr(layer, "layer_idx", None)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if "attn" in self.kept_kinds:
            hidden_states = hidden_states + self.adapter.attn_branch(self, hidden_states, kwargs)
        else:
            self._fill_cache_slot(hidden_states, kwargs)
        if "mlp" in self.kept_kinds:
            hidden_states = hidden_states + self.adapter.mlp_branch(self, hidden_states)
        return hidden_states

    def _fill_cache_slot(self, hidden_states: torch.Tensor, kwargs: dict) -> None:
        """Push tiny placeholder keys/values of the right sequence length into this layer's slot.

        HF caches read sequence lengths from a layer slot (``get_seq_length()`` reads slot 0, the
        masks read the first slot of each attention type). Without this, a model whose layer 0
        lost its attention would restart positions at 0 on every decoding step.
        """
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None or self.cache_slot is None:
            return
        batch, length = hidden_states.shape[:2]
        placeholder = hidden_states.new_zeros(batch, 1, length, 1)
        cache.update(placeholder, placeholder, self.cache_slot)

    def extra_repr(self) -> str:
        return f"kept_kinds={self.kept_kinds}"


@dataclass
class DepthSurgeryResult:
    kept_layers: list[int]  # original indices of the surviving layers, in order
    layer_blocks: list[list[str]]  # the block kinds each surviving layer still has
    removed_parameters: int


def original_layer_indices(model: nn.Module, adapter: Adapter) -> list[int]:
    """Original index of every current layer (identity for a model that was never depth-pruned)."""
    record = getattr(model.config, CONFIG_KEY, None)
    if record:
        return list(record["kept_layers"])
    return list(range(adapter.num_layers(model)))


def block_parameters(model: nn.Module, adapter: Adapter, blocks: Iterable[BlockRef]) -> int:
    """Parameters the given blocks hold in ``model`` (original layer indices)."""
    position = {orig: i for i, orig in enumerate(original_layer_indices(model, adapter))}
    layers = adapter.layers(model)
    return sum(adapter.block_parameter_count(layers[position[b.layer]], b.kind) for b in blocks)


def remove_blocks(loaded: LoadedModel, blocks: Iterable[BlockRef]) -> DepthSurgeryResult:
    """Delete ``blocks`` (original layer indices) from ``loaded.model`` in place."""
    model, adapter = loaded.model, loaded.adapter
    blocks = sorted(set(blocks))
    originals = original_layer_indices(model, adapter)
    position = {orig: i for i, orig in enumerate(originals)}
    layers = adapter.layers(model)
    for block in blocks:
        if block.layer not in position or not adapter.has_block(
            layers[position[block.layer]], block.kind
        ):
            raise PlanError(f"block {block} is not in the model (already removed or out of range)")
    removed_parameters = block_parameters(model, adapter, blocks)

    kept_layers: list[int] = []
    kept_positions: list[int] = []
    layer_blocks: list[list[str]] = []
    new_layers: list[nn.Module] = []
    for pos, (orig, layer) in enumerate(zip(originals, layers, strict=True)):
        gone = {b.kind for b in blocks if b.layer == orig}
        kinds = tuple(k for k in BLOCK_KINDS if adapter.has_block(layer, k) and k not in gone)
        if not kinds:
            continue
        if gone:
            layer = BlockwiseDecoderLayer(layer, adapter, kinds)
        new_layers.append(layer)
        kept_layers.append(orig)
        kept_positions.append(pos)
        layer_blocks.append(list(kinds))

    adapter.decoder(model).layers = nn.ModuleList(new_layers)
    _renumber(new_layers)
    adapter.config_after_layer_removal(model.config, kept_positions)
    setattr(model.config, CONFIG_KEY, {"kept_layers": kept_layers, "layer_blocks": layer_blocks})
    return DepthSurgeryResult(kept_layers, layer_blocks, removed_parameters)


def _renumber(layers: list[nn.Module]) -> None:
    """Every ``layer_idx`` (attention modules, layers, cache slots) becomes the new position."""
    for index, layer in enumerate(layers):
        if isinstance(layer, BlockwiseDecoderLayer):
            layer.cache_slot = index
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index


def apply_depth_plan(loaded: LoadedModel, plan: PruningPlan) -> DepthSurgeryResult:
    """Replay a depth plan's removals on a fresh copy of its base model."""
    try:
        blocks = [BlockRef.parse(text) for text in plan.removed_blocks]
    except ValueError as exc:
        raise PlanError(f"corrupt depth plan: {exc}") from None
    return remove_blocks(loaded, blocks)
