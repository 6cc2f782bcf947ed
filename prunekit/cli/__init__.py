"""The ``prunekit`` command line: one module per command, registered on one typer app.

Heavy libraries (torch, transformers) are imported inside the commands, so ``--help`` and
usage errors answer at once. Errors print one line and exit 2 (``--debug`` for tracebacks).
"""

from __future__ import annotations

from prunekit.cli.application import app, configure_logging, main

# Importing a command module registers its command; this order is the order of `--help`.
# isort: off
from prunekit.cli import eval, prune, report, export  # noqa: F401
from prunekit.cli import bench_speed, profile, plan_memory, demo, methods  # noqa: F401

# isort: on

__all__ = ["app", "configure_logging", "main"]
