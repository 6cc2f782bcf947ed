"""``python -m prunekit.cli``: the console script."""

from prunekit.cli import main

main()
