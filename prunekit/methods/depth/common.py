"""What every depth method shares: candidate units, targets, checkpoints, the final plan.

A *unit* is what one step removes: one block (BlockPruner, RM/BI at block level) or the blocks
of one layer (ShortGPT, RM, SLEB, layer-PPL). Units are tuples of BlockRef in original indices.
A depth method only decides: it returns the plan and leaves the model as it was; the pipeline
removes the blocks, writes a streamed export and the run's files (``pipeline/apply.py``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import torch

from prunekit.engine.executor import default_batch_size
from prunekit.engine.residency import is_streamed
from prunekit.errors import PlanError, SettingsError
from prunekit.methods.depth.calibration import settings_windows
from prunekit.methods.depth.runner import DepthRunner
from prunekit.methods.depth.scores import Candidate, label
from prunekit.methods.depth.search import SearchState, Target
from prunekit.methods.registry import SearchCheckpoints
from prunekit.methods.settings import (
    HALVES,
    CalibrationSettings,
    ChunkedExecutionSettings,
    DepthTarget,
    GreedySearchSettings,
)
from prunekit.models.adapters import BLOCK_KINDS, BlockRef
from prunekit.models.loading import LoadedModel, count_parameters
from prunekit.plan import PruningPlan

log = logging.getLogger(__name__)


def protected_layers(requested: list[int], num_layers: int) -> set[int]:
    """Layer indices never removed; negative indices count from the end (-1 = last)."""
    protected = set()
    for index in requested:
        if not -num_layers <= index < num_layers:
            raise SettingsError(f"--protect-layers {index} is out of range for {num_layers} layers")
        protected.add(index % num_layers)
    return protected


# The candidate set of block-level methods when --candidates is not given ("both" is its old name).
DEFAULT_CANDIDATES = "blocks"
# Candidate sets whose units overlap (a layer and its own blocks): greedy searches only.
OVERLAPPING_SETS = ("blocks+layers",)


def block_units(runner: DepthRunner, candidates: str, protected: set[int]) -> list[Candidate]:
    """The units of a candidate set (registry.CANDIDATE_SETS) in unprotected layers.

    attn / mlp: one unit per block of that kind; blocks (or both): every block; layers: every
    layer's blocks as one unit; blocks+layers: every block and every layer of more than one
    block (a layer is costed as its blocks), so each greedy step can take what SLEB's would.
    """
    if candidates == "layers":
        return layer_units(runner, protected)
    kinds = BLOCK_KINDS if candidates in ("both", "blocks", "blocks+layers") else (candidates,)
    blocks = [(b,) for b in runner.blocks() if b.kind in kinds and b.layer not in protected]
    if candidates != "blocks+layers":
        return blocks
    return blocks + [u for u in layer_units(runner, protected) if len(u) > 1]


def layer_units(runner: DepthRunner, protected: set[int]) -> list[Candidate]:
    """One unit per unprotected layer: all the blocks it has."""
    by_layer: dict[int, list[BlockRef]] = {}
    for block in runner.blocks():
        by_layer.setdefault(block.layer, []).append(block)
    return [tuple(blocks) for layer, blocks in sorted(by_layer.items()) if layer not in protected]


def unit_parameters(runner: DepthRunner, units: list[Candidate]) -> dict[Candidate, int]:
    adapter, layers = runner.adapter, runner.layers
    return {
        u: sum(adapter.block_parameter_count(layers[b.layer], b.kind) for b in u) for u in units
    }


@dataclass
class DepthSettings(DepthTarget, CalibrationSettings, ChunkedExecutionSettings):
    """What every depth method's settings hold (the method classes add their own groups)."""


def make_target(settings: DepthTarget, total_params: int, counts_blocks: bool = False) -> Target:
    if (settings.ratio is None) == (settings.blocks is None):
        raise SettingsError("give exactly one target: --ratio R or --blocks K")
    return Target(settings.ratio, settings.blocks, total_params, counts_blocks)


@dataclass
class DepthSetup:
    """What every depth method starts from: the calibration runner, its units and the target."""

    runner: DepthRunner
    units: list[Candidate]
    params: dict[Candidate, int]
    target: Target
    # A streamed model's identity, read once with the fingerprinted parts onloaded (a skeleton
    # on meta has no weights to fingerprint); None: ``loaded.identity()`` when needed.
    identity: dict | None = None


def prepare_units(
    loaded: LoadedModel,
    settings: DepthSettings,
    unit: str,
    protect: list[int],
    criterion: str = "ppl",
    overlapping: bool = False,
) -> DepthSetup:
    """Calibration windows, candidate units ("block" or "layer") and a feasible target.

    ``criterion`` picks the runner's loss (criteria.py); ``overlapping`` allows candidate sets
    whose units share blocks (greedy searches only: one-shot rankings need disjoint units).
    ``settings.windows`` (greedy searches: "first-half" / "second-half") keeps half the
    calibration windows: the benchmark's held-out check searches on one half and scores the
    other.
    """
    # Only block-level methods choose their candidates; layer-level ones have no such field.
    candidates = getattr(settings, "candidates", None)
    if candidates in OVERLAPPING_SETS and not overlapping:
        raise SettingsError(
            f"--candidates {candidates} is for greedy searches (blockpruner): a one-shot "
            "ranking needs disjoint candidates"
        )
    # --blocks K counts blocks for block-level methods (a whole-layer candidate is two).
    target = make_target(settings, count_parameters(loaded.model), counts_blocks=unit == "block")
    windows = half_windows(settings_windows(loaded, settings), getattr(settings, "windows", None))
    runner = DepthRunner(
        loaded,
        windows,
        criterion,
        batch_size=settings.batch_size or default_batch_size(loaded.device, windows.shape[0]),
        max_memory=settings.max_memory,
        state_bytes=settings.state_bytes,
    )
    # A streamed model's identity: its fingerprint read from the shards in row slices.
    identity = loaded.residency.identity(loaded) if is_streamed(loaded) else None
    protected = protected_layers(protect, len(runner.layers))
    if unit == "block":
        units = block_units(runner, candidates or DEFAULT_CANDIDATES, protected)
    else:
        units = layer_units(runner, protected)
    params = unit_parameters(runner, units)
    if candidates in OVERLAPPING_SETS and unit == "block":
        # Overlapping units: at most one removal per block, and each block's parameters once.
        distinct_blocks = sorted({(b,) for u in units for b in u})
        target.check_feasible(list(unit_parameters(runner, distinct_blocks).values()), unit)
    else:
        target.check_feasible(list(params.values()), unit)
    return DepthSetup(runner, units, params, target, identity)


def half_windows(windows: torch.Tensor, half: str | None) -> torch.Tensor:
    """All ``windows``, or the first or second half of them (``half``: one of HALVES)."""
    if half is None:
        return windows
    if half not in HALVES or windows.shape[0] < 2:
        raise SettingsError(f"windows {half!r}: need one of {', '.join(HALVES)} and >= 2 windows")
    middle = windows.shape[0] // 2
    return windows[:middle] if half == "first-half" else windows[middle:]


def search_settings(method: str, settings: DepthSettings, **extra: object) -> dict:
    """The settings that determine a search's result: a resumed search must match them.
    ``candidates`` and ``criterion`` are recorded by every depth method, None where it has no
    such setting (the plans' shape is one for all depth methods)."""
    candidates = getattr(settings, "candidates", None)
    return {
        "method": method,
        "ratio": settings.ratio,
        "blocks": settings.blocks,
        "calib": settings.calib,
        "n_samples": settings.n_samples,
        "seqlen": settings.seqlen,
        "seed": settings.seed,
        "candidates": "blocks" if candidates == "both" else candidates,
        "protect_layers": list(settings.protect_layers),
        "criterion": getattr(settings, "criterion", None),
        **extra,
    }


def resume_state(
    loaded: LoadedModel,
    settings: GreedySearchSettings,
    checkpoints: SearchCheckpoints | None,
    method: str,
    expected: dict,
    identity: dict | None = None,
) -> SearchState | None:
    """The state saved by an interrupted search, checked against this model and settings."""
    if not settings.resume:
        return None
    if checkpoints is None:  # nobody lent the search a place to keep its steps
        raise PlanError("--resume needs --out: the run directory of the interrupted search")
    plan, where = checkpoints.resumed(), checkpoints.where
    plan.check_model(identity or loaded.identity())
    check_same_dtype(where, plan.settings.get("dtype"), expected.get("dtype"))
    if plan.method != method or plan.settings != json.loads(json.dumps(expected)):
        diff = sorted(
            k for k in set(plan.settings) | set(expected) if plan.settings.get(k) != expected.get(k)
        )
        raise PlanError(
            f"cannot resume {where}: it was made by {plan.method} with other settings "
            f"({', '.join(diff) or 'method'} differ)"
        )
    removed = [tuple(BlockRef.parse(b) for b in step["blocks"]) for step in plan.trajectory]
    return SearchState(removed=removed, trajectory=list(plan.trajectory))


def check_same_dtype(path: str, saved: str | None, now: str | None) -> None:
    """Scores from another dtype are not comparable: a resumed search must run in the same one."""
    if saved is not None and now is not None and saved != now:
        raise PlanError(
            f"cannot resume {path}: its search ran in {saved} and the model is loaded in {now}; "
            f"calibration scores differ across dtypes (load the model with --dtype {saved})"
        )


def build_plan(
    loaded: LoadedModel,
    method: str,
    settings: dict,
    state: SearchState,
    extra: dict,
    complete: bool,
    identity: dict | None = None,
) -> PruningPlan:
    return PruningPlan(
        method=method,
        model=identity or loaded.identity(),
        settings=settings,
        removed_blocks=[str(b) for unit in state.removed for b in unit],
        trajectory=state.trajectory,
        extra=extra,
        complete=complete,
    )


def checkpointer(
    checkpoints: SearchCheckpoints | None,
    loaded: LoadedModel,
    method: str,
    expected: dict,
    identity: dict | None = None,
):
    """A callback that hands the partial plan to ``checkpoints`` after every step (if any)."""

    def save(state: SearchState) -> None:
        if checkpoints is not None:
            checkpoints.save(build_plan(loaded, method, expected, state, {}, False, identity))

    return save


def one_shot_trajectory(
    runner: DepthRunner, removed: list[Candidate], unit_params: dict[Candidate, int], total: int
) -> list[dict]:
    """Calibration ppl and ratio_total after each removal of a one-shot ranking (for plots)."""
    trajectory, gone, removed_params = [], set(), 0
    all_blocks = runner.blocks()
    for step, unit in enumerate(removed, start=1):
        gone.update(unit)
        removed_params += unit_params[unit]
        nll = sum(runner.model_nll([b for b in all_blocks if b not in gone]))
        trajectory.append(
            {
                "step": step,
                "removed": label(unit),
                "blocks": [str(b) for b in unit],
                "calib_ppl": math.exp(nll / runner.tokens),
                "calib_nll": nll,
                "ratio_total": removed_params / total,
                "removed_params": removed_params,
            }
        )
    return trajectory


def decided_plan(
    loaded: LoadedModel,
    method: str,
    expected: dict,
    state: SearchState,
    extra: dict,
    identity: dict | None = None,
) -> PruningPlan:
    """The complete plan of what the search or ranking decided to remove; the model is left as
    it was (``pipeline.apply.carry_out_depth`` removes the blocks and adds what the surgery
    reports to ``extra``: kept_layers, layer_blocks, num_layers_before)."""
    return build_plan(loaded, method, expected, state, extra, True, identity)
