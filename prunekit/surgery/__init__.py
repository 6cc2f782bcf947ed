"""Applying plans: physical removal of blocks (depth) and channels (width)."""

from __future__ import annotations

from pathlib import Path

from prunekit.errors import PlanError
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
    kept on ``loaded.forced_model_mismatch`` so reports can record it. A combined plan replays
    its stages in order (``apply_stages``).
    """
    mismatch = plan.check_model(loaded.identity(), force=force)
    loaded.forced_model_mismatch = mismatch
    if plan.stages:
        apply_stages(loaded, plan.stage_plans(), run_dir, force=force)
    else:
        apply_one(loaded, plan, run_dir)
    return mismatch


def apply_stages(
    loaded: LoadedModel,
    stages: list[PruningPlan],
    run_dir: str | Path | None = None,
    *,
    force: bool = False,
) -> None:
    """Apply a combined plan's stages in order. Each stage after the first was made on the
    model the earlier stages left (its layer indices are that model's): before it applies, the
    model in hand must match the identity the stage recorded, so a stage can never be applied
    to layers it does not describe (``force`` only lets different weights through)."""
    for number, stage in enumerate(stages, start=1):
        if stage.stages:
            raise PlanError(f"stage {number} ({stage.method}) is itself a combined plan")
        try:
            stage.check_model(loaded.identity(), force=force)
        except PlanError as exc:
            raise PlanError(
                f"stage {number} ({stage.method}) does not fit the model the stages before it "
                f"left: {exc}"
            ) from None
        apply_one(loaded, stage, run_dir)


def apply_one(loaded: LoadedModel, plan: PruningPlan, run_dir: str | Path | None = None) -> None:
    """The removals of a one-method plan: blocks (depth), then channels (width)."""
    if plan.removed_blocks:
        from prunekit.surgery.depth import apply_depth_plan

        apply_depth_plan(loaded, plan)
    if plan.kept_channels:
        from prunekit.surgery.width import apply_width_plan

        apply_width_plan(loaded, plan, run_dir)
