"""The greedy depth search: the fast exact search gives the naive search's removal order, at any
batch size and chunking, in memory (streamed: test_streamed_depth.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch

from prunekit.data import calibration_windows, tokenize_text
from prunekit.engine.world import SINGLE
from prunekit.errors import SettingsError
from prunekit.methods.depth.common import block_units, layer_units, unit_parameters
from prunekit.methods.depth.runner import DepthRunner
from prunekit.methods.depth.scores import Candidate, Criterion
from prunekit.methods.depth.search import Target, greedy_search
from prunekit.methods.depth.step import score_step
from prunekit.models.adapters import BlockRef
from prunekit.models.loading import from_model
from prunekit.models.tiny import _SAMPLE_TEXT, TINY_FAMILIES, tiny_model, tiny_tokenizer
from tests.unit.depth_helpers import one_thread  # noqa: F401


def _runner(
    family: str, n_windows: int = 3, seqlen: int = 24, criterion: str = "ppl", **kwargs
) -> DepthRunner:
    tokenizer = tiny_tokenizer()
    loaded = from_model(tiny_model(family), tokenizer)
    bos = tokenizer.bos_token_id if loaded.adapter.bos_per_window else None
    ids = tokenize_text(tokenizer, _SAMPLE_TEXT)
    windows = calibration_windows(ids, n_windows, seqlen, 0, bos)
    return DepthRunner(loaded, windows, criterion, **kwargs)


def _orders(runner: DepthRunner, units, criterion: str, steps: int, **kwargs):
    params = unit_parameters(runner, units)
    target = Target(None, steps, 10**6)
    state = greedy_search(runner, units, params, target, criterion, desc=None, **kwargs)
    return [s["removed"] for s in state.trajectory], [s["calib_nll"] for s in state.trajectory]


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("criterion", ["ppl", "ppl-per-param", "kl-per-param"])
def test_fast_search_equals_naive_blocks(family: str, criterion: str) -> None:
    runner = _runner(family, criterion=criterion)
    units = block_units(runner, "both", set())
    fast = _orders(runner, units, criterion, 4)
    naive = _orders(runner, units, criterion, 4, naive=True)
    assert fast == naive  # same order and bit-identical calibration NLL after every step


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_batched_windows_give_the_batch_1_plan(family: str) -> None:
    # Batches of 2 over 3 windows (one uneven batch): the fast search still equals the naive one
    # bit for bit (the batches are fixed for the run), and the plan equals batch 1's; the
    # calibration NLL only to rounding (a batched matmul may sum in another order).
    batched = _runner(family, criterion="kl-per-param", batch_size=2)
    units = block_units(batched, "blocks+layers", set())
    fast = _orders(batched, units, "kl-per-param", 3)
    assert fast == _orders(batched, units, "kl-per-param", 3, naive=True)
    single = _orders(_runner(family, criterion="kl-per-param"), units, "kl-per-param", 3)
    assert fast[0] == single[0]
    assert fast[1] == pytest.approx(single[1], rel=1e-5)


@pytest.mark.parametrize("criterion", ["ppl", "kl"])
def test_chunks_of_one_window_give_the_same_plan(criterion: str) -> None:
    # A state budget below one window: every step takes the bound pass and the exact pass.
    runner = _runner("qwen2", n_windows=4, criterion=criterion, batch_size=2, state_bytes=1)
    units = block_units(runner, "both", set())
    two_pass = _orders(runner, units, criterion, 3)
    assert runner.largest_chunk == 2  # one batch
    assert two_pass == _orders(runner, units, criterion, 3, naive=True)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_fast_search_equals_naive_layers_and_exhaustive(family: str) -> None:
    runner = _runner(family)
    units = layer_units(runner, {0})
    assert _orders(runner, units, "ppl", 2) == _orders(runner, units, "ppl", 2, naive=True)
    blocks = block_units(runner, "attn", set())
    exhaustive = _orders(runner, blocks, "ppl", 2, exhaustive=True)
    assert exhaustive == _orders(runner, blocks, "ppl", 2)


@dataclass(frozen=True)
class _Final:
    """Stands in for a candidate's last-layer hidden state on one window."""

    candidate: Candidate

    def numel(self) -> int:
        return 1

    def element_size(self) -> int:
        return 4


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_vocab_subset_bound_is_below_the_exact_nll(family: str) -> None:
    runner = _runner(family)
    blocks = runner.blocks()
    for dropped in ([], blocks[:1], blocks[3:5], blocks[-1:]):
        rest = [b for b in blocks if b not in dropped]
        for bound, exact in runner.model_losses(rest, bounds=True):
            assert 0.0 < bound <= exact


class FakeRunner:
    """Candidates with given per-window losses and lower bounds: tests the bound logic alone.
    ``chunk``: windows per chunk (fewer than all: the two-pass step)."""

    def __init__(
        self, table: dict[Candidate, list[float]], lower: dict | None = None, chunk: int = 0
    ) -> None:
        self.table = table
        self.lower = lower or {c: [0.0] * len(v) for c, v in table.items()}
        self.num_windows = len(next(iter(table.values())))
        self.chunk = chunk or self.num_windows
        self.tokens = 100 * self.num_windows
        self.heads: list[tuple[Candidate, int]] = []
        self.passes = self.largest_chunk = 0

    world = SINGLE  # one process: every window is this rank's

    def mine(self, windows: Sequence[int]) -> list[int]:
        return list(windows)

    def prepare(self) -> None:
        pass

    def chunk_windows(self, branches: int) -> int:
        return self.chunk

    def chunks(self, branches: int):
        for start in range(0, self.num_windows, self.chunk):
            yield list(range(start, min(start + self.chunk, self.num_windows)))

    def run_candidates(
        self, active: Sequence[BlockRef], candidates: Sequence[Candidate], windows: Sequence[int]
    ) -> dict:
        self.passes += 1
        return {c: [_Final(c)] * len(windows) for c in candidates}

    @contextmanager
    def scorer(self):
        yield self

    def exact(self, final: _Final, window: int) -> float:
        self.heads.append((final.candidate, window))
        return self.table[final.candidate][window]

    def bound(self, final: _Final, window: int) -> float:
        return self.lower[final.candidate][window]


def _c(layer: int, kind: str = "attn") -> Candidate:
    return (BlockRef(layer, kind),)


TABLE = {
    _c(0): [50.0, 1.0, 1.0, 1.0],  # hopeless: its bound alone exceeds the best
    _c(1): [2.0, 2.0, 2.0, 2.0],  # total 8: ties with _c(3) and wins the tie-break
    _c(2): [1.0, 1.0, 4.0, 4.0],  # total 10: dropped part-way by exact-so-far + bounds
    _c(3): [1.0, 1.0, 1.0, 5.0],  # total 8, the lowest bound -> settled first
}
LOWER = {
    _c(0): [40.0, 0.5, 0.5, 0.5],
    _c(1): [1.5, 1.5, 1.5, 1.5],
    _c(2): [0.5, 0.5, 3.5, 3.5],
    _c(3): [0.5, 0.5, 0.5, 4.5],
}


def test_bound_drops_hopeless_candidates_and_keeps_ties() -> None:
    runner = FakeRunner(TABLE, LOWER)
    criterion = Criterion("ppl", runner.tokens)
    fast = score_step(runner, [], list(TABLE), criterion)
    assert fast.best == _c(1) and fast.best_nll == 8.0
    assert fast.exact[_c(3)] and fast.exact[_c(1)]  # the tie is scored exactly
    assert not any(c == _c(0) for c, _ in runner.heads)  # never paid for its head
    assert not fast.exact[_c(0)] and fast.values[_c(0)] == 41.5  # a lower bound, flagged
    # _c(2): its bound (8.0) ties the best, so it is settled; after window 0 exactly (1.0)
    # plus the bounds of windows 1-3 (7.5): 8.5 > 8, dropped.
    assert [w for c, w in runner.heads if c == _c(2)] == [0]
    assert not fast.exact[_c(2)] and fast.values[_c(2)] == 8.5
    assert fast.window_evals == len(runner.heads) < len(TABLE) * runner.num_windows
    exhaustive = score_step(FakeRunner(TABLE, LOWER), [], list(TABLE), criterion, exhaustive=True)
    assert exhaustive.best == _c(1) and all(exhaustive.exact.values())


def test_small_chunks_give_the_same_answer() -> None:
    criterion = Criterion("ppl", 400)
    for chunk in (1, 3, 4):
        runner = FakeRunner(TABLE, LOWER, chunk)
        assert score_step(runner, [], list(TABLE), criterion).best == _c(1)


def test_per_param_criterion_bound() -> None:
    table = {_c(0): [3.0, 3.0], _c(1, "mlp"): [4.0, 4.0]}
    runner = FakeRunner(table)
    params = {_c(0): 1, _c(1, "mlp"): 3}
    criterion = Criterion("ppl-per-param", runner.tokens, base_nll=2.0, params=params)
    fast = score_step(runner, [], list(table), criterion)
    # (6-2)/200/1 = 0.02 vs (8-2)/200/3 = 0.01: the bigger block pays less per parameter.
    assert fast.best == _c(1, "mlp") and fast.best_nll == 8.0
    assert math.isclose(fast.values[fast.best], 0.01)


def test_targets() -> None:
    target = Target(0.25, None, 100)
    assert not target.reached(1, 24) and target.reached(2, 25)
    with pytest.raises(SettingsError, match="cannot be met"):
        target.check_feasible([10, 10], "block")
    with pytest.raises(SettingsError, match="exceeds"):
        Target(None, 5, 100).check_feasible([1, 1, 1], "block")


def test_default_batch_size_follows_the_device() -> None:
    from prunekit.engine.executor import default_batch_size

    assert default_batch_size("cpu", 32) == 1
    assert default_batch_size("cuda:0", 32) == 8
    assert default_batch_size(torch.device("cuda"), 3) == 3  # never more than the windows
