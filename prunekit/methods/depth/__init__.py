"""Depth methods (remove whole blocks or layers). Importing this package registers them."""

from prunekit.methods.depth import blockpruner, oneshot  # noqa: F401
