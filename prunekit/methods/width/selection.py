"""How many channels to keep, and which: pure functions of scores and settings."""

from __future__ import annotations

import math

import torch


def kept_count(width: int, sparsity: float, multiple_of: int = 1) -> int:
    """round((1 - s) · n), at least 1, rounded *up* to a multiple of ``multiple_of``, at most n."""
    keep = max(1, round((1.0 - sparsity) * width))
    keep = math.ceil(keep / multiple_of) * multiple_of
    return min(width, keep)


def top_indices(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores, ascending (the order surgery preserves)."""
    if keep >= scores.numel():
        return list(range(scores.numel()))
    return sorted(torch.topk(scores.double(), keep).indices.tolist())


def top_indices_per_row(scores: torch.Tensor, keep: int) -> list[list[int]]:
    """``top_indices`` for each row of a [groups, width] score matrix: same count in every row."""
    return [top_indices(row, keep) for row in scores]
