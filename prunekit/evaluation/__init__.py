"""Measuring models: perplexity (zero-shot and speed live beside it)."""

from prunekit.evaluation.perplexity import PerplexityResult, perplexity

__all__ = ["PerplexityResult", "perplexity"]
