"""What a launcher (``torchrun``) told this process: read from the environment, without torch, so
the CLI can ask on every start (``prunekit --help`` imports no torch)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Launch:
    """This process's place among the ones the launcher started."""

    rank: int
    size: int
    local_rank: int  # its GPU on its host (torchrun's LOCAL_RANK)


def launched(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch, when a launcher set the torch.distributed environment for more than one
    process; None otherwise (one process)."""
    environ = os.environ if environ is None else environ
    if not all(name in environ for name in LAUNCHER_VARIABLES):
        return None
    size = int(environ["WORLD_SIZE"])
    if size <= 1:
        return None
    rank = int(environ["RANK"])
    return Launch(rank, size, int(environ.get("LOCAL_RANK", rank)))
