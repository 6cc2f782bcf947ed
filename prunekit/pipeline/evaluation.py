"""Perplexity and zero-shot of one model: in memory, or streamed from its files (perplexity
layer by layer, zero-shot on the model dispatched by accelerate)."""

from __future__ import annotations

from pathlib import Path

from prunekit.engine.residency import is_streamed
from prunekit.errors import SettingsError
from prunekit.evaluation.perplexity import perplexity
from prunekit.models.loading import LoadedModel
from prunekit.pipeline.lazy import open_streamed


def evaluate_ppl(
    loaded: LoadedModel,
    datasets: list[str],
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    max_memory: int | str | None = None,
) -> dict:
    """{dataset: PerplexityResult as dict} for each dataset.

    A lazily loaded model (``open_streamed``) is evaluated layer by layer, holding at most
    ``max_memory`` (bytes, or a size such as "2GB"; None: every window in one chunk)."""
    if not is_streamed(loaded):  # in memory (Resident, or none)
        if max_memory is not None:
            raise SettingsError(
                "max_memory bounds a streamed evaluation: open the model with open_streamed"
            )
        return {
            name: perplexity(loaded, name, seqlen, max_windows, batch_size).to_dict()
            for name in datasets
        }
    from prunekit.evaluation.streamed import perplexity_streamed
    from prunekit.memory import parse_memory_size

    budget = None if max_memory is None else parse_memory_size(max_memory)
    return {
        name: perplexity_streamed(loaded, name, seqlen, max_windows, batch_size, budget).to_dict()
        for name in datasets
    }


def evaluate_loaded(
    loaded: LoadedModel,
    *,
    ppl: list[str] | None = None,
    seqlen: int = 2048,
    max_windows: int | None = None,
    ppl_batch_size: int = 1,
    tasks: list[str] | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    task_data: str | Path | None = None,
    max_memory: int | str | None = None,
) -> dict:
    """{"ppl": {dataset: ...}, "zeroshot": {...}} of one loaded model: the report's ``eval``
    entry. ``max_memory`` bounds the perplexity of a model opened with ``open_streamed``.

    Zero-shot tasks are resolved (and their offline files checked) before any perplexity runs, so
    a typo in a task name fails in a second, not after a long perplexity pass.
    """
    from prunekit.evaluation.zeroshot import check_tasks, zeroshot

    if tasks:
        check_tasks(tasks, task_data)
    result: dict = {}
    if ppl:
        result["ppl"] = evaluate_ppl(loaded, ppl, seqlen, max_windows, ppl_batch_size, max_memory)
    if tasks:
        result["zeroshot"] = zeroshot(
            loaded, tasks, limit=limit, batch_size=batch_size, task_data=task_data
        ).to_dict()
    return result


def evaluate_from_files(
    model: str,
    *,
    ppl: list[str] | None = None,
    seqlen: int = 2048,
    max_windows: int | None = None,
    ppl_batch_size: int = 1,
    tasks: list[str] | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    task_data: str | Path | None = None,
    max_memory: int | str | None = None,
    offload_folder: str | Path | None = None,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
) -> dict:
    """``evaluate_loaded``'s entries for a model bigger than memory (a spec or an exported
    directory), computed without ever holding the whole model.

    Perplexity runs layer by layer from the shards (``open_streamed``, chunk of windows from
    ``max_memory``); zero-shot runs in lm-eval on the model dispatched by accelerate (at most
    ``max_memory`` of weights on ``device``, the rest offloaded: read from the checkpoint or
    written to ``offload_folder``, a temporary directory by default).
    """
    import tempfile

    from prunekit.evaluation.dispatched import load_dispatched
    from prunekit.evaluation.zeroshot import check_tasks, zeroshot
    from prunekit.memory import parse_memory_size

    if tasks:
        check_tasks(tasks, task_data)
    budget = None if max_memory is None else parse_memory_size(max_memory)
    common = {"dtype": dtype, "device": device, "attn_implementation": attn_implementation}
    result: dict = {}
    if ppl:
        check_streamable(model)
        result["ppl"] = evaluate_ppl(
            open_streamed(model, **common), ppl, seqlen, max_windows, ppl_batch_size, budget
        )
    if tasks:
        with tempfile.TemporaryDirectory(prefix="prunekit-offload-") as scratch:
            loaded = load_dispatched(
                model, max_memory=budget, offload_folder=offload_folder or scratch, **common
            )
            result["zeroshot"] = zeroshot(
                loaded, tasks, limit=limit, batch_size=batch_size, task_data=task_data
            ).to_dict()
    return result


def check_streamable(model: str) -> None:
    """Refuse, in one line, a model the lazy loader cannot read (a prunekit-format export)."""
    from prunekit.export.load import is_export_dir, read_config
    from prunekit.export.shim import shim_for_model_type

    path = Path(model).expanduser()
    exported = path.is_dir() and is_export_dir(path)
    if exported and shim_for_model_type(read_config(path).model_type) is not None:
        raise SettingsError(
            f"{model} is a prunekit-format export (per-layer widths): its perplexity cannot "
            "be computed layer by layer yet; evaluate it without --stream"
        )
