"""Adapter registry: model_type -> the adapter that knows that family."""

from __future__ import annotations

from typing import Any

from prunekit.errors import UnsupportedArchitectureError
from prunekit.models.adapters.base import (
    BLOCK_KINDS,
    Adapter,
    AttentionChannels,
    BlockKind,
    BlockRef,
    MLPChannels,
)
from prunekit.models.adapters.gemma3 import Gemma3Adapter
from prunekit.models.adapters.llama import LlamaAdapter, Qwen2Adapter
from prunekit.models.adapters.opt import OPTAdapter

ADAPTERS: tuple[type[Adapter], ...] = (LlamaAdapter, Qwen2Adapter, OPTAdapter, Gemma3Adapter)
_BY_MODEL_TYPE = {mt: cls for cls in ADAPTERS for mt in cls.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def adapter_for_config(config: Any) -> Adapter:
    """The adapter for a transformers config; a clear error for families prunekit lacks."""
    model_type = getattr(config, "model_type", None)
    cls = _BY_MODEL_TYPE.get(model_type)
    if cls is None:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not supported; supported: "
            + ", ".join(supported_model_types())
        )
    adapter = cls()
    adapter.check_supported(config)
    return adapter


def adapter_for(model: Any) -> Adapter:
    return adapter_for_config(model.config)


__all__ = [
    "ADAPTERS",
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
