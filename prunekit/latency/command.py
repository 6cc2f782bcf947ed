"""What ``prunekit profile`` does, apart from printing: resolve the model, profile, save."""

from __future__ import annotations

import re
from pathlib import Path

from prunekit.errors import PlanError, SettingsError
from prunekit.latency.profile import ProfileSettings, Progress, profile_model
from prunekit.latency.table import LatencyTable, interpolate

TABLE_FILE = "latency.json"


def profiled_spec(model: str) -> tuple[str, Path | None]:
    """(the model to load, the run directory when ``model`` is one).

    A run directory holds no weights: its base model is profiled (the table's grid covers the
    narrower widths the plan chose) and the table goes beside the plan.
    """
    from prunekit.plan import PruningPlan
    from prunekit.report.run_dir import PLAN_FILE, is_run_dir

    if not is_run_dir(model):
        return model, None
    plan = PruningPlan.load(Path(model) / PLAN_FILE)
    spec = plan.model.get("spec")
    if not spec:
        raise PlanError(f"{model}/{PLAN_FILE} does not name its base model")
    return spec, Path(model)


def default_output(model: str, run_dir: Path | None) -> Path:
    """``RUN/latency.json`` for a run directory, else ``./latency-<model>.json``."""
    if run_dir is not None:
        return run_dir / TABLE_FILE
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model.rstrip("/")).name or model).strip("_")
    return Path(f"latency-{name or 'model'}.json")


def check_lengths(settings: ProfileSettings, max_positions: int | None) -> None:
    """The longest sequence a phase runs must fit the model's positions."""
    longest = settings.prompt_len + (settings.gen_len if "decode" in settings.phases else 0)
    if max_positions and longest > max_positions:
        raise SettingsError(
            f"prompt-len + gen-len = {longest} exceeds the model's {max_positions} positions"
        )


def run_profile(
    model: str,
    settings: ProfileSettings,
    *,
    dtype: str = "auto",
    device: str | None = None,
    out: Path | None = None,
    progress: Progress | None = None,
) -> tuple[LatencyTable, Path]:
    """Load ``model`` (a spec, export or run directory), profile it and save the table."""
    from prunekit.export.load import is_export_dir, read_config
    from prunekit.loader import load
    from prunekit.models.loading import load_config

    settings.validate()
    spec, run_dir = profiled_spec(model)
    config = read_config(Path(spec)) if is_export_dir(spec) else load_config(spec)
    check_lengths(settings, getattr(config, "max_position_embeddings", None))
    loaded = load(spec, dtype=dtype, device=device)
    table = profile_model(loaded, settings, progress)
    path = table.save(out or default_output(spec, run_dir))
    return table, path


def table_rows(table: LatencyTable) -> list[tuple[str, ...]]:
    """(phase, entry, width, ms) rows: fixed, layer overhead, then every grid width."""
    rows: list[tuple[str, ...]] = []
    for name, phase in table.phases.items():
        rows.append((name, "fixed", "", f"{phase.fixed_s * 1e3:.3f}"))
        rows.append((name, "layer overhead", "", f"{phase.layer_overhead_s * 1e3:.3f}"))
        curves = (("attn v_head_dim", phase.attn), ("mlp", phase.mlp))
        curves += (("mlp unaligned", phase.mlp_unaligned),)
        for label, curve in curves:
            for width in sorted(curve):
                ms = interpolate(curve, width) * 1e3
                rows.append((name, label, str(width), f"{ms:.3f}"))
    return rows
