"""Write a pruned model as one GGUF file for llama.cpp / ollama, streamed and atomic.

The header (metadata and every tensor's name, shape and type) is written first, then the
tensors one at a time, each made from the model, converted and written before the next (the
family's layout, hyper-parameters and tensors come from its module: see ``families``). The file
is assembled under a hidden temp name beside the target and renamed into place at the end; a
``<name>.report.json`` beside it records the run's report plus the export section
(architecture, type, the zero padding applied and what it means for exactness).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
from gguf import GGMLQuantizationType

from prunekit.errors import ExportError
from prunekit.export.card import base_model_info, write_model_card
from prunekit.export.gguf.encode import (
    FILE_TYPES,
    check_gguf_type,
    encode,
    storage_type,
    stored_info,
)
from prunekit.export.gguf.families import GgufFamily, gguf_family
from prunekit.export.gguf.layout import GgufLayout
from prunekit.export.gguf.tensors import TensorSpec
from prunekit.export.gguf.tokenizer import copy_gguf_tokenizer, write_hf_tokenizer
from prunekit.export.per_layer import describe_for_report, describe_layers
from prunekit.models.loading import LoadedModel, resolve_spec
from prunekit.plan import PruningPlan, write_json_atomic

EXPORT_KEY = "export"
EXACTNESS = {
    "f32": "zero padding is exact; weights as computed",
    "f16": "zero padding is exact; weights rounded to f16",
    "bf16": "zero padding is exact; weights rounded to bf16",
    "q8_0": "zero padding stays exactly zero; kept weights match within q8_0 quantization error",
}


@dataclass
class GgufResult:
    path: Path
    report_path: Path
    arch: str
    gguf_type: str
    file_bytes: int
    padding: list[dict] = field(default_factory=list)


def report_path_for(target: Path) -> Path:
    return target.with_name(target.stem + ".report.json")


def check_gguf_target(target: str | Path, overwrite: bool) -> None:
    """Refuse a directory, and an existing file unless ``overwrite``."""
    target = Path(target)
    if target.suffix != ".gguf":
        raise ExportError(f"the GGUF output must end in .gguf, got {target}")
    if target.is_dir():
        raise ExportError(f"{target} is a directory; name the .gguf file to write")
    if target.exists() and not overwrite:
        raise ExportError(f"{target} already exists; pass --overwrite to replace it")


def source_gguf(loaded: LoadedModel) -> Path | None:
    """The GGUF file the model was loaded from (its tokenizer metadata is kept), else None."""
    source = Path(resolve_spec(loaded.spec))
    return source if source.suffix.lower() == ".gguf" and source.is_file() else None


def _add_shared_hparams(
    writer: gguf.GGUFWriter, config: Any, layout: GgufLayout, rows: int
) -> None:
    """What every written architecture reads the same way (the family adds the rest)."""
    writer.add_block_count(len(layout.layers))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_key_length(layout.head_dim)
    writer.add_value_length(layout.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(rows)


def _add_tensor_infos(
    writer: gguf.GGUFWriter, specs: list[TensorSpec], gguf_type: str
) -> list[dict]:
    """Declare every tensor; returns the q8_0 -> f16 fallbacks for the report."""
    fallbacks = []
    for spec in specs:
        qtype = storage_type(spec.shape, gguf_type)
        info = stored_info(spec.shape, qtype)
        writer.add_tensor_info(spec.name, info.shape, info.dtype, info.nbytes, raw_dtype=qtype)
        if gguf_type == "q8_0" and len(spec.shape) > 1 and qtype != GGMLQuantizationType.Q8_0:
            fallbacks.append({"tensor": spec.name, "stored": qtype.name.lower()})
    return fallbacks


def _write_data(writer: gguf.GGUFWriter, specs: list[TensorSpec], gguf_type: str) -> None:
    for spec in specs:
        tensor = spec.make()
        if tuple(tensor.shape) != spec.shape:  # a bug, never a user error: stop before renaming
            raise ExportError(
                f"{spec.name}: made {list(tensor.shape)}, declared {list(spec.shape)}"
            )
        writer.write_tensor_data(encode(tensor, storage_type(spec.shape, gguf_type)))
        del tensor


def write_gguf(
    loaded: LoadedModel, path: Path, family: GgufFamily, layout: GgufLayout, gguf_type: str
) -> dict:
    """Write the file at ``path``; returns the export facts for the report."""
    model = loaded.model
    rows = model.get_input_embeddings().weight.shape[0]
    writer = gguf.GGUFWriter(path, layout.arch)
    writer.add_name(f"{Path(loaded.spec).name} (pruned by prunekit)")
    writer.add_file_type(int(FILE_TYPES[gguf_type]))
    if gguf_type == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_shared_hparams(writer, model.config, layout, rows)
    family.add_hparams(writer, model.config, layout)
    source = source_gguf(loaded)
    if source is not None:
        tokenizer = copy_gguf_tokenizer(writer, source, rows)
    else:
        bos = loaded.adapter.bos_per_window
        tokenizer = write_hf_tokenizer(writer, loaded.tokenizer, rows, bos_required=bos)
    specs = list(family.tensors(model, loaded.adapter, layout))  # specs only: no tensor data yet
    fallbacks = _add_tensor_infos(writer, specs, gguf_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    _write_data(writer, specs, gguf_type)
    writer.close()
    return {"tokenizer": tokenizer, "type_fallbacks": fallbacks, "tensors": len(specs)}


def export_gguf(
    loaded: LoadedModel,
    out: str | Path,
    *,
    gguf_type: str = "f16",
    plan: PruningPlan | None = None,
    report: dict | None = None,
    overwrite: bool = False,
) -> GgufResult:
    """Write ``loaded`` (pruned in memory) to the GGUF file ``out`` (see the module docstring).

    ``gguf_type``: f32, f16, bf16 or q8_0 for the matrices (vectors stay f32).
    """
    target = Path(out)
    check_gguf_type(gguf_type)
    check_gguf_target(target, overwrite)
    family = gguf_family(loaded.adapter.family)
    layout = family.plan(loaded.model, loaded.adapter)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.partial-", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        facts = write_gguf(loaded, tmp, family, layout, gguf_type)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    section = {
        "format": "gguf",
        "arch": layout.arch,
        "gguf_type": gguf_type,
        "file_bytes": target.stat().st_size,
        "layers": [g.__dict__ for g in layout.layers],
        "padding": layout.padding,
        "adjustments": layout.adjustments,
        "exactness": EXACTNESS[gguf_type],
        **facts,
    }
    if plan is not None:
        section["plan_method"] = plan.method
    report_path = report_path_for(target)
    full_report = {**(report or {}), EXPORT_KEY: section}
    write_json_atomic(report_path, full_report)
    # The card a GGUF repository shows: README.md beside the file (card.py never replaces a
    # README.md it did not write).
    # The card lists the pruned model's layers as the other formats' cards do (the GGUF layer
    # list above is the file's own view: padded widths, llama.cpp names).
    shapes = describe_for_report(describe_layers(loaded.model, loaded.adapter))
    card_report = {**full_report, EXPORT_KEY: {**section, "layers": shapes}}
    base = base_model_info(loaded.spec, loaded.source)
    write_model_card(target, card_report, plan, base=base, fmt="gguf")
    return GgufResult(
        target, report_path, layout.arch, gguf_type, section["file_bytes"], layout.padding
    )
