"""The calibration loss of a split: build it on a copy of the dense model, measure mean NLL.

The search (``search.choose``) calls ``loss_of(split)`` a handful of times. Building a split is
"replay the first k steps of the depth plan, then run the width method at s_k", which the
combined-plan code owns; it comes in as ``build(copy, split)`` so this module only copies,
builds and measures. ``depth_prefix_plan`` gives the depth stage without a new search: the
greedy search is prefix-consistent, so its first k steps are exactly the plan for k blocks.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable

import torch

from prunekit.evaluation.perplexity import windows_nll
from prunekit.models.loading import LoadedModel
from prunekit.plan import PruningPlan
from prunekit.speedtarget.search import Split

Build = Callable[[LoadedModel, Split], None]  # prunes the copy in place to the split


def depth_prefix_plan(plan: PruningPlan, k: int) -> PruningPlan:
    """The depth plan after its first ``k`` steps (a step may remove several blocks)."""
    steps = plan.trajectory[:k]
    blocks = [block for step in steps for block in step["blocks"]]
    return dataclasses.replace(
        plan,
        settings={**plan.settings, "blocks": k, "ratio": None},
        removed_blocks=blocks,
        trajectory=list(steps),
        extra={**plan.extra, "prefix_of": len(plan.trajectory)},
    )


def fresh_copy(loaded: LoadedModel) -> LoadedModel:
    """A deep copy of the model with the same tokenizer/adapter: the dense model stays intact."""
    return dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))


def calibration_loss_fn(
    loaded: LoadedModel, windows: torch.Tensor, build: Build
) -> Callable[[Split], float]:
    """``loss_of(split)``: mean NLL per predicted token on ``windows`` of the split's model."""

    def loss_of(split: Split) -> float:
        candidate = fresh_copy(loaded)
        with warnings.catch_warnings():
            # One FASP run per scored split: its few-tokens-per-column warning would repeat with
            # each; the chosen split's own build says it once.
            warnings.filterwarnings("ignore", message=".*calibration tokens per restored column")
            build(candidate, split)
        nll, count = windows_nll(candidate, windows)
        del candidate
        return nll / count

    return loss_of
