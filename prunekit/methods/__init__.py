"""Pruning methods. Each registers itself by name (registry.py) with its typed settings
(settings.py); ``catalogue.py`` imports them all and finds them by name (``get_method``,
``all_methods``)."""

from prunekit.methods.registry import Method, register
from prunekit.methods.settings import MethodSettings

__all__ = ["Method", "MethodSettings", "register"]
