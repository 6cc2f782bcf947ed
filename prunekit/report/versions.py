"""Library versions recorded in every report."""

from __future__ import annotations

import importlib.metadata
import platform

import torch


def library_versions() -> dict:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    import prunekit

    return {
        "prunekit": prunekit.__version__,
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "lm-eval": version("lm-eval") or version("lm_eval"),
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
