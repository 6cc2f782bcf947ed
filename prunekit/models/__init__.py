"""Model loading and the per-family adapters."""

from prunekit.models.adapters import adapter_for, adapter_for_config, supported_model_types
from prunekit.models.lazy import LazyModel
from prunekit.models.loading import (
    ALIASES,
    LoadedModel,
    count_parameters,
    from_model,
    load_model,
    resolve_model_dir,
)

__all__ = [
    "ALIASES",
    "LazyModel",
    "LoadedModel",
    "adapter_for",
    "adapter_for_config",
    "count_parameters",
    "from_model",
    "load_model",
    "resolve_model_dir",
    "supported_model_types",
]
