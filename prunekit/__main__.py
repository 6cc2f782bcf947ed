"""``python -m prunekit``: the console script."""

from prunekit.cli import main

main()
