"""Load an exported model without remote code, after checking the directory is whole.

``load_pruned`` reads both formats: a stock ``hf`` directory through AutoModelForCausalLM, a
``prunekit`` directory through prunekit's own copy of the shim (the modeling file inside the
directory is never executed here). Before any weight is read, the directory is validated: the
config parses, every weight file the index names exists and opens, and the tensor names and
shapes are exactly those the config describes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from prunekit.errors import ExportError, ModelNotFoundError
from prunekit.export.formats import shape_mismatches, skeleton_shapes
from prunekit.export.shim import shim_for_model_type
from prunekit.models.adapters import adapter_for_config
from prunekit.models.dtype import resolve_dtype
from prunekit.models.loading import LoadedModel, default_device
from prunekit.progress import quiet_transformers_unless_progress

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
BASE_MODEL_TYPE_KEY = "base_model_type"


def is_export_dir(path: str | Path) -> bool:
    """A directory written by ``export_model`` (it carries plan/report and the export section)."""
    report = Path(path) / "report.json"
    if not report.is_file():
        return False
    try:
        return "export" in json.loads(report.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a directory, from the shard index when there is one."""
    index = path / WEIGHTS_INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise ExportError(f"{index} is corrupt: {exc}") from None
        files = [path / name for name in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ExportError(f"{path} is incomplete: missing weight shard(s) {', '.join(missing)}")
        return files
    if (path / WEIGHTS_FILE).is_file():
        return [path / WEIGHTS_FILE]
    raise ExportError(f"{path} has no weights ({WEIGHTS_FILE} or {WEIGHTS_INDEX})")


def stored_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors headers (no tensor data is read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except Exception as exc:  # safetensors raises its own error types for a bad header
            raise ExportError(f"weight file {file} is corrupt or truncated: {exc}") from None
    return shapes


def read_config(path: Path) -> Any:
    """The config of an exported directory, with the shim's config class where it needs one."""
    from transformers import AutoConfig

    config_file = path / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{path} is incomplete: no config.json")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{config_file} is not valid JSON: {exc}") from None
    shim = shim_for_model_type(raw.get("model_type", ""))
    try:
        if shim is not None:
            return shim.classes()[0].from_pretrained(str(path))
        return AutoConfig.from_pretrained(str(path))
    except Exception as exc:  # transformers validates the config and raises many types
        raise ExportError(
            f"{config_file} is not a usable config: {str(exc).splitlines()[0]}"
        ) from None


def model_class_for(config: Any) -> Any:
    from transformers import AutoModelForCausalLM

    shim = shim_for_model_type(config.model_type)
    if shim is not None:
        return shim.classes()[1]
    try:
        return AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise ExportError(f"no causal LM class for model_type {config.model_type!r}") from None


def validate_export_dir(path: str | Path) -> tuple[Any, Any]:
    """(config, model class) of a directory whose weights match its config exactly."""
    path = Path(path)
    if not path.is_dir():
        raise ModelNotFoundError(f"model directory not found: {path}")
    config = read_config(path)
    model_class = model_class_for(config)
    stored = stored_shapes(weight_files(path))
    expected = skeleton_shapes(model_class, config)
    tied = _tied_aliases(expected, stored)
    problems = shape_mismatches({k: v for k, v in expected.items() if k not in tied}, stored)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ExportError(f"{path}: config.json does not describe the weights: {problems[0]}{more}")
    return config, model_class


def _tied_aliases(expected: dict, stored: dict) -> set[str]:
    """Names a tied model may legitimately not store (the LM head tied to the embedding)."""
    return {name for name in expected if name not in stored and name.startswith("lm_head.")}


def base_adapter(config: Any):
    """The adapter of the family a shim config came from (shims keep the stock module names)."""
    base_type = getattr(config, BASE_MODEL_TYPE_KEY, None)
    if base_type is None:
        return adapter_for_config(config)

    class _Base:  # adapter_for_config only needs model_type and the family's own fields
        def __init__(self) -> None:
            self.__dict__.update(config.to_dict())
            self.model_type = base_type

    return adapter_for_config(_Base())


def load_pruned(
    path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load a directory written by ``prunekit export`` (either format) without remote code.

    ``dtype``: None keeps the saved dtype; otherwise auto, fp32, bf16 or fp16.
    """
    from transformers import AutoTokenizer

    quiet_transformers_unless_progress()
    path = Path(path)
    config, model_class = validate_export_dir(path)
    device = device or default_device()
    torch_dtype = (
        getattr(config, "dtype", None) or torch.float32
        if dtype is None
        else resolve_dtype(dtype, device)
    )
    if isinstance(torch_dtype, str):
        torch_dtype = getattr(torch, torch_dtype)
    try:
        attn = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = model_class.from_pretrained(str(path), config=config, dtype=torch_dtype, **attn)
        # Passing the config keeps AutoTokenizer from re-reading config.json (and its auto_map).
        tokenizer = AutoTokenizer.from_pretrained(str(path), config=config)
    except Exception as exc:
        raise ExportError(f"cannot load {path}: {str(exc).splitlines()[0]}") from exc
    model.to(device).eval()
    return LoadedModel(
        model, tokenizer, base_adapter(config), str(path), str(path), torch_dtype, device
    )


def base_spec_of(path: str | Path) -> str:
    """The base model an export was pruned from (report.json), for dense-vs-pruned comparisons."""
    report = Path(path) / "report.json"
    try:
        spec = json.loads(report.read_text()).get("model", {}).get("spec")
    except (OSError, json.JSONDecodeError):
        spec = None
    if not spec:
        raise ExportError(f"{path} does not name its base model (report.json); pass --baseline")
    return spec


def load_for_inference(
    spec: str,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Deprecated: ``prunekit.load(spec, dtype=dtype)`` does this (and loads run directories).

    Kept as it was rather than calling ``prunekit.load``: the loader imports this module."""
    import warnings

    from prunekit.models.loading import load_model

    warnings.warn(
        "load_for_inference is deprecated; use prunekit.load(spec, ...)", DeprecationWarning, 2
    )
    if Path(spec).is_dir() and is_export_dir(spec):
        return load_pruned(
            spec, dtype=dtype, device=device, attn_implementation=attn_implementation
        )
    return load_model(
        spec, dtype=dtype or "auto", device=device, attn_implementation=attn_implementation
    )
