"""Rebuild a run directory's pruned model: its base model with the plan replayed.

A run directory holds no weights, only ``plan.json`` (and a width method's rewritten consumers
in ``restored.safetensors``): the pruned model is the base model the plan names, reloaded, with
the plan applied by ``prunekit.surgery.apply_plan``, which refuses a base model whose identity
differs from the one recorded. One of the steps behind ``prunekit.load``.
"""

from __future__ import annotations

from pathlib import Path

from prunekit.errors import PlanError
from prunekit.models.loading import LoadedModel, load_model
from prunekit.plan import PruningPlan
from prunekit.report.run_dir import PARTIAL_PLAN_FILE, PLAN_FILE


def load_run(
    run_dir: str | Path,
    *,
    base: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
    force: bool = False,
) -> LoadedModel:
    """The pruned model of ``run_dir``: its base model (or ``base``) with its plan replayed.

    ``force`` replays the plan even on weights that are not the ones it was made for (recorded
    on the result's ``forced_model_mismatch``)."""
    from prunekit.surgery import apply_plan

    run_dir = Path(run_dir)
    plan_path = run_dir / PLAN_FILE
    if not plan_path.is_file():
        hint = (
            f" (only {PARTIAL_PLAN_FILE}: the run did not finish; resume it with prune --resume)"
            if (run_dir / PARTIAL_PLAN_FILE).is_file()
            else ""
        )
        raise PlanError(f"{run_dir} is not a finished run directory: no {PLAN_FILE}{hint}")
    plan = PruningPlan.load(plan_path)
    spec = base or plan.model.get("spec")
    if not spec:
        raise PlanError(f"{plan_path} does not name its base model; pass it with --model")
    loaded = load_model(spec, dtype=dtype, device=device, attn_implementation=attn_implementation)
    try:
        apply_plan(loaded, plan, run_dir, force=force)
    except PlanError as exc:
        raise PlanError(f"run {run_dir}: {exc} (base model loaded from {spec!r})") from None
    loaded.spec = f"{spec} + {plan.method} ({run_dir})"
    return loaded
