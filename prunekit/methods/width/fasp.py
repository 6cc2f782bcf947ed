"""FASP (arXiv 2501.09412): coupled channels, Wanda-style scores, least-squares restoration.

Per layer, sequentially on the outputs of the already-pruned layers: MLP intermediate channels
(gate/up rows ↔ down_proj columns) and attention value channels (v_proj rows ↔ the o_proj columns
of every query head reading that kv head) are scored ‖X_j‖₂ · Σ_i |W_ij|; the top (1 − s) are
kept; the consumer is restored toward its original weights by damped least squares; Q and K are
never touched. ALGORITHMS.md, "FASP", is the specification.
"""

from __future__ import annotations

from prunekit.methods.registry import (
    CALIBRATION,
    RESTORATION,
    UNIFORM_WIDTH,
    WIDTH_TARGET,
    Method,
    PruneSettings,
    register,
)
from prunekit.methods.width.common import run_width_method
from prunekit.methods.width.scoring import wanda_sum
from prunekit.methods.width.uniform import UniformPruner
from prunekit.models.loading import LoadedModel
from prunekit.plan import PruningPlan


def prune_fasp(loaded: LoadedModel, settings: PruneSettings) -> PruningPlan:
    return run_width_method(
        "fasp",
        loaded,
        settings,
        lambda run: UniformPruner(run, wanda_sum, "value", restore=settings.restore),
        attn_unit="value",
    )


register(
    Method(
        name="fasp",
        family="width",
        summary="FASP: coupled MLP/value channels, Wanda-style score, least-squares restoration",
        prune=prune_fasp,
        takes=WIDTH_TARGET + UNIFORM_WIDTH + RESTORATION + CALIBRATION,
        streams=True,
    )
)
