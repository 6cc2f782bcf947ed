"""Prune to a speed: the split between removed blocks and narrowed widths (docs/speed_target.md).

The search is deliberately simple and explainable. Inputs: the dense model's shape
(``ModelStructure``), BlockPruner's greedy trajectory (the order in which it removes blocks),
a latency predictor for one phase, and a target speed-up S.

1. **Splits.** For every number k of trajectory steps (0..K), remove those blocks from the dense
   shape and find the smallest uniform width sparsity s_k (FASP's rounding: kept =
   ``kept_count(w, s, multiple_of)`` of each targeted MLP width and value-head width that is
   left) whose predicted speed-up predict(dense) / predict(pruned) reaches S. A k whose blocks
   alone reach S gets s_k = 0 and ends the list (more blocks would only cost more loss); a k
   that cannot reach S even at ``max_sparsity`` is skipped. Everything here is arithmetic on
   shapes: no weights are touched.
2. **Choice.** Each split's calibration loss is measured by a callable (in prunekit: build the
   combined plan on a copy, measure the calibration NLL), which costs a FASP run, so only a few
   splits are measured: a coarse grid over the list (always including both ends: width only and
   depth only), then a local refinement around the best one (bisect the unmeasured gap on each
   side until both neighbours of the best are measured). The lowest loss wins; equal losses go to
   the smaller k.

Bisection on s assumes the predicted latency does not grow when a width shrinks (true of a
table that is non-decreasing in width); s_k is then exact to float precision, and passing s_k
to FASP as ``--sparsity`` keeps exactly the widths priced here (the same ``kept_count``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from prunekit.errors import SettingsError
from prunekit.latency.structure import LayerStructure, ModelStructure
from prunekit.methods.width.selection import kept_count

PHASES = ("prefill", "decode")
WIDTH_TARGETS = ("mlp", "attn")
# Bisection steps on s in [0, max_sparsity]: 2**-60 is below any width's rounding step.
BISECTION_STEPS = 60

Predictor = Callable[[ModelStructure], float]  # seconds for one phase


@dataclass(frozen=True)
class WidthRule:
    """How the width stage narrows the remaining blocks (FASP's --targets and --multiple-of)."""

    targets: tuple[str, ...] = WIDTH_TARGETS
    multiple_of: int = 1
    max_sparsity: float = 0.9  # the search never proposes a narrower model than this

    def __post_init__(self) -> None:
        unknown = [t for t in self.targets if t not in WIDTH_TARGETS]
        if unknown or not self.targets:
            raise SettingsError(f"--targets must be a subset of mlp,attn, got {self.targets}")
        if self.multiple_of < 1:
            raise SettingsError(f"--multiple-of must be >= 1, got {self.multiple_of}")
        if not 0.0 < self.max_sparsity < 1.0:
            raise SettingsError(f"max sparsity must be in (0, 1), got {self.max_sparsity}")


@dataclass(frozen=True)
class DepthStep:
    """One step of the depth trajectory: the blocks it removed ("layer.kind", original indices)."""

    blocks: tuple[str, ...]
    calib_nll: float | None = None  # the search's calibration NLL after the step, if recorded


@dataclass(frozen=True)
class Split:
    """A candidate mix: the first ``k`` trajectory steps removed, then a uniform ``sparsity``."""

    k: int
    removed_blocks: tuple[str, ...]
    sparsity: float
    speedup: float  # predicted, predict(dense) / predict(this)
    latency_s: float  # predicted seconds of this model in the phase

    @property
    def is_width_only(self) -> bool:
        return self.k == 0

    @property
    def is_depth_only(self) -> bool:
        return self.sparsity == 0.0


@dataclass
class SpeedTargetResult:
    """The splits, the losses measured, the chosen split and the two pure plans beside it."""

    target: float
    phase: str
    dense_latency_s: float
    rule: WidthRule
    candidates: list[Split]
    losses: dict[int, float] = field(default_factory=dict)  # k -> calibration loss, measured
    chosen: Split | None = None

    @property
    def chosen_loss(self) -> float:
        return self.losses[self.chosen.k]

    @property
    def width_only(self) -> Split | None:
        """k = 0 (FASP alone), when width alone reaches the target."""
        first = self.candidates[0]
        return first if first.is_width_only else None

    @property
    def depth_only(self) -> Split | None:
        """The smallest k whose blocks alone reach the target (BlockPruner alone), if any."""
        last = self.candidates[-1]
        return last if last.is_depth_only else None


def depth_steps(trajectory: Sequence[dict]) -> list[DepthStep]:
    """The steps of a depth plan's ``trajectory`` (BlockPruner, SLEB...: "blocks" per step)."""
    steps = []
    for entry in trajectory:
        blocks = entry.get("blocks") or [entry["block"]]
        steps.append(DepthStep(tuple(blocks), entry.get("calib_nll")))
    return steps


def remove_blocks(dense: ModelStructure, blocks: Sequence[str]) -> ModelStructure:
    """``dense`` without ``blocks`` ("layer.kind", original layer indices).

    A layer whose two blocks are both gone is dropped. ``dense`` must list every original layer
    (index i is layer i), as the structure of an unpruned model does.
    """
    layers = list(dense.layers)
    for text in blocks:
        layer, kind = parse_block(text, len(layers))
        if kind == "attn":
            layers[layer] = replace(layers[layer], attn_heads=0, kv_heads=0)
        else:
            layers[layer] = replace(layers[layer], mlp_width=0)
    kept = tuple(layer for layer in layers if layer.has_attn or layer.has_mlp)
    return replace(dense, layers=kept)


def parse_block(text: str, num_layers: int) -> tuple[int, str]:
    try:
        layer_text, kind = text.split(".")
        layer = int(layer_text)
    except ValueError:
        raise SettingsError(f"not a block name (layer.kind): {text!r}") from None
    if kind not in ("attn", "mlp") or not 0 <= layer < num_layers:
        raise SettingsError(f"block {text!r} is not in a model of {num_layers} layers")
    return layer, kind


def narrow(structure: ModelStructure, sparsity: float, rule: WidthRule) -> ModelStructure:
    """Every remaining targeted width kept at ``kept_count(w, sparsity, multiple_of)``."""
    return replace(
        structure, layers=tuple(narrow_layer(layer, sparsity, rule) for layer in structure.layers)
    )


def narrow_layer(layer: LayerStructure, sparsity: float, rule: WidthRule) -> LayerStructure:
    m = rule.multiple_of
    changes = {}
    if "mlp" in rule.targets and layer.has_mlp:
        changes["mlp_width"] = kept_count(layer.mlp_width, sparsity, m)
    if "attn" in rule.targets and layer.has_attn:
        changes["v_head_dim"] = kept_count(layer.v_head_dim, sparsity, m)
    return replace(layer, **changes)


def smallest_sparsity(
    shape: ModelStructure, predict: Predictor, dense_latency: float, target: float, rule: WidthRule
) -> tuple[float, float] | None:
    """(s, predicted latency) for the smallest s whose speed-up reaches ``target``; None if none.

    Bisection on s (latency non-increasing as widths shrink): ``low`` never reaches, ``high``
    always does, and 60 halvings leave them closer than any rounding step of ``kept_count``.
    """
    latency = predict(shape)
    if dense_latency / latency >= target:
        return 0.0, latency
    high = rule.max_sparsity
    latency = predict(narrow(shape, high, rule))
    if dense_latency / latency < target:
        return None
    low = 0.0
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        mid_latency = predict(narrow(shape, mid, rule))
        if dense_latency / mid_latency >= target:
            high, latency = mid, mid_latency
        else:
            low = mid
    return high, latency


def candidate_splits(
    dense: ModelStructure,
    steps: Sequence[DepthStep],
    predict: Predictor,
    target: float,
    rule: WidthRule,
    stride: int = 1,
) -> list[Split]:
    """The splits (k, s_k) in increasing k, ending at the first k that needs no width pruning.

    ``stride`` > 1 prices only every stride-th k (k = 0 and the depth-only end are always
    included when they qualify). Raises ``SettingsError`` naming the best reachable speed-up
    when no k reaches ``target``.
    """
    check_target(target)
    if stride < 1:
        raise SettingsError(f"stride must be >= 1, got {stride}")
    dense_latency = predict(dense)
    splits: list[Split] = []
    removed: list[str] = []
    for k in range(len(steps) + 1):
        if k > 0:
            removed.extend(steps[k - 1].blocks)
        shape = remove_blocks(dense, removed)
        depth_only = dense_latency / predict(shape) >= target
        if k % stride and not depth_only and k != len(steps):
            continue
        found = smallest_sparsity(shape, predict, dense_latency, target, rule)
        if found is not None:
            sparsity, latency = found
            splits.append(Split(k, tuple(removed), sparsity, dense_latency / latency, latency))
        if depth_only:
            break
    if not splits:
        raise SettingsError(out_of_reach(dense, steps, predict, target, rule))
    return splits


def check_target(target: float) -> None:
    if not math.isfinite(target) or target <= 1.0:
        raise SettingsError(f"--target-speedup must be > 1 (e.g. 1.5), got {target}")


def out_of_reach(
    dense: ModelStructure,
    steps: Sequence[DepthStep],
    predict: Predictor,
    target: float,
    rule: WidthRule,
) -> str:
    """One line: the target, and the best predicted speed-up any split reaches."""
    dense_latency = predict(dense)
    best, best_k, removed = 0.0, 0, []
    for k in range(len(steps) + 1):
        if k > 0:
            removed.extend(steps[k - 1].blocks)
        shape = narrow(remove_blocks(dense, removed), rule.max_sparsity, rule)
        speedup = dense_latency / predict(shape)
        if speedup > best:
            best, best_k = speedup, k
    return (
        f"--target-speedup {target:g} is out of reach: the best predicted speed-up is "
        f"{best:.3f}x ({best_k} of the {len(steps)} depth steps and width sparsity "
        f"{rule.max_sparsity:g} on {','.join(rule.targets)}); lower the target or give the "
        "depth search more blocks"
    )


def choose(
    candidates: Sequence[Split],
    loss_of: Callable[[Split], float],
    coarse: int = 5,
    max_evaluations: int = 12,
) -> dict[int, float]:
    """Measure a few splits' losses: both ends, ``coarse`` evenly spaced, then refine the best.

    Returns {k: loss} of the splits measured (at most ``max_evaluations``, always both ends).
    Refinement: while the best split so far has an unmeasured split between it and its nearest
    measured neighbour on either side, measure the middle of that gap. With n splits this costs
    about ``coarse + 2·log2(n / coarse)`` loss evaluations instead of n, and finds the best split
    exactly when the loss along k has one valley. A NaN loss counts as infinite.
    """
    if not candidates:
        raise SettingsError("no split reaches the target speed-up")
    n = len(candidates)
    losses: dict[int, float] = {}

    def measure(index: int) -> None:
        if index not in losses and len(losses) < max(max_evaluations, 2):
            value = float(loss_of(candidates[index]))
            losses[index] = value if not math.isnan(value) else math.inf

    for index in coarse_indices(n, coarse):
        measure(index)
    while len(losses) < max(max_evaluations, 2):
        gap = widest_gap_beside_best(losses, n)
        if gap is None:
            break
        measure(gap)
    return {candidates[i].k: loss for i, loss in sorted(losses.items())}


def coarse_indices(n: int, coarse: int) -> list[int]:
    """Both ends first (they are the reported pure plans), then evenly spaced interior points."""
    points = max(2, coarse)
    spaced = {round(i * (n - 1) / (points - 1)) for i in range(points)}
    return sorted({0, n - 1}) + sorted(spaced - {0, n - 1})


def best_index(losses: dict[int, float]) -> int:
    """Lowest loss; equal losses go to the smaller index or k (fewer blocks removed)."""
    return min(losses, key=lambda i: (losses[i], i))


def widest_gap_beside_best(losses: dict[int, float], n: int) -> int | None:
    """The middle of the larger unmeasured gap next to the best split; None when both are closed."""
    best = best_index(losses)
    left = max((i for i in losses if i < best), default=-1)
    right = min((i for i in losses if i > best), default=n)
    gaps = [(best - left - 1, (left + best) // 2), (right - best - 1, (best + right + 1) // 2)]
    gaps = [(size, middle) for size, middle in gaps if size > 0]
    if not gaps:
        return None
    return max(gaps, key=lambda g: (g[0], -g[1]))[1]


def search_speed_target(
    dense: ModelStructure,
    steps: Sequence[DepthStep],
    predict: Predictor,
    target: float,
    phase: str,
    loss_of: Callable[[Split], float],
    rule: WidthRule | None = None,
    stride: int = 1,
    coarse: int = 5,
    max_evaluations: int = 12,
) -> SpeedTargetResult:
    """The split that reaches ``target`` (predicted, in ``phase``) at the lowest measured loss.

    ``predict`` prices a shape in seconds for ``phase`` (the latency table of this machine);
    ``loss_of`` builds a split's combined plan and returns its calibration loss (mean NLL per
    token). The width-only and depth-only splits, when they reach the target, are always among
    those measured, so the report can set the chosen split beside them.
    """
    if phase not in PHASES:
        raise SettingsError(f"--phase must be one of {', '.join(PHASES)}, got {phase!r}")
    rule = rule or WidthRule()
    candidates = candidate_splits(dense, steps, predict, target, rule, stride)
    losses = choose(candidates, loss_of, coarse, max_evaluations)
    by_k = {split.k: split for split in candidates}
    chosen = by_k[best_index(losses)]
    return SpeedTargetResult(
        target=target,
        phase=phase,
        dense_latency_s=predict(dense),
        rule=rule,
        candidates=list(candidates),
        losses=losses,
        chosen=chosen,
    )


def depth_reaches(
    dense: ModelStructure, predict: Predictor, target: float
) -> Callable[[Sequence[str]], bool]:
    """A stopping rule for a depth search run for this target: do these removed blocks alone
    reach it? (BlockPruner can stop there: later steps would never be chosen.)"""
    dense_latency = predict(dense)

    def reached(blocks: Sequence[str]) -> bool:
        return dense_latency / predict(remove_blocks(dense, blocks)) >= target

    return reached


def depth_blocks_bound(
    dense: ModelStructure, predict: Predictor, target: float, kinds: Sequence[str] = ("attn", "mlp")
) -> int | None:
    """How many single-block depth steps always suffice for the blocks alone to reach ``target``.

    With a table that prices blocks independently (the fixed part + one entry per block),
    whatever order the depth search removes blocks in, it has saved at least as much predicted
    latency as removing the blocks that save least: so remove those (one at a time, the cheapest
    saving first) until the target is reached. Run the depth search this many steps (``--blocks``)
    and its trajectory reaches the depth-only end. None when removing every block of ``kinds``
    does not reach it (the search then needs width for every k).
    """
    check_target(target)
    dense_latency = predict(dense)
    left = [f"{i}.{kind}" for i in range(len(dense.layers)) for kind in kinds]
    removed: list[str] = []
    while dense_latency / predict(remove_blocks(dense, removed)) < target:
        if not left:
            return None
        cheapest = max(left, key=lambda b: (predict(remove_blocks(dense, [*removed, b])), b))
        removed.append(cheapest)
        left.remove(cheapest)
    return len(removed)
