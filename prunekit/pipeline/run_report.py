"""report.json of one pruning run."""

from __future__ import annotations

from typing import Any

from prunekit.methods.registry import Method
from prunekit.methods.settings import MethodSettings
from prunekit.models.loading import LoadedModel
from prunekit.report.schema import build_report
from prunekit.report.versions import library_versions

# The settings every report names, the method's or not (docs/report-schema.md): the
# calibration and the three targets, null where the method has no such setting.
REPORTED = ("calib", "n_samples", "seqlen", "seed", "ratio", "blocks", "sparsity")


def report_settings(settings: MethodSettings) -> dict:
    """report.json's ``settings``: the method's settings as its plan records them, and null for
    a reported name it does not have (magnitude reads no calibration)."""
    return {**dict.fromkeys(REPORTED), **settings.record()}


def run_report(
    chosen: Method,
    loaded: LoadedModel,
    identity: dict,
    options: MethodSettings,
    params: dict,
    evals: dict,
    timings: dict,
    memory: dict | None = None,
) -> dict:
    """report.json of one pruning run; ``memory`` (``prunekit.memory.memory_record``) also sets
    the top-level ``mode`` to "streamed" when the model never sat in memory."""
    extra: dict[str, Any] = {}
    if memory is not None:
        extra["memory"] = memory
        if memory["mode"] == "streamed":
            extra["mode"] = "streamed"
    return build_report(
        method=chosen.name,
        family=chosen.family,
        model={
            **identity,
            "source": loaded.source,
            "dtype": loaded.dtype_name,
            "device": loaded.device,
        },
        settings=report_settings(options),
        params=params,
        evals=evals,
        timings=timings,
        versions=library_versions(),
        extra=extra or None,
    )
