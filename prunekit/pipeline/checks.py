"""Refusals before any model loads: the method's settings, the data sets, the tasks, the
--target-speedup options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit.errors import SettingsError
from prunekit.methods.registry import Method
from prunekit.methods.settings import CalibrationSettings, MethodSettings
from prunekit.report.run_dir import check_run_target


def check_inputs(
    settings: CalibrationSettings | None,
    eval_datasets: list[str] | None,
    eval_tasks: list[str] | None,
    task_data: str | Path | None,
) -> None:
    """Fail on a bad calibration or evaluation dataset, or a bad task, before a model loads."""
    from prunekit.data import check_dataset

    for dataset in ([settings.calib] if settings else []) + list(eval_datasets or []):
        check_dataset(dataset)
    if eval_tasks:
        from prunekit.evaluation.zeroshot import check_tasks

        check_tasks(eval_tasks, task_data)


def checked_settings(
    chosen: Method, settings: dict[str, Any], out: str | Path | None, overwrite: bool
) -> MethodSettings:
    """The method's settings, refused before any model loads: a setting the method does not
    take, a bad value, or an ``out`` holding a run the flags do not allow to touch."""
    if "options" in settings:
        raise SettingsError(
            "options= is gone: pass each entry as its own keyword (e.g. state_bytes=..., "
            "windows='first-half', naive=True, allocation_cost='output')"
        )
    options = chosen.make_settings(settings, **({} if out is None else {"run_dir": str(out)}))
    # Only a greedy search resumes (GreedySearchSettings.resume).
    check_run_target(out, resume=getattr(options, "resume", False), overwrite=overwrite)
    return options


def speed_request(
    target: float | None,
    phase: str | None,
    table: str | Path | None,
    workload: dict | None,
    measure: bool = True,
) -> Any:
    """The ``--target-speedup`` request (a ``SpeedRequest``), or None; its options without a
    target are refused."""
    from prunekit.speedtarget.prune import DEFAULT_PHASE, SpeedRequest

    if target is None:
        given = [name for name, value in (("--phase", phase), ("--latency-table", table)) if value]
        given += [f"--{k.replace('_', '-')}" for k in workload or {}]
        if given:
            raise SettingsError(f"{given[0]} applies to --target-speedup, which was not given")
        return None
    return SpeedRequest(target, phase or DEFAULT_PHASE, table, dict(workload or {}), measure)
