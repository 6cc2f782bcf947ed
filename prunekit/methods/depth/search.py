"""The greedy depth search (BlockPruner, SLEB, layer-PPL), fast and exact.

Each step scores every remaining candidate (one block, or one layer's blocks) by the calibration
NLL of the current model with that candidate removed, and removes the argmin (ties: the lowest
(layer, kind)). ``score_step`` gets the identical argmin with much less work than
``score_step_naive`` (the oracle, one full forward per candidate and window):

1. prefix reuse: candidates are visited in position order, carrying one running state per
   window, so each candidate recomputes only the blocks after it;
2. branch and bound on the LM head: a cheap lower bound on each candidate's NLL (a log-sum-exp
   over the dense model's most likely 4k tokens, nll_bound.py) drops candidates that cannot beat
   the best exact score before their full head is computed (strictly greater: ties survive to
   the tie-break).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prunekit.errors import SettingsError
from prunekit.methods.depth.calibration import BlockRunner, Candidate
from prunekit.models.adapters import BlockRef
from prunekit.progress import progress

CRITERIA = ("ppl", "ppl-per-param")


def label(candidate: Candidate) -> str:
    """'12.attn' for a block; '12' for a whole layer."""
    if len(candidate) == 1:
        return str(candidate[0])
    layers = {b.layer for b in candidate}
    return str(next(iter(layers))) if len(layers) == 1 else "+".join(map(str, candidate))


@dataclass(frozen=True)
class Criterion:
    """Maps a candidate's NLL sum to its score; monotone in the sum, so partial sums bound it.

    ``ppl``: the NLL sum itself (ppl = exp(sum / tokens) orders the same way).
    ``ppl-per-param``: (log ppl after - log ppl now) / parameters removed.
    """

    name: str
    tokens: int
    base_nll: float = 0.0
    params: dict[Candidate, int] = field(default_factory=dict)

    def value(self, candidate: Candidate, nll: float) -> float:
        if self.name == "ppl":
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

    def ranking(self) -> list[Candidate]:
        return sorted(self.values, key=lambda c: (self.values[c], c))


# Last-layer hidden states kept at once while a group of candidates waits for its exact scores.
GROUP_BYTES = 1 << 30


def score_step(
    runner: BlockRunner,
    active: Sequence[BlockRef],
    candidates: Sequence[Candidate],
    criterion: Criterion,
    exhaustive: bool = False,
    group_bytes: int = GROUP_BYTES,
) -> StepScores:
    """The exact argmin over ``candidates``, by prefix reuse and branch and bound.

    Every candidate's suffix is run on every window (prefix reuse makes that about half a
    forward each). What is saved is the LM head, a quarter of a small model's forward: each
    candidate first gets a cheap lower bound on its NLL (nll_bound.py); candidates are then
    settled in order of that bound, and one whose bound already exceeds the best exact score
    cannot win and never gets its full head. A settled candidate's exact NLL is summed window by
    window, and it is dropped as soon as (exact so far + bounds of the rest) exceeds the best.
    Comparisons are strict, so ties survive to the tie-break. ``exhaustive`` scores everything.
    """
    n = runner.num_windows
    values: dict[Candidate, float] = {}
    exact: dict[Candidate, bool] = {}
    nlls: dict[Candidate, float] = {}
    heads = bounds = 0
    best = math.inf

    def settle(candidate: Candidate, finals: list, lower: list[float] | None) -> None:
        nonlocal heads, best
        remaining = sum(lower) if lower is not None else 0.0
        total = 0.0
        for w in range(n):
            if lower is not None:
                floor = criterion.value(candidate, total + remaining)
                if floor > best:
                    values[candidate], exact[candidate] = floor, False
                    return
                remaining -= lower[w]
            total += runner.window_nll(finals[w], w)
            heads += 1
        values[candidate], exact[candidate] = criterion.value(candidate, total), True
        nlls[candidate] = total
        best = min(best, values[candidate])

    def flush(group: list) -> None:
        group.sort(key=lambda item: (sum(item[2]) if item[2] is not None else 0.0, item[0]))
        for candidate, finals, lower in group:
            settle(candidate, finals, lower)
        group.clear()

    group: list = []
    group_size = None
    for candidate, finals in runner.suffix_finals(active, candidates):
        lower = None
        if not exhaustive:
            lower = [runner.window_bound(finals[w], w) for w in range(n)]
            bounds += n
        group.append((candidate, finals, lower))
        if group_size is None:
            per_candidate = sum(f.numel() * f.element_size() for f in finals)
            group_size = max(1, group_bytes // max(per_candidate, 1))
        if len(group) >= group_size:
            flush(group)
    flush(group)
    winner = min((c for c in candidates if exact[c]), key=lambda c: (values[c], c))
    return StepScores(winner, nlls[winner], values, exact, heads, bounds)


def score_step_naive(
    runner: BlockRunner,
    active: Sequence[BlockRef],
    candidates: Sequence[Candidate],
    criterion: Criterion,
) -> StepScores:
    """The reference: for every candidate and window, a full forward from a fresh embedding."""
    nll = dict.fromkeys(candidates, 0.0)
    for candidate in candidates:
        rest = [b for b in active if b not in candidate]
        for w in range(runner.num_windows):
            nll[candidate] += runner.window_nll(runner.run(runner.embed(w), rest), w)
    values = {c: criterion.value(c, nll[c]) for c in candidates}
    best = min(candidates, key=lambda c: (values[c], c))
    evals = len(candidates) * runner.num_windows
    return StepScores(best, nll[best], values, dict.fromkeys(candidates, True), evals)


@dataclass(frozen=True)
class Target:
    """Stop at ``blocks`` removals, or at the smallest count whose ratio_total >= ``ratio``."""

    ratio: float | None
    count: int | None
    total_params: int

    def reached(self, removed: int, removed_params: int) -> bool:
        if self.count is not None:
            return removed >= self.count
        return removed_params / self.total_params >= (self.ratio or 0.0)

    def check_feasible(self, unit_params: Sequence[int], unit_name: str) -> None:
        """Refuse targets the candidates cannot meet, before any work is done."""
        if self.count is not None and self.count > len(unit_params):
            raise SettingsError(
                f"--blocks {self.count} exceeds the {len(unit_params)} candidate {unit_name}s"
            )
        if self.ratio is not None:
            best = sum(unit_params) / self.total_params
            if best < self.ratio:
                raise SettingsError(
                    f"target ratio {self.ratio} cannot be met: removing every candidate "
                    f"{unit_name} gives ratio_total {best:.4f}"
                )

    def estimated_steps(self, unit_params: Sequence[int]) -> int:
        if self.count is not None:
            return self.count
        mean = sum(unit_params) / max(len(unit_params), 1)
        return max(1, math.ceil((self.ratio or 0.0) * self.total_params / mean))


ScoreFn = Callable[..., StepScores]


@dataclass
class SearchState:
    """What the search has done so far; resumable from its trajectory."""

    removed: list[Candidate] = field(default_factory=list)
    trajectory: list[dict] = field(default_factory=list)


def greedy_search(
    runner: BlockRunner,
    units: Sequence[Candidate],
    unit_params: dict[Candidate, int],
    target: Target,
    criterion_name: str,
    state: SearchState | None = None,
    exhaustive: bool = False,
    naive: bool = False,
    on_step: Callable[[SearchState], None] | None = None,
    desc: str | None = "depth search",
) -> SearchState:
    """Remove units greedily until ``target`` is reached; ``state`` continues an earlier run.

    After each step ``on_step`` gets the state (to checkpoint it). Each trajectory entry
    records the removed unit, the calibration ppl and ratio_total after it, and the work done.
    """
    if criterion_name not in CRITERIA:
        raise SettingsError(f"unknown criterion {criterion_name!r}; known: {', '.join(CRITERIA)}")
    state = state or SearchState()
    all_blocks = runner.blocks()
    removed_params = sum(unit_params[u] for u in state.removed)
    base_nll = state.trajectory[-1]["calib_nll"] if state.trajectory else None
    if base_nll is None and criterion_name == "ppl-per-param":
        base_nll = sum(runner.model_nll(all_blocks))
    steps = target.estimated_steps(list(unit_params.values()))
    bar = progress(iter(int, 1), desc=desc, total=steps, initial=len(state.removed), unit="step")
    for _ in bar:
        if target.reached(len(state.removed), removed_params):
            break
        gone = {b for u in state.removed for b in u}
        active = [b for b in all_blocks if b not in gone]
        candidates = [u for u in units if u not in state.removed]
        if not candidates:
            break
        criterion = Criterion(criterion_name, runner.tokens, base_nll or 0.0, dict(unit_params))
        started = time.perf_counter()
        if naive:
            scores = score_step_naive(runner, active, candidates, criterion)
        else:
            scores = score_step(runner, active, candidates, criterion, exhaustive)
        state.removed.append(scores.best)
        removed_params += unit_params[scores.best]
        base_nll = scores.best_nll
        state.trajectory.append(
            {
                "step": len(state.removed),
                "removed": label(scores.best),
                "blocks": [str(b) for b in scores.best],
                "calib_ppl": math.exp(scores.best_nll / runner.tokens),
                "calib_nll": scores.best_nll,
                "ratio_total": removed_params / target.total_params,
                "removed_params": removed_params,
                "score": scores.values[scores.best],
                "window_evals": scores.window_evals,
                "bound_evals": scores.bound_evals,
                "naive_window_evals": len(candidates) * runner.num_windows,
                "seconds": time.perf_counter() - started,
                "scores": [[label(c), scores.values[c], scores.exact[c]] for c in scores.ranking()],
            }
        )
        if on_step is not None:
            on_step(state)
    return state
