"""Adapter lookup: model_type -> the adapter that knows that family (its record is in
``prunekit.models.families``)."""

from __future__ import annotations

from typing import Any

from prunekit.models.adapters.base import (
    BLOCK_KINDS,
    Adapter,
    AttentionChannels,
    BlockKind,
    BlockRef,
    MLPChannels,
)


# The registry is imported when first asked: the family records import the adapter modules.
def supported_model_types() -> list[str]:
    from prunekit.models.families import supported_model_types as model_types

    return model_types()


def adapter_for_config(config: Any) -> Adapter:
    """The adapter for a transformers config; a clear error for families prunekit lacks."""
    from prunekit.models.families import family_for_config

    adapter = family_for_config(config).adapter()
    adapter.check_supported(config)
    return adapter


def adapter_for(model: Any) -> Adapter:
    return adapter_for_config(model.config)


__all__ = [
    "Adapter",
    "AttentionChannels",
    "BLOCK_KINDS",
    "BlockKind",
    "BlockRef",
    "MLPChannels",
    "adapter_for",
    "adapter_for_config",
    "supported_model_types",
]
