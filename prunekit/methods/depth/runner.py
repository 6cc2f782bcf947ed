"""What the depth methods observe: per-window losses, bounds and block statistics of block subsets.

``DepthRunner`` is the layer executor (``engine/executor.py``) with the depth methods' heads on
it: the calibration NLL (``ppl`` criteria) or KL(dense || candidate) (``kl`` criteria,
criteria.py) of a window, the cheap lower bound on it (nll_bound.py), and the one-shot block
statistics. It runs the same way whether the model is in memory or streamed, and at any batch
size, so every depth method and criterion has both residencies with the same decisions.

The dense pass: the bound's vocabulary subset (the dense model's most likely tokens), and for
the KL criteria the dense model's final hidden states (d per token, kept; the dense logits are
recomputed chunk by chunk beside the candidate's) and its log-normalizers, are computed once, on
first use.

Under many processes (``engine/world.py``) each rank runs the windows it owns (``mine``) and
keeps the dense finals of those only; per-window values are gathered and summed in window order
(so every total is the one-process total, bit for bit), the vocabulary mass is summed over the
ranks (``world.sum_``: the same subset on every rank).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager

import torch

from prunekit.engine.executor import LayerExecutor
from prunekit.methods.depth.criteria import (
    dense_log_normalizers,
    is_divergence,
    window_kl,
    window_kl_bound,
)
from prunekit.methods.depth.nll_bound import (
    Fp32Head,
    VocabSubsetBound,
    add_predicted_mass,
    subset_size,
)
from prunekit.methods.depth.scores import Candidate
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import LoadedModel

# (a unit's input, its output) per token of one window -> a score per token.
TokenScore = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DepthRunner(LayerExecutor):
    """The executor plus the search's losses for ``criterion`` (module docstring)."""

    def __init__(
        self,
        loaded: LoadedModel,
        windows: torch.Tensor,
        criterion: str = "ppl",
        batch_size: int = 1,
        max_memory: int | None = None,
        state_bytes: int | None = None,
    ) -> None:
        super().__init__(loaded, windows, batch_size, max_memory, state_bytes)
        self.divergence = is_divergence(criterion)
        self._rows: torch.Tensor | None = None
        # KL: after the final norm, and their log-normalizers, per window this rank owns.
        self._dense_finals: dict[int, torch.Tensor] = {}
        self._dense_lse: dict[int, torch.Tensor] = {}
        self._head: Fp32Head | None = None  # in memory: built once

    def chunk_windows(self, branches: int) -> int:
        # The KL criteria keep the dense finals of every window: one more branch's states.
        return super().chunk_windows(branches + (1 if self.divergence else 0))

    # ---- the head ------------------------------------------------------------------------------
    @contextmanager
    def fp32_head(self) -> Iterator[Fp32Head]:
        """The LM head in fp32 with the final norm onloaded. A streamed run builds it afresh
        (its weights are released on exit: callers drop it inside the block)."""
        with self.head():
            if self.streamed:
                yield Fp32Head(self.model, self.adapter)
            else:
                if self._head is None:
                    self._head = Fp32Head(self.model, self.adapter)
                yield self._head

    @torch.inference_mode()
    def prepare(self) -> None:
        """The dense pass (module docstring), once (on every rank at the same point: it sums
        the vocabulary mass over the ranks)."""
        if self._rows is not None:
            return
        dense = self.blocks()
        mass = None
        for chunk in self.chunks(0):
            mine = self.mine(chunk)
            if not mine:
                continue
            states = self.run_chunk(dense, {}, mine, keep_trunk=True)[None]
            with self.fp32_head() as head:
                if mass is None:
                    mass = torch.zeros(head.vocab_size, dtype=torch.float64, device=self.device)
                for state, w in zip(self.per_window(states), mine, strict=True):
                    final = self.final_hidden(state)
                    add_predicted_mass(mass, head, final, self.skip_first)
                    if self.divergence:
                        self._dense_finals[w] = final
                        self._dense_lse[w] = dense_log_normalizers(head, final, self.skip_first)
                del head
            del states
        if mass is None:  # this rank owns no window: its share of the sum is zero
            with self.fp32_head() as head:
                mass = torch.zeros(head.vocab_size, dtype=torch.float64, device=self.device)
                del head
        self.world.sum_(mass)
        self._rows = torch.topk(mass, subset_size(mass.numel())).indices.sort().values

    @contextmanager
    def scorer(self) -> Iterator[WindowScorer]:
        """Exact losses and bounds of final states, with the head onloaded."""
        self.prepare()
        with self.fp32_head() as head:
            yield WindowScorer(self, head)
            del head

    # ---- whole models --------------------------------------------------------------------------
    def run_candidates(
        self, active: Sequence[BlockRef], candidates: Sequence[Candidate], windows: Sequence[int]
    ) -> dict[Hashable, list[torch.Tensor]]:
        """Each candidate's last-layer states on ``windows``, one [1, T, d] per window."""
        if not windows:  # a rank without windows in this chunk runs nothing
            return {c: [] for c in candidates}
        branches = {c: frozenset(c) for c in candidates}
        finals = self.run_chunk(active, branches, windows)
        return {c: self.per_window(states) for c, states in finals.items()}

    def model_finals(self, active: Sequence[BlockRef], windows: Sequence[int]) -> list:
        """The last-layer states of the model running ``active``, one per window."""
        if not windows:
            return []
        return self.per_window(self.run_chunk(active, {}, windows, keep_trunk=True)[None])

    def model_nll(self, active: Sequence[BlockRef]) -> list[float]:
        """Per-window calibration NLL of the model that runs only ``active`` (every window's,
        on every rank)."""
        nll: dict[int, float] = {}
        for chunk in self.chunks(0):
            mine = self.mine(chunk)
            if not mine:
                continue
            finals = self.model_finals(active, mine)
            with self.fp32_head() as head:
                for f, w in zip(finals, mine, strict=True):
                    nll[w] = head.nll(self.final_hidden(f), self.window_ids(w), self.skip_first)
                del head
        return self.in_window_order(nll)

    def model_losses(self, active: Sequence[BlockRef], bounds: bool = False) -> list:
        """Per-window search losses of the model running ``active`` (with ``bounds``: (bound,
        loss) pairs): what the naive oracle sums, and what the tests compare."""
        self.prepare()  # on every rank, before any rank may skip a chunk
        losses: dict[int, object] = {}
        for chunk in self.chunks(0):
            mine = self.mine(chunk)
            if not mine:
                continue
            finals = self.model_finals(active, mine)
            with self.scorer() as score:
                for f, w in zip(finals, mine, strict=True):
                    exact = score.exact(f, w)
                    losses[w] = (score.bound(f, w), exact) if bounds else exact
        return self.in_window_order(losses)

    def in_window_order(self, values: dict[int, object]) -> list:
        """Every rank's per-window ``values`` gathered, as one list in window order."""
        return self.world.ordered(values, range(self.num_windows))

    def reported_nll(self, active: Sequence[BlockRef], loss: float) -> float:
        """The calibration NLL of the model that runs only ``active``, given its search loss
        (the NLL itself, or a KL: then recomputed)."""
        return sum(self.model_nll(active)) if self.divergence else loss

    # ---- one-shot statistics -------------------------------------------------------------------
    @torch.inference_mode()
    def unit_scores(
        self, units: list[Candidate], token_score: TokenScore
    ) -> dict[Candidate, float]:
        """Mean per-token score of every unit, from one pass of the dense model over the windows.

        A unit's input is the state before its first block and its output the state after its
        last (units are contiguous in the dense model: one block or one layer). Each window's
        score sums are gathered from the rank that ran it, then summed in window order.
        """
        first = {u[0]: i for i, u in enumerate(units)}
        last = {u[-1]: i for i, u in enumerate(units)}
        per_window: dict[int, dict[int, float]] = {}  # window -> unit index -> its score sum
        inputs: dict[int, list[torch.Tensor]] = {}
        mine: list[int] = []

        def on_block(block: BlockRef, before: list, after: list) -> None:
            if block in first:
                inputs[first[block]] = before
            if block in last:
                unit = last[block]
                pairs = zip(self.per_window(inputs.pop(unit)), self.per_window(after), strict=True)
                for w, (x, y) in zip(mine, pairs, strict=True):
                    score = float(token_score(x[0].float(), y[0].float()).sum().item())
                    per_window.setdefault(w, {})[unit] = score

        for chunk in self.chunks(0):
            mine = self.mine(chunk)
            if mine:
                self.run_chunk(self.blocks(), {}, mine, on_block=on_block)
        windows = self.in_window_order(per_window)
        count = self.num_windows * self.windows.shape[1]
        sums = [0.0] * len(units)
        for scores in windows:
            for i in range(len(units)):
                sums[i] += scores[i]
        return {u: s / count for u, s in zip(units, sums, strict=True)}


class WindowScorer:
    """A window's search loss and its lower bound, from its last-layer states."""

    def __init__(self, runner: DepthRunner, head: Fp32Head) -> None:
        self.runner = runner
        self.head = head
        self._nll_bound = None if runner.divergence else VocabSubsetBound(head, runner._rows)

    def exact(self, state: torch.Tensor, window: int) -> float:
        runner = self.runner
        final = runner.final_hidden(state)
        if runner.divergence:
            return window_kl(self.head, runner._dense_finals[window], final, runner.skip_first)
        return self.head.nll(final, runner.window_ids(window), runner.skip_first)

    def bound(self, state: torch.Tensor, window: int) -> float:
        runner = self.runner
        final = runner.final_hidden(state)
        if self._nll_bound is not None:
            return self._nll_bound.window(final, runner.window_ids(window), runner.skip_first)
        return window_kl_bound(
            self.head,
            runner._rows,
            runner._dense_finals[window],
            runner._dense_lse[window],
            final,
            runner.skip_first,
        )
