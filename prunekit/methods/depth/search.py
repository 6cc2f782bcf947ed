"""The greedy depth search (BlockPruner, SLEB, layer-PPL), fast and exact.

Each step scores every remaining candidate (one block, or one layer's blocks) by the calibration
NLL of the current model with that candidate removed, and removes the argmin (ties: the lowest
(layer, kind)). ``score_step`` gets the identical argmin with much less work than
``score_step_naive`` (the oracle, one full forward per candidate and window):

1. prefix reuse: candidates are visited in position order per window, carrying one running
   state, so each candidate recomputes only the blocks after it;
2. branch and bound over windows: NLL sums only grow window by window, so a candidate whose
   partial score already exceeds a finished candidate's full score cannot win and is dropped
   (strictly greater: ties survive to the tie-break).
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
    window_evals: int

    def ranking(self) -> list[Candidate]:
        return sorted(self.values, key=lambda c: (self.values[c], c))


def score_step(
    runner: BlockRunner,
    active: Sequence[BlockRef],
    candidates: Sequence[Candidate],
    criterion: Criterion,
    ranking: Sequence[Candidate] = (),
    exhaustive: bool = False,
) -> StepScores:
    """The exact argmin over ``candidates``, by prefix reuse and branch and bound over windows.

    ``ranking`` (the previous step's order) picks the candidate scored first on all windows,
    whose total is the first bound; without it the best on window 0 is used. ``exhaustive``
    scores every candidate on every window (no bound).
    """
    n = runner.num_windows
    nll = dict.fromkeys(candidates, 0.0)
    done = dict.fromkeys(candidates, 0)
    evals = 0
    bound = math.inf

    def record(candidate: Candidate, value: float) -> None:
        nonlocal evals, bound
        nll[candidate] += value
        done[candidate] += 1
        evals += 1
        if done[candidate] == n:
            bound = min(bound, criterion.value(candidate, nll[candidate]))

    def alive(candidate: Candidate) -> bool:
        return exhaustive or criterion.value(candidate, nll[candidate]) <= bound

    if exhaustive:
        for w in range(n):
            runner.window_pass(active, candidates, w, alive, record)
    else:
        seed = next((c for c in ranking if c in nll), None)
        if seed is None:
            runner.window_pass(active, candidates, 0, alive, record)
            seed = min(candidates, key=lambda c: (criterion.value(c, nll[c]), c))
        for w in range(done[seed], n):
            runner.window_pass(active, [seed], w, alive, record)
        for w in range(n):
            todo = [c for c in candidates if done[c] == w]
            runner.window_pass(active, todo, w, alive, record)
    values = {c: criterion.value(c, nll[c]) for c in candidates}
    exact = {c: done[c] == n for c in candidates}
    best = min((c for c in candidates if exact[c]), key=lambda c: (values[c], c))
    return StepScores(best, nll[best], values, exact, evals)


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
    ranking: list[Candidate] = []
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
            scores = score_step(runner, active, candidates, criterion, ranking, exhaustive)
        ranking = scores.ranking()
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
                "naive_window_evals": len(candidates) * runner.num_windows,
                "seconds": time.perf_counter() - started,
                "scores": [[label(c), scores.values[c], scores.exact[c]] for c in scores.ranking()],
            }
        )
        if on_step is not None:
            on_step(state)
    return state
