"""Applying plans: physical removal of blocks (depth) and channels (width)."""

from __future__ import annotations

from pathlib import Path

from prunekit.models.loading import LoadedModel
from prunekit.plan import PruningPlan


def apply_plan(loaded: LoadedModel, plan: PruningPlan, run_dir: str | Path | None = None) -> None:
    """Replay a saved plan on a freshly loaded copy of its base model (in place).

    ``run_dir`` is where a width plan's restored weights live, when it has any.
    """
    plan.check_model(loaded.identity())
    if plan.removed_blocks:
        from prunekit.surgery.depth import apply_depth_plan

        apply_depth_plan(loaded, plan)
    if plan.kept_channels:
        from prunekit.surgery.width import apply_width_plan

        apply_width_plan(loaded, plan, run_dir)
