"""Token negative log-likelihood in fp32 without materialising [B, T, V] logits at once."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunekit.models.adapters import Adapter

# Logits for this many tokens at a time: ~25 MB in fp32 for a 49k vocabulary.
DEFAULT_CHUNK = 128


def nll_from_final_hidden(
    model: nn.Module,
    adapter: Adapter,
    final_hidden: torch.Tensor,
    input_ids: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
    skip_first: int = 0,
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sum of NLL per window ([B] fp32) for predicting input_ids[:, t+1] from position t.

    ``final_hidden`` is the decoder output after its final norm. Log-softmax runs in fp32 even when
    the model runs in bf16 (PROTOCOL.md). ``skip_first`` positions (a BOS) are never targets.
    ``logits_fn`` replaces the model's own head (the depth search uses an fp32 copy of it).
    """
    if logits_fn is None:

        def logits_fn(hidden: torch.Tensor) -> torch.Tensor:
            return adapter.head_logits(model, hidden)

    batch, length, _ = final_hidden.shape
    targets = input_ids[:, 1:].to(final_hidden.device)
    total = torch.zeros(batch, dtype=torch.float32, device=final_hidden.device)
    for start in range(skip_first, length - 1, chunk):
        stop = min(start + chunk, length - 1)
        logits = logits_fn(final_hidden[:, start:stop]).float()
        logprobs = torch.log_softmax(logits, dim=-1)
        total -= logprobs.gather(-1, targets[:, start:stop, None]).squeeze(-1).sum(dim=1)
    return total


def nll_from_hidden(
    model: nn.Module,
    adapter: Adapter,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
    skip_first: int = 0,
) -> torch.Tensor:
    """Like nll_from_final_hidden, from the hidden state after the last decoder layer."""
    return nll_from_final_hidden(
        model, adapter, adapter.final_hidden(model, hidden), input_ids, chunk, skip_first
    )
