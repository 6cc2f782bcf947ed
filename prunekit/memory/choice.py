"""How a run fits its budget, chosen from the predicted terms before any weight is read.

``choose_run`` predicts, from the config alone, the first of in memory, in memory with the
calibration states offloaded (GPU), streamed, streamed and offloaded that fits, and says so in
one line; nothing fitting is a one-line error naming the predicted need. ``memory_record`` is
report.json's ``memory``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from prunekit.errors import SettingsError
from prunekit.memory.budget import MemoryBudget, format_bytes
from prunekit.memory.terms import MemoryPlan, MemorySettings, plan_memory


@dataclass(frozen=True)
class RunChoice:
    """How a run fits its budget: in memory or streamed, calibration states offloaded or not,
    the prediction it was chosen on, and the line that says so (None when nothing changed)."""

    streamed: bool
    offload_activations: bool
    plan: MemoryPlan
    message: str | None = None

    @property
    def mode(self) -> str:
        return "streamed" if self.streamed else "in-memory"


def predicted_need(plan: MemoryPlan) -> dict[str, int | None]:
    """Predicted peak growth above the started process: {"device": bytes or None, "host": ...}."""
    return {
        "device": plan.growth("device") if plan.on_gpu else None,
        "host": plan.growth("host"),
    }


def shortfall(plan: MemoryPlan, budget: MemoryBudget) -> str | None:
    """Why ``plan`` does not fit ``budget`` ("needs ~X in memory on cuda, budget Y"), None when
    it fits."""
    need, device = predicted_need(plan), plan.settings.device
    checks = [("host", need["host"], budget.host_limit(device))]
    if plan.on_gpu:
        checks.insert(0, (device, need["device"], budget.compute_limit(device)))
    mode = "streamed" if plan.settings.streamed else "in memory"
    for where, needed, limit in checks:
        if limit is not None and needed is not None and needed > limit:
            return (
                f"needs ~{format_bytes(needed)} {mode} on the {where}, budget {format_bytes(limit)}"
            )
    return None


def choose_run(
    config: Any,
    settings: MemorySettings,
    budget: MemoryBudget,
    *,
    stream: bool | None = None,
    offload_activations: bool | None = None,
    stream_refusal: str | None = None,
) -> RunChoice:
    """In memory when the run fits ``budget``, else streamed (then with the calibration states on
    the host, on a GPU), predicted from the config alone before any weight is read.

    ``stream``/``offload_activations``: True or False force the choice, None lets the budget
    decide. ``stream_refusal``: why the method cannot stream (None when it can). Raises a
    one-line ``SettingsError`` naming the predicted need when nothing fits.
    """
    on_gpu = settings.device.startswith("cuda")
    offloads = [False, True] if on_gpu else [False]
    if offload_activations is not None:
        offloads = [offload_activations and on_gpu]
    modes = [False, True] if stream is None else [stream]
    if stream_refusal is not None:
        modes = [m for m in modes if not m]
    plans = []
    for streamed in modes:
        for offload in offloads:
            plan = plan_memory(
                config, replace(settings, streamed=streamed, offload_activations=offload)
            )
            plans.append(plan)
            if shortfall(plan, budget) is None:
                return RunChoice(streamed, offload, plan, _choice_message(plans, budget))
    return _no_fit(plans, budget, stream_refusal)


def batch_fits(
    config: Any, settings: MemorySettings, budget: MemoryBudget
) -> Callable[[int], bool] | None:
    """Whether a run of ``settings`` (its mode already chosen) with a batch of that many windows
    fits ``budget``, predicted from the config (a batch adds its activations, and its states
    when offloaded or streamed); None without a budget (any batch fits)."""
    if not budget.given:
        return None

    def fits(batch_size: int) -> bool:
        plan = plan_memory(config, replace(settings, batch_size=batch_size))
        return shortfall(plan, budget) is None

    return fits


def _choice_message(plans: list[MemoryPlan], budget: MemoryBudget) -> str | None:
    """The line a run prints when the budget changed how it runs (None when it did not)."""
    if len(plans) == 1:
        return None
    chosen = plans[-1].settings
    how = "streaming layer by layer" if chosen.streamed else "in memory"
    if chosen.offload_activations:
        how += ", calibration states on the host"
    return f"model {shortfall(plans[0], budget)}: {how}"


def _no_fit(plans: list[MemoryPlan], budget: MemoryBudget, refusal: str | None) -> RunChoice:
    message = f"the run {shortfall(plans[-1], budget)}"
    if refusal and not plans[-1].settings.streamed:
        message += f" ({refusal})"
    raise SettingsError(f"{message}: raise --max-memory/--max-host-memory or use a bigger device")


def memory_record(
    mode: str,
    choice: RunChoice | None,
    budget: MemoryBudget,
    measured: Any,
    max_shard_size: int | None = None,
) -> dict[str, Any]:
    """report.json's ``memory``: the mode, the budget, the predicted and the measured peaks (all
    in bytes above the process at the run's start; docs/report-schema.md)."""
    predicted = predicted_need(choice.plan) if choice else {"device": None, "host": None}
    record: dict[str, Any] = {
        "mode": mode,
        "budget": budget.as_dict(),
        "offload_activations": bool(choice and choice.offload_activations),
        "predicted": {
            "device_peak_bytes": predicted["device"],
            "host_peak_bytes": predicted["host"],
        },
        "measured": measured.as_dict(),
    }
    if max_shard_size is not None:
        record["max_shard_size"] = max_shard_size
    return record
