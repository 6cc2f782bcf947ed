"""What one greedy depth step produces and how a candidate's loss becomes its score."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prunekit.methods.depth.criteria import is_per_param
from prunekit.models.adapters import BlockRef

Candidate = tuple[BlockRef, ...]


def label(candidate: Candidate) -> str:
    """'12.attn' for a block; '12' for a whole layer."""
    if len(candidate) == 1:
        return str(candidate[0])
    layers = {b.layer for b in candidate}
    return str(next(iter(layers))) if len(layers) == 1 else "+".join(map(str, candidate))


@dataclass(frozen=True)
class Criterion:
    """Maps a candidate's loss sum to its score; monotone in the sum, so partial sums bound it.

    The loss is the runner's ``window_nll`` summed: the NLL (``ppl`` criteria) or
    KL(dense || candidate) (``kl`` criteria, criteria.py).
    ``ppl`` / ``kl``: the sum itself (ppl = exp(sum / tokens) orders the same way).
    ``*-per-param``: (mean loss after - mean loss now) / parameters removed.
    """

    name: str
    tokens: int
    base_nll: float = 0.0
    params: dict[Candidate, int] = field(default_factory=dict)

    def value(self, candidate: Candidate, nll: float) -> float:
        if not is_per_param(self.name):
            return nll
        return (nll / self.tokens - self.base_nll / self.tokens) / self.params[candidate]


@dataclass
class StepScores:
    """One step's outcome. ``values`` are exact where ``exact`` says so, else lower bounds."""

    best: Candidate
    best_nll: float
    values: dict[Candidate, float]
    exact: dict[Candidate, bool]
    window_evals: int  # exact window NLLs computed (each a full LM head)
    bound_evals: int = 0  # window lower bounds computed (each |S|/V of a head)
    first: Candidate | None = None  # settled before the others (its score is the first incumbent)

    def ranking(self) -> list[Candidate]:
        return sorted(self.values, key=lambda c: (self.values[c], c))


# Called after each candidate of a step is decided: (candidate, best so far, its NLL sum).
Listener = Callable[[Candidate, "Candidate | None", float], None]
