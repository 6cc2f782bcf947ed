"""BlockPruner and its layer-level relatives (SLEB, layer-PPL): the same greedy ppl search.

BlockPruner's units are single blocks; SLEB and layer-PPL remove whole layers (SLEB protects the
first and last layer unless told otherwise). All share ``greedy_search``; each returns the plan
of the blocks to remove (the pipeline removes them).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

from prunekit.engine.passes import DEPTH_SEARCH
from prunekit.methods.depth.common import (
    DepthSettings,
    checkpointer,
    decided_plan,
    prepare_units,
    resume_state,
    search_settings,
)
from prunekit.methods.depth.search import greedy_search
from prunekit.methods.registry import Method, SearchCheckpoints, register
from prunekit.methods.settings import API_ONLY, BlockCandidates, GreedySearchSettings
from prunekit.models.loading import LoadedModel
from prunekit.plan import PruningPlan

log = logging.getLogger(__name__)

SLEB_DEFAULT_PROTECT = [0, -1]
# BlockPruner without --criterion / --candidates: the divergence from the dense model's
# next-token distribution per removed parameter, over single blocks and whole layers — the
# setting that beat SLEB and ShortGPT in docs/results/depth.md (issue 15). The paper's setting
# is ``PAPER_SETTING``.
BLOCKPRUNER_DEFAULT = {"criterion": "kl-per-param", "candidates": "blocks+layers"}
PAPER_SETTING = {"criterion": "ppl", "candidates": "blocks"}
# SLEB and layer-PPL: the calibration ppl (their papers'); units are layers.
LAYER_DEFAULT = {"criterion": "ppl"}


@dataclass
class LayerSearchSettings(GreedySearchSettings, DepthSettings):
    """SLEB and layer-PPL: a greedy search over whole layers."""


@dataclass
class BlockPrunerSettings(LayerSearchSettings, BlockCandidates):
    """BlockPruner: the greedy search over blocks (and layers, ``--candidates``)."""

    # The naive search (every candidate on every window, no bound): the oracle the fast
    # search is checked against in benchmarks and tests; the same plan, slower.
    naive: bool = field(default=False, metadata=API_ONLY)


def with_defaults(settings, defaults: dict):
    """``settings`` with the method's criterion (and candidate set, where the method has one)
    where the user gave none."""
    chosen = {k: getattr(settings, k) or v for k, v in defaults.items()}
    return dataclasses.replace(settings, **chosen)


def run_greedy(
    loaded: LoadedModel,
    settings: LayerSearchSettings,
    method: str,
    unit: str,
    protect: list[int],
    naive: bool = False,
    checkpoints: SearchCheckpoints | None = None,
) -> PruningPlan:
    """Greedy search over ``unit``s ("block" or "layer"); returns the plan (the model is left
    as it was). Each step goes to ``checkpoints``, and ``settings.resume`` continues from them.

    ``settings.state_bytes`` (the states a chunk of windows may hold) lets tests force the
    two-pass step; ``settings.windows`` (common.half_windows) a search on half the calibration
    (the held-out check).
    """
    setup = prepare_units(loaded, settings, unit, protect, settings.criterion, overlapping=True)
    runner, units, params, target = setup.runner, setup.units, setup.params, setup.target
    # The dtype is part of what decides the scores: a resumed search must use the same one.
    expected = search_settings(
        method, settings, unit=unit, protect_layers=protect, dtype=loaded.dtype_name
    )
    if settings.windows is not None:  # a half of the calibration (the held-out check)
        expected["windows"] = settings.windows
    # Under many processes rank 0 alone reads and writes the checkpoints (its run directory,
    # perhaps on another host than the others'); the other ranks get the resumed state from it.
    world, resumed = runner.world, None
    if world.is_main:
        resumed = resume_state(loaded, settings, checkpoints, method, expected, setup.identity)
    else:
        checkpoints = None
    state = world.broadcast(resumed)
    started = time.perf_counter()
    state = greedy_search(
        runner,
        units,
        params,
        target,
        settings.criterion,
        state=state,
        exhaustive=settings.exhaustive,
        naive=naive,
        on_step=checkpointer(checkpoints, loaded, method, expected, setup.identity),
        desc=f"{method} search",
    )
    evals = sum(step.get("window_evals", 0) for step in state.trajectory)
    naive_evals = sum(step.get("naive_window_evals", 0) for step in state.trajectory)
    bound_evals = sum(step.get("bound_evals", 0) for step in state.trajectory)
    extra = {
        "unit": unit,
        "search": {
            "seconds": time.perf_counter() - started,
            "window_evals": evals,
            "naive_window_evals": naive_evals,
            "bound_evals": bound_evals,
            "calib_tokens": runner.tokens,
            "exhaustive": settings.exhaustive,
            "naive": naive,
            "engine": runner.summary(),
        },
    }
    return decided_plan(loaded, method, expected, state, extra, setup.identity)


def prune_blockpruner(
    loaded: LoadedModel,
    settings: BlockPrunerSettings,
    checkpoints: SearchCheckpoints | None = None,
) -> PruningPlan:
    naive = settings.naive
    settings = with_defaults(settings, BLOCKPRUNER_DEFAULT)
    protect = settings.protect_layers
    return run_greedy(loaded, settings, "blockpruner", "block", protect, naive, checkpoints)


def prune_sleb(
    loaded: LoadedModel,
    settings: LayerSearchSettings,
    checkpoints: SearchCheckpoints | None = None,
) -> PruningPlan:
    protect = settings.protect_layers or SLEB_DEFAULT_PROTECT
    settings = with_defaults(settings, LAYER_DEFAULT)
    return run_greedy(loaded, settings, "sleb", "layer", protect, checkpoints=checkpoints)


def prune_layer_ppl(
    loaded: LoadedModel,
    settings: LayerSearchSettings,
    checkpoints: SearchCheckpoints | None = None,
) -> PruningPlan:
    settings = with_defaults(settings, LAYER_DEFAULT)
    protect = settings.protect_layers
    return run_greedy(loaded, settings, "layer-ppl", "layer", protect, checkpoints=checkpoints)


register(
    Method(
        "blockpruner",
        "depth",
        "BlockPruner: greedy removal of attention/MLP blocks (and layers, --candidates "
        "blocks+layers) by calibration ppl or KL from the dense model (exact, fast)",
        prune_blockpruner,
        settings_type=BlockPrunerSettings,
        resumable=True,
        streams=True,
        passes=(DEPTH_SEARCH,),
    )
)
register(
    Method(
        "sleb",
        "depth",
        "SLEB: greedy removal of whole layers by calibration ppl (first/last layer protected)",
        prune_sleb,
        settings_type=LayerSearchSettings,
        resumable=True,
        streams=True,
        passes=(DEPTH_SEARCH,),
    )
)
register(
    Method(
        "layer-ppl",
        "depth",
        "layer-PPL: greedy removal of whole layers by calibration ppl (no protection)",
        prune_layer_ppl,
        settings_type=LayerSearchSettings,
        resumable=True,
        streams=True,
        passes=(DEPTH_SEARCH,),
    )
)
