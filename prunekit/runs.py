"""Load whatever a user points ``prunekit eval`` at: a model spec, a run directory or an export.

A run directory holds no weights, only ``plan.json``: the pruned model is rebuilt by reloading the
base model the plan names and replaying the plan (``prunekit.surgery.apply_plan``), which refuses
a base model whose identity differs from the one recorded. An exported directory (written by
``prunekit export``) holds the pruned weights and is loaded by ``prunekit.export.load_pruned``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prunekit.errors import PlanError
from prunekit.models.loading import LoadedModel, load_model
from prunekit.plan import PruningPlan
from prunekit.report.run_dir import PARTIAL_PLAN_FILE, PLAN_FILE, is_run_dir


@dataclass
class EvalTarget:
    """A loaded model and where it came from (``kind``: model, run or export)."""

    loaded: LoadedModel
    kind: str
    path: str | None = None  # the run or export directory

    def describe(self) -> dict:
        described = {"kind": self.kind, "path": self.path, **self.loaded.identity()}
        if self.loaded.forced_model_mismatch:
            described["forced_model_mismatch"] = self.loaded.forced_model_mismatch
        return described


def _is_export_dir(path: Path) -> bool:
    # The export package is written by another module; until it exists nothing is an export.
    try:
        from prunekit.export.load import is_export_dir
    except ImportError:
        return False
    return is_export_dir(path)


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


def load_for_eval(
    target: str,
    *,
    base: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
    force: bool = False,
) -> EvalTarget:
    """Load ``target``: an export directory, a run directory (``base`` overrides the plan's base
    model; ``force`` as in ``load_run``), or anything ``load_model`` takes."""
    path = Path(target).expanduser()
    kwargs = {"dtype": dtype, "device": device, "attn_implementation": attn_implementation}
    if path.is_dir() and _is_export_dir(path):
        from prunekit.export.load import load_pruned

        return EvalTarget(load_pruned(path, **kwargs), "export", str(path))
    if path.is_dir() and (is_run_dir(path) or (path / PARTIAL_PLAN_FILE).is_file()):
        replayed = load_run(path, base=base, force=force, **kwargs)
        return EvalTarget(replayed, "run", str(path))
    if base is not None and base != target:
        raise PlanError(f"--model {base!r} only applies to a run directory; {target!r} is not one")
    return EvalTarget(load_model(target, **kwargs), "model")
