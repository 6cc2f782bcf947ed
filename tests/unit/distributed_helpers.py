"""Run a function on several gloo ranks (spawned processes on this machine) and collect results.

One spawn costs each rank an import of torch and transformers (seconds), so a test module runs
all its cases in one ``run_ranks`` call (a module fixture) and compares afterwards. Each rank
gets one thread: the ranks share the machine's cores.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import tempfile
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from prunekit.engine.world import World

TIMEOUT = timedelta(seconds=120)


def run_ranks(size: int, function: Callable[..., Any], *args: Any) -> list[Any]:
    """``function(world, *args)`` on ``size`` gloo ranks; each rank's result, in rank order.
    ``function`` must be importable (a module-level function): the ranks are spawned. A rank
    that raised re-raises here, with its traceback in the message."""
    results = start_ranks(size, function, *args)
    for rank, outcome in enumerate(results):
        if isinstance(outcome, Failed):
            raise AssertionError(f"rank {rank} failed:\n{outcome.text}")
    return results


def start_ranks(
    size: int, function: Callable[..., Any], *args: Any, timeout: timedelta = TIMEOUT
) -> list[Any]:
    """Each rank's result, or ``Failed`` (its traceback, or the exit code of a rank that died):
    one rank's failure does not stop the others, so a test sees what they did about it."""
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="prunekit-ranks-") as scratch:
        scratch_dir = Path(scratch)
        processes = [
            context.Process(target=_rank_main, args=(rank, size, scratch, timeout, function, args))
            for rank in range(size)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=timeout.total_seconds() * 3)
            if process.is_alive():
                process.kill()
                process.join()
        results = []
        for rank, process in enumerate(processes):
            path = scratch_dir / f"rank{rank}.pkl"
            if path.is_file():
                results.append(pickle.loads(path.read_bytes()))
            else:
                results.append(Failed(f"exited with code {process.exitcode}"))
        return results


class Failed:
    def __init__(self, text: str) -> None:
        self.text = text


def _rank_main(
    rank: int, size: int, scratch: str, timeout: timedelta, function: Callable, args: tuple
) -> None:
    os.environ.setdefault("PRUNEKIT_PROGRESS", "0")
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"file://{scratch}/store",
        rank=rank,
        world_size=size,
        timeout=timeout,
    )
    try:
        world = World(rank=rank, size=size, backend="gloo")
        try:
            outcome = function(world, *args)
        except Exception:  # reported by the parent, with the rank's traceback
            outcome = Failed(traceback.format_exc())
        (Path(scratch) / f"rank{rank}.pkl").write_bytes(pickle.dumps(outcome))
    finally:
        torch.distributed.destroy_process_group()
