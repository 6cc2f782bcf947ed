"""Token negative log-likelihood in fp32 without materialising [B, T, V] logits at once."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.models.adapters import Adapter
from prunekit.models.precision import in_full_fp32

# Logits for this many tokens at a time: ~25 MB in fp32 for a 49k vocabulary.
DEFAULT_CHUNK = 128

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


class Fp32LmHead:
    """The model's LM head (bias and logit soft-capping included) evaluated in fp32.

    The weight is upcast once per evaluation (no copy when it is already fp32) and each token
    chunk's final hidden states are upcast before the matmul, so a bf16 model's logits are the
    fp32 product of its bf16 weights instead of a bf16-rounded one (a logit of 20 is only known to
    +-0.06 in bf16). Build it with ``for_model``, which declines heads it cannot reproduce.
    """

    def __init__(self, model: nn.Module, adapter: Adapter, head: nn.Linear) -> None:
        self.weight = head.weight.detach().float()
        self.bias = None if head.bias is None else head.bias.detach().float()
        self._cap = lambda logits: adapter.cap_logits(model, logits)

    @classmethod
    def for_model(cls, model: nn.Module, adapter: Adapter) -> Fp32LmHead | None:
        """The fp32 head, or None when the adapter computes logits some other way.

        The default ``Adapter.head_logits`` is "output embeddings, then ``cap_logits``"; an
        adapter that overrides it, or an output embedding that is not a plain linear layer, keeps
        the model's own logits (the log-softmax is still fp32).
        """
        head = model.get_output_embeddings()
        if type(adapter).head_logits is not Adapter.head_logits or type(head) is not nn.Linear:
            return None
        return cls(model, adapter, head)

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    def logits(self, final_hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits; the caller is inside ``full_fp32_matmul`` (TF32 or oneDNN's bf16 math
        mode would round the matmul far below fp32)."""
        return self._cap(F.linear(final_hidden.float(), self.weight, self.bias))

    @in_full_fp32
    def __call__(self, final_hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits under full IEEE fp32 matmul precision, whatever the user's setting."""
        return self.logits(final_hidden)


def eval_logits_fn(model: nn.Module, adapter: Adapter) -> tuple[LogitsFn, str]:
    """The logits function perplexity uses, and what it is: ``"fp32"`` or ``"model"``."""
    head = Fp32LmHead.for_model(model, adapter)
    if head is not None:
        return head, "fp32"
    return model_logits_fn(model, adapter), "model"


def model_logits_fn(model: nn.Module, adapter: Adapter) -> LogitsFn:
    """The model's own head in its own dtype."""

    def logits_fn(hidden: torch.Tensor) -> torch.Tensor:
        return adapter.head_logits(model, hidden)

    return logits_fn


def nll_from_final_hidden(
    model: nn.Module,
    adapter: Adapter,
    final_hidden: torch.Tensor,
    input_ids: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
    skip_first: int = 0,
    logits_fn: LogitsFn | None = None,
) -> torch.Tensor:
    """Sum of NLL per window ([B] fp32) for predicting input_ids[:, t+1] from position t.

    ``final_hidden`` is the decoder output after its final norm. Log-softmax runs in fp32 even when
    the model runs in bf16 (docs/protocol.md, "Perplexity"). ``skip_first`` positions (a BOS) are
    never targets.
    ``logits_fn`` replaces the model's own head (perplexity and the depth search pass an fp32 one).
    """
    if logits_fn is None:
        logits_fn = model_logits_fn(model, adapter)
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
    logits_fn: LogitsFn | None = None,
) -> torch.Tensor:
    """Like nll_from_final_hidden, from the hidden state after the last decoder layer."""
    return nll_from_final_hidden(
        model, adapter, adapter.final_hidden(model, hidden), input_ids, chunk, skip_first, logits_fn
    )
