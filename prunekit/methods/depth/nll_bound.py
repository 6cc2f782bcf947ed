"""The depth search's LM head in fp32, and a cheap provable lower bound on a window's NLL.

For one position with logits z and target y, NLL = logsumexp_v(z_v) - z_y. Leaving vocabulary
entries out can only lower the log-sum-exp, so for any subset S of the vocabulary

    logsumexp_{v in S + {y}}(z_v) - z_y  <=  NLL.

With S = the few thousand tokens the dense model predicts most often, the bound is within a few
hundredths of a nat per token of the NLL and costs |S|/V of the LM head (4096 of 49,152 rows for
SmolLM2). The search (search.py) uses it to drop a candidate that cannot win before it pays for
the candidate's full head, which otherwise costs about a quarter of a small model's forward.

Both the exact NLL and the bound use the same fp32 head. In bf16, a logit of 20 is only known to
+-0.06, which would make any bound loose (and candidate rankings noisy); in fp32 the two
computations differ by rounding far below ``SLACK``, which is subtracted from the bound per token so
that it stays below the exact value as computed. "fp32" must mean IEEE fp32: TF32 or oneDNN's bf16
math mode would round far more, so the head runs inside ``full_fp32_matmul`` (precision.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.evaluation.nll import Fp32LmHead, nll_from_final_hidden
from prunekit.models.adapters import Adapter
from prunekit.models.precision import in_full_fp32

# Rows of the head the bound keeps, at most (and at most 1/8 of the vocabulary).
SUBSET_SIZE = 4096
# Per-token safety margin, relative to the magnitude of the logits involved: fp32 rounding of a
# 1-4k-term dot product is ~1e-6 of it, so this is generous and still ~0.005 nats per token.
SLACK = 1e-4


class Fp32Head(Fp32LmHead):
    """The model's LM head in fp32 (``Fp32LmHead``) with what the search adds: the exact NLL of
    a window, and head rows for the bound. ``logits`` runs in the caller's fp32 scope, entered
    once per window rather than per chunk (the scope costs tens of microseconds)."""

    def __init__(self, model: nn.Module, adapter: Adapter) -> None:
        super().__init__(model, adapter, model.get_output_embeddings())
        self.model, self.adapter = model, adapter

    @torch.inference_mode()
    @in_full_fp32
    def nll(self, final_hidden: torch.Tensor, input_ids: torch.Tensor, skip_first: int) -> float:
        """The exact summed NLL of one window ([1, T, d] after the final norm): what the bound
        of :class:`VocabSubsetBound` stays below."""
        nll = nll_from_final_hidden(
            self.model,
            self.adapter,
            final_hidden,
            input_ids,
            skip_first=skip_first,
            logits_fn=self.logits,
        )
        return float(nll.sum().item())

    def rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.weight[rows], None if self.bias is None else self.bias[rows]

    def cap(self, logits: torch.Tensor) -> torch.Tensor:
        return self._cap(logits)


class VocabSubsetBound:
    """Lower bounds on per-window NLL from the head rows ``rows`` (plus each target's own row)."""

    def __init__(self, head: Fp32Head, rows: torch.Tensor) -> None:
        self.head = head
        self.rows = rows
        self.weight, self.bias = head.rows(rows)

    @torch.inference_mode()
    @in_full_fp32
    def window(self, final_hidden: torch.Tensor, input_ids: torch.Tensor, skip_first: int) -> float:
        """The bound for one window: ``final_hidden`` [1, T, d] after the final norm."""
        hidden = final_hidden[0, skip_first:-1].float()
        targets = input_ids[0, skip_first + 1 :].to(hidden.device)
        subset = self.head.cap(F.linear(hidden, self.weight, self.bias))
        target_bias = 0.0 if self.head.bias is None else self.head.bias[targets]
        target = self.head.cap((hidden * self.head.weight[targets]).sum(-1) + target_bias)
        magnitude = subset.abs().amax(dim=-1) + target.abs() + 1.0
        # The target's row is added once on its own; a copy inside the subset would count twice.
        subset = subset.masked_fill(self.rows[None, :] == targets[:, None], float("-inf"))
        lse = torch.logsumexp(torch.cat([subset, target[:, None]], dim=-1), dim=-1)
        per_token = (lse - target - SLACK * magnitude).clamp_min(0.0)
        return float(per_token.sum(dtype=torch.float64))


def subset_size(vocab_size: int) -> int:
    return max(1, min(SUBSET_SIZE, vocab_size // 8))


@torch.inference_mode()
@in_full_fp32
def predicted_rows(
    head: Fp32Head,
    final_hiddens: Sequence[torch.Tensor],
    skip_first: int,
    size: int,
) -> torch.Tensor:
    """The ``size`` tokens with the highest mean predicted probability over the given windows
    (the dense model's), in vocabulary order so the subset is deterministic."""
    mass = torch.zeros(head.vocab_size, dtype=torch.float64, device=head.weight.device)
    for final in final_hiddens:
        add_predicted_mass(mass, head, final, skip_first)
    return torch.topk(mass, size).indices.sort().values


@torch.inference_mode()
@in_full_fp32
def add_predicted_mass(
    mass: torch.Tensor, head: Fp32Head, final_hidden: torch.Tensor, skip_first: int
) -> None:
    """Add one window's predicted probabilities, summed over positions, to ``mass`` (in place;
    the streamed search accumulates chunk by chunk what ``predicted_rows`` sums at once)."""
    probs = torch.softmax(head.logits(final_hidden[0, skip_first:-1]), dim=-1)
    mass += probs.sum(dim=0, dtype=torch.float64)


def build_bound(
    head: Fp32Head,
    dense_finals: Callable[[], Sequence[torch.Tensor]],
    skip_first: int,
) -> VocabSubsetBound:
    rows = predicted_rows(head, dense_finals(), skip_first, subset_size(head.vocab_size))
    return VocabSubsetBound(head, rows)
