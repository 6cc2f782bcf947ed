"""Which adapter families the GGUF export writes, and the module that knows each one's layout.

A family's GGUF knowledge (the llama.cpp architecture, what it can express and what is
refused, its hyper-parameters and tensors) lives in one module per family: ``llama`` (with
``layout`` and ``tensors``) for the Llama family and Qwen2, ``gemma3`` for Gemma 3. The writer
only calls the three functions named here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gguf
from torch import nn

from prunekit.errors import UnsupportedArchitectureError
from prunekit.export.gguf import gemma3, llama
from prunekit.export.gguf.layout import GgufLayout
from prunekit.export.gguf.tensors import TensorSpec, model_tensors
from prunekit.models.adapters import Adapter


@dataclass(frozen=True)
class GgufFamily:
    # The file's layout, raising a one-line ExportError / UnsupportedArchitectureError for
    # what llama.cpp cannot run.
    plan: Callable[[nn.Module, Adapter], GgufLayout]
    # The architecture's own hyper-parameters (the writer adds the shared ones).
    add_hparams: Callable[[gguf.GGUFWriter, Any, GgufLayout], None]
    tensors: Callable[[nn.Module, Adapter, GgufLayout], Iterator[TensorSpec]]


LLAMA = GgufFamily(plan=llama.plan, add_hparams=llama.add_hparams, tensors=model_tensors)
GEMMA3 = GgufFamily(plan=gemma3.plan, add_hparams=gemma3.add_hparams, tensors=gemma3.model_tensors)
GGUF_FAMILIES = {"llama": LLAMA, "qwen2": LLAMA, "gemma3": GEMMA3}


def gguf_family(family: str) -> GgufFamily:
    if family not in GGUF_FAMILIES:
        raise UnsupportedArchitectureError(
            f"GGUF export supports the Llama family, Qwen2 and Gemma 3, not {family!r}"
        )
    return GGUF_FAMILIES[family]
