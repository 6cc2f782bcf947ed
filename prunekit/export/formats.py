"""The two on-disk formats and the check that a config really describes a set of weights.

- ``hf``: the stock architecture and config; only possible when every layer has the same shape.
- ``prunekit``: the base config turned into a shim config (see ``prunekit.export.shim``) plus
  transformers' ``per_layer_config`` describing each layer.

Whether a config fits the weights is decided by building the model it describes on the meta
device (no memory, no compute) and comparing every tensor name and shape. The same check runs
before writing (so a wrong description is never saved) and before loading (so a directory whose
config.json disagrees with its weights fails with one clear line instead of loading random
weights silently).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import nn

from prunekit.errors import ExportError, UnsupportedArchitectureError
from prunekit.export.per_layer import (
    LayerShape,
    global_defaults,
    is_uniform,
    per_layer_overrides,
)
from prunekit.export.shim import Shim, shim_for_family
from prunekit.models.families import family_named

Format = Literal["hf", "prunekit"]
FORMATS = ("auto", "hf", "prunekit")

# Config keys that belong to the saved file, not to the architecture.
_FILE_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "per_layer_config")


def tensor_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor ``from_pretrained`` reads, tied duplicates dropped."""
    seen: dict[int, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = id(tensor)
        if key in seen:
            continue
        seen[key] = name
        shapes[name] = tuple(tensor.shape)
    return shapes


def skeleton_shapes(model_class: Any, config: Any) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of the model ``config`` describes, built on the meta device."""
    with torch.device("meta"):
        skeleton = model_class(copy.deepcopy(config))
    return tensor_shapes(skeleton)


def shape_mismatches(
    expected: dict[str, tuple[int, ...]], actual: dict[str, tuple[int, ...]]
) -> list[str]:
    """Human-readable differences, tied-weight aliases tolerated (either name may be stored)."""
    problems = []
    for name in sorted(set(expected) | set(actual)):
        want, got = expected.get(name), actual.get(name)
        if want == got:
            continue
        if want is None:
            problems.append(f"unexpected tensor {name} {list(got)}")
        elif got is None:
            problems.append(f"missing tensor {name} {list(want)}")
        else:
            problems.append(f"{name}: config says {list(want)}, weights are {list(got)}")
    return problems


def hf_config(model: nn.Module, family: str, shapes: list[LayerShape]) -> Any:
    """The stock config of a uniform model: layer count and MLP width updated."""
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(shapes)
    if shapes and shapes[0].intermediate_size is not None:
        setattr(
            config,
            family_named(family).mlp_width_attribute,
            shapes[0].intermediate_size,
        )
    if shapes and shapes[0].num_attention_heads is not None:
        config.num_attention_heads = shapes[0].num_attention_heads
        if hasattr(config, "num_key_value_heads"):
            config.num_key_value_heads = shapes[0].num_key_value_heads
    return config


def hf_fits(model: nn.Module, family: str, shapes: list[LayerShape]) -> list[str]:
    """Why the stock architecture cannot hold this model ([] when it can)."""
    if not is_uniform(shapes):
        return ["the layers differ in shape (removed blocks, widths, value head size or biases)"]
    config = hf_config(model, family, shapes)
    try:
        expected = skeleton_shapes(type(model), config)
    except Exception as exc:  # the stock class rejects the config
        return [f"the stock {type(model).__name__} cannot be built: {exc}"]
    return shape_mismatches(expected, tensor_shapes(model))


def check_one_attention_kind(config: Any, family: str) -> None:
    """The shim runs one kind of attention on every layer: all full, or all sliding-window.

    Mistral (``sliding_window`` and no ``layer_types``) slides on every layer; configs with
    ``layer_types`` name each layer's kind. A mix (Qwen2 with ``max_window_layers``) would need
    a per-layer mask and cache, which the shim does not build yet.
    """
    if getattr(config, "sliding_window", None) is None:
        return
    kinds = set(getattr(config, "layer_types", None) or ["sliding_attention"])
    if len(kinds) > 1:
        raise UnsupportedArchitectureError(
            f"{family}: heterogeneous export of a model mixing attention kinds "
            f"({', '.join(sorted(kinds))}) is not supported yet; prune whole layers (or keep "
            "widths uniform) to export it in the stock 'hf' format"
        )


def shim_config(model: nn.Module, family: str, shapes: list[LayerShape]) -> tuple[Shim, Any]:
    """The shim's config: the base config, global defaults and the sparse per-layer overrides."""
    shim = shim_for_family(family)
    base = model.config
    check_one_attention_kind(base, family)
    head_dims = {s.head_dim for s in shapes if s.head_dim is not None}
    if len(head_dims) > 1:
        raise ExportError(f"layers disagree on the query/key head size {sorted(head_dims)}")
    data = {k: v for k, v in base.to_dict().items() if k not in _FILE_KEYS}
    data.update(family_named(family).shim_settings)  # what the shim must build (q/k norms)
    defaults = global_defaults(shapes)
    data.update({k: v for k, v in defaults.items() if v is not None})
    if head_dims:
        data["head_dim"] = head_dims.pop()
    data["num_hidden_layers"] = len(shapes)
    data["base_model_type"] = getattr(base, "base_model_type", None) or base.model_type
    data["per_layer_config"] = per_layer_overrides(shapes, {**defaults, **data})
    config_class, _ = shim.classes()
    config = config_class(**data)
    config.architectures = [shim.model_class]
    config.auto_map = shim.auto_map()
    return shim, config


def choose_format(requested: str, hf_problems: list[str]) -> Format:
    """``auto`` picks hf whenever the shapes allow it; ``hf`` on a heterogeneous model fails."""
    if requested not in FORMATS:
        raise ExportError(f"unknown format {requested!r}; use {', '.join(FORMATS)}")
    if requested == "prunekit":
        return "prunekit"
    if not hf_problems:
        return "hf"
    if requested == "hf":
        raise ExportError(
            "this model cannot be saved in the stock 'hf' format: "
            + "; ".join(hf_problems[:3])
            + " (use --format prunekit or auto)"
        )
    return "prunekit"
