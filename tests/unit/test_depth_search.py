"""The greedy depth search: the fast exact search gives the naive search's removal order."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest

from prunekit.data import calibration_windows, tokenize_text
from prunekit.errors import SettingsError
from prunekit.methods.depth.calibration import BlockRunner, Candidate
from prunekit.methods.depth.common import block_units, layer_units, unit_parameters
from prunekit.methods.depth.search import (
    Criterion,
    Target,
    greedy_search,
    score_step,
)
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import from_model
from prunekit.models.tiny import _SAMPLE_TEXT, TINY_FAMILIES, tiny_model, tiny_tokenizer
from tests.unit.depth_helpers import one_thread  # noqa: F401


def _runner(family: str, n_windows: int = 3, seqlen: int = 24) -> BlockRunner:
    tokenizer = tiny_tokenizer()
    loaded = from_model(tiny_model(family), tokenizer)
    bos = tokenizer.bos_token_id if loaded.adapter.bos_per_window else None
    ids = tokenize_text(tokenizer, _SAMPLE_TEXT)
    return BlockRunner(loaded, calibration_windows(ids, n_windows, seqlen, 0, bos))


def _orders(runner: BlockRunner, units, criterion: str, steps: int, **kwargs):
    params = unit_parameters(runner, units)
    target = Target(None, steps, 10**6)
    state = greedy_search(runner, units, params, target, criterion, desc=None, **kwargs)
    return [s["removed"] for s in state.trajectory], [s["calib_nll"] for s in state.trajectory]


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("criterion", ["ppl", "ppl-per-param"])
def test_fast_search_equals_naive_blocks(family: str, criterion: str) -> None:
    runner = _runner(family)
    units = block_units(runner, "both", set())
    fast = _orders(runner, units, criterion, 4)
    naive = _orders(runner, units, criterion, 4, naive=True)
    assert fast == naive  # same order and bit-identical calibration NLL after every step


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_fast_search_equals_naive_layers_and_exhaustive(family: str) -> None:
    runner = _runner(family)
    units = layer_units(runner, {0})
    assert _orders(runner, units, "ppl", 2) == _orders(runner, units, "ppl", 2, naive=True)
    blocks = block_units(runner, "attn", set())
    exhaustive = _orders(runner, blocks, "ppl", 2, exhaustive=True)
    assert exhaustive == _orders(runner, blocks, "ppl", 2)


class FakeRunner:
    """Candidates with given per-window NLLs: tests the bound logic without a model."""

    def __init__(self, table: dict[Candidate, list[float]]) -> None:
        self.table = table
        self.num_windows = len(next(iter(table.values())))
        self.tokens = 100 * self.num_windows
        self.scored: list[tuple[Candidate, int]] = []

    def window_pass(
        self,
        active: Sequence[BlockRef],
        candidates: Sequence[Candidate],
        window: int,
        should_score: Callable[[Candidate], bool],
        record: Callable[[Candidate, float], None],
    ) -> int:
        count = 0
        for candidate in sorted(candidates):
            if should_score(candidate):
                self.scored.append((candidate, window))
                record(candidate, self.table[candidate][window])
                count += 1
        return count


def _c(layer: int, kind: str = "attn") -> Candidate:
    return (BlockRef(layer, kind),)


def test_branch_and_bound_drops_hopeless_candidates_and_keeps_ties() -> None:
    table = {
        _c(0): [50.0, 1.0, 1.0, 1.0],  # hopeless after one window
        _c(1): [2.0, 2.0, 2.0, 2.0],  # total 8: ties with _c(3) and wins the tie-break
        _c(2): [9.0, 0.0, 0.0, 0.0],  # partial 9 > 8 after window 0
        _c(3): [1.0, 1.0, 1.0, 5.0],  # total 8, best on window 0 -> the seed
    }
    runner = FakeRunner(table)
    criterion = Criterion("ppl", runner.tokens)
    fast = score_step(runner, [], list(table), criterion)
    naive_evals = len(table) * runner.num_windows
    assert fast.best == _c(1) and fast.best_nll == 8.0
    assert fast.window_evals < naive_evals
    assert (_c(0), 1) not in runner.scored and (_c(2), 1) not in runner.scored
    assert not fast.exact[_c(0)] and fast.values[_c(0)] == 50.0  # a lower bound, flagged
    # A previous ranking only changes the work, never the answer.
    ranked = score_step(FakeRunner(table), [], list(table), criterion, ranking=[_c(2), _c(0)])
    assert ranked.best == _c(1)


def test_per_param_criterion_bound() -> None:
    table = {_c(0): [3.0, 3.0], _c(1, "mlp"): [4.0, 4.0]}
    runner = FakeRunner(table)
    params = {_c(0): 1, _c(1, "mlp"): 3}
    criterion = Criterion("ppl-per-param", runner.tokens, base_nll=2.0, params=params)
    fast = score_step(runner, [], list(table), criterion)
    # (6-2)/200/1 = 0.02 vs (8-2)/200/3 = 0.01: the bigger block pays less per parameter.
    assert fast.best == _c(1, "mlp")
    assert math.isclose(fast.values[fast.best], 0.01)


def test_targets() -> None:
    target = Target(0.25, None, 100)
    assert not target.reached(1, 24) and target.reached(2, 25)
    with pytest.raises(SettingsError, match="cannot be met"):
        target.check_feasible([10, 10], "block")
    with pytest.raises(SettingsError, match="exceeds"):
        Target(None, 5, 100).check_feasible([1, 1, 1], "block")
