"""Token windows: contiguous evaluation windows (PROTOCOL.md) and seeded calibration samples."""

from __future__ import annotations

import functools
from typing import Any

import torch

from prunekit.data.corpora import load_corpus
from prunekit.data.token_cache import cached_tokens
from prunekit.errors import DataError, SettingsError


def tokenize_text(tokenizer: Any, text: str) -> torch.Tensor:
    """The whole text tokenized once, with the tokenizer's default special tokens."""
    if not text.strip():
        raise DataError("the text to tokenize is empty")
    ids = tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


@functools.lru_cache(maxsize=8)
def _tokenized_corpus(tokenizer: Any, name: str) -> torch.Tensor:
    return cached_tokens(tokenizer, load_corpus(name), tokenize_text)


def corpus_tokens(tokenizer: Any, name: str) -> torch.Tensor:
    """Tokenized corpus, cached per (tokenizer, name) within a process (eval and calibration on
    the same corpus, or several runs in one process, tokenize it once) and on disk across
    processes, keyed by the tokenizer's state and the text (``data.token_cache``)."""
    return _tokenized_corpus(tokenizer, name)


def check_seqlen(seqlen: int, model_config: Any | None) -> None:
    if seqlen < 2:
        raise SettingsError(f"seqlen must be at least 2, got {seqlen}")
    limit = getattr(model_config, "max_position_embeddings", None) if model_config else None
    if limit is not None and seqlen > limit:
        raise SettingsError(f"seqlen {seqlen} exceeds the model's context ({limit} tokens)")


def eval_windows(
    tokens: torch.Tensor,
    seqlen: int,
    max_windows: int | None = None,
    bos_token_id: int | None = None,
) -> torch.Tensor:
    """floor(n / seqlen) non-overlapping windows [N, seqlen]; the tail is dropped.

    With ``bos_token_id`` each window is BOS + (seqlen - 1) text tokens (models that need it).
    """
    body = seqlen - 1 if bos_token_id is not None else seqlen
    count = tokens.numel() // body
    if count == 0:
        raise DataError(f"the text has {tokens.numel()} tokens, fewer than one window of {seqlen}")
    if max_windows is not None:
        if max_windows < 1:
            raise SettingsError("max_windows must be at least 1")
        count = min(count, max_windows)
    windows = tokens[: count * body].view(count, body)
    if bos_token_id is not None:
        windows = torch.cat([torch.full((count, 1), bos_token_id), windows], dim=1)
    return windows


def calibration_windows(
    tokens: torch.Tensor,
    n_samples: int,
    seqlen: int,
    seed: int,
    bos_token_id: int | None = None,
) -> torch.Tensor:
    """``n_samples`` windows of ``seqlen`` tokens starting at seeded uniform random offsets.

    The corpus is tokenized as one stream (documents joined), so a window may span documents,
    as in the SparseGPT/BlockPruner calibration loaders. Same seed -> same windows.
    """
    if n_samples < 1:
        raise SettingsError("n_samples must be at least 1")
    body = seqlen - 1 if bos_token_id is not None else seqlen
    span = tokens.numel() - body
    if span < 0:
        raise DataError(f"calibration text has {tokens.numel()} tokens, fewer than {seqlen}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, span + 1, (n_samples,), generator=generator)
    windows = torch.stack([tokens[s : s + body] for s in starts.tolist()])
    if bos_token_id is not None:
        windows = torch.cat([torch.full((n_samples, 1), bos_token_id), windows], dim=1)
    return windows
