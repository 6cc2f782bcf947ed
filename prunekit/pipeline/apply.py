"""Carrying out what a method decided. Methods decide (docs/design.md, "The flow"); this module
runs one with what the pipeline lends it, then executes its decision and writes its files:

- a depth plan: a streamed model's surviving layers go to the export first (read from the
  shards, written under their new numbers), then the surgery removes the blocks and the plan
  records what it kept; with a run directory the final plan is kept as plan.partial.json (a
  crash before the report resumes from it) and the plots go beside it;
- a width plan (its method pruned the model in place, layer by layer): the weights of the
  consumers it rewrote are saved in the run directory (restored.safetensors).

A resumable method is lent the run's checkpoints (``checkpoints.py``), a combined method the
stage runner (``run_stage``), which the speed target's builds use too.
"""

from __future__ import annotations

from pathlib import Path

from prunekit.engine.residency import is_streamed
from prunekit.export.streamed import write_depth_pruned
from prunekit.methods.registry import Method
from prunekit.methods.settings import MethodSettings
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import LoadedModel, count_parameters
from prunekit.pipeline.checkpoints import RunCheckpoints, run_checkpoints
from prunekit.plan import PruningPlan
from prunekit.report.plots import write_depth_plots
from prunekit.surgery.depth import remove_blocks
from prunekit.surgery.width import save_rewritten_consumers

NOT_SAVED = "not saved: no run directory (pass out=...)"


def run_method(method: Method, loaded: LoadedModel, settings: MethodSettings) -> PruningPlan:
    """Prune ``loaded`` in place with ``method`` and return its plan: the method decides, and
    each decision (each stage's, for a combined method) is carried out here."""
    if method.family == "combined":
        return method.prune(loaded, settings, run_stage=run_stage)
    return run_stage(method, loaded, settings)


def run_stage(method: Method, loaded: LoadedModel, settings: MethodSettings) -> PruningPlan:
    """One depth or width method on ``loaded``, its decision carried out (a ``StageRunner``).

    Files go to ``settings.run_dir`` only: a stage run without one (the speed target's candidate
    builds) writes nothing."""
    if method.resumable:
        plan = method.prune(loaded, settings, checkpoints=run_checkpoints(settings))
    else:
        plan = method.prune(loaded, settings)
    if method.family == "depth":
        carry_out_depth(loaded, plan)
        if settings.run_dir:
            keep_depth_records(Path(settings.run_dir), plan)
    else:
        keep_rewritten_weights(plan, settings.run_dir)
    return plan


def carry_out_depth(loaded: LoadedModel, plan: PruningPlan) -> None:
    """Remove the plan's blocks from ``loaded`` (a streamed model's kept layers are written to
    the export first) and record what the surgery kept in ``plan.extra``."""
    num_layers = loaded.adapter.num_layers(loaded.model)
    params_before = count_parameters(loaded.model)
    removed = [BlockRef.parse(block) for block in plan.removed_blocks]
    written = write_depth_pruned(loaded.residency, removed) if is_streamed(loaded) else None
    surgery = remove_blocks(loaded, removed)
    if count_parameters(loaded.model) != params_before - surgery.removed_parameters:
        raise RuntimeError("depth surgery removed a different parameter count than planned")
    if written is not None and written != surgery.kept_layers:
        raise RuntimeError("the streamed export wrote other layers than the surgery kept")
    plan.extra["kept_layers"] = surgery.kept_layers
    plan.extra["layer_blocks"] = surgery.layer_blocks
    plan.extra["num_layers_before"] = num_layers


def keep_depth_records(run_dir: Path, plan: PruningPlan) -> None:
    """The final plan where the search checkpointed, and the plots of its trajectory."""
    RunCheckpoints(run_dir).save(plan)
    write_depth_plots(run_dir, plan, plan.extra["num_layers_before"])


def keep_rewritten_weights(plan: PruningPlan, run_dir: str | Path | None) -> None:
    """Save the consumers a width method rewrote as the file its plan names (and let go of
    them); without a run directory the plan says they were not saved."""
    tensors, plan.rewritten_weights = plan.rewritten_weights, {}
    if not tensors:
        return
    if run_dir:
        save_rewritten_consumers(tensors, Path(run_dir) / plan.extra["restored_weights"])
    else:
        plan.extra["restored_weights_note"] = NOT_SAVED
