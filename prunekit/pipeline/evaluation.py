"""Perplexity and zero-shot of one model: in memory, or streamed from its files (perplexity
layer by layer, zero-shot on the model dispatched by accelerate)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prunekit.engine.residency import is_streamed
from prunekit.engine.world import World
from prunekit.errors import SettingsError
from prunekit.evaluation.perplexity import perplexity
from prunekit.loader import load
from prunekit.models.loading import LoadedModel
from prunekit.pipeline.requests import EvalRequest


def evaluate_ppl(
    loaded: LoadedModel,
    datasets: list[str],
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    max_memory: int | str | None = None,
) -> dict:
    """{dataset: PerplexityResult as dict} for each dataset.

    A streamed model (``prunekit.load(spec, residency="streamed")``) is evaluated layer by
    layer, holding at most ``max_memory`` (bytes, or a size such as "2GB"; None: every window
    in one chunk)."""
    if not is_streamed(loaded):  # in memory (Resident, or none)
        if max_memory is not None:
            raise SettingsError(
                "max_memory bounds a streamed evaluation: load the model with residency='streamed'"
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
    loaded: LoadedModel, request: EvalRequest, *, max_memory: int | str | None = None
) -> dict:
    """{"ppl": {dataset: ...}, "zeroshot": {...}} of one loaded model, as ``request`` asks: the
    report's ``eval`` entry. ``max_memory`` bounds the perplexity of a streamed model.

    Zero-shot tasks are resolved (and their offline files checked) before any perplexity runs, so
    a typo in a task name fails in a second, not after a long perplexity pass.
    """
    _check_tasks(request)
    result: dict = {}
    if request.datasets:
        result["ppl"] = _perplexities(loaded, request, max_memory)
    if request.tasks:
        result["zeroshot"] = _zeroshot(loaded, request)
    return result


def evaluate_from_files(
    model: str,
    request: EvalRequest,
    *,
    max_memory: int | str | None = None,
    offload_folder: str | Path | None = None,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
    world: World | None = None,
) -> dict:
    """``evaluate_loaded``'s entries for a model bigger than memory (a spec or an exported
    directory), computed without ever holding the whole model.

    Perplexity runs layer by layer from the shards (``prunekit.load``, residency streamed; chunks
    of windows from ``max_memory``); zero-shot runs in lm-eval on the model dispatched by
    accelerate (at most ``max_memory`` of weights on ``device``, the rest offloaded: read from
    the checkpoint or written to ``offload_folder``, a temporary directory by default).
    """
    import tempfile

    from prunekit.memory import parse_memory_size

    _check_tasks(request)
    budget = None if max_memory is None else parse_memory_size(max_memory)
    options = {"dtype": dtype, "device": device, "attn_implementation": attn_implementation}
    result: dict = {}
    if request.datasets:
        check_streamable(model)
        streamed = load(model, residency="streamed", **options)
        streamed.world = world
        result["ppl"] = _perplexities(streamed, request, budget)
    if request.tasks:

        def dispatched_zeroshot() -> dict:
            with tempfile.TemporaryDirectory(prefix="prunekit-offload-") as scratch:
                dispatched = load(
                    model,
                    residency="dispatched",
                    max_memory=budget,
                    offload_folder=offload_folder or scratch,
                    **options,
                )
                return _scores(dispatched, request)

        result["zeroshot"] = _on_rank_zero(world, dispatched_zeroshot)
    return result


def _check_tasks(request: EvalRequest) -> None:
    if request.tasks:
        from prunekit.evaluation.zeroshot import check_tasks

        check_tasks(request.tasks, request.task_data)


def _perplexities(loaded: LoadedModel, request: EvalRequest, max_memory) -> dict:
    return evaluate_ppl(
        loaded,
        request.datasets,
        request.seqlen,
        request.max_windows,
        request.ppl_batch_size,
        max_memory,
    )


# Zero-shot under many processes: lm-eval spreads its requests over processes only under its
# own launcher (accelerate), not inside a torchrun job of ours, so rank 0 alone runs it.
ZEROSHOT_ON_RANK_ZERO = "zero-shot ran on rank 0 alone (the other ranks waited)"


def _zeroshot(loaded: LoadedModel, request: EvalRequest) -> dict:
    return _on_rank_zero(loaded.world, lambda: _scores(loaded, request))


def _on_rank_zero(world: World | None, score: Callable[[], dict]) -> dict:
    """``score()``; under many processes on rank 0 alone (the others load nothing and wait at a
    barrier), its result noted so."""
    if world is None or not world.distributed:
        return score()
    scores = score() if world.is_main else {}
    world.barrier()
    return {**scores, "note": ZEROSHOT_ON_RANK_ZERO}


def _scores(loaded: LoadedModel, request: EvalRequest) -> dict:
    from prunekit.evaluation.zeroshot import zeroshot

    return zeroshot(
        loaded,
        request.tasks,
        limit=request.limit,
        batch_size=request.batch_size,
        task_data=request.task_data,
    ).to_dict()


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
