"""Magnitude: ‖W_:,j‖ of the consumer column, no data — the floor any metric must beat.

Same coupled groups and uniform ratio as FASP (MLP channels, value channels); no calibration.
"""

from __future__ import annotations

from prunekit.engine.passes import SLICING
from prunekit.methods.registry import Method, register
from prunekit.methods.width.common import UniformWidthSettings, run_width_method
from prunekit.methods.width.scoring import magnitude
from prunekit.methods.width.uniform import UniformPruner
from prunekit.models.loading import LoadedModel
from prunekit.plan import PruningPlan


def prune_magnitude(loaded: LoadedModel, settings: UniformWidthSettings) -> PruningPlan:
    return run_width_method(
        "magnitude",
        loaded,
        settings,
        lambda run: UniformPruner(run, magnitude, "value", restore=False),
        attn_unit="value",
        needs_data=False,
    )


register(
    Method(
        name="magnitude",
        family="width",
        summary="Magnitude: consumer column norms, no calibration data",
        prune=prune_magnitude,
        settings_type=UniformWidthSettings,
        streams=True,
        passes=(SLICING,),
    )
)
