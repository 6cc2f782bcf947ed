"""What names a shim: its file, its config and model classes (the family records point at one).
Kept apart from the lookups in ``prunekit.export.shim`` so the records can import it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

SHIM_DIR = Path(__file__).parent
_PACKAGE = "prunekit.export.shim"


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
        return importlib.import_module(f"{_PACKAGE}.{self.module}")

    def classes(self) -> tuple[Any, Any]:
        module = self.load()
        return getattr(module, self.config_class), getattr(module, self.model_class)

    def auto_map(self) -> dict[str, str]:
        return {
            "AutoConfig": f"{self.module}.{self.config_class}",
            "AutoModelForCausalLM": f"{self.module}.{self.model_class}",
        }


LLAMA_SHIM = Shim("modeling_prunekit_llama", "PrunekitLlamaConfig", "PrunekitLlamaForCausalLM")
