"""Column scores of a consumer matrix W (out × in), one per input column j.

Higher means more important. Scores for coupled groups larger than a column (a value channel
read by several query heads, a whole head) are sums or means over their columns.
"""

from __future__ import annotations

import torch

from prunekit.engine.sequential import InputStatistics
from prunekit.models.adapters import AttentionChannels


def wanda_sum(weight: torch.Tensor, stats: InputStatistics) -> torch.Tensor:
    """FASP: ‖X_j‖₂ · Σ_i |W_ij|."""
    return stats.norm * weight.detach().abs().sum(dim=0, dtype=torch.float64)


def wanda_mean(weight: torch.Tensor, stats: InputStatistics) -> torch.Tensor:
    """Wanda-sp: mean_i |W_ij| · ‖X_j‖₂."""
    return stats.norm * weight.detach().abs().mean(dim=0, dtype=torch.float64)


def magnitude(weight: torch.Tensor, stats: InputStatistics | None = None) -> torch.Tensor:
    """‖W_:,j‖₂: no data at all, the floor any metric must beat."""
    return weight.detach().double().norm(dim=0)


def fluctuation(weight: torch.Tensor, stats: InputStatistics) -> torch.Tensor:
    """FLAP: Var_t(X_j) · ‖W_:,j‖²: a column whose input barely moves is replaceable by a bias."""
    return stats.variance * weight.detach().double().square().sum(dim=0)


def per_value_channel(columns: torch.Tensor, channels: AttentionChannels) -> torch.Tensor:
    """[n_kv, v_head_dim]: o_proj column scores summed over the query heads of each kv head."""
    per_head = columns.view(channels.num_kv_heads, channels.queries_per_kv, channels.v_head_dim)
    return per_head.sum(dim=1)


def per_kv_group(columns: torch.Tensor, channels: AttentionChannels, reduce: str) -> torch.Tensor:
    """[n_kv]: o_proj column scores of each kv group (a kv head and its query heads) reduced."""
    grouped = columns.view(channels.num_kv_heads, -1)
    return grouped.sum(dim=1) if reduce == "sum" else grouped.mean(dim=1)
