"""The calibration loss of a split: build it beside the dense model, measure mean NLL.

The search (``search.choose``) calls ``loss_of(split)`` a handful of times. Building a split is
"replay the first k steps of the depth plan, then run the width method at s_k", which the
combined-plan code owns; it comes in as ``build(candidate, split)`` so this module only gives
the build a candidate, and measures it. ``depth_prefix_plan`` gives the depth stage without a
new search: the greedy search is prefix-consistent, so its first k steps are exactly the plan
for k blocks.

No split is built on a copy of the model's weights:

- in memory, the candidate is a *skeleton* of the model: its own modules and config, the dense
  model's parameters shared. Surgery and the width stage replace a module's parameters (they
  never write into a tensor), so the build leaves the dense model as it was and holds only the
  tensors it made (the narrowed layers), dropped once the split is scored;
- streamed, the candidate is a new lazy skeleton of the same files (``LazyModel.reopen``): its
  stages run like a streamed combined method's, except that none is the last, so the width
  stage spills its layers to temporary shards (beside the export) and the loss is the streamed
  perplexity's arithmetic, layer by layer, on what the stages left.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable

import torch

from prunekit.engine.residency import Streamed, is_streamed
from prunekit.evaluation.perplexity import windows_nll
from prunekit.evaluation.streamed import streamed_windows_nll
from prunekit.models.loading import LoadedModel
from prunekit.pipeline.streamed_stages import StreamedStages
from prunekit.plan import PruningPlan
from prunekit.speedtarget.search import Split

# Prunes the candidate in place to the split. A streamed candidate's build is lent the stage
# runner its stages must run with (``run_stage=``); an in-memory one uses the pipeline's own.
Build = Callable[..., None]


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
    """A deep copy of the model with the same tokenizer/adapter (the benchmarks' dense copies;
    the speed target itself builds on ``shared_skeleton``)."""
    return dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))


def shared_skeleton(loaded: LoadedModel) -> LoadedModel:
    """The model's modules and config copied, its parameters shared: pruning the skeleton
    (surgery, a width method) replaces its parameters and leaves ``loaded`` dense."""
    model = loaded.model
    memo = {id(parameter): parameter for parameter in model.parameters()}
    return dataclasses.replace(loaded, model=copy.deepcopy(model, memo))


def calibration_loss_fn(
    loaded: LoadedModel, windows: torch.Tensor, build: Build
) -> Callable[[Split], float]:
    """``loss_of(split)``: mean NLL per predicted token on ``windows`` of the split's model."""
    measure = _streamed_loss if is_streamed(loaded) else _resident_loss

    def loss_of(split: Split) -> float:
        with warnings.catch_warnings():
            # One FASP run per scored split: its few-tokens-per-column warning would repeat with
            # each; the chosen split's own build says it once.
            warnings.filterwarnings("ignore", message=".*calibration tokens per restored column")
            nll, count = measure(loaded, windows, build, split)
        return nll / count

    return loss_of


def _resident_loss(
    loaded: LoadedModel, windows: torch.Tensor, build: Build, split: Split
) -> tuple[float, int]:
    candidate = shared_skeleton(loaded)
    build(candidate, split)
    return windows_nll(candidate, windows)


def _streamed_loss(
    loaded: LoadedModel, windows: torch.Tensor, build: Build, split: Split
) -> tuple[float, int]:
    run: Streamed = loaded.residency
    lazy = run.lazy.reopen()
    options = {
        "row_slice_bytes": run.row_slice_bytes,
        "offload_activations": run.offload_activations,
        "scratch_dir": run.scratch_dir,
    }
    # The run's sink only tells the stages where the export is, so the spill goes beside it
    # (not to a /tmp that may be memory); no trial stage is the last, so nothing is written to it.
    candidate = dataclasses.replace(
        loaded, model=lazy.model, residency=Streamed(lazy, run.sink, **options)
    )
    with StreamedStages(candidate, None) as stages:
        build(candidate, split, run_stage=stages.run_stage)
        return streamed_windows_nll(candidate, windows, Streamed(lazy, None, **options))
