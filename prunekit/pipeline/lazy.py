"""A LoadedModel whose weights stay in their files (``LazyModel``): what streamed runs hold."""

from __future__ import annotations

from prunekit.engine.residency import Streamed
from prunekit.errors import ModelNotFoundError
from prunekit.models.lazy import LazyModel
from prunekit.models.loading import LoadedModel, default_device


def open_streamed(
    model: str,
    *,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """``model`` (a spec with safetensors shards) with its weights left in their files: the
    skeleton on meta, each part onloaded only while the engine runs it. ``evaluate_ppl`` then
    evaluates it layer by layer."""
    lazy = LazyModel.open(
        model,
        dtype=dtype,
        device=device or default_device(),
        attn_implementation=attn_implementation,
    )
    loaded = lazy_loaded(lazy, model)
    loaded.residency = Streamed(lazy)
    return loaded


def lazy_loaded(lazy: LazyModel, spec: str) -> LoadedModel:
    """A LoadedModel around a lazy model's skeleton (weights on meta until onloaded)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(lazy.directory))
    except Exception as exc:
        raise ModelNotFoundError(
            f"cannot load the tokenizer of {spec!r}: {str(exc).splitlines()[0]}"
        ) from exc
    return LoadedModel(
        lazy.model, tokenizer, lazy.adapter, spec, str(lazy.directory), lazy.dtype, str(lazy.device)
    )
