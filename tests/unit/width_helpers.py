"""Shared helpers of the width tests: settings, prune a tiny model, a masked dense reference."""

from __future__ import annotations

import copy

import torch

from prunekit.methods.catalogue import get_method
from prunekit.methods.settings import MethodSettings
from prunekit.models.adapters import AttentionChannels
from prunekit.models.loading import LoadedModel, from_model
from prunekit.models.tiny import TINY_VOCAB, tiny_model, tiny_tokenizer
from prunekit.plan import PruningPlan
from prunekit.surgery.width import head_columns, value_columns
from tests.unit.settings_helpers import settings_for

IDS = torch.randint(0, TINY_VOCAB, (2, 24), generator=torch.Generator().manual_seed(7))


def width_settings(method: str = "fasp", **overrides) -> MethodSettings:
    """``method``'s settings (validated) from the shared values and ``overrides``."""
    # Uniform widths (one kept_count everywhere) are what these tests assert; FASP's default
    # (cost allocation) is tested in test_width_allocation.py.
    values = dict(sparsity=0.3, n_samples=8, seqlen=64, calib="wikitext2", seed=0)
    values["allocation"] = "uniform"
    values.update(overrides)
    return settings_for(method, **values)


def tiny_loaded(family: str, attn: str | None = None) -> LoadedModel:
    model = tiny_model(family)
    if attn:
        model.set_attn_implementation(attn)
    return from_model(model, tiny_tokenizer(), spec=f"tiny-{family}")


def prune_tiny(
    family: str, method: str, attn: str | None = None, **settings
) -> tuple[LoadedModel, LoadedModel, PruningPlan]:
    """(pruned, untouched dense copy, plan) for a fresh tiny model of ``family``."""
    loaded = tiny_loaded(family, attn)
    dense = from_model(copy.deepcopy(loaded.model), loaded.tokenizer, spec=loaded.spec)
    plan = get_method(method).prune(loaded, width_settings(method, **settings))
    return loaded, dense, plan


def masked_reference(dense: LoadedModel, plan: PruningPlan) -> torch.nn.Module:
    """The dense model with the plan's removed channels zeroed in the consumers (same shapes)."""
    model, adapter = copy.deepcopy(dense.model), dense.adapter
    layers = adapter.layers(model)
    with torch.no_grad():
        for key, entry in plan.kept_channels.items():
            layer = layers[int(key)]
            if "mlp" in entry:
                consumer = adapter.mlp_channels(layer).consumer
                _zero_other_columns(consumer.weight, entry["mlp"])
            attn: AttentionChannels = adapter.attention_channels(layer, model.config)
            if "attn_v" in entry:
                _zero_other_columns(attn.o_proj.weight, value_columns(attn, entry["attn_v"]))
            if "attn_heads" in entry:
                kept = head_columns(attn, entry["attn_heads"], attn.v_head_dim)
                _zero_other_columns(attn.o_proj.weight, kept)
    return model


def _zero_other_columns(weight: torch.Tensor, kept: list[int]) -> None:
    mask = torch.zeros(weight.shape[1], dtype=torch.bool)
    mask[kept] = True
    weight[:, ~mask] = 0.0


@torch.no_grad()
def logits(model: torch.nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits
