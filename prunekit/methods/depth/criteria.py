"""What the greedy depth search minimizes: the calibration NLL, or the divergence from the dense.

``ppl`` (BlockPruner's paper) and ``ppl-per-param`` score a candidate by the calibration NLL of
the model without it. ``kl`` and ``kl-per-param`` score it by

    KL(dense || candidate) = sum_t sum_v p_t(v) (log p_t(v) - log q_t(v))

summed over the calibration tokens t, where p is the dense model's next-token distribution and q
the candidate's (FinerCut-style: the output distribution of the pruned model against the dense
one's). Why KL(dense || candidate) rather than JS:

- it is the soft-target version of the paper's criterion: the NLL is the cross-entropy against the
  one-hot next token, KL is the cross-entropy against the dense model's whole distribution minus
  the dense entropy (a constant). Every token of the vocabulary the dense model thinks likely
  counts, not only the one that happened to follow, so 1,024 calibration tokens carry far more
  signal (the over-fitting hypothesis of docs/results/depth.md);
- the direction weights tokens by the dense model's belief, so a candidate is penalised for
  losing what the dense model predicts (JS is symmetric and bounded by log 2 per token, which
  flattens the large per-token losses that separate bad candidates);
- it admits a provable cheap lower bound (below), so the branch and bound keeps working; JS does
  not split over a vocabulary subset the same way.

Memory: the dense logits are never stored (49k per token). The runner keeps the dense model's
final hidden states (d per token) and recomputes the dense log-probabilities chunk by chunk next
to the candidate's, which doubles the head's cost of an exact evaluation.

The bound. For a vocabulary subset S (the dense model's most likely tokens, nll_bound.py), the
chain rule of KL over the partition {S, rest} gives

    KL(p || q) = KL(coarse) + p(S) KL(p|S || q|S) + p(rest) KL(p|rest || q|rest)
              >= p(S) KL(p|S || q|S) = sum_{v in S} p(v) (log p|S(v) - log q|S(v)),

where p|S, q|S are the distributions conditioned on S: q|S is the softmax of the candidate's
logits over S alone, so the bound costs |S|/V of the candidate's head (and as much again for the
dense side, with the dense log-normalizer per token computed once). As in nll_bound.py,
``SLACK`` times the logits' magnitude is subtracted per token so that the bound stays below the
exact value as computed in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from prunekit.methods.depth.calibration import BlockRunner
from prunekit.methods.depth.nll_bound import SLACK, predicted_rows, subset_size
from prunekit.methods.registry import CRITERIA as REGISTRY_CRITERIA
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import LoadedModel
from prunekit.models.precision import in_full_fp32

CRITERIA = REGISTRY_CRITERIA
# Tokens whose full-vocabulary logits are held at once (per model: dense and candidate).
CHUNK = 128


def is_per_param(criterion: str) -> bool:
    """Whether the criterion divides the loss increase by the parameters a candidate removes."""
    return criterion.endswith("-per-param")


def is_divergence(criterion: str) -> bool:
    """Whether the criterion's loss is KL(dense || candidate) instead of the NLL."""
    return criterion.startswith("kl")


def make_runner(loaded: LoadedModel, windows: torch.Tensor, criterion: str) -> BlockRunner:
    """The runner whose per-window loss (``window_nll``) is the one ``criterion`` minimizes."""
    if is_divergence(criterion):
        return DivergenceRunner(loaded, windows)
    return BlockRunner(loaded, windows)


class DivergenceRunner(BlockRunner):
    """A :class:`BlockRunner` whose per-window loss is KL(dense || candidate) instead of the NLL.

    The search only calls ``window_nll`` (exact loss) and ``window_bound`` (its lower bound), so
    it runs unchanged on this criterion; ``reported_nll`` still gives the calibration NLL that
    the trajectory records as ``calib_ppl``.
    """

    @torch.inference_mode()
    def __init__(self, loaded: LoadedModel, windows: torch.Tensor) -> None:
        super().__init__(loaded, windows)
        dense = self.blocks()
        # Final hidden states after the final norm: d per token, the dense logits' seed.
        self._dense_finals = [
            self.adapter.final_hidden(self.model, self.run(self.embedded(w), dense))
            for w in range(self.num_windows)
        ]
        # The bound's vocabulary subset and the dense log-normalizers, on first use.
        self._rows: torch.Tensor | None = None
        self._dense_lse: list[torch.Tensor] = []

    @torch.inference_mode()
    def window_nll(self, hidden: torch.Tensor, window: int) -> float:
        """KL(dense || candidate) summed over the window's predicted tokens (the search's loss)."""
        final = self.adapter.final_hidden(self.model, hidden)
        return window_kl(self.head, self._dense_finals[window], final, self.skip_first)

    @torch.inference_mode()
    def window_bound(self, hidden: torch.Tensor, window: int) -> float:
        """A lower bound on :meth:`window_nll` from the vocabulary subset (module docstring)."""
        if self._rows is None:
            size = subset_size(self.head.vocab_size)
            self._rows = predicted_rows(self.head, self._dense_finals, self.skip_first, size)
            self._dense_lse = [
                dense_log_normalizers(self.head, f, self.skip_first) for f in self._dense_finals
            ]
        final = self.adapter.final_hidden(self.model, hidden)
        dense = self._dense_finals[window]
        lse = self._dense_lse[window]
        return window_kl_bound(self.head, self._rows, dense, lse, final, self.skip_first)

    def reported_nll(self, active: Sequence[BlockRef], loss: float) -> float:
        """The calibration NLL of the model that runs only ``active`` (``loss`` is a KL)."""
        return sum(
            BlockRunner.window_nll(self, self.run(self.embedded(w), active), w)
            for w in range(self.num_windows)
        )


@torch.inference_mode()
@in_full_fp32
def window_kl(head, dense_final: torch.Tensor, final: torch.Tensor, skip_first: int) -> float:
    """sum_t KL(p_t || q_t) over positions skip_first..T-2 of one window ([1, T, d] finals)."""
    dense, cand = dense_final[0, skip_first:-1], final[0, skip_first:-1]
    total = torch.zeros((), dtype=torch.float64, device=cand.device)
    for start in range(0, cand.shape[0], CHUNK):
        log_p = torch.log_softmax(head.logits(dense[start : start + CHUNK]), dim=-1)
        log_q = torch.log_softmax(head.logits(cand[start : start + CHUNK]), dim=-1)
        total += (log_p.exp() * (log_p - log_q)).sum(dtype=torch.float64)
    return float(total)


@torch.inference_mode()
@in_full_fp32
def dense_log_normalizers(head, dense_final: torch.Tensor, skip_first: int) -> torch.Tensor:
    """log sum_v exp(z_t(v)) of the dense logits, per predicted position of one window."""
    dense = dense_final[0, skip_first:-1]
    return torch.cat(
        [
            torch.logsumexp(head.logits(dense[start : start + CHUNK]), dim=-1)
            for start in range(0, dense.shape[0], CHUNK)
        ]
    )


@torch.inference_mode()
@in_full_fp32
def window_kl_bound(
    head,
    rows: torch.Tensor,
    dense_final: torch.Tensor,
    dense_lse: torch.Tensor,
    final: torch.Tensor,
    skip_first: int,
) -> float:
    """sum_t p_t(S) KL(p_t|S || q_t|S) - slack: below :func:`window_kl` (module docstring).

    ``dense_lse`` (:func:`dense_log_normalizers`) gives p_t(v) on S from the dense logits on S
    alone, so both sides cost |S|/V of a head.
    """
    weight = head.weight[rows]
    bias = None if head.bias is None else head.bias[rows]
    dense, cand = dense_final[0, skip_first:-1], final[0, skip_first:-1]
    total = torch.zeros((), dtype=torch.float64, device=cand.device)
    for start in range(0, cand.shape[0], CHUNK):
        stop = start + CHUNK
        dense_subset = head.cap(F.linear(dense[start:stop].float(), weight, bias))
        cand_subset = head.cap(F.linear(cand[start:stop].float(), weight, bias))
        log_p_subset = dense_subset - dense_lse[start:stop, None]
        log_p_cond = torch.log_softmax(dense_subset, dim=-1)
        log_q_cond = torch.log_softmax(cand_subset, dim=-1)
        per_token = (log_p_subset.exp() * (log_p_cond - log_q_cond)).sum(dim=-1)
        magnitude = cand_subset.abs().amax(dim=-1) + dense_subset.abs().amax(dim=-1) + 1.0
        total += (per_token - SLACK * magnitude).clamp_min(0.0).sum(dtype=torch.float64)
    return float(total)
