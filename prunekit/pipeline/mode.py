"""In memory or streamed, calibration states offloaded or not: decided from the config and the
memory model before any weight is read."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from typing import Any

from prunekit.engine.executor import default_batch_size
from prunekit.errors import PrunekitError, SettingsError
from prunekit.export.shards import DEFAULT_MAX_SHARD_SIZE, parse_shard_size
from prunekit.memory import (
    MemoryBudget,
    MemorySettings,
    RunChoice,
    batch_fits,
    choose_run,
    plan_memory,
    row_slice_bytes_for,
    shard_size_for,
)
from prunekit.methods.registry import Method
from prunekit.methods.settings import MethodSettings, setting_default
from prunekit.models.dtype import dtype_name, resolve_dtype
from prunekit.models.loading import LoadedModel, default_device, load_config

log = logging.getLogger(__name__)


def streaming_refusal(method: Method) -> str | None:
    """Why ``method`` cannot run streamed (None when it can)."""
    if not method.streams:
        return f"{method.name} cannot run streamed: {method.no_stream_reason}"
    return None


def choose_mode(
    model: str | LoadedModel,
    method: Method,
    options: MethodSettings,
    budget: MemoryBudget,
    *,
    dtype: str = "auto",
    device: str | None = None,
    stream: bool | None = None,
    offload_activations: bool | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    nproc: int = 1,
) -> RunChoice | None:
    """In memory or streamed, calibration states offloaded or not: decided from the config and
    the memory model before any weight is read (``prunekit.memory.choose_run``). ``nproc``:
    ranks sharing the windows (torchrun): each rank's own share is priced.

    ``stream``/``offload_activations``: True or False force, None lets the budget decide. A model
    already in memory runs in memory. None when the memory model cannot describe the model and no
    budget asks for it (the run then records no prediction).
    """
    device = run_device(model, device)
    if offload_activations and not device.startswith("cuda"):
        log.warning(
            "--offload-activations has no effect on %s: the calibration states are already in "
            "host memory",
            device,
        )
    if isinstance(model, LoadedModel):
        config, torch_dtype, stream = model.model.config, model.dtype, False
    else:
        config, torch_dtype = load_config(model), resolve_dtype(dtype, device)
    # A setting the method does not have (magnitude reads no calibration, a depth method has
    # no width targets) is priced at the default of its group.
    n_samples = _setting(options, "n_samples")
    sparsity = _setting(options, "sparsity")
    settings = MemorySettings(
        method=method.name,
        n_samples=n_samples,
        seqlen=_setting(options, "seqlen"),
        dtype=dtype_name(torch_dtype),
        # The mode is chosen at the smallest batch: a larger default never forces streaming.
        batch_size=_setting(options, "batch_size") or 1,
        device=device,
        sparsity=sparsity if sparsity is not None else _setting(options, "ratio") or 0.2,
        targets=tuple(_setting(options, "targets")),
        max_shard_size=shard_size_for(budget, device, parse_shard_size(max_shard_size)),
        row_slice_bytes=row_slice_bytes_for(budget, device),
        nproc=nproc,
    )
    try:
        choice = choose_run(
            config,
            settings,
            budget,
            stream=stream,
            offload_activations=offload_activations,
            stream_refusal=streaming_refusal(method),
        )
    except PrunekitError:
        if budget.given:
            raise
        return None  # no prediction for this model; without a budget nothing depends on one
    return with_default_batch(config, method, options, choice, budget, device)


def with_default_batch(
    config, method: Method, options: MethodSettings, choice: RunChoice, budget, device: str
) -> RunChoice:
    """Fill in ``options.batch_size`` when none was given and the method reads it: the largest
    batch at most the device's default whose run still fits ``budget`` in the chosen mode
    (``engine.executor.default_batch_size``); the choice's prediction is for that batch. The
    plan's settings and the engine's summary record it."""
    if "batch_size" not in method.takes or options.batch_size is not None:
        return choice
    # Priced for one process: the batch (and with it the float sums) must not depend on the
    # number of ranks; a rank's share of the windows only holds less.
    fits = batch_fits(config, replace(choice.plan.settings, nproc=1), budget)
    options.batch_size = default_batch_size(device, options.n_samples, fits)
    if options.batch_size == choice.plan.settings.batch_size:
        return choice
    settings = replace(choice.plan.settings, batch_size=options.batch_size)
    return replace(choice, plan=plan_memory(config, settings))


def streams_for_budget(
    model: str | LoadedModel,
    method: Method,
    settings: dict[str, Any],
    budget: MemoryBudget,
    *,
    save: object | None,
    save_name: str,
    dtype: str = "auto",
    device: str | None = None,
    offload_activations: bool | None = None,
    nproc: int = 1,
) -> RunChoice | None:
    """What a run that did not say (``stream=None``, the CLI without ``--stream``) does under
    ``budget``, from the caller's flat ``settings``: the choice when the budget changed it (its
    ``message`` says how: streamed, or the calibration states on the host), None when the run
    stays as it is, in memory. Without a budget, and for a model already in memory, nothing is
    predicted (nor are the settings parsed a second time): it runs in memory. A run the budget
    streams without ``save`` (named ``save_name``: the API's keyword or the CLI's flag) is
    refused in one line, since a streamed run writes the pruned model as it is made. The API and
    the CLI share it so that they decide, and refuse, alike."""
    if isinstance(model, LoadedModel) or not budget.given:
        return None
    choice = choose_mode(
        model,
        method,
        method.make_settings(settings),
        budget,
        dtype=dtype,
        device=device,
        offload_activations=offload_activations,
        nproc=nproc,
    )
    if choice is None or choice.message is None:
        return None
    if choice.streamed and save is None:
        raise SettingsError(
            f"{choice.message} needs {save_name} (the pruned model is written as it is made)"
        )
    return choice


def import_model_code(spec: str) -> None:
    """Import the model's transformers code and the tokenizer classes before a run measures its
    memory: imports are the framework's cost (~100 MB of a process's anonymous memory), not the
    run's, and the memory model counts them apart (its ``framework`` term)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    # A model transformers resolves otherwise (remote code) is measured with its import.
    with contextlib.suppress(PrunekitError, KeyError, AttributeError, ImportError):
        AutoModelForCausalLM._model_mapping[type(load_config(spec))]


def offloads(choice: RunChoice | None, requested: bool | None) -> bool:
    return choice.offload_activations if choice else bool(requested)


def run_device(model: str | LoadedModel, device: str | None) -> str:
    if isinstance(model, LoadedModel):
        return str(model.device)
    return device or default_device()


def _setting(settings: MethodSettings, name: str) -> Any:
    """``settings.name``, or the default of the group that declares it (methods/settings.py)."""
    return getattr(settings, name) if hasattr(settings, name) else setting_default(name)
