"""Modeling files written next to heterogeneous exports, one per family wiring.

A shim is a self-contained transformers modeling file (torch + transformers only) that builds each
decoder layer from ``config.per_layer_config[i]``. It is copied into the export directory and
named in ``auto_map``; prunekit imports the same file as a module, so both loaders run one code.
Which families a shim covers is decided here, by adapter family, and nowhere else.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from prunekit.errors import UnsupportedArchitectureError

SHIM_DIR = Path(__file__).parent


@dataclass(frozen=True)
class Shim:
    module: str  # file stem, also the module name inside the export directory
    config_class: str
    model_class: str

    @property
    def path(self) -> Path:
        return SHIM_DIR / f"{self.module}.py"

    @property
    def model_type(self) -> str:
        return self.load().__dict__[self.config_class].model_type

    def load(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.module}")

    def classes(self) -> tuple[Any, Any]:
        module = self.load()
        return getattr(module, self.config_class), getattr(module, self.model_class)

    def auto_map(self) -> dict[str, str]:
        return {
            "AutoConfig": f"{self.module}.{self.config_class}",
            "AutoModelForCausalLM": f"{self.module}.{self.model_class}",
        }


LLAMA_SHIM = Shim("modeling_prunekit_llama", "PrunekitLlamaConfig", "PrunekitLlamaForCausalLM")

# Adapter family -> shim. Llama and Qwen2 share the wiring (pre-norm RMSNorm, RoPE, GQA, SwiGLU);
# the shim reads which projections carry biases from the per-layer config, so Qwen2's q/k/v
# biases need no special case.
SHIMS: dict[str, Shim] = {"llama": LLAMA_SHIM, "qwen2": LLAMA_SHIM}


def shim_for_family(family: str) -> Shim:
    try:
        return SHIMS[family]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"{family}: this pruned model has layers of different shapes, and the heterogeneous "
            f"export covers only {', '.join(sorted(SHIMS))} so far; prune whole layers (or keep "
            "widths uniform) to export it in the stock 'hf' format"
        ) from None


def shim_for_model_type(model_type: str) -> Shim | None:
    """The shim whose config declares ``model_type`` (None for stock model types)."""
    for shim in {s.module: s for s in SHIMS.values()}.values():
        if shim.model_type == model_type:
            return shim
    return None
