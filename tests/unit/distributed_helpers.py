"""Run a function on several gloo ranks (spawned processes on this machine) and collect results.

One spawn costs each rank an import of torch and transformers (seconds), so a test module runs
all its cases in one ``run_ranks`` call (a module fixture) and compares afterwards. Each rank
gets one thread: the ranks share the machine's cores.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from prunekit.engine.world import World

TIMEOUT = timedelta(seconds=120)


def run_ranks(size: int, function: Callable[..., Any], *args: Any) -> list[Any]:
    """``function(world, *args)`` on ``size`` gloo ranks; each rank's result, in rank order.
    ``function`` must be importable (a module-level function): the ranks are spawned. A rank
    that raised re-raises here, with its traceback in the message."""
    with tempfile.TemporaryDirectory(prefix="prunekit-ranks-") as scratch:
        scratch_dir = Path(scratch)
        mp.start_processes(
            _rank_main,
            args=(size, str(scratch_dir), function, args),
            nprocs=size,
            start_method="spawn",
            join=True,
        )
        results = []
        for rank in range(size):
            outcome = pickle.loads((scratch_dir / f"rank{rank}.pkl").read_bytes())
            if isinstance(outcome, _Failed):
                raise AssertionError(f"rank {rank} failed:\n{outcome.text}")
            results.append(outcome)
        return results


class _Failed:
    def __init__(self, text: str) -> None:
        self.text = text


def _rank_main(rank: int, size: int, scratch: str, function: Callable, args: tuple) -> None:
    os.environ.setdefault("PRUNEKIT_PROGRESS", "0")
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"file://{scratch}/store",
        rank=rank,
        world_size=size,
        timeout=TIMEOUT,
    )
    try:
        world = World(rank=rank, size=size, backend="gloo")
        try:
            outcome = function(world, *args)
        except Exception:  # reported by the parent, with the rank's traceback
            outcome = _Failed(traceback.format_exc())
        (Path(scratch) / f"rank{rank}.pkl").write_bytes(pickle.dumps(outcome))
    finally:
        torch.distributed.destroy_process_group()
