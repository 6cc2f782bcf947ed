"""Wanda-sp: Wanda's |W|·‖X‖ score, structured: MLP channels and whole attention heads.

Attention is pruned by kv group (a kv head with the query heads that read it, q/k/v/o
together), the group's score being the sum of its o_proj column scores; uniform ratio; no
restoration.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.engine.passes import SLICING, WIDTH_REPLAY, WIDTH_STATS
from prunekit.methods.registry import Method, register
from prunekit.methods.settings import UniformWidth
from prunekit.methods.width.common import CalibratedWidthSettings, run_width_method
from prunekit.methods.width.scoring import wanda_mean
from prunekit.methods.width.uniform import UniformPruner
from prunekit.models.loading import LoadedModel
from prunekit.plan import PruningPlan


@dataclass
class WandaSpSettings(UniformWidth, CalibratedWidthSettings):
    """Wanda-sp: one uniform column ratio, no restoration."""


def prune_wanda_sp(loaded: LoadedModel, settings: WandaSpSettings) -> PruningPlan:
    return run_width_method(
        "wanda-sp",
        loaded,
        settings,
        lambda run: UniformPruner(run, wanda_mean, "heads", restore=False),
        attn_unit="heads",
    )


register(
    Method(
        name="wanda-sp",
        family="width",
        summary="Wanda-sp: |W|·‖X‖ channel scores, whole attention heads, no restoration",
        prune=prune_wanda_sp,
        settings_type=WandaSpSettings,
        streams=True,
        passes=(WIDTH_STATS, WIDTH_REPLAY, SLICING),
    )
)
