"""Family registry: model_type -> the record of the family that knows it (``base.Family``).

Adding a family is one module here holding (or importing) its adapter and its record, plus its
line in ``FAMILIES``; the generic code (adapter lookup, memory model, tiny test models, export
formats, GGUF writer) reads the records and needs no edit.
"""

from __future__ import annotations

from typing import Any

from prunekit.errors import UnsupportedArchitectureError
from prunekit.models.families.base import Family
from prunekit.models.families.gemma3 import GEMMA3
from prunekit.models.families.llama import LLAMA, QWEN2
from prunekit.models.families.opt import OPT
from prunekit.models.families.qwen3 import QWEN3
from prunekit.models.shapes import ModelShapes

FAMILIES: tuple[Family, ...] = (LLAMA, QWEN2, OPT, GEMMA3, QWEN3)
_BY_MODEL_TYPE = {mt: f for f in FAMILIES for mt in f.model_types}
_BY_NAME = {f.name: f for f in FAMILIES}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def family_for_model_type(model_type: str | None) -> Family:
    """The record for ``model_type``; a clear error for families prunekit lacks."""
    family = _BY_MODEL_TYPE.get(model_type)  # type: ignore[arg-type]
    if family is None:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not supported; supported: "
            + ", ".join(supported_model_types())
        )
    return family


def family_for_config(config: Any) -> Family:
    return family_for_model_type(getattr(config, "model_type", None))


def model_shapes(config: Any) -> ModelShapes:
    """The shapes of the model ``config`` describes (a supported family; clear error otherwise)."""
    return family_for_config(config).shapes(config)


def family_named(name: str) -> Family:
    """The record of an adapter family name (``Adapter.family``)."""
    return _BY_NAME[name]


__all__ = [
    "model_shapes",
    "FAMILIES",
    "Family",
    "family_for_config",
    "family_for_model_type",
    "family_named",
    "supported_model_types",
]
