"""FLAP (An et al., 2024): fluctuation scores, one global threshold, bias compensation.

Statistics are gathered on the dense model in one sequential pass (nothing changes on the way,
so each block costs one forward). Scores Var_t(X_j)·‖W_:,j‖² are standardised per module (MLP
channels; attention kv groups scored by the mean over their o_proj columns); then one threshold
across all layers removes the lowest units until the parameter target is met, which yields
adaptive per-layer widths. A removed column's average contribution is folded into the
consumer's bias: b += W[:, P]·mean(X_P) (a bias is added where the stock module has none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.engine.sequential import InputStatistics
from prunekit.methods.registry import (
    CALIBRATION,
    WIDTH_TARGET,
    Method,
    PruneSettings,
    register,
)
from prunekit.methods.width.common import WidthRun, run_width_method
from prunekit.methods.width.scoring import fluctuation, per_kv_group
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
    """Records per-module scores during the pass; ``finish`` thresholds globally and prunes."""

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

    def finish(self) -> None:
        removed = global_selection(self.modules, self.target_params())
        layers = self.adapter.layers(self.run.loaded.model)
        for module, dropped in zip(self.modules, removed, strict=True):
            kept = [i for i in range(module.zscores.numel()) if i not in set(dropped)]
            self.apply(layers[module.index], module, kept, dropped)

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

    def apply(self, layer: nn.Module, module: ModuleScores, kept: list[int], dropped: list[int]):
        index = module.index
        if module.kind == "mlp":
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
        self.run.note(index, module.kind, removed=len(dropped), kept=len(kept))


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """(x − mean) / std within one module, so modules of different scales share one threshold."""
    std = scores.std() if scores.numel() > 1 else scores.new_tensor(0.0)
    return (scores - scores.mean()) / (std if std > 0 else 1.0)


def global_selection(modules: list[ModuleScores], target_params: int) -> list[list[int]]:
    """Remove the lowest-scoring units across all modules until ``target_params`` are gone.

    Every module keeps at least one unit. Returns the removed unit indices per module.
    """
    units = sorted(
        (score, m, i)
        for m, module in enumerate(modules)
        for i, score in enumerate(module.zscores.tolist())
    )
    removed: list[list[int]] = [[] for _ in modules]
    total = 0
    for _score, m, i in units:
        if total >= target_params:
            break
        if len(removed[m]) + 1 >= modules[m].zscores.numel():
            continue
        removed[m].append(i)
        total += modules[m].unit_params
    return [sorted(r) for r in removed]


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


def prune_flap(loaded: LoadedModel, settings: PruneSettings) -> PruningPlan:
    return run_width_method("flap", loaded, settings, FlapPruner, attn_unit="global")


register(
    Method(
        name="flap",
        family="width",
        summary="FLAP: fluctuation scores, global threshold (adaptive widths), bias compensation",
        prune=prune_flap,
        takes=WIDTH_TARGET + CALIBRATION,
    )
)
