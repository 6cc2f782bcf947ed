"""prunekit: training-free structured pruning of Hugging Face causal LMs."""

__version__ = "0.1.0"

from prunekit.api import evaluate, prune
from prunekit.errors import PrunekitError
from prunekit.evaluation import perplexity
from prunekit.export.load import load_pruned
from prunekit.models import LoadedModel, from_model, load_model

__all__ = [
    "LoadedModel",
    "PrunekitError",
    "__version__",
    "evaluate",
    "from_model",
    "load_model",
    "load_pruned",
    "perplexity",
    "prune",
]
