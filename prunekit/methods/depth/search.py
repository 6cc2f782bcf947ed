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

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prunekit.errors import SettingsError
from prunekit.methods.depth.calibration import BlockRunner, Candidate
from prunekit.methods.depth.criteria import CRITERIA, is_per_param
from prunekit.models.adapters import BlockRef
from prunekit.progress import Bar, progress_bar

log = logging.getLogger(__name__)


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


# Last-layer hidden states kept at once while a group of candidates waits for its exact scores.
GROUP_BYTES = 1 << 30
# "ranked": when a group cannot hold every candidate, settle the likely winner first, so the
# bound has a good incumbent from the start; "position": candidates in position order (the old
# behaviour, kept to measure what the ranking saves).
ORDERS = ("ranked", "position")

# Called after each candidate of a step is decided: (candidate, best so far, its NLL sum).
Listener = Callable[[Candidate, "Candidate | None", float], None]


def likely_winner(
    runner: BlockRunner,
    active: Sequence[BlockRef],
    candidates: Sequence[Candidate],
    previous: Sequence[Candidate],
) -> tuple[Candidate, int]:
    """The best candidate of the previous step's ranking still in play; at the first step, the
    one with the lowest bound on the first window (1/n of the step's suffix work, no full head).
    Also returns the number of window bounds computed to find it."""
    for candidate in previous:
        if candidate in candidates:
            return candidate, 0
    first_window = runner.suffix_finals(active, candidates, windows=[0])
    bounds = {c: runner.window_bound(finals[0], 0) for c, finals in first_window}
    return min(candidates, key=lambda c: (bounds[c], c)), len(bounds)


class _StepSearch:
    """The branch and bound of one step (see :func:`score_step`)."""

    def __init__(
        self, runner: BlockRunner, criterion: Criterion, listener: Listener | None
    ) -> None:
        self.runner = runner
        self.criterion = criterion
        self.listener = listener
        self.values: dict[Candidate, float] = {}
        self.exact: dict[Candidate, bool] = {}
        self.nlls: dict[Candidate, float] = {}
        self.heads = self.bounds = 0
        self.best = math.inf
        self.best_candidate: Candidate | None = None

    def lower_bounds(self, finals: list) -> list[float]:
        self.bounds += len(finals)
        return [self.runner.window_bound(final, w) for w, final in enumerate(finals)]

    def settle(self, candidate: Candidate, finals: list, lower: list[float] | None) -> None:
        """Exact NLL window by window, unless (exact so far + bounds of the rest) > best."""
        self._decide(candidate, finals, lower)
        if self.listener is not None:
            self.listener(candidate, self.best_candidate, self.nlls.get(self.best_candidate, 0.0))

    def _decide(self, candidate: Candidate, finals: list, lower: list[float] | None) -> None:
        remaining = sum(lower) if lower is not None else 0.0
        total = 0.0
        for w, final in enumerate(finals):
            if lower is not None:
                floor = self.criterion.value(candidate, total + remaining)
                if floor > self.best:
                    self.values[candidate], self.exact[candidate] = floor, False
                    return
                remaining -= lower[w]
            total += self.runner.window_nll(final, w)
            self.heads += 1
        value = self.criterion.value(candidate, total)
        self.values[candidate], self.exact[candidate] = value, True
        self.nlls[candidate] = total
        if (value, candidate) < (self.best, self.best_candidate or candidate):
            self.best, self.best_candidate = value, candidate

    def flush(self, group: list) -> None:
        """Settle a group in order of its bound: a likely winner first lowers the incumbent."""
        group.sort(key=lambda item: (sum(item[2]) if item[2] is not None else 0.0, item[0]))
        for candidate, finals, lower in group:
            self.settle(candidate, finals, lower)
        group.clear()


def score_step(
    runner: BlockRunner,
    active: Sequence[BlockRef],
    candidates: Sequence[Candidate],
    criterion: Criterion,
    exhaustive: bool = False,
    group_bytes: int = GROUP_BYTES,
    previous: Sequence[Candidate] = (),
    order: str = "ranked",
    listener: Listener | None = None,
) -> StepScores:
    """The exact argmin over ``candidates``, by prefix reuse and branch and bound.

    Every candidate's suffix is run on every window (prefix reuse makes that about half a
    forward each). What is saved is the LM head, a quarter of a small model's forward: each
    candidate first gets a cheap lower bound on its NLL (nll_bound.py); candidates are then
    settled in order of that bound, and one whose bound already exceeds the best exact score
    cannot win and never gets its full head. A settled candidate's exact NLL is summed window by
    window, and it is dropped as soon as (exact so far + bounds of the rest) exceeds the best.
    Comparisons are strict, so ties survive to the tie-break. ``exhaustive`` scores everything.

    Candidates wait for their exact scores in groups of ``group_bytes`` of hidden states. When a
    group cannot hold them all (big models: one candidate's states can exceed 1 GiB), the order
    of arrival sets the incumbent, so with ``order="ranked"`` the likely winner (``previous``,
    the last step's ranking; see :func:`likely_winner`) is settled before all others. The order
    changes only the work done: the argmin, its score and the tie-break are the naive search's.
    """
    if order not in ORDERS:
        raise SettingsError(f"unknown search order {order!r}; known: {', '.join(ORDERS)}")
    search = _StepSearch(runner, criterion, listener)
    group_size = max(1, group_bytes // max(runner.state_bytes, 1))
    first = None
    if order == "ranked" and not exhaustive and group_size < len(candidates):
        first, search.bounds = likely_winner(runner, active, candidates, previous)
        log.debug("settling %s first (groups of %d candidates)", label(first), group_size)
    group: list = []
    for candidate, finals in runner.suffix_finals(active, candidates, first=first):
        group.append((candidate, finals, None if exhaustive else search.lower_bounds(finals)))
        if len(group) >= group_size or candidate == first:
            search.flush(group)
    search.flush(group)
    exact, values = search.exact, search.values
    winner = min((c for c in candidates if exact[c]), key=lambda c: (values[c], c))
    heads, bounds = search.heads, search.bounds
    return StepScores(winner, search.nlls[winner], values, exact, heads, bounds, first)


def score_step_naive(
    runner: BlockRunner,
    active: Sequence[BlockRef],
    candidates: Sequence[Candidate],
    criterion: Criterion,
    listener: Listener | None = None,
) -> StepScores:
    """The reference: for every candidate and window, a full forward from a fresh embedding."""
    nll = dict.fromkeys(candidates, 0.0)
    best: Candidate | None = None
    for candidate in candidates:
        rest = [b for b in active if b not in candidate]
        for w in range(runner.num_windows):
            nll[candidate] += runner.window_nll(runner.run(runner.embed(w), rest), w)
        value = criterion.value(candidate, nll[candidate])
        if best is None or (value, candidate) < (criterion.value(best, nll[best]), best):
            best = candidate
        if listener is not None:
            listener(candidate, best, nll[best])
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
    # Count removed blocks, not removed units: BlockPruner's --blocks K with whole layers among
    # the candidates (a layer is two blocks). Layer methods (SLEB) count layers.
    counts_blocks: bool = False

    def removed_count(self, removed: Sequence[Candidate]) -> int:
        return sum(len(u) for u in removed) if self.counts_blocks else len(removed)

    def reached(self, removed: int, removed_params: int) -> bool:
        if self.count is not None:
            return removed >= self.count
        return removed_params / self.total_params >= (self.ratio or 0.0)

    def fits(self, candidate: Candidate, removed: int) -> bool:
        """Whether removing ``candidate`` keeps a block count within --blocks K."""
        if self.count is None or not self.counts_blocks:
            return True
        return removed + len(candidate) <= self.count

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
# (active, candidates, criterion, exhaustive, previous ranking, listener) -> the step's scores.
StepScorer = Callable[
    [
        Sequence[BlockRef],
        Sequence[Candidate],
        Criterion,
        bool,
        Sequence[Candidate],
        Listener | None,
    ],
    StepScores,
]


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
    group_bytes: int = GROUP_BYTES,
    order: str = "ranked",
    scorer: StepScorer | None = None,
) -> SearchState:
    """Remove units greedily until ``target`` is reached; ``state`` continues an earlier run.

    ``scorer`` replaces :func:`score_step` (the streamed search's layer-major step,
    methods/depth/layer_major.py); it must return the same argmin.

    After each step ``on_step`` gets the state (to checkpoint it). Each trajectory entry
    records the removed unit, the calibration ppl and ratio_total after it, and the work done.
    With ``desc``, progress bars show the steps (kept) and each step's candidates with the
    best so far (cleared when the step ends); each step is also logged at INFO.
    """
    if criterion_name not in CRITERIA:
        raise SettingsError(f"unknown criterion {criterion_name!r}; known: {', '.join(CRITERIA)}")
    state = state or SearchState()
    all_blocks = runner.blocks()
    removed_params = sum(unit_params[u] for u in state.removed)
    base_nll = search_loss(state.trajectory[-1]) if state.trajectory else None
    if base_nll is None and is_per_param(criterion_name):
        base_nll = sum(runner.model_nll(all_blocks))
    steps = target.estimated_steps(list(unit_params.values()))
    log.info(
        "%s: %d candidates, %d calibration windows (%d tokens), about %d steps%s",
        desc or "depth search",
        len(units),
        runner.num_windows,
        runner.tokens,
        steps,
        f", resuming after {len(state.removed)}" if state.removed else "",
    )
    bar = progress_bar(desc, total=steps, initial=len(state.removed), unit="step", leave=True)
    try:
        while not target.reached(target.removed_count(state.removed), removed_params):
            gone = {b for u in state.removed for b in u}
            active = [b for b in all_blocks if b not in gone]
            # Units may overlap (a layer and its blocks): one sharing a removed block is gone;
            # with --blocks K, a layer no longer fits when one block is left to remove.
            removed = target.removed_count(state.removed)
            candidates = [u for u in units if gone.isdisjoint(u) and target.fits(u, removed)]
            if not candidates:
                break
            criterion = Criterion(criterion_name, runner.tokens, base_nll or 0.0, dict(unit_params))
            step = len(state.removed) + 1
            started = time.perf_counter()
            step_bar = progress_bar(
                None if desc is None else f"step {step}", total=len(candidates), unit="cand"
            )
            listener = candidate_listener(step_bar, runner.tokens)
            try:
                if scorer is not None:
                    previous = previous_ranking(state, units)
                    scores = scorer(active, candidates, criterion, exhaustive, previous, listener)
                elif naive:
                    scores = score_step_naive(runner, active, candidates, criterion, listener)
                else:
                    previous = previous_ranking(state, units)
                    scores = score_step(
                        runner,
                        active,
                        candidates,
                        criterion,
                        exhaustive,
                        group_bytes,
                        previous,
                        order,
                        listener,
                    )
            finally:
                step_bar.close()
            state.removed.append(scores.best)
            removed_params += unit_params[scores.best]
            base_nll = scores.best_nll
            entry = step_entry(runner, scores, step, candidates, removed_params, target, started)
            gone.update(scores.best)
            reported = runner.reported_nll([b for b in active if b not in gone], base_nll)
            entry.update(calib_nll=reported, calib_ppl=math.exp(reported / runner.tokens))
            state.trajectory.append(entry)
            log_step(entry)
            bar.update(1)
            bar.set_postfix_str(f"removed {entry['removed']}, calib ppl {entry['calib_ppl']:.4g}")
            if on_step is not None:
                on_step(state)
    finally:
        bar.close()
    return state


def search_loss(entry: dict) -> float:
    """The loss sum the search minimized after a step (older trajectories: the NLL)."""
    return entry.get("search_loss", entry["calib_nll"])


def previous_ranking(state: SearchState, units: Sequence[Candidate]) -> list[Candidate]:
    """The last step's candidates, best first (from the trajectory, so a resumed run has it)."""
    if not state.trajectory:
        return []
    by_label = {label(u): u for u in units}
    return [
        by_label[row[0]] for row in state.trajectory[-1].get("scores", []) if row[0] in by_label
    ]


def candidate_listener(bar: Bar, tokens: int) -> Listener:
    """Ticks ``bar`` once per decided candidate and shows the best so far as a calib ppl."""

    def on_candidate(candidate: Candidate, best: Candidate | None, best_nll: float) -> None:
        bar.update(1)
        if best is not None:
            bar.set_postfix_str(f"best {label(best)} ppl {math.exp(best_nll / tokens):.4g}")

    return on_candidate


def step_entry(
    runner: BlockRunner,
    scores: StepScores,
    step: int,
    candidates: Sequence[Candidate],
    removed_params: int,
    target: Target,
    started: float,
) -> dict:
    """What the trajectory records about one step."""
    return {
        "step": step,
        "removed": label(scores.best),
        "blocks": [str(b) for b in scores.best],
        "calib_ppl": math.exp(scores.best_nll / runner.tokens),
        "calib_nll": scores.best_nll,
        "search_loss": scores.best_nll,
        "ratio_total": removed_params / target.total_params,
        "removed_params": removed_params,
        "score": scores.values[scores.best],
        "window_evals": scores.window_evals,
        "bound_evals": scores.bound_evals,
        "naive_window_evals": len(candidates) * runner.num_windows,
        "settled_first": None if scores.first is None else label(scores.first),
        "seconds": time.perf_counter() - started,
        "scores": [[label(c), scores.values[c], scores.exact[c]] for c in scores.ranking()],
    }


def log_step(entry: dict) -> None:
    skipped = 1 - entry["window_evals"] / max(entry["naive_window_evals"], 1)
    log.info(
        "step %d: removed %s, calib ppl %.4f, ratio_total %.4f; %d of %d full LM heads "
        "(%.0f%% skipped by the bound), %.1f s",
        entry["step"],
        entry["removed"],
        entry["calib_ppl"],
        entry["ratio_total"],
        entry["window_evals"],
        entry["naive_window_evals"],
        100 * skipped,
        entry["seconds"],
    )
