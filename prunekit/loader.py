"""``prunekit.load``: the one way in. Any spec a user has, in the residency the caller needs.

A *spec* is a model (an alias such as ``smollm2-135m``, a hub id, a local Hugging Face
directory, a ``.gguf`` file), a prunekit export (a directory ``prunekit export`` or
``prune --save`` wrote, either format) or a run directory (its plan replayed on the base model).
A *residency* is where the weights live while the model is used:

- ``memory``: the whole model on ``device``;
- ``streamed``: a skeleton on the meta device whose decoder layers are read from the shards one
  at a time while the engine runs them (pruning and perplexity layer by layer);
- ``dispatched``: accelerate places what fits ``max_memory`` on ``device`` and offloads the rest
  (for lm-eval, which runs the model's own forward).

The loaders behind it are steps, each with one job: ``models.loading.load_model`` (a model),
``export.load.load_pruned`` (an export, validated, no remote code), ``replay.load_run`` (a run),
``pipeline.lazy.open_streamed`` (streamed) and ``evaluation.dispatched.load_dispatched``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit.errors import PlanError, SettingsError
from prunekit.models.loading import LoadedModel
from prunekit.report.run_dir import PARTIAL_PLAN_FILE, is_run_dir

RESIDENCIES = ("memory", "streamed", "dispatched")


def spec_kind(spec: str | Path) -> str:
    """What ``spec`` names: ``export`` (a directory prunekit exported), ``run`` (a run
    directory: a plan, no weights) or ``model`` (anything ``load_model`` takes)."""
    from prunekit.export.load import is_export_dir

    path = Path(spec).expanduser()
    if not path.is_dir():
        return "model"
    if is_export_dir(path):  # an export holds plan.json too, beside its weights
        return "export"
    has_plan = is_run_dir(path) or (path / PARTIAL_PLAN_FILE).is_file()
    # A run directory holds a plan and no model: one with a config.json is a model directory.
    return "run" if has_plan and not (path / "config.json").is_file() else "model"


def load(
    spec: str | Path,
    *,
    residency: str = "memory",
    dtype: Any = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
    base: str | None = None,
    force: bool = False,
    max_memory: int | str | None = None,
    offload_folder: str | Path | None = None,
) -> LoadedModel:
    """Load ``spec`` (a model, an export or a run directory) with its weights in ``residency``
    (``memory``, ``streamed`` or ``dispatched``) and return the ``LoadedModel``.

    ``dtype``: auto (bf16 where the hardware runs it natively, else fp32), fp32, bf16, fp16;
    None keeps an export's saved dtype (auto for anything else). ``base`` and ``force`` apply to
    a run directory: the base model to replay its plan on (default: the one the plan names),
    and replaying it on weights that are not the plan's (recorded on
    ``forced_model_mismatch``). ``max_memory`` and ``offload_folder`` apply to ``dispatched``:
    the bytes (or a size such as "2GB") of weights kept on ``device`` (None: what accelerate
    finds free) and where accelerate writes what it cannot read back from the checkpoint.

    The result's ``origin`` says what the spec was (model, export or run) and ``origin_path``
    the directory of an export or a run.
    """
    spec = str(spec)
    kind = spec_kind(spec)
    _check_request(spec, kind, residency, base, max_memory, offload_folder)
    path = Path(spec).expanduser()
    options = {"device": device, "attn_implementation": attn_implementation}
    if residency == "streamed":
        from prunekit.pipeline.lazy import open_streamed

        loaded = open_streamed(spec, dtype=dtype or "auto", **options)
    elif residency == "dispatched":
        from prunekit.evaluation.dispatched import load_dispatched
        from prunekit.memory import parse_memory_size

        budget = None if max_memory is None else parse_memory_size(max_memory)
        loaded = load_dispatched(
            spec, max_memory=budget, offload_folder=offload_folder, dtype=dtype or "auto", **options
        )
    elif kind == "export":
        from prunekit.export.load import load_pruned

        loaded = load_pruned(path, dtype=dtype, **options)
    elif kind == "run":
        from prunekit.replay import load_run

        loaded = load_run(path, base=base, force=force, dtype=dtype or "auto", **options)
    else:
        from prunekit.models.loading import load_model

        loaded = load_model(spec, dtype=dtype or "auto", **options)
    loaded.origin = kind
    loaded.origin_path = None if kind == "model" else str(path)
    return loaded


def _check_request(
    spec: str,
    kind: str,
    residency: str,
    base: str | None,
    max_memory: int | str | None,
    offload_folder: str | Path | None,
) -> None:
    """One-line refusals of a request ``load`` cannot honour, before anything is read."""
    if residency not in RESIDENCIES:
        raise SettingsError(f"residency must be one of {', '.join(RESIDENCIES)}, got {residency!r}")
    if base is not None and kind != "run" and base != spec:
        raise PlanError(f"--model {base!r} only applies to a run directory; {spec!r} is not one")
    if kind == "run" and residency != "memory":
        raise SettingsError(
            f"{spec} is a run directory (its plan is replayed in memory): load it in memory, "
            f"or export it first (prunekit export) and load the export {residency}"
        )
    if residency != "dispatched" and (max_memory is not None or offload_folder is not None):
        raise SettingsError("max_memory and offload_folder apply to residency='dispatched' only")
    if residency == "dispatched" and offload_folder is None:
        raise SettingsError(
            "residency='dispatched' needs offload_folder: where accelerate writes the weights it "
            "offloads"
        )


def origin_record(loaded: LoadedModel) -> dict:
    """What an evaluation records about the model it measured: what the spec was, where, the
    model's identity, and a forced replay's mismatch."""
    record = {"kind": loaded.origin, "path": loaded.origin_path, **loaded.identity()}
    if loaded.forced_model_mismatch:
        record["forced_model_mismatch"] = loaded.forced_model_mismatch
    return record
