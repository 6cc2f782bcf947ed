"""FASP's allocation by measured cost: how many channels each group gives up.

A *group* is one layer's MLP intermediate channels or one layer's value channels (the same count
in every kv head). Uniform allocation removes the same fraction everywhere; in a GQA model one
value channel feeds 3–8 query heads, so a uniform fraction spends sparsity where it costs most.

Design (two passes, which answers the chicken-and-egg of a sequential method):

1. **Cost curves on the dense model** (``CostProbe``, one sequential pass that changes nothing):
   for each group, at a few candidate widths (``CURVE_SPARSITIES`` of its channels), keep FASP's
   top channels, restore the consumer exactly as FASP would, and record the reconstruction error
   that remains, ‖W X − W' X_S‖² summed over the calibration tokens. To compare groups, the error
   is divided by the energy of the residual stream the branch writes into
   (tokens × median_t ‖h_t‖², h the block's input): the next norm sees a perturbation relative to
   the hidden state, and the median keeps attention-sink tokens (100× norms) from setting the
   scale. ``allocation_cost="output"`` (a FaspSettings field) divides by the group's own output
   energy ‖W X‖² instead (the restoration's relative error; an ablation).
2. **A global allocation** (``allocate``): each curve is made convex (running maximum, then the
   lower convex hull) and cut into steps of one kernel-friendly unit (``--multiple-of`` channels
   per kv head); the steps of all groups are taken cheapest cost-per-removed-parameter first
   until the parameter target is met. On convex curves this greedy order is the optimum of the
   Lagrangian (a global threshold on marginal cost — FLAP's global threshold, on a measured
   cost instead of standardised scores). The target is met to within one step.
3. **The sequential FASP pass** with those per-group widths (``UniformPruner(widths=...)``):
   statistics on the already-pruned upstream layers, FASP's scores and restoration unchanged.

Cost: one extra dense calibration pass with Gram matrices plus ``len(CURVE_SPARSITIES)``
restorations per group. A group never loses more than the largest candidate sparsity (75 %):
the curve is not measured beyond it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.engine.sequential import InputStatistics
from prunekit.errors import SettingsError
from prunekit.methods.width.common import WidthRun
from prunekit.methods.width.restoration import restore_consumer
from prunekit.methods.width.scoring import per_value_channel, wanda_sum
from prunekit.methods.width.selection import kept_count, top_indices, top_indices_per_row
from prunekit.methods.width.structure import mlp_unit_params, value_unit_params
from prunekit.models.adapters import BlockKind
from prunekit.surgery.width import value_columns

ALLOCATIONS = ("uniform", "cost")
COST_NORMALISERS = ("residual", "output")
CURVE_SPARSITIES = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


@dataclass(frozen=True)
class CostCurve:
    """One group's measured cost: removing ``removed[i]`` channels per head costs ``cost[i]``."""

    index: int
    kind: BlockKind
    width: int  # channels per head (MLP: the intermediate size; attention: v_head_dim)
    heads: int  # 1 for the MLP, the kv heads for value channels (each loses the same count)
    unit_params: int  # parameters of one channel
    removed: tuple[int, ...]  # ascending, starting at 0
    cost: tuple[float, ...]  # cost[0] == 0

    @property
    def key(self) -> tuple[int, BlockKind]:
        return (self.index, self.kind)


class CostProbe:
    """A ``SequentialMethod`` that prunes nothing: it measures every targeted group's cost curve
    on the dense model (the block outputs are the dense ones, reused by the engine)."""

    needs_gram = True
    changes_blocks = False

    def __init__(self, run: WidthRun, normaliser: str = "residual"):
        self.run = run
        self.adapter = run.loaded.adapter
        self.normaliser = normaliser
        self.curves: list[CostCurve] = []
        self._energy: list[torch.Tensor] = []
        self._hook = None

    def watched(self, layer: nn.Module, kind: BlockKind) -> dict[str, nn.Module]:
        watched = self.run.watched_consumers(layer, kind)
        if watched and self.normaliser == "residual":
            self._energy = []
            self._hook = self._block_input(layer, kind).register_forward_pre_hook(self._record)
        return watched

    def _block_input(self, layer: nn.Module, kind: BlockKind) -> nn.Module:
        """The block's first module (its input norm in every family): it reads the residual."""
        names = self.adapter.attn_module_names if kind == "attn" else self.adapter.mlp_module_names
        return getattr(layer, names[0])

    def _record(self, _module: nn.Module, args: tuple) -> None:
        hidden = args[0]
        self._energy.append(hidden.detach().float().square().sum(-1).reshape(-1).cpu())

    def decide(
        self, index: int, layer: nn.Module, kind: BlockKind, stats: dict[str, InputStatistics]
    ) -> bool:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        stat = stats[kind]
        if kind == "mlp":
            curve = self._mlp_curve(index, layer, stat)
        else:
            curve = self._value_curve(index, layer, stat)
        self.curves.append(curve)
        return False

    def _scale(self, weight: torch.Tensor, stat: InputStatistics) -> float:
        """What an absolute error is divided by, so costs compare across groups."""
        if self.normaliser == "output":
            w = weight.detach().float()
            return max(float(((w @ stat.gram) * w).sum(dtype=torch.float64)), 1e-30)
        # The median over every calibration token: under many processes, every rank's tokens.
        world = self.run.loaded.world
        energy = (
            torch.cat(self._energy) if self._energy else torch.zeros(0)
        )  # a rank with no window
        if world is not None:
            energy = world.concat(energy)
        return max(float(energy.median()) * energy.numel(), 1e-30)

    def _error(self, weight: torch.Tensor, stat: InputStatistics, kept: list[int], name: str):
        """The restored (or, without restoration, sliced) error relative to ‖W X‖²."""
        result = restore_consumer(weight, stat.gram, kept, self.run.settings.damping, name)
        return result.error_restored if self.run.settings.restore else result.error_sliced

    def _absolute(self, weight: torch.Tensor, stat: InputStatistics) -> float:
        w = weight.detach().float()
        return float(((w @ stat.gram) * w).sum(dtype=torch.float64))

    def _measure(self, weight, stat, widths_kept, kept_of, name) -> tuple[list, list]:
        output = self._absolute(weight, stat)
        scale = self._scale(weight, stat)
        removed, cost = [0], [0.0]
        for width, keep in widths_kept:
            if keep >= width or width - keep in removed:
                continue
            relative = self._error(weight, stat, kept_of(keep), f"{name} ({keep} kept)")
            removed.append(width - keep)
            cost.append(relative * output / scale)
        return removed, cost

    def _mlp_curve(self, index: int, layer: nn.Module, stat: InputStatistics) -> CostCurve:
        channels = self.adapter.mlp_channels(layer)
        scores = wanda_sum(channels.consumer.weight, stat)
        width, m = channels.width, self.run.settings.multiple_of
        keeps = [(width, kept_count(width, s, m)) for s in CURVE_SPARSITIES]
        removed, cost = self._measure(
            channels.consumer.weight,
            stat,
            keeps,
            lambda keep: top_indices(scores, keep),
            f"layer {index} mlp",
        )
        return CostCurve(index, "mlp", width, 1, mlp_unit_params(channels), (*removed,), (*cost,))

    def _value_curve(self, index: int, layer: nn.Module, stat: InputStatistics) -> CostCurve:
        channels = self.adapter.attention_channels(layer, self.run.config)
        scores = per_value_channel(wanda_sum(channels.o_proj.weight, stat), channels)
        width, m = channels.v_head_dim, self.run.settings.multiple_of
        keeps = [(width, kept_count(width, s, m)) for s in CURVE_SPARSITIES]
        removed, cost = self._measure(
            channels.o_proj.weight,
            stat,
            keeps,
            lambda keep: value_columns(channels, top_indices_per_row(scores, keep)),
            f"layer {index} attn",
        )
        return CostCurve(
            index,
            "attn",
            width,
            channels.num_kv_heads,
            value_unit_params(channels),
            (*removed,),
            (*cost,),
        )


def convex_costs(removed: tuple[int, ...], cost: tuple[float, ...]) -> list[float]:
    """The lower convex hull of a nondecreasing version of the curve, at the same points.

    Removing more channels of a nested kept set cannot really cost less; a dip is noise of the
    damped solve, so the curve is first made nondecreasing (running maximum). The hull makes
    marginal costs nondecreasing, so a greedy take-the-cheapest order removes a group's channels
    in order and is the Lagrangian optimum.
    """
    ys = [max(cost[: i + 1]) for i in range(len(cost))]
    if len(removed) < 2:
        return ys
    hull: list[int] = []
    for i in range(len(removed)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b lies on or above the chord a→i: drop it.
            cross = (ys[b] - ys[a]) * (removed[i] - removed[a]) - (ys[i] - ys[a]) * (
                removed[b] - removed[a]
            )
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    out = []
    for x in removed:
        j = next(k for k in range(1, len(hull)) if removed[hull[k]] >= x) if x > 0 else 1
        a, b = hull[j - 1], hull[j]
        t = (x - removed[a]) / (removed[b] - removed[a])
        out.append(ys[a] + t * (ys[b] - ys[a]))
    return out


def kept_steps(width: int, min_kept: int, multiple_of: int) -> list[int]:
    """The kept counts a group may take, descending from ``width`` to ``min_kept``: the full
    width, then every multiple of ``multiple_of`` below it (``kept_count``'s rounding)."""
    below = (width - 1) // multiple_of * multiple_of
    return [width] + [k for k in range(below, min_kept - 1, -multiple_of) if k >= 1]


def _interpolate(xs: list[int], ys: list[float], x: float) -> float:
    for k in range(1, len(xs)):
        if x <= xs[k]:
            t = (x - xs[k - 1]) / (xs[k] - xs[k - 1])
            return ys[k - 1] + t * (ys[k] - ys[k - 1])
    return ys[-1]


def allocate(
    curves: list[CostCurve], target_params: int, multiple_of: int
) -> dict[tuple[int, BlockKind], int]:
    """Kept channels per head for each group: the cheapest steps (cost per removed parameter)
    across all groups until ``target_params`` are removed (met within one step).

    Ties rank by (layer, kind, step) so the plan is the same on every machine. A group absent
    from the result was not measured; every measured group is in it.
    """
    marginal, params, owner, order = [], [], [], []
    kept_lists = []
    for g, curve in enumerate(curves):
        xs = list(curve.removed)
        ys = convex_costs(curve.removed, curve.cost)
        kept = kept_steps(curve.width, curve.width - xs[-1], multiple_of)
        kept_lists.append(kept)
        slope = 0.0
        for step, (a, b) in enumerate(itertools.pairwise(kept)):
            gained = (a - b) * curve.heads * curve.unit_params
            extra = _interpolate(xs, ys, curve.width - b) - _interpolate(xs, ys, curve.width - a)
            # Nondecreasing within the group (the hull's slopes are; this absorbs rounding), so
            # a group's steps rank in their own order.
            slope = max(slope, extra / gained)
            marginal.append(slope)
            params.append(gained)
            owner.append(g)
            order.append(step)
    widths = {c.key: c.width for c in curves}
    if target_params <= 0:
        return widths
    if sum(params) < target_params:
        raise SettingsError(
            f"the target ({target_params} parameters) is out of reach for the cost allocation: "
            f"at most {max(CURVE_SPARSITIES):.0%} of each group is measured "
            f"({sum(params)} parameters); use --allocation uniform"
        )
    ranked = sorted(range(len(marginal)), key=lambda i: (marginal[i], owner[i], order[i]))
    removed = 0
    taken = [0] * len(curves)
    for i in ranked:
        if removed >= target_params:
            break
        # Convex curves make a group's steps come in order; the counter keeps it so anyway.
        taken[owner[i]] += 1
        removed += params[i]
    for g, curve in enumerate(curves):
        widths[curve.key] = kept_lists[g][taken[g]]
    return widths


def target_removal(total: int, ratio: float) -> int:
    """Parameters to remove for a ratio_total target (at least the ratio, never fewer)."""
    return math.ceil(ratio * total)
