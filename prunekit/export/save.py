"""Write a pruned model as a directory that loads anywhere (docs/design.md, "Principles", 4).

The directory holds safetensors weights (sharded above ``max_shard_size``, written tensor by
tensor through ``ShardWriter`` so the host never holds a copy of the whole model), config.json,
generation_config.json, the tokenizer, plan.json, report.json and the model card (README.md,
``prunekit.export.card``), and for heterogeneous models the shim modeling file. It is assembled
in a hidden temp directory beside the target and renamed into place at the end, so a crash or a
full disk never leaves a directory that looks complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import ExportError
from prunekit.export.card import base_model_info, write_model_card
from prunekit.export.formats import (
    Format,
    choose_format,
    hf_config,
    hf_fits,
    shape_mismatches,
    shim_config,
    skeleton_shapes,
    tensor_shapes,
)
from prunekit.export.per_layer import LayerShape, describe_for_report, describe_layers
from prunekit.export.shards import DEFAULT_MAX_SHARD_SIZE, ShardWriter, WrittenWeights
from prunekit.models.dtype import dtype_name, resolve_dtype
from prunekit.models.loading import LoadedModel
from prunekit.plan import PruningPlan, write_json_atomic

EXPORT_KEY = "export"  # the section of report.json describing the export
PARTIAL = ".partial-"  # staging directories are named .NAME.partial-XXXXXX


@dataclass
class ExportResult:
    path: Path
    format: Format
    dtype: str
    weight_bytes: int
    layers: list[LayerShape] = field(default_factory=list)


def weight_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors to save, by reference (no copy): tied duplicates dropped, the embedding stays."""
    keep = tensor_shapes(model)
    for name, tensor in model.state_dict().items():
        if name in keep:
            yield name, tensor


def write_weights(
    model: nn.Module, directory: Path, dtype: torch.dtype, max_shard_size: int | str
) -> WrittenWeights:
    """Save the model's weights in ``dtype``, one tensor cast and copied at a time."""
    with ShardWriter(directory, dtype=dtype, max_shard_size=max_shard_size) as writer:
        for name, tensor in weight_tensors(model):
            writer.add(name, tensor)
    return writer.close()


def check_target(target: str | Path, overwrite: bool) -> None:
    """Refuse to replace an existing path unless ``overwrite`` (and never a file, ever)."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a directory")
    if target.exists() and not overwrite:
        raise ExportError(f"{target} already exists; pass --overwrite to replace it")


@contextmanager
def staging_dir(target: Path, overwrite: bool) -> Iterator[Path]:
    """A temp directory that becomes ``target`` only if the block completes."""
    check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL}", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "model")
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def final_name(directory: Path) -> str:
    """The name ``directory`` will have once renamed into place (itself when not staging)."""
    name = directory.name
    if name.startswith(".") and PARTIAL in name:
        return name[1:].rpartition(PARTIAL)[0]
    return name


def _export_config(loaded: LoadedModel, shapes: list[LayerShape], requested: str) -> tuple:
    """(format, config, shim or None), with the config checked against the weights."""
    model, family = loaded.model, loaded.adapter.family
    fmt = choose_format(requested, hf_fits(model, family, shapes))
    if fmt == "hf":
        config = hf_config(model, family, shapes)
        config.architectures = [type(model).__name__]
        return fmt, config, None
    shim, config = shim_config(model, family, shapes)
    problems = shape_mismatches(skeleton_shapes(shim.classes()[1], config), tensor_shapes(model))
    if problems:  # a bug in the description, never a user error: refuse to write it
        raise ExportError("the per-layer description does not fit the weights: " + problems[0])
    return fmt, config, shim


def write_beside_weights(
    directory: Path,
    loaded: LoadedModel,
    shapes: list[LayerShape],
    fmt: str,
    dtype: torch.dtype,
    written: WrittenWeights,
    plan: PruningPlan | None,
    report: dict | None,
) -> Format:
    """Everything but the weights: config (checked against ``loaded.model``'s tensor shapes,
    which may be meta tensors), generation config, tokenizer, shim, plan, report and card."""
    fmt_chosen, config, shim = _export_config(loaded, shapes, fmt)
    config.dtype = dtype
    config.save_pretrained(directory)
    generation = getattr(loaded.model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(directory)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(directory)
    if shim is not None:
        shutil.copyfile(shim.path, directory / shim.path.name)
    if plan is not None:
        plan.save(directory / "plan.json")
    section = {
        "format": fmt_chosen,
        "dtype": dtype_name(dtype),
        "weight_bytes": sum(p.stat().st_size for p in directory.glob("*.safetensors")),
        "parameters": written.parameters,
        "base_model_type": getattr(config, "base_model_type", None) or config.model_type,
        "layers": describe_for_report(shapes),
    }
    exported = {**(report or {}), EXPORT_KEY: section}
    write_json_atomic(directory / "report.json", exported)
    base = base_model_info(loaded.spec, loaded.source)
    write_model_card(directory, exported, plan, base=base, name=final_name(directory))
    return fmt_chosen


def export_model(
    loaded: LoadedModel,
    out: str | Path,
    *,
    fmt: str = "auto",
    dtype: str | torch.dtype | None = None,
    plan: PruningPlan | None = None,
    report: dict | None = None,
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> ExportResult:
    """Save ``loaded`` (pruned in memory) to ``out``; see the module docstring for the layout.

    ``fmt``: auto (hf whenever every layer has the same shape), hf or prunekit. ``dtype``: the
    dtype of the saved weights; None keeps the model's. ``overwrite`` replaces an existing ``out``.
    """
    target = Path(out)
    torch_dtype = loaded.dtype if dtype in (None, "auto") else resolve_dtype(dtype)
    shapes = describe_layers(loaded.model, loaded.adapter)
    fmt_chosen, _, _ = _export_config(loaded, shapes, fmt)  # refuse a bad format before writing
    with staging_dir(target, overwrite) as tmp:
        written = write_weights(loaded.model, tmp, torch_dtype, max_shard_size)
        write_beside_weights(tmp, loaded, shapes, fmt, torch_dtype, written, plan, report)
    weight_bytes = sum(p.stat().st_size for p in target.glob("*.safetensors"))
    return ExportResult(target, fmt_chosen, dtype_name(torch_dtype), weight_bytes, shapes)


def export_summary(result: ExportResult) -> dict[str, Any]:
    return {
        "path": str(result.path),
        "format": result.format,
        "dtype": result.dtype,
        "weight_bytes": result.weight_bytes,
    }
