"""The depth methods on a streamed model: the same decisions, the weights read layer by layer.

``StreamedDepthRunner`` stands in for ``BlockRunner`` (calibration.py) when the model is a lazily
loaded skeleton (``loaded.residency`` streamed): the greedy search (search.py) and the one-shot
scores (oneshot.py) get their numbers from layer-major passes (``engine/layer_major.py``): for
each chunk of windows every layer is onloaded once and applied to every live branch, then the
head scores them. The numbers are bit-identical to the in-memory runner's (same ops, batch 1,
the same summation order), so the argmins, ties and removal order are the same.

One greedy step (``score_step``) with the bound: when every window fits one chunk, one pass
and then the in-memory search's branch and bound over the finals. Otherwise two passes:

1. a bound pass: every candidate's lower bound on every window (nll_bound.py) and the exact NLL
   of one *guess* (the last step's best still in play; at the first step, the lowest bound on
   the first chunk), whose score becomes the incumbent;
2. an exact pass over the candidates whose total bound does not exceed the incumbent (ties
   survive), in order of their bound, each dropped as soon as (exact so far + bounds of the rest)
   exceeds the best; dropped candidates also leave the branches of the later chunks.

The in-memory search settles candidates one by one, so the incumbent exists before any bound is
compared; here the finals of a chunk vanish when the chunk ends, hence the two passes. The
argmin and its score are the in-memory search's; the bound values recorded for candidates that
never got an exact score, and the work counters, may differ.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Sequence

import torch

from prunekit.engine.layer_major import LayerMajorRunner
from prunekit.errors import SettingsError
from prunekit.methods.depth.calibration import Candidate
from prunekit.methods.depth.nll_bound import (
    Fp32Head,
    VocabSubsetBound,
    add_predicted_mass,
    subset_size,
)
from prunekit.methods.depth.search import Criterion, Listener, StepScores, label
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import LoadedModel

log = logging.getLogger(__name__)

# The criteria whose score is a function of the candidate's summed calibration NLL: what the
# streamed step computes. Any other criterion is refused streamed.
STREAMED_CRITERIA = ("ppl", "ppl-per-param")

TokenScore = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def streamed_identity(loaded: LoadedModel) -> dict:
    """``loaded.identity()``, its weight fingerprint read from the shards in row slices (never a
    whole part resident; the same fingerprint as the model in memory)."""
    return loaded.residency.identity(loaded)


def check_streamable(criterion: str, naive: bool) -> None:
    if criterion not in STREAMED_CRITERIA:
        raise SettingsError(
            f"--criterion {criterion} cannot run streamed (streamed: "
            f"{', '.join(STREAMED_CRITERIA)}); run it in memory"
        )
    if naive:
        raise SettingsError("the naive search oracle runs in memory only")


class StreamedDepthRunner(LayerMajorRunner):
    """``BlockRunner``'s role for a streamed model: NLLs, bounds and one-shot statistics from
    layer-major passes."""

    def __init__(
        self, loaded: LoadedModel, windows: torch.Tensor, max_memory: int | None = None
    ) -> None:
        super().__init__(loaded, windows, max_memory)
        self._rows: torch.Tensor | None = None  # the bound's head rows (from the dense model)
        self.largest_chunk = 0

    def chunks(self, branches: int, windows: Sequence[int] | None = None):
        for chunk in super().chunks(branches, windows):
            self.largest_chunk = max(self.largest_chunk, len(chunk))
            yield chunk

    def streaming_summary(self) -> dict:
        """What the plan records about the streamed search."""
        return {
            "max_memory": self.max_memory,
            "largest_chunk_windows": self.largest_chunk,
            "weight_passes": self.passes,
        }

    # ---- NLL of whole models -------------------------------------------------------------------
    def reported_nll(self, active: Sequence[BlockRef], loss: float) -> float:
        """The calibration NLL of the model running ``active``: the search loss itself (only the
        NLL criteria stream, see ``check_streamable``)."""
        return loss

    def model_nll(self, active: Sequence[BlockRef]) -> list[float]:
        """Per-window NLL of the model that runs only ``active`` (BlockRunner.model_nll)."""
        nll: list[float] = []
        for chunk in self.chunks(0):
            finals = self.run_chunk(active, {}, chunk, keep_trunk=True)[None]
            with self.head():
                head = Fp32Head(self.model, self.adapter)
                nll += [self.window_nll(head, f, w) for f, w in zip(finals, chunk, strict=True)]
                del head
        return nll

    def window_nll(self, head: Fp32Head, hidden: torch.Tensor, window: int) -> float:
        return head.nll(self.final_hidden(hidden), self.window_ids(window), self.skip_first)

    @torch.inference_mode()
    def bound_rows(self) -> torch.Tensor:
        """The head rows of the bound: the dense model's most likely tokens (one dense pass,
        built once as BlockRunner builds its bound)."""
        if self._rows is None:
            dense = self.blocks()
            mass = None
            for chunk in self.chunks(0):
                finals = self.run_chunk(dense, {}, chunk, keep_trunk=True)[None]
                with self.head():
                    head = Fp32Head(self.model, self.adapter)
                    if mass is None:
                        mass = torch.zeros(head.vocab_size, dtype=torch.float64, device=self.device)
                    for final in finals:
                        add_predicted_mass(mass, head, self.final_hidden(final), self.skip_first)
                    size = subset_size(head.vocab_size)
                    del head
            self._rows = torch.topk(mass, size).indices.sort().values
        return self._rows

    # ---- one-shot statistics -------------------------------------------------------------------
    @torch.inference_mode()
    def unit_scores(
        self, units: list[Candidate], token_score: TokenScore
    ) -> dict[Candidate, float]:
        """oneshot.unit_scores in one layer-major pass: the same per-unit sums, in window order."""
        first = {u[0]: u for u in units}
        last = {u[-1]: u for u in units}
        sums = dict.fromkeys(units, 0.0)
        inputs: dict[Candidate, list[torch.Tensor]] = {}

        def on_block(block: BlockRef, before: list, after: list) -> None:
            if block in first:
                inputs[first[block]] = before
            if block in last:
                unit = last[block]
                for x, y in zip(inputs.pop(unit), after, strict=True):
                    sums[unit] += float(token_score(x[0].float(), y[0].float()).sum().item())

        for chunk in self.chunks(0):
            self.run_chunk(self.blocks(), {}, chunk, on_block=on_block)
        count = self.num_windows * self.windows.shape[1]
        return {u: s / count for u, s in sums.items()}

    # ---- one greedy step -----------------------------------------------------------------------
    def score_step(
        self,
        active: Sequence[BlockRef],
        candidates: Sequence[Candidate],
        criterion: Criterion,
        exhaustive: bool = False,
        previous: Sequence[Candidate] = (),
        listener: Listener | None = None,
    ) -> StepScores:
        """search.score_step's argmin, computed layer-major (see the module docstring)."""
        step = _StreamedStep(self, active, criterion, listener)
        if exhaustive:
            step.exact_pass(list(candidates))
        elif self.chunk_windows(len(candidates)) >= self.num_windows:
            step.single_pass(list(candidates))
        else:
            guess = next((c for c in previous if c in candidates), None)
            step.bound_pass(list(candidates), guess)
            survivors = [c for c in candidates if c not in step.values]
            survivors.sort(key=lambda c: (sum(step.lower[c]), c))
            if survivors:
                step.exact_pass(survivors)
        return step.scores(candidates)


class _StreamedStep:
    """The bookkeeping of one streamed step: bounds, exact NLLs, the incumbent."""

    def __init__(
        self,
        runner: StreamedDepthRunner,
        active: Sequence[BlockRef],
        criterion: Criterion,
        listener: Listener | None,
    ) -> None:
        self.runner = runner
        self.active = list(active)
        self.criterion = criterion
        self.listener = listener
        self.lower: dict[Candidate, list[float]] = {}
        self.values: dict[Candidate, float] = {}  # decided candidates only
        self.exact: dict[Candidate, bool] = {}
        self.nlls: dict[Candidate, float] = {}
        self.best = math.inf
        self.best_candidate: Candidate | None = None
        self.heads = self.bounds = 0
        self.first: Candidate | None = None

    def branches(self, candidates: Sequence[Candidate]) -> dict[Hashable, frozenset[BlockRef]]:
        return {c: frozenset(c) for c in candidates}

    def bound_pass(self, candidates: list[Candidate], guess: Candidate | None) -> None:
        """Bounds of every candidate on every window, the guess's exact NLL; then every
        candidate whose total bound exceeds the guess's score is decided (dropped)."""
        runner = self.runner
        rows = runner.bound_rows()
        self.lower = {c: [0.0] * runner.num_windows for c in candidates}
        exact: dict[int, float] = {}
        for chunk in runner.chunks(len(candidates)):
            finals = runner.run_chunk(self.active, self.branches(candidates), chunk)
            with runner.head():
                head = Fp32Head(runner.model, runner.adapter)
                bound = VocabSubsetBound(head, rows)
                for c in candidates:
                    for final, w in zip(finals[c], chunk, strict=True):
                        ids = runner.window_ids(w)
                        hidden = runner.final_hidden(final)
                        self.lower[c][w] = bound.window(hidden, ids, runner.skip_first)
                self.bounds += len(candidates) * len(chunk)
                if guess is None:  # the lowest bound on the first chunk, as BlockRunner's window 0
                    guess = min(candidates, key=lambda c: (sum(self.lower[c][w] for w in chunk), c))
                for final, w in zip(finals[guess], chunk, strict=True):
                    exact[w] = runner.window_nll(head, final, w)
                    self.heads += 1
                del head, bound
            del finals
        self.first = guess
        self.complete(guess, [exact[w] for w in range(runner.num_windows)])
        for c in candidates:
            if c != guess:
                floor = self.criterion.value(c, sum(self.lower[c]))
                if floor > self.best:
                    self.drop(c, floor)

    def single_pass(self, candidates: list[Candidate]) -> None:
        """Every window in one chunk: bounds, then candidates settled in order of their bound,
        each dropped once (exact so far + bounds of the rest) exceeds the best: the in-memory
        search's flush of one group, in one pass over the weights."""
        runner = self.runner
        rows = runner.bound_rows()
        windows = list(range(runner.num_windows))
        runner.largest_chunk = max(runner.largest_chunk, len(windows))
        finals = runner.run_chunk(self.active, self.branches(candidates), windows)
        with runner.head():
            head = Fp32Head(runner.model, runner.adapter)
            bound = VocabSubsetBound(head, rows)
            for c in candidates:
                self.lower[c] = [
                    bound.window(runner.final_hidden(f), runner.window_ids(w), runner.skip_first)
                    for f, w in zip(finals[c], windows, strict=True)
                ]
            self.bounds += len(candidates) * len(windows)
            live = sorted(candidates, key=lambda c: (sum(self.lower[c]), c))
            total = dict.fromkeys(live, 0.0)
            remaining = {c: sum(self.lower[c]) for c in live}
            self.exact_chunk(head, finals, windows, live, total, remaining, last=True)
            del head, bound

    def exact_pass(self, candidates: list[Candidate]) -> None:
        """Exact NLLs of ``candidates`` (settled in this order within a chunk); with bounds, a
        candidate is dropped once (exact so far + bounds of the rest) exceeds the best."""
        runner = self.runner
        total = dict.fromkeys(candidates, 0.0)
        remaining = {c: sum(self.lower[c]) if self.lower else 0.0 for c in candidates}
        live = list(candidates)
        done_windows = 0
        for chunk in runner.chunks(len(live)):
            finals = runner.run_chunk(self.active, self.branches(live), chunk)
            done_windows += len(chunk)
            with runner.head():
                head = Fp32Head(runner.model, runner.adapter)
                last = done_windows == runner.num_windows
                self.exact_chunk(head, finals, chunk, live, total, remaining, last)
                del head
            del finals
            if not live:
                break

    def exact_chunk(
        self,
        head: Fp32Head,
        finals: dict,
        chunk: Sequence[int],
        live: list[Candidate],
        total: dict[Candidate, float],
        remaining: dict[Candidate, float],
        last: bool,
    ) -> None:
        """The exact NLLs of the live candidates on one chunk, in their order; a candidate whose
        floor exceeds the best leaves ``live``; on the ``last`` chunk the others are settled."""
        for c in list(live):
            for final, w in zip(finals[c], chunk, strict=True):
                if self.lower:
                    floor = self.criterion.value(c, total[c] + remaining[c])
                    if floor > self.best:
                        self.drop(c, floor)
                        live.remove(c)
                        break
                    remaining[c] -= self.lower[c][w]
                total[c] += self.runner.window_nll(head, final, w)
                self.heads += 1
            else:
                if last:
                    self.settle(c, total[c])

    def complete(self, candidate: Candidate, window_nlls: list[float]) -> None:
        total = 0.0
        for nll in window_nlls:  # window order, as the in-memory search sums them
            total += nll
        self.settle(candidate, total)

    def settle(self, candidate: Candidate, total: float) -> None:
        value = self.criterion.value(candidate, total)
        self.values[candidate], self.exact[candidate] = value, True
        self.nlls[candidate] = total
        if (value, candidate) < (self.best, self.best_candidate or candidate):
            self.best, self.best_candidate = value, candidate
        self.notify(candidate)

    def drop(self, candidate: Candidate, floor: float) -> None:
        self.values[candidate], self.exact[candidate] = floor, False
        self.notify(candidate)

    def notify(self, candidate: Candidate) -> None:
        if self.listener is not None:
            best = self.best_candidate
            self.listener(candidate, best, self.nlls.get(best, 0.0) if best else 0.0)

    def scores(self, candidates: Sequence[Candidate]) -> StepScores:
        exact, values = self.exact, self.values
        winner = min((c for c in candidates if exact[c]), key=lambda c: (values[c], c))
        log.debug("streamed step: %s wins, %d passes so far", label(winner), self.runner.passes)
        return StepScores(
            winner, self.nlls[winner], values, exact, self.heads, self.bounds, self.first
        )
