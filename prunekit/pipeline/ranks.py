"""A run under many processes (``torchrun``): which world it is, which device each rank computes
on, and what only rank 0 does.

Every rank loads (or streams) the model and runs the same method on its share of the windows
(``engine/world.py``); the decisions are the same on every rank. Rank 0 alone writes: the run
directory, the checkpoints, the plots, the export and the logs; the others run with no run
directory and no export (the CLI quiets their output: cli/application.py).
"""

from __future__ import annotations

import dataclasses

import torch

from prunekit.engine.world import World, join_world
from prunekit.launcher import launched
from prunekit.methods.settings import MethodSettings
from prunekit.models.loading import LoadedModel, default_device


def run_world(model: str | LoadedModel, device: str | None, world: World | None) -> World:
    """The caller's ``world``; else a loaded model's own; else the launcher's (one process when
    none launched this one: ``SINGLE``)."""
    if world is not None:
        return world
    if isinstance(model, LoadedModel):
        return model.world or join_world(model.device)
    return join_world(device or default_device())


def rank_device(device: str | None, world: World) -> str | None:
    """The device this rank computes on: under a launcher a bare ``cuda`` (or the default on a
    GPU machine) becomes the rank's own GPU (``LOCAL_RANK``, as torchrun sets it; the one
    ``join_world`` made current), else its rank modulo the host's GPUs."""
    if not world.distributed:
        return device
    chosen = torch.device(device or default_device())
    if chosen.type != "cuda" or chosen.index is not None:
        return device
    launch = launched()
    local = launch.local_rank if launch else world.rank % max(torch.cuda.device_count(), 1)
    return f"cuda:{local}"


def join_run(loaded: LoadedModel, settings: MethodSettings, world: World) -> MethodSettings:
    """Under many processes: ``loaded`` runs in ``world`` (its executors share the windows), and
    the settings this rank's method gets, which let it write only on rank 0 (no run directory
    elsewhere). One process: ``loaded`` keeps its own world, the settings are unchanged."""
    if not world.distributed:
        return settings
    loaded.world = world
    if world.is_main or settings.run_dir is None:
        return settings
    return dataclasses.replace(settings, run_dir=None)


def world_record(world: World) -> dict:
    """report.json's ``distributed``: the world size, the backend, the calibration windows each
    rank ran and what each sent (collectives and payload bytes; a collective: every rank calls
    it)."""
    ran = world.gather({world.rank: (sorted(world.ran), dict(world.traffic))})
    return {
        "world_size": world.size,
        "backend": world.backend,
        "windows_by_rank": [ran[rank][0] for rank in range(world.size)],
        "sent_by_rank": [ran[rank][1] for rank in range(world.size)],
    }
