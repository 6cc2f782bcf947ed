"""Default compute dtype: bf16 only where the CPU (or GPU) runs it fast.

On CPUs with native bf16 (AVX512-BF16 or AMX) bf16 is 2-3x faster than fp32; on AVX2-only CPUs
it is emulated and ~7x *slower*, so fp32 is the default there.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from prunekit.errors import SettingsError

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


@functools.cache
def cpu_has_native_bf16() -> bool:
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_dtype(device: str = "cpu") -> torch.dtype:
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def resolve_dtype(name: str | torch.dtype | None, device: str = "cpu") -> torch.dtype:
    """'auto'/None -> default_dtype(device); otherwise one of DTYPES."""
    if isinstance(name, torch.dtype):
        return name
    if name is None or name == "auto":
        return default_dtype(device)
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise SettingsError(f"unknown dtype {name!r}; use auto, fp32, bf16 or fp16") from None


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
