"""Tensor storage types: the requested one for matrices, f32 for vectors (as llama.cpp does).

A q8_0 matrix needs rows that are a whole number of 32-value blocks; a row length that is not
(a FASP MLP width, say) falls back to f16 for that tensor, and the report lists it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType, LlamaFileType
from gguf.quants import quant_shape_to_byte_shape, quantize

from prunekit.errors import ExportError

Q = GGMLQuantizationType
GGUF_TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
FILE_TYPES = {
    "f32": LlamaFileType.ALL_F32,
    "f16": LlamaFileType.MOSTLY_F16,
    "bf16": LlamaFileType.MOSTLY_BF16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
}
Q8_0_BLOCK = 32


def check_gguf_type(name: str) -> str:
    if name not in GGUF_TYPES:
        raise ExportError(f"unknown --gguf-type {name!r}; use {', '.join(GGUF_TYPES)}")
    return name


def storage_type(shape: tuple[int, ...], requested: str) -> GGMLQuantizationType:
    """The type a tensor of ``shape`` (torch order) is stored in."""
    if len(shape) < 2:
        return Q.F32
    qtype = GGUF_TYPES[requested]
    if qtype == Q.Q8_0 and shape[-1] % Q8_0_BLOCK:
        return Q.F16
    return qtype


@dataclass(frozen=True)
class StoredInfo:
    """What the GGUF header says about a tensor before its data is written."""

    shape: tuple[int, ...]  # as GGUFWriter.add_tensor_info takes it (bytes for block types)
    dtype: type
    nbytes: int


def stored_info(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> StoredInfo:
    count = int(np.prod(shape))
    if qtype == Q.F32:
        return StoredInfo(shape, np.float32, 4 * count)
    if qtype == Q.F16:
        return StoredInfo(shape, np.float16, 2 * count)
    if qtype == Q.BF16:
        return StoredInfo(shape, np.uint16, 2 * count)
    byte_shape = quant_shape_to_byte_shape(shape, qtype)
    return StoredInfo(byte_shape, np.uint8, int(np.prod(byte_shape)))


def encode(tensor: torch.Tensor, qtype: GGMLQuantizationType) -> np.ndarray:
    """float32 torch tensor -> the bytes GGUF stores for ``qtype`` (numpy, C order)."""
    data = tensor.detach().to(torch.float32).contiguous()
    if qtype == Q.F32:
        return data.numpy()
    if qtype == Q.F16:
        return data.to(torch.float16).numpy()
    if qtype == Q.BF16:  # round to nearest even, as torch does
        return data.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return quantize(data.numpy(), qtype)
