"""Every built-in method by name: importing this module imports the depth and width packages,
whose modules register their methods. ``get_method`` also builds the combined method a name like
``blockpruner+fasp`` spells.

Nothing in prunekit/methods imports this module (the method modules import only
``registry.py``), so it closes no import circle; it is imported by the callers that look a
method up (the API, the CLI commands, the speed target), inside functions where import time
matters (``import prunekit`` loads no torch)."""

from __future__ import annotations

from prunekit.errors import SettingsError
from prunekit.methods import depth, width  # noqa: F401  (importing registers their methods)
from prunekit.methods.combined import SEPARATOR, combined_method
from prunekit.methods.registry import Method, by_family, registered


def get_method(name: str) -> Method:
    """The registered method ``name``, or the combined method a name like ``blockpruner+fasp``
    spells (built on demand from its two registered parts, methods/combined.py)."""
    methods = registered()
    if name not in methods and SEPARATOR in name:
        return combined_method(name, methods)
    try:
        return methods[name]
    except KeyError:
        raise SettingsError(
            f"unknown method {name!r}; known: {', '.join(sorted(methods)) or '(none yet)'}"
        ) from None


def all_methods() -> list[Method]:
    return by_family(registered().values())
