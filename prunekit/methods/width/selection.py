"""How many channels to keep, and which: pure functions of scores and settings.

Selection is by (score, index): higher scores rank first, equal scores rank by the lower index
(the lower index is kept, the higher one removed), and NaN ranks below everything.
``torch.topk`` breaks ties differently on CPU and CUDA (dead channels score exactly 0), so the
same scores could give different plans on different devices; here every ranking is a stable
sort of the scores in float64 on the CPU, the same on every machine and for every input device
and dtype.
"""

from __future__ import annotations

import math

import torch


def kept_count(width: int, sparsity: float, multiple_of: int = 1) -> int:
    """round((1 - s) · n), at least 1, rounded *up* to a multiple of ``multiple_of``, at most n."""
    keep = max(1, round((1.0 - sparsity) * width))
    keep = math.ceil(keep / multiple_of) * multiple_of
    return min(width, keep)


def canonical_scores(scores: torch.Tensor) -> torch.Tensor:
    """Flat float64 CPU copy with -0.0 as +0.0 (so it ties with 0.0)."""
    return scores.detach().to("cpu", torch.float64).reshape(-1) + 0.0


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Every index, best first: descending score, ties by ascending index, NaN last."""
    values = canonical_scores(scores)
    nan = values.isnan()
    order = torch.sort(values.masked_fill(nan, -math.inf), descending=True, stable=True).indices
    return torch.cat([order[~nan[order]], order[nan[order]]])


def removal_order(scores: torch.Tensor) -> torch.Tensor:
    """Every index, worst first: ``ranking`` reversed, so a tie removes the higher index first."""
    return ranking(scores).flip(0)


def top_indices(scores: torch.Tensor, keep: int) -> list[int]:
    """The ``keep`` best indices by (score, index), ascending (the order surgery keeps)."""
    if keep >= scores.numel():
        return list(range(scores.numel()))
    return sorted(ranking(scores)[:keep].tolist())


def top_indices_per_row(scores: torch.Tensor, keep: int) -> list[list[int]]:
    """``top_indices`` for each row of a [groups, width] score matrix: same count in every row."""
    return [top_indices(row, keep) for row in scores]
