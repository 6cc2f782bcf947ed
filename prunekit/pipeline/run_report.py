"""report.json of one pruning run."""

from __future__ import annotations

import dataclasses
from typing import Any

from prunekit.methods.registry import Method, PruneSettings
from prunekit.models.loading import LoadedModel
from prunekit.report.schema import build_report
from prunekit.report.versions import library_versions


def run_report(
    chosen: Method,
    loaded: LoadedModel,
    identity: dict,
    options: PruneSettings,
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
        settings=dataclasses.asdict(options),
        params=params,
        evals=evals,
        timings=timings,
        versions=library_versions(),
        extra=extra or None,
    )
