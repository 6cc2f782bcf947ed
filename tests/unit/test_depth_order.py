"""The two-pass step (states of one chunk of windows at a time): the incumbent comes from a guess
settled in the bound pass; the same answers as the naive search, fewer LM heads."""

from __future__ import annotations

import pytest
import torch

from prunekit.data import calibration_windows, tokenize_text
from prunekit.methods.depth.common import block_units, unit_parameters
from prunekit.methods.depth.runner import DepthRunner
from prunekit.methods.depth.scores import Criterion, label
from prunekit.methods.depth.search import (
    SearchState,
    Target,
    greedy_search,
    previous_ranking,
)
from prunekit.methods.depth.step import score_step
from prunekit.models.loading import from_model
from prunekit.models.tiny import _SAMPLE_TEXT, TINY_FAMILIES, tiny_model, tiny_tokenizer
from tests.unit.depth_helpers import one_thread  # noqa: F401
from tests.unit.test_depth_search import LOWER, TABLE, FakeRunner, _c


def _peaked_runner(family: str, **kwargs) -> DepthRunner:
    """A tiny model whose LM head is scaled up 10x: peaked predictions, as in a trained model,
    so the vocabulary-subset bound is tight enough to skip heads (at scale 1 it skips none)."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(family)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(10.0)
    loaded = from_model(model, tokenizer)
    bos = tokenizer.bos_token_id if loaded.adapter.bos_per_window else None
    ids = tokenize_text(tokenizer, _SAMPLE_TEXT)
    return DepthRunner(loaded, calibration_windows(ids, 4, 24, 0, bos), **kwargs)


def _search(runner: DepthRunner, criterion: str, **kwargs) -> tuple[list, int]:
    units = block_units(runner, "both", set())
    target = Target(None, 4, 10**6)
    params = unit_parameters(runner, units)
    state = greedy_search(runner, units, params, target, criterion, desc=None, **kwargs)
    outcome = [(s["removed"], s["calib_nll"], s["score"]) for s in state.trajectory]
    return outcome, sum(s["window_evals"] for s in state.trajectory)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_two_pass_steps_equal_naive_with_fewer_heads(family: str) -> None:
    runner = _peaked_runner(family)
    naive, naive_heads = _search(runner, "ppl", naive=True)
    one_pass, one_pass_heads = _search(runner, "ppl")
    two_pass, two_pass_heads = _search(_peaked_runner(family, state_bytes=1), "ppl")
    # Bit-identical removal order, calibration NLL and winning score after every step.
    assert one_pass == naive and two_pass == naive
    assert one_pass_heads < naive_heads and two_pass_heads < naive_heads


def test_two_pass_per_param_criterion_equals_naive() -> None:
    runner = _peaked_runner("qwen2", state_bytes=1)
    naive, _ = _search(runner, "ppl-per-param", naive=True)
    assert _search(runner, "ppl-per-param")[0] == naive


def test_first_step_guesses_the_lowest_first_chunk_bound() -> None:
    # First-window bounds 40, 1.5, 0.5, 0.5: _c(2) and _c(3) tie, the lower position is the guess.
    runner = FakeRunner(TABLE, LOWER, chunk=1)
    scores = score_step(runner, [], list(TABLE), Criterion("ppl", 400))
    assert scores.first == _c(2) and runner.heads[0] == (_c(2), 0)
    assert scores.bound_evals == 4 * 4  # every candidate on every window, once
    assert scores.best == _c(1) and scores.best_nll == 8.0
    assert not scores.exact[_c(0)]  # its bound (41.5) exceeds the guess's 10: no head


def test_previous_ranking_is_the_guess_and_saves_heads() -> None:
    # Guessing _c(0) (total 53) lets the bound drop nothing; the previous step's runner-up _c(1)
    # (8) drops both _c(0) and _c(2) (bounds 47.7 and 10.8) without a head.
    table = {_c(0): [50.0, 1.0, 1.0, 1.0], _c(1): [2.0] * 4, _c(2): [3.0] * 4}
    lower = {c: [v * 0.9 for v in values] for c, values in table.items()}
    criterion = Criterion("ppl", 400)
    bad_runner, ranked_runner = FakeRunner(table, lower, chunk=2), FakeRunner(table, lower, 2)
    bad = score_step(bad_runner, [], list(table), criterion, previous=[_c(0)])
    ranked = score_step(ranked_runner, [], list(table), criterion, previous=[_c(1), _c(0)])
    assert ranked.first == _c(1) and ranked_runner.heads[:2] == [(_c(1), 0), (_c(1), 1)]
    assert bad.first == _c(0)
    assert ranked.best == bad.best == _c(1) and ranked.best_nll == bad.best_nll
    assert ranked.window_evals == 4 < bad.window_evals
    assert not ranked.exact[_c(0)] and not ranked.exact[_c(2)]


def test_previous_ranking_comes_from_the_trajectory_so_a_resume_has_it() -> None:
    units = [_c(0), _c(1), _c(2, "mlp")]
    state = SearchState(
        removed=[_c(1)],
        trajectory=[
            {"scores": [[label(_c(1)), 1.0, True], ["2.mlp", 2.0, True], ["0.attn", 9.0, False]]}
        ],
    )
    assert previous_ranking(state, units) == [_c(1), _c(2, "mlp"), _c(0)]
    assert previous_ranking(SearchState(), units) == []
