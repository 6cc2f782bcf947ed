"""One greedy step of the depth search: the exact argmin over the candidates, by branch and bound.

The runner (runner.py) gives every candidate's last-layer states on a chunk of windows in one
layer-major pass (prefix reuse: a candidate pays only for the blocks after it). What is saved is
the LM head, a quarter of a small model's forward: each candidate first gets a cheap lower bound
on its loss per window (nll_bound.py, criteria.py); candidates are settled in order of that
bound, and one whose bound already exceeds the best exact score cannot win and never gets its
full head. A settled candidate's exact loss is summed window by window, and it is dropped as soon
as (exact so far + bounds of the rest) exceeds the best. Comparisons are strict, so ties survive
to the tie-break (the lowest candidate).

When every window fits one chunk (the states of every candidate at once), one pass does it all.
Otherwise the finals of a chunk vanish when the chunk ends, so two passes:

1. a bound pass: every candidate's bound on every window and the exact loss of one *guess* (the
   last step's best still in play; at the first step, the lowest bound on the first chunk),
   whose score becomes the incumbent;
2. an exact pass over the candidates whose total bound does not exceed the incumbent (ties
   survive), in order of their bound, each dropped as soon as (exact so far + bounds of the rest)
   exceeds the best; dropped candidates also leave the branches of the later chunks.

The argmin and its score are the naive search's (``score_step_naive``: every candidate, every
window, a full forward); the bound values recorded for candidates that never got an exact score,
and the work counters, depend on the chunking.

Many processes (``engine/world.py``): each rank runs its windows of each chunk (``mine``); the
per-window bounds and exact losses are gathered, and every rank replays the decisions above on
the gathered values in window order, so all ranks agree and the arithmetic is the one-process
arithmetic (a chunking like any other: the same argmin and, summed in window order, the same
loss, bit for bit). Candidates are scored one at a time within a chunk (one gather each), so the
next sees the incumbent as it is now. A rank stops a candidate's exact losses early only when its
own floor (the totals so far, its exact losses in the chunk, the bounds of every window not yet
counted) exceeds the incumbent by more than any rounding of that sum (``STOP_SLACK``); the replay
then drops the candidate at the first window whose value is missing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from prunekit.methods.depth.runner import DepthRunner, WindowScorer
from prunekit.methods.depth.scores import Candidate, Criterion, Listener, StepScores, label
from prunekit.models.adapters import BlockRef

log = logging.getLogger(__name__)

# A rank's early stop needs its floor above the incumbent by this fraction of the floor's terms:
# the floor is summed in another order than the replay's sum (a relative rounding of about
# n * 1e-16 for n terms), so a candidate that could still tie the incumbent is never stopped.
STOP_SLACK = 1e-9


def score_step(
    runner: DepthRunner,
    active: Sequence[BlockRef],
    candidates: Sequence[Candidate],
    criterion: Criterion,
    exhaustive: bool = False,
    previous: Sequence[Candidate] = (),
    listener: Listener | None = None,
) -> StepScores:
    """The exact argmin over ``candidates`` (module docstring); ``exhaustive`` scores everything
    exactly; ``previous`` is the last step's ranking (its best still in play is the guess)."""
    runner.prepare()  # on every rank, before a rank without windows in a chunk skips it
    step = _Step(runner, active, criterion, listener)
    # One global chunk of every window (each rank holds its share of it): the single pass.
    fits_one_chunk = runner.chunk_windows(len(candidates)) * runner.world.size
    if exhaustive:
        step.exact_pass(list(candidates))
    elif fits_one_chunk >= runner.num_windows:
        step.single_pass(list(candidates))
    else:
        guess = next((c for c in previous if c in candidates), None)
        step.bound_pass(list(candidates), guess)
        survivors = [c for c in candidates if c not in step.values]
        survivors.sort(key=lambda c: (sum(step.lower[c]), c))
        if survivors:
            step.exact_pass(survivors)
    return step.scores(candidates)


def score_step_naive(
    runner: DepthRunner,
    active: Sequence[BlockRef],
    candidates: Sequence[Candidate],
    criterion: Criterion,
    listener: Listener | None = None,
) -> StepScores:
    """The reference: for every candidate, the model without it run from the embeddings."""
    loss = dict.fromkeys(candidates, 0.0)
    best: Candidate | None = None
    for candidate in candidates:
        for value in runner.model_losses([b for b in active if b not in candidate]):
            loss[candidate] += value
        value = criterion.value(candidate, loss[candidate])
        if best is None or (value, candidate) < (criterion.value(best, loss[best]), best):
            best = candidate
        if listener is not None:
            listener(candidate, best, loss[best])
    values = {c: criterion.value(c, loss[c]) for c in candidates}
    best = min(candidates, key=lambda c: (values[c], c))
    evals = len(candidates) * runner.num_windows
    return StepScores(best, loss[best], values, dict.fromkeys(candidates, True), evals)


class _Step:
    """The bookkeeping of one step: bounds, exact losses, the incumbent (the same on every
    rank: each decision is taken on gathered values)."""

    def __init__(
        self,
        runner: DepthRunner,
        active: Sequence[BlockRef],
        criterion: Criterion,
        listener: Listener | None,
    ) -> None:
        self.runner = runner
        self.world = runner.world
        self.active = list(active)
        self.criterion = criterion
        self.listener = listener
        self.lower: dict[Candidate, list[float]] = {}
        self.values: dict[Candidate, float] = {}  # decided candidates only
        self.exact: dict[Candidate, bool] = {}
        self.losses: dict[Candidate, float] = {}
        self.best = math.inf
        self.best_candidate: Candidate | None = None
        self.heads = self.bounds = 0
        self.first: Candidate | None = None

    # ---- this rank's share of a chunk ----------------------------------------------------------
    def run(self, candidates: list[Candidate], chunk: Sequence[int]) -> tuple[list[int], dict]:
        """This rank's windows of ``chunk`` and every candidate's finals on them."""
        mine = self.runner.mine(chunk)
        return mine, self.runner.run_candidates(self.active, candidates, mine)

    @contextmanager
    def scorer(self, mine: Sequence[int]) -> Iterator[WindowScorer | None]:
        """The runner's scorer, or None on a rank without windows here (no head onloaded)."""
        if not mine:
            yield None
            return
        with self.runner.scorer() as score:
            yield score

    def gather_bounds(
        self,
        score: WindowScorer | None,
        finals: dict,
        candidates: list[Candidate],
        mine: Sequence[int],
    ) -> None:
        """Every candidate's bound on every window of the chunk, into ``lower`` (every rank)."""
        local = {w: [score.bound(finals[c][i], w) for c in candidates] for i, w in enumerate(mine)}
        for w, row in self.world.gather(local).items():
            for c, bound in zip(candidates, row, strict=True):
                self.lower[c][w] = bound

    # ---- the passes ------------------------------------------------------------------------------
    def bound_pass(self, candidates: list[Candidate], guess: Candidate | None) -> None:
        """Bounds of every candidate on every window, the guess's exact loss; then every
        candidate whose total bound exceeds the guess's score is decided (dropped)."""
        runner = self.runner
        self.lower = {c: [0.0] * runner.num_windows for c in candidates}
        exact: dict[int, float] = {}
        for chunk in runner.chunks(len(candidates)):
            mine, finals = self.run(candidates, chunk)
            with self.scorer(mine) as score:
                self.gather_bounds(score, finals, candidates, mine)
                self.bounds += len(candidates) * len(chunk)
                if guess is None:  # the lowest bound on the first chunk
                    guess = min(candidates, key=lambda c: (sum(self.lower[c][w] for w in chunk), c))
                local = {w: score.exact(finals[guess][i], w) for i, w in enumerate(mine)}
                exact.update(self.world.gather(local))
                self.heads += len(chunk)
            del finals
        self.first = guess
        total = 0.0
        for w in range(runner.num_windows):  # window order, as every other sum
            total += exact[w]
        self.settle(guess, total)
        for c in candidates:
            if c != guess:
                floor = self.criterion.value(c, sum(self.lower[c]))
                if floor > self.best:
                    self.drop(c, floor)

    def single_pass(self, candidates: list[Candidate]) -> None:
        """Every window in one chunk: bounds, then candidates settled in order of their bound."""
        runner = self.runner
        windows = list(range(runner.num_windows))
        mine, finals = self.run(candidates, windows)
        runner.largest_chunk = max(runner.largest_chunk, len(mine))
        self.lower = {c: [0.0] * runner.num_windows for c in candidates}
        with self.scorer(mine) as score:
            self.gather_bounds(score, finals, candidates, mine)
            self.bounds += len(candidates) * len(windows)
            live = sorted(candidates, key=lambda c: (sum(self.lower[c]), c))
            total = dict.fromkeys(live, 0.0)
            remaining = {c: sum(self.lower[c]) for c in live}
            self.exact_chunk(score, finals, windows, mine, live, total, remaining, last=True)

    def exact_pass(self, candidates: list[Candidate]) -> None:
        """Exact losses of ``candidates`` (settled in this order within a chunk); with bounds, a
        candidate is dropped once (exact so far + bounds of the rest) exceeds the best."""
        runner = self.runner
        total = dict.fromkeys(candidates, 0.0)
        remaining = {c: sum(self.lower[c]) if self.lower else 0.0 for c in candidates}
        live = list(candidates)
        done_windows = 0
        for chunk in runner.chunks(len(live)):
            mine, finals = self.run(live, chunk)
            done_windows += len(chunk)
            with self.scorer(mine) as score:
                last = done_windows == runner.num_windows
                self.exact_chunk(score, finals, chunk, mine, live, total, remaining, last)
            del finals
            if not live:
                break

    def exact_chunk(
        self,
        score: WindowScorer | None,
        finals: dict,
        chunk: Sequence[int],
        mine: Sequence[int],
        live: list[Candidate],
        total: dict[Candidate, float],
        remaining: dict[Candidate, float],
        last: bool,
    ) -> None:
        """The exact losses of the live candidates on one chunk, in their order; a candidate
        whose floor exceeds the best leaves ``live``; on the ``last`` chunk the others settle.

        Each candidate's losses on this rank's windows are gathered, then the decision is
        replayed on every rank over the chunk's windows in order (module docstring)."""
        for c in list(live):
            local = self.local_exact(score, finals[c], c, mine, total[c], remaining[c])
            gathered = self.world.gather(local)
            exact = {w: v for w, v in gathered.items() if isinstance(w, int)}
            stops = [v for key, v in gathered.items() if not isinstance(key, int)]
            self.heads += len(exact)
            for w in chunk:
                if self.lower:
                    floor = self.criterion.value(c, total[c] + remaining[c])
                    if floor > self.best:
                        self.drop(c, floor)
                        live.remove(c)
                        break
                if w not in exact:  # a rank stopped early: its floor proved c cannot win
                    self.drop(c, self.criterion.value(c, max(stops)))
                    live.remove(c)
                    break
                if self.lower:
                    remaining[c] -= self.lower[c][w]
                total[c] += exact[w]
            else:
                if last:
                    self.settle(c, total[c])

    def local_exact(
        self,
        score: WindowScorer | None,
        finals: list,
        candidate: Candidate,
        mine: Sequence[int],
        total: float,
        remaining: float,
    ) -> dict:
        """``candidate``'s exact losses on this rank's windows (``mine``), in window order, until
        its floor proves it cannot win; then the floor under the key ("stop", rank).

        The floor: the totals so far plus this rank's exact losses plus the bounds of every
        window not counted (the other ranks' windows of the chunk among them). In one process
        it is the replay's own arithmetic, so the work is what it always was; across ranks it
        must clear the incumbent by ``STOP_SLACK`` (module docstring)."""
        values: dict = {}
        for final, w in zip(finals, mine, strict=True):
            if self.lower:
                floor = total + remaining
                slack = STOP_SLACK * (abs(total) + abs(remaining)) if self.world.distributed else 0
                if self.criterion.value(candidate, floor - slack) > self.best:
                    values[("stop", self.world.rank)] = floor
                    break
                remaining -= self.lower[candidate][w]
            values[w] = score.exact(final, w)
            total += values[w]
        return values

    # ---- decisions -------------------------------------------------------------------------------
    def settle(self, candidate: Candidate, total: float) -> None:
        value = self.criterion.value(candidate, total)
        self.values[candidate], self.exact[candidate] = value, True
        self.losses[candidate] = total
        if (value, candidate) < (self.best, self.best_candidate or candidate):
            self.best, self.best_candidate = value, candidate
        self.notify(candidate)

    def drop(self, candidate: Candidate, floor: float) -> None:
        self.values[candidate], self.exact[candidate] = floor, False
        self.notify(candidate)

    def notify(self, candidate: Candidate) -> None:
        if self.listener is not None:
            best = self.best_candidate
            self.listener(candidate, best, self.losses.get(best, 0.0) if best else 0.0)

    def scores(self, candidates: Sequence[Candidate]) -> StepScores:
        exact, values = self.exact, self.values
        winner = min((c for c in candidates if exact[c]), key=lambda c: (values[c], c))
        log.debug("step: %s wins, %d weight passes so far", label(winner), self.runner.passes)
        return StepScores(
            winner, self.losses[winner], values, exact, self.heads, self.bounds, self.first
        )
