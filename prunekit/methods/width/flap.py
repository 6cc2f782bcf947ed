"""FLAP (An et al., 2024): fluctuation scores, one global threshold, bias compensation.

Statistics are gathered on the dense model in one sequential pass (nothing changes on the way,
so each block costs one forward; no layer is final yet). Scores Var_t(X_j)·‖W_:,j‖² are
standardised per module (MLP channels; attention kv groups scored by the mean over their o_proj
columns); then one threshold across all layers removes the lowest units until the parameter
target is met, which yields adaptive per-layer widths. A removed column's average contribution
is folded into the consumer's bias: b += W[:, P]·mean(X_P) (a bias is added where the stock
module has none). The pruning is a second pass, layer by layer (``FlapApply``), so a streamed
model holds one layer at a time in both passes (``common.GlobalMethod``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.engine.passes import SLICING, WIDTH_STATS
from prunekit.engine.sequential import InputStatistics
from prunekit.methods.registry import Method, register
from prunekit.methods.width.common import CalibratedWidthSettings, WidthRun, run_width_method
from prunekit.methods.width.scoring import fluctuation, per_kv_group
from prunekit.methods.width.selection import removal_order
from prunekit.methods.width.structure import group_unit_params, mlp_unit_params
from prunekit.models.adapters import BlockKind
from prunekit.models.loading import LoadedModel, count_parameters
from prunekit.plan import PruningPlan
from prunekit.surgery.width import head_columns, set_consumer, slice_heads, slice_mlp


@dataclass
class ModuleScores:
    """One module's standardised unit scores, the params per unit, and its input means."""

    index: int
    kind: BlockKind
    zscores: torch.Tensor
    unit_params: int
    input_mean: torch.Tensor


class FlapPruner:
    """Records per-module scores during the pass; ``finish`` thresholds globally and returns
    the method that prunes each layer accordingly (a ``common.GlobalMethod``)."""

    needs_gram = False
    changes_blocks = False  # FLAP only records; it prunes after the pass

    def __init__(self, run: WidthRun):
        self.run = run
        self.adapter = run.loaded.adapter
        self.modules: list[ModuleScores] = []

    def watched(self, layer: nn.Module, kind: BlockKind) -> dict[str, nn.Module]:
        return self.run.watched_consumers(layer, kind)

    def decide(
        self, index: int, layer: nn.Module, kind: BlockKind, stats: dict[str, InputStatistics]
    ) -> bool:
        stat = stats[kind]
        if kind == "mlp":
            channels = self.adapter.mlp_channels(layer)
            scores = fluctuation(channels.consumer.weight, stat)
            unit = mlp_unit_params(channels)
        else:
            channels = self.adapter.attention_channels(layer, self.run.config)
            scores = per_kv_group(fluctuation(channels.o_proj.weight, stat), channels, "mean")
            unit = group_unit_params(channels)
        self.modules.append(ModuleScores(index, kind, standardise(scores), unit, stat.mean))
        return False  # the dense outputs feed the next block: FLAP scores the dense model

    def finish(self) -> FlapApply:
        """The global threshold over every recorded module: what each one loses."""
        removed = global_selection(self.modules, self.target_params())
        return FlapApply(self.run, list(zip(self.modules, removed, strict=True)))

    def target_params(self) -> int:
        if self.run.sparsity is not None:
            prunable = sum(m.zscores.numel() * m.unit_params for m in self.modules)
            return int(self.run.sparsity * prunable)
        # A ratio_total target counts what the bias compensation adds back, so it is still met.
        wanted = math.ceil(self.run.settings.ratio * count_parameters(self.run.loaded.model))
        return wanted + self.added_bias_params()

    def added_bias_params(self) -> int:
        """Parameters the compensation adds: a bias on every scored consumer that has none."""
        layers = self.adapter.layers(self.run.loaded.model)
        added = 0
        for module in self.modules:
            consumer = self.run.watched_consumers(layers[module.index], module.kind)[module.kind]
            if consumer.bias is None:
                added += consumer.out_features
        return added


class FlapApply:
    """FLAP's second pass: each layer pruned as the global threshold decided (no statistics), in
    layer order, so a streamed layer is final, and written, as soon as it is pruned."""

    needs_gram = False
    changes_blocks = True

    def __init__(self, run: WidthRun, removed: list[tuple[ModuleScores, list[int]]]):
        self.run = run
        self.adapter = run.loaded.adapter
        self.removed = {(m.index, m.kind): (m, dropped) for m, dropped in removed}

    def watched(self, layer: nn.Module, kind: BlockKind) -> dict[str, nn.Module]:
        return self.run.watched_consumers(layer, kind)

    def decide(
        self, index: int, layer: nn.Module, kind: BlockKind, stats: dict[str, InputStatistics]
    ) -> bool:
        module, dropped = self.removed[(index, kind)]
        kept = complement(dropped, module.zscores.numel())
        if kind == "mlp":
            channels = self.adapter.mlp_channels(layer)
            compensate(channels.consumer, dropped, module.input_mean)
            slice_mlp(channels, kept)
            self.run.keep(index, "mlp", kept)
            consumer = channels.consumer
        else:
            channels = self.adapter.attention_channels(layer, self.run.config)
            columns = head_columns(channels, dropped, channels.v_head_dim)
            compensate(channels.o_proj, columns, module.input_mean)
            slice_heads(channels, kept, self.adapter)
            self.run.keep(index, "attn_heads", kept)
            consumer = channels.o_proj
        self.run.rewrote(consumer)
        self.run.note(index, kind, removed=len(dropped), kept=len(kept))
        return True


def complement(dropped: list[int], width: int) -> list[int]:
    """The indices of ``range(width)`` not in ``dropped``, ascending (one pass, not O(n²))."""
    keep = torch.ones(width, dtype=torch.bool)
    keep[torch.as_tensor(dropped, dtype=torch.long)] = False
    return keep.nonzero().flatten().tolist()


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """(x − mean) / std within one module, so modules of different scales share one threshold."""
    std = scores.std() if scores.numel() > 1 else scores.new_tensor(0.0)
    return (scores - scores.mean()) / (std if std > 0 else 1.0)


def global_selection(modules: list[ModuleScores], target_params: int) -> list[list[int]]:
    """Remove the lowest-scoring units across all modules until ``target_params`` are gone.

    Units are removed lowest score first; equal scores remove the later (module, index) first,
    the rule of ``selection.ranking`` (a stable sort: the same order on every device). A unit
    whose removal would empty its module is skipped, so every module keeps at least one.
    Vectorised, O(N log N) in the number of units (a 70B model has millions of MLP channels).
    Returns the removed unit indices per module, ascending.
    """
    if not modules:
        return []
    sizes = torch.tensor([m.zscores.numel() for m in modules])
    unit_params = torch.tensor([m.unit_params for m in modules], dtype=torch.float64)
    scores = torch.cat([m.zscores.reshape(-1) for m in modules])  # in (module, index) order
    order = removal_order(scores)
    module_of = torch.repeat_interleave(torch.arange(len(modules)), sizes)[order]
    allowed = rank_within_module(module_of, sizes) < sizes[module_of] - 1
    params = unit_params[module_of] * allowed
    removed_before = torch.cumsum(params, 0) - params  # what is gone when this unit comes up
    chosen = allowed & (removed_before < target_params)
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[order[chosen]] = True
    return [part.nonzero().flatten().tolist() for part in mask.split(sizes.tolist())]


def rank_within_module(module_of: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """For units listed in some order with their module ids: each one's position among the
    units of its own module in that order (0 for the first of each module)."""
    grouped = torch.sort(module_of, stable=True).indices  # positions, by module, order kept
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.empty_like(module_of)
    rank[grouped] = torch.arange(module_of.numel()) - starts[module_of[grouped]]
    return rank


def compensate(consumer: nn.Linear, columns: list[int], input_mean: torch.Tensor) -> None:
    """b += W[:, P]·mean(X_P): the removed columns' average output becomes a constant bias."""
    weight = consumer.weight.detach()
    bias = consumer.bias.detach().double() if consumer.bias is not None else None
    if bias is None:
        bias = torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
    if columns:
        index = torch.as_tensor(columns, dtype=torch.long, device=weight.device)
        mean = input_mean.to(weight.device).index_select(0, index)
        bias = bias + weight.double().index_select(1, index) @ mean
    set_consumer(consumer, weight, bias)


@dataclass
class FlapSettings(CalibratedWidthSettings):
    """FLAP: a parameter target met by one global threshold (adaptive widths)."""


def prune_flap(loaded: LoadedModel, settings: FlapSettings) -> PruningPlan:
    return run_width_method("flap", loaded, settings, FlapPruner, attn_unit="global")


register(
    Method(
        name="flap",
        family="width",
        summary="FLAP: fluctuation scores, global threshold (adaptive widths), bias compensation",
        prune=prune_flap,
        settings_type=FlapSettings,
        streams=True,
        passes=(WIDTH_STATS, SLICING),
        non_stock_shapes=lambda settings: "its global threshold gives each layer its own widths",
    )
)
