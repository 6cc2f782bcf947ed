"""Pruning methods. Each registers itself by name (registry.py); ``catalogue.py`` imports them
all and finds them by name (``get_method``, ``all_methods``)."""

from prunekit.methods.registry import Method, PruneSettings, register

__all__ = ["Method", "PruneSettings", "register"]
