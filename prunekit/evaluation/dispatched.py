"""A model bigger than memory for lm-eval: dispatched by accelerate across device and disk.

Zero-shot scoring runs the model's own forward inside lm-eval, so it cannot use prunekit's
layer-major engine. Instead transformers loads the model with ``device_map="auto"`` and a
``max_memory`` budget: the layers that fit stay on the compute device, the rest are *offloaded*
(left in their safetensors files, or written to ``offload_folder``), and accelerate's hooks
onload each offloaded module just before it runs and drop it after. The arithmetic is the
model's own, so the accuracies are the in-memory model's; only the time differs.

Works for anything ``load_model`` takes (alias, directory, .gguf, hub id) and for both export
formats (a prunekit-format export through prunekit's copy of its modeling file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prunekit.errors import ModelNotFoundError
from prunekit.models.dtype import resolve_dtype
from prunekit.models.loading import LoadedModel, default_device
from prunekit.progress import quiet_transformers_unless_progress


def max_memory_map(device: str, budget: int) -> dict[Any, int]:
    """accelerate's ``max_memory`` for a budget on one compute device; what does not fit goes to
    disk (accelerate adds the disk itself)."""
    torch_device = torch.device(device)
    if torch_device.type == "cpu":
        return {"cpu": budget}
    return {torch_device.index or 0: budget}


def load_dispatched(
    spec: str,
    *,
    max_memory: int | None,
    offload_folder: str | Path,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """``spec`` dispatched by accelerate: at most ``max_memory`` bytes of weights on ``device``
    (None: as much as accelerate finds free), the rest offloaded (``offload_folder`` holds what
    cannot be read from the checkpoint's own safetensors files)."""
    from transformers import AutoTokenizer

    quiet_transformers_unless_progress()
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    model_class, config, adapter, source = _model_source(spec)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype,
        "device_map": "auto",
        "offload_folder": str(offload_folder),
    }
    if config is not None:
        kwargs["config"] = config
    if max_memory is not None:
        kwargs["max_memory"] = max_memory_map(device, max_memory)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    Path(offload_folder).mkdir(parents=True, exist_ok=True)
    try:
        model = model_class.from_pretrained(str(source), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(source), **_tokenizer_kwargs(config))
    except Exception as exc:
        raise ModelNotFoundError(
            f"cannot load {spec!r} dispatched: {str(exc).splitlines()[0]}"
        ) from exc
    model.eval()
    return LoadedModel(model, tokenizer, adapter, spec, str(source), torch_dtype, device)


def _model_source(spec: str) -> tuple[Any, Any, Any, Path]:
    """(model class, config or None, adapter, directory) of a spec or an export directory."""
    from prunekit.export.load import base_adapter, is_export_dir, model_class_for, read_config

    path = Path(spec).expanduser()
    if path.is_dir() and is_export_dir(path):
        config = read_config(path)
        return model_class_for(config), config, base_adapter(config), path
    from transformers import AutoConfig, AutoModelForCausalLM

    from prunekit.models.adapters import adapter_for_config
    from prunekit.models.loading import resolve_model_dir

    directory = resolve_model_dir(spec)
    config = AutoConfig.from_pretrained(str(directory))
    return AutoModelForCausalLM, None, adapter_for_config(config), directory


def _tokenizer_kwargs(config: Any) -> dict[str, Any]:
    # With the config given, AutoTokenizer does not re-read config.json (a shim's auto_map).
    return {} if config is None else {"config": config}


def is_dispatched(model: Any) -> bool:
    """Whether accelerate placed the model (its ``model.device`` may then be ``meta``)."""
    return bool(getattr(model, "hf_device_map", None))
