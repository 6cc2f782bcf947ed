"""FASP (arXiv 2501.09412): coupled channels, Wanda-style scores, least-squares restoration.

Per layer, sequentially on the outputs of the already-pruned layers: MLP intermediate channels
(gate/up rows ↔ down_proj columns) and attention value channels (v_proj rows ↔ the o_proj columns
of every query head reading that kv head) are scored ‖X_j‖₂ · Σ_i |W_ij|; the top (1 − s) are
kept; the consumer is restored toward its original weights by damped least squares; Q and K are
never touched. docs/algorithms.md, "FASP (width)", is the specification.

``--allocation cost`` (the default) first measures each group's reconstruction cost on the dense
model and spends the sparsity where it costs least per parameter (``allocation.py``);
``--allocation uniform`` keeps the same fraction of every group (the paper's setting).
docs/results/width.md has the evidence for the default. Streamed, the cost pass reads each dense
layer from the shards and releases it unchanged; the pruning pass then reads it again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from prunekit.engine.executor import default_batch_size
from prunekit.engine.passes import RESTORATION_SOLVE, SLICING, WIDTH_REPLAY, WIDTH_STATS
from prunekit.engine.sequential import sequential_pass
from prunekit.errors import SettingsError
from prunekit.methods.registry import Method, register
from prunekit.methods.settings import (
    API_ONLY,
    RestorationSettings,
    UniformWidth,
    WidthAllocation,
)
from prunekit.methods.width.allocation import (
    COST_NORMALISERS,
    CostProbe,
    allocate,
    target_removal,
)
from prunekit.methods.width.common import (
    CalibratedWidthSettings,
    WidthRun,
    removed_uniform,
    run_width_method,
)
from prunekit.methods.width.scoring import wanda_sum
from prunekit.methods.width.structure import layer_units
from prunekit.methods.width.uniform import UniformPruner
from prunekit.models.loading import LoadedModel, count_parameters
from prunekit.plan import PruningPlan


@dataclass
class FaspSettings(WidthAllocation, RestorationSettings, UniformWidth, CalibratedWidthSettings):
    """FASP: uniform or cost-allocated widths, restoration."""

    # ``--allocation cost``: what a group's reconstruction error is divided by (allocation.py,
    # COST_NORMALISERS): the residual stream's energy, or the group's own output's.
    allocation_cost: str = field(default="residual", metadata=API_ONLY)

    def validate(self) -> None:
        super().validate()
        if self.allocation_cost not in COST_NORMALISERS:
            raise SettingsError(
                f"allocation_cost must be one of {', '.join(COST_NORMALISERS)}, "
                f"got {self.allocation_cost!r}"
            )


def prune_fasp(loaded: LoadedModel, settings: FaspSettings) -> PruningPlan:
    # The plan records the allocation that ran, never None (the default: cost).
    settings = dataclasses.replace(settings, allocation=settings.allocation or "cost")
    return run_width_method(
        "fasp",
        loaded,
        settings,
        lambda run: UniformPruner(run, wanda_sum, "value", restore=settings.restore),
        attn_unit="value",
        before_pass=allocate_by_cost if settings.allocation == "cost" else None,
    )


def non_stock_shapes(settings: FaspSettings) -> str | None:
    """Why FASP's plan gives the layers shapes no stock config describes (None: it keeps them
    stock): per-layer widths, or value heads narrower than the query/key heads."""
    if settings.allocation in (None, "cost"):
        return "its cost allocation (the default) gives each layer its own widths"
    if "attn" in settings.targets:
        return (
            "its value channels leave the value heads narrower than the query/key heads "
            "(--targets mlp keeps stock shapes)"
        )
    return None


def allocate_by_cost(run: WidthRun, windows: torch.Tensor) -> None:
    """Pass 1 on the dense model: cost curves; then per-group widths meeting the target."""
    settings = run.settings
    normaliser = settings.allocation_cost
    probe = CostProbe(run, normaliser)
    # The probe changes nothing: a streamed layer is read, measured and released, not final.
    sequential_pass(
        run.loaded,
        windows,
        probe,
        batch_size=settings.batch_size or default_batch_size(run.loaded.device, len(windows)),
        residency=run.residency,
        finalizes=False,
    )
    target = removal_target(run.loaded, settings)
    run.widths = allocate(probe.curves, target, settings.multiple_of)
    run.extra["allocation"] = {
        "mode": "cost",
        "normaliser": normaliser,
        "target_params": target,
        "widths": {
            str(index): {kind: run.widths[(index, kind)] for (i, kind) in run.widths if i == index}
            for index in sorted({i for i, _ in run.widths})
        },
        "curves": [
            {"layer": c.index, "kind": c.kind, "removed": c.removed, "cost": c.cost}
            for c in probe.curves
        ],
    }


def removal_target(loaded: LoadedModel, settings: FaspSettings) -> int:
    """Parameters to remove: ceil(ratio · total) for ``--ratio``; for ``--sparsity``, what the
    uniform column ratio would remove (the same budget, spent elsewhere)."""
    if settings.ratio is not None:
        return target_removal(count_parameters(loaded.model), settings.ratio)
    return removed_uniform(layer_units(loaded), settings.sparsity, settings, "value")


register(
    Method(
        name="fasp",
        family="width",
        summary="FASP: coupled MLP/value channels, Wanda-style score, least-squares restoration",
        prune=prune_fasp,
        settings_type=FaspSettings,
        streams=True,
        non_stock_shapes=non_stock_shapes,
        passes=(WIDTH_STATS, WIDTH_REPLAY, RESTORATION_SOLVE, SLICING),
    )
)
