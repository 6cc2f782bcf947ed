"""Model loading and the per-family adapters."""

from prunekit.models.adapters import adapter_for, adapter_for_config, supported_model_types
from prunekit.models.loading import (
    ALIASES,
    LoadedModel,
    count_parameters,
    from_model,
    load_model,
)

__all__ = [
    "ALIASES",
    "LoadedModel",
    "adapter_for",
    "adapter_for_config",
    "count_parameters",
    "from_model",
    "load_model",
    "supported_model_types",
]
