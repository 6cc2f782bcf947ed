"""The greedy depth search (BlockPruner, SLEB, layer-PPL): targets, steps, the trajectory.

Each step scores every remaining candidate (one block, or one layer's blocks) by the search loss
of the current model with that candidate removed (the calibration NLL or the KL from the dense
model, criteria.py), and removes the argmin (ties: the lowest (layer, kind)). ``step.score_step``
gets the identical argmin with much less work than ``step.score_step_naive`` (the oracle, one
full forward per candidate and window): prefix reuse in a layer-major pass, and branch and bound
on the LM head (step.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prunekit.errors import SettingsError
from prunekit.methods.depth.criteria import CRITERIA, is_per_param
from prunekit.methods.depth.runner import DepthRunner
from prunekit.methods.depth.scores import Candidate, Criterion, Listener, StepScores, label
from prunekit.methods.depth.step import score_step, score_step_naive
from prunekit.progress import Bar, progress_bar

log = logging.getLogger(__name__)


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


@dataclass
class SearchState:
    """What the search has done so far; resumable from its trajectory."""

    removed: list[Candidate] = field(default_factory=list)
    trajectory: list[dict] = field(default_factory=list)


def greedy_search(
    runner: DepthRunner,
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

    ``naive`` scores every step with the oracle (``step.score_step_naive``).

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
        base_nll = sum(runner.model_losses(all_blocks))
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
                if naive:
                    scores = score_step_naive(runner, active, candidates, criterion, listener)
                else:
                    previous = previous_ranking(state, units)
                    scores = score_step(
                        runner, active, candidates, criterion, exhaustive, previous, listener
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
    runner: DepthRunner,
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
