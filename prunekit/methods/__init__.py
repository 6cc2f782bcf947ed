"""Pruning methods. Each registers itself by name (see registry.py)."""

from prunekit.methods.registry import Method, PruneSettings, all_methods, get_method, register

__all__ = ["Method", "PruneSettings", "all_methods", "get_method", "register"]
