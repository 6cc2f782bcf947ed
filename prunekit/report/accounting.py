"""Parameter accounting (docs/protocol.md): totals, decoder-only, and the ratios between models."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from prunekit.models.adapters import Adapter


@dataclass
class ParameterCounts:
    total: int  # every parameter once (tied embeddings / LM head count once)
    decoder: int  # parameters inside the decoder layers
    embeddings: int  # total - decoder: embeddings, final norm, LM head if untied

    def to_dict(self) -> dict:
        return asdict(self)


def parameter_counts(model: nn.Module, adapter: Adapter) -> ParameterCounts:
    total = sum(p.numel() for p in model.parameters())
    decoder = sum(p.numel() for p in adapter.layers(model).parameters())
    return ParameterCounts(total=total, decoder=decoder, embeddings=total - decoder)


def pruning_ratios(before: ParameterCounts, after: ParameterCounts) -> dict:
    """ratio_total (BlockPruner's "Ratio") and ratio_decoder = 1 - after / before."""
    return {
        "before": before.total,
        "after": after.total,
        "decoder_before": before.decoder,
        "decoder_after": after.decoder,
        "ratio_total": 1.0 - after.total / before.total,
        "ratio_decoder": 1.0 - after.decoder / before.decoder if before.decoder else 0.0,
    }
