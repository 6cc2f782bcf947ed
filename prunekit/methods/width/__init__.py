"""Width methods (remove coupled channels). Importing this package registers them."""

from prunekit.methods.width import fasp, flap, magnitude, wanda_sp  # noqa: F401
