"""The three hooks of a family's GGUF writer, and the lookup of a family's hooks.

A family's GGUF knowledge (the llama.cpp architecture, what it can express and what is
refused, its hyper-parameters and tensors) is named by its record's ``gguf``
(``prunekit.models.families``): here the modules ``llama`` (with ``layout`` and ``tensors``) for
the Llama family and Qwen2 and ``gemma3`` for Gemma 3; a family may keep it in its own record's
module (Qwen3). The writer only calls the three functions of a ``GgufFamily``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gguf
from torch import nn

from prunekit.errors import UnsupportedArchitectureError
from prunekit.export.gguf.layout import GgufLayout
from prunekit.export.gguf.tensors import TensorSpec
from prunekit.models.adapters import Adapter
from prunekit.models.families import FAMILIES, family_named


@dataclass(frozen=True)
class GgufFamily:
    # The file's layout, raising a one-line ExportError / UnsupportedArchitectureError for
    # what llama.cpp cannot run.
    plan: Callable[[nn.Module, Adapter], GgufLayout]
    # The architecture's own hyper-parameters (the writer adds the shared ones).
    add_hparams: Callable[[gguf.GGUFWriter, Any, GgufLayout], None]
    tensors: Callable[[nn.Module, Adapter, GgufLayout], Iterator[TensorSpec]]


def gguf_family(family: str) -> GgufFamily:
    """The GGUF hooks of an adapter family; a one-line refusal for families without them."""
    load = family_named(family).gguf
    if load is None:
        names = [f.display_name or f.name for f in FAMILIES if f.gguf is not None]
        raise UnsupportedArchitectureError(
            f"GGUF export supports {', '.join(names[:-1])} and {names[-1]}, not {family!r}"
        )
    return load()
