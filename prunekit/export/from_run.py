"""Export a finished run directory: reload its base model, replay the plan, save the result.

A run directory stores the plan (and a width method's rewritten weights), not the pruned model,
so exporting replays the plan on a fresh copy of the base model (docs/design.md, "Principles",
1). The plan checks it is applied to the model it was made for.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prunekit.errors import ExportError
from prunekit.export.gguf import GgufResult, check_gguf_target, export_gguf
from prunekit.export.gguf.encode import check_gguf_type
from prunekit.export.save import (
    DEFAULT_MAX_SHARD_SIZE,
    ExportResult,
    check_target,
    export_model,
)
from prunekit.loader import load
from prunekit.plan import PruningPlan
from prunekit.report.run_dir import PLAN_FILE, REPORT_FILE
from prunekit.surgery import apply_plan


def read_run(run_dir: Path) -> tuple[PruningPlan, dict]:
    """(plan, report) of a finished run; a clear error for anything else."""
    if not run_dir.is_dir():
        raise ExportError(f"run directory not found: {run_dir}")
    if not (run_dir / PLAN_FILE).is_file():
        raise ExportError(f"{run_dir} is not a run directory (no {PLAN_FILE})")
    plan = PruningPlan.load(run_dir / PLAN_FILE)
    if not plan.complete:
        raise ExportError(f"the run in {run_dir} is unfinished; resume it before exporting")
    report: dict = {}
    if (run_dir / REPORT_FILE).is_file():
        try:
            report = json.loads((run_dir / REPORT_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise ExportError(f"{run_dir / REPORT_FILE} is not valid JSON: {exc}") from None
    return plan, report


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    model: str | None = None,
    fmt: str = "auto",
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    overwrite: bool = False,
    force: bool = False,
    attn_implementation: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    gguf_type: str = "f16",
) -> ExportResult | GgufResult:
    """Replay the run's plan on its base model (or ``model``) and export it to ``out``.

    The base model is loaded in the dtype the run used, so the replayed weights are the ones the
    run measured; ``dtype`` then sets the dtype written to disk. ``overwrite`` replaces an
    existing ``out``; ``force`` replays the plan even on weights that are not the ones it was made
    for, and records that in the exported report.json (``forced_model_mismatch``).
    ``fmt="gguf"`` writes one GGUF file ``out`` for llama.cpp (matrices in ``gguf_type``).
    """
    run_dir = Path(run_dir)
    plan, report = read_run(run_dir)
    if fmt == "gguf":  # before loading the model, not after replaying the plan
        check_gguf_type(gguf_type)
        check_gguf_target(out, overwrite)
    else:
        check_target(out, overwrite)
    spec = model or plan.model.get("spec")
    if not spec:
        raise ExportError(f"{run_dir / PLAN_FILE} does not name its base model; pass --model")
    run_dtype = report.get("model", {}).get("dtype", "auto")
    loaded = load(spec, dtype=run_dtype, device=device, attn_implementation=attn_implementation)
    mismatch = apply_plan(loaded, plan, run_dir, force=force)
    if mismatch:
        report = {**report, "forced_model_mismatch": mismatch}
    if fmt == "gguf":
        return export_gguf(
            loaded, out, gguf_type=gguf_type, plan=plan, report=report, overwrite=overwrite
        )
    return export_model(
        loaded,
        out,
        fmt=fmt,
        dtype=dtype,
        plan=plan,
        report=report,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
    )
