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

Memory: the dense logits are never stored (49k per token). The runner (runner.py) keeps the
dense model's final hidden states (d per token) and recomputes the dense log-probabilities chunk
by chunk next to the candidate's, which doubles the head's cost of an exact evaluation.

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

import torch
import torch.nn.functional as F

from prunekit.methods.depth.nll_bound import SLACK
from prunekit.methods.settings import CRITERIA as REGISTRY_CRITERIA
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
