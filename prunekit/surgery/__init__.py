"""Applying plans: physical removal of blocks (depth) and channels (width)."""

from __future__ import annotations

from pathlib import Path

from prunekit.models.loading import LoadedModel
from prunekit.plan import PruningPlan


def apply_plan(
    loaded: LoadedModel,
    plan: PruningPlan,
    run_dir: str | Path | None = None,
    *,
    force: bool = False,
) -> dict | None:
    """Replay a saved plan on a freshly loaded copy of its base model (in place).

    ``run_dir`` is where a width plan's restored weights live, when it has any. A model whose
    weights are not the plan's is refused unless ``force``; a forced mismatch is returned and
    kept on ``loaded.forced_model_mismatch`` so reports can record it.
    """
    mismatch = plan.check_model(loaded.identity(), force=force)
    loaded.forced_model_mismatch = mismatch
    if plan.removed_blocks:
        from prunekit.surgery.depth import apply_depth_plan

        apply_depth_plan(loaded, plan)
    if plan.kept_channels:
        from prunekit.surgery.width import apply_width_plan

        apply_width_plan(loaded, plan, run_dir)
    return mismatch
