"""prunekit: training-free structured pruning of Hugging Face causal LMs.

The public names are imported on first use (PEP 562), so ``import prunekit`` and the CLI's
``--help`` do not pay for torch and transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "evaluate": "prunekit.api",
    "load": "prunekit.loader",
    "prune": "prunekit.api",
    "PrunekitError": "prunekit.errors",
    "perplexity": "prunekit.evaluation",
    "load_pruned": "prunekit.export.load",
    "LoadedModel": "prunekit.models",
    "from_model": "prunekit.models",
    "load_model": "prunekit.models",
}

__all__ = [
    "LoadedModel",
    "PrunekitError",
    "__version__",
    "evaluate",
    "from_model",
    "load",
    "load_model",
    "load_pruned",
    "perplexity",
    "prune",
]

if TYPE_CHECKING:
    from prunekit.api import evaluate, prune
    from prunekit.errors import PrunekitError
    from prunekit.evaluation import perplexity
    from prunekit.export.load import load_pruned
    from prunekit.loader import load
    from prunekit.models import LoadedModel, from_model, load_model


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'prunekit' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
