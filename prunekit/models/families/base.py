"""What a family record is: everything prunekit knows about one model family, in one value.

The adapter says how the modules are wired (``prunekit.models.adapters``). The record beside it
holds the rest that used to be spread over the generic code: the parameter counts the memory
model reads from a config, the tiny test configs, the config attribute holding the MLP width,
the modeling file of the heterogeneous export (and what that file must be told), and the GGUF
writer. Generic code asks the record (``prunekit.models.families.family_for_config``) and never
tests a family's name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prunekit.export.gguf.families import GgufFamily
    from prunekit.export.shim.spec import Shim
    from prunekit.models.adapters.base import Adapter
    from prunekit.models.shapes import ModelShapes


@dataclass(frozen=True)
class Family:
    """One model family: its adapter and what the memory model, tests and exports need of it."""

    adapter: type[Adapter]
    # Parameter shapes from the config alone (the memory model sizes 70B models with it).
    shapes: Callable[[Any], ModelShapes]
    # Tiny random test configs by name (``prunekit.models.tiny``); a family may have variants
    # (Mistral is the Llama family with a sliding window on every layer).
    tiny: Mapping[str, Callable[[], Any]]
    # (mean, std) the tiny model's norm weights are drawn from; None keeps transformers' init.
    # Gemma scales by (1 + w), so its default zeros would make every norm the same.
    tiny_norm: tuple[float, float] | None = None
    # Whether the unit suite's family-parametrized tests (``TINY_FAMILIES``) run on the tiny
    # configs; False: the family's own test file covers it, keeping the suite's time down.
    tiny_matrix: bool = True
    # The config attribute holding the MLP width (the stock export rewrites it).
    mlp_width_attribute: str = "intermediate_size"
    # The modeling file of the heterogeneous (``prunekit``) export; None: stock shapes only.
    shim: Shim | None = None
    # Config keys the shim needs from this family (e.g. per-head q/k norms).
    shim_settings: Mapping[str, Any] = field(default_factory=dict)
    # The GGUF writer, imported only when a GGUF is written (the ``gguf`` package is slow to
    # import); None: no llama.cpp architecture.
    gguf: Callable[[], GgufFamily] | None = None
    # What the GGUF refusal calls this family ("the Llama family", "Gemma 3").
    display_name: str = ""

    @property
    def name(self) -> str:
        return self.adapter.family

    @property
    def model_types(self) -> tuple[str, ...]:
        return self.adapter.model_types


def gguf_module(module: str) -> Callable[[], GgufFamily]:
    """A lazy GGUF writer: the ``GGUF`` of ``module``, imported when first asked for."""

    def load() -> GgufFamily:
        return importlib.import_module(module).GGUF

    return load
