"""``--target-speedup`` end to end, up to the choice: depth search, splits, measured losses.

The caller (``api.prune``) supplies what other parts of issue 16 own: the dense model's
``ModelStructure`` and a ``predict`` for the phase (the latency table), and
``build(candidate, split, depth_plan)`` (the combined plan: ``depth_prefix_plan(depth_plan,
split.k)`` then the width method at ``split.sparsity``, in place on the candidate: a skeleton
sharing the dense model's weights, or a streamed one; ``losses.py``). It then applies
``result.chosen`` to the model itself the same way and records ``speed_target_record(result)``
in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prunekit.errors import SettingsError
from prunekit.latency.structure import ModelStructure
from prunekit.methods.catalogue import get_method
from prunekit.methods.combined import stage_settings
from prunekit.methods.depth.blockpruner import PAPER_SETTING
from prunekit.methods.depth.calibration import held_out_settings_windows
from prunekit.methods.settings import MethodSettings
from prunekit.models.loading import LoadedModel
from prunekit.plan import PruningPlan
from prunekit.speedtarget.losses import calibration_loss_fn
from prunekit.speedtarget.search import (
    PHASES,
    Predictor,
    SpeedTargetResult,
    WidthRule,
    check_target,
    depth_blocks_bound,
    depth_steps,
    search_speed_target,
)

# BlockPruner's candidate sets that remove single blocks, and the kinds they cover.
BLOCK_CANDIDATES = {None: ("attn", "mlp"), "blocks": ("attn", "mlp"), "both": ("attn", "mlp")}
BLOCK_CANDIDATES |= {"attn": ("attn",), "mlp": ("mlp",)}


# (candidate, split, the whole depth plan[, run_stage=]) -> None: prunes the candidate (beside
# the dense model, never a copy of its weights: ``losses.py``) to the split.
SplitBuild = Callable[..., None]


@dataclass
class SpeedTargetRun:
    result: SpeedTargetResult
    depth_plan: PruningPlan  # the whole depth search; split k replays its first k steps


def search_for_speed(
    loaded: LoadedModel,
    settings: MethodSettings,
    target: float,
    phase: str,
    dense: ModelStructure,
    predict: Predictor,
    build: SplitBuild,
    depth_method: str = "blockpruner",
) -> SpeedTargetRun:
    """Run the depth search far enough, price every split, measure a few, choose one.

    ``settings`` carries the calibration (calib, n_samples, seqlen, seed), the depth options
    (candidates, criterion...) and the width rule (targets, multiple_of); ``ratio``, ``blocks``
    and ``sparsity`` are set here. ``loaded`` is left unpruned.
    """
    check_target(target)
    if phase not in PHASES:
        raise SettingsError(f"--phase must be one of {', '.join(PHASES)}, got {phase!r}")
    if settings.candidates not in BLOCK_CANDIDATES:
        raise SettingsError(
            f"--target-speedup needs single-block depth candidates (attn, mlp or blocks), "
            f"got --candidates {settings.candidates}"
        )
    kinds = BLOCK_CANDIDATES[settings.candidates]
    protected = {i for i in settings.protect_layers if 0 <= i < len(dense.layers)}
    candidates = (len(dense.layers) - len(protected)) * len(kinds)
    bound = depth_blocks_bound(dense, predict, target, kinds)
    blocks = candidates if bound is None else min(bound, candidates)
    # The splits price one block per depth step, by calibration loss rather than per parameter:
    # the paper's setting unless the user named another (BlockPruner's own default differs).
    method = get_method(depth_method)
    depth_settings = stage_settings(
        method,
        settings,
        blocks=blocks,
        criterion=settings.criterion or PAPER_SETTING["criterion"],
        candidates=settings.candidates or PAPER_SETTING["candidates"],
    )
    # A depth method only decides: the search leaves ``loaded`` as it was, no copy needed.
    depth_plan = method.prune(loaded, depth_settings)
    result = choose_split(loaded, settings, target, phase, dense, predict, build, depth_plan)
    return SpeedTargetRun(result, depth_plan)


def choose_split(
    loaded: LoadedModel,
    settings: MethodSettings,
    target: float,
    phase: str,
    dense: ModelStructure,
    predict: Predictor,
    build: SplitBuild,
    depth_plan: PruningPlan,
) -> SpeedTargetResult:
    """Given a depth search (``depth_plan``, run at least as far as the target needs), price
    every split, measure a few on held-out windows and choose one. A depth search that serves
    several targets (bench/speedtarget.py) calls this once per target."""
    rule = WidthRule(tuple(settings.targets), settings.multiple_of)
    # Scored on held-out windows: FASP restores on the calibration ones and would fit them.
    windows = held_out_settings_windows(loaded, settings)
    loss_of = calibration_loss_fn(
        loaded,
        windows,
        lambda candidate, split, **runner: build(candidate, split, depth_plan, **runner),
    )
    steps = depth_steps(depth_plan.trajectory)
    return search_speed_target(dense, steps, predict, target, phase, loss_of, rule)
