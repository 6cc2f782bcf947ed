"""Uniform per-layer width pruning: the decision shared by FASP, Wanda-sp and magnitude.

Every layer keeps the same fraction of each group: intermediate channels of the MLP, and for
attention either value channels (the same count in every kv head, FASP / magnitude) or whole kv
groups (Wanda-sp). A method supplies its column score and whether to restore the consumer.
With per-group widths on the run (``WidthRun.widths``, FASP's ``--allocation cost``,
``allocation.py``) each group keeps its allocated count instead; scores and restoration are
unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from prunekit.engine.sequential import ConsumerOnly, InputStatistics
from prunekit.methods.width.common import WidthRun
from prunekit.methods.width.restoration import restore_consumer
from prunekit.methods.width.scoring import per_kv_group, per_value_channel
from prunekit.methods.width.selection import kept_count, top_indices, top_indices_per_row
from prunekit.models.adapters import BlockKind
from prunekit.surgery.width import (
    head_columns,
    set_consumer,
    slice_heads,
    slice_mlp,
    slice_value_channels,
    value_columns,
)

ColumnScore = Callable[[torch.Tensor, InputStatistics | None], torch.Tensor]


class UniformPruner:
    """A ``SequentialMethod``: score columns, keep the top (1 − s) per layer, optionally restore."""

    def __init__(
        self,
        run: WidthRun,
        score: ColumnScore,
        attn_unit: Literal["value", "heads"],
        restore: bool,
        head_reduce: str = "sum",
    ):
        self.run = run
        self.score = score
        self.attn_unit = attn_unit
        self.restore = restore
        self.head_reduce = head_reduce
        self.needs_gram = restore
        self.changes_blocks = True
        self.adapter = run.loaded.adapter

    def watched(self, layer: nn.Module, kind: BlockKind) -> dict[str, nn.Module]:
        return self.run.watched_consumers(layer, kind)

    def decide(
        self, index: int, layer: nn.Module, kind: BlockKind, stats: dict[str, InputStatistics]
    ) -> bool | ConsumerOnly:
        if kind == "mlp":
            channels = self.adapter.mlp_channels(layer)
            scores = self.score(channels.consumer.weight, stats.get("mlp"))
            kept = top_indices(scores, self._kept(index, kind, channels.width))
            self._restore(index, "mlp", channels.consumer, kept, stats.get("mlp"))
            slice_mlp(channels, kept)
            self.run.keep(index, "mlp", kept)
            return True
        channels = self.adapter.attention_channels(layer, self.run.config)
        column_scores = self.score(channels.o_proj.weight, stats.get("attn"))
        if self.attn_unit == "heads":
            groups = top_indices(
                per_kv_group(column_scores, channels, self.head_reduce),
                kept_count(channels.num_kv_heads, self.run.sparsity),
            )
            columns = head_columns(channels, groups, channels.v_head_dim)
            slice_heads(channels, groups, self.adapter)
            self.run.keep(index, "attn_heads", groups)
            return ConsumerOnly("attn", columns)
        per_kv = top_indices_per_row(
            per_value_channel(column_scores, channels),
            self._kept(index, kind, channels.v_head_dim),
        )
        columns = value_columns(channels, per_kv)
        self._restore(index, "attn", channels.o_proj, columns, stats.get("attn"))
        slice_value_channels(channels, per_kv, self.adapter)
        self.run.keep(index, "attn_v", per_kv)
        return ConsumerOnly("attn", columns)

    def _kept(self, index: int, kind: BlockKind, width: int) -> int:
        """Channels (per kv head for values) this group keeps: the run's allocated width when
        it has one (``--allocation cost``), else the uniform ``kept_count``."""
        allocated = self.run.widths.get((index, kind)) if self.run.widths else None
        if allocated is not None:
            return allocated
        return kept_count(width, self.run.sparsity, self.run.settings.multiple_of)

    def _restore(
        self,
        index: int,
        group: str,
        consumer: nn.Linear,
        kept: list[int],
        stats: InputStatistics | None,
    ) -> None:
        """Least-squares restore ``consumer`` on its kept columns (before it is sliced)."""
        if not self.restore or stats is None or stats.gram is None:
            return
        if len(kept) == consumer.weight.shape[1]:
            return  # a group the allocation leaves whole: nothing to restore (only fp noise)
        result = restore_consumer(
            consumer.weight,
            stats.gram,
            kept,
            self.run.settings.damping,
            name=f"layer {index} {group}",
        )
        full = consumer.weight.data.clone()
        full[:, kept] = result.weight.to(full.dtype)
        set_consumer(consumer, full, None)
        self.run.rewrote(consumer)
        self.run.note(
            index,
            group,
            error_sliced=result.error_sliced,
            error_restored=result.error_restored,
            damping=result.damping,
            tokens_per_column=stats.count / len(kept),
        )
