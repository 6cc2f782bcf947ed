"""Token windows: evaluation windows and seeded calibration samples (docs/protocol.md)."""

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
    body, span = _window_span(tokens, n_samples, seqlen, bos_token_id)
    return _cut(tokens, _seeded_starts(span, n_samples, seed), body, bos_token_id)


# Held-out draws use their own stream, so they never replay the calibration draw's offsets.
HELD_OUT_SEED_OFFSET = 7_919
MAX_HELD_OUT_DRAWS = 64  # rounds of n_samples candidate offsets before the corpus is too small


def held_out_windows(
    tokens: torch.Tensor,
    n_samples: int,
    seqlen: int,
    seed: int,
    bos_token_id: int | None = None,
) -> torch.Tensor:
    """``n_samples`` windows like :func:`calibration_windows` that share no token with the
    windows ``calibration_windows(tokens, n_samples, seqlen, seed)`` draws.

    A loss measured on the calibration windows rewards a method that fits them (FASP's
    least-squares restoration does, with few tokens per column); these score a plan fairly.
    """
    body, span = _window_span(tokens, n_samples, seqlen, bos_token_id)
    taken = _seeded_starts(span, n_samples, seed)  # the calibration windows' starts
    generator = torch.Generator().manual_seed(seed + HELD_OUT_SEED_OFFSET)
    starts: list[int] = []
    for _ in range(MAX_HELD_OUT_DRAWS):
        for start in torch.randint(0, span + 1, (n_samples,), generator=generator).tolist():
            if all(abs(start - other) >= body for other in taken):
                starts.append(start)
                taken.append(start)
            if len(starts) == n_samples:
                return _cut(tokens, starts, body, bos_token_id)
    raise DataError(
        f"calibration text has {tokens.numel()} tokens: too few for {n_samples} held-out windows "
        f"of {seqlen} beside the {n_samples} calibration ones"
    )


def _window_span(
    tokens: torch.Tensor, n_samples: int, seqlen: int, bos_token_id: int | None
) -> tuple[int, int]:
    """(text tokens per window, last possible start)."""
    if n_samples < 1:
        raise SettingsError("n_samples must be at least 1")
    body = seqlen - 1 if bos_token_id is not None else seqlen
    span = tokens.numel() - body
    if span < 0:
        raise DataError(f"calibration text has {tokens.numel()} tokens, fewer than {seqlen}")
    return body, span


def _seeded_starts(span: int, count: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, span + 1, (count,), generator=generator).tolist()


def _cut(
    tokens: torch.Tensor, starts: list[int], body: int, bos_token_id: int | None
) -> torch.Tensor:
    windows = torch.stack([tokens[s : s + body] for s in starts])
    if bos_token_id is not None:
        windows = torch.cat([torch.full((len(starts), 1), bos_token_id), windows], dim=1)
    return windows
