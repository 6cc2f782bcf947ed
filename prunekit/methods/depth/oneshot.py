"""One-shot depth baselines: score every unit once on the dense model, remove the lowest.

- ShortGPT: block influence BI = 1 - mean_t cos(x_t, y_t) of a layer's input x and output y
  (``--angular``: mean_t arccos(cos) / pi).
- RM: relative magnitude mean_t ||f(x_t)|| / ||x_t + f(x_t)|| with f(x) = y - x.
- rm-block / bi-block: the same scores per block (BlockPruner's ablations).
All statistics come from one pass over the calibration windows through the runner. Each
returns the plan of what to remove (the pipeline removes it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from prunekit.engine.passes import ONE_SHOT_SCORES
from prunekit.methods.depth.common import (
    DepthSettings,
    decided_plan,
    one_shot_trajectory,
    prepare_units,
    search_settings,
)
from prunekit.methods.depth.scores import Candidate
from prunekit.methods.depth.search import SearchState, Target, label
from prunekit.methods.registry import Method, register
from prunekit.methods.settings import AngularScore, BlockCandidates
from prunekit.models.loading import LoadedModel
from prunekit.plan import PruningPlan

# (unit input, unit output) [T, d] fp32 -> per-token scores [T]
TokenScore = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class OneShotSettings(DepthSettings):
    """RM: one ranking of whole layers."""


@dataclass
class ShortGptSettings(AngularScore, OneShotSettings):
    """ShortGPT: layers ranked by block influence (1 - cos, or angular)."""


@dataclass
class BlockRankingSettings(OneShotSettings, BlockCandidates):
    """RM per block: blocks ranked by relative magnitude."""


@dataclass
class BiBlockSettings(AngularScore, BlockRankingSettings):
    """BI per block: blocks ranked by block influence."""


def cosine_influence(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.nn.functional.cosine_similarity(x, y, dim=-1)


def angular_influence(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    cos = torch.nn.functional.cosine_similarity(x, y, dim=-1).clamp(-1.0, 1.0)
    return torch.arccos(cos) / math.pi


def relative_magnitude(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (y - x).norm(dim=-1) / y.norm(dim=-1).clamp_min(1e-12)


def lowest_until(
    scores: dict[Candidate, float], params: dict[Candidate, int], target: Target
) -> list[Candidate]:
    """Units in ascending score order (ties: lowest unit), as many as the target needs."""
    chosen: list[Candidate] = []
    removed_params = 0
    for unit in sorted(scores, key=lambda u: (scores[u], u)):
        if target.reached(len(chosen), removed_params):
            break
        chosen.append(unit)
        removed_params += params[unit]
    return chosen


def run_one_shot(
    loaded: LoadedModel, settings: OneShotSettings, method: str, unit: str, token_score: TokenScore
) -> PruningPlan:
    setup = prepare_units(loaded, settings, unit, settings.protect_layers)
    runner, units, params, target = setup.runner, setup.units, setup.params, setup.target
    total = target.total_params
    started = time.perf_counter()
    scores = runner.unit_scores(units, token_score)
    removed = lowest_until(scores, params, target)
    seconds = time.perf_counter() - started
    state = SearchState(removed, one_shot_trajectory(runner, removed, params, total))
    extra = {
        "unit": unit,
        "scores": {label(u): scores[u] for u in sorted(scores, key=lambda u: (scores[u], u))},
        # How the layers were run (streamed, batch, chunks), as the greedy searches record it.
        "search": {"seconds": seconds, "calib_tokens": runner.tokens, "engine": runner.summary()},
    }
    # Recorded by every one-shot method, as it always was (False where it takes no --angular).
    angular = getattr(settings, "angular", False)
    expected = search_settings(method, settings, unit=unit, angular=angular)
    return decided_plan(loaded, method, expected, state, extra, setup.identity)


def prune_shortgpt(loaded: LoadedModel, settings: ShortGptSettings) -> PruningPlan:
    score = angular_influence if settings.angular else cosine_influence
    return run_one_shot(loaded, settings, "shortgpt", "layer", score)


def prune_bi_block(loaded: LoadedModel, settings: BiBlockSettings) -> PruningPlan:
    score = angular_influence if settings.angular else cosine_influence
    return run_one_shot(loaded, settings, "bi-block", "block", score)


def prune_rm(loaded: LoadedModel, settings: OneShotSettings) -> PruningPlan:
    return run_one_shot(loaded, settings, "rm", "layer", relative_magnitude)


def prune_rm_block(loaded: LoadedModel, settings: BlockRankingSettings) -> PruningPlan:
    return run_one_shot(loaded, settings, "rm-block", "block", relative_magnitude)


for _name, _summary, _fn, _settings in (
    (
        "shortgpt",
        "ShortGPT: remove the layers with the lowest block influence (1-cos)",
        prune_shortgpt,
        ShortGptSettings,
    ),
    ("rm", "RM: remove the layers with the lowest relative magnitude", prune_rm, OneShotSettings),
    (
        "rm-block",
        "RM per block: remove the blocks with the lowest relative magnitude",
        prune_rm_block,
        BlockRankingSettings,
    ),
    (
        "bi-block",
        "BI per block: remove the blocks with the lowest block influence",
        prune_bi_block,
        BiBlockSettings,
    ),
):
    register(
        Method(
            _name,
            "depth",
            _summary,
            _fn,
            settings_type=_settings,
            streams=True,
            passes=(ONE_SHOT_SCORES,),
        )
    )
